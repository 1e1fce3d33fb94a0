/**
 * Near-duplicate detection for streams of texts: MinHash signatures of word shingles and
 * locality-sensitive hashing (LSH) in bands, with compact 64-bit hash sets so that memory grows by a
 * fixed few bytes per kept text, never with the text itself.
 *
 *   const dedup = new NearDuplicateIndex({ threshold: 0.8 });
 *   if (dedup.addIfNew("Write a poem about the sea")) keep(record);   // false for a near copy
 *
 * MinHash: each text becomes the set of its word 3-grams (lowercase letters and digits); each of
 * `numPerm` hash functions keeps the smallest hash over the set. Two texts agree in one position
 * with probability equal to the Jaccard similarity of their sets.
 *
 * LSH: the signature is cut into `bands` bands of `rows` values; two texts are candidates when any
 * band is identical, which happens with probability 1 - (1 - s^rows)^bands for Jaccard s, an
 * S-curve whose steep part sits near the threshold. Bands and rows are chosen to minimize the
 * false positive and false negative areas under that curve (equal weights), the usual recipe.
 * A band shared with a kept text makes it a candidate; the candidate is a near duplicate when the
 * two signatures agree in at least `threshold` of their positions (the Jaccard estimate), which
 * removes the S-curve's false positives. Kept per text: one byte per hash function (the top byte,
 * enough to estimate a similarity after correcting for chance agreement) and a 12-byte entry per
 * band, about 128 + 9 * 24 bytes at the defaults.
 */

import { rougeTokens } from "./rouge.js";

