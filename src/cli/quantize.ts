import type { Command } from "commander";
import { readImatrixWeights } from "../quant/imatrix.js";
import { FILE_TYPES } from "../quant/mixes.js";
import { quantizeModel } from "../quant/quantize-model.js";
import { checkOutputs } from "../util/output-path.js";
import { FORCE_HELP, threadsArg } from "./options.js";

interface QuantizeFlags {
  type: string;
  outputTensorType?: string;
  tokenEmbeddingType?: string;
  leaveOutputTensor?: boolean;
  pure?: boolean;
  imatrix?: string;
  json?: boolean;
  force?: boolean;
  threads?: number;
}

export function registerQuantize(program: Command) {
  program
    .command("quantize")
    .description(
      "rewrite a GGUF model in one of llama.cpp's file types, tensor for tensor and byte for byte as llama-quantize does (norm weights stay f32)",
    )
    .argument("<in>", "input GGUF model")
    .argument("<out>", "output GGUF model")
    .requiredOption(
      "--type <type>",
      `llama.cpp file type: ${FILE_TYPES.map((t) => t.name).join(", ")} (Q4_K, Q3_K, Q5_K: the _M mixes)`,
    )
    .option("--output-tensor-type <type>", "type of output.weight (default: the file type's choice)")
    .option("--token-embedding-type <type>", "type of token_embd.weight (default: the file type's choice)")
    .option("--leave-output-tensor", "keep output.weight as it is (default: quantize it)")
    .option(
      "--pure",
      "every quantized tensor in the file type's base type, without its mix (default: the mix)",
    )
    .option(
      "--imatrix <file>",
      "importance matrix (smallhammer imatrix or llama.cpp's, GGUF or .dat): weight each column's error by its mean squared activation",
    )
    .option("--json", "print a JSON summary")
    .option("--force", FORCE_HELP)
    .option("-t, --threads <n>", "threads (default: all cores; any count writes the same bytes)", threadsArg)
    .action(async (input: string, output: string, flags: QuantizeFlags) => {
      const inputs = [
        input,
        ...(flags.imatrix !== undefined ? [{ path: flags.imatrix, name: "--imatrix" }] : []),
      ];
      checkOutputs({ inputs, outputs: [output], force: flags.force });
      const imatrix = flags.imatrix !== undefined ? readImatrixWeights(flags.imatrix, input) : undefined;
      const summary = await quantizeModel(input, output, flags.type, {
        imatrix,
        outputTensorType: flags.outputTensorType,
        tokenEmbeddingType: flags.tokenEmbeddingType,
        leaveOutputTensor: flags.leaveOutputTensor,
        pure: flags.pure,
        threads: flags.threads,
        onProgress: process.stderr.isTTY && !flags.json ? "bar" : undefined,
      });
      if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else {
        const mb = (b: number) => (b / 1048576).toFixed(1);
        const types = Object.entries(summary.tensorTypes)
          .map(([t, n]) => `${n} ${t}`)
          .join(", ");
        const fellBack = summary.fellBack
          ? ` (${summary.fellBack} fell back: rows not a multiple of 256)`
          : "";
        process.stdout.write(
          `${output}: ${summary.type}, ${summary.quantized} tensors converted, ${summary.kept} kept${fellBack}; tensors: ${types}; ${mb(summary.inputBytes)} MiB -> ${mb(summary.outputBytes)} MiB\n`,
        );
      }
    });
}
