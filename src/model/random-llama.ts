// Random-weight GGUF files for benchmarks and interop tests: any shape of any architecture in
// src/model/arch's table (llama by default), F32, Q8_0, Q4_0 or llama.cpp's
// Q4_K_M mix of Q4_K and Q6_K, written block by block from a fast PRNG (no float weights are ever materialised, so a 1.1B or 7B file takes
// seconds and bounded memory), with a SentencePiece ('llama') vocabulary that llama.cpp and
// smallhammer both load. Files are cached by shape and type and rewritten only when stale.
import { existsSync, mkdirSync, statfsSync } from "node:fs";
import { dirname, join } from "node:path";
import { UserError } from "../errors.js";
import { GGMLType, tensorBytes } from "../formats/ggml-types.js";
import { GgufValueType, GgufWriter, readGgufHeader } from "../formats/gguf.js";
import { f32ToF16 } from "../quant/fp16.js";
import { architecture, normEpsKey, type TensorKind, tensorPlan } from "./arch/index.js";
import type { LlamaConfig } from "./config.js";

export interface LlamaShape {
  name: string;
  /** general.architecture: its tensors and metadata prefix (default "llama"). */
  architecture?: string;
  /** Standard deviation the random matrices and biases imitate (default 0.02, typical of trained Llama matrices). */
  weightStd?: number;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffn: number;
  vocab: number;
  contextLength: number;
}

const shape = (
  name: string,
  dim: number,
  layers: number,
  heads: number,
  kvHeads: number,
  ffn: number,
): LlamaShape => ({ name, dim, layers, heads, kvHeads, ffn, vocab: 32000, contextLength: 2048 });

/** The benchmark shapes: llama2.c's stories15M and stories110M, TinyLlama 1.1B, Llama 2 7B. */
export const SHAPES: Record<string, LlamaShape> = {
  "15M": shape("15M", 288, 6, 6, 6, 768),
  "110M": shape("110M", 768, 12, 12, 12, 2048),
  "1.1B": shape("1.1B", 2048, 22, 32, 4, 5632),
  "7B": shape("7B", 4096, 32, 32, 32, 11008),
};

export type RandomModelType = "f32" | "q8_0" | "q4_0" | "q4_k_m";
export const RANDOM_MODEL_TYPES: readonly RandomModelType[] = ["f32", "q8_0", "q4_0", "q4_k_m"];

/** general.file_type (llama_ftype): ALL_F32 = 0, MOSTLY_Q4_0 = 2, MOSTLY_Q8_0 = 7, MOSTLY_Q4_K_M = 15. */
const FILE_TYPE_OF: Record<RandomModelType, number> = { f32: 0, q8_0: 7, q4_0: 2, q4_k_m: 15 };

/**
 * The ggml type of matrix `name` in a file of `type`. Q4_K_M follows llama.cpp's mix: Q6_K for the
 * output head, and for attn_v and ffn_down in the layers its use_more_bits picks (the first and
 * last eighth, and every third layer between); Q4_K for every other matrix.
 */
function matrixType(type: RandomModelType, name: string, layers: number): GGMLType {
  if (type === "f32") return GGMLType.F32;
  if (type === "q8_0") return GGMLType.Q8_0;
  if (type === "q4_0") return GGMLType.Q4_0;
  if (name === "output.weight") return GGMLType.Q6_K;
  const layer = Number(/^blk\.(\d+)\./.exec(name)?.[1] ?? -1);
  // (C's integer division, as llama.cpp computes it)
  const eighth = Math.floor(layers / 8);
  const moreBits =
    layer >= 0 && (layer < eighth || layer >= Math.floor((7 * layers) / 8) || (layer - eighth) % 3 === 2);
  if (moreBits && (name.endsWith("attn_v.weight") || name.endsWith("ffn_down.weight"))) return GGMLType.Q6_K;
  return GGMLType.Q4_K;
}

/** Bumped whenever the bytes this module writes change, so cached files are rewritten. */
const GENERATOR_VERSION = 2;
const VERSION_KEY = "smallhammer.bench.generator_version";

/** Standard deviation the random weights imitate (typical of trained Llama matrices). */
const WEIGHT_STD = 0.02;

