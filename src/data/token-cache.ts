/**
 * The token cache: a corpus tokenized once, read by pretraining many times.
 *
 * A directory holding
 * - `train.bin`, `val.bin`: little-endian token ids, uint16 when the vocabulary has at most 65,536
 *   tokens, else uint32; each document is its ids preceded by BOS (when the tokenizer has one),
 *   documents back to back, no padding;
 * - `tokenizer.gguf`: a copy of the tokenizer, so the cache is self-contained;
 * - `index.json` (written last): format, version, vocabulary size, dtype, bos/eos, token and
 *   document counts per split, the sources read, the validation fraction and seed.
 *
 * A document goes to the validation split when splitHash(seed, its index in the corpus) is below
 * the validation fraction, so the same inputs and seed always split the same way. The writer
 * builds the cache in a temporary directory beside the target and renames it into place: a cache
 * either exists whole or not at all. It replaces an earlier token cache, never anything else.
 */

import {
  closeSync,
  copyFileSync,
  fstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmdirSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { UserError } from "../errors.js";

export const TOKEN_CACHE_FORMAT = "smallhammer-token-cache";
export const TOKEN_CACHE_VERSION = 1;

/** The files a token cache directory holds; nothing else is ever written or removed there. */
const CACHE_FILES = new Set(["index.json", "train.bin", "val.bin", "tokenizer.gguf"]);

export type TokenSplitName = "train" | "val";

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
  /** Lines or records left out, by reason (only when there were some). */
  skipped?: Record<string, number>;
}

export interface TokenCacheIndex {
  format: typeof TOKEN_CACHE_FORMAT;
  version: typeof TOKEN_CACHE_VERSION;
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
  /** The cache's copy of its tokenizer (a GGUF). */
  tokenizerPath: string;
  split(name: TokenSplitName): TokenSplit;
  /** Closes the split files; reads fail afterwards. */
  close(): void;
}

/** The id type of a vocabulary of `vocabSize` tokens. */
export function tokenDtype(vocabSize: number): "uint16" | "uint32" {
  return vocabSize <= 65536 ? "uint16" : "uint32";
}

function dtypeWidth(dtype: "uint16" | "uint32"): 2 | 4 {
  return dtype === "uint16" ? 2 : 4;
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
    if (!Number.isSafeInteger(start) || start < 0 || start + out.length > this.tokens) {
      throw new RangeError(
        `${this.path}: a read of ${out.length} ids at ${start} is outside its ${this.tokens} ids`,
      );
    }
    const bytes = out.length * this.width;
    if (this.buffer.length < bytes) this.buffer = new Uint8Array(bytes);
    let done = 0;
    while (done < bytes) {
      const got = readSync(this.fd, this.buffer, done, bytes - done, start * this.width + done);
      if (got === 0) throw new UserError(`${this.path}: the file ends early (was the cache changed?)`);
      done += got;
    }
    const view = new DataView(this.buffer.buffer, 0, bytes);
    if (this.width === 2) for (let i = 0; i < out.length; i++) out[i] = view.getUint16(2 * i, true);
    else for (let i = 0; i < out.length; i++) out[i] = view.getUint32(4 * i, true);
  }
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** What is wrong with a parsed index.json, or undefined when it is well-formed. */
function indexProblem(index: TokenCacheIndex): string | undefined {
  if (index === null || typeof index !== "object" || index.format !== TOKEN_CACHE_FORMAT) {
    return `index.json: "format" is not "${TOKEN_CACHE_FORMAT}"`;
  }
  if (index.version !== TOKEN_CACHE_VERSION) {
    return `index.json: version ${JSON.stringify(index.version)} (this smallhammer reads version ${TOKEN_CACHE_VERSION})`;
  }
  if (!isCount(index.vocabSize) || index.vocabSize < 1)
    return 'index.json: "vocabSize" is not a positive integer';
  if (index.dtype !== tokenDtype(index.vocabSize)) {
    return `index.json: dtype ${JSON.stringify(index.dtype)} does not fit a vocabulary of ${index.vocabSize}`;
  }
  for (const key of ["bos", "eos"] as const) {
    const id = index[key];
    if (id !== null && !(isCount(id) && id < index.vocabSize)) {
      return `index.json: "${key}" is not null or a token id below ${index.vocabSize}`;
    }
  }
  for (const name of ["train", "val"] as const) {
    const info = index.splits?.[name];
    if (
      !info ||
      typeof info.file !== "string" ||
      !CACHE_FILES.has(info.file) ||
      !info.file.endsWith(".bin")
    ) {
      return `index.json: no usable "splits.${name}.file"`;
    }
    if (!isCount(info.tokens) || !isCount(info.documents)) {
      return `index.json: "splits.${name}" needs token and document counts`;
    }
  }
  return undefined;
}

