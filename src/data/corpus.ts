/**
 * Streams the documents of a pretraining corpus, one file at a time, in bounded memory:
 *
 * - `.txt` (any name not listed below): plain UTF-8 text. By default documents are separated by
 *   blank lines (lines of nothing but whitespace); `split: "line"` makes every non-blank line a
 *   document and `split: "file"` the whole file one document. Line ends become "\n" (CRLF too),
 *   and a document does not keep the line end after its last line.
 * - `.jsonl` / `.ndjson` / `.json`: one JSON object per line, RedPajama style; its "text" string
 *   is one document, other fields are ignored. Blank lines are passed over; a line that is not
 *   JSON or has no string "text" stops reading with `file:line: problem` unless `skipInvalid`
 *   is set, which counts it by reason instead.
 * - any of these gzip-compressed, with ".gz" after the name.
 *
 * The file is read in 1 MiB chunks. A document comes as one or more segments of at most
 * `segmentChars` characters (1 Mi by default); a long document is cut after a line end that is
 * followed by more text, and only a line longer than a segment is cut inside. A tokenizer whose
 * pieces never join a newline to other characters (those `tokenizer train` learns) gives the same
 * ids for the segments, each after the first encoded as a continuation, as for the whole text.
 * Memory holds one segment of text, or for JSONL one line (at most `maxLineChars`, 32 Mi).
 */

import { createReadStream, statSync } from "node:fs";
import type { Readable } from "node:stream";
import { createGunzip } from "node:zlib";
import { UserError } from "../errors.js";

export type DocumentSplit = "blank-line" | "line" | "file";
export const DOCUMENT_SPLITS: readonly DocumentSplit[] = ["blank-line", "line", "file"];

/** Longest segment of a document, in UTF-16 code units: 1 Mi. */
export const SEGMENT_CHARS = 1 << 20;
/**
 * Longest JSONL line (or JSON array element), in UTF-16 code units: 32 Mi. Every JSONL reader
 * (corpora here, datasets in records.ts) stops collecting a line there, so a line of gigabytes
 * costs bounded memory and a one-line error instead of a string too long for the engine.
 */
export const MAX_LINE_CHARS = 32 << 20;

/** What is wrong with a line over the limit, in every reader's words. */
export function lineTooLong(limit = MAX_LINE_CHARS): string {
  return `line longer than ${limit} characters`;
}

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
  /** Longest segment (default SEGMENT_CHARS). */
  segmentChars?: number;
  /** Longest JSONL line (default MAX_LINE_CHARS). */
  maxLineChars?: number;
}

