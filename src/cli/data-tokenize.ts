import type { Command } from "commander";
import type { DocumentSplit } from "../data/corpus.js";
import { tokenizeCorpus } from "../tokenizer/train-corpus.js";
import { checkOutputs } from "../util/output-path.js";
import { intArg, numArg } from "./options.js";
import { documentSplitArg, SPLIT_HELP } from "./tokenizer.js";

const count = (n: number) => n.toLocaleString("en-US");

export function registerDataTokenize(data: Command) {
  data
    .command("tokenize")
    .description(
      "tokenize a corpus into a token cache for pretraining: train.bin and val.bin (documents after BOS), index.json, and a copy of the tokenizer",
    )
    .argument("<files...>", "corpus: .txt files, .jsonl with a text field per line (either may be .gz)")
    .requiredOption("--tokenizer <file>", "tokenizer GGUF (from `tokenizer train`, or any model)")
    .requiredOption(
      "--out <dir>",
      "token cache directory to create (an earlier token cache there is replaced)",
    )
    .option(
      "--val-fraction <f>",
      "share of documents for the validation split",
      numArg("--val-fraction", 0, 0.99),
      0.01,
    )
    .option("--seed <s>", "seed of the validation split", intArg("--seed", 0, 2 ** 32 - 1), 1)
    .option("--split <how>", SPLIT_HELP, documentSplitArg, "blank-line" as DocumentSplit)
    .option(
      "--parse-special",
      "turn control-token texts in the corpus (<s>, </s>, <|im_end|>...) into those tokens; by default they stay text (user-defined tokens are matched either way)",
    )
    .option("--skip-invalid", "skip bad JSONL lines (counted by reason) instead of stopping")
    .option("--json", "print the cache's index.json")
    .action(
      async (
        files: string[],
        flags: {
          tokenizer: string;
          out: string;
          valFraction: number;
          seed: number;
          split: DocumentSplit;
          parseSpecial?: boolean;
          skipInvalid?: boolean;
          json?: boolean;
        },
      ) => {
        checkOutputs({
          // The tokenizer is copied whole before the cache is moved into place, so it may be the
          // earlier cache's own copy.
          inputs: [...files, { path: flags.tokenizer, name: "--tokenizer", readFirst: true }],
          // An earlier token cache there is replaced (the token cache checks that it is one).
          outputs: [{ path: flags.out, flag: "--out", kind: "directory", existing: "caller" }],
        });
        // Ctrl-C stops at the next segment and removes the unfinished cache.
        const interrupt = new AbortController();
        const onSigint = () => interrupt.abort();
        process.once("SIGINT", onSigint);
        const index = await tokenizeCorpus(files, flags.tokenizer, flags.out, {
          valFraction: flags.valFraction,
          seed: flags.seed,
          split: flags.split,
          parseSpecial: flags.parseSpecial,
          skipInvalid: flags.skipInvalid,
          progress: process.stderr.isTTY === true && !flags.json,
          signal: interrupt.signal,
        }).finally(() => process.off("SIGINT", onSigint));
        if (flags.json) {
          process.stdout.write(`${JSON.stringify(index)}\n`);
          return;
        }
        const { train, val } = index.splits;
        const documents = train.documents + val.documents;
        const bytes = index.sources.reduce((s, f) => s + f.bytes, 0);
        const lines = [
          `${flags.out}: ${count(train.tokens + val.tokens)} tokens (${index.dtype}, vocabulary ${count(index.vocabSize)}) from ${count(documents)} documents in ${index.sources.length} file${index.sources.length === 1 ? "" : "s"}, ${count(bytes)} bytes`,
          `  train: ${count(train.tokens)} tokens, ${count(train.documents)} documents`,
          `  val:   ${count(val.tokens)} tokens, ${count(val.documents)} documents (fraction ${index.valFraction}, seed ${index.seed})`,
        ];
        for (const s of index.sources) {
          const skipped = Object.entries(s.skipped ?? {});
          lines.push(
            `  ${s.path}: ${count(s.bytes)} bytes, ${count(s.documents)} documents, ${count(s.tokens)} tokens${skipped.length > 0 ? `; skipped ${skipped.map(([r, n]) => `${count(n)} ${r}`).join(", ")}` : ""}`,
          );
        }
        if (index.valFraction > 0 && val.documents === 0) {
          lines.push(
            `  note: no document went to validation; with few documents, try --split blank-line or line, or a larger --val-fraction`,
          );
        }
        process.stdout.write(`${lines.join("\n")}\n`);
      },
    );
}
