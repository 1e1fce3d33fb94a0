/**
 * Instruction datasets: read Alpaca, ShareGPT, chat-messages and prompt/completion files into one
 * record type, validating every record.
 *
 *   const reader = await RecordReader.open("data.jsonl", { skipInvalid: true });
 *   console.log(reader.format);                 // detected from the first record, or options.format
 *   for await (const record of reader) use(record.messages, record.source);
 *   console.log(reader.skipped);                // Map reason -> count
 *
 * Files: JSONL (one JSON object per line; blank lines are ignored) or one JSON array of objects.
 * Both are streamed: JSONL line by line, a JSON array element by element, so memory holds one
 * record at a time whatever the file size. A line or element longer than MAX_LINE_CHARS (the
 * corpus reader's limit, 32 Mi characters) is not held: it is an invalid record, reason "too long".
 * A leading UTF-8 byte-order mark is ignored. Which of the two a file is follows from its first
 * non-blank character: `[` is a JSON array, anything else JSONL.
 *
 * Formats (one per file; detected from the first record's keys, or forced with `format`):
 *   alpaca      {instruction, input?, output}; also self-instruct seed tasks
 *               {instruction, instances: [{input, output}, ...]}, one record per instance.
 *               -> a user message (input kept in `input`, as the alpaca template wants it) and an
 *               assistant message; no system message, so each template uses its own default.
 *   sharegpt    {conversations: [{from: human | gpt | system, value}, ...]}
 *   messages    {messages: [{role: system | user | assistant, content, weight?: 0 | 1}, ...]}
 *               (OpenAI chat fine-tuning JSONL; content may also be a list of {type: "text", text}
 *               parts; an assistant message with weight 0 is context only, not trained on)
 *   completion  {prompt, completion}: plain text, tokenized as is with no chat template.
 *
 * A conversation is valid when: an optional system message comes first, then user and assistant
 * messages alternate starting with a user message and ending with an assistant message; user and
 * assistant texts are not blank. Other keys of a record are ignored.
 *
 * Errors: an invalid record is a RecordIssue (file, line, array index for JSON arrays, field,
 * problem, reason). Without `skipInvalid` the first one throws InvalidRecordError (a UserError whose
 * message is one line: `data.jsonl:3: field output: missing`); with it, the record is skipped and
 * counted by reason. A file that is not JSON at all (an unterminated array, text after it) is a
 * UserError either way.
 */

import { createReadStream, statSync } from "node:fs";
import { UserError } from "../errors.js";
import type { ChatRole } from "../model/templates.js";
import { lineTooLong, MAX_LINE_CHARS } from "./corpus.js";

export const DATASET_FORMATS = ["alpaca", "sharegpt", "messages", "completion"] as const;
export type DatasetFormat = (typeof DATASET_FORMATS)[number];

/** Where a record comes from: its file, the line it starts on (1-based) and, in a JSON array, its index. */
export interface RecordSource {
  file: string;
  line: number;
  index?: number;
}

export interface DatasetMessage {
  role: ChatRole;
  content: string;
  /** An Alpaca record's `input`, on its user message (templates place it; see model/templates.ts). */
  input?: string;
  /** False for an assistant message kept as context but not trained on (OpenAI's `weight: 0`). */
  train?: boolean;
}

/**
 * One normalized record. A "chat" record is rendered with a chat template. A "completion" record
 * holds exactly two messages, the prompt (user) and the completion (assistant), which are tokenized
 * as plain text one after the other, with no template around them.
 */
export interface DatasetRecord {
  kind: "chat" | "completion";
  messages: DatasetMessage[];
  source: RecordSource;
}

/** Why a record is invalid; `skipped` counts use these. */
export type InvalidReason =
  | "invalid JSON"
  | "not an object"
  | "missing field"
  | "wrong type"
  | "blank text"
  | "empty list"
  | "unknown role"
  | "bad turn order"
  | "template error"
  | "too long";

