import { type Command, InvalidArgumentError } from "commander";
import { DOCUMENT_SPLITS, type DocumentSplit } from "../data/corpus.js";
import { DEFAULT_MAX_WORDS } from "../tokenizer/train.js";
import { trainTokenizerOnFiles } from "../tokenizer/train-corpus.js";
import { checkOutputs } from "../util/output-path.js";
import { FORCE_HELP, intArg, numArg } from "./options.js";

/** Commander parser for --split. */
export function documentSplitArg(value: string): DocumentSplit {
  if (!(DOCUMENT_SPLITS as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(`--split must be one of ${DOCUMENT_SPLITS.join(", ")}, got "${value}"`);
  }
  return value as DocumentSplit;
}

export const SPLIT_HELP =
  "documents in .txt files: blank-line (separated by blank lines), line (one per line) or file (one per file)";

/** Commander collector for --special: comma-separated, repeatable. */
function specialArg(value: string, previous: string[] | undefined): string[] {
  return [
    ...(previous ?? []),
    ...value
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s !== ""),
  ];
}

const count = (n: number) => n.toLocaleString("en-US");

export function registerTokenizer(program: Command) {
  const tokenizer = program.command("tokenizer").description("train tokenizers");
  tokenizer
    .command("train")
    .description(
      "learn a SentencePiece-style BPE vocabulary with byte fallback (a Llama tokenizer) from a corpus and write it as a vocabulary-only GGUF",
    )
    .argument("<files...>", "corpus: .txt files, .jsonl with a text field per line (either may be .gz)")
    .requiredOption("--vocab-size <n>", "tokens in the vocabulary", intArg("--vocab-size", 260, 1 << 21))
    .requiredOption("--out <file>", "output tokenizer GGUF")
    .option("--special <tokens>", "user-defined tokens kept whole, comma-separated (repeatable)", specialArg)
    .option("--split <how>", SPLIT_HELP, documentSplitArg, "blank-line" as DocumentSplit)
    .option(
      "--coverage <f>",
      "share of character occurrences kept as character tokens; rarer characters use byte tokens",
      numArg("--coverage", 0.5, 1),
      0.9995,
    )
    .option(
      "--max-words <n>",
      "most distinct words held while counting (rarer ones are dropped past it)",
      intArg("--max-words", 1000),
      DEFAULT_MAX_WORDS,
    )
    .option("--max-piece-length <n>", "longest piece in characters", intArg("--max-piece-length", 2, 256), 16)
    .option("--skip-invalid", "skip bad JSONL lines (counted by reason) instead of stopping")
    .option("--json", "print a JSON summary")
    .option("--force", FORCE_HELP)
    .action(
      async (
        files: string[],
        flags: {
          vocabSize: number;
          out: string;
          special?: string[];
          split: DocumentSplit;
          coverage: number;
          maxWords: number;
          maxPieceLength: number;
          skipInvalid?: boolean;
          json?: boolean;
          force?: boolean;
        },
      ) => {
        checkOutputs({ inputs: files, outputs: [{ path: flags.out, flag: "--out" }], force: flags.force });
        const summary = await trainTokenizerOnFiles(files, flags.out, {
          vocabSize: flags.vocabSize,
          specialTokens: flags.special ?? [],
          characterCoverage: flags.coverage,
          maxWords: flags.maxWords,
          maxPieceLength: flags.maxPieceLength,
          split: flags.split,
          skipInvalid: flags.skipInvalid,
          progress: process.stderr.isTTY === true && !flags.json,
        });
        if (flags.json) {
          process.stdout.write(
            `${JSON.stringify({ out: flags.out, requestedVocabSize: flags.vocabSize, ...summary })}\n`,
          );
          return;
        }
        const s = summary;
        const lines = [
          `${flags.out}: ${count(s.vocabSize)} tokens: <unk> <s> </s>, 256 bytes, ${flags.special?.length ?? 0} special, ${count(s.characters)} characters, ${count(s.merges)} merged pieces`,
          `  read ${count(s.files)} file${s.files === 1 ? "" : "s"}, ${count(s.bytes)} bytes, ${count(s.documents)} documents; ${count(s.words)} distinct words counted`,
        ];
        if (s.prunedWords > 0) {
          lines.push(
            `  ${count(s.prunedWords)} rare words dropped to keep the table under ${count(flags.maxWords)} (counts up to ${s.pruneThreshold})`,
          );
        }
        if (s.longWords > 0) lines.push(`  ${count(s.longWords)} words over 256 characters not counted`);
        const skipped = Object.entries(s.skipped);
        if (skipped.length > 0)
          lines.push(`  skipped: ${skipped.map(([r, n]) => `${count(n)} ${r}`).join(", ")}`);
        if (s.vocabSize < flags.vocabSize) {
          lines.push(
            `  the corpus ran out of pairs to merge: ${count(s.vocabSize)} of ${count(flags.vocabSize)} tokens`,
          );
        }
        process.stdout.write(`${lines.join("\n")}\n`);
      },
    );
}