/** Opens a token cache directory, checking its index against its files. */
export async function openTokenCache(dir: string): Promise<TokenCache> {
  const bad = (problem: string) => new UserError(`${dir}: not a usable token cache (${problem})`);
  let index: TokenCacheIndex;
  try {
    index = JSON.parse(readFileSync(join(dir, "index.json"), "utf8"));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw bad("no index.json");
    throw bad(code ? `index.json: ${code}` : "index.json is not JSON");
  }
  const problem = indexProblem(index);
  if (problem) throw bad(problem);
  const width = dtypeWidth(index.dtype);
  const tokenizerPath = join(dir, "tokenizer.gguf");
  if (!statSync(tokenizerPath, { throwIfNoEntry: false })?.isFile()) throw bad("tokenizer.gguf is missing");
  const fds: number[] = [];
  const splits = new Map<TokenSplitName, FileSplit>();
  try {
    for (const name of ["train", "val"] as const) {
      const info = index.splits[name];
      const path = join(dir, info.file);
      let fd: number;
      try {
        fd = openSync(path, "r");
      } catch (e) {
        throw bad(
          `${info.file}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "missing" : (e as Error).message}`,
        );
      }
      fds.push(fd);
      const size = fstatSync(fd).size;
      if (size !== info.tokens * width) {
        throw bad(`${info.file} has ${size} bytes, the index says ${info.tokens} ${index.dtype} ids`);
      }
      splits.set(name, new FileSplit(fd, info.tokens, width, path));
    }
  } catch (e) {
    for (const fd of fds) closeSync(fd);
    throw e;
  }
  return {
    dir,
    index,
    tokenizerPath,
    split(name) {
      const split = splits.get(name);
      if (!split) throw new RangeError(`token cache split "${name}": expected "train" or "val"`);
      return split;
    },
    close() {
      for (const fd of fds.splice(0)) closeSync(fd);
    },
  };
}

export interface TokenCacheWriterOptions {
  vocabSize: number;
  /** Written before every document when set (the tokenizer's BOS). */
  bos?: number;
  /** Recorded in the index (documents do not end with it). */
  eos?: number;
  /** Share of documents that go to validation, in [0, 1) (default 0.01). */
  valFraction?: number;
  /** Seed of the validation split (default 1). */
  seed?: number;
  /** The tokenizer GGUF copied into the cache. */
  tokenizerPath: string;
}

/** An I/O failure as a user error naming the file. */
function ioError(path: string, action: string, e: unknown): UserError {
  const code = (e as NodeJS.ErrnoException).code;
  return new UserError(`${path}: cannot ${action} (${code ?? (e as Error).message})`);
}

const FLUSH_BYTES = 1 << 20;

/** Appends ids to one split file through a 1 MiB buffer. */
class SplitWriter {
  private fd: number;
  tokens = 0;
  documents = 0;
  private readonly buffer = new Uint8Array(FLUSH_BYTES);
  private readonly view = new DataView(this.buffer.buffer);
  private used = 0;

  constructor(
    private readonly path: string,
    private readonly width: 2 | 4,
  ) {
    try {
      this.fd = openSync(path, "w");
    } catch (e) {
      throw ioError(path, "create", e);
    }
  }

  add(id: number): void {
    if (this.used + this.width > FLUSH_BYTES) this.flush();
    if (this.width === 2) this.view.setUint16(this.used, id, true);
    else this.view.setUint32(this.used, id, true);
    this.used += this.width;
    this.tokens++;
  }

  flush(): void {
    let done = 0;
    try {
      while (done < this.used) done += writeSync(this.fd, this.buffer, done, this.used - done);
    } catch (e) {
      throw ioError(this.path, "write", e);
    }
    this.used = 0;
  }

  close(): void {
    if (this.fd < 0) return;
    try {
      this.flush();
    } finally {
      closeSync(this.fd);
      this.fd = -1;
    }
  }
}

/** Whether `dir` may be replaced: it holds nothing but token cache files. */
function isReplaceable(dir: string): boolean {
  return readdirSync(dir).every((name) => CACHE_FILES.has(name));
}

