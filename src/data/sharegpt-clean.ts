/**
 * ShareGPT cleaning, the way Vicuna's training data was prepared: assistant turns scraped as HTML
 * become markdown; conversations that are empty, duplicated or out of order are dropped (a leading
 * assistant turn and a trailing user turn are cut off first); optionally refusal boilerplate and
 * other languages are dropped; conversations longer than a token budget are split into several at
 * turn boundaries. Every decision is counted by reason.
 *
 *   const report = await cleanShareGpt("raw.json", "clean.json", { maxTokens: 2048, tokenizer });
 *
 * The input is streamed (JSONL or a JSON array, one conversation in memory at a time) and may be
 * messy: records that are not conversations are counted and skipped, not fatal. The output is
 * ShareGPT ({id, conversations: [{from: human | gpt | system, value}]}), JSONL or, for a `.json`
 * path, one JSON array, written to a temporary file and renamed at the end. Duplicates are found
 * with a 64-bit hash per kept conversation (8-16 bytes each), so memory does not grow with the text.
 */

import { UserError } from "../errors.js";
import type { Tokenizer } from "../tokenizer/index.js";
import { DatasetWriter } from "./dataset-io.js";
import { htmlToMarkdown, looksLikeHtml } from "./html-to-markdown.js";
import { hashString64, U64Set } from "./minhash.js";
import { detectFormat, readJsonValues } from "./records.js";
import { findRefusal, inLanguage } from "./text-checks.js";

export interface CleanShareGptOptions {
  /** Split conversations longer than this many tokens (needs `tokenizer`). */
  maxTokens?: number;
  tokenizer?: Tokenizer;
  /** Drop conversations detected to be in another language (see inLanguage). */
  lang?: string;
  /** Drop conversations with refusal boilerplate in an assistant turn. */
  dropRefusals?: boolean;
  /** Called with the bytes read so far. */
  onBytes?: (bytesRead: number) => void;
}

/** Why a conversation was dropped. */
export type DropReason =
  | "invalid JSON"
  | "not a conversation"
  | "unknown role"
  | "bad turn order"
  | "empty"
  | "duplicate"
  | "refusal"
  | "other language"
  | "too long";

/** What was changed in conversations that were kept. */
export type FixKind =
  | "html converted"
  | "leading assistant turn removed"
  | "trailing user turn removed"
  | "cut at a blank turn"
  | "split"
  | "turn pair over max tokens removed";

export interface CleanReport {
  input: string;
  output: string;
  /** Conversations read. */
  conversations: number;
  /** Conversations kept (before splitting). */
  kept: number;
  /** Conversations written (after splitting). */
  written: number;
  dropped: Partial<Record<DropReason, number>>;
  /** Changes made to kept conversations, counted per conversation ("html converted": per turn). */
  fixed: Partial<Record<FixKind, number>>;
}

type Role = "system" | "user" | "assistant";
interface Turn {
  role: Role;
  value: string;
}

const ROLES: Record<string, Role> = {
  human: "user",
  user: "user",
  gpt: "assistant",
  assistant: "assistant",
  chatgpt: "assistant",
  bard: "assistant",
  bing: "assistant",
  model: "assistant",
  system: "system",
};
const FROM: Record<Role, string> = { system: "system", user: "human", assistant: "gpt" };

type Cleaned = { ok: true; turns: Turn[] } | { ok: false; reason: DropReason };

/** Cleans one ShareGPT record (without the dataset-wide duplicate check and splitting). */
export function cleanConversation(
  value: unknown,
  options: CleanShareGptOptions,
  fix: (kind: FixKind, n?: number) => void,
): Cleaned {
  if (value === null || typeof value !== "object" || Array.isArray(value))
    return { ok: false, reason: "not a conversation" };
  const list = (value as Record<string, unknown>)["conversations"];
  if (!Array.isArray(list)) return { ok: false, reason: "not a conversation" };
  let turns: Turn[] = [];
  for (const item of list) {
    if (item === null || typeof item !== "object") return { ok: false, reason: "not a conversation" };
    const { from, value: text } = item as Record<string, unknown>;
    if (typeof from !== "string" || typeof text !== "string")
      return { ok: false, reason: "not a conversation" };
    const role = ROLES[from.toLowerCase()];
    if (role === undefined) return { ok: false, reason: "unknown role" };
    let clean = text;
    if (role === "assistant" && looksLikeHtml(text)) {
      clean = htmlToMarkdown(text);
      fix("html converted");
    }
    turns.push({ role, value: clean.trim() });
  }
  const system = turns[0]?.role === "system" ? [turns[0]] : [];
  turns = turns.slice(system.length);
  if (turns.some((t) => t.role === "system")) return { ok: false, reason: "bad turn order" };
  // A conversation scraped from its middle starts with a reply: cut it off.
  let lead = 0;
  while (lead < turns.length && turns[lead]!.role === "assistant") lead++;
  if (lead > 0) {
    turns = turns.slice(lead);
    fix("leading assistant turn removed");
  }
  // A blank turn ends the conversation (what follows has lost its context).
  const blank = turns.findIndex((t) => t.value === "");
  if (blank >= 0) {
    turns = turns.slice(0, blank);
    fix("cut at a blank turn");
  }
  for (let i = 0; i < turns.length; i++) {
    if (turns[i]!.role !== (i % 2 === 0 ? "user" : "assistant"))
      return { ok: false, reason: "bad turn order" };
  }
  if (turns.length % 2 === 1) {
    turns.pop();
    if (turns.length > 0) fix("trailing user turn removed");
  }
  if (turns.length === 0) return { ok: false, reason: "empty" };
  if (options.dropRefusals && turns.some((t) => t.role === "assistant" && findRefusal(t.value))) {
    return { ok: false, reason: "refusal" };
  }
  if (options.lang !== undefined && !inLanguage(turns.map((t) => t.value).join("\n"), options.lang)) {
    return { ok: false, reason: "other language" };
  }
  return { ok: true, turns: [...system, ...turns] };
}

