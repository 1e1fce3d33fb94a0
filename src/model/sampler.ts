/**
 * Token sampling, following llama.cpp's default sampler chain (common/sampling):
 * penalties -> top-k -> top-p -> min-p -> temperature -> draw.
 *
 * As in llama.cpp, top-p and min-p look at the distribution before temperature (softmax of the
 * penalized logits of the tokens top-k kept); temperature only shapes the final draw among the
 * survivors. Temperature 0 is greedy: the argmax of the penalized logits, ties to the lowest id.
 *
 * Cost: one copy of the logits and one pass over the vocabulary per step, nothing sorted: a size-k
 * heap picks the top-k candidates, and top-p is a weighted quickselect over what is left (expected
 * linear time). With top-k off, every token is a candidate and each step pays a few exp() per
 * vocabulary entry.
 */

import { randomInt } from "node:crypto";
import { UserError } from "../errors.js";
import { Rng } from "../util/random.js";

export interface SamplerOptions {
  /** Softmax temperature of the final draw; 0 = greedy. Default 0.8. */
  temperature?: number;
  /** Keep the k most likely tokens; 0 = off. Default 40. */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability sums to at least p; 1 = off. Default 0.95. */
  topP?: number;
  /** Drop tokens less likely than minP times the most likely one; 0 = off. Default 0.05. */
  minP?: number;
  /** Divide positive logits (multiply negative ones) of recently seen tokens by this; 1 = off.
   * Default 1 (off), as in llama.cpp, so that greedy decoding is plain argmax. */
  repeatPenalty?: number;
  /** How many of the last tokens the penalty looks at; 0 = none, -1 = the whole history. Default 64. */
  repeatLastN?: number;
  /** Seed of the random draw; same seed, same logits, same history: same tokens. Default: random. */
  seed?: number;
}

export type ResolvedSamplerOptions = Required<SamplerOptions>;

/** Limits which tokens may come next (a grammar, see grammar/token-constraint.ts). */
export interface TokenConstraint {
  /** Whether `id` may come next. */
  allows(id: number): boolean;
  /** Sets the logit of every token that may not come next to -Infinity (throws when none may). */
  mask(logits: Float32Array): void;
}

export const DEFAULT_SAMPLER_OPTIONS: Readonly<Omit<ResolvedSamplerOptions, "seed">> = {
  temperature: 0.8,
  topK: 40,
  topP: 0.95,
  minP: 0.05,
  repeatPenalty: 1,
  repeatLastN: 64,
};

/** Best candidates checked against a constraint before the whole vocabulary is masked. */
const CONSTRAINED_POOL = 256;

export class Sampler {
  readonly options: Readonly<ResolvedSamplerOptions>;
  private readonly rng: Rng;
  /** Penalized logits of the current step. */
  private work = new Float32Array(0);
  /** Candidate token ids of the current step. */
  private cand = new Int32Array(0);
  /** Unnormalized probabilities, by token id, of the current step. */
  private weight = new Float64Array(0);
  /** Marks tokens already penalized in the current step. */
  private seen = new Uint8Array(0);
  /** Logits with the tokens a constraint refuses masked out. */
  private masked = new Float32Array(0);

  constructor(options: SamplerOptions = {}) {
    const o: ResolvedSamplerOptions = {
      ...DEFAULT_SAMPLER_OPTIONS,
      seed: randomInt(0, 2 ** 32 - 1),
      ...withoutUndefined(options),
    };
    check("temperature", o.temperature, o.temperature >= 0, "a number >= 0");
    check("topK", o.topK, Number.isInteger(o.topK) && o.topK >= 0, "an integer >= 0");
    check("topP", o.topP, o.topP > 0 && o.topP <= 1, "a number in (0, 1]");
    check("minP", o.minP, o.minP >= 0 && o.minP <= 1, "a number in [0, 1]");
    check("repeatPenalty", o.repeatPenalty, o.repeatPenalty > 0, "a number > 0");
    check(
      "repeatLastN",
      o.repeatLastN,
      Number.isInteger(o.repeatLastN) && o.repeatLastN >= -1,
      "an integer >= -1",
    );
    check(
      "seed",
      o.seed,
      Number.isInteger(o.seed) && o.seed >= 0 && o.seed < 2 ** 32,
      "an integer in [0, 2^32)",
    );
    this.options = Object.freeze(o);
    this.rng = new Rng(o.seed);
  }

  /** The seed in use (random unless one was given), so a run can be repeated. */
  get seed(): number {
    return this.options.seed;
  }

