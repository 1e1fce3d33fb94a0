import type { Command } from "commander";
import { tokenizeRecord } from "../data/chat-tokens.js";
import { fitExample } from "../data/packing.js";
import { InvalidRecordError, type RecordReader } from "../data/records.js";
import { UserError } from "../errors.js";
import { Progress } from "../util/progress.js";
import {
  addDatasetOptions,
  addTokenOptions,
  type DatasetFlags,
  describeSkipped,
  openDataset,
  openTokenizer,
} from "./data-options.js";
import { intArg } from "./options.js";

interface StatsFlags extends DatasetFlags {
  tokenizer?: string;
  template?: string;
  trainOnPrompt?: boolean;
  maxLength?: number;
  json?: boolean;
}

/** Used when the tokenizer file does not state a context length. */
const DEFAULT_MAX_LENGTH = 2048;

export interface LengthSummary {
  mean: number;
  p50: number;
  p90: number;
  p95: number;
  p99: number;
  max: number;
}

/** Nearest-rank percentiles of `values` (sorted in place). */
export function summarizeLengths(values: number[]): LengthSummary | null {
  if (values.length === 0) return null;
  values.sort((a, b) => a - b);
  const at = (p: number) => values[Math.max(0, Math.ceil((p / 100) * values.length) - 1)]!;
  let sum = 0;
  for (const v of values) sum += v;
  return {
    mean: Math.round((sum / values.length) * 10) / 10,
    p50: at(50),
    p90: at(90),
    p95: at(95),
    p99: at(99),
    max: values[values.length - 1]!,
  };
}

export function registerDataStats(data: Command): void {
  const cmd = data
    .command("stats")
    .description(
      "count a dataset's records, turns and lengths; with --tokenizer, token-length percentiles and how many records a maximum length would cut",
    )
    .argument("<file>", "JSONL or JSON array of alpaca, sharegpt, messages or completion records");
  addDatasetOptions(cmd);
  addTokenOptions(cmd, false)
    .option(
      "--max-length <n>",
      `count records longer than n tokens (default: the tokenizer file's context length, else ${DEFAULT_MAX_LENGTH})`,
      intArg("--max-length", 2),
    )
    .option("--json", "print one JSON object")
    .action(async (file: string, flags: StatsFlags) => {
      if (flags.tokenizer === undefined) {
        for (const [flag, set] of [
          ["--template", flags.template !== undefined],
          ["--max-length", flags.maxLength !== undefined],
          ["--train-on-prompt", flags.trainOnPrompt === true],
        ] as const) {
          if (set) throw new UserError(`${flag} needs --tokenizer (token counts come from a tokenizer)`);
        }
      }
      const reader = await openDataset(file, flags);
      let stats: DatasetStats;
      try {
        stats = await datasetStats(reader, flags);
      } finally {
        await reader.close();
      }
      if (flags.json) process.stdout.write(`${JSON.stringify(stats)}\n`);
      else process.stdout.write(formatStats(stats));
    });
}

export interface DatasetStats {
  file: string;
  format: string;
  detected: boolean;
  records: number;
  skipped: { total: number; byReason: Record<string, number> };
  messages: { system: number; user: number; assistant: number };
  /** Assistant replies per record. */
  turns: { mean: number; max: number };
  /** Characters of message text per record. */
  characters: LengthSummary | null;
  /** With a tokenizer: tokens per record, and totals. */
  tokens: (LengthSummary & { total: number; trained: number }) | null;
  tokenizer: string | null;
  template: string | null;
  maxLength: number | null;
  /** Records longer than maxLength. */
  truncated: number;
  /** Records that would keep no trained-on token. */
  dropped: number;
  trainedTokensCut: number;
}

