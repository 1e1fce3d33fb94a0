/**
 * The architectures convert handles, one row each: the Hugging Face model_type and class, the GGUF
 * architecture the engine runs it as (src/model/arch holds the tensor names), and how config.json's
 * hyper-parameters become GGUF metadata and back. Adding an architecture is a row here once
 * src/model/arch has its tensors.
 */
import { UserError } from "../errors.js";
import type { LlamaConfig } from "../model/config.js";
import { LLAMA_LIMITS } from "../model/config.js";
import { HfConfig, isObject, type Json } from "./hf-dir.js";

/** A metadata value with its GGUF type, before it is set on a writer. */
export type HparamValue = { u32: number } | { f32: number } | { str: string };

export interface ConvertArchitecture {
  /** config.json model_type values it reads. */
  modelTypes: readonly string[];
  /** general.architecture written (and read back), also the prefix of its metadata keys. */
  gguf: string;
  /** GGUF hyper-parameter metadata (keys without the architecture prefix) from config.json. */
  hparams(c: HfConfig): Map<string, HparamValue>;
  /** config.json fields for a model of this shape; `has` tells which GGUF tensors the file holds. */
  config(c: LlamaConfig, has: (tensor: string) => boolean): Json;
}

const L = LLAMA_LIMITS;

/** Rope scaling as GGUF holds it: linear, or YaRN from an original context. */
interface RopeScaling {
  type: "linear" | "yarn";
  factor: number;
  /** YaRN only: the context before the extension. */
  originalContext?: number;
}

/** rope_theta and rope_scaling of transformers v4, or rope_parameters of v5. */
function rope(c: HfConfig): { theta: number; scaling?: RopeScaling; llama3?: Json } {
  const params = c.json.rope_parameters as Json | undefined;
  const scaling = (c.json.rope_scaling ?? params) as Json | null | undefined;
  const theta =
    typeof params?.rope_theta === "number" ? (params.rope_theta as number) : c.positive("rope_theta", 10000);
  if (!(theta > 0 && Number.isFinite(theta))) throw new UserError(`${c.path}: rope_theta must be above 0`);
  if (!scaling || typeof scaling !== "object") return { theta };
  const type = scaling.rope_type ?? scaling.type;
  if (type === undefined || type === "default") return { theta };
  if (type === "llama3") return { theta, llama3: scaling };
  if (type !== "linear" && type !== "yarn") {
    throw new UserError(
      `${c.path}: rope scaling ${JSON.stringify(type)} is not supported yet (supported: linear, yarn, llama3)`,
    );
  }
  const factor = scaling.factor;
  if (typeof factor !== "number" || !(factor > 0) || !Number.isFinite(factor)) {
    throw new UserError(`${c.path}: rope scaling factor must be a number above 0`);
  }
  if (type === "linear") return { theta, scaling: { type, factor } };
  // llama.cpp runs YaRN with beta_fast 32, beta_slow 1, the ramp's ends rounded outwards and
  // cos, sin scaled by 1 + 0.1·ln(factor): transformers' defaults. Other values would run as
  // another model than the checkpoint is.
  const defaults: Record<string, unknown> = {
    beta_fast: 32,
    beta_slow: 1,
    truncate: true,
    extrapolation_factor: 1,
  };
  const keys = [
    "beta_fast",
    "beta_slow",
    "truncate",
    "extrapolation_factor",
    "attention_factor",
    "mscale",
    "mscale_all_dim",
  ];
  for (const key of keys) {
    const v = scaling[key];
    if (v !== undefined && v !== null && v !== defaults[key]) {
      throw new UserError(
        `${c.path}: rope_scaling ${key} ${JSON.stringify(v)} is not supported yet (YaRN runs with transformers' default)`,
      );
    }
  }
  const original = scaling.original_max_position_embeddings ?? c.json.max_position_embeddings ?? 2048;
  if (
    typeof original !== "number" ||
    !Number.isInteger(original) ||
    original < 1 ||
    original > L.contextLength
  ) {
    throw new UserError(
      `${c.path}: rope_scaling original_max_position_embeddings must be an integer from 1 to ${L.contextLength}`,
    );
  }
  return { theta, scaling: { type, factor, originalContext: original } };
}

