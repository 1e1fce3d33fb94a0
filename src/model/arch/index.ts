// The architectures the engine runs: per architecture its tensors (GGUF and Hugging Face names,
// shapes) and one layer body (./graph.ts). Adding one is a file here and a line in ARCHITECTURES.
import { UserError } from "../../errors.js";
import { quoteText } from "../../formats/escape.js";
import type { LlamaConfig } from "../config.js";
import { gemma } from "./gemma.js";
import { gpt2 } from "./gpt2.js";
import type { LayerGraph } from "./graph.js";
import { llama, mistral } from "./llama.js";
import { mpt } from "./mpt.js";
import { phi3 } from "./phi3.js";
import { qwen2 } from "./qwen2.js";
import { layerTensorName, modelTensorName, type PlannedTensor, type TensorSpec } from "./tensors.js";

export interface Architecture {
  /** general.architecture, also the prefix of its metadata keys. */
  name: string;
  modelTensors: readonly TensorSpec[];
  /** Every layer's tensors, in file order. */
  layerTensors: readonly TensorSpec[];
  /** Rotary pairs in NeoX order, (x[i], x[i + d/2]), rather than GGUF's interleaved pairs. */
  ropeNeox?: boolean;
  /**
   * How positions enter: rotary embeddings (the default), learned rows of position_embd added to
   * the token embeddings (GPT-2), or ALiBi biases on the attention scores (MPT). Only "rope" rotates.
   */
  positions?: "rope" | "learned" | "alibi";
  /** The blocks' and the head's norm: RMSNorm (the default) or LayerNorm (GPT-2, MPT). */
  norm?: "rms" | "layer";
  /** Uses ggml's GELU (gelu, geluMul), whose lookup table the model keeps in each shard. */
  gelu?: boolean;
  /** Multiplies the token embeddings before the first layer (Gemma: √dim). */
  embeddingScale?: (c: LlamaConfig) => number;
  /**
   * Refuses a file holding tensors the table does not name, as llama.cpp refuses any file whose
   * tensors it does not all use: such a file means a variant the layer body does not compute.
   */
  strictTensors?: boolean;
  /** One layer's computation, the same for every way the model runs. */
  layer(g: LayerGraph): void;
}

export const ARCHITECTURES: Readonly<Record<string, Architecture>> = {
  llama,
  mistral,
  qwen2,
  gpt2,
  phi3,
  gemma,
  mpt,
};

/** The metadata key (after "<arch>.") of the norms' epsilon. */
export function normEpsKey(a: Architecture): string {
  return a.norm === "layer" ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon";
}

/** The architecture named `name`; a user error lists the supported ones. */
export function architecture(name: string, file = "model"): Architecture {
  const a = Object.hasOwn(ARCHITECTURES, name) ? ARCHITECTURES[name] : undefined;
  if (!a) {
    throw new UserError(
      `${file}: architecture ${quoteText(name, 40)} is not supported (supported: ${Object.keys(ARCHITECTURES).join(", ")})`,
    );
  }
  return a;
}

/**
 * Every tensor of a model of `arch` and shape `c`, in file order: the model-wide tensors held
 * before the layers, the layers, then the rest. Optional tensors come only when `include` names
 * their GGUF name (e.g. "output.weight" for an untied head, "rope_freqs.weight").
 */
export function tensorPlan(
  arch: Architecture | string,
  c: LlamaConfig,
  include: (name: string) => boolean = () => false,
): PlannedTensor[] {
  const a = typeof arch === "string" ? architecture(arch) : arch;
  const out: PlannedTensor[] = [];
  const model = (before: boolean) => {
    for (const spec of a.modelTensors) {
      const name = modelTensorName(spec);
      if (Boolean(spec.beforeLayers) !== before || (spec.optional && !include(name))) continue;
      out.push({ name, dims: spec.dims(c), kind: spec.kind, spec });
    }
  };
  model(true);
  for (let l = 0; l < c.layers; l++) {
    for (const spec of a.layerTensors) {
      const name = layerTensorName(l, spec);
      if (spec.optional && !include(name)) continue;
      out.push({ name, dims: spec.dims(c), kind: spec.kind, layer: l, spec });
    }
  }
  model(false);
  return out;
}

/** GGUF names of every tensor of `tensorPlan(arch, c, include)`, in file order. */
export function tensorNames(
  arch: Architecture | string,
  c: LlamaConfig,
  include?: (name: string) => boolean,
): string[] {
  return tensorPlan(arch, c, include).map((t) => t.name);
}

/**
 * The layer matrices of `arch` that LoRA can adapt, by GGUF role: those that are one product
 * each (a fused attn_qkv is three, and an update of it is refused).
 */
export function projectionRoles(arch: Architecture | string): string[] {
  const a = typeof arch === "string" ? architecture(arch) : arch;
  return a.layerTensors.filter((t) => t.kind === "matrix" && !t.parts).map((t) => t.role);
}

export { type Activation, activationWidth, type LayerGraph, type Product } from "./graph.js";
export {
  hfTensorName,
  layerTensorName,
  modelTensorName,
  type PlannedTensor,
  type TensorKind,
  type TensorPart,
  type TensorSpec,
} from "./tensors.js";
