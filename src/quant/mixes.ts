/**
 * llama.cpp's file types (`llama-quantize --type` names, `general.file_type` ids) and the
 * per-tensor choice each one makes: src/llama-quant.cpp `llama_tensor_get_type` for the Llama
 * family, rule for rule, so that a file made here has the tensor types llama.cpp gives the same
 * input. The choices depend on the tensor's role, its layer, the model's grouped-query ratio,
 * and on counters that advance in llama.cpp's tensor order (by layer, then by name).
 */
import { UserError } from "../errors.js";
import { GGMLType, ggmlTypeInfo, ggmlTypeName } from "../formats/ggml-types.js";

/** A llama.cpp file type: `--type` name, general.file_type id, and the type most tensors get. */
export interface FileType {
  readonly name: string;
  readonly ftype: number;
  readonly base: GGMLType;
}

// llama.h enum llama_ftype
export const FILE_TYPES: readonly FileType[] = [
  { name: "F32", ftype: 0, base: GGMLType.F32 },
  { name: "F16", ftype: 1, base: GGMLType.F16 },
  { name: "BF16", ftype: 32, base: GGMLType.BF16 },
  { name: "Q8_0", ftype: 7, base: GGMLType.Q8_0 },
  { name: "Q4_0", ftype: 2, base: GGMLType.Q4_0 },
  { name: "Q4_1", ftype: 3, base: GGMLType.Q4_1 },
  { name: "Q5_0", ftype: 8, base: GGMLType.Q5_0 },
  { name: "Q5_1", ftype: 9, base: GGMLType.Q5_1 },
  { name: "Q2_K", ftype: 10, base: GGMLType.Q2_K },
  { name: "Q3_K_S", ftype: 11, base: GGMLType.Q3_K },
  { name: "Q3_K_M", ftype: 12, base: GGMLType.Q3_K },
  { name: "Q3_K_L", ftype: 13, base: GGMLType.Q3_K },
  { name: "Q4_K_S", ftype: 14, base: GGMLType.Q4_K },
  { name: "Q4_K_M", ftype: 15, base: GGMLType.Q4_K },
  { name: "Q5_K_S", ftype: 16, base: GGMLType.Q5_K },
  { name: "Q5_K_M", ftype: 17, base: GGMLType.Q5_K },
  { name: "Q6_K", ftype: 18, base: GGMLType.Q6_K },
];

/** llama-quantize's aliases: the K-quant names without a size mean the _M mix. */
const ALIASES: Record<string, string> = { Q3_K: "Q3_K_M", Q4_K: "Q4_K_M", Q5_K: "Q5_K_M" };

const F = Object.fromEntries(FILE_TYPES.map((t) => [t.name, t.ftype])) as Record<string, number>;

/** Parses a file-type name (case-insensitive, llama-quantize's aliases too); UserError otherwise. */
export function parseFileType(name: string): FileType {
  const upper = name.trim().toUpperCase();
  const t = FILE_TYPES.find((f) => f.name === (ALIASES[upper] ?? upper));
  if (!t) {
    throw new UserError(
      `--type ${name} is not supported; choose one of ${FILE_TYPES.map((f) => f.name).join(", ")}`,
    );
  }
  return t;
}

/** What the choice needs to know about the model and the run. */
export interface MixContext {
  fileType: FileType;
  /** Transformer blocks (`llama.block_count`). */
  layers: number;
  /** Attention heads over key/value heads. */
  gqa: number;
  /** llama.cpp's 70B class (80 layers with grouped-query attention) gives attn_v more bits. */
  is70B: boolean;
  /** Names of every tensor of the file. */
  names: readonly string[];
  outputTensorType?: GGMLType;
  tokenEmbeddingType?: GGMLType;
  /** Keep output.weight as it is (llama-quantize --leave-output-tensor). */
  leaveOutputTensor?: boolean;
  /** Every quantized tensor in the base type, no mix (llama-quantize --pure). */
  pure?: boolean;
  /** An importance matrix is given (changes the Q4_0/Q5_0 ffn_down rule). */
  hasImatrix?: boolean;
}

type Category =
  | "token_embd"
  | "output"
  | "attn_q"
  | "attn_k"
  | "attn_v"
  | "attn_output"
  | "ffn_up"
  | "ffn_gate"
  | "ffn_down"
  | "other";