/**
 * Llama 3.1's rope scaling (rope_type "llama3") as the per-pair angle divisors GGUF holds in
 * rope_freqs.weight, computed as llama.cpp's converter does: pairs whose wavelength is under
 * original_max_position_embeddings / high_freq_factor keep their angle, those over
 * original / low_freq_factor are divided by `factor`, and a smooth blend lies between. Undefined
 * for any other scaling.
 */
export function llama3RopeFreqs(c: HfConfig): Float32Array | undefined {
  const r = rope(c);
  if (!r.llama3) return undefined;
  const number = (key: string, fallback: number): number => {
    const v = r.llama3![key] ?? fallback;
    if (typeof v !== "number" || !(v > 0) || !Number.isFinite(v))
      throw new UserError(`${c.path}: rope_scaling ${key} must be a number above 0`);
    return v;
  };
  const factor = number("factor", 8);
  const low = number("low_freq_factor", 1);
  const high = number("high_freq_factor", 4);
  const original = number("original_max_position_embeddings", 8192);
  if (!(high > low))
    throw new UserError(`${c.path}: rope_scaling high_freq_factor must be above low_freq_factor`);
  const dim = c.integer(
    "head_dim",
    L.headDim,
    Math.floor(c.integer("hidden_size", L.embeddingLength) / c.integer("num_attention_heads", L.headCount)),
  );
  const out = new Float32Array(Math.floor(dim / 2));
  for (let i = 0; i < out.length; i++) {
    // (the frequency in f32, as the converter's torch.float32 arange computes it)
    const freq = Math.fround(1 / Math.fround(r.theta ** Math.fround((2 * i) / dim)));
    const wavelength = (2 * Math.PI) / freq;
    if (wavelength < original / high) out[i] = 1;
    else if (wavelength > original / low) out[i] = factor;
    else {
      const smooth = (original / wavelength - low) / (high - low);
      out[i] = 1 / ((1 - smooth) / factor + smooth);
    }
  }
  return out;
}

/** Hyper-parameters of the Llama-shaped families (Llama, Mistral, Qwen 2), in GGUF's keys. */
function llamaHparams(c: HfConfig, arch: string): Map<string, HparamValue> {
  const act = c.json.hidden_act ?? "silu";
  if (act !== "silu")
    throw new UserError(`${c.path}: hidden_act ${JSON.stringify(act)} is not supported (${arch} uses silu)`);
  const dim = c.integer("hidden_size", L.embeddingLength);
  const heads = c.integer("num_attention_heads", L.headCount);
  const headDim = c.integer("head_dim", L.headDim, Math.floor(dim / heads));
  const r = rope(c);
  const m = new Map<string, HparamValue>([
    ["context_length", { u32: c.integer("max_position_embeddings", L.contextLength, 2048) }],
    ["embedding_length", { u32: dim }],
    ["block_count", { u32: c.integer("num_hidden_layers", L.blockCount) }],
    ["feed_forward_length", { u32: c.integer("intermediate_size", L.feedForwardLength) }],
    ["rope.dimension_count", { u32: headDim }],
    ["attention.head_count", { u32: heads }],
    ["attention.head_count_kv", { u32: c.integer("num_key_value_heads", heads, heads) }],
    ["attention.layer_norm_rms_epsilon", { f32: c.positive("rms_norm_eps", 1e-6) }],
    ["rope.freq_base", { f32: r.theta }],
    ["vocab_size", { u32: c.integer("vocab_size", L.vocab) }],
  ]);
  if (c.has("head_dim") && headDim * heads !== dim) {
    m.set("attention.key_length", { u32: headDim });
    m.set("attention.value_length", { u32: headDim });
  }
  if (r.scaling) {
    m.set("rope.scaling.type", { str: r.scaling.type });
    m.set("rope.scaling.factor", { f32: r.scaling.factor });
    if (r.scaling.originalContext !== undefined)
      m.set("rope.scaling.original_context_length", { u32: r.scaling.originalContext });
  }
  return m;
}