/** MurmurHash3's 32-bit finalizer: a good bit mixer. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** A 32-bit hash of a string's UTF-16 code units (MurmurHash3-style mixing, one unit at a time). */
export function hashString32(s: string, seed = 0): number {
  let h = (seed ^ s.length) | 0;
  for (let i = 0; i < s.length; i++) {
    let k = Math.imul(s.charCodeAt(i), 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    h ^= Math.imul(k, 0x1b873593);
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  return fmix32(h);
}

/** A 64-bit hash of a string as two 32-bit halves. */
export function hashString64(s: string): [number, number] {
  return [hashString32(s, 0x9747b28c), hashString32(s, 0x5bd1e995)];
}

/**
 * A set of 64-bit keys (two 32-bit halves) in one typed array: open addressing, linear probing,
 * grown at half full. 16 to 32 bytes per key.
 */
export class U64Set {
  private table: Uint32Array;
  private mask: number;
  size = 0;

  constructor(capacity = 1024) {
    let slots = 16;
    while (slots < capacity * 2) slots *= 2;
    this.table = new Uint32Array(slots * 2);
    this.mask = slots - 1;
  }

  /** Bytes held. */
  get bytes(): number {
    return this.table.byteLength;
  }

  has(hi: number, lo: number): boolean {
    // (0, 0) marks an empty slot, so a key's low half is stored with its lowest bit set.
    lo = (lo | 1) >>> 0;
    hi >>>= 0;
    for (let i = fmix32(hi ^ lo) & this.mask; ; i = (i + 1) & this.mask) {
      const h = this.table[2 * i]!;
      const l = this.table[2 * i + 1]!;
      if (l === 0) return false;
      if (h === hi && l === lo) return true;
    }
  }

  /** Adds a key; false when it was there already. */
  add(hi: number, lo: number): boolean {
    lo = (lo | 1) >>> 0;
    hi >>>= 0;
    for (let i = fmix32(hi ^ lo) & this.mask; ; i = (i + 1) & this.mask) {
      const h = this.table[2 * i]!;
      const l = this.table[2 * i + 1]!;
      if (l === 0) {
        this.table[2 * i] = hi;
        this.table[2 * i + 1] = lo;
        if (++this.size * 2 > this.mask + 1) this.grow();
        return true;
      }
      if (h === hi && l === lo) return false;
    }
  }

  private grow(): void {
    const old = this.table;
    this.table = new Uint32Array(old.length * 2);
    this.mask = old.length - 1; // slots double: old.length / 2 * 2
    this.size = 0;
    for (let i = 0; i < old.length; i += 2) {
      if (old[i + 1] !== 0) this.add(old[i]!, old[i + 1]!);
    }
  }
}

/** A map from 64-bit keys (two 32-bit halves) to non-negative int32 values; like U64Set. */
export class U64Map {
  private keys: Uint32Array;
  private values: Int32Array;
  private mask: number;
  size = 0;

  constructor(capacity = 1024) {
    let slots = 16;
    while (slots < capacity * 2) slots *= 2;
    this.keys = new Uint32Array(slots * 2);
    this.values = new Int32Array(slots);
    this.mask = slots - 1;
  }

  get bytes(): number {
    return this.keys.byteLength + this.values.byteLength;
  }

  /** The value of a key, or -1. */
  get(hi: number, lo: number): number {
    lo = (lo | 1) >>> 0;
    hi >>>= 0;
    for (let i = fmix32(hi ^ lo) & this.mask; ; i = (i + 1) & this.mask) {
      const l = this.keys[2 * i + 1]!;
      if (l === 0) return -1;
      if (l === lo && this.keys[2 * i] === hi) return this.values[i]!;
    }
  }

  /** Sets a key that is not there yet (a key already there keeps its value). */
  setIfAbsent(hi: number, lo: number, value: number): void {
    lo = (lo | 1) >>> 0;
    hi >>>= 0;
    for (let i = fmix32(hi ^ lo) & this.mask; ; i = (i + 1) & this.mask) {
      const l = this.keys[2 * i + 1]!;
      if (l === 0) {
        this.keys[2 * i] = hi;
        this.keys[2 * i + 1] = lo;
        this.values[i] = value;
        if (++this.size * 2 > this.mask + 1) this.grow();
        return;
      }
      if (l === lo && this.keys[2 * i] === hi) return;
    }
  }

  private grow(): void {
    const keys = this.keys;
    const values = this.values;
    this.keys = new Uint32Array(keys.length * 2);
    this.values = new Int32Array(values.length * 2);
    this.mask = values.length * 2 - 1;
    this.size = 0;
    for (let i = 0; i < values.length; i++) {
      if (keys[2 * i + 1] !== 0) this.setIfAbsent(keys[2 * i]!, keys[2 * i + 1]!, values[i]!);
    }
  }
}

/** Word n-grams of a text, as the set MinHash works on (the whole text when it is shorter than n words). */
export function shingles(text: string, n = 3): string[] {
  const tokens = rougeTokens(text);
  if (tokens.length === 0) return [];
  if (tokens.length <= n) return [tokens.join(" ")];
  const out: string[] = [];
  for (let i = 0; i + n <= tokens.length; i++) out.push(tokens.slice(i, i + n).join(" "));
  return out;
}

export interface MinHashOptions {
  /** Hash functions per signature (default 128). */
  numPerm?: number;
  /** Words per shingle (default 3). */
  shingleWords?: number;
  /** Seed of the hash functions (default 1). */
  seed?: number;
}

/** MinHash signatures; the same options give the same signature for the same text. */
export class MinHasher {
  readonly numPerm: number;
  readonly shingleWords: number;
  private readonly seeds: Uint32Array;

  constructor(options: MinHashOptions = {}) {
    this.numPerm = options.numPerm ?? 128;
    this.shingleWords = options.shingleWords ?? 3;
    if (!(Number.isInteger(this.numPerm) && this.numPerm >= 1)) throw new RangeError("MinHasher: numPerm");
    this.seeds = new Uint32Array(this.numPerm);
    let x = (options.seed ?? 1) >>> 0;
    for (let i = 0; i < this.numPerm; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      this.seeds[i] = fmix32(x);
    }
  }

  /** The signature of a text; undefined when it has no words. */
  signature(text: string): Uint32Array | undefined {
    const set = shingles(text, this.shingleWords);
    if (set.length === 0) return undefined;
    const sig = new Uint32Array(this.numPerm).fill(0xffffffff);
    for (const shingle of set) {
      const x = hashString32(shingle);
      for (let i = 0; i < this.numPerm; i++) {
        const h = fmix32(x ^ this.seeds[i]!);
        if (h < sig[i]!) sig[i] = h;
      }
    }
    return sig;
  }
}

/** The share of positions where two signatures agree: an estimate of the Jaccard similarity. */
export function estimateJaccard(a: Uint32Array, b: Uint32Array): number {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}

/** Exact Jaccard similarity of two texts' shingle sets (for tests and small checks). */
export function jaccard(a: string, b: string, shingleWords = 3): number {
  const sa = new Set(shingles(a, shingleWords));
  const sb = new Set(shingles(b, shingleWords));
  if (sa.size === 0 && sb.size === 0) return 1;
  let both = 0;
  for (const s of sa) if (sb.has(s)) both++;
  return both / (sa.size + sb.size - both);
}

/** Probability that two texts of Jaccard similarity s share a band. */
export function candidateProbability(s: number, bands: number, rows: number): number {
  return 1 - (1 - s ** rows) ** bands;
}

function integrate(f: (x: number) => number, a: number, b: number, steps = 200): number {
  const h = (b - a) / steps;
  let sum = (f(a) + f(b)) / 2;
  for (let i = 1; i < steps; i++) sum += f(a + i * h);
  return sum * h;
}

/**
 * Bands and rows (bands * rows <= numPerm) whose S-curve best separates similarities below and above
 * the threshold: the smallest sum of the false positive area (below) and false negative area (above).
 */
export function lshParameters(threshold: number, numPerm: number): { bands: number; rows: number } {
  if (!(threshold > 0 && threshold < 1)) throw new RangeError(`lshParameters: threshold ${threshold}`);
  let best = { bands: 1, rows: numPerm, error: Number.POSITIVE_INFINITY };
  for (let bands = 1; bands <= numPerm; bands++) {
    const maxRows = Math.floor(numPerm / bands);
    for (let rows = 1; rows <= maxRows; rows++) {
      const falsePositive = integrate((s) => candidateProbability(s, bands, rows), 0, threshold);
      const falseNegative = integrate((s) => 1 - candidateProbability(s, bands, rows), threshold, 1);
      const error = falsePositive + falseNegative;
      if (error < best.error) best = { bands, rows, error };
    }
  }
  return { bands: best.bands, rows: best.rows };
}

export interface NearDuplicateOptions extends MinHashOptions {
  /** Jaccard similarity of word 3-grams from which texts count as near duplicates (default 0.8). */
  threshold?: number;
}

/** Fixed-size byte rows in chunks (no single huge allocation, no copying when growing). */
class ByteRows {
  private readonly chunks: Uint8Array[] = [];
  private readonly rowsPerChunk: number;
  count = 0;

  constructor(readonly width: number) {
    this.rowsPerChunk = Math.max(1, Math.floor((1 << 20) / width));
  }

  get bytes(): number {
    return this.chunks.length * this.rowsPerChunk * this.width;
  }

  push(row: Uint8Array): number {
    const chunk = Math.floor(this.count / this.rowsPerChunk);
    if (chunk === this.chunks.length) this.chunks.push(new Uint8Array(this.rowsPerChunk * this.width));
    this.chunks[chunk]!.set(row, (this.count % this.rowsPerChunk) * this.width);
    return this.count++;
  }

  row(i: number): Uint8Array {
    const offset = (i % this.rowsPerChunk) * this.width;
    return this.chunks[Math.floor(i / this.rowsPerChunk)]!.subarray(offset, offset + this.width);
  }
}

/** Kept texts' LSH bands; `addIfNew` keeps a text unless it is a near duplicate of a kept one. */
export class NearDuplicateIndex {
  readonly threshold: number;
  readonly bands: number;
  readonly rows: number;
  readonly hasher: MinHasher;
  /** Band hash -> the first kept text with that band. */
  private readonly buckets = new U64Map();
  /** Top byte of every kept text's signature. */
  private readonly signatures: ByteRows;
  private readonly bandHi: Uint32Array;
  private readonly bandLo: Uint32Array;
  private readonly topBytes: Uint8Array;
  /** Texts that shared a band with a kept one, and those of them whose signatures agreed. */
  readonly stats = { candidates: 0, duplicates: 0 };

  constructor(options: NearDuplicateOptions = {}) {
    this.hasher = new MinHasher(options);
    this.threshold = options.threshold ?? 0.8;
    const { bands, rows } = lshParameters(this.threshold, this.hasher.numPerm);
    this.bands = bands;
    this.rows = rows;
    this.bandHi = new Uint32Array(bands);
    this.bandLo = new Uint32Array(bands);
    this.topBytes = new Uint8Array(this.hasher.numPerm);
    this.signatures = new ByteRows(this.hasher.numPerm);
  }

  /** Bytes held by the band table and the kept signatures. */
  get bytes(): number {
    return this.buckets.bytes + this.signatures.bytes;
  }

  /** Kept texts. */
  get size(): number {
    return this.signatures.count;
  }

  /**
   * True (and the text is kept) when no kept text is a near duplicate of it. A text with no words
   * is never a near duplicate and is not kept (exact deduplication handles those).
   */
  addIfNew(text: string): boolean {
    const sig = this.hasher.signature(text);
    if (sig === undefined) return true;
    for (let i = 0; i < sig.length; i++) this.topBytes[i] = sig[i]! >>> 24;
    let candidate = false;
    let checked = -1;
    for (let b = 0; b < this.bands; b++) {
      let hi = 0x2545f491 ^ b;
      let lo = 0x61c88647 ^ Math.imul(b, 0x9e3779b1);
      for (let r = 0; r < this.rows; r++) {
        const v = sig[b * this.rows + r]!;
        hi = (fmix32(hi ^ v) + r) >>> 0;
        lo = fmix32((lo + v) ^ 0x7feb352d);
      }
      this.bandHi[b] = hi;
      this.bandLo[b] = lo;
      const kept = this.buckets.get(hi, lo);
      if (kept < 0 || kept === checked) continue;
      candidate = true;
      checked = kept;
      if (this.similarity(kept) >= this.threshold) {
        this.stats.candidates++;
        this.stats.duplicates++;
        return false;
      }
    }
    if (candidate) this.stats.candidates++;
    const id = this.signatures.push(this.topBytes);
    for (let b = 0; b < this.bands; b++) this.buckets.setIfAbsent(this.bandHi[b]!, this.bandLo[b]!, id);
    return true;
  }

  /** Estimated Jaccard similarity of the current text (topBytes) and a kept one. */
  private similarity(kept: number): number {
    const row = this.signatures.row(kept);
    let same = 0;
    for (let i = 0; i < row.length; i++) if (row[i] === this.topBytes[i]) same++;
    // One byte agrees by chance 1 time in 256: agreement a = J + (1 - J) / 256.
    const agreement = same / row.length;
    return (agreement - 1 / 256) / (1 - 1 / 256);
  }
}
