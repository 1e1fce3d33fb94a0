import { resolve } from "node:path";
import type { Command } from "commander";
import { UserError } from "../errors.js";
import { evaluateMc, formatMcMarkdown } from "../eval/mc.js";
import { MC_FORMATS, type McDoc, parseMcFormat, readMcFile } from "../eval/mc-formats.js";
import { loadModel } from "../model/model.js";
import { writeAtomic } from "../train/loop.js";
import { checkOutputs } from "../util/output-path.js";
import { Progress } from "../util/progress.js";
import { addThreadsOption, FORCE_HELP, intArg, numArg } from "./options.js";

interface EvalMcFlags {
  model: string;
  data: string;
  format: string;
  shots: number;
  fewshotData?: string;
  fewshotSeed: number;
  limit?: number;
  threads?: number;
  ctx?: number;
  lora?: string[];
  loraScale?: number;
  kvReuse: boolean;
  json?: boolean;
  summaryOut?: string;
  force?: boolean;
}

export function registerEvalMc(evalCmd: Command) {
  const cmd = evalCmd
    .command("mc")
    .description(
      "multiple-choice benchmarks (HellaSwag, ARC, MMLU, PIQA, WinoGrande, TruthfulQA MC1) scored by log-likelihood: acc and acc_norm as lm-evaluation-harness computes them",
    )
    .requiredOption("-m, --model <file>", "GGUF model file")
    .requiredOption("--data <file>", "the questions: JSONL (or a JSON array) as the benchmark publishes them")
    .requiredOption("--format <name>", `the records' format: ${MC_FORMATS.join(", ")}`);
  addThreadsOption(cmd)
    .option("--shots <k>", "solved examples before each question", intArg("--shots", 0, 100), 0)
    .option("--fewshot-data <file>", "where the examples come from (another split of the benchmark)")
    .option(
      "--fewshot-seed <n>",
      "seed of the examples drawn for each question (MMLU takes its subject's first k)",
      intArg("--fewshot-seed", 0, 2 ** 32 - 1),
      1234,
    )
    .option("--limit <n>", "score only the first n questions", intArg("--limit", 1))
    .option(
      "-c, --ctx <n>",
      "context size in tokens (default: the model's, at most 4096)",
      intArg("--ctx", 1),
    )
    .option(
      "--lora <file>",
      "apply a GGUF LoRA adapter at run time (repeatable)",
      (value: string, previous: string[] = []) => [...previous, value],
    )
    .option("--lora-scale <s>", "scale of the LoRA adapters (default: 1)", numArg("--lora-scale", 0))
    .option("--no-kv-reuse", "evaluate every choice from its first token (slower; for comparison)")
    .option("--json", "print the result as one JSON object (what `eval report` reads)")
    .option("--summary-out <file>", "also write the JSON result to a file")
    .option("--force", FORCE_HELP)
    .addHelpText(
      "after",
      "\nacc_norm divides each choice's log-likelihood by its length in characters. Standard errors are those of a mean (sample standard deviation / √n), as the harness reports them.",
    )
    .action(async (flags: EvalMcFlags) => {
      const format = parseMcFormat(flags.format);
      if (flags.fewshotData !== undefined && flags.shots === 0)
        throw new UserError("--fewshot-data needs --shots K (K > 0)");
      if (flags.summaryOut !== undefined) {
        checkOutputs({
          inputs: [
            { path: flags.model, name: "the model" },
            { path: flags.data, name: "--data" },
            ...(flags.fewshotData !== undefined ? [{ path: flags.fewshotData, name: "--fewshot-data" }] : []),
            ...(flags.lora ?? []).map((path) => ({ path, name: "--lora" })),
          ],
          outputs: [{ path: flags.summaryOut, flag: "--summary-out" }],
          force: flags.force,
        });
      }
      const docs = await readMcFile(flags.data, format, { limit: flags.limit, flag: "--data" });
      const fewshotIsData =
        flags.fewshotData !== undefined && resolve(flags.fewshotData) === resolve(flags.data);
      let fewshot: McDoc[] | undefined;
      if (flags.fewshotData !== undefined) {
        fewshot = fewshotIsData
          ? docs
          : await readMcFile(flags.fewshotData, format, { flag: "--fewshot-data" });
      }
      const model = await loadModel(flags.model, {
        threads: flags.threads,
        contextSize: flags.ctx,
        logitsAll: true,
        // The scorer drives the forward pass itself, on this thread.
        worker: false,
        lora: flags.lora?.map((adapter) => ({ adapter, scale: flags.loraScale })),
      });
      let out: Awaited<ReturnType<typeof evaluateMc>>;
      try {
        const progress = new Progress(
          "eval mc",
          docs.length,
          "questions",
          !flags.json && process.stderr.isTTY === true,
        );
        out = await evaluateMc(model, docs, {
          format,
          shots: flags.shots,
          fewshot,
          fewshotIsData,
          fewshotSeed: flags.fewshotSeed,
          reuse: flags.kvReuse,
          modelName: flags.model,
          onProgress: () => progress.tick(),
        });
        progress.done();
      } finally {
        await model.dispose();
      }
      const json = `${JSON.stringify(out.result)}\n`;
      if (flags.summaryOut !== undefined) writeAtomic(flags.summaryOut, json);
      if (flags.json) {
        process.stdout.write(json);
        return;
      }
      process.stdout.write(formatMcMarkdown(out.result));
      if (out.truncated > 0) {
        process.stdout.write(
          `\n${out.truncated} of ${docs.length} questions were cut on the left to fit the context of ${model.contextSize} tokens.\n`,
        );
      }
    });
}
