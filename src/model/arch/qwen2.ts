// Qwen2 (and Qwen2.5): Llama's block with biases on the q, k and v products and rotary pairs in
// NeoX order (llama.cpp src/models/qwen2.cpp; its converter keeps Hugging Face's q/k row order).
import type { Architecture } from "./index.js";
import { bias, LLAMA_LAYER_TENSORS, LLAMA_MODEL_TENSORS, type TensorSpec } from "./tensors.js";

const layerTensors: TensorSpec[] = [];
for (const t of LLAMA_LAYER_TENSORS) {
  const { hfPermute: _, ...spec } = t;
  layerTensors.push(spec);
  if (t.role === "attn_q" || t.role === "attn_k" || t.role === "attn_v") {
    layerTensors.push(bias(t.role, (c) => [t.dims(c)[1]!], t.hf!.replace(/\.weight$/, ".bias")));
  }
}

export const qwen2: Architecture = {
  name: "qwen2",
  modelTensors: LLAMA_MODEL_TENSORS.filter((t) => t.role !== "rope_freqs"),
  layerTensors,
  ropeNeox: true,
  layer(g) {
    g.rmsNorm("attn_norm", "xb", "x");
    g.project("xb", [
      ["attn_q", "q"],
      ["attn_k", "k"],
      ["attn_v", "v"],
    ]);
    g.addBias("attn_q", "q");
    g.addBias("attn_k", "k");
    g.addBias("attn_v", "v");
    g.attention();
    g.project("att", [["attn_output", "x", true]]);
    g.rmsNorm("ffn_norm", "xb", "x");
    g.project("xb", [
      ["ffn_gate", "hb"],
      ["ffn_up", "hb2"],
    ]);
    g.siluMul("hb", "hb", "hb2");
    g.project("hb", [["ffn_down", "x", true]]);
  },
};