/** A part of a document: the whole document, or one of its pieces in order. */
export interface CorpusSegment {
  text: string;
  /** The segment continues the document of the segment before it. */
  continuation: boolean;
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

/** Where to cut `text` at most `limit` code units after `start`, never inside a surrogate pair. */
function cutPoint(text: string, start: number, limit: number): number {
  const end = start + limit;
  if (end >= text.length) return text.length;
  const c = text.charCodeAt(end - 1);
  return c >= 0xd800 && c <= 0xdbff && limit > 1 ? end - 1 : end;
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

/** The file's lines without their line ends, lines over `limit` characters in pieces. */
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
    let end = text.length;
    if (text.charCodeAt(end - 1) === 13) end--;
    let start = 0;
    while (end - start > limit) {
      const cut = cutPoint(text, start, limit);
      yield { text: text.slice(start, cut), ends: false };
      start = cut;
    }
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
      // An unfinished line over the limit: hand its first part on now (keeping a "\r" that
      // may be half of a CRLF).
      while (pending.length > limit + 1) {
        const cut = cutPoint(pending, 0, limit);
        yield { text: pending.slice(0, cut), ends: false };
        pending = pending.slice(cut);
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

/** The documents of one corpus file in segments, in order (see the file comment). */
export async function* readCorpusSegments(
  path: string,
  options: CorpusReadOptions = {},
): AsyncGenerator<CorpusSegment> {
  corpusFileBytes(path);
  const { kind, gzip } = corpusKind(path);
  const segmentChars = options.segmentChars ?? SEGMENT_CHARS;
  if (kind === "jsonl") {
    const maxLine = options.maxLineChars ?? MAX_LINE_CHARS;
    const pieces = readLinePieces(path, gzip, maxLine, options.onBytes);
    for await (const text of jsonlDocuments(path, pieces, options, maxLine)) {
      yield* textSegments(text, segmentChars);
    }
  } else {
    const pieces = readLinePieces(path, gzip, segmentChars, options.onBytes);
    yield* linesToSegments(pieces, options.split ?? "blank-line", segmentChars);
  }
}

/**
 * The documents of one corpus file as whole strings, in order. A document is held whole here:
 * for bounded memory on arbitrary input, read segments with readCorpusSegments.
 */
export async function* readCorpusDocuments(
  path: string,
  options: CorpusReadOptions = {},
): AsyncGenerator<string> {
  let parts: string[] = [];
  for await (const segment of readCorpusSegments(path, options)) {
    if (!segment.continuation && parts.length > 0) {
      yield parts.join("");
      parts = [];
    }
    parts.push(segment.text);
  }
  if (parts.length > 0) yield parts.join("");
}

/** A string document in segments cut after a line end where one is near the limit. */
function* textSegments(text: string, limit: number): Generator<CorpusSegment> {
  let start = 0;
  while (text.length - start > limit) {
    let cut = cutPoint(text, start, limit);
    // The last line end in the window that is followed by text (not by another line end).
    for (let nl = text.lastIndexOf("\n", cut - 1); nl >= start; nl = text.lastIndexOf("\n", nl - 1)) {
      if (nl + 1 < cut && text.charCodeAt(nl + 1) !== 10) {
        cut = nl + 1;
        break;
      }
    }
    yield { text: text.slice(start, cut), continuation: start > 0 };
    start = cut;
  }
  yield { text: start === 0 ? text : text.slice(start), continuation: start > 0 };
}

/** Text-file lines into document segments (blank lines, lines or the file as documents). */
async function* linesToSegments(
  pieces: AsyncIterable<LinePiece>,
  split: DocumentSplit,
  limit: number,
): AsyncGenerator<CorpusSegment> {
  let parts: string[] = [];
  let size = 0;
  let started = false; // a segment of the current document has been handed on
  let lineEnded = false; // the document has text and its last line has ended
  let continuing = false; // the last piece is a line that has not ended
  const segment = (final: boolean): CorpusSegment | undefined => {
    const text = parts.join("");
    const continuation = started;
    parts = [];
    size = 0;
    started = !final;
    if (final) lineEnded = false;
    if (text === "" || (final && !continuation && text.trim() === "")) return undefined;
    return { text, continuation };
  };
  for await (const piece of pieces) {
    if (split !== "file" && !continuing && piece.ends && piece.text.trim() === "") {
      // A blank line ends a document ("blank-line"); "line" has nothing pending here.
      const s = segment(true);
      if (s) yield s;
      continue;
    }
    if (lineEnded) {
      parts.push("\n");
      size++;
    }
    // Cut before this piece when it would overflow the segment: after a line end followed by
    // text, or inside a line that alone is over the limit, or anywhere once at twice the limit.
    const overflow = size + piece.text.length - limit;
    if (
      overflow > 0 &&
      size > 0 &&
      ((lineEnded && piece.text.length > 0) || continuing || overflow > limit)
    ) {
      const s = segment(false);
      if (s) yield s;
    }
    parts.push(piece.text);
    size += piece.text.length;
    lineEnded = piece.ends;
    continuing = !piece.ends;
    if (split === "line" && piece.ends) {
      const s = segment(true);
      if (s) yield s;
    }
  }
  const s = segment(true);
  if (s) yield s;
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
      if (!overlong) skip(lineNo, "line too long", lineTooLong(limit));
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
    yield text;
  }
}
