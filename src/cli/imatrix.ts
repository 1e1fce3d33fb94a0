import type { Command } from "commander";
import { collectImatrix } from "../eval/imatrix-collect.js";
import { writeImatrix } from "../quant/imatrix.js";
import { checkOutputs } from "../util/output-path.js";
import { FORCE_HELP } from "./options.js";
import { addChunkOptions, chunkLine, chunkProgress, readTextFile } from "./perplexity.js";

interface ImatrixFlags {
  model: string;
  file: string;
  out: string;
  ctx: number;
  batch?: number;
  chunks?: number;
  threads?: number;
  processOutput?: boolean;
  json?: boolean;
  force?: boolean;
}

export function registerImatrix(program: Command) {
  const cmd = program
    .command("imatrix")
    .description(
      "compute an importance matrix (llama.cpp's imatrix GGUF file): per input column of every matrix, the sum of squared activations over a calibration text, for quantize --imatrix",
    );
  addChunkOptions(cmd, "calibration text")
    .option("-o, --out <file>", "imatrix file to write (default: imatrix.gguf)", "imatrix.gguf")
    .option("--process-output", "also collect the inputs of output.weight (default: off, as in llama.cpp)")
    .option("--json", "print a JSON summary instead of text")
    .option("--force", FORCE_HELP)
    .action(async (flags: ImatrixFlags) => {
      checkOutputs({
        inputs: [
          { path: flags.model, name: "--model" },
          { path: flags.file, name: "--file" },
        ],
        outputs: [{ path: flags.out, flag: "--out" }],
        force: flags.force,
      });
      const text = readTextFile(flags.file);
      const bar = chunkProgress("imatrix", flags.json);
      const { imatrix, perplexity } = await collectImatrix(flags.model, text, {
        ctx: flags.ctx,
        batch: flags.batch,
        chunks: flags.chunks,
        threads: flags.threads,
        processOutput: flags.processOutput,
        dataset: flags.file,
        onChunk: (p) => bar.chunk(p, chunkLine(p)),
      });
      bar.done();
      writeImatrix(flags.out, imatrix);
      const summary = {
        out: flags.out,
        entries: imatrix.entries.size,
        chunks: imatrix.chunkCount,
        chunkSize: imatrix.chunkSize,
        tokens: imatrix.chunkCount * imatrix.chunkSize,
        ppl: perplexity.ppl,
        pplError: perplexity.pplError,
      };
      if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else {
        process.stdout.write(
          `${flags.out}: ${summary.entries} matrices, ${summary.tokens} tokens in ${summary.chunks} chunks of ${summary.chunkSize}; ` +
            `perplexity ${perplexity.ppl.toFixed(4)} ± ${perplexity.pplError.toFixed(4)}\n`,
        );
      }
    });
}