/** Checks that `dir` is free for a new cache or an earlier token cache; a one-line error otherwise. */
function checkTarget(dir: string): void {
  const st = statSync(dir, { throwIfNoEntry: false });
  if (!st) return;
  if (!st.isDirectory()) throw new UserError(`${dir}: exists and is not a directory`);
  if (!isReplaceable(dir)) {
    throw new UserError(`${dir}: exists and holds files other than a token cache's; choose a new directory`);
  }
}

/**
 * Streams documents into a new token cache:
 *
 *   const writer = new TokenCacheWriter("cache", { vocabSize, bos, eos, tokenizerPath });
 *   writer.addDocument(ids, "corpus.txt");      // per document, in corpus order, or in parts:
 *   writer.beginDocument("corpus.txt"); writer.appendTokens(part1); writer.appendTokens(part2);
 *   writer.addSource("corpus.txt", bytes);      // the file's size (and skipped lines)
 *   const index = writer.finish();              // or writer.abort()
 *
 * Memory is two 1 MiB buffers whatever the corpus size.
 */
export class TokenCacheWriter {
  readonly dtype: "uint16" | "uint32";
  /** `dir` resolved (a trailing slash dropped), for renames. */
  private readonly target: string;
  private readonly tmp: string;
  private readonly train: SplitWriter;
  private readonly val: SplitWriter;
  private readonly sources = new Map<string, TokenCacheSource>();
  private documentIndex = 0;
  private current: SplitWriter | undefined;
  private currentSource: TokenCacheSource | undefined;
  private readonly vocabSize: number;
  private readonly bos: number | undefined;
  private readonly valFraction: number;
  private readonly seed: number;
  private closed = false;

  constructor(
    readonly dir: string,
    private readonly options: TokenCacheWriterOptions,
  ) {
    const { vocabSize, bos, eos } = options;
    this.valFraction = options.valFraction ?? 0.01;
    this.seed = options.seed ?? 1;
    if (!Number.isSafeInteger(vocabSize) || vocabSize < 1 || vocabSize > 2 ** 32) {
      throw new RangeError(`token cache: vocabSize ${vocabSize} is not an integer from 1 to 2^32`);
    }
    for (const [name, id] of [
      ["bos", bos],
      ["eos", eos],
    ] as const) {
      if (id !== undefined && !(Number.isInteger(id) && id >= 0 && id < vocabSize)) {
        throw new RangeError(`token cache: ${name} ${id} is not a token id below ${vocabSize}`);
      }
    }
    if (!(this.valFraction >= 0 && this.valFraction < 1)) {
      throw new UserError(`validation fraction ${this.valFraction} is not in [0, 1)`);
    }
    if (!Number.isSafeInteger(this.seed) || this.seed < 0) {
      throw new UserError(`seed ${this.seed} is not a non-negative integer`);
    }
    if (!statSync(options.tokenizerPath, { throwIfNoEntry: false })?.isFile()) {
      throw new UserError(`${options.tokenizerPath}: no such file`);
    }
    this.vocabSize = vocabSize;
    this.bos = bos;
    this.dtype = tokenDtype(vocabSize);
    checkTarget(dir);
    this.target = resolve(dir);
    this.tmp = join(dirname(this.target), `.${basename(this.target)}.tmp-${process.pid}`);
    try {
      rmSync(this.tmp, { recursive: true, force: true });
      mkdirSync(this.tmp, { recursive: true });
    } catch (e) {
      throw ioError(this.tmp, "create", e);
    }
    const width = dtypeWidth(this.dtype);
    this.train = new SplitWriter(join(this.tmp, "train.bin"), width);
    this.val = new SplitWriter(join(this.tmp, "val.bin"), width);
  }

  private source(path: string): TokenCacheSource {
    let s = this.sources.get(path);
    if (!s) {
      s = { path, bytes: 0, documents: 0, tokens: 0 };
      this.sources.set(path, s);
    }
    return s;
  }

  /** Records a source file's size and what was skipped in it; sources are listed in first-seen order. */
  addSource(path: string, bytes: number, skipped?: Record<string, number>): void {
    const s = this.source(path);
    s.bytes = bytes;
    if (skipped && Object.keys(skipped).length > 0) s.skipped = { ...skipped };
  }

  /** Adds one document's ids (BOS goes before them here); returns the split it went to. */
  addDocument(ids: ArrayLike<number>, source: string): TokenSplitName {
    const name = this.beginDocument(source);
    this.appendTokens(ids);
    return name;
  }