export interface RecordIssue {
  source: RecordSource;
  /** Path of the offending field, e.g. `conversations[2].from`; absent for a whole-record problem. */
  field?: string;
  problem: string;
  reason: InvalidReason;
}

/** `data.jsonl:3` or `data.json:12 (array index 3)`. */
export function describeSource(source: RecordSource): string {
  const at = `${source.file}:${source.line}`;
  return source.index === undefined ? at : `${at} (array index ${source.index})`;
}

/** The one-line message for an issue: `data.jsonl:3: field output: missing`. */
export function describeIssue(issue: RecordIssue): string {
  const field = issue.field === undefined ? "" : `field ${issue.field}: `;
  return `${describeSource(issue.source)}: ${field}${issue.problem}`;
}

/** An invalid record met while reading without `skipInvalid`. */
export class InvalidRecordError extends UserError {
  override name = "InvalidRecordError";
  constructor(readonly issue: RecordIssue) {
    super(describeIssue(issue));
  }
}

export type ParsedRecord = { ok: true; records: DatasetRecord[] } | { ok: false; issue: RecordIssue };

const FORMAT_KEYS: { format: DatasetFormat; keys: string[] }[] = [
  { format: "sharegpt", keys: ["conversations"] },
  { format: "messages", keys: ["messages"] },
  { format: "alpaca", keys: ["instruction"] },
  { format: "completion", keys: ["prompt", "completion"] },
];

/** The format a record's keys point to, or undefined when they fit none. */
export function detectFormat(value: unknown): DatasetFormat | undefined {
  if (!isObject(value)) return undefined;
  return FORMAT_KEYS.find(({ keys }) => keys.every((k) => k in value))?.format;
}

/** Parses a string flag into a format; UserError listing the valid names otherwise. */
export function parseFormatName(s: string): DatasetFormat {
  const found = DATASET_FORMATS.find((f) => f === s.trim().toLowerCase());
  if (found === undefined) {
    throw new UserError(`unknown dataset format "${s}"; valid formats: ${DATASET_FORMATS.join(", ")}`);
  }
  return found;
}

