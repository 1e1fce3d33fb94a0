// The tensors of each architecture, in GGUF names with their Hugging Face sources and shapes:
// the one place that spells them for inference, LoRA, training, the random-model writer and the
// converters (llama.cpp keeps the same table in llama-arch.cpp and gguf-py's tensor_mapping.py).
import type { LlamaConfig } from "../config.js";

/**
 * How a tensor is stored and used: a matrix (any weight type the engine runs), a norm weight or a
 * bias (f32 vectors), rope_freqs (f32 per-pair frequency divisors, Llama 3.1), or a table read row
 * by row (GPT-2's learned position embeddings; any type with a dequantizer, never quantized).
 */
export type TensorKind = "matrix" | "norm" | "bias" | "factors" | "table";

/** One part of a fused tensor: the role its rows play in the layer body, and how many rows. */
export interface TensorPart {
  role: string;
  rows: (c: LlamaConfig) => number;
}

/** The shape a tensor takes from the hyper-parameters. */
export type ShapeOf = (c: LlamaConfig) => number[];

export interface TensorSpec {
  /** GGUF role, the name between "blk.N." and ".weight" (or the whole stem of a model tensor). */
  role: string;
  suffix: "weight" | "bias";
  kind: TensorKind;
  /** ggml dims, row length first. */
  dims: ShapeOf;
  /** Hugging Face tensor name, "{l}" standing for the layer number; absent when none maps. */
  hf?: string;
  /**
   * Hugging Face stores q and k of rotary models with each head's halves (NeoX order); GGUF
   * interleaves the pairs, so the converter reorders their rows by head (llama only).
   */
  hfPermute?: "heads" | "kvHeads";
  /** A file may leave it out (output.weight: the head then reuses token_embd.weight). */
  optional?: boolean;
  /** A model-wide tensor that files hold before the layers (token_embd, rope_freqs); others follow them. */
  beforeLayers?: boolean;
  /**
   * A fused tensor whose consecutive row ranges are separate products (or biases) to the layer
   * body: attn_qkv as attn_q, attn_k, attn_v. Rows are independent whatever the weight type, so
   * the model splits it at load, with no copy.
   */
  parts?: readonly TensorPart[];
  /** Hugging Face stores it as [in, out] (GPT-2's Conv1D), the transpose of a Linear weight. */
  hfTransposed?: boolean;
  /** Hugging Face stores the norm weight w, GGUF 1 + w (Gemma's RMSNorm multiplies by 1 + w). */
  hfPlusOne?: boolean;
}

/** GGUF name of a model-wide tensor. */
export function modelTensorName(spec: TensorSpec): string {
  return `${spec.role}.${spec.suffix}`;
}

/** GGUF name of tensor `spec` of layer `l`. */
export function layerTensorName(l: number, spec: TensorSpec | string, suffix: "weight" | "bias" = "weight") {
  return typeof spec === "string" ? `blk.${l}.${spec}.${suffix}` : `blk.${l}.${spec.role}.${spec.suffix}`;
}

/** The Hugging Face name of `spec` in layer `l` (undefined when it has none). */
export function hfTensorName(spec: TensorSpec, l?: number): string | undefined {
  return spec.hf?.replace("{l}", String(l ?? ""));
}

const q = (c: LlamaConfig) => c.heads * c.headDim;
const kv = (c: LlamaConfig) => c.kvHeads * c.headDim;

export const matrix = (
  role: string,
  dims: ShapeOf,
  hf: string,
  extra: Partial<TensorSpec> = {},
): TensorSpec => ({
  role,
  suffix: "weight",
  kind: "matrix",
  dims,
  hf,
  ...extra,
});
/** A bias of `role`'s product, `width` wide. */
export const bias = (role: string, width: ShapeOf, hf: string): TensorSpec => ({
  role,
  suffix: "bias",
  kind: "bias",
  dims: width,
  hf,
});
export const norm = (role: string, hf: string): TensorSpec => ({
  role,
  suffix: "weight",
  kind: "norm",
  dims: (c) => [c.dim],
  hf,
});

/** Llama's model-wide tensors (also Mistral's). */
export const LLAMA_MODEL_TENSORS: readonly TensorSpec[] = [
  matrix("token_embd", (c) => [c.dim, c.vocab], "model.embed_tokens.weight", { beforeLayers: true }),
  norm("output_norm", "model.norm.weight"),
  matrix("output", (c) => [c.dim, c.vocab], "lm_head.weight", { optional: true }),
  {
    role: "rope_freqs",
    suffix: "weight",
    kind: "factors",
    dims: (c) => [c.rope.dim / 2],
    optional: true,
    beforeLayers: true,
  },
];

/** Llama's layer tensors, in file order (also Mistral's). */
export const LLAMA_LAYER_TENSORS: readonly TensorSpec[] = [
  norm("attn_norm", "model.layers.{l}.input_layernorm.weight"),
  matrix("attn_q", (c) => [c.dim, q(c)], "model.layers.{l}.self_attn.q_proj.weight", { hfPermute: "heads" }),
  matrix("attn_k", (c) => [c.dim, kv(c)], "model.layers.{l}.self_attn.k_proj.weight", {
    hfPermute: "kvHeads",
  }),
  matrix("attn_v", (c) => [c.dim, kv(c)], "model.layers.{l}.self_attn.v_proj.weight"),
  matrix("attn_output", (c) => [q(c), c.dim], "model.layers.{l}.self_attn.o_proj.weight"),
  norm("ffn_norm", "model.layers.{l}.post_attention_layernorm.weight"),
  matrix("ffn_gate", (c) => [c.dim, c.ffn], "model.layers.{l}.mlp.gate_proj.weight"),
  matrix("ffn_up", (c) => [c.dim, c.ffn], "model.layers.{l}.mlp.up_proj.weight"),
  matrix("ffn_down", (c) => [c.ffn, c.dim], "model.layers.{l}.mlp.down_proj.weight"),
];

/** Fused q, k and v rows, in that order: attn_qkv as the parts attn_q, attn_k, attn_v. */
export const QKV_PARTS: readonly TensorPart[] = [
  { role: "attn_q", rows: q },
  { role: "attn_k", rows: kv },
  { role: "attn_v", rows: kv },
];

/** attn_qkv's dims: every q, k and v row. */
export const qkvDims: ShapeOf = (c) => [c.dim, q(c) + 2 * kv(c)];

/** A tensor of a whole model, with its GGUF name and dims for one configuration. */
export interface PlannedTensor {
  name: string;
  dims: number[];
  kind: TensorKind;
  /** The layer it belongs to; undefined for model-wide tensors. */
  layer?: number;
  spec: TensorSpec;
}
