// The shared blocks a layer body is built from. The model (model/llama.ts) implements them over
// its backend, once for every way it runs a layer (one sequence, several sequences batched), so
// an architecture writes its layer once.
import type { LlamaConfig } from "../config.js";

/**
 * The activations of a layer: `x` the residual stream and `xb` a normed copy (dim wide), `q` and
 * `att` the queries and attention output (heads · headDim), `k` and `v` the new keys and values
 * (kvHeads · headDim, written where the KV cache wants them), `hb` and `hb2` the feed-forward
 * hidden rows (ffn).
 */
export type Activation = "x" | "xb" | "q" | "k" | "v" | "att" | "hb" | "hb2";

/** One weight product: layer tensor `role` times the input, into `out` (added to it when `add`). */
export type Product = [role: string, out: Activation, add?: boolean];

export interface LayerGraph {
  readonly config: LlamaConfig;
  /** out = RMSNorm(x) · layer tensor `role`. */
  rmsNorm(role: string, out: Activation, x: Activation): void;
  /** out = LayerNorm(x) · `role`.weight + `role`.bias (no bias when the file has none). */
  layerNorm(role: string, out: Activation, x: Activation): void;
  /** The products of weights that all read `x`, with their run-time LoRA updates. */
  project(x: Activation, products: readonly Product[]): void;
  /** Adds layer vector `role`.bias to every token's row of `out`; nothing when an optional bias is absent. */
  addBias(role: string, out: Activation): void;
  /** out += x, element by element (a residual). */
  add(out: Activation, x: Activation): void;
  /** Clamps every element of `a` to [-limit, limit]. */
  clamp(a: Activation, limit: number): void;
  /** Rotary positions on q and k, k and v into the cache, causal attention into `att`. */
  attention(): void;
  /** out = SiLU(gate) · up, element by element over the ffn-wide rows. */
  siluMul(out: Activation, gate: Activation, up: Activation): void;
  /** out = GELU(x), element by element (ggml's tanh approximation through its f16 table). */
  gelu(out: Activation, x: Activation): void;
  /** out = GELU(gate) · up, element by element (GeGLU). */
  geluMul(out: Activation, gate: Activation, up: Activation): void;
}

/** Width in floats of one token's row of activation `a`. */
export function activationWidth(c: LlamaConfig, a: Activation): number {
  switch (a) {
    case "x":
    case "xb":
      return c.dim;
    case "q":
    case "att":
      return c.heads * c.headDim;
    case "k":
    case "v":
      return c.kvHeads * c.headDim;
    case "hb":
    case "hb2":
      return c.ffn;
  }
}
