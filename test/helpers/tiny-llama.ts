import { GGMLType } from "../../src/formats/ggml-types.js";
import { GgufWriter } from "../../src/formats/gguf.js";
import { architecture, normEpsKey, tensorPlan } from "../../src/model/arch/index.js";
import type { LlamaConfig } from "../../src/model/config.js";
import { Rng } from "../../src/util/random.js";

export interface TinyLlamaOptions {
  /** Embedding width (default 64). */
  dim?: number;
  /** Transformer blocks (default 2). */
  layers?: number;
  /** Attention heads (default 4); head dim = dim / heads. */
  heads?: number;
  /** Key/value heads (default = heads). */
  kvHeads?: number;
  /** Head width (default dim / heads); another one is stored as attention.key_length and value_length. */
  headDim?: number;
  /** Feed-forward width (default 2 * dim + 32). */
  ffn?: number;
  /** Normal vocabulary pieces after <unk>, <s>, </s> and the 256 byte tokens (SentencePiece style, ▁ = space). */
  pieces?: string[];
  /** PRNG seed for the weights (default 1). */
  seed?: number;
  /** Tensor type of the matrices; only F32 for now. */
  type?: GGMLType;
  contextLength?: number;
  normEps?: number;
  ropeFreqBase?: number;
  /** Omit output.weight so the output projection reuses token_embd (default false). */
  tiedEmbeddings?: boolean;
  /** Standard deviation of the random matrices (default 0.02). */
  weightScale?: number;
  /** Control tokens added after the normal pieces (e.g. "<|im_start|>", "<|im_end|>"). */
  controlTokens?: string[];
  /** tokenizer.chat_template to store. */
  chatTemplate?: string;
  /** More u32 metadata to store (e.g. "llama.pooling_type"). */
  metadataU32?: Record<string, number>;
  /** More f32 metadata to store (e.g. "mpt.attention.max_alibi_bias"). */
  metadataF32?: Record<string, number>;
  /** More string metadata to store (e.g. "llama.rope.scaling.type"). */
  metadataString?: Record<string, string>;
  /** general.architecture, the metadata prefix and the tensors written (default "llama"). */
  architecture?: string;
  /** rope_freqs.weight to store (headDim/2 divisors of the rotary angles, as Llama 3.1 files have). */
  ropeFreqs?: Float32Array;
}

export interface TinyLlamaTensor {
  dims: number[];
  data: Float32Array;
}

export interface TinyLlama {
  path: string;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffn: number;
  contextLength: number;
  normEps: number;
  ropeFreqBase: number;
  tokens: string[];
  scores: Float32Array;
  tokenTypes: Int32Array;
  bos: number;
  eos: number;
  unk: number;
  /** Every tensor written, by GGUF name, in file order. */
  tensors: Map<string, TinyLlamaTensor>;
}

const LETTERS = "abcdefghijklmnopqrstuvwxyz".split("");

/**
 * A small default vocabulary: single letters, a few merges and words (each reachable by merging
 * two shorter pieces, as SentencePiece BPE needs), punctuation.
 */
export const DEFAULT_PIECES: string[] = [
  "▁",
  ...LETTERS,
  ...LETTERS.map((c) => `▁${c}`),
  "he",
  "in",
  "er",
  "th",
  "ll",
  "▁th",
  "▁the",
  "▁he",
  "▁hel",
  "▁hell",
  "▁hello",
  "▁wo",
  "▁wor",
  "▁worl",
  "▁world",
  "▁and",
  "▁is",
  ",",
  ".",
  "!",
  "?",
];

/** SentencePiece token types as stored in tokenizer.ggml.token_type. */
export const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

/**
 * Writes a random-weight Llama GGUF that llama.cpp loads: llama hyper-parameters, a SentencePiece
 * ('llama') vocabulary with byte fallback, and all tensors in F32. Weights are normal * weightScale,
 * norm weights are 1. Returns the configuration and the weights for reference computations.
 */
