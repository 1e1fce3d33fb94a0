/**
 * LoRA adapters: a low-rank update `ΔW = scale · B·A` per adapted weight matrix, with
 * `scale = alpha / rank` (times a user scale), as PEFT and llama.cpp define it.
 *
 * Files:
 * - llama.cpp's GGUF adapter: `general.type = "adapter"`, `adapter.type = "lora"`,
 *   `adapter.lora.alpha`, and per adapted tensor `X.weight.lora_a` (ggml dims [in, rank], i.e.
 *   A as rank rows of `in` values) and `X.weight.lora_b` (dims [rank, out], B as `out` rows of
 *   `rank` values). No hyper-parameters, no vocabulary; a fine-tune also stores the chat template
 *   it trained with as `tokenizer.chat_template` (llama.cpp ignores keys it does not use).
 * - PEFT's directory: `adapter_config.json` and `adapter_model.safetensors` with tensors named
 *   `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` [rank, in] and `lora_B.weight`
 *   [out, rank]. PEFT works on Hugging Face's Llama, whose q/k rows are ordered for the
 *   rotate-half RoPE, while GGUF (and our training) uses adjacent pairs; the rows of q and k's B
 *   are permuted on the way (A acts on inputs and needs no change). The chat template, if any, is
 *   `chat_template.jinja` beside them, as transformers saves it.
 *
 * `merge` writes the adapter's chat template into the merged model (it is the format the adapter
 * was trained on); without one, the base's stays.
 */

import { mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { UserError } from "../errors.js";
import { GGMLType, ggmlTypeName } from "../formats/ggml-types.js";
import { GgufFile, GgufWriter, readGgufHeader } from "../formats/gguf.js";
import { SafetensorsFile, writeSafetensors } from "../formats/safetensors.js";
import { dequantizeRow, quantizeRow } from "../quant/reference.js";
import { Progress } from "../util/progress.js";
import { LLAMA_LAYER_TENSORS } from "./arch/tensors.js";

/** The GGUF role of each projection a LoRA adapter can target, by short name. */
const LORA_ROLES = {
  q: "attn_q",
  k: "attn_k",
  v: "attn_v",
  o: "attn_output",
  gate: "ffn_gate",
  up: "ffn_up",
  down: "ffn_down",
} as const;

/** PEFT's module path of a layer tensor (self_attn.q_proj), from its Hugging Face name in the table. */
function peftModule(role: string): string {
  const hf = LLAMA_LAYER_TENSORS.find((t) => t.role === role)?.hf;
  const m = hf && /^model\.layers\.\{l\}\.(.+)\.weight$/.exec(hf);
  if (!m) throw new Error(`no Hugging Face module for ${role}`);
  return m[1]!;
}

/** The projections a LoRA adapter can target, by short name: GGUF role and PEFT module. */
export const LORA_TARGETS = Object.fromEntries(
  Object.entries(LORA_ROLES).map(([t, role]) => [t, { gguf: role, peft: peftModule(role) }]),
) as Record<keyof typeof LORA_ROLES, { gguf: string; peft: string }>;
export type LoraTarget = keyof typeof LORA_TARGETS;

/** Parses "q,k,v" (or "all") into target names; a user error names an unknown one. */
export function parseLoraTargets(list: string): LoraTarget[] {
  if (list.trim() === "all") return Object.keys(LORA_TARGETS) as LoraTarget[];
  const out: LoraTarget[] = [];
  for (const raw of list.split(",")) {
    const t = raw.trim();
    if (!(t in LORA_TARGETS)) {
      throw new UserError(
        `--targets: unknown projection "${t}" (choose from ${Object.keys(LORA_TARGETS).join(", ")}, or all)`,
      );
    }
    if (!out.includes(t as LoraTarget)) out.push(t as LoraTarget);
  }
  if (out.length === 0) throw new UserError("--targets: no projection named");
  return out;
}

/** The low-rank pair for one base weight. */
export interface LoraTensor {
  /** GGUF name of the adapted base weight, e.g. "blk.0.attn_q.weight". */
  base: string;
  rank: number;
  inFeatures: number;
  outFeatures: number;
  /** rank × inFeatures, row-major. */
  a: Float32Array;
  /** outFeatures × rank, row-major. */
  b: Float32Array;
}

export interface LoraAdapter {
  /** Base model architecture (general.architecture), "llama". */
  architecture: string;
  /** alpha; the update is scaled by alpha / rank. */
  alpha: number;
  tensors: LoraTensor[];
  /** Jinja source of the chat template the adapter was trained with, if any. */
  chatTemplate?: string;
}

/** The GGUF key of a chat template, in models and in our adapters. */
const CHAT_TEMPLATE_KEY = "tokenizer.chat_template";
/** The file of a PEFT directory that holds the chat template. */
const PEFT_CHAT_TEMPLATE = "chat_template.jinja";
/** Largest chat template file read from a PEFT directory. */
const MAX_TEMPLATE_BYTES = 1 << 20;

/** The factor applied to B·A: alpha / rank times the user's scale (llama.cpp's rule: alpha 0 means no alpha/rank). */
export function loraScale(alpha: number, rank: number, userScale = 1): number {
  return alpha ? (userScale * alpha) / rank : userScale;
}

/** Writes the adapter in llama.cpp's GGUF LoRA format (f32 tensors), through a temp file. */
export function writeLoraGguf(path: string, adapter: LoraAdapter, name = "smallhammer LoRA adapter"): void {
  const w = new GgufWriter();
  w.setString("general.architecture", adapter.architecture);
  w.setString("general.type", "adapter");
  w.setString("general.name", name);
  w.setString("adapter.type", "lora");
  w.setF32("adapter.lora.alpha", adapter.alpha);
  if (adapter.chatTemplate !== undefined) w.setString(CHAT_TEMPLATE_KEY, adapter.chatTemplate);
  for (const t of adapter.tensors) {
    w.addTensor(`${t.base}.lora_a`, [t.inFeatures, t.rank], GGMLType.F32, bytesOf(t.a));
    w.addTensor(`${t.base}.lora_b`, [t.rank, t.outFeatures], GGMLType.F32, bytesOf(t.b));
  }
  w.write(path);
}

/** Reads a GGUF LoRA adapter (f32, f16 or q8_0 tensors), checking what llama.cpp checks. */
export function readLoraGguf(path: string): LoraAdapter {
  const file = GgufFile.open(path);
  try {
    const h = file.header;
    const str = (key: string) => {
      const v = h.get(key)?.value;
      return typeof v === "string" ? v : undefined;
    };
    if (str("general.type") !== "adapter" || str("adapter.type") !== "lora") {
      throw new UserError(
        `${path}: not a LoRA adapter (general.type must be "adapter" and adapter.type "lora")`,
      );
    }
    const alphaValue = h.get("adapter.lora.alpha")?.value;
    const alpha = typeof alphaValue === "number" ? alphaValue : 0;
    const pairs = new Map<string, { a?: (typeof h.tensors)[number]; b?: (typeof h.tensors)[number] }>();
    for (const t of h.tensors) {
      const m = /^(.*)\.lora_([ab])$/.exec(t.name);
      if (!m) {
        if (t.name.endsWith("_norm.weight")) continue;
        throw new UserError(`${path}: tensor ${t.name} is not a lora_a or lora_b tensor`);
      }
      const entry = pairs.get(m[1]) ?? {};
      entry[m[2] as "a" | "b"] = t;
      pairs.set(m[1], entry);
    }
    const tensors: LoraTensor[] = [];
    for (const [base, { a, b }] of pairs) {
      if (!a || !b)
        throw new UserError(`${path}: ${base} has lora_${a ? "a" : "b"} but no lora_${a ? "b" : "a"}`);
      if (a.dims.length !== 2 || b.dims.length !== 2 || a.dims[1] !== b.dims[0]) {
        throw new UserError(
          `${path}: ${base}: lora_a ${a.dims.join("x")} and lora_b ${b.dims.join("x")} do not pair`,
        );
      }
      const [inFeatures, rank] = a.dims;
      const outFeatures = b.dims[1];
      tensors.push({
        base,
        rank,
        inFeatures,
        outFeatures,
        a: decode(file, a, path),
        b: decode(file, b, path),
      });
    }
    const chatTemplate = str(CHAT_TEMPLATE_KEY);
    return {
      architecture: str("general.architecture") ?? "",
      alpha,
      tensors,
      ...(chatTemplate === undefined ? {} : { chatTemplate }),
    };
  } finally {
    file.close();
  }
}

function decode(
  file: GgufFile,
  t: { name: string; dims: readonly number[]; type: GGMLType },
  path: string,
): Float32Array {
  if (
    t.type !== GGMLType.F32 &&
    t.type !== GGMLType.F16 &&
    t.type !== GGMLType.BF16 &&
    t.type !== GGMLType.Q8_0
  ) {
    throw new UserError(
      `${path}: tensor ${t.name} has type ${ggmlTypeName(t.type)}; adapters must be f32, f16, bf16 or q8_0`,
    );
  }
  const bytes = file.readTensor(t.name);
  const cols = t.dims[0];
  const rows = t.dims[1];
  const out = new Float32Array(rows * cols);
  const rowBytes = bytes.length / rows;
  for (let r = 0; r < rows; r++) {
    dequantizeRow(
      t.type,
      bytes.subarray(r * rowBytes, (r + 1) * rowBytes),
      cols,
      out.subarray(r * cols, (r + 1) * cols),
    );
  }
  return out;
}

function bytesOf(x: Float32Array): Uint8Array {
  return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
}

// --- PEFT -----------------------------------------------------------------------------------

/** What a PEFT adapter needs to know about the base besides the tensors. */
export interface PeftOptions {
  /** base_model_name_or_path in adapter_config.json. */
  baseModel: string;
  /** Attention heads and key/value heads of the base, for the q/k row order. */
  heads: number;
  kvHeads: number;
  dropout?: number;
}

function splitBase(base: string): { layer: number; target: LoraTarget } {
  const m = /^blk\.(\d+)\.([a-z_]+)\.weight$/.exec(base);
  const target = m && (Object.keys(LORA_TARGETS) as LoraTarget[]).find((t) => LORA_TARGETS[t].gguf === m[2]);
  if (!m || !target) throw new UserError(`LoRA tensor for ${base} has no PEFT equivalent`);
  return { layer: Number(m[1]), target };
}

/**
 * Moves rows between GGUF's adjacent-pair RoPE order and Hugging Face's rotate-half order:
 * GGUF row h·d + 2j + t is HF row h·d + t·d/2 + j. `toHf` chooses the direction.
 */
export function permuteRopeRows(
  x: Float32Array,
  rows: number,
  cols: number,
  heads: number,
  toHf: boolean,
): Float32Array {
  const d = rows / heads;
  const out = new Float32Array(x.length);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < d / 2; j++) {
      for (let t = 0; t < 2; t++) {
        const gguf = h * d + 2 * j + t;
        const hf = h * d + t * (d / 2) + j;
        const [from, to] = toHf ? [gguf, hf] : [hf, gguf];
        out.set(x.subarray(from * cols, (from + 1) * cols), to * cols);
      }
    }
  }
  return out;
}

