/**
 * The token cache: a corpus tokenized once, read by pretraining many times.
 *
 * A directory holding
 * - `train.bin`, `val.bin`: little-endian token ids, uint16 when the vocabulary has at most 65,536
 *   tokens, else uint32; each document is its ids preceded by BOS (when the tokenizer has one),
 *   documents back to back;
 * - `tokenizer.gguf`: a copy of the tokenizer, so the cache is self-contained;
 * - `index.json`: format, version, vocabulary size, dtype, bos/eos, token and document counts per
 *   split, the sources read, the validation fraction and seed.
 *
 * Documents go to the validation split by a hash of the seed and the document's index, so the
 * same inputs always split the same way. The writer builds everything in a temporary directory
 * and renames it into place: a cache either exists whole or not at all.
 */

import {
  closeSync,
  copyFileSync,
  fstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { UserError } from "../errors.js";

export const TOKEN_CACHE_FORMAT = "smallhammer-token-cache";

export interface TokenCacheSplitInfo {
  file: string;
  tokens: number;
  documents: number;
}

export interface TokenCacheSource {
  path: string;
  bytes: number;
  documents: number;
  tokens: number;
  skipped?: Record<string, number>;
}

export interface TokenCacheIndex {
  format: typeof TOKEN_CACHE_FORMAT;
  version: 1;
  vocabSize: number;
  dtype: "uint16" | "uint32";
  bos: number | null;
  eos: number | null;
  splits: { train: TokenCacheSplitInfo; val: TokenCacheSplitInfo };
  sources: TokenCacheSource[];
  valFraction: number;
  seed: number;
}

/** One split's ids, read with positioned reads (the file is never loaded whole). */
export interface TokenSplit {
  readonly tokens: number;
  /** Copies ids start .. start + out.length − 1 into out. */
  read(start: number, out: Int32Array): void;
}

export interface TokenCache {
  dir: string;
  index: TokenCacheIndex;
  tokenizerPath: string;
  split(name: "train" | "val"): TokenSplit;
  close(): void;
}

class FileSplit implements TokenSplit {
  private buffer = new Uint8Array(0);

  constructor(
    private readonly fd: number,
    readonly tokens: number,
    private readonly width: 2 | 4,
    private readonly path: string,
  ) {}

  read(start: number, out: Int32Array): void {
    if (!Number.isInteger(start) || start < 0 || start + out.length > this.tokens) {
      throw new RangeError(
        `${this.path}: read of ${out.length} ids at ${start} is outside its ${this.tokens} ids`,
      );
    }
    const bytes = out.length * this.width;
    if (this.buffer.length < bytes) this.buffer = new Uint8Array(bytes);
    let done = 0;
    while (done < bytes) {
      const got = readSync(this.fd, this.buffer, done, bytes - done, start * this.width + done);
      if (got === 0) throw new UserError(`${this.path}: file ends early (truncated cache?)`);
      done += got;
    }
    const view = new DataView(this.buffer.buffer, 0, bytes);
    if (this.width === 2) for (let i = 0; i < out.length; i++) out[i] = view.getUint16(2 * i, true);
    else for (let i = 0; i < out.length; i++) out[i] = view.getUint32(4 * i, true);
  }
}

/** Opens a token cache directory, checking its index against its files. */
export async function openTokenCache(dir: string): Promise<TokenCache> {
  const bad = (problem: string) => new UserError(`${dir}: not a usable token cache (${problem})`);
  let index: TokenCacheIndex;
  try {
    index = JSON.parse(readFileSync(join(dir, "index.json"), "utf8"));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw bad(code === "ENOENT" ? "no index.json" : code ? `index.json: ${code}` : "index.json is not JSON");
  }
  if (index?.format !== TOKEN_CACHE_FORMAT || index.version !== 1)
    throw bad("index.json is not a version 1 token cache index");
  if (index.dtype !== "uint16" && index.dtype !== "uint32")
    throw bad(`unknown dtype ${JSON.stringify(index.dtype)}`);
  const width = index.dtype === "uint16" ? 2 : 4;
  const tokenizerPath = join(dir, "tokenizer.gguf");
  const fds: number[] = [];
  const splits = new Map<string, FileSplit>();
  try {
    for (const name of ["train", "val"] as const) {
      const info = index.splits?.[name];
      if (!info || typeof info.file !== "string" || !Number.isSafeInteger(info.tokens))
        throw bad(`index.json has no ${name} split`);
      const path = join(dir, info.file);
      let fd: number;
      try {
        fd = openSync(path, "r");
      } catch {
        throw bad(`${info.file} is missing`);
      }
      fds.push(fd);
      const size = fstatSync(fd).size;
      if (size !== info.tokens * width) {
        throw bad(`${info.file} has ${size} bytes, the index says ${info.tokens} ${index.dtype} ids`);
      }
      splits.set(name, new FileSplit(fd, info.tokens, width, path));
    }
    try {
      closeSync(openSync(tokenizerPath, "r"));
    } catch {
      throw bad("tokenizer.gguf is missing");
    }
  } catch (e) {
    for (const fd of fds) closeSync(fd);
    throw e;
  }
  return {
    dir,
    index,
    tokenizerPath,
    split: (name) => splits.get(name)!,
    close: () => {
      for (const fd of fds) closeSync(fd);
      fds.length = 0;
    },
  };
}

export interface TokenCacheWriterOptions {
  vocabSize: number;
  bos?: number;
  eos?: number;
  /** Share of documents that go to validation (default 0.01). */
  valFraction?: number;
  seed?: number;
  /** The tokenizer GGUF copied into the cache. */
  tokenizerPath: string;
}

const FLUSH_BYTES = 1 << 20;

class SplitWriter {
  readonly fd: number;
  tokens = 0;
  documents = 0;
  private buffer: Buffer = Buffer.alloc(FLUSH_BYTES + 8);
  private used = 0;

  constructor(
    path: string,
    private readonly width: 2 | 4,
  ) {
    this.fd = openSync(path, "w");
  }

  add(id: number): void {
    if (this.width === 2) this.buffer.writeUInt16LE(id, this.used);
    else this.buffer.writeUInt32LE(id, this.used);
    this.used += this.width;
    this.tokens++;
    if (this.used >= FLUSH_BYTES) this.flush();
  }

  flush(): void {
    let done = 0;
    while (done < this.used) done += writeSync(this.fd, this.buffer, done, this.used - done);
    this.used = 0;
  }

  close(): void {
    this.flush();
    closeSync(this.fd);
  }
}

/**
 * Streams documents into a new token cache. Call `addDocument` per document, then `finish` (which
 * writes the index and renames the directory into place) or `abort`.
 */
export class TokenCacheWriter {
  private readonly tmp: string;
  private readonly width: 2 | 4;
  private readonly train: SplitWriter;
  private readonly val: SplitWriter;
  private readonly sources = new Map<string, TokenCacheSource>();
  private documentIndex = 0;
  private readonly valFraction: number;
  private readonly seed: number;

  constructor(
    readonly dir: string,
    private readonly options: TokenCacheWriterOptions,
  ) {
    this.valFraction = options.valFraction ?? 0.01;
    this.seed = options.seed ?? 1;
    if (!(this.valFraction >= 0 && this.valFraction < 1))
      throw new UserError("--val-fraction must be in [0, 1)");
    this.width = options.vocabSize <= 65536 ? 2 : 4;
    this.tmp = `${dir.replace(/\/+$/, "")}.tmp-${process.pid}`;
    rmSync(this.tmp, { recursive: true, force: true });
    mkdirSync(this.tmp, { recursive: true });
    this.train = new SplitWriter(join(this.tmp, "train.bin"), this.width);
    this.val = new SplitWriter(join(this.tmp, "val.bin"), this.width);
  }

  /** Records that a source file was read (its byte size), so the index lists it even when empty. */
  addSource(path: string, bytes: number, skipped?: Record<string, number>): void {
    const s = this.sources.get(path) ?? { path, bytes: 0, documents: 0, tokens: 0 };
    s.bytes = bytes;
    if (skipped && Object.keys(skipped).length) s.skipped = skipped;
    this.sources.set(path, s);
  }

  /** Adds one document's ids (BOS is added here when the tokenizer has one). */
  addDocument(ids: ArrayLike<number>, source: string): void {
    const toVal = this.valFraction > 0 && splitHash(this.seed, this.documentIndex++) < this.valFraction;
    const split = toVal ? this.val : this.train;
    if (this.options.bos !== undefined) split.add(this.options.bos);
    for (let i = 0; i < ids.length; i++) split.add(ids[i]);
    split.documents++;
    const s = this.sources.get(source) ?? { path: source, bytes: 0, documents: 0, tokens: 0 };
    s.documents++;
    s.tokens += ids.length + (this.options.bos !== undefined ? 1 : 0);
    this.sources.set(source, s);
  }

  /** Writes the index and moves the cache into place; returns the index. */
  finish(): TokenCacheIndex {
    this.train.close();
    this.val.close();
    const index: TokenCacheIndex = {
      format: TOKEN_CACHE_FORMAT,
      version: 1,
      vocabSize: this.options.vocabSize,
      dtype: this.width === 2 ? "uint16" : "uint32",
      bos: this.options.bos ?? null,
      eos: this.options.eos ?? null,
      splits: {
        train: { file: "train.bin", tokens: this.train.tokens, documents: this.train.documents },
        val: { file: "val.bin", tokens: this.val.tokens, documents: this.val.documents },
      },
      sources: [...this.sources.values()],
      valFraction: this.valFraction,
      seed: this.seed,
    };
    try {
      copyFileSync(this.options.tokenizerPath, join(this.tmp, "tokenizer.gguf"));
      writeFileSync(join(this.tmp, "index.json"), `${JSON.stringify(index, null, 2)}\n`);
      rmSync(this.dir, { recursive: true, force: true });
      renameSync(this.tmp, this.dir);
    } catch (e) {
      this.abort();
      throw e;
    }
    return index;
  }

  /** Removes the unfinished cache. */
  abort(): void {
    for (const w of [this.train, this.val]) {
      try {
        closeSync(w.fd);
      } catch {}
    }
    rmSync(this.tmp, { recursive: true, force: true });
  }
}

/** A uniform number in [0, 1) from the seed and a document index (splitmix-style mixing). */
export function splitHash(seed: number, index: number): number {
  let z =
    (Math.imul(seed >>> 0, 0x9e3779b9) ^ Math.imul(index >>> 0, 0x85ebca6b) ^ Math.floor(index / 2 ** 32)) >>>
    0;
  z = Math.imul(z ^ (z >>> 16), 0x7feb352d);
  z = Math.imul(z ^ (z >>> 15), 0x846ca68b);
  z ^= z >>> 16;
  return (z >>> 0) / 4294967296;
}
