/**
 * Embeddings: a model's hidden states after the output norm, pooled into one vector per input and
 * scaled to unit length (Euclidean), as llama.cpp's server returns them on /v1/embeddings.
 */
import { UserError } from "../errors.js";

/** How the tokens' states become one vector (llama.cpp's llama_pooling_type, by GGUF value). */
export const POOLING_TYPES = ["none", "mean", "cls", "last", "rank"] as const;
export type PoolingType = (typeof POOLING_TYPES)[number];

/**
 * The pooling a model file asks for (`<arch>.pooling_type`), mean when it says nothing: a
 * generative Llama has no pooling of its own, and the mean of its states is the common choice.
 */
export function poolingTypeOf(meta: (key: string) => unknown, file: string): PoolingType {
  const key = `${String(meta("general.architecture"))}.pooling_type`;
  const value = meta(key);
  if (value === undefined) return "mean";
  const n = typeof value === "bigint" ? Number(value) : value;
  // -1 is llama.cpp's "unspecified": the model's default.
  if (n === -1) return "mean";
  if (typeof n !== "number" || !Number.isInteger(n) || n < 0 || n >= POOLING_TYPES.length) {
    throw new UserError(`${file}: ${key} ${String(value)} is not a pooling type (0 to 4)`);
  }
  return POOLING_TYPES[n]!;
}

/** Why inputs cannot be pooled into one vector with `pooling`, or undefined when they can. */
export function poolingProblem(pooling: PoolingType): string | undefined {
  if (pooling === "none")
    return "the model file's pooling type is none (one vector per token), not one vector per input";
  if (pooling === "rank")
    return "the model file's pooling type is rank (a reranker's score), which smallhammer does not compute";
  return undefined;
}

/** Pools the hidden states of one input, chunk by chunk, in O(dim) memory. */
export class Pooler {
  private readonly sum: Float64Array;
  private tokens = 0;

  constructor(
    readonly dim: number,
    readonly pooling: PoolingType,
  ) {
    const problem = poolingProblem(pooling);
    if (problem) throw new UserError(problem);
    this.sum = new Float64Array(dim);
  }

  /** Adds the next `rows` tokens' states (rows × dim floats, in order). */
  add(states: Float32Array, rows: number): void {
    const d = this.dim;
    if (this.pooling === "mean") {
      for (let r = 0; r < rows; r++) for (let i = 0; i < d; i++) this.sum[i]! += states[r * d + i]!;
    } else if (this.pooling === "cls") {
      if (this.tokens === 0) for (let i = 0; i < d; i++) this.sum[i] = states[i]!;
    } else {
      for (let i = 0; i < d; i++) this.sum[i] = states[(rows - 1) * d + i]!;
    }
    this.tokens += rows;
  }

  /** The pooled vector scaled to unit length (a zero vector stays zero). */
  result(): Float32Array {
    const v = Float64Array.from(this.sum);
    if (this.pooling === "mean" && this.tokens > 0) for (let i = 0; i < v.length; i++) v[i]! /= this.tokens;
    let norm = 0;
    for (const x of v) norm += x * x;
    norm = Math.sqrt(norm);
    const out = new Float32Array(v.length);
    for (let i = 0; i < v.length; i++) out[i] = norm > 0 ? v[i]! / norm : 0;
    return out;
  }
}
