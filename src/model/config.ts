import { UserError } from "../errors.js";
import { quoteText } from "../formats/escape.js";
import { type GgufHeader, GgufValueType } from "../formats/gguf.js";
import { ARCHITECTURES, normEpsKey, tensorPlan } from "./arch/index.js";

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
  rope: RopeConfig;
  /** ALiBi's maximum bias (MPT's attention.max_alibi_bias); absent or 0: no ALiBi. */
  maxAlibiBias?: number;
  /** Clamp of q, k and v (MPT's attention.clamp_kqv); absent or 0: none. */
  clampKqv?: number;
}

/** Rotary embeddings: which dimensions turn, how fast, and the context scaling applied to them. */
export interface RopeConfig {
  dim: number;
  freqBase: number;
  /** 1 / rope.scaling.factor: positions are compressed by this much (linear and YaRN scaling). */
  freqScale: number;
  neox: boolean;
  /**
   * YaRN scaling (rope.scaling.type "yarn"): the context the model was trained at before its
   * extension (rope.scaling.original_context_length; context_length when absent). See yarn.ts.
   */
  yarnOriginalContext?: number;
  /** rope.scaling.attn_factor: a scale of cos and sin, hence of q and k (1 when absent). */
  attnFactor?: number;
}

/**
 * The largest hyper-parameters a model file may declare. They sit far above every released
 * Llama-family model (Llama 3.1 405B: embedding 16384, 126 blocks, 128 heads, feed-forward
 * 53248; Llama 4 Scout: a 10M-token context) and low enough that every size computed from them
 * stays an exact integer. README lists them.
 */
export const LLAMA_LIMITS = {
  contextLength: 1 << 24,
  embeddingLength: 1 << 17,
  blockCount: 4096,
  headCount: 4096,
  headDim: 1 << 14,
  feedForwardLength: 1 << 20,
  vocab: 1 << 24,
} as const;

/**
 * A hyper-parameter the file has but no model can run with: zero, negative, fractional, NaN,
 * infinite or absurdly large, or inconsistent with another (head counts, vocabulary sizes).
 * The message names the key and its value. A missing key or an unsupported architecture is a
 * plain UserError instead: such a file (a vocabulary, an adapter) is not a model, not a broken one.
 */
export class InvalidModelConfigError extends UserError {
  override name = "InvalidModelConfigError";
}

export type MetadataGetter = (key: string) => unknown;

/** A getter of plain metadata values (arrays as their values) over a GGUF header. */
export function metadataGetter(header: GgufHeader): MetadataGetter {
  return (key) => {
    const kv = header.get(key);
    if (kv === undefined) return undefined;
    return kv.type === GgufValueType.ARRAY ? kv.value.values : kv.value;
  };
}

/** A metadata value as a message shows it: numbers exactly, text quoted and escaped. */
function shown(v: unknown): string {
  if (typeof v === "string") return quoteText(v, 40);
  if (typeof v === "number" || typeof v === "bigint" || typeof v === "boolean") return String(v);
  if (v !== null && typeof v === "object" && "length" in v)
    return `an array of ${(v as ArrayLike<unknown>).length}`;
  return String(v);
}

/** Reads numeric hyper-parameters from one file's metadata, failing with one line per problem. */
class HyperParameters {
  constructor(
    private readonly get: MetadataGetter,
    private readonly file: string,
  ) {}

  invalid(key: string, value: unknown, rule: string): never {
    throw new InvalidModelConfigError(`${this.file}: metadata ${key} = ${shown(value)} is invalid: ${rule}`);
  }

  /** The raw number (bigints as they are), or undefined when the key is absent. */
  private raw(key: string, required: boolean): number | bigint | undefined {
    const v = this.get(key);
    if (v === undefined) {
      if (required) throw new UserError(`${this.file}: metadata key ${key} is missing`);
      return undefined;
    }
    if (typeof v !== "number" && typeof v !== "bigint") this.invalid(key, v, "must be a number");
    return v;
  }

  /** An integer from `min` to `max`; `fallback` when the key is absent (required without one). */
  integer(key: string, min: number, max: number, fallback?: number): number {
    const v = this.raw(key, fallback === undefined);
    if (v === undefined) return fallback!;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) {
      this.invalid(key, v, `must be an integer from ${min} to ${max}`);
    }
    return n;
  }

  /** A finite number of at least 0; `fallback` when absent. */
  nonNegative(key: string, fallback: number): number {
    const v = this.raw(key, false);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) this.invalid(key, v, "must be a finite number of at least 0");
    return n;
  }

  /** A finite number above 0 (and below `below`, when given); `fallback` when absent. */
  positive(key: string, fallback: number, below?: number): number {
    const v = this.raw(key, false);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0 || (below !== undefined && n >= below)) {
      this.invalid(
        key,
        v,
        `must be a finite number above 0${below !== undefined ? ` and below ${below}` : ""}`,
      );
    }
    return n;
  }
}

/**
 * Reads and validates the model shape. `vocab` is the embedding table's row count (0 when unknown:
 * the vocabulary checks are skipped). Throws InvalidModelConfigError for a value no model can run
 * with, naming the key and the value, so every command refuses such a file the same way.
 */
