// Llama (and Mistral, the same graph): pre-norm blocks with RMSNorm, rotary attention with
// grouped-query heads, a SwiGLU feed-forward, sequential residuals (llama.cpp src/models/llama.cpp).
import type { Architecture } from "./index.js";
import { LLAMA_LAYER_TENSORS, LLAMA_MODEL_TENSORS } from "./tensors.js";

export const llama: Architecture = {
  name: "llama",
  modelTensors: LLAMA_MODEL_TENSORS,
  layerTensors: LLAMA_LAYER_TENSORS,
  layer(g) {
    g.rmsNorm("attn_norm", "xb", "x");
    g.project("xb", [
      ["attn_q", "q"],
      ["attn_k", "k"],
      ["attn_v", "v"],
    ]);
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

/** Mistral's GGUF files use llama's tensors and graph under their own architecture name. */
export const mistral: Architecture = { ...llama, name: "mistral" };
