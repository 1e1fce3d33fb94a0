import type { Command } from "commander";
import { readTokenizerFile } from "../data/chat-tokens.js";
import { recordText } from "../data/dataset-io.js";
import { DETECTABLE_LANGUAGES, findRefusal, inLanguage } from "../data/text-checks.js";
import { UserError } from "../errors.js";
import { checkOutputs } from "../util/output-path.js";
import {
  addTransformOptions,
  Counts,
  describeCounts,
  report,
  sameFormat,
  skippedSummary,
  skippedText,
  type TransformFlags,
  transformDataset,
} from "./data-transform.js";
import { intArg } from "./options.js";

interface FilterFlags extends TransformFlags {
  out: string;
  minChars?: number;
  maxChars?: number;
  minTokens?: number;
  maxTokens?: number;
  tokenizer?: string;
  exclude?: string;
  require?: string;
  dropRefusals?: boolean;
  lang?: string;
}

/** A case-insensitive whole-word (or whole-phrase) pattern for a comma-separated list. */
export function keywordPattern(list: string, flag: string): RegExp {
  const words = list
    .split(",")
    .map((w) => w.trim())
    .filter((w) => w !== "");
  if (words.length === 0) throw new UserError(`${flag}: no words given (a comma-separated list)`);
  const escaped = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&").replace(/\s+/g, "\\s+"));
  return new RegExp(`(?<![\\p{L}\\p{N}_])(?:${escaped.join("|")})(?![\\p{L}\\p{N}_])`, "iu");
}

export function registerDataFilter(data: Command): void {
  const cmd = data
    .command("filter")
    .description("keep the records that pass every check given: length, keywords, refusals, language")
    .argument("<file>", "JSONL or JSON array of alpaca, sharegpt, messages or completion records")
    .requiredOption("--out <file>", "output, in the input's format (.json: one JSON array; otherwise JSONL)")
    .option("--min-chars <n>", "fewest characters of message text", intArg("--min-chars", 0))
    .option("--max-chars <n>", "most characters of message text", intArg("--max-chars", 1))
    .option("--tokenizer <model>", "GGUF file whose tokenizer counts tokens for --min-tokens / --max-tokens")
    .option("--min-tokens <n>", "fewest tokens of message text", intArg("--min-tokens", 0))
    .option("--max-tokens <n>", "most tokens of message text", intArg("--max-tokens", 1))
    .option("--exclude <words>", "drop records containing any of these words or phrases (comma-separated)")
    .option(
      "--require <words>",
      "keep only records containing one of these words or phrases (comma-separated)",
    )
    .option(
      "--drop-refusals",
      'drop records whose replies hold refusal boilerplate ("As an AI language model", ...)',
    )
    .option(
      "--lang <code>",
      `drop records detected to be in another language (${DETECTABLE_LANGUAGES.join(", ")}); text too short to tell is kept`,
    );
  addTransformOptions(cmd).action(async (file: string, flags: FilterFlags) => {
    checkOutputs({
      inputs: [
        file,
        ...(flags.tokenizer === undefined ? [] : [{ path: flags.tokenizer, name: "--tokenizer" }]),
      ],
      outputs: [{ path: flags.out, flag: "--out" }],
      force: flags.force,
    });
    if ((flags.minTokens !== undefined || flags.maxTokens !== undefined) && flags.tokenizer === undefined) {
      throw new UserError(
        "--min-tokens and --max-tokens need --tokenizer (token counts come from a tokenizer)",
      );
    }
    if (flags.lang !== undefined && !DETECTABLE_LANGUAGES.includes(flags.lang)) {
      throw new UserError(
        `--lang: unknown language "${flags.lang}"; known: ${DETECTABLE_LANGUAGES.join(", ")}`,
      );
    }
    const exclude = flags.exclude === undefined ? undefined : keywordPattern(flags.exclude, "--exclude");
    const require = flags.require === undefined ? undefined : keywordPattern(flags.require, "--require");
    const tokenizer =
      flags.tokenizer === undefined ? undefined : readTokenizerFile(flags.tokenizer).tokenizer;
    const dropped = new Counts();
    const reasonFor = (text: string, replies: string[]): string | undefined => {
      if (flags.minChars !== undefined && text.length < flags.minChars) return "too short";
      if (flags.maxChars !== undefined && text.length > flags.maxChars) return "too long";
      if (tokenizer) {
        const n = tokenizer.encode(text, { addSpecial: false, parseSpecial: false }).length;
        if (flags.minTokens !== undefined && n < flags.minTokens) return "too few tokens";
        if (flags.maxTokens !== undefined && n > flags.maxTokens) return "too many tokens";
      }
      if (exclude?.test(text)) return "excluded word";
      if (require && !require.test(text)) return "no required word";
      if (flags.dropRefusals && replies.some((r) => findRefusal(r))) return "refusal";
      if (flags.lang !== undefined && !inLanguage(text, flags.lang)) return "other language";
      return undefined;
    };
    const { reader, records, written } = await transformDataset(
      file,
      flags.out,
      "filter",
      flags,
      async (r, write, reader) => {
        const replies = r.messages.filter((m) => m.role === "assistant").map((m) => m.content);
        const reason = reasonFor(recordText(r), replies);
        if (reason) dropped.add(reason);
        else await write(sameFormat(r, reader));
      },
    );
    report(
      flags,
      {
        file,
        out: flags.out,
        format: reader.format,
        records,
        written,
        dropped,
        skipped: skippedSummary(reader),
      },
      `${flags.out}: kept ${written} of ${records} records` +
        (dropped.total > 0 ? `; dropped ${dropped.total} (${describeCounts(dropped.byReason)})` : "") +
        skippedText(reader),
    );
  });
}