/** config.json's rope_scaling for the model's scaling, null when it has none. */
function ropeScalingJson(c: LlamaConfig): Json | null {
  const factor = shortestF32(1 / c.rope.freqScale);
  if (c.rope.yarnOriginalContext !== undefined) {
    return {
      type: "yarn",
      rope_type: "yarn",
      factor,
      original_max_position_embeddings: c.rope.yarnOriginalContext,
    };
  }
  return c.rope.freqScale !== 1 ? { type: "linear", rope_type: "linear", factor } : null;
}

/** config.json fields the Llama-shaped families share. */
function llamaConfig(c: LlamaConfig): Json {
  return {
    hidden_size: c.dim,
    intermediate_size: c.ffn,
    num_hidden_layers: c.layers,
    num_attention_heads: c.heads,
    num_key_value_heads: c.kvHeads,
    head_dim: c.headDim,
    hidden_act: "silu",
    max_position_embeddings: c.contextLength,
    rms_norm_eps: shortestF32(c.normEps),
    rope_theta: shortestF32(c.rope.freqBase),
    rope_scaling: ropeScalingJson(c),
    vocab_size: c.vocab,
    attention_bias: false,
    attention_dropout: 0,
    mlp_bias: false,
    initializer_range: 0.02,
    pretraining_tp: 1,
    use_cache: true,
  };
}

const llamaFamily: ConvertArchitecture = {
  modelTypes: ["llama", "mistral"],
  gguf: "llama",
  hparams(c) {
    for (const key of ["attention_bias", "mlp_bias"]) {
      if (c.bool(key)) throw new UserError(`${c.path}: ${key} true is not supported yet`);
    }
    const sliding = c.json.sliding_window;
    const m = llamaHparams(c, "llama");
    if (typeof sliding === "number" && sliding < (m.get("context_length") as { u32: number }).u32) {
      throw new UserError(`${c.path}: sliding_window ${sliding} attention is not supported yet`);
    }
    return m;
  },
  config: (c) => ({ architectures: ["LlamaForCausalLM"], model_type: "llama", ...llamaConfig(c) }),
};

/** Qwen 2 / 2.5: Llama's shape with q/k/v biases (always present), NeoX rotary order (no q/k permutation). */
const qwen2: ConvertArchitecture = {
  modelTypes: ["qwen2"],
  gguf: "qwen2",
  hparams(c) {
    if (c.bool("use_sliding_window"))
      throw new UserError(`${c.path}: use_sliding_window true is not supported yet`);
    return llamaHparams(c, "qwen2");
  },
  config(c) {
    const { attention_bias: _a, mlp_bias: _m, pretraining_tp: _p, ...rest } = llamaConfig(c);
    return {
      architectures: ["Qwen2ForCausalLM"],
      model_type: "qwen2",
      ...rest,
      use_sliding_window: false,
      sliding_window: null,
      max_window_layers: c.layers,
    };
  },
};

/** Refuses config.json values of `key` other than those listed, naming the key. */
function only(c: HfConfig, key: string, allowed: readonly unknown[], fallback: unknown, what: string): void {
  const v = c.json[key] ?? fallback;
  if (!allowed.includes(v)) {
    throw new UserError(`${c.path}: ${key} ${JSON.stringify(v)} is not supported (${what})`);
  }
}