/** Every tensor of a model of `s`, in file order: name, ggml dims (row length first), kind. */
function tensorList(s: LlamaShape): [name: string, dims: number[], kind: TensorKind][] {
  const headDim = s.dim / s.heads;
  const config: LlamaConfig = {
    architecture: s.architecture ?? "llama",
    dim: s.dim,
    layers: s.layers,
    heads: s.heads,
    kvHeads: s.kvHeads,
    headDim,
    ffn: s.ffn,
    vocab: s.vocab,
    contextLength: s.contextLength,
    normEps: 1e-5,
    rope: { dim: headDim, freqBase: 10000, freqScale: 1, neox: false },
  };
  return tensorPlan(config.architecture, config, (name) => name === "output.weight").map((t) => [
    t.name,
    t.dims,
    t.kind,
  ]);
}

/** Parameters of a Llama of shape `s` (untied embedding and output head). */
export function parameterCountOf(s: LlamaShape): number {
  return tensorList(s).reduce((n, [, dims]) => n + dims.reduce((a, b) => a * b, 1), 0);
}

/** Bytes of tensor data a random Llama of `s` in `type` takes (the header adds about 1 MB). */
export function tensorDataBytes(s: LlamaShape, type: RandomModelType): number {
  return tensorList(s).reduce(
    (n, [name, dims, kind]) =>
      n + tensorBytes(kind === "matrix" ? matrixType(type, name, s.layers) : GGMLType.F32, dims),
    0,
  );
}

/**
 * Fills `dst` with xorshift32 words from `seed`, then evens out the quants of a block format so
 * their values are symmetric around zero: for Q8_0 no byte is 0x80 (it becomes 0x81, so quants stay
 * in [-127, 127], the range ggml's quantizer produces and its dot products assume); for Q4_0 no
 * nibble is 0 (it becomes 8, value q - 8 = 0), so the values -7..7 have mean 0.
 */
function fillRandomWords(dst: Uint8Array, seed: number, type: GGMLType): void {
  const n = dst.byteLength >>> 2;
  const words = new Uint32Array(dst.buffer, dst.byteOffset, n);
  let s = seed >>> 0 || 0x9e3779b9;
  if (type === GGMLType.Q8_0) {
    for (let i = 0; i < n; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      // Adding 0x7f to each byte's low seven bits carries into its bit 7 exactly when they are not
      // all zero (and never into the next byte); a byte is 0x80 when bit 7 is set and that carry is not.
      const lowNonZero = ((s & 0x7f7f7f7f) + 0x7f7f7f7f) & 0x80808080;
      words[i] = s | ((s & 0x80808080 & ~lowNonZero) >>> 7);
    }
  } else if (type === GGMLType.Q4_0) {
    for (let i = 0; i < n; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      // The same per nibble: bit 3 of ((low three bits) + 7) | bit 3 is set when the nibble is not 0.
      const nonZero = (((s & 0x77777777) + 0x77777777) | s) & 0x88888888;
      words[i] = s | (~nonZero & 0x88888888);
    }
  } else {
    for (let i = 0; i < n; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      words[i] = s;
    }
  }
}

/**
 * Random weights of `type` in `dst` whose values spread like N(0, WEIGHT_STD) weights: for the
 * block formats, random quants (and, for the K-quants, random 6- or 8-bit sub-block scales) under
 * one fixed f16 scale per block (Q8_0 quants uniform in [-127, 127] have std ≈ 73.6; Q4_0 values
 * q - 8 in -7..7, 0 twice as likely, have std ≈ 4.18; Q4_K's sc·q - m·dmin/d, with dmin = 7.5·d
 * to centre it, about 256; Q6_K's sc·(q - 32) about 1370). The scale bytes are written over the
 * random ones; a tensor's few bytes past its last whole word stay zero (GgufWriter hands over a
 * zeroed buffer), which only ever touches quants.
 */
