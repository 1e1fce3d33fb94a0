import { UserError } from "../errors.js";
import { type GgufHeader, GgufValueType } from "../formats/gguf.js";

/** Hyper-parameters of a Llama-family model, read from GGUF metadata. */
export interface LlamaConfig {
  architecture: string;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffn: number;
  vocab: number;
  contextLength: number;
  normEps: number;
  rope: { dim: number; freqBase: number; freqScale: number; neox: boolean };
}

/** Architectures that run as the Llama graph (same tensors, same ops). */
const LLAMA_LIKE = new Set(["llama", "mistral"]);

export type MetadataGetter = (key: string) => unknown;

/** A getter of plain metadata values (arrays as their values) over a GGUF header. */
export function metadataGetter(header: GgufHeader): MetadataGetter {
  return (key) => {
    const kv = header.get(key);
    if (kv === undefined) return undefined;
    return kv.type === GgufValueType.ARRAY ? kv.value.values : kv.value;
  };
}

function num(get: MetadataGetter, key: string, file: string, fallback?: number): number {
  const v = get(key);
  if (v === undefined) {
    if (fallback === undefined) throw new UserError(`${file}: metadata key ${key} is missing`);
    return fallback;
  }
  const n = typeof v === "bigint" ? Number(v) : v;
  if (typeof n !== "number" || !Number.isFinite(n))
    throw new UserError(`${file}: metadata key ${key} is not a number`);
  return n;
}

/** Reads and validates the model shape; `vocab` comes from the embedding table. */
export function llamaConfigFromMetadata(get: MetadataGetter, file: string, vocab: number): LlamaConfig {
  const architecture = get("general.architecture");
  if (typeof architecture !== "string") throw new UserError(`${file}: general.architecture is missing`);
  if (!LLAMA_LIKE.has(architecture)) {
    throw new UserError(
      `${file}: architecture "${architecture}" is not supported (supported: llama, mistral)`,
    );
  }
  const a = architecture;
  const dim = num(get, `${a}.embedding_length`, file);
  const layers = num(get, `${a}.block_count`, file);
  const heads = num(get, `${a}.attention.head_count`, file);
  const kvHeads = num(get, `${a}.attention.head_count_kv`, file, heads);
  const ffn = num(get, `${a}.feed_forward_length`, file);
  const positive = { dim, layers, heads, kvHeads, ffn };
  for (const [k, v] of Object.entries(positive)) {
    if (!Number.isInteger(v) || v <= 0)
      throw new UserError(`${file}: ${k} must be a positive integer, got ${v}`);
  }
  if (dim % heads !== 0)
    throw new UserError(`${file}: embedding length ${dim} is not divisible by ${heads} heads`);
  if (heads % kvHeads !== 0)
    throw new UserError(`${file}: ${heads} heads are not divisible by ${kvHeads} KV heads`);
  const headDim = num(get, `${a}.attention.key_length`, file, dim / heads);
  if (headDim % 2 !== 0) throw new UserError(`${file}: head dimension ${headDim} must be even`);
  const ropeDim = num(get, `${a}.rope.dimension_count`, file, headDim);
  if (ropeDim > headDim || ropeDim % 2 !== 0)
    throw new UserError(`${file}: rope dimension ${ropeDim} is invalid`);
  let freqScale = 1;
  const scalingType = get(`${a}.rope.scaling.type`);
  const factor = get(`${a}.rope.scaling.factor`) ?? get(`${a}.rope.scale_linear`);
  if (scalingType === "linear" || (scalingType === undefined && factor !== undefined)) {
    const f = Number(factor ?? 1);
    if (!(f > 0)) throw new UserError(`${file}: rope scaling factor ${factor} is invalid`);
    freqScale = 1 / f;
  } else if (scalingType !== undefined && scalingType !== "none") {
    throw new UserError(
      `${file}: rope scaling "${String(scalingType)}" is not supported (supported: none, linear)`,
    );
  }
  return {
    architecture,
    dim,
    layers,
    heads,
    kvHeads,
    headDim,
    ffn,
    vocab,
    contextLength: num(get, `${a}.context_length`, file, 2048),
    normEps: num(get, `${a}.attention.layer_norm_rms_epsilon`, file, 1e-5),
    rope: { dim: ropeDim, freqBase: num(get, `${a}.rope.freq_base`, file, 10000), freqScale, neox: false },
  };
}

/** Parameter count of the shape (embedding, layers, norms and the output head). */
export function parameterCount(c: LlamaConfig, tiedOutput: boolean): number {
  const q = c.heads * c.headDim;
  const kv = c.kvHeads * c.headDim;
  const layer = c.dim * (q + 2 * kv) + q * c.dim + 3 * c.dim * c.ffn + 2 * c.dim;
  return c.vocab * c.dim * (tiedOutput ? 1 : 2) + c.layers * layer + c.dim;
}
