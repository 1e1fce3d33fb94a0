/**
 * Float64 twins of LoRA training: the dropout mask and the LoRA kernels of
 * src/kernels/assembly/lora.ts, a LoRA linear layer and its backward pass, written from the
 * calculus. Layouts as in reference.ts: x is n × cols, W rows × cols, A rank × cols, B rows × rank.
 *
 *   xd = mask(x)·s / (1 − p)        (s = alpha / rank; mask keeps a share 1 − p)
 *   u  = xd·Aᵀ                      (n × rank)
 *   y  = x·Wᵀ + u·Bᵀ
 */
import { linearRef, type Values } from "./reference.js";

/** lowbias32 (Wellons): the kernel's 32-bit mix. */
export function loraMix(x: number): number {
  x >>>= 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  x ^= x >>> 16;
  return x >>> 0;
}

/**
 * The mask seed of adapted matrix `index` (its place among the model's adapters) in
 * forwardBackward pass `pass` of a run seeded `seed`.
 */
export function loraDropoutSeed(seed: number, pass: number, index: number): number {
  let h = loraMix(seed >>> 0);
  h = loraMix((h ^ pass) >>> 0);
  return loraMix((h ^ (index + 1)) >>> 0);
}

/** Whether the dropout mask of `seed` keeps element i: mix(seed ^ mix(i)) >= threshold. */
export function dropoutKeeps(seed: number, i: number, threshold: number): boolean {
  return loraMix((seed ^ loraMix(i)) >>> 0) >= threshold >>> 0;
}

/** The threshold that drops a share p of the elements (p in [0, 1)). */
export function dropoutThreshold(p: number): number {
  return Math.min(2 ** 32 - 1, Math.round(p * 2 ** 32));
}

/** out[i] = keeps(i) ? x[i]·scale : 0. */
export function dropoutScaleRef(x: Values, scale: number, threshold: number, seed: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = dropoutKeeps(seed, i, threshold) ? x[i]! * scale : 0;
  return out;
}

/** The shape and settings of one LoRA layer. */
export interface LoraLayerRef {
  rows: number;
  cols: number;
  rank: number;
  n: number;
  /** alpha / rank. */
  scale: number;
  /** Dropout share p and mask seed (p = 0: no dropout). */
  dropout: number;
  seed: number;
}

/** y (n × rows) of a LoRA layer. */
export function loraLinearRef(x: Values, w: Values, a: Values, b: Values, g: LoraLayerRef): Float64Array {
  const y = linearRef(x, w, g.rows, g.cols, g.n);
  const { delta } = loraForwardRef(x, a, b, g);
  for (let i = 0; i < y.length; i++) y[i]! += delta[i]!;
  return y;
}

/** The low-rank path alone: u = xd·Aᵀ (n × rank) and its contribution u·Bᵀ (n × rows). */
export function loraForwardRef(
  x: Values,
  a: Values,
  b: Values,
  g: LoraLayerRef,
): { u: Float64Array; delta: Float64Array } {
  const xd = dropoutScaleRef(x, g.scale / (1 - g.dropout), dropoutThreshold(g.dropout), g.seed);
  const u = linearRef(xd, a, g.rank, g.cols, g.n);
  return { u, delta: linearRef(u, b, g.rows, g.rank, g.n) };
}

/** dx, dA, dB (and du, the gradient of u) of a LoRA layer for an upstream gradient dy (W frozen: no dW). */
export function loraLinearBackwardRef(
  dy: Values,
  x: Values,
  w: Values,
  a: Values,
  b: Values,
  g: LoraLayerRef,
): { dx: Float64Array; da: Float64Array; db: Float64Array; du: Float64Array } {
  const { rows, cols, rank, n } = g;
  const factor = g.scale / (1 - g.dropout);
  const threshold = dropoutThreshold(g.dropout);
  const xd = dropoutScaleRef(x, factor, threshold, g.seed);
  const u = linearRef(xd, a, rank, cols, n);
  const dx = new Float64Array(n * cols);
  const da = new Float64Array(rank * cols);
  const db = new Float64Array(rows * rank);
  const du = new Float64Array(n * rank);
  for (let t = 0; t < n; t++) {
    for (let r = 0; r < rows; r++) {
      const gy = dy[t * rows + r]!;
      for (let k = 0; k < cols; k++) dx[t * cols + k]! += gy * w[r * cols + k]!;
      for (let j = 0; j < rank; j++) {
        db[r * rank + j]! += gy * u[t * rank + j]!;
        du[t * rank + j]! += gy * b[r * rank + j]!;
      }
    }
  }
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < rank; j++) {
      const gu = du[t * rank + j]!;
      for (let k = 0; k < cols; k++) {
        const i = t * cols + k;
        da[j * cols + k]! += gu * xd[i]!;
        if (dropoutKeeps(g.seed, i, threshold)) dx[i]! += gu * a[j * cols + k]! * factor;
      }
    }
  }
  return { dx, da, db, du };
}