/** Validates one parsed JSON value as a record of `format` and normalizes it. */
export function parseRecord(value: unknown, format: DatasetFormat, source: RecordSource): ParsedRecord {
  try {
    if (!isObject(value))
      throw issue(undefined, `expected a JSON object, got ${typeName(value)}`, "not an object");
    switch (format) {
      case "alpaca":
        return { ok: true, records: alpaca(value, source) };
      case "sharegpt":
        return { ok: true, records: [chat(sharegptMessages(value), source, SHAREGPT_FIELDS)] };
      case "messages":
        return { ok: true, records: [chat(openaiMessages(value), source, MESSAGES_FIELDS)] };
      case "completion":
        return { ok: true, records: [completion(value, source)] };
    }
  } catch (e) {
    if (e instanceof FieldIssue) {
      return { ok: false, issue: { source, field: e.field, problem: e.problem, reason: e.reason } };
    }
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Validation of one record

class FieldIssue {
  constructor(
    readonly field: string | undefined,
    readonly problem: string,
    readonly reason: InvalidReason,
  ) {}
}

function issue(field: string | undefined, problem: string, reason: InvalidReason): FieldIssue {
  return new FieldIssue(field, problem, reason);
}

type JsonObject = Record<string, unknown>;

function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

function requireField(obj: JsonObject, key: string, path: string): unknown {
  if (!(key in obj) || obj[key] === undefined) throw issue(path, "missing", "missing field");
  return obj[key];
}

function requireString(obj: JsonObject, key: string, path: string): string {
  const v = requireField(obj, key, path);
  if (typeof v !== "string") throw issue(path, `expected a string, got ${typeName(v)}`, "wrong type");
  return v;
}

function requireText(obj: JsonObject, key: string, path: string): string {
  const v = requireString(obj, key, path);
  if (v.trim() === "") throw issue(path, "blank", "blank text");
  return v;
}

function requireArray(obj: JsonObject, key: string, path: string): unknown[] {
  const v = requireField(obj, key, path);
  if (!Array.isArray(v)) throw issue(path, `expected an array, got ${typeName(v)}`, "wrong type");
  if (v.length === 0) throw issue(path, "empty list", "empty list");
  return v;
}

function requireObject(v: unknown, path: string): JsonObject {
  if (!isObject(v)) throw issue(path, `expected an object, got ${typeName(v)}`, "wrong type");
  return v;
}

function alpaca(obj: JsonObject, source: RecordSource): DatasetRecord[] {
  const instruction = requireText(obj, "instruction", "instruction");
  const pair = (holder: JsonObject, prefix: string): DatasetRecord => {
    let input = "";
    if (holder["input"] !== undefined && holder["input"] !== null) {
      input = requireString(holder, "input", `${prefix}input`);
    }
    const output = requireText(holder, "output", `${prefix}output`);
    const user: DatasetMessage = { role: "user", content: instruction };
    if (input !== "") user.input = input;
    return { kind: "chat", messages: [user, { role: "assistant", content: output }], source };
  };
  if (!("output" in obj) && "instances" in obj) {
    return requireArray(obj, "instances", "instances").map((inst, i) =>
      pair(requireObject(inst, `instances[${i}]`), `instances[${i}].`),
    );
  }
  return [pair(obj, "")];
}

const SHAREGPT_ROLES: Record<string, ChatRole> = { human: "user", gpt: "assistant", system: "system" };

function sharegptMessages(obj: JsonObject): DatasetMessage[] {
  return requireArray(obj, "conversations", "conversations").map((turn, i) => {
    const path = `conversations[${i}]`;
    const t = requireObject(turn, path);
    const from = requireString(t, "from", `${path}.from`);
    const role = SHAREGPT_ROLES[from];
    if (role === undefined) {
      throw issue(`${path}.from`, `${JSON.stringify(from)} is not one of human, gpt, system`, "unknown role");
    }
    return { role, content: requireString(t, "value", `${path}.value`) };
  });
}

const OPENAI_ROLES = new Set<string>(["system", "user", "assistant"]);

function openaiMessages(obj: JsonObject): DatasetMessage[] {
  return requireArray(obj, "messages", "messages").map((message, i) => {
    const path = `messages[${i}]`;
    const m = requireObject(message, path);
    const role = requireString(m, "role", `${path}.role`);
    if (!OPENAI_ROLES.has(role)) {
      throw issue(
        `${path}.role`,
        `${JSON.stringify(role)} is not one of system, user, assistant`,
        "unknown role",
      );
    }
    const out: DatasetMessage = { role: role as ChatRole, content: openaiContent(m, `${path}.content`) };
    if (m["weight"] !== undefined) {
      if (role !== "assistant")
        throw issue(`${path}.weight`, "only assistant messages have a weight", "wrong type");
      if (m["weight"] !== 0 && m["weight"] !== 1) {
        throw issue(`${path}.weight`, `expected 0 or 1, got ${JSON.stringify(m["weight"])}`, "wrong type");
      }
      if (m["weight"] === 0) out.train = false;
    }
    return out;
  });
}

/** A string, or a list of text parts joined (OpenAI's content-part form); nothing else. */
function openaiContent(m: JsonObject, path: string): string {
  const v = requireField(m, "content", path);
  if (typeof v === "string") return v;
  if (!Array.isArray(v))
    throw issue(path, `expected a string or a list of text parts, got ${typeName(v)}`, "wrong type");
  return v
    .map((part, j) => {
      const p = requireObject(part, `${path}[${j}]`);
      if (p["type"] !== "text") {
        throw issue(
          `${path}[${j}].type`,
          `${JSON.stringify(p["type"])} parts are not supported (text only)`,
          "wrong type",
        );
      }
      return requireString(p, "text", `${path}[${j}].text`);
    })
    .join("");
}

/** Field names of a conversation format, for messages. */
interface ConversationFields {
  list: string;
  text: string;
}
const SHAREGPT_FIELDS: ConversationFields = { list: "conversations", text: "value" };
const MESSAGES_FIELDS: ConversationFields = { list: "messages", text: "content" };

/** Checks the turn structure shared by ShareGPT and chat messages. */
function chat(messages: DatasetMessage[], source: RecordSource, fields: ConversationFields): DatasetRecord {
  const first = messages[0]?.role === "system" ? 1 : 0;
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i]!;
    const at = `${fields.list}[${i}]`;
    if (m.role === "system") {
      if (i !== 0) throw issue(at, "a system message may only come first", "bad turn order");
      continue;
    }
    const expected: ChatRole = (i - first) % 2 === 0 ? "user" : "assistant";
    if (m.role !== expected) {
      throw issue(
        at,
        `expected a ${expected} message, got ${m.role} (user and assistant messages must alternate, user first)`,
        "bad turn order",
      );
    }
    if (m.content.trim() === "") throw issue(`${at}.${fields.text}`, "blank", "blank text");
  }
  const last = messages[messages.length - 1]!;
  if (last.role !== "assistant") {
    const problem =
      messages.length === first
        ? "has no user or assistant message"
        : `ends with a ${last.role} message, not an assistant reply`;
    throw issue(fields.list, problem, "bad turn order");
  }
  return { kind: "chat", messages, source };
}