/** llama-quant.cpp tensor_get_category (attn_qkv and attn_kv_b count as attn_v). */
function categoryOf(name: string): Category {
  if (name === "output.weight") return "output";
  if (name === "token_embd.weight" || name === "per_layer_token_embd.weight") return "token_embd";
  if (name.includes("attn_qkv.weight") || name.includes("attn_kv_b.weight") || name.includes("attn_v.weight"))
    return "attn_v";
  if (name.includes("attn_k.weight")) return "attn_k";
  if (name.includes("attn_q.weight")) return "attn_q";
  if (name.includes("attn_output.weight")) return "attn_output";
  if (name.includes("ffn_up")) return "ffn_up";
  if (name.includes("ffn_gate")) return "ffn_gate";
  if (name.includes("ffn_down")) return "ffn_down";
  return "other";
}

// llama-quant.cpp tensor_allows_quantization: names that stay as they are
const NEVER_QUANTIZED = [
  "_norm.weight",
  "ffn_gate_inp.weight",
  "ffn_gate_tid2eid.weight",
  "altup",
  "laurel",
  "per_layer_model_proj",
  "ssm_conv1d",
  "shortconv.conv.weight",
  "indexer.k_proj.weight",
  "indexer.q_proj.weight",
  "attn_rel_b.weight",
  ".position_embd",
  "sam.pos_embd",
  "sam.neck.",
  "sam.net_",
  ".rel_pos",
  ".patch_embd",
  ".patch_merger",
  "a.rvq.codebook",
  "mm.a.code_embd",
];

/** ggml_n_dims: dimensions up to the last one that is not 1. */
function nDims(dims: readonly number[]): number {
  let n = dims.length;
  while (n > 1 && dims[n - 1] === 1) n--;
  return n;
}

/** Whether llama.cpp quantizes this tensor at all (2-D or more, a weight, not a norm ...). */
export function allowsQuantization(name: string, dims: readonly number[], leaveOutput = false): boolean {
  if (nDims(dims) < 2 || !name.endsWith("weight")) return false;
  if (leaveOutput && name === "output.weight") return false;
  // RWKV's small 2-D weights
  if (/time_mix_(first|w[012]|v[012]|a[012]|g[12]|decay_w[12]|lerp_fused)\.weight/.test(name)) return false;
  return (
    !NEVER_QUANTIZED.some((s) => name.includes(s)) &&
    name !== "position_embd.weight" &&
    name !== "token_types.weight"
  );
}

/** llama-quant.cpp use_more_bits: the first and last eighth of the layers and every third between. */
function useMoreBits(i: number, n: number): boolean {
  const e = Math.trunc(n / 8);
  return i < e || i >= Math.trunc((7 * n) / 8) || (i - e) % 3 === 2;
}

/** The type llama.cpp falls back to when a row is not a whole number of the type's blocks. */
function fallback(cols: number, type: GGMLType): GGMLType {
  const block = ggmlTypeInfo(type)!.blockSize;
  if (cols % block === 0) return type;
  let to: GGMLType;
  switch (type) {
    case GGMLType.Q2_K:
    case GGMLType.Q3_K:
      to = GGMLType.Q4_0;
      break;
    case GGMLType.Q4_K:
      to = GGMLType.Q5_0;
      break;
    case GGMLType.Q5_K:
      to = GGMLType.Q5_1;
      break;
    case GGMLType.Q6_K:
      to = GGMLType.Q8_0;
      break;
    default:
      if (block > 32) throw new UserError(`no fallback type for ${ggmlTypeName(type)} rows of ${cols}`);
      to = type;
  }
  return cols % ggmlTypeInfo(to)!.blockSize === 0 ? to : GGMLType.F16;
}

/** One tensor's target type, with why it differs from the file type's base (for the summary). */
export interface TensorChoice {
  type: GGMLType;
  /** The type's blocks do not fit the rows, so llama.cpp's fallback type was taken. */
  fellBack: boolean;
}

/**
 * Chooses tensor types in llama.cpp's order. Create one per file and call `choose` for its
 * tensors in `llamaTensorOrder`: the attn_v and ffn_down rules count the tensors seen so far.
 */
export class MixChooser {
  private iAttnV = 0;
  private iFfnDown = 0;
  private readonly nAttnV: number;
  private readonly tied: boolean;

  constructor(private readonly c: MixContext) {
    this.nAttnV = c.names.filter((n) => categoryOf(n) === "attn_v").length;
    this.tied = !c.names.includes("output.weight");
  }