/**
 * Writes a PEFT adapter directory (adapter_config.json, adapter_model.safetensors) for a
 * Hugging Face Llama base. The directory is built under a temporary name and renamed into place.
 */
export function writePeftAdapter(dir: string, adapter: LoraAdapter, options: PeftOptions): void {
  if (adapter.tensors.length === 0) throw new UserError("the adapter has no tensors");
  const rank = adapter.tensors[0].rank;
  const targets = new Set<string>();
  const tensors = adapter.tensors.map((t) => {
    const { layer, target } = splitBase(t.base);
    targets.add(LORA_TARGETS[target].peft.split(".")[1]);
    const heads = target === "q" ? options.heads : target === "k" ? options.kvHeads : 0;
    const b = heads ? permuteRopeRows(t.b, t.outFeatures, t.rank, heads, true) : t.b;
    const prefix = `base_model.model.model.layers.${layer}.${LORA_TARGETS[target].peft}`;
    return [
      { name: `${prefix}.lora_A.weight`, shape: [t.rank, t.inFeatures], data: t.a },
      { name: `${prefix}.lora_B.weight`, shape: [t.outFeatures, t.rank], data: b },
    ];
  });
  const config = {
    peft_type: "LORA",
    task_type: "CAUSAL_LM",
    base_model_name_or_path: options.baseModel,
    revision: null,
    inference_mode: true,
    r: rank,
    lora_alpha: adapter.alpha,
    lora_dropout: options.dropout ?? 0,
    target_modules: [...targets].sort(),
    bias: "none",
    fan_in_fan_out: false,
    use_rslora: false,
    use_dora: false,
    modules_to_save: null,
    init_lora_weights: true,
    layers_to_transform: null,
    layers_pattern: null,
    rank_pattern: {},
    alpha_pattern: {},
  };
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    writeFileSync(join(tmp, "adapter_config.json"), `${JSON.stringify(config, null, 2)}\n`);
    writeSafetensors(join(tmp, "adapter_model.safetensors"), tensors.flat());
    if (adapter.chatTemplate !== undefined)
      writeFileSync(join(tmp, PEFT_CHAT_TEMPLATE), adapter.chatTemplate);
    rmSync(dir, { recursive: true, force: true });
    renameSync(tmp, dir);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

/** Reads a PEFT LoRA adapter directory written for a Hugging Face Llama base. */
export function readPeftAdapter(dir: string, heads: number, kvHeads: number): LoraAdapter {
  let config: { peft_type?: string; r?: number; lora_alpha?: number; use_rslora?: boolean };
  try {
    config = JSON.parse(readFileSync(join(dir, "adapter_config.json"), "utf8"));
  } catch (e) {
    throw new UserError(`${dir}: cannot read adapter_config.json (${(e as Error).message})`);
  }
  if (config.peft_type !== "LORA") throw new UserError(`${dir}: adapter_config.json peft_type is not "LORA"`);
  if (config.use_rslora) throw new UserError(`${dir}: rsLoRA adapters are not supported`);
  const file = SafetensorsFile.open(join(dir, "adapter_model.safetensors"));
  try {
    const tensors: LoraTensor[] = [];
    for (const info of file.tensors) {
      const m = /^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_A\.weight$/.exec(
        info.name,
      );
      if (!m) continue;
      const peft = `${m[2]}.${m[3]}`;
      const target = (Object.keys(LORA_TARGETS) as LoraTarget[]).find((t) => LORA_TARGETS[t].peft === peft);
      if (!target) throw new UserError(`${dir}: unsupported LoRA module ${peft}`);
      const bInfo = file.tensor(info.name.replace("lora_A", "lora_B"));
      if (!bInfo) throw new UserError(`${dir}: ${info.name} has no lora_B partner`);
      const [rank, inFeatures] = info.shape;
      const outFeatures = bInfo.shape[0];
      const h = target === "q" ? heads : target === "k" ? kvHeads : 0;
      const b = file.readFloat32(bInfo.name);
      tensors.push({
        base: `blk.${m[1]}.${LORA_TARGETS[target].gguf}.weight`,
        rank,
        inFeatures,
        outFeatures,
        a: file.readFloat32(info.name),
        b: h ? permuteRopeRows(b, outFeatures, rank, h, false) : b,
      });
    }
    const chatTemplate = readPeftChatTemplate(dir);
    return {
      architecture: "llama",
      alpha: config.lora_alpha ?? 8,
      tensors,
      ...(chatTemplate === undefined ? {} : { chatTemplate }),
    };
  } finally {
    file.close();
  }
}

/** chat_template.jinja of a PEFT directory, when it has one. */
function readPeftChatTemplate(dir: string): string | undefined {
  const path = join(dir, PEFT_CHAT_TEMPLATE);
  const size = statSync(path, { throwIfNoEntry: false })?.size;
  if (size === undefined) return undefined;
  if (size > MAX_TEMPLATE_BYTES) {
    throw new UserError(
      `${path}: ${size} bytes; a chat template of at most ${MAX_TEMPLATE_BYTES} bytes is accepted`,
    );
  }
  return readFileSync(path, "utf8");
}

// --- merging --------------------------------------------------------------------------------

/** Adds scale · B·A to a row-major out × in matrix in place. */
export function addLoraDelta(w: Float32Array, t: LoraTensor, scale: number): void {
  const { rank, inFeatures: n } = t;
  for (let o = 0; o < t.outFeatures; o++) {
    const row = o * n;
    for (let r = 0; r < rank; r++) {
      const s = scale * t.b[o * rank + r];
      if (s === 0) continue;
      const a = r * n;
      for (let i = 0; i < n; i++) w[row + i] += s * t.a[a + i];
    }
  }
}

export interface MergeSummary {
  merged: number;
  /** Where the merged model's chat template comes from. */
  chatTemplate: "adapter" | "base" | "none";
  /** Adapted tensors whose base type could not be re-encoded and were written as f32. */
  widened: string[];
}

/**
 * Writes base + adapter as one model GGUF: every adapted weight becomes W + scale·B·A, stored in
 * the base tensor's own type where the project can encode it (f32, f16, bf16, q8_0, q4_0, q4_1,
 * q5_0, q5_1) and as f32 otherwise. Everything else is copied byte for byte, the metadata (every
 * tokenizer key included) too, except that the adapter's chat template replaces the base's.
 */
export function mergeLora(
  basePath: string,
  adapter: LoraAdapter,
  outPath: string,
  options: { scale?: number; progress?: boolean } = {},
): MergeSummary {
  const arch = readGgufHeader(basePath).get("general.architecture")?.value;
  if (adapter.architecture && arch !== adapter.architecture) {
    throw new UserError(
      `adapter is for architecture ${adapter.architecture}, base ${basePath} is ${String(arch)}`,
    );
  }
  const file = GgufFile.open(basePath);
  try {
    const byBase = new Map(adapter.tensors.map((t) => [t.base, t]));
    for (const t of adapter.tensors) {
      const info = file.header.tensor(t.base);
      if (!info)
        throw new UserError(`${basePath}: the adapter changes ${t.base}, which the base does not have`);
      if (info.dims[0] !== t.inFeatures || info.dims[1] !== t.outFeatures) {
        throw new UserError(
          `${basePath}: ${t.base} is ${info.dims.join("x")} but the adapter expects ${t.inFeatures}x${t.outFeatures}`,
        );
      }
    }
    const w = new GgufWriter();
    w.copyMetadataFrom(file.header);
    if (adapter.chatTemplate !== undefined) w.setString(CHAT_TEMPLATE_KEY, adapter.chatTemplate);
    const widened: string[] = [];
    const progress = options.progress
      ? new Progress("merge", file.header.tensors.length, "tensors")
      : undefined;
    for (const info of file.header.tensors) {
      const lora = byBase.get(info.name);
      if (!lora) {
        w.addTensor(info.name, info.dims, info.type, (dst) => file.readTensorInto(info, dst));
        continue;
      }
      const encodable = ENCODABLE.has(info.type);
      if (!encodable) widened.push(info.name);
      const type = encodable ? info.type : GGMLType.F32;
      w.addTensor(info.name, info.dims, type, (dst) => {
        const cols = info.dims[0];
        const rows = info.dims[1];
        const src = file.readTensor(info);
        const inRow = src.length / rows;
        const full = new Float32Array(rows * cols);
        for (let r = 0; r < rows; r++) {
          dequantizeRow(
            info.type,
            src.subarray(r * inRow, (r + 1) * inRow),
            cols,
            full.subarray(r * cols, (r + 1) * cols),
          );
        }
        addLoraDelta(full, lora, loraScale(adapter.alpha, lora.rank, options.scale));
        const outRow = dst.length / rows;
        for (let r = 0; r < rows; r++) {
          quantizeRow(
            type,
            full.subarray(r * cols, (r + 1) * cols),
            dst.subarray(r * outRow, (r + 1) * outRow),
          );
        }
      });
    }
    w.write(outPath, { onTensor: () => progress?.tick() });
    progress?.done();
    const chatTemplate =
      adapter.chatTemplate !== undefined
        ? "adapter"
        : typeof file.header.get(CHAT_TEMPLATE_KEY)?.value === "string"
          ? "base"
          : "none";
    return { merged: adapter.tensors.length, chatTemplate, widened };
  } finally {
    file.close();
  }
}

const ENCODABLE = new Set<GGMLType>([
  GGMLType.F32,
  GGMLType.F16,
  GGMLType.BF16,
  GGMLType.Q8_0,
  GGMLType.Q4_0,
  GGMLType.Q4_1,
  GGMLType.Q5_0,
  GGMLType.Q5_1,
]);
