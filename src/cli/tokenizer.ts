import type { Command } from "commander";
import { DOCUMENT_SPLITS, type DocumentSplit } from "../data/corpus.js";
import { UserError } from "../errors.js";
import { trainTokenizerOnFiles } from "../tokenizer/train-corpus.js";
import { intArg, numArg } from "./options.js";

/** Parses --split. */
export function documentSplit(value: string): DocumentSplit {
  if (!(DOCUMENT_SPLITS as readonly string[]).includes(value)) {
    throw new UserError(`--split must be one of ${DOCUMENT_SPLITS.join(", ")}, got "${value}"`);
  }
  return value as DocumentSplit;
}

export function registerTokenizer(program: Command) {
  const tok = program.command("tokenizer").description("train tokenizers");
  tok
    .command("train")
    .description(
      "learn a SentencePiece-style BPE vocabulary with byte fallback from text files (.txt, .jsonl)",
    )
    .argument("<files...>", "corpus files: .txt, or .jsonl with a text field")
    .requiredOption("--vocab-size <n>", "tokens in the vocabulary", intArg("--vocab-size", 260, 2 ** 21))
    .requiredOption("--out <file>", "output tokenizer GGUF")
    .option("--special <tokens>", "user-defined special tokens, comma-separated")
    .option("--split <how>", "documents in .txt files: blank-line, line or file", "blank-line")
    .option(
      "--coverage <f>",
      "share of characters kept as tokens (rest: bytes)",
      numArg("--coverage", 0.5, 1),
      0.9995,
    )
    .option(
      "--max-words <n>",
      "most distinct words held while counting",
      intArg("--max-words", 1000),
      2_000_000,
    )
    .option("--skip-invalid", "skip JSONL lines without a text field")
    .option("--json", "print a JSON summary")
    .action(
      async (
        files: string[],
        flags: {
          vocabSize: number;
          out: string;
          special?: string;
          split: string;
          coverage: number;
          maxWords: number;
          skipInvalid?: boolean;
          json?: boolean;
        },
      ) => {
        const summary = await trainTokenizerOnFiles(files, flags.out, {
          vocabSize: flags.vocabSize,
          specialTokens: flags.special
            ?.split(",")
            .map((s) => s.trim())
            .filter(Boolean),
          characterCoverage: flags.coverage,
          maxWords: flags.maxWords,
          split: documentSplit(flags.split),
          skipInvalid: flags.skipInvalid,
          progress: process.stderr.isTTY === true && !flags.json,
        });
        if (flags.json) process.stdout.write(`${JSON.stringify({ out: flags.out, ...summary })}\n`);
        else {
          const skipped = Object.entries(summary.skipped).map(([r, n]) => `${n} ${r}`);
          process.stdout.write(
            `${flags.out}: ${summary.vocabSize} tokens (${summary.characters} characters, ${summary.merges} merges) from ${summary.documents} documents, ${summary.words} distinct words${summary.prunedWords ? ` (${summary.prunedWords} rare words dropped)` : ""}${skipped.length ? `; skipped ${skipped.join(", ")}` : ""}\n`,
          );
        }
      },
    );
}
