// Llama (and Mistral, the same graph): pre-norm blocks with RMSNorm, rotary attention with
// grouped-query heads, a SwiGLU feed-forward, sequential residuals (llama.cpp src/models/llama.cpp).
import type { LayerGraph } from "./graph.js";
import type { Architecture } from "./index.js";
import { LLAMA_LAYER_TENSORS, LLAMA_MODEL_TENSORS } from "./tensors.js";

/**
 * Llama's layer with its gated feed-forward's activation: SiLU (SwiGLU: Llama, Qwen2, Phi-3) or
 * GELU (GeGLU: Gemma).
 */
export function gatedLayer(activation: "silu" | "gelu"): (g: LayerGraph) => void {
  return (g) => {
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
    if (activation === "silu") g.siluMul("hb", "hb", "hb2");
    else g.geluMul("hb", "hb", "hb2");
    g.project("hb", [["ffn_down", "x", true]]);
  };
}

export const llama: Architecture = {
  name: "llama",
  modelTensors: LLAMA_MODEL_TENSORS,
  layerTensors: LLAMA_LAYER_TENSORS,
  layer: gatedLayer("silu"),
};

/** Mistral's GGUF files use llama's tensors and graph under their own architecture name. */
export const mistral: Architecture = { ...llama, name: "mistral" };