async function datasetStats(reader: RecordReader, flags: StatsFlags): Promise<DatasetStats> {
  const tokens =
    flags.tokenizer === undefined ? undefined : openTokenizer(flags.tokenizer, reader.format, flags.template);
  const maxLength = tokens ? (flags.maxLength ?? tokens.file.contextLength ?? DEFAULT_MAX_LENGTH) : null;
  const messages = { system: 0, user: 0, assistant: 0 };
  const characters: number[] = [];
  const tokenLengths: number[] = [];
  let turns = 0;
  let maxTurns = 0;
  let totalTokens = 0;
  let trained = 0;
  let truncated = 0;
  let dropped = 0;
  let trainedTokensCut = 0;

  const megabytes = Math.max(1, Math.ceil(reader.size / 1e6));
  const progress = new Progress("stats", megabytes, "MB", process.stderr.isTTY === true && !flags.json);
  let shownMb = 0;
  for await (const record of reader) {
    if (tokens) {
      let example: ReturnType<typeof tokenizeRecord>;
      try {
        example = tokenizeRecord(record, {
          tokenizer: tokens.file.tokenizer,
          template: tokens.template,
          trainOnPrompt: flags.trainOnPrompt,
        });
      } catch (e) {
        if (!(e instanceof InvalidRecordError)) throw e;
        reader.reject(e.issue);
        continue;
      }
      tokenLengths.push(example.ids.length);
      totalTokens += example.ids.length;
      for (const m of example.lossMask) trained += m;
      const fit = fitExample(example, maxLength!);
      if (fit.truncated) truncated++;
      if (fit.example === undefined) dropped++;
      trainedTokensCut += fit.trainedCut;
    }
    let exampleTurns = 0;
    let chars = 0;
    for (const m of record.messages) {
      messages[m.role]++;
      if (m.role === "assistant") exampleTurns++;
      chars += m.content.length + (m.input?.length ?? 0);
    }
    characters.push(chars);
    turns += exampleTurns;
    maxTurns = Math.max(maxTurns, exampleTurns);
    const mb = Math.floor(reader.bytesRead / 1e6);
    if (mb > shownMb) {
      progress.tick(mb - shownMb);
      shownMb = mb;
    }
  }
  progress.done();
  const records = characters.length;
  const tokenSummary = summarizeLengths(tokenLengths);
  return {
    file: reader.path,
    format: reader.format,
    detected: reader.detected,
    records,
    skipped: { total: reader.skippedCount, byReason: Object.fromEntries(reader.skipped) },
    messages,
    turns: { mean: records ? Math.round((turns / records) * 100) / 100 : 0, max: maxTurns },
    characters: summarizeLengths(characters),
    tokens: tokenSummary ? { ...tokenSummary, total: totalTokens, trained } : null,
    tokenizer: flags.tokenizer ?? null,
    template: tokens?.template?.label ?? null,
    maxLength,
    truncated,
    dropped,
    trainedTokensCut,
  };
}

function percent(n: number, of: number): string {
  return of === 0 ? "0%" : `${((100 * n) / of).toFixed(1)}%`;
}

function lengths(s: LengthSummary): string {
  return `mean ${s.mean}, p50 ${s.p50}, p90 ${s.p90}, p95 ${s.p95}, p99 ${s.p99}, max ${s.max}`;
}

function formatStats(s: DatasetStats): string {
  const rows: [string, string][] = [
    ["file", s.file],
    ["format", `${s.format}${s.detected ? " (detected)" : ""}`],
    ["records", String(s.records)],
  ];
  if (s.skipped.total > 0) {
    rows.push([
      "skipped",
      `${s.skipped.total}: ${describeSkipped(new Map(Object.entries(s.skipped.byReason)))}`,
    ]);
  }
  const m = s.messages;
  rows.push([
    "messages",
    `${m.system + m.user + m.assistant}: ${m.system} system, ${m.user} user, ${m.assistant} assistant`,
  ]);
  rows.push([
    "turns",
    `per record: mean ${s.turns.mean}, max ${s.turns.max} (a turn is one assistant reply)`,
  ]);
  if (s.characters) rows.push(["characters", `per record: ${lengths(s.characters)}`]);
  if (s.tokens) {
    rows.push(["tokens", `per record: ${lengths(s.tokens)}`]);
    rows.push([
      "",
      `total ${s.tokens.total}, trained on ${s.tokens.trained} (${percent(s.tokens.trained, s.tokens.total)})` +
        (s.template ? `, template ${s.template}` : ""),
    ]);
    rows.push([
      "max length",
      `${s.maxLength}: ${s.truncated} records (${percent(s.truncated, s.records)}) longer, cut; ` +
        `${s.dropped} dropped with no trained-on token left; ${s.trainedTokensCut} trained-on tokens cut`,
    ]);
  }
  return rows.map(([k, v]) => `${k.padEnd(11)} ${v}\n`).join("");
}