export function llamaConfigFromMetadata(get: MetadataGetter, file: string, vocab: number): LlamaConfig {
  const architecture = get("general.architecture");
  if (typeof architecture !== "string") throw new UserError(`${file}: general.architecture is missing`);
  if (!Object.hasOwn(ARCHITECTURES, architecture)) {
    throw new UserError(
      `${file}: architecture ${quoteText(architecture, 40)} is not supported (supported: ${Object.keys(ARCHITECTURES).join(", ")})`,
    );
  }
  const a = architecture;
  const arch = ARCHITECTURES[architecture]!;
  const rotary = (arch.positions ?? "rope") === "rope";
  const p = new HyperParameters(get, file);
  const L = LLAMA_LIMITS;
  const dimKey = `${a}.embedding_length`;
  const headsKey = `${a}.attention.head_count`;
  const kvHeadsKey = `${a}.attention.head_count_kv`;
  const dim = p.integer(dimKey, 1, L.embeddingLength);
  const layers = p.integer(`${a}.block_count`, 1, L.blockCount);
  const heads = p.integer(headsKey, 1, L.headCount);
  const kvHeads = p.integer(kvHeadsKey, 1, heads, heads);
  if (heads % kvHeads !== 0) p.invalid(kvHeadsKey, kvHeads, `must divide ${headsKey} = ${heads}`);
  const ffn = p.integer(`${a}.feed_forward_length`, 1, L.feedForwardLength);
  if (dim % heads !== 0) p.invalid(headsKey, heads, `must divide ${dimKey} = ${dim}`);
  const headDimKey = `${a}.attention.key_length`;
  const headDim = p.integer(headDimKey, 1, L.headDim, dim / heads);
  // Rotary embeddings turn pairs of dimensions, so every rotated head needs an even width.
  if (rotary && headDim % 2 !== 0) {
    if (get(headDimKey) !== undefined) p.invalid(headDimKey, headDim, "must be even for rotary embeddings");
    p.invalid(
      headsKey,
      heads,
      `gives an odd head dimension ${dim} / ${heads} = ${headDim} (rotary embeddings need an even one)`,
    );
  }
  const valueDimKey = `${a}.attention.value_length`;
  const valueDim = p.integer(valueDimKey, 1, L.headDim, headDim);
  if (valueDim !== headDim) p.invalid(valueDimKey, valueDim, `must equal the key head dimension ${headDim}`);
  const ropeDimKey = `${a}.rope.dimension_count`;
  const ropeDim = rotary ? p.integer(ropeDimKey, 1, headDim, headDim) : headDim;
  if (ropeDim % 2 !== 0) p.invalid(ropeDimKey, ropeDim, "must be even for rotary embeddings");
  const contextLength = p.integer(`${a}.context_length`, 1, L.contextLength, 2048);
  const normEps = p.positive(`${a}.${normEpsKey(arch)}`, 1e-5, 1);
  const maxAlibiBias = arch.positions === "alibi" ? p.nonNegative(`${a}.attention.max_alibi_bias`, 0) : 0;
  // (llama.cpp reads these two for MPT only)
  const clampKqv = arch.name === "mpt" ? p.nonNegative(`${a}.attention.clamp_kqv`, 0) : 0;
  const freqBase = p.positive(`${a}.rope.freq_base`, 10000);

  // As llama.cpp reads them: a factor without a type is linear scaling; "none" ignores the factor.
  const scalingKey = `${a}.rope.scaling.type`;
  const scalingType = get(scalingKey);
  const factorKey =
    get(`${a}.rope.scaling.factor`) !== undefined ? `${a}.rope.scaling.factor` : `${a}.rope.scale_linear`;
  if (
    scalingType !== undefined &&
    scalingType !== "none" &&
    scalingType !== "linear" &&
    scalingType !== "yarn"
  ) {
    throw new UserError(
      `${file}: metadata ${scalingKey} = ${shown(scalingType)} is not supported (supported: none, linear, yarn)`,
    );
  }
  const freqScale = scalingType === "none" ? 1 : 1 / p.positive(factorKey, 1);
  // (llama.cpp reads the rope.scaling.yarn_* keys for other architectures only: beta_fast 32,
  // beta_slow 1 and ext_factor 1 hold for these)
  const yarnOriginalContext =
    scalingType === "yarn"
      ? p.integer(`${a}.rope.scaling.original_context_length`, 1, L.contextLength, contextLength)
      : undefined;
  const attnFactor = p.positive(`${a}.rope.scaling.attn_factor`, 1);

  if (vocab > 0) {
    const vocabKey = `${a}.vocab_size`;
    const declared = p.integer(vocabKey, 1, L.vocab, vocab);
    if (declared !== vocab) p.invalid(vocabKey, declared, `token_embd.weight has ${vocab} rows`);
    const tokens = get("tokenizer.ggml.tokens");
    if (tokens !== null && typeof tokens === "object" && "length" in tokens) {
      const count = (tokens as ArrayLike<unknown>).length;
      if (count !== vocab) {
        throw new InvalidModelConfigError(
          `${file}: metadata tokenizer.ggml.tokens has ${count} tokens but token_embd.weight has ${vocab} rows`,
        );
      }
    }
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
    contextLength,
    normEps,
    rope: {
      dim: ropeDim,
      freqBase,
      freqScale,
      neox: arch.ropeNeox ?? false,
      ...(yarnOriginalContext !== undefined ? { yarnOriginalContext } : {}),
      ...(attnFactor !== 1 ? { attnFactor } : {}),
    },
    ...(maxAlibiBias > 0 ? { maxAlibiBias } : {}),
    ...(clampKqv > 0 ? { clampKqv } : {}),
  };
}

/** Parameter count of the shape (every tensor of its architecture's table, output head included unless tied). */
export function parameterCount(c: LlamaConfig, tiedOutput: boolean): number {
  return tensorPlan(c.architecture, c, (name) => name === "output.weight" && !tiedOutput).reduce(
    (n, t) => n + t.dims.reduce((a, b) => a * b, 1),
    0,
  );
}