/**
 * Splits a conversation into parts of at most `maxTokens` tokens (message texts, counted without
 * special tokens) at user/assistant pair boundaries; a system message is repeated at the start of
 * every part and counts in each. A single pair over the budget is left out. Returns the parts and
 * how many pairs were left out.
 */
export function splitByTokens(
  turns: Turn[],
  maxTokens: number,
  countTokens: (text: string) => number,
): { parts: Turn[][]; pairsRemoved: number } {
  const system = turns[0]?.role === "system" ? turns[0] : undefined;
  const systemTokens = system ? countTokens(system.value) : 0;
  const parts: Turn[][] = [];
  let current: Turn[] = [];
  let used = systemTokens;
  let pairsRemoved = 0;
  const close = () => {
    if (current.length > 0) parts.push(system ? [system, ...current] : current);
    current = [];
    used = systemTokens;
  };
  for (let i = system ? 1 : 0; i + 1 < turns.length; i += 2) {
    const cost = countTokens(turns[i]!.value) + countTokens(turns[i + 1]!.value);
    if (systemTokens + cost > maxTokens) {
      close();
      pairsRemoved++;
      continue;
    }
    if (used + cost > maxTokens) close();
    current.push(turns[i]!, turns[i + 1]!);
    used += cost;
  }
  close();
  return { parts, pairsRemoved };
}

/** Cleans a ShareGPT file into `output`; see the module comment. */
export async function cleanShareGpt(
  input: string,
  output: string,
  options: CleanShareGptOptions = {},
): Promise<CleanReport> {
  if (options.maxTokens !== undefined && options.tokenizer === undefined) {
    throw new Error("cleanShareGpt: maxTokens needs a tokenizer");
  }
  const report: CleanReport = {
    input,
    output,
    conversations: 0,
    kept: 0,
    written: 0,
    dropped: {},
    fixed: {},
  };
  const drop = (reason: DropReason) => {
    report.dropped[reason] = (report.dropped[reason] ?? 0) + 1;
  };
  const fix = (kind: FixKind, n = 1) => {
    report.fixed[kind] = (report.fixed[kind] ?? 0) + n;
  };
  const seen = new U64Set();
  const countTokens = (text: string) =>
    options.tokenizer!.encode(text, { addSpecial: false, parseSpecial: false }).length;
  // Records holding a `conversations` list, and the first record's format when it has none: a
  // file with no conversation at all is not ShareGPT, and says so instead of writing nothing.
  let conversationLists = 0;
  let firstFormat: string | undefined;
  let firstObject = true;
  const writer = DatasetWriter.create(output);
  try {
    for await (const item of readJsonValues(input, { onBytes: options.onBytes })) {
      report.conversations++;
      if (item.error !== undefined) {
        drop(item.reason === "too long" ? "too long" : "invalid JSON");
        continue;
      }
      if (item.value !== null && typeof item.value === "object" && !Array.isArray(item.value)) {
        if (Array.isArray((item.value as Record<string, unknown>)["conversations"])) conversationLists++;
        else if (firstObject) firstFormat = detectFormat(item.value);
        firstObject = false;
      }
      const fixes: [FixKind, number][] = [];
      const cleaned = cleanConversation(item.value, options, (kind, n = 1) => fixes.push([kind, n]));
      if (!cleaned.ok) {
        drop(cleaned.reason);
        continue;
      }
      const [hi, lo] = hashString64(cleaned.turns.map((t) => `${t.role}\u0000${t.value}`).join("\u0001"));
      if (!seen.add(hi, lo)) {
        drop("duplicate");
        continue;
      }
      const rawId = (item.value as Record<string, unknown>)["id"];
      const id =
        typeof rawId === "string" || typeof rawId === "number"
          ? String(rawId)
          : `conversation_${report.conversations - 1}`;
      let parts = [cleaned.turns];
      if (options.maxTokens !== undefined) {
        const split = splitByTokens(cleaned.turns, options.maxTokens, countTokens);
        if (split.parts.length === 0) {
          drop("too long");
          continue;
        }
        if (split.pairsRemoved > 0) fixes.push(["turn pair over max tokens removed", split.pairsRemoved]);
        if (split.parts.length > 1) fixes.push(["split", 1]);
        parts = split.parts;
      }
      report.kept++;
      for (const [kind, n] of fixes) fix(kind, n);
      for (let k = 0; k < parts.length; k++) {
        await writer.write({
          id: parts.length > 1 ? `${id}_${k}` : id,
          conversations: parts[k]!.map((t) => ({ from: FROM[t.role], value: t.value })),
        });
        report.written++;
      }
    }
    if (conversationLists === 0) {
      throw new UserError(
        report.conversations === 0
          ? `${input}: no records; expected ShareGPT conversations ({"conversations": [{"from", "value"}, ...]})`
          : `${input}: not ShareGPT: none of its ${report.conversations} records has a "conversations" list` +
              (firstFormat
                ? ` (it looks like ${firstFormat} records; data convert --to sharegpt rewrites them)`
                : ""),
      );
    }
    await writer.commit();
  } finally {
    await writer.abort();
  }
  return report;
}
