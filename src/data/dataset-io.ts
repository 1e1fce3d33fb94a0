/**
 * Writing datasets: records in a format's own JSON shape, streamed to a temporary file that is
 * renamed over the output only when everything went well (never a half-written output).
 *
 *   const out = DatasetWriter.create("clean.jsonl");   // "x.json" writes one JSON array instead
 *   try {
 *     for await (const r of reader) await out.write(toFormat(r, "alpaca"));
 *     await out.commit();
 *   } finally {
 *     await out.abort();                                 // no-op after commit
 *   }
 */

import { once } from "node:events";
import { createWriteStream, openSync, renameSync, rmSync, type WriteStream } from "node:fs";
import { basename, dirname, join } from "node:path";
import { UserError } from "../errors.js";
import { Rng } from "../util/random.js";
import type { DatasetFormat, DatasetRecord } from "./records.js";

/** Buffered bytes before a write to the file. */
const FLUSH_CHARS = 1 << 16;

export class DatasetWriter {
  /** Records written. */
  count = 0;
  private buffer = "";
  private done = false;
  private constructor(
    readonly path: string,
    private readonly temp: string,
    private readonly stream: WriteStream,
    /** One JSON array (for a `.json` path) instead of JSON lines. */
    readonly array: boolean,
  ) {}