  /**
   * Starts a document from `source` (writing BOS to the split it goes to) whose ids come in one
   * or more `appendTokens` calls; returns the split.
   */
  beginDocument(source: string): TokenSplitName {
    if (this.closed) throw new Error("token cache: a document after finish or abort");
    const name: TokenSplitName =
      this.valFraction > 0 && splitHash(this.seed, this.documentIndex) < this.valFraction ? "val" : "train";
    this.documentIndex++;
    this.current = name === "val" ? this.val : this.train;
    this.currentSource = this.source(source);
    this.current.documents++;
    this.currentSource.documents++;
    if (this.bos !== undefined) {
      this.current.add(this.bos);
      this.currentSource.tokens++;
    }
    return name;
  }

  /** Adds ids to the document begun last. */
  appendTokens(ids: ArrayLike<number>): void {
    const split = this.current;
    if (this.closed || !split || !this.currentSource) {
      throw new Error("token cache: appendTokens without a document begun");
    }
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!(id >= 0 && id < this.vocabSize && Number.isInteger(id))) {
        throw new RangeError(`token cache: id ${id} is not below the vocabulary size ${this.vocabSize}`);
      }
    }
    for (let i = 0; i < ids.length; i++) split.add(ids[i]!);
    this.currentSource.tokens += ids.length;
  }

  /** Ids written so far, both splits. */
  get tokens(): number {
    return this.train.tokens + this.val.tokens;
  }

  /** Writes the tokenizer copy and the index, and moves the cache into place; returns the index. */
  finish(): TokenCacheIndex {
    if (this.closed) throw new Error("token cache: finish after finish or abort");
    const index: TokenCacheIndex = {
      format: TOKEN_CACHE_FORMAT,
      version: TOKEN_CACHE_VERSION,
      vocabSize: this.vocabSize,
      dtype: this.dtype,
      bos: this.bos ?? null,
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
      this.train.close();
      this.val.close();
      const tokenizerCopy = join(this.tmp, "tokenizer.gguf");
      try {
        copyFileSync(this.options.tokenizerPath, tokenizerCopy);
      } catch (e) {
        throw ioError(this.options.tokenizerPath, "copy", e);
      }
      try {
        writeFileSync(join(this.tmp, "index.json"), `${JSON.stringify(index, null, 2)}\n`);
      } catch (e) {
        throw ioError(join(this.tmp, "index.json"), "write", e);
      }
      this.moveIntoPlace();
    } catch (e) {
      this.abort();
      throw e;
    }
    this.closed = true;
    return index;
  }

  /** Renames the finished temporary directory to `dir`, replacing an earlier token cache there. */
  private moveIntoPlace(): void {
    checkTarget(this.dir);
    let old: string | undefined;
    if (statSync(this.target, { throwIfNoEntry: false })) {
      old = join(dirname(this.target), `.${basename(this.target)}.old-${process.pid}`);
      rmSync(old, { recursive: true, force: true });
      try {
        renameSync(this.target, old);
      } catch (e) {
        throw ioError(this.dir, "replace", e);
      }
    }
    try {
      renameSync(this.tmp, this.target);
    } catch (e) {
      if (old) renameSync(old, this.target);
      throw ioError(this.dir, "create", e);
    }
    if (old) {
      for (const name of readdirSync(old)) if (CACHE_FILES.has(name)) rmSync(join(old, name));
      rmdirSync(old);
    }
  }

  /** Removes the unfinished cache (nothing at `dir` changes). */
  abort(): void {
    if (this.closed) return;
    this.closed = true;
    for (const w of [this.train, this.val]) {
      try {
        w.close();
      } catch {
        // the temporary files are removed below either way
      }
    }
    rmSync(this.tmp, { recursive: true, force: true });
  }
}

function mix32(x: number): number {
  let z = x >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x7feb352d);
  z = Math.imul(z ^ (z >>> 15), 0x846ca68b);
  return (z ^ (z >>> 16)) >>> 0;
}

/**
 * A uniform number in [0, 1) from the seed and a document index: the index's two 32-bit halves
 * are folded into a mixed seed, each step offset by a constant and mixed again (32-bit avalanche).
 */
export function splitHash(seed: number, index: number): number {
  let h = mix32((seed >>> 0) ^ 0x9e3779b9);
  h = mix32((h ^ (index >>> 0)) + 0x85ebca6b);
  h = mix32((h ^ (Math.floor(index / 2 ** 32) >>> 0)) + 0xc2b2ae35);
  return h / 4294967296;
}
