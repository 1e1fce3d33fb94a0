/**
 * Streams documents out of a plain-text corpus: .txt files (documents separated by blank lines,
 * or one per line, or one per file) and RedPajama-style .jsonl / .json lines with a "text" field.
 * Memory holds one document at a time; a document longer than MAX_DOCUMENT_CHARS is cut at line
 * ends into several.
 */

import { createReadStream, statSync } from "node:fs";
import { createInterface } from "node:readline";
import { UserError } from "../errors.js";

export type DocumentSplit = "blank-line" | "line" | "file";
export const DOCUMENT_SPLITS: readonly DocumentSplit[] = ["blank-line", "line", "file"];

/** Longest document held at once, in characters (32 Mi). */
export const MAX_DOCUMENT_CHARS = 32 << 20;

export interface CorpusReadOptions {
  /** How .txt files divide into documents (default "blank-line"). */
  split?: DocumentSplit;
  /** Skip JSONL lines without a string "text" field instead of stopping (counted in `skipped`). */
  skipInvalid?: boolean;
  /** Skip reasons and counts, filled while reading. */
  skipped?: Record<string, number>;
  /** Called with bytes read so far in this file. */
  onBytes?: (bytes: number) => void;
}

/** Which corpus kind a path is, by extension. */
export function corpusKind(path: string): "text" | "jsonl" {
  if (/\.(jsonl|json|ndjson)$/i.test(path)) return "jsonl";
  return "text";
}

/** Size of a corpus file, or a user error naming it. */
export function corpusFileBytes(path: string): number {
  const st = statSync(path, { throwIfNoEntry: false });
  if (!st) throw new UserError(`${path}: no such file`);
  if (!st.isFile()) throw new UserError(`${path}: not a file`);
  return st.size;
}

/** The documents of one corpus file, in order. */
export async function* readCorpusDocuments(
  path: string,
  options: CorpusReadOptions = {},
): AsyncGenerator<string> {
  corpusFileBytes(path);
  const stream = createReadStream(path, { encoding: "utf8", highWaterMark: 1 << 20 });
  let bytes = 0;
  stream.on("data", (chunk) => {
    bytes += Buffer.byteLength(chunk as string, "utf8");
    options.onBytes?.(bytes);
  });
  const lines = createInterface({ input: stream, crlfDelay: Number.POSITIVE_INFINITY });
  const skip = (reason: string) => {
    if (options.skipped) options.skipped[reason] = (options.skipped[reason] ?? 0) + 1;
  };
  try {
    if (corpusKind(path) === "jsonl") {
      let lineNo = 0;
      for await (const line of lines) {
        lineNo++;
        if (line.trim() === "") continue;
        let record: unknown;
        try {
          record = JSON.parse(line);
        } catch {
          if (options.skipInvalid) {
            skip("not JSON");
            continue;
          }
          throw new UserError(`${path}:${lineNo}: not a JSON object (use --skip-invalid to skip such lines)`);
        }
        const text = (record as { text?: unknown } | null)?.text;
        if (typeof text !== "string") {
          if (options.skipInvalid) {
            skip('no string "text" field');
            continue;
          }
          throw new UserError(
            `${path}:${lineNo}: field text: missing or not a string (use --skip-invalid to skip such lines)`,
          );
        }
        if (text.length === 0) {
          skip("empty text");
          continue;
        }
        yield* cut(text);
      }
      return;
    }
    const split = options.split ?? "blank-line";
    let doc: string[] = [];
    let size = 0;
    const take = () => {
      const text = doc.join("\n");
      doc = [];
      size = 0;
      return text;
    };
    for await (const line of lines) {
      if (split === "line") {
        if (line.trim() !== "") yield* cut(line);
        continue;
      }
      if (split === "blank-line" && line.trim() === "") {
        if (doc.length) yield take();
        continue;
      }
      if (size + line.length + 1 > MAX_DOCUMENT_CHARS && doc.length) yield take();
      doc.push(line);
      size += line.length + 1;
    }
    if (doc.length) {
      const text = take();
      if (text.trim() !== "") yield text;
    }
  } finally {
    lines.close();
    stream.destroy();
  }
}

function* cut(text: string): Generator<string> {
  if (text.length <= MAX_DOCUMENT_CHARS) {
    yield text;
    return;
  }
  for (let i = 0; i < text.length; i += MAX_DOCUMENT_CHARS) yield text.slice(i, i + MAX_DOCUMENT_CHARS);
}
