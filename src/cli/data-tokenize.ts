import type { Command } from "commander";
import { tokenizeCorpus } from "../tokenizer/train-corpus.js";
import { intArg, numArg } from "./options.js";
import { documentSplit } from "./tokenizer.js";

export function registerDataTokenize(data: Command) {
  data
    .command("tokenize")
    .description("tokenize a text corpus into a token cache for pretraining")
    .argument("<files...>", "corpus files: .txt, or .jsonl with a text field")
    .requiredOption("--tokenizer <file>", "tokenizer GGUF (from `tokenizer train`, or a model)")
    .requiredOption("--out <dir>", "output token cache directory")
    .option(
      "--val-fraction <f>",
      "share of documents for validation",
      numArg("--val-fraction", 0, 0.99),
      0.01,
    )
    .option("--seed <s>", "seed of the validation split", intArg("--seed", 0, 2 ** 32 - 1), 1)
    .option("--split <how>", "documents in .txt files: blank-line, line or file", "blank-line")
    .option("--skip-invalid", "skip JSONL lines without a text field")
    .option("--json", "print the cache index as JSON")
    .action(
      async (
        files: string[],
        flags: {
          tokenizer: string;
          out: string;
          valFraction: number;
          seed: number;
          split: string;
          skipInvalid?: boolean;
          json?: boolean;
        },
      ) => {
        const index = await tokenizeCorpus(files, flags.tokenizer, flags.out, {
          valFraction: flags.valFraction,
          seed: flags.seed,
          split: documentSplit(flags.split),
          skipInvalid: flags.skipInvalid,
          progress: process.stderr.isTTY === true && !flags.json,
        });
        if (flags.json) {
          process.stdout.write(`${JSON.stringify(index)}\n`);
          return;
        }
        const { train, val } = index.splits;
        const lines = index.sources.map((s) => {
          const skipped = Object.entries(s.skipped ?? {}).map(([r, n]) => `${n} ${r}`);
          return `  ${s.path}: ${s.bytes} bytes, ${s.documents} documents, ${s.tokens} tokens${skipped.length ? `; skipped ${skipped.join(", ")}` : ""}`;
        });
        process.stdout.write(
          `${flags.out}: ${train.tokens} train tokens (${train.documents} documents), ${val.tokens} validation tokens (${val.documents} documents), ${index.dtype}\n${lines.join("\n")}\n`,
        );
      },
    );
}
