// Phi-3: Llama's block with the q, k and v products fused into attn_qkv and the gate and up
// products fused into ffn_up (gate rows first), NeoX rotary pairs, an untied head
// (llama.cpp src/models/phi3.cpp). The model splits the fused tensors at load.
import type { Architecture } from "./index.js";
import { llama } from "./llama.js";
import { LLAMA_MODEL_TENSORS, matrix, norm, QKV_PARTS, qkvDims } from "./tensors.js";

const h = (name: string) => `model.layers.{l}.${name}`;

export const phi3: Architecture = {
  name: "phi3",
  ropeNeox: true,
  strictTensors: true,
  modelTensors: LLAMA_MODEL_TENSORS.filter((t) => t.role !== "rope_freqs"),
  layerTensors: [
    norm("attn_norm", h("input_layernorm.weight")),
    matrix("attn_qkv", qkvDims, h("self_attn.qkv_proj.weight"), { parts: QKV_PARTS }),
    matrix("attn_output", (c) => [c.heads * c.headDim, c.dim], h("self_attn.o_proj.weight")),
    norm("ffn_norm", h("post_attention_layernorm.weight")),
    matrix("ffn_up", (c) => [c.dim, 2 * c.ffn], h("mlp.gate_up_proj.weight"), {
      parts: [
        { role: "ffn_gate", rows: (c) => c.ffn },
        { role: "ffn_up", rows: (c) => c.ffn },
      ],
    }),
    matrix("ffn_down", (c) => [c.ffn, c.dim], h("mlp.down_proj.weight")),
  ],
  // The same computation as Llama's once the fused tensors are split.
  layer: llama.layer,
};
