/**
 * PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) → llama.cpp's GGUF
 * LoRA, as convert_lora_to_gguf.py writes it. The base GGUF gives the head counts (q/k rows come
 * back from rotate-half order) and every adapted matrix's shape, which the adapter must match.
 */
import { join } from "node:path";
import { UserError } from "../errors.js";
import { readGgufHeader } from "../formats/gguf.js";
import { SafetensorsFile } from "../formats/safetensors.js";
import { llamaConfigFromMetadata, metadataGetter } from "../model/config.js";
import { type LoraAdapter, readPeftAdapter, writeLoraGguf } from "../model/lora.js";
import { isObject, readJsonFile } from "./hf-dir.js";

export interface PeftToGgufSummary {
  input: string;
  output: string;
  base: string;
  rank: number;
  alpha: number;
  tensors: number;
}

const LORA_TENSOR = /^base_model\.model\.model\.layers\.\d+\.(self_attn|mlp)\.\w+\.lora_[AB]\.weight$/;

/**
 * Reads the PEFT adapter in `dir` for the model `base` (a GGUF file): every tensor must be a LoRA
 * pair of a layer matrix the base has, of its shape; q/k rows come back to GGUF's order.
 */
export function readPeftAdapterFor(dir: string, base: string): LoraAdapter {
  const configPath = join(dir, "adapter_config.json");
  const config = readJsonFile(dir, "adapter_config.json", true);
  if (!isObject(config)) throw new UserError(`${configPath}: not a JSON object`);
  for (const key of ["use_dora", "use_rslora"]) {
    if (config[key] === true) throw new UserError(`${configPath}: ${key} adapters are not supported yet`);
  }
  for (const key of ["rank_pattern", "alpha_pattern"]) {
    const v = config[key];
    if (isObject(v) && Object.keys(v).length > 0) {
      throw new UserError(
        `${configPath}: per-module ${key} is not supported yet (one rank and alpha for all)`,
      );
    }
  }
  if (config.modules_to_save != null) {
    throw new UserError(`${configPath}: modules_to_save (fully trained modules) cannot go into a GGUF LoRA`);
  }
  const r = config.r;
  const alpha = config.lora_alpha;
  if (typeof r !== "number" || !Number.isInteger(r) || r < 1)
    throw new UserError(`${configPath}: r must be a positive integer`);
  if (alpha !== undefined && (typeof alpha !== "number" || !Number.isFinite(alpha))) {
    throw new UserError(`${configPath}: lora_alpha must be a number`);
  }

  // Every tensor of the adapter must be one convert knows: nothing is dropped in silence.
  const weightsPath = join(dir, "adapter_model.safetensors");
  const st = SafetensorsFile.open(weightsPath);
  try {
    for (const t of st.tensors) {
      if (!LORA_TENSOR.test(t.name))
        throw new UserError(`${weightsPath}: tensor ${t.name} is not supported yet`);
      const want = t.name.endsWith("lora_A.weight") ? 0 : 1;
      if (t.shape.length !== 2 || t.shape[want === 0 ? 0 : 1] !== r) {
        throw new UserError(
          `${weightsPath}: tensor ${t.name} has shape [${t.shape.join(", ")}], not rank ${r}`,
        );
      }
    }
  } finally {
    st.close();
  }

  const h = readGgufHeader(base);
  const embd = h.tensor("token_embd.weight");
  const c = llamaConfigFromMetadata(metadataGetter(h), base, embd?.dims[1] ?? 0);
  const adapter = readPeftAdapter(dir, c.heads, c.kvHeads);
  if (adapter.tensors.length === 0) throw new UserError(`${weightsPath}: no LoRA tensors`);
  for (const t of adapter.tensors) {
    const target = h.tensor(t.base);
    if (!target) throw new UserError(`${dir}: adapts ${t.base}, which ${base} does not have`);
    if (target.dims[0] !== t.inFeatures || target.dims[1] !== t.outFeatures) {
      throw new UserError(
        `${dir}: the adapter of ${t.base} is ${t.outFeatures}x${t.inFeatures}, the base matrix ${target.dims[1]}x${target.dims[0]}`,
      );
    }
  }
  // PEFT's default alpha is 8.
  return { ...adapter, architecture: c.architecture, alpha: typeof alpha === "number" ? alpha : 8 };
}

/** Converts the PEFT adapter in `dir`, made for the model `base` (a GGUF file), into `out`. */
export function convertPeftToGguf(dir: string, base: string, out: string): PeftToGgufSummary {
  const adapter = readPeftAdapterFor(dir, base);
  writeLoraGguf(out, adapter);
  return {
    input: dir,
    output: out,
    base,
    rank: adapter.tensors[0]!.rank,
    alpha: adapter.alpha,
    tensors: adapter.tensors.length,
  };
}