/** GPT-2: Conv1D matrices, learned positions, LayerNorm, GELU (tanh approximation). */
const gpt2: ConvertArchitecture = {
  modelTypes: ["gpt2"],
  gguf: "gpt2",
  hparams(c) {
    only(
      c,
      "activation_function",
      ["gelu_new", "gelu_pytorch_tanh"],
      "gelu_new",
      "llama.cpp's GPT-2 uses gelu_new",
    );
    for (const key of ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"]) {
      if (c.bool(key)) throw new UserError(`${c.path}: ${key} true is not supported`);
    }
    if (c.json.scale_attn_weights === false)
      throw new UserError(`${c.path}: scale_attn_weights false is not supported`);
    const dim = c.integer("n_embd", L.embeddingLength);
    return new Map<string, HparamValue>([
      [
        "context_length",
        { u32: c.integer("n_positions", L.contextLength, c.integer("n_ctx", L.contextLength, 1024)) },
      ],
      ["embedding_length", { u32: dim }],
      ["block_count", { u32: c.integer("n_layer", L.blockCount) }],
      ["feed_forward_length", { u32: c.integer("n_inner", L.feedForwardLength, 4 * dim) }],
      ["attention.head_count", { u32: c.integer("n_head", L.headCount) }],
      ["attention.layer_norm_epsilon", { f32: c.positive("layer_norm_epsilon", 1e-5) }],
      ["vocab_size", { u32: c.integer("vocab_size", L.vocab) }],
    ]);
  },
  config: (c) => ({
    architectures: ["GPT2LMHeadModel"],
    model_type: "gpt2",
    n_embd: c.dim,
    n_layer: c.layers,
    n_head: c.heads,
    n_inner: c.ffn,
    n_positions: c.contextLength,
    n_ctx: c.contextLength,
    activation_function: "gelu_new",
    layer_norm_epsilon: shortestF32(c.normEps),
    vocab_size: c.vocab,
    attn_pdrop: 0,
    embd_pdrop: 0,
    resid_pdrop: 0,
    initializer_range: 0.02,
    scale_attn_weights: true,
    use_cache: true,
  }),
};

/** Phi-3: Llama's hyper-parameters, fused qkv_proj and gate_up_proj, NeoX rotary order (no q/k permutation). */
const phi3: ConvertArchitecture = {
  modelTypes: ["phi3"],
  gguf: "phi3",
  hparams(c) {
    // (Phi-3's sliding_window is ignored by llama.cpp as well; its long-context "longrope" is refused by rope())
    if (c.has("partial_rotary_factor") && c.json.partial_rotary_factor !== 1) {
      throw new UserError(
        `${c.path}: partial_rotary_factor ${JSON.stringify(c.json.partial_rotary_factor)} is not supported`,
      );
    }
    return llamaHparams(c, "phi3");
  },
  config(c) {
    const { attention_bias: _a, mlp_bias: _m, pretraining_tp: _p, ...rest } = llamaConfig(c);
    return { architectures: ["Phi3ForCausalLM"], model_type: "phi3", ...rest, sliding_window: null };
  },
};

/** Gemma: Llama's hyper-parameters with a GELU (tanh) GeGLU, head_dim always written, NeoX order. */
const gemma: ConvertArchitecture = {
  modelTypes: ["gemma"],
  gguf: "gemma",
  hparams(c) {
    only(
      c,
      c.has("hidden_activation") ? "hidden_activation" : "hidden_act",
      ["gelu", "gelu_pytorch_tanh"],
      "gelu_pytorch_tanh",
      "llama.cpp's Gemma uses the tanh approximation",
    );
    const m = llamaHparams(new HfConfig({ ...c.json, hidden_act: "silu" }, c.path), "gemma");
    const headDim = (m.get("rope.dimension_count") as { u32: number }).u32;
    m.set("attention.key_length", { u32: headDim });
    m.set("attention.value_length", { u32: headDim });
    return m;
  },
  config(c) {
    const { attention_bias: _a, mlp_bias: _m, pretraining_tp: _p, ...rest } = llamaConfig(c);
    return {
      architectures: ["GemmaForCausalLM"],
      model_type: "gemma",
      ...rest,
      hidden_act: "gelu_pytorch_tanh",
      hidden_activation: "gelu_pytorch_tanh",
    };
  },
};

