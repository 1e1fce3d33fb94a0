// Gemma: Llama's tensors with a GeGLU feed-forward (gelu(gate) · up), token embeddings scaled by
// √dim, NeoX rotary pairs and the head always tied to the embeddings (llama.cpp
// src/models/gemma.cpp). Its RMSNorm multiplies by 1 + w: GGUF files hold 1 + w already.
import type { Architecture } from "./index.js";
import { gatedLayer } from "./llama.js";
import { LLAMA_LAYER_TENSORS, LLAMA_MODEL_TENSORS, type TensorSpec } from "./tensors.js";

const plusOne = (t: TensorSpec): TensorSpec => (t.kind === "norm" ? { ...t, hfPlusOne: true } : t);

export const gemma: Architecture = {
  name: "gemma",
  ropeNeox: true,
  gelu: true,
  strictTensors: true,
  // (as ggml_scale(x, sqrtf(n_embd)): the square root rounded to f32)
  embeddingScale: (c) => Math.fround(Math.sqrt(c.dim)),
  modelTensors: LLAMA_MODEL_TENSORS.filter((t) => t.role !== "rope_freqs" && t.role !== "output").map(
    plusOne,
  ),
  layerTensors: LLAMA_LAYER_TENSORS.map(({ hfPermute: _, ...t }) => plusOne(t)),
  layer: gatedLayer("gelu"),
};