  /**
   * Picks the next token from `logits` (one per vocabulary entry; not modified). `history` is the
   * token sequence so far (prompt and generated), for the repetition penalty. With a
   * `constraint`, the token drawn from the free distribution is kept when the constraint allows
   * it (llama.cpp's order: a model that follows the grammar by itself pays almost nothing).
   * Otherwise the draw is made again from the distribution with the refused tokens masked out:
   * when top-k limits it, from the k best allowed tokens, found by checking the best candidates in
   * order, so that a grammar state met for the first time costs no walk of the whole vocabulary;
   * else (or when too few of the best candidates are allowed) from the whole masked vocabulary.
   * Either way the same logits, history and seed give the same token.
   */
  sample(logits: Float32Array, history: readonly number[] = [], constraint?: TokenConstraint): number {
    const id = this.draw(logits, history);
    if (constraint === undefined || constraint.allows(id)) return id;
    const allowed = this.drawAllowed(logits.length, constraint);
    if (allowed !== undefined) return allowed;
    if (this.masked.length < logits.length) this.masked = new Float32Array(logits.length);
    const masked = this.masked.subarray(0, logits.length);
    masked.set(logits);
    constraint.mask(masked);
    return this.draw(masked, history);
  }

  private draw(logits: Float32Array, history: readonly number[]): number {
    const n = logits.length;
    if (n === 0) throw new RangeError("Sampler.sample: empty logits");
    this.ensureCapacity(n);
    const x = this.work.subarray(0, n);
    x.set(logits);
    this.applyRepeatPenalty(x, history);
    const { temperature, topK } = this.options;

    if (temperature <= 0 || topK === 1) return argmax(x);

    // top-k: candidates and their max.
    const cand = this.cand;
    let count: number;
    if (topK > 0 && topK < n) {
      count = selectTopK(x, topK, cand);
    } else {
      count = n;
      for (let i = 0; i < n; i++) cand[i] = i;
    }
    return this.drawFrom(x, count);
  }

  /**
   * The draw again, after the free one was refused, from the top-k allowed tokens of the step's
   * penalized logits (still in `work`): the best `CONSTRAINED_POOL` candidates (at least 4k) are
   * checked best first; undefined when top-k does not limit the draw or too few of them are allowed.
   * Candidates go best first (value descending, id ascending), the order the masked draw's top-k
   * set has too, so the token depends on the logits and the seed only.
   */
  private drawAllowed(n: number, constraint: TokenConstraint): number | undefined {
    const { temperature, topK } = this.options;
    const greedy = temperature <= 0 || topK === 1;
    if (!greedy && !(topK > 0 && topK < n)) return undefined;
    const want = greedy ? 1 : topK;
    const pool = Math.max(CONSTRAINED_POOL, 4 * want);
    if (pool >= n) return undefined;
    const x = this.work.subarray(0, n);
    const cand = this.cand;
    const count = selectTopK(x, pool, cand);
    const best = cand.subarray(0, count).sort((a, b) => x[b]! - x[a]! || a - b);
    let kept = 0;
    for (let j = 0; j < count && kept < want; j++) {
      const id = best[j]!;
      if (constraint.allows(id)) cand[kept++] = id;
    }
    if (kept < want) return undefined;
    return greedy ? cand[0]! : this.drawFrom(x, kept);
  }

  /** Top-p, min-p, temperature and the draw over candidates `cand[0..count)` of logits `x`. */
  private drawFrom(x: Float32Array, count: number): number {
    const { temperature, topP, minP } = this.options;
    const cand = this.cand;
    let max = Number.NEGATIVE_INFINITY;
    for (let j = 0; j < count; j++) max = Math.max(max, x[cand[j]!]!);
    if (max === Number.NEGATIVE_INFINITY) return argmax(x);

    // top-p over the softmax of the top-k candidates (normalizer z), then min-p. Both keep a prefix of
    // the candidates in descending order, so applying min-p first gives the same set, the shorter
    // prefix, and leaves top-p fewer candidates. A weighted selection finds the top-p prefix without
    // sorting.
    let z = 0;
    if (topP < 1) {
      const w = this.weight;
      for (let j = 0; j < count; j++) {
        const id = cand[j]!;
        const e = Math.exp(x[id]! - max);
        w[id] = e;
        z += e;
      }
    }
    if (minP > 0) count = keepAtLeast(x, cand, count, max + Math.log(minP));
    if (topP < 1) count = selectTopP(x, this.weight, cand, count, topP * z);

    // temperature and the draw.
    const invT = 1 / temperature;
    let sum = 0;
    for (let j = 0; j < count; j++) sum += Math.exp((x[cand[j]!]! - max) * invT);
    let u = this.rng.nextFloat() * sum;
    for (let j = 0; j < count; j++) {
      u -= Math.exp((x[cand[j]!]! - max) * invT);
      if (u < 0) return cand[j]!;
    }
    return cand[count - 1]!;
  }

  private ensureCapacity(n: number): void {
    if (this.work.length < n) {
      this.work = new Float32Array(n);
      this.cand = new Int32Array(n);
      this.seen = new Uint8Array(n);
      this.weight = new Float64Array(n);
    }
  }

  /** llama.cpp's repeat penalty: once per distinct token among the last N, whatever its count. */
  private applyRepeatPenalty(x: Float32Array, history: readonly number[]): void {
    const { repeatPenalty, repeatLastN } = this.options;
    if (repeatPenalty === 1 || repeatLastN === 0 || history.length === 0) return;
    const start = repeatLastN < 0 ? 0 : Math.max(0, history.length - repeatLastN);
    const seen = this.seen;
    const n = x.length;
    for (let i = start; i < history.length; i++) {
      const t = history[i]!;
      if (!(t >= 0 && t < n) || seen[t]) continue;
      seen[t] = 1;
      const l = x[t]!;
      x[t] = l <= 0 ? l * repeatPenalty : l / repeatPenalty;
    }
    for (let i = start; i < history.length; i++) {
      const t = history[i]!;
      if (t >= 0 && t < n) seen[t] = 0;
    }
  }
}