  /** A writer to `path` (through a temporary file beside it). */
  static create(path: string): DatasetWriter {
    const temp = join(dirname(path), `.${basename(path)}.partial-${process.pid}`);
    let fd: number;
    try {
      fd = openSync(temp, "w");
    } catch (e) {
      throw new UserError(`${path}: cannot write (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
    }
    const stream = createWriteStream(temp, { fd });
    const writer = new DatasetWriter(path, temp, stream, path.toLowerCase().endsWith(".json"));
    // A failed write (a full disk) is reported as one line by check().
    stream.on("error", () => {});
    if (writer.array) writer.buffer = "[";
    return writer;
  }

  async write(value: unknown): Promise<void> {
    const json = JSON.stringify(value);
    if (this.array) this.buffer += this.count === 0 ? `\n${json}` : `,\n${json}`;
    else this.buffer += `${json}\n`;
    this.count++;
    if (this.buffer.length >= FLUSH_CHARS) await this.flush();
  }

  private async flush(): Promise<void> {
    if (this.buffer === "") return;
    const chunk = this.buffer;
    this.buffer = "";
    this.check();
    if (!this.stream.write(chunk)) {
      await settled(this.stream, "drain");
      this.check();
    }
  }

  private check(): void {
    const error = (this.stream as WriteStream & { errored?: Error | null }).errored;
    if (error) {
      const code = (error as NodeJS.ErrnoException).code ?? error.message;
      throw new UserError(`${this.path}: cannot write (${code})`);
    }
  }

  /** Finishes the file and renames it over the output. */
  async commit(): Promise<void> {
    if (this.array) this.buffer += this.count === 0 ? "]\n" : "\n]\n";
    await this.flush();
    this.stream.end();
    await settled(this.stream, "finish");
    this.check();
    renameSync(this.temp, this.path);
    this.done = true;
  }

  /** Removes the temporary file unless committed. */
  async abort(): Promise<void> {
    if (this.done) return;
    this.done = true;
    this.stream.destroy();
    await once(this.stream, "close").catch(() => {});
    rmSync(this.temp, { force: true });
  }
}

/** Resolves on `event` or on an error (which `check` then reports), removing both listeners. */
function settled(stream: WriteStream, event: "drain" | "finish"): Promise<void> {
  return new Promise((resolve) => {
    if ((stream as WriteStream & { errored?: Error | null }).errored) return resolve();
    const done = () => {
      stream.off(event, done);
      stream.off("error", done);
      resolve();
    };
    stream.on(event, done);
    stream.on("error", done);
  });
}

// ---------------------------------------------------------------------------------------------
// Record shapes

/** Formats records can be written in. */
export const OUTPUT_FORMATS = [
  "alpaca",
  "sharegpt",
  "messages",
  "completion",
] as const satisfies readonly DatasetFormat[];

/** Why a record cannot be written in a format. */
export type ConvertReason = "multi-turn" | "system message" | "not a chat record" | "not a completion record";

export type Converted = { ok: true; value: Record<string, unknown> } | { ok: false; reason: ConvertReason };

const SHAREGPT_FROM = { system: "system", user: "human", assistant: "gpt" } as const;

/** A user message's text with its Alpaca input after a blank line, as one message holds it. */
export function userText(content: string, input: string | undefined): string {
  return input === undefined || input === "" ? content : `${content}\n\n${input}`;
}

/**
 * A record in `format`'s shape. Alpaca holds one exchange with no system message; ShareGPT and chat
 * messages hold any conversation (an Alpaca input is joined to its instruction after a blank line);
 * completion records stay completion records.
 */
export function toFormat(record: DatasetRecord, format: DatasetFormat): Converted {
  if (record.kind === "completion") {
    if (format !== "completion") return { ok: false, reason: "not a chat record" };
    return {
      ok: true,
      value: { prompt: record.messages[0]!.content, completion: record.messages[1]!.content },
    };
  }
  const messages = record.messages;
  switch (format) {
    case "completion":
      return { ok: false, reason: "not a completion record" };
    case "alpaca": {
      if (messages[0]!.role === "system") return { ok: false, reason: "system message" };
      if (messages.length !== 2) return { ok: false, reason: "multi-turn" };
      return {
        ok: true,
        value: {
          instruction: messages[0]!.content,
          input: messages[0]!.input ?? "",
          output: messages[1]!.content,
        },
      };
    }
    case "sharegpt":
      return {
        ok: true,
        value: {
          conversations: messages.map((m) => ({
            from: SHAREGPT_FROM[m.role],
            value: userText(m.content, m.input),
          })),
        },
      };
    case "messages":
      return {
        ok: true,
        value: {
          messages: messages.map((m) =>
            m.train === false
              ? { role: m.role, content: m.content, weight: 0 }
              : { role: m.role, content: userText(m.content, m.input) },
          ),
        },
      };
  }
}

/**
 * What a record asks: its user messages (an Alpaca instruction with its input; every user turn of
 * a conversation), one per line.
 */
export function instructionOf(record: DatasetRecord): string {
  return record.messages
    .filter((m) => m.role === "user")
    .map((m) => userText(m.content, m.input))
    .join("\n");
}

/** Every text of a record with its role, for exact comparison. */
export function recordKey(record: DatasetRecord): string {
  return record.messages.map((m) => `${m.role}\u0000${m.content}\u0000${m.input ?? ""}`).join("\u0001");
}

/** All message text of a record. */
export function recordText(record: DatasetRecord): string {
  return record.messages.map((m) => userText(m.content, m.input)).join("\n");
}

// ---------------------------------------------------------------------------------------------
// Seeded selection

/**
 * A uniformly random set of `k` of the indices 0..n-1 (Floyd's algorithm), as a bitmap: n/8 bytes
 * whatever k is. The same seed gives the same set.
 */
export function chooseIndices(n: number, k: number, seed: number): Uint8Array {
  if (k > n) throw new RangeError(`chooseIndices: ${k} of ${n}`);
  const chosen = new Uint8Array(Math.ceil(n / 8));
  const has = (i: number) => (chosen[i >> 3]! & (1 << (i & 7))) !== 0;
  const set = (i: number) => {
    chosen[i >> 3]! |= 1 << (i & 7);
  };
  const rng = new Rng(seed);
  for (let j = n - k; j < n; j++) {
    const t = j + 1 <= 4294967296 ? rng.nextInt(j + 1) : Math.floor(rng.nextFloat() * (j + 1));
    set(has(t) ? j : t);
  }
  return chosen;
}

/** Whether index i is in a set from chooseIndices. */
export function isChosen(chosen: Uint8Array, i: number): boolean {
  return (chosen[i >> 3]! & (1 << (i & 7))) !== 0;
}
