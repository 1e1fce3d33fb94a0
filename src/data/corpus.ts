/**
 * Streams the documents of a pretraining corpus, one file at a time, in bounded memory:
 *
 * - `.txt` (any name not listed below): plain UTF-8 text. By default documents are separated by
 *   blank lines (lines of nothing but whitespace); `split: "line"` makes every non-blank line a
 *   document and `split: "file"` the whole file one document. Line ends become "\n" (CRLF too).
 * - `.jsonl` / `.ndjson` / `.json`: one JSON object per line, RedPajama style; its "text" string
 *   is one document, other fields are ignored. Blank lines are passed over; a line that is not
 *   JSON or has no string "text" stops reading with `file:line: problem` unless `skipInvalid`
 *   is set, which counts it by reason instead.
 * - any of these gzip-compressed, with ".gz" after the name.
 *
 * The file is read in 1 MiB chunks; memory holds one document at a time. A document longer than
 * MAX_DOCUMENT_CHARS is cut into several (at a line end when it has lines), and a JSONL line
 * longer than that is an error (or skipped), so no input makes memory grow past a few times that.
 */

import { createReadStream, statSync } from "node:fs";
import type { Readable } from "node:stream";
import { createGunzip } from "node:zlib";
import { UserError } from "../errors.js";

export type DocumentSplit = "blank-line" | "line" | "file";
export const DOCUMENT_SPLITS: readonly DocumentSplit[] = ["blank-line", "line", "file"];

/** Longest document (and JSONL line) held at once, in UTF-16 code units: 32 Mi. */
export const MAX_DOCUMENT_CHARS = 32 << 20;

const CHUNK_BYTES = 1 << 20;

export interface CorpusReadOptions {
  /** How a text file divides into documents (default "blank-line"). */
  split?: DocumentSplit;
  /** Skip bad JSONL lines instead of stopping; they are counted in `skipped` by reason. */
  skipInvalid?: boolean;
  /** Skip reasons and counts, added to while reading. */
  skipped?: Record<string, number>;
  /** Called after each chunk with the bytes of the file read so far (compressed bytes for .gz). */
  onBytes?: (bytes: number) => void;
  /** Longest document in UTF-16 code units (default MAX_DOCUMENT_CHARS). */
  maxDocumentChars?: number;
}

const UNSUPPORTED_COMPRESSION = /\.(zst|zstd|xz|bz2|lz4|zip|7z|tar)$/i;

/** How a corpus file is read, from its name: text or JSONL, gzip or not. */
export function corpusKind(path: string): { kind: "text" | "jsonl"; gzip: boolean } {
  const compressed = UNSUPPORTED_COMPRESSION.exec(path);
  if (compressed) {
    throw new UserError(`${path}: ${compressed[0]} files are not read; decompress it (or gzip it) first`);
  }
  const gzip = /\.gz$/i.test(path);
  const name = gzip ? path.slice(0, -3) : path;
  return { kind: /\.(jsonl|ndjson|json)$/i.test(name) ? "jsonl" : "text", gzip };
}

/** Size of a corpus file on disk, or a one-line error naming it. */
export function corpusFileBytes(path: string): number {
  const st = statSync(path, { throwIfNoEntry: false });
  if (!st) throw new UserError(`${path}: no such file`);
  if (!st.isFile()) throw new UserError(`${path}: not a file`);
  return st.size;
}

/** A piece of a line: the whole line, or (for lines over the limit) a part that `ends` says. */
interface LinePiece {
  text: string;
  /** The line ends after this piece. */
  ends: boolean;
}

function readError(path: string, e: unknown): UserError {
  if (e instanceof UserError) return e;
  const err = e as NodeJS.ErrnoException;
  if (err.code?.startsWith("Z_")) return new UserError(`${path}: not a valid gzip file (${err.message})`);
  return new UserError(`${path}: cannot read (${err.code ?? err.message})`);
}