/** MPT: ALiBi, LayerNorm, fused Wqkv, GELU MLP; biases only when no_bias is false. */
const mpt: ConvertArchitecture = {
  modelTypes: ["mpt"],
  gguf: "mpt",
  hparams(c) {
    const attn = (isObject(c.json.attn_config) ? c.json.attn_config : {}) as Json;
    const a = new HfConfig(attn, `${c.path} attn_config`);
    for (const key of ["qk_ln", "qk_gn"])
      if (a.bool(key)) throw new UserError(`${c.path}: attn_config.${key} true is not supported`);
    const alibi = attn.alibi === undefined ? false : a.bool("alibi");
    if (!alibi && c.json.learned_pos_emb !== false) {
      throw new UserError(
        `${c.path}: learned_pos_emb without attn_config.alibi is not supported (MPT without ALiBi)`,
      );
    }
    const ffn = c.json.ffn_config;
    if (isObject(ffn) && ffn.ffn_type !== undefined && ffn.ffn_type !== "mptmlp") {
      throw new UserError(
        `${c.path}: ffn_config.ffn_type ${JSON.stringify(ffn.ffn_type)} is not supported (mptmlp)`,
      );
    }
    const dim = c.integer("d_model", L.embeddingLength);
    const heads = c.integer("n_heads", L.headCount);
    const ratio = c.positive("expansion_ratio", 4);
    if (!Number.isInteger(ratio * dim))
      throw new UserError(`${c.path}: expansion_ratio ${ratio} gives no whole feed-forward width`);
    const m = new Map<string, HparamValue>([
      ["context_length", { u32: c.integer("max_seq_len", L.contextLength, 2048) }],
      ["embedding_length", { u32: dim }],
      ["block_count", { u32: c.integer("n_layers", L.blockCount) }],
      ["feed_forward_length", { u32: ratio * dim }],
      ["attention.head_count", { u32: heads }],
      ["attention.head_count_kv", { u32: a.integer("kv_n_heads", heads, heads) }],
      ["attention.layer_norm_epsilon", { f32: c.positive("layer_norm_epsilon", 1e-5) }],
      ["attention.max_alibi_bias", { f32: alibi ? a.positive("alibi_bias_max", 8) : 0 }],
      ["vocab_size", { u32: c.integer("vocab_size", L.vocab) }],
    ]);
    if (a.has("clip_qkv")) m.set("attention.clamp_kqv", { f32: a.positive("clip_qkv", 0) });
    return m;
  },
  config: (c, has) => ({
    architectures: ["MptForCausalLM"],
    model_type: "mpt",
    d_model: c.dim,
    n_heads: c.heads,
    n_layers: c.layers,
    expansion_ratio: c.ffn / c.dim,
    max_seq_len: c.contextLength,
    vocab_size: c.vocab,
    layer_norm_epsilon: shortestF32(c.normEps),
    no_bias: !has("blk.0.attn_norm.bias"),
    learned_pos_emb: false,
    norm_type: "low_precision_layernorm",
    attn_config: {
      alibi: (c.maxAlibiBias ?? 0) > 0,
      alibi_bias_max: c.maxAlibiBias ?? 8,
      clip_qkv: c.clampKqv ? shortestF32(c.clampKqv) : null,
      kv_n_heads: c.kvHeads,
      attn_type: "multihead_attention",
      qk_ln: false,
    },
    ffn_config: { ffn_type: "mptmlp" },
    use_cache: true,
  }),
};

export const CONVERT_ARCHITECTURES: readonly ConvertArchitecture[] = [
  llamaFamily,
  qwen2,
  gpt2,
  phi3,
  gemma,
  mpt,
];

/** The row for a config.json's model_type; unsupported ones are named in one line. */
export function convertArchitectureForHf(modelType: unknown, path: string): ConvertArchitecture {
  const row = CONVERT_ARCHITECTURES.find((a) => a.modelTypes.includes(modelType as string));
  if (!row) {
    const known = CONVERT_ARCHITECTURES.flatMap((a) => a.modelTypes).join(", ");
    throw new UserError(
      `${path}: convert: architecture ${JSON.stringify(modelType)} is not supported yet (supported: ${known})`,
    );
  }
  return row;
}

/** The row for a GGUF general.architecture. */
export function convertArchitectureForGguf(arch: string, path: string): ConvertArchitecture {
  const row = CONVERT_ARCHITECTURES.find((a) => a.gguf === arch || a.modelTypes.includes(arch));
  if (!row)
    throw new UserError(`${path}: convert: architecture ${JSON.stringify(arch)} is not supported yet`);
  return row;
}

/** The shortest decimal that reads back as the same f32 (1e-5 rather than 9.999999747378752e-6). */
export function shortestF32(x: number): number {
  for (let p = 1; p <= 9; p++) {
    const v = Number(x.toPrecision(p));
    if (Math.fround(v) === Math.fround(x)) return v;
  }
  return x;
}
