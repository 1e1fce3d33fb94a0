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
 * A text that shares a band with a kept text counts as a near duplicate (no second check: only the
 * band hashes are kept, 16 bytes or so per band per text).
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

/** Kept texts' LSH bands; `addIfNew` keeps a text unless it shares a band with a kept one. */
export class NearDuplicateIndex {
  readonly bands: number;
  readonly rows: number;
  readonly hasher: MinHasher;
  private readonly keys = new U64Set();
  private readonly bandHi: Uint32Array;
  private readonly bandLo: Uint32Array;

  constructor(options: NearDuplicateOptions = {}) {
    this.hasher = new MinHasher(options);
    const { bands, rows } = lshParameters(options.threshold ?? 0.8, this.hasher.numPerm);
    this.bands = bands;
    this.rows = rows;
    this.bandHi = new Uint32Array(bands);
    this.bandLo = new Uint32Array(bands);
  }

  /** Bytes held by the band hashes. */
  get bytes(): number {
    return this.keys.bytes;
  }

  /**
   * True (and the text is kept) when no kept text shares a band with it. A text with no words is
   * never a near duplicate and is not kept (exact deduplication handles those).
   */
  addIfNew(text: string): boolean {
    const sig = this.hasher.signature(text);
    if (sig === undefined) return true;
    let duplicate = false;
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
      if (this.keys.has(hi, lo)) duplicate = true;
    }
    if (duplicate) return false;
    for (let b = 0; b < this.bands; b++) this.keys.add(this.bandHi[b]!, this.bandLo[b]!);
    return true;
  }
}
