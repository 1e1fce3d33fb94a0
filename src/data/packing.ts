/**
 * Training batches from tokenized examples: cut to a maximum length, packed several to a row (or
 * one per row, padded), shuffled and split by seed.
 *
 *   const { train, validation } = splitValidation(examples, { fraction: 0.05, seed });
 *   for (let epoch = 0; epoch < epochs; epoch++) {
 *     for (const batch of packBatches(shuffled(train, seed + 1 + epoch), { seqLen: 512, batchSize: 8, padId })) {
 *       step(batch);
 *     }
 *   }
 *
 * Truncation policy (the same everywhere, counted in BatchStats):
 *   1. An example longer than `seqLen` tokens keeps its first `seqLen` tokens: the start of the
 *      conversation is kept and the tail is cut, usually in the middle of the last assistant reply
 *      that fits (that reply then loses its end token).
 *   2. Tokens after the last trained-on token are dropped: they would carry no loss.
 *   3. An example with no trained-on token left (the prompt alone fills `seqLen`) is dropped.
 */

import { UserError } from "../errors.js";
import { Rng } from "../util/random.js";
import type { TokenizedExample } from "./chat-tokens.js";

/**
 * A batch of `rows` rows × `seqLen` positions; every array is row-major, `rows * seqLen` long.
 *
 * An example of n tokens fills n consecutive positions of one row: `inputs` holds its tokens,
 * `targets[p]` the token after `inputs[p]` in the same example when that token is trained on, and
 * -1 everywhere else (no loss): prompt tokens, each example's last position, padding. A loss is the
 * mean cross-entropy over the positions with `targets >= 0`; there are `trainedTargets` of them.
 *
 * Attention: position p may attend to position q iff q <= p and segmentIds[q] === segmentIds[p],
 * so examples packed into one row never see each other. Segment ids are 1, 2, 3... for the
 * examples of the batch, numbered across rows, and 0 for padding, which comes only at the end of a
 * row after at least one example. A segment is therefore a run of equal ids even over the batch
 * flattened into one sequence of rows * seqLen tokens. RoPE uses `positions`, which restart at 0
 * with every example (padding: 0).
 */
export interface PackedBatch {
  rows: number;
  seqLen: number;
  inputs: Int32Array;
  targets: Int32Array;
  segmentIds: Int32Array;
  positions: Int32Array;
  /** Examples in the batch. */
  examples: number;
  /** Positions with a target (targets >= 0). */
  trainedTargets: number;
}

export interface BatchOptions {
  /** Positions per row, which is also the most tokens an example keeps. */
  seqLen: number;
  /** Rows per batch; the last batch may have fewer. */
  batchSize: number;
  /** Pack several examples into a row (default true); false puts one example in each row. */
  packing?: boolean;
  /** Token id written at padding positions (never a target). */
  padId: number;
  /** Without packing: make rows as long as the batch's longest example rather than `seqLen`. */
  padToLongest?: boolean;
}

/** What batching did, summed over the batches made so far. */
export interface BatchStats {
  /** Examples seen. */
  examples: number;
  /** Examples longer than seqLen, cut (policy 1). */
  truncated: number;
  /** Examples dropped because no trained-on token was left (policy 3). */
  dropped: number;
  /** Trained-on tokens lost by cutting. */
  trainedTokensCut: number;
  batches: number;
  rows: number;
  /** Positions holding example tokens. */
  tokens: number;
  paddingPositions: number;
  trainedTargets: number;
}

export function emptyBatchStats(): BatchStats {
  return {
    examples: 0,
    truncated: 0,
    dropped: 0,
    trainedTokensCut: 0,
    batches: 0,
    rows: 0,
    tokens: 0,
    paddingPositions: 0,
    trainedTargets: 0,
  };
}

export interface FittedExample {
  /** The example cut to the policy; absent when it is dropped. */
  example?: TokenizedExample;
  /** The example was longer than the maximum length. */
  truncated: boolean;
  /** Trained-on tokens cut off (all of them when dropped). */
  trainedCut: number;
}

function countTrained(mask: Uint8Array, from: number, to: number): number {
  let n = 0;
  for (let i = from; i < to; i++) n += mask[i]!;
  return n;
}

/** Applies the truncation policy (see the file comment) to one example; arrays are views, not copies. */
export function fitExample(example: TokenizedExample, maxLength: number): FittedExample {
  const { ids, lossMask } = example;
  const truncated = ids.length > maxLength;
  const trainedTotal = countTrained(lossMask, 1, ids.length);
  let last = Math.min(ids.length, maxLength) - 1;
  while (last >= 1 && lossMask[last] === 0) last--;
  if (last < 1) return { truncated, trainedCut: trainedTotal };
  const kept: TokenizedExample = { ids: ids.subarray(0, last + 1), lossMask: lossMask.subarray(0, last + 1) };
  if (example.source !== undefined) kept.source = example.source;
  return { example: kept, truncated, trainedCut: trainedTotal - countTrained(lossMask, 1, last + 1) };
}