/** Index of the largest value; ties go to the lowest index. */
export function argmax(x: Float32Array): number {
  let best = 0;
  let bestValue = x[0]!;
  for (let i = 1; i < x.length; i++) {
    const v = x[i]!;
    if (v > bestValue || (Number.isNaN(bestValue) && !Number.isNaN(v))) {
      best = i;
      bestValue = v;
    }
  }
  return best;
}

/**
 * Writes the ids of the k largest values of `x` to `out[0..k)` (unordered) with a size-k min-heap.
 * Among equal values the lower id wins, so the selection is deterministic.
 */
function selectTopK(x: Float32Array, k: number, out: Int32Array): number {
  // Heap root = worst kept: the smallest value, and among equal values the highest id.
  const worse = (a: number, b: number): boolean => {
    const va = x[a]!;
    const vb = x[b]!;
    return va < vb || (va === vb && a > b);
  };
  const siftDown = (i: number): void => {
    for (;;) {
      const l = 2 * i + 1;
      if (l >= k) return;
      const r = l + 1;
      const c = r < k && worse(out[r]!, out[l]!) ? r : l;
      if (!worse(out[c]!, out[i]!)) return;
      const t = out[i]!;
      out[i] = out[c]!;
      out[c] = t;
      i = c;
    }
  };
  for (let i = 0; i < k; i++) out[i] = i;
  for (let i = (k >> 1) - 1; i >= 0; i--) siftDown(i);
  const n = x.length;
  let rootValue = x[out[0]!]!;
  for (let i = k; i < n; i++) {
    // Ids arrive in increasing order, so an equal value never beats the root.
    if (x[i]! > rootValue) {
      out[0] = i;
      siftDown(0);
      rootValue = x[out[0]!]!;
    }
  }
  return k;
}

/** Keeps, in place and in order, the candidates whose value is at least `floor`; returns their count. */
function keepAtLeast(x: Float32Array, cand: Int32Array, count: number, floor: number): number {
  if (floor === Number.NEGATIVE_INFINITY) return count;
  let m = 0;
  for (let j = 0; j < count; j++) {
    const id = cand[j]!;
    if (x[id]! >= floor) cand[m++] = id;
  }
  return m;
}

/**
 * Top-p as a weighted quickselect, expected O(count): reorders `cand[0..count)` so that its first m
 * entries are the shortest prefix, in the order (value descending, id ascending), whose weights sum
 * to at least `target`, and returns m (all of them when the sum never gets there).
 */
function selectTopP(
  x: Float32Array,
  w: Float64Array,
  cand: Int32Array,
  count: number,
  target: number,
): number {
  // `before(a, b)`: a comes first in the order.
  const before = (a: number, b: number): boolean => x[a]! > x[b]! || (x[a] === x[b] && a < b);
  let lo = 0;
  let hi = count;
  let acc = 0; // weight of cand[0..lo), all known to be in the prefix
  while (lo < hi) {
    // Median of three as pivot, moved to cand[lo].
    const mid = lo + ((hi - lo) >> 1);
    const last = hi - 1;
    const a = cand[lo]!;
    const b = cand[mid]!;
    const c = cand[last]!;
    const m = before(a, b)
      ? before(b, c)
        ? mid
        : before(a, c)
          ? last
          : lo
      : before(a, c)
        ? lo
        : before(b, c)
          ? last
          : mid;
    const pivot = cand[m]!;
    cand[m] = a;
    cand[lo] = pivot;
    // Partition cand(lo..hi) into [ahead of pivot | behind pivot].
    let split = lo + 1;
    let ahead = 0;
    for (let j = lo + 1; j < hi; j++) {
      const id = cand[j]!;
      if (before(id, pivot)) {
        ahead += w[id]!;
        cand[j] = cand[split]!;
        cand[split++] = id;
      }
    }
    // Put the pivot between the two parts.
    cand[lo] = cand[split - 1]!;
    cand[split - 1] = pivot;
    const p = split - 1;
    if (acc + ahead >= target) {
      hi = p;
    } else if (acc + ahead + w[pivot]! >= target) {
      return p + 1;
    } else {
      acc += ahead + w[pivot]!;
      lo = p + 1;
    }
  }
  // Only reached when rounding kept the sum just under the target: keep what was accumulated.
  return Math.max(lo, 1);
}

function withoutUndefined(o: SamplerOptions): SamplerOptions {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as SamplerOptions;
}

function check(name: string, value: number, ok: boolean, what: string): void {
  if (typeof value !== "number" || Number.isNaN(value) || !ok) {
    throw new UserError(`sampler option ${name} must be ${what}, got ${value}`);
  }
}