function fillRandomWeights(type: GGMLType, dst: Uint8Array, seed: number, std = WEIGHT_STD): void {
  fillRandomWords(dst, seed, type);
  if (type === GGMLType.F32) {
    const n = dst.byteLength >>> 2;
    const f = new Float32Array(dst.buffer, dst.byteOffset, n);
    const u = new Int32Array(dst.buffer, dst.byteOffset, n);
    // Uniform in [-a, a) has std a / √3.
    const a = (std * Math.sqrt(3)) / 2147483648;
    for (let i = 0; i < n; i++) f[i] = u[i]! * a;
    return;
  }
  const view = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
  const put = (bytes: number, at: number, d: number, at2 = -1, d2 = 0) => {
    for (let o = 0; o + bytes <= dst.length; o += bytes) {
      view.setUint16(o + at, d, true);
      if (at2 >= 0) view.setUint16(o + at2, d2, true);
    }
  };
  if (type === GGMLType.Q8_0) put(34, 0, f32ToF16(std / 73.6));
  else if (type === GGMLType.Q4_0) put(18, 0, f32ToF16(std / 4.18));
  else if (type === GGMLType.Q4_K) put(144, 0, f32ToF16(std / 256), 2, f32ToF16((7.5 * std) / 256));
  else if (type === GGMLType.Q6_K) put(210, 208, f32ToF16(std / 1370));
  else throw new Error(`random weights: no generator for ggml type ${type}`);
}

/**
 * The vocabulary: <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, "▁w", then the pieces
 * "▁w0", "▁w1", ... Every prefix of a piece is a piece ("▁w1234" from "▁w123" from ...), so the
 * merges reach each one: the text "w1234" is one token, as a benchmark's prompt counts on.
 */
function vocabulary(size: number): { tokens: string[]; scores: Float32Array; types: Int32Array } {
  const tokens = ["<unk>", "<s>", "</s>"];
  // SentencePiece token types: 1 normal, 2 unknown, 3 control, 6 byte.
  const types = [2, 3, 3];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(6);
  }
  const first = tokens.length;
  tokens.push("▁w");
  types.push(1);
  for (let i = 0; tokens.length < size; i++) {
    tokens.push(`▁w${i}`);
    types.push(1);
  }
  // Scores rank the normal pieces in order (higher merges first); special and byte tokens score 0.
  const scores = Float32Array.from(tokens, (_, i) => (i < first ? 0 : -(i - first)));
  return { tokens, scores, types: Int32Array.from(types) };
}

/**
 * Writes a random-weight Llama GGUF of shape `s` with every matrix in `type` (norm weights are f32
 * ones) to `path` (through a temporary name and a rename). Memory stays bounded by the largest
 * tensor: GgufWriter asks for each tensor's bytes as it reaches it.
 */
export function writeRandomLlama(path: string, s: LlamaShape, type: RandomModelType): void {
  if (s.dim % s.heads !== 0 || s.heads % s.kvHeads !== 0) {
    throw new UserError(`shape ${s.name}: heads must divide dim and kvHeads must divide heads`);
  }
  if (type === "q4_k_m" && (s.dim % 256 !== 0 || s.ffn % 256 !== 0)) {
    throw new UserError(
      `shape ${s.name}: q4_k_m needs dim and ffn to be multiples of 256 (K-quant super-blocks)`,
    );
  }
  const headDim = s.dim / s.heads;
  const w = new GgufWriter();
  const arch = s.architecture ?? "llama";
  w.setString("general.architecture", arch);
  w.setString("general.name", `random-${arch}-${s.name}-${type}`);
  w.setU32("general.file_type", FILE_TYPE_OF[type]);
  w.setU32("general.quantization_version", 2);
  w.setU32(VERSION_KEY, GENERATOR_VERSION);
  w.setU32(`${arch}.context_length`, s.contextLength);
  w.setU32(`${arch}.embedding_length`, s.dim);
  w.setU32(`${arch}.block_count`, s.layers);
  w.setU32(`${arch}.feed_forward_length`, s.ffn);
  w.setU32(`${arch}.rope.dimension_count`, headDim);
  w.setU32(`${arch}.attention.head_count`, s.heads);
  w.setU32(`${arch}.attention.head_count_kv`, s.kvHeads);
  const a = architecture(arch);
  w.setF32(`${arch}.${normEpsKey(a)}`, 1e-5);
  // MPT's usual ALiBi (its Hugging Face configs' alibi_bias_max)
  if (a.positions === "alibi") w.setF32(`${arch}.attention.max_alibi_bias`, 8);
  w.setF32(`${arch}.rope.freq_base`, 10000);
  w.setU32(`${arch}.vocab_size`, s.vocab);
  const vocab = vocabulary(s.vocab);
  w.setString("tokenizer.ggml.model", "llama");
  w.setStringArray("tokenizer.ggml.tokens", vocab.tokens);
  w.setF32Array("tokenizer.ggml.scores", vocab.scores);
  w.setI32Array("tokenizer.ggml.token_type", vocab.types);
  w.setU32("tokenizer.ggml.bos_token_id", 1);
  w.setU32("tokenizer.ggml.eos_token_id", 2);
  w.setU32("tokenizer.ggml.unknown_token_id", 0);
  w.setBool("tokenizer.ggml.add_bos_token", true);
  w.setBool("tokenizer.ggml.add_eos_token", false);
  let seed = 0x2545f491;
  for (const [name, dims, kind] of tensorList(s)) {
    if (kind === "matrix" || kind === "bias" || kind === "table") {
      const tensorSeed = seed;
      seed = (Math.imul(seed, 0x9e3779b1) + 0x7f4a7c15) >>> 0;
      const ggml = kind === "matrix" ? matrixType(type, name, s.layers) : GGMLType.F32;
      w.addTensor(name, dims, ggml, (dst) => fillRandomWeights(ggml, dst, tensorSeed, s.weightStd));
    } else {
      w.addTensor(name, dims, GGMLType.F32, (dst) =>
        new Float32Array(dst.buffer, dst.byteOffset, dims[0]!).fill(1),
      );
    }
  }
  w.write(path);
}