/** The file's lines without their line ends, long lines in pieces of at most `limit` characters. */
async function* readLinePieces(
  path: string,
  gzip: boolean,
  limit: number,
  onBytes?: (bytes: number) => void,
): AsyncGenerator<LinePiece> {
  const file = createReadStream(path, { highWaterMark: CHUNK_BYTES });
  let source: Readable = file;
  if (gzip) {
    const gunzip = createGunzip({ chunkSize: CHUNK_BYTES });
    file.on("error", (e) => gunzip.destroy(e));
    source = file.pipe(gunzip);
  }
  // Invalid UTF-8 becomes U+FFFD; a byte order mark at the start is dropped.
  const decoder = new TextDecoder("utf-8");
  let pending = ""; // the current line so far; it never holds a "\n"
  /** A whole line (its "\r" dropped), in pieces when it is over the limit. */
  function* line(text: string): Generator<LinePiece> {
    let start = 0;
    for (; text.length - start > limit; start += limit)
      yield { text: text.slice(start, start + limit), ends: false };
    let end = text.length;
    if (text.charCodeAt(end - 1) === 13) end--;
    yield { text: start === 0 && end === text.length ? text : text.slice(start, end), ends: true };
  }
  try {
    for await (const chunk of source) {
      onBytes?.(file.bytesRead);
      const fresh = decoder.decode(chunk as Buffer, { stream: true });
      let start = 0;
      for (let nl = fresh.indexOf("\n"); nl >= 0; nl = fresh.indexOf("\n", start)) {
        yield* line(pending + fresh.slice(start, nl));
        pending = "";
        start = nl + 1;
      }
      pending += start === 0 ? fresh : fresh.slice(start);
      // An unfinished line over the limit: hand its first part on now.
      while (pending.length > limit) {
        yield { text: pending.slice(0, limit), ends: false };
        pending = pending.slice(limit);
      }
    }
    pending += decoder.decode();
    if (pending.length > 0) yield* line(pending);
  } catch (e) {
    throw readError(path, e);
  } finally {
    source.destroy();
    file.destroy();
  }
}

/** The documents of one corpus file, in order (see the file comment for the formats). */
export async function* readCorpusDocuments(
  path: string,
  options: CorpusReadOptions = {},
): AsyncGenerator<string> {
  corpusFileBytes(path);
  const { kind, gzip } = corpusKind(path);
  const limit = options.maxDocumentChars ?? MAX_DOCUMENT_CHARS;
  const pieces = readLinePieces(path, gzip, limit, options.onBytes);
  if (kind === "jsonl") yield* jsonlDocuments(path, pieces, options, limit);
  else yield* textDocuments(pieces, options.split ?? "blank-line", limit);
}

async function* textDocuments(
  pieces: AsyncIterable<LinePiece>,
  split: DocumentSplit,
  limit: number,
): AsyncGenerator<string> {
  let parts: string[] = [];
  let size = 0;
  let continuing = false; // the last part is a line that has not ended yet
  const take = (): string | undefined => {
    const text = parts.join("");
    parts = [];
    size = 0;
    return text.trim() === "" ? undefined : text;
  };
  for await (const piece of pieces) {
    if (split !== "file" && !continuing && piece.ends && piece.text.trim() === "") {
      // A blank line: the end of a document ("blank-line"), or nothing ("line").
      const doc = take();
      if (doc !== undefined) yield doc;
      continue;
    }
    const separator = parts.length > 0 && !continuing ? 1 : 0;
    if (parts.length > 0 && size + separator + piece.text.length > limit) {
      // Too long: cut here, at a line end unless a single line is over the limit.
      const doc = take();
      if (doc !== undefined) yield doc;
    } else if (separator) {
      parts.push("\n");
      size++;
    }
    parts.push(piece.text);
    size += piece.text.length;
    continuing = !piece.ends;
    if (split === "line" && piece.ends) {
      const doc = take();
      if (doc !== undefined) yield doc;
    }
  }
  const doc = take();
  if (doc !== undefined) yield doc;
}

async function* jsonlDocuments(
  path: string,
  pieces: AsyncIterable<LinePiece>,
  options: CorpusReadOptions,
  limit: number,
): AsyncGenerator<string> {
  const skip = (lineNo: number, reason: string, problem: string): void => {
    if (!options.skipInvalid) {
      throw new UserError(`${path}:${lineNo}: ${problem} (--skip-invalid skips such lines)`);
    }
    if (options.skipped) options.skipped[reason] = (options.skipped[reason] ?? 0) + 1;
  };
  let lineNo = 1;
  let overlong = false; // inside a line over the limit, being skipped
  for await (const piece of pieces) {
    if (!piece.ends || overlong) {
      if (!overlong) skip(lineNo, "line too long", `line longer than ${limit} characters`);
      overlong = !piece.ends;
      if (piece.ends) lineNo++;
      continue;
    }
    const line = piece.text;
    const at = lineNo++;
    if (line.trim() === "") continue;
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch {
      const array = at === 1 && line.trimStart().startsWith("[");
      skip(at, "not JSON", array ? "a JSON array; expected one JSON object per line (JSONL)" : "not JSON");
      continue;
    }
    const text =
      record !== null && typeof record === "object" ? (record as { text?: unknown }).text : undefined;
    if (typeof text !== "string") {
      skip(at, 'no string "text" field', 'no string "text" field');
      continue;
    }
    if (text.trim() === "") {
      if (options.skipped) options.skipped["empty text"] = (options.skipped["empty text"] ?? 0) + 1;
      continue;
    }
    yield text; // no longer than its line, so within the limit
  }
}
