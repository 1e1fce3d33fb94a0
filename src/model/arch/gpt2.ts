// GPT-2: learned position embeddings, LayerNorm with biases, a fused q/k/v product with bias,
// biases on every product, a GELU MLP without gate, sequential residuals, a LayerNorm before the
// head (llama.cpp src/models/gpt2.cpp). Hugging Face keeps its matrices as Conv1D, [in, out].
import type { Architecture } from "./index.js";
import { bias, matrix, norm, QKV_PARTS, qkvDims, type TensorSpec } from "./tensors.js";

const h = (name: string) => `transformer.h.{l}.${name}`;

/** A LayerNorm's weight and bias. */
export const layerNormPair = (role: string, hf: string, optionalBias = false): TensorSpec[] => [
  norm(role, `${hf}.weight`),
  { ...bias(role, (c) => [c.dim], `${hf}.bias`), ...(optionalBias ? { optional: true } : {}) },
];

export const gpt2: Architecture = {
  name: "gpt2",
  norm: "layer",
  positions: "learned",
  gelu: true,
  strictTensors: true,
  modelTensors: [
    matrix("token_embd", (c) => [c.dim, c.vocab], "transformer.wte.weight", { beforeLayers: true }),
    {
      role: "position_embd",
      suffix: "weight",
      kind: "table",
      dims: (c) => [c.dim, c.contextLength],
      hf: "transformer.wpe.weight",
      beforeLayers: true,
    },
    ...layerNormPair("output_norm", "transformer.ln_f"),
    matrix("output", (c) => [c.dim, c.vocab], "lm_head.weight", { optional: true }),
  ],
  layerTensors: [
    ...layerNormPair("attn_norm", h("ln_1")),
    matrix("attn_qkv", qkvDims, h("attn.c_attn.weight"), { parts: QKV_PARTS, hfTransposed: true }),
    { ...bias("attn_qkv", (c) => [qkvDims(c)[1]!], h("attn.c_attn.bias")), parts: QKV_PARTS },
    matrix("attn_output", (c) => [c.dim, c.dim], h("attn.c_proj.weight"), { hfTransposed: true }),
    bias("attn_output", (c) => [c.dim], h("attn.c_proj.bias")),
    ...layerNormPair("ffn_norm", h("ln_2")),
    matrix("ffn_up", (c) => [c.dim, c.ffn], h("mlp.c_fc.weight"), { hfTransposed: true }),
    bias("ffn_up", (c) => [c.ffn], h("mlp.c_fc.bias")),
    matrix("ffn_down", (c) => [c.ffn, c.dim], h("mlp.c_proj.weight"), { hfTransposed: true }),
    bias("ffn_down", (c) => [c.dim], h("mlp.c_proj.bias")),
  ],
  layer(g) {
    g.layerNorm("attn_norm", "xb", "x");
    g.project("xb", [
      ["attn_q", "q"],
      ["attn_k", "k"],
      ["attn_v", "v"],
    ]);
    for (const a of ["q", "k", "v"] as const) {
      g.addBias(`attn_${a}`, a);
      // MPT's optional clamp (after the bias, as llama.cpp's build_qkv clamps); GPT-2 has none
      if (g.config.clampKqv) g.clamp(a, g.config.clampKqv);
    }
    g.attention();
    // (the product and its bias first, then the residual, in llama.cpp's order of roundings)
    g.project("att", [["attn_output", "xb"]]);
    g.addBias("attn_output", "xb");
    g.add("x", "xb");
    g.layerNorm("ffn_norm", "xb", "x");
    g.project("xb", [["ffn_up", "hb"]]);
    g.addBias("ffn_up", "hb");
    g.gelu("hb", "hb");
    g.project("hb", [["ffn_down", "xb"]]);
    g.addBias("ffn_down", "xb");
    g.add("x", "xb");
  },
};