/** Whether `path` is a complete file this module wrote for `s` and `type` (same generator version). */
function isCurrent(path: string, s: LlamaShape, type: RandomModelType): boolean {
  try {
    const h = readGgufHeader(path);
    const u32 = (key: string) => {
      const kv = h.get(key);
      return kv?.type === GgufValueType.UINT32 ? kv.value : undefined;
    };
    const want = tensorList(s);
    return (
      u32(VERSION_KEY) === GENERATOR_VERSION &&
      h.get("general.architecture")?.value === (s.architecture ?? "llama") &&
      u32(`${s.architecture ?? "llama"}.embedding_length`) === s.dim &&
      u32(`${s.architecture ?? "llama"}.block_count`) === s.layers &&
      u32(`${s.architecture ?? "llama"}.attention.head_count`) === s.heads &&
      u32(`${s.architecture ?? "llama"}.attention.head_count_kv`) === s.kvHeads &&
      u32(`${s.architecture ?? "llama"}.feed_forward_length`) === s.ffn &&
      h.tensors.length === want.length &&
      h.tensors.every(
        (t, i) =>
          t.name === want[i]![0] &&
          t.type === (want[i]![2] === "matrix" ? matrixType(type, t.name, s.layers) : GGMLType.F32),
      )
    );
  } catch {
    return false;
  }
}

/** Free bytes on the file system holding `dir` (or its nearest existing parent). */
export function freeDiskBytes(dir: string): number {
  let d = dir;
  while (!existsSync(d) && dirname(d) !== d) d = dirname(d);
  const st = statfsSync(d);
  return st.bavail * st.bsize;
}

/**
 * The cached random Llama `<dir>/<shape>-<type>.gguf`, written first when missing or stale.
 * Throws a UserError when the disk lacks room for it (with 1 GiB to spare).
 */
export function randomLlamaFile(
  dir: string,
  s: LlamaShape,
  type: RandomModelType,
  onWrite?: (path: string, bytes: number) => void,
): string {
  const path = join(dir, `${s.name}-${type}.gguf`);
  if (existsSync(path) && isCurrent(path, s, type)) return path;
  const bytes = tensorDataBytes(s, type) + (2 << 20);
  const free = freeDiskBytes(dir);
  if (free < bytes + (1 << 30)) {
    throw new UserError(
      `${path}: writing it needs ${(bytes / 1e9).toFixed(2)} GB plus 1 GiB to spare, but only ${(free / 1e9).toFixed(2)} GB are free there`,
    );
  }
  mkdirSync(dir, { recursive: true });
  onWrite?.(path, bytes);
  writeRandomLlama(path, s, type);
  return path;
}