export function writeTinyLlama(path: string, opts: TinyLlamaOptions = {}): TinyLlama {
  const dim = opts.dim ?? 64;
  const layers = opts.layers ?? 2;
  const heads = opts.heads ?? 4;
  const kvHeads = opts.kvHeads ?? heads;
  const ffn = opts.ffn ?? 2 * dim + 32;
  const contextLength = opts.contextLength ?? 128;
  const normEps = opts.normEps ?? 1e-5;
  const ropeFreqBase = opts.ropeFreqBase ?? 10000;
  const scale = opts.weightScale ?? 0.02;
  const type = opts.type ?? GGMLType.F32;
  if (type !== GGMLType.F32) throw new Error("writeTinyLlama: only F32 tensors are supported for now");
  if ((opts.headDim === undefined && dim % heads !== 0) || heads % kvHeads !== 0)
    throw new Error("writeTinyLlama: heads must divide dim, kvHeads heads");
  const headDim = opts.headDim ?? dim / heads;

  const tokens = ["<unk>", "<s>", "</s>"];
  const types: number[] = [TOKEN_TYPE.unknown, TOKEN_TYPE.control, TOKEN_TYPE.control];
  const scoreList = [0, 0, 0];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(TOKEN_TYPE.byte);
    scoreList.push(0);
  }
  const pieces = opts.pieces ?? DEFAULT_PIECES;
  pieces.forEach((p, i) => {
    tokens.push(p);
    types.push(TOKEN_TYPE.normal);
    scoreList.push(-(i + 1));
  });
  for (const t of opts.controlTokens ?? []) {
    tokens.push(t);
    types.push(TOKEN_TYPE.control);
    scoreList.push(0);
  }
  if (new Set(tokens).size !== tokens.length) throw new Error("writeTinyLlama: duplicate vocabulary pieces");
  const vocab = tokens.length;
  const scores = Float32Array.from(scoreList);
  const tokenTypes = Int32Array.from(types);

  const w = new GgufWriter();
  const arch = opts.architecture ?? "llama";
  w.setString("general.architecture", arch);
  w.setString("general.name", "tiny-llama");
  w.setU32("general.file_type", 0);
  w.setU32(`${arch}.context_length`, contextLength);
  w.setU32(`${arch}.embedding_length`, dim);
  w.setU32(`${arch}.block_count`, layers);
  w.setU32(`${arch}.feed_forward_length`, ffn);
  w.setU32(`${arch}.rope.dimension_count`, headDim);
  w.setU32(`${arch}.attention.head_count`, heads);
  w.setU32(`${arch}.attention.head_count_kv`, kvHeads);
  if (headDim !== dim / heads) {
    w.setU32(`${arch}.attention.key_length`, headDim);
    w.setU32(`${arch}.attention.value_length`, headDim);
  }
  w.setF32(`${arch}.${normEpsKey(architecture(arch))}`, normEps);
  w.setF32(`${arch}.rope.freq_base`, ropeFreqBase);
  w.setU32(`${arch}.vocab_size`, vocab);
  w.setString("tokenizer.ggml.model", "llama");
  w.setStringArray("tokenizer.ggml.tokens", tokens);
  w.setF32Array("tokenizer.ggml.scores", scores);
  w.setI32Array("tokenizer.ggml.token_type", tokenTypes);
  w.setU32("tokenizer.ggml.bos_token_id", 1);
  w.setU32("tokenizer.ggml.eos_token_id", 2);
  w.setU32("tokenizer.ggml.unknown_token_id", 0);
  w.setBool("tokenizer.ggml.add_bos_token", true);
  w.setBool("tokenizer.ggml.add_eos_token", false);
  if (opts.chatTemplate !== undefined) w.setString("tokenizer.chat_template", opts.chatTemplate);
  for (const [key, value] of Object.entries(opts.metadataU32 ?? {})) w.setU32(key, value);
  for (const [key, value] of Object.entries(opts.metadataF32 ?? {})) w.setF32(key, value);
  for (const [key, value] of Object.entries(opts.metadataString ?? {})) w.setString(key, value);

  const rng = new Rng(opts.seed ?? 1);
  const tensors = new Map<string, TinyLlamaTensor>();
  const add = (name: string, dims: number[], init: "normal" | "ones") => {
    const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
    if (init === "ones") data.fill(1);
    else rng.fillNormal(data, scale);
    tensors.set(name, { dims, data });
    w.addTensor(name, dims, GGMLType.F32, new Uint8Array(data.buffer));
  };

  // Every tensor of the architecture's table, in file order: norm weights 1, factors as given,
  // everything else normal · weightScale.
  const config: LlamaConfig = {
    architecture: arch,
    dim,
    layers,
    heads,
    kvHeads,
    headDim,
    ffn,
    vocab,
    contextLength,
    normEps,
    rope: { dim: headDim, freqBase: ropeFreqBase, freqScale: 1, neox: false },
  };
  const include = (name: string) =>
    (name === "output.weight" && !opts.tiedEmbeddings) || (name === "rope_freqs.weight" && !!opts.ropeFreqs);
  for (const t of tensorPlan(arch, config, include)) {
    if (t.kind === "factors") {
      const data = opts.ropeFreqs!;
      // (as given, even when its length is wrong: tests of bad files write such ones)
      tensors.set(t.name, { dims: [data.length], data });
      w.addTensor(t.name, [data.length], GGMLType.F32, new Uint8Array(data.slice().buffer));
    } else {
      add(t.name, t.dims, t.kind === "norm" ? "ones" : "normal");
    }
  }

  w.write(path);
  return {
    path,
    dim,
    layers,
    heads,
    kvHeads,
    headDim,
    ffn,
    contextLength,
    normEps,
    ropeFreqBase,
    tokens,
    scores,
    tokenTypes,
    bos: 1,
    eos: 2,
    unk: 0,
    tensors,
  };
}
