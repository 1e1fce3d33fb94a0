// MPT: GPT-2's block without position embeddings (ALiBi biases the attention scores instead, and
// nothing is rotated), LayerNorms and products without biases unless the file has them, an
// optional clamp of q, k and v, a GELU MLP, the head tied unless output.weight is present
// (llama.cpp src/models/mpt.cpp).
import { gpt2, layerNormPair } from "./gpt2.js";
import type { Architecture } from "./index.js";
import { bias, matrix, QKV_PARTS, qkvDims } from "./tensors.js";

const b = (name: string) => `transformer.blocks.{l}.${name}`;
const optional = { optional: true } as const;

export const mpt: Architecture = {
  name: "mpt",
  norm: "layer",
  positions: "alibi",
  gelu: true,
  strictTensors: true,
  modelTensors: [
    matrix("token_embd", (c) => [c.dim, c.vocab], "transformer.wte.weight", { beforeLayers: true }),
    ...layerNormPair("output_norm", "transformer.norm_f", true),
    matrix("output", (c) => [c.dim, c.vocab], "lm_head.weight", optional),
  ],
  layerTensors: [
    ...layerNormPair("attn_norm", b("norm_1"), true),
    matrix("attn_qkv", qkvDims, b("attn.Wqkv.weight"), { parts: QKV_PARTS }),
    { ...bias("attn_qkv", (c) => [qkvDims(c)[1]!], b("attn.Wqkv.bias")), parts: QKV_PARTS, ...optional },
    matrix("attn_output", (c) => [c.dim, c.dim], b("attn.out_proj.weight")),
    { ...bias("attn_output", (c) => [c.dim], b("attn.out_proj.bias")), ...optional },
    ...layerNormPair("ffn_norm", b("norm_2"), true),
    matrix("ffn_up", (c) => [c.dim, c.ffn], b("ffn.up_proj.weight")),
    { ...bias("ffn_up", (c) => [c.ffn], b("ffn.up_proj.bias")), ...optional },
    matrix("ffn_down", (c) => [c.ffn, c.dim], b("ffn.down_proj.weight")),
    { ...bias("ffn_down", (c) => [c.dim], b("ffn.down_proj.bias")), ...optional },
  ],
  // GPT-2's layer: its biases are optional here, its clamp applies where the file sets one.
  layer: gpt2.layer,
};