function completion(obj: JsonObject, source: RecordSource): DatasetRecord {
  const prompt = requireString(obj, "prompt", "prompt");
  const text = requireText(obj, "completion", "completion");
  return {
    kind: "completion",
    messages: [
      { role: "user", content: prompt },
      { role: "assistant", content: text },
    ],
    source,
  };
}

// ---------------------------------------------------------------------------------------------
// Streaming the file: JSONL lines or JSON array elements

/** One JSON value of the file (or why it could not be parsed) and where it starts. */
export interface RawItem {
  source: RecordSource;
  value?: unknown;
  error?: string;
  /** Why, for an error: "invalid JSON" unless said ("too long": over the line limit, not parsed). */
  reason?: InvalidReason;
}

const CHUNK_BYTES = 1 << 20;

/** JSON.parse's message without its position noise, on one line. */
function jsonError(e: unknown): string {
  const message = e instanceof Error ? e.message : String(e);
  return message.replace(/\s*\n\s*/g, " ").trim();
}

/**
 * Streams a file's JSON values: JSONL lines, or the elements of one top-level array. Each element
 * is collected on its own (strings and nesting tracked character by character) and parsed with
 * JSON.parse, so only one element is in memory at a time. A line or element over `maxChars` is
 * not collected: it is reported as a "too long" item as soon as it passes the limit (so a reader
 * that stops at the first error stops there), and the rest of it is skipped.
 */