function checkOptions(o: BatchOptions): void {
  if (!Number.isSafeInteger(o.seqLen) || o.seqLen < 2) {
    throw new UserError(`sequence length must be an integer of at least 2, got ${o.seqLen}`);
  }
  if (!Number.isSafeInteger(o.batchSize) || o.batchSize < 1) {
    throw new UserError(`batch size must be a positive integer, got ${o.batchSize}`);
  }
  if (!Number.isInteger(o.padId) || o.padId < 0) throw new RangeError(`packBatches: bad padId ${o.padId}`);
}

/**
 * Batches examples in the order given. With packing, each example goes into the first row of the
 * open batch with room for it; when none has room and the batch has all its rows, the batch is
 * emitted. Without packing, each example gets a row of its own. `stats` (optional) is updated as
 * batches are made.
 */
export function* packBatches(
  examples: Iterable<TokenizedExample>,
  options: BatchOptions,
  stats: BatchStats = emptyBatchStats(),
): Generator<PackedBatch> {
  checkOptions(options);
  const packing = options.packing ?? true;
  let rows: TokenizedExample[][] = [];
  let fills: number[] = [];
  const emit = (): PackedBatch => {
    const batch = buildBatch(rows, fills, options, packing, stats);
    rows = [];
    fills = [];
    return batch;
  };
  for (const raw of examples) {
    stats.examples++;
    const fit = fitExample(raw, options.seqLen);
    if (fit.truncated) stats.truncated++;
    stats.trainedTokensCut += fit.trainedCut;
    if (fit.example === undefined) {
      stats.dropped++;
      continue;
    }
    const n = fit.example.ids.length;
    let r = packing ? fills.findIndex((f) => f + n <= options.seqLen) : -1;
    if (r < 0) {
      if (rows.length === options.batchSize) yield emit();
      rows.push([]);
      fills.push(0);
      r = rows.length - 1;
    }
    rows[r]!.push(fit.example);
    fills[r]! += n;
  }
  if (rows.length > 0) yield emit();
}

function buildBatch(
  rows: TokenizedExample[][],
  fills: number[],
  options: BatchOptions,
  packing: boolean,
  stats: BatchStats,
): PackedBatch {
  const seqLen = !packing && options.padToLongest ? Math.max(...fills) : options.seqLen;
  const size = rows.length * seqLen;
  const inputs = new Int32Array(size).fill(options.padId);
  const targets = new Int32Array(size).fill(-1);
  const segmentIds = new Int32Array(size);
  const positions = new Int32Array(size);
  let segment = 0;
  let trained = 0;
  let tokens = 0;
  for (let r = 0; r < rows.length; r++) {
    let p = r * seqLen;
    for (const { ids, lossMask } of rows[r]!) {
      segment++;
      const n = ids.length;
      inputs.set(ids, p);
      for (let j = 0; j < n; j++) {
        segmentIds[p + j] = segment;
        positions[p + j] = j;
        if (j + 1 < n && lossMask[j + 1] === 1) {
          targets[p + j] = ids[j + 1]!;
          trained++;
        }
      }
      p += n;
      tokens += n;
    }
  }
  stats.batches++;
  stats.rows += rows.length;
  stats.tokens += tokens;
  stats.paddingPositions += size - tokens;
  stats.trainedTargets += trained;
  return {
    rows: rows.length,
    seqLen,
    inputs,
    targets,
    segmentIds,
    positions,
    examples: segment,
    trainedTargets: trained,
  };
}

/** A copy of `items` in an order that depends only on `seed` (Fisher-Yates with util/random's Rng). */
export function shuffled<T>(items: readonly T[], seed: number): T[] {
  return new Rng(seed).shuffle([...items]);
}

export interface SplitOptions {
  /** Share of the items for validation, in [0, 1); rounded, at least one item when above 0. */
  fraction?: number;
  /** Number of items for validation (instead of fraction). */
  count?: number;
  seed: number;
}

/**
 * Splits items into training and validation sets. Which items go to validation depends only on the
 * seed and the number of items; both sets keep the items' original order.
 */
export function splitValidation<T>(
  items: readonly T[],
  options: SplitOptions,
): { train: T[]; validation: T[] } {
  const n = items.length;
  let k: number;
  if (options.count !== undefined) {
    if (!Number.isSafeInteger(options.count) || options.count < 0) {
      throw new UserError(`validation count must be a non-negative integer, got ${options.count}`);
    }
    k = options.count;
  } else {
    const fraction = options.fraction ?? 0;
    if (!(fraction >= 0 && fraction < 1))
      throw new UserError(`validation fraction must be in [0, 1), got ${fraction}`);
    k = Math.round(n * fraction);
    if (fraction > 0 && k === 0) k = 1;
  }
  if (k > 0 && k >= n) {
    throw new UserError(`a validation split of ${k} leaves no training examples (the dataset has ${n})`);
  }
  const order = new Rng(options.seed).shuffle(Array.from({ length: n }, (_, i) => i));
  const inValidation = new Uint8Array(n);
  for (let i = 0; i < k; i++) inValidation[order[i]!] = 1;
  const train: T[] = [];
  const validation: T[] = [];
  for (let i = 0; i < n; i++) (inValidation[i] ? validation : train).push(items[i]!);
  return { train, validation };
}