  /** The type tensor `name` (of `dims`, now of `current` type) gets in the output file. */
  choose(name: string, dims: readonly number[], current: GGMLType): TensorChoice {
    const c = this.c;
    if (!allowsQuantization(name, dims, c.leaveOutputTensor)) return { type: current, fellBack: false };
    const category = categoryOf(name);
    if (c.tokenEmbeddingType !== undefined && category === "token_embd")
      return { type: c.tokenEmbeddingType, fellBack: false };
    if (c.outputTensorType !== undefined && category === "output")
      return { type: c.outputTensorType, fellBack: false };
    const base = c.fileType.base;
    // float file types: every allowed tensor in that type, no mix
    if (ggmlTypeInfo(base)!.blockSize === 1) return { type: base, fellBack: false };
    const chosen = c.pure ? base : this.mix(category, dims[0]!);
    const type = fallback(dims[0]!, chosen);
    return { type, fellBack: type !== chosen };
  }

  /** llama-quant.cpp llama_tensor_get_type_impl, for the file types and the Llama family. */
  private mix(category: Category, cols: number): GGMLType {
    const c = this.c;
    const ft = c.fileType.ftype;
    let t = c.fileType.base;
    if (category === "output" || (this.tied && category === "token_embd")) {
      // (a tied token_embd is the output matrix too, so it gets the output's type)
      if (c.outputTensorType !== undefined) return c.outputTensorType;
      if (cols % ggmlTypeInfo(t)!.blockSize !== 0) return GGMLType.Q8_0;
      return t !== GGMLType.Q8_0 ? GGMLType.Q6_K : t;
    }
    if (category === "token_embd") return t;
    if (category === "attn_v") {
      if (ft === F.Q2_K) t = c.gqa >= 4 ? GGMLType.Q4_K : GGMLType.Q3_K;
      else if (ft === F.Q3_K_M) t = this.iAttnV < 2 ? GGMLType.Q5_K : GGMLType.Q4_K;
      else if (ft === F.Q3_K_L) t = GGMLType.Q5_K;
      else if ((ft === F.Q4_K_M || ft === F.Q5_K_M) && useMoreBits(this.iAttnV, this.nAttnV))
        t = GGMLType.Q6_K;
      else if (ft === F.Q4_K_S && this.iAttnV < 4) t = GGMLType.Q5_K;
      if (c.is70B && (t === GGMLType.Q3_K || t === GGMLType.Q4_K)) t = GGMLType.Q5_K;
      this.iAttnV++;
      return t;
    }
    if (category === "ffn_down") {
      const i = this.iFfnDown++;
      const n = c.layers;
      if (ft === F.Q2_K) t = GGMLType.Q3_K;
      else if (ft === F.Q3_K_M) t = i < Math.trunc(n / 16) ? GGMLType.Q5_K : GGMLType.Q4_K;
      else if (ft === F.Q3_K_L) t = GGMLType.Q5_K;
      else if (ft === F.Q4_K_M) {
        if (useMoreBits(i, n)) t = GGMLType.Q6_K;
      } else if (ft === F.Q5_K_M && useMoreBits(i, n)) t = GGMLType.Q6_K;
      else if (ft === F.Q4_K_S && i < Math.trunc(n / 8)) t = GGMLType.Q5_K;
      else if ((ft === F.Q4_0 || ft === F.Q5_0) && c.hasImatrix && i < Math.trunc(n / 8)) {
        t = ft === F.Q4_0 ? GGMLType.Q4_1 : GGMLType.Q5_1;
      }
      return t;
    }
    if (category === "attn_output") {
      if (ft === F.Q2_K) t = GGMLType.Q3_K;
      else if (ft === F.Q3_K_M) t = GGMLType.Q4_K;
      else if (ft === F.Q3_K_L) t = GGMLType.Q5_K;
    }
    return t;
  }
}

/**
 * llama.cpp's tensor order (its loader's weights map): tensors outside the blocks first, then
 * block by block, by name (byte order) within each. The output file keeps this order.
 */
export function llamaTensorOrder<T extends { name: string }>(tensors: readonly T[]): T[] {
  const layer = (n: string) => {
    const m = /^blk\.(-?\d+)\./.exec(n);
    return m ? Number(m[1]) : -1;
  };
  return [...tensors].sort((a, b) => {
    const la = layer(a.name);
    const lb = layer(b.name);
    if (la !== lb) return la - lb;
    return Buffer.compare(Buffer.from(a.name), Buffer.from(b.name));
  });
}