async function* rawItems(
  path: string,
  chunkBytes: number,
  onBytes: (n: number) => void,
  maxChars = MAX_LINE_CHARS,
): AsyncGenerator<RawItem> {
  const stream = createReadStream(path, { highWaterMark: chunkBytes });
  const decoder = new TextDecoder("utf-8");
  let mode: "start" | "jsonl" | "array" = "start";
  let line = 1;

  // JSONL state: the text of the current line so far.
  let pendingLine = "";
  // The current line or element passed maxChars and was reported; the rest of it is skipped.
  let overlong = false;
  const tooLong = (source: RecordSource): RawItem => ({
    source,
    error: source.index === undefined ? lineTooLong(maxChars) : `record longer than ${maxChars} characters`,
    reason: "too long",
  });
  let elementChars = 0; // characters of the current element collected so far
  // JSON array state.
  let arrayState: "value" | "comma" | "done" = "value"; // what comes next at depth 0
  let index = 0;
  let parts: string[] = []; // the current element's text, across chunks
  let inElement = false;
  let elementLine = 0;
  let depth = 0; // nesting inside the current element
  let inString = false;
  let escaped = false;
  let scalar = false; // the element is a number or literal

  const jsonlItem = (text: string, at: number): RawItem | undefined => {
    const trimmed = text.endsWith("\r") ? text.slice(0, -1) : text;
    if (trimmed.trim() === "") return undefined;
    const source = { file: path, line: at };
    try {
      return { source, value: JSON.parse(trimmed) };
    } catch (e) {
      const hint =
        at === 1 && trimmed.trim() === "{"
          ? " (JSONL has one record per line; a JSON file must hold an array of records)"
          : "";
      return { source, error: `invalid JSON: ${jsonError(e)}${hint}` };
    }
  };
  /** The element just ended, or undefined when it was reported as too long already. */
  const arrayItem = (): RawItem | undefined => {
    const source = { file: path, line: elementLine, index: index++ };
    const chars = elementChars;
    elementChars = 0;
    if (overlong) {
      overlong = false;
      return undefined;
    }
    if (chars > maxChars) {
      parts = [];
      return tooLong(source);
    }
    const text = parts.join("");
    parts = [];
    try {
      return { source, value: JSON.parse(text) };
    } catch (e) {
      return { source, error: `invalid JSON: ${jsonError(e)}` };
    }
  };
  /** Adds chunk[from, to) to the current element, unless it is already over the limit. */
  const collect = (chunk: string, from: number, to: number): void => {
    elementChars += to - from;
    if (!overlong && elementChars <= maxChars) parts.push(chunk.slice(from, to));
  };
  const malformed = (what: string): never => {
    throw new UserError(`${path}:${line}: ${what}`);
  };

  let first = true;
  for await (const buffer of stream) {
    const bytes = buffer as Buffer;
    onBytes(bytes.length);
    let chunk = decoder.decode(bytes, { stream: true });
    if (first && chunk.length > 0) {
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
      first = false;
    }
    let i = 0;
    if (mode === "start") {
      while (i < chunk.length && /\s/.test(chunk[i]!)) {
        if (chunk[i] === "\n") line++;
        i++;
      }
      if (i === chunk.length) continue;
      if (chunk[i] === "[") {
        mode = "array";
        i++;
      } else {
        mode = "jsonl";
        // Lines skipped above were blank; keep counting from the one we are on.
        chunk = chunk.slice(chunk.lastIndexOf("\n", i) + 1);
        i = 0;
      }
    }
    if (mode === "jsonl") {
      let start = 0;
      for (let nl = chunk.indexOf("\n", start); nl >= 0; nl = chunk.indexOf("\n", start)) {
        if (overlong) overlong = false;
        else if (pendingLine.length + nl - start > maxChars) yield tooLong({ file: path, line });
        else {
          const item = jsonlItem(pendingLine + chunk.slice(start, nl), line);
          if (item) yield item;
        }
        pendingLine = "";
        line++;
        start = nl + 1;
      }
      if (overlong) continue;
      if (pendingLine.length + chunk.length - start > maxChars) {
        pendingLine = "";
        overlong = true;
        yield tooLong({ file: path, line });
      } else pendingLine += chunk.slice(start);
      continue;
    }
    // JSON array: walk the characters.
    let elementStart = inElement ? 0 : -1;
    for (; i < chunk.length; i++) {
      const c = chunk.charCodeAt(i);
      if (inElement) {
        if (inString) {
          if (escaped) escaped = false;
          else if (c === 0x5c /* \ */) escaped = true;
          else if (c === 0x22 /* " */) {
            inString = false;
            if (depth === 0) {
              collect(chunk, elementStart, i + 1);
              inElement = false;
              const item = arrayItem();
              if (item) yield item;
              arrayState = "comma";
            }
          } else if (c === 0x0a) line++;
          continue;
        }
        if (scalar) {
          if (c === 0x2c || c === 0x5d || c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) {
            collect(chunk, elementStart, i);
            inElement = false;
            scalar = false;
            const item = arrayItem();
            if (item) yield item;
            arrayState = "comma";
            i--; // look at the delimiter again at depth 0
          }
          continue;
        }
        if (c === 0x22) inString = true;
        else if (c === 0x7b || c === 0x5b) depth++;
        else if (c === 0x7d || c === 0x5d) {
          depth--;
          if (depth === 0) {
            collect(chunk, elementStart, i + 1);
            inElement = false;
            const item = arrayItem();
            if (item) yield item;
            arrayState = "comma";
          }
        } else if (c === 0x0a) line++;
        continue;
      }
      // Between elements, at the array's own level.
      if (c === 0x0a) {
        line++;
        continue;
      }
      if (c === 0x20 || c === 0x0d || c === 0x09) continue;
      if (arrayState === "done") malformed("unexpected text after the JSON array");
      if (c === 0x5d /* ] */) {
        if (arrayState === "value" && index > 0) malformed("invalid JSON array: a comma before ']'");
        arrayState = "done";
        continue;
      }
      if (arrayState === "comma") {
        if (c !== 0x2c) malformed(`invalid JSON array: expected ',' or ']' after element ${index - 1}`);
        arrayState = "value";
        continue;
      }
      if (c === 0x2c) malformed("invalid JSON array: an element is missing before ','");
      inElement = true;
      elementStart = i;
      elementLine = line;
      if (c === 0x22) inString = true;
      else if (c === 0x7b || c === 0x5b) depth = 1;
      else scalar = true;
    }
    if (inElement) {
      collect(chunk, elementStart, chunk.length);
      if (elementChars > maxChars && !overlong) {
        parts = [];
        overlong = true;
        yield tooLong({ file: path, line: elementLine, index });
      }
    }
  }
  const tail = decoder.decode();
  if (mode === "jsonl") {
    if (!overlong) {
      if (pendingLine.length + tail.length > maxChars) yield tooLong({ file: path, line });
      else {
        const item = jsonlItem(pendingLine + tail, line);
        if (item) yield item;
      }
    }
  } else if (mode === "array") {
    if (inElement && scalar && !inString) {
      inElement = false;
      const item = arrayItem();
      if (item) yield item;
      arrayState = "comma";
    }
    if (arrayState !== "done") {
      throw new UserError(`${path}: the file ends inside its JSON array (truncated?)`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The reader

export interface ReadRecordsOptions {
  /** The file's format; detected from its first record when absent. */
  format?: DatasetFormat;
  /** Skip invalid records (counted in `skipped`) instead of throwing InvalidRecordError. */
  skipInvalid?: boolean;
  /** Called for every skipped record (only with skipInvalid). */
  onSkip?: (issue: RecordIssue) => void;
  /** Bytes read from the file at a time (default 1 MiB). */
  chunkBytes?: number;
  /** Longest line or JSON array element in characters (default MAX_LINE_CHARS, as for corpora). */
  maxLineChars?: number;
}

/**
 * A dataset file read as a stream of normalized records; iterate it once. `open` reads up to the
 * first JSON object to settle the format, so `format` is known before iteration starts.
 */
export class RecordReader implements AsyncIterable<DatasetRecord> {
  /** Records skipped so far, by reason (with skipInvalid). */
  readonly skipped = new Map<InvalidReason, number>();
  /** Records yielded so far. */
  records = 0;
  /** Bytes of the file read so far (for progress). */
  bytesRead = 0;
  private started = false;

  private constructor(
    readonly path: string,
    readonly size: number,
    readonly format: DatasetFormat,
    /** True when the format came from the first record, false when it was given. */
    readonly detected: boolean,
    private readonly items: AsyncGenerator<RawItem>,
    private readonly buffered: RawItem[],
    private readonly options: ReadRecordsOptions,
  ) {}

  static async open(path: string, options: ReadRecordsOptions = {}): Promise<RecordReader> {
    const size = datasetFileSize(path);
    let reader: RecordReader | undefined;
    let bytes = 0;
    const items = rawItems(
      path,
      options.chunkBytes ?? CHUNK_BYTES,
      (n) => {
        bytes += n;
        if (reader) reader.bytesRead = bytes;
      },
      options.maxLineChars,
    );
    const buffered: RawItem[] = [];
    let format = options.format;
    if (format === undefined) {
      // Read up to the first JSON object and take the format from its keys.
      for (;;) {
        const next = await items.next();
        if (next.done) break;
        buffered.push(next.value);
        const value = next.value.value;
        if (isObject(value)) {
          format = detectFormat(value);
          if (format === undefined) {
            const keys = Object.keys(value).slice(0, 8).join(", ");
            throw new UserError(
              `${describeSource(next.value.source)}: cannot tell the dataset format from the first record (keys: ${keys || "none"}); ` +
                `expected alpaca (instruction, input, output), sharegpt (conversations), messages (messages) or completion (prompt, completion); choose one with --format`,
            );
          }
          break;
        }
      }
      if (format === undefined) {
        const bad = buffered.find((b) => b.error !== undefined || !isObject(b.value));
        if (bad && !options.skipInvalid) {
          const problem = bad.error ?? `expected a JSON object, got ${typeName(bad.value)}`;
          throw new InvalidRecordError({
            source: bad.source,
            problem,
            reason: bad.error ? (bad.reason ?? "invalid JSON") : "not an object",
          });
        }
        throw new UserError(`${path}: no records to tell the dataset format from; choose one with --format`);
      }
    }
    reader = new RecordReader(path, size, format, options.format === undefined, items, buffered, options);
    reader.bytesRead = bytes;
    return reader;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<DatasetRecord> {
    if (this.started) throw new Error("RecordReader: a reader can be iterated only once");
    this.started = true;
    const handle = (item: RawItem): DatasetRecord[] => {
      if (item.error !== undefined)
        return this.reject({
          source: item.source,
          problem: item.error,
          reason: item.reason ?? "invalid JSON",
        });
      const parsed = parseRecord(item.value, this.format, item.source);
      return parsed.ok ? parsed.records : this.reject(parsed.issue);
    };
    for (const item of this.buffered.splice(0)) {
      for (const r of handle(item)) {
        this.records++;
        yield r;
      }
    }
    for await (const item of this.items) {
      for (const r of handle(item)) {
        this.records++;
        yield r;
      }
    }
  }

  /** Counts a skipped record (skipInvalid) or throws. Also used for records later stages reject. */
  reject(issue: RecordIssue): never[] {
    if (!this.options.skipInvalid) throw new InvalidRecordError(issue);
    this.skipped.set(issue.reason, (this.skipped.get(issue.reason) ?? 0) + 1);
    this.options.onSkip?.(issue);
    return [];
  }

  /** Stops reading and closes the file (for a reader left before its end). */
  async close(): Promise<void> {
    this.started = true;
    await this.items.return(undefined);
  }

  /** Total records skipped. */
  get skippedCount(): number {
    let n = 0;
    for (const c of this.skipped.values()) n += c;
    return n;
  }
}

/** The size of a dataset file; a UserError when it is missing, unreadable or not a file. */
function datasetFileSize(path: string): number {
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new UserError(`${path}: not a file`);
    return st.size;
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`${path}: cannot read the file (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
}

/**
 * Streams a dataset file's JSON values as they stand, before any validation as records (JSONL lines
 * or JSON array elements, one in memory at a time), for tools that repair records instead of
 * rejecting them. `onBytes` gets the bytes read so far.
 */
export async function* readJsonValues(
  path: string,
  options: { chunkBytes?: number; onBytes?: (bytesRead: number) => void; maxLineChars?: number } = {},
): AsyncGenerator<RawItem> {
  datasetFileSize(path);
  let bytes = 0;
  yield* rawItems(
    path,
    options.chunkBytes ?? CHUNK_BYTES,
    (n) => {
      bytes += n;
      options.onBytes?.(bytes);
    },
    options.maxLineChars,
  );
}

/** Streams the normalized records of a file (see RecordReader for the counts and the format). */
export async function* readRecords(
  path: string,
  options: ReadRecordsOptions = {},
): AsyncGenerator<DatasetRecord> {
  yield* await RecordReader.open(path, options);
}
