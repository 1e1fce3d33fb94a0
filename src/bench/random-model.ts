import { existsSync, mkdirSync, renameSync } from "node:fs";
import { dirname } from "node:path";
import { GGMLType } from "../formats/ggml-types.js";
import { GgufWriter } from "../formats/gguf.js";
import { f32ToF16 } from "../quant/fp16.js";

export interface BenchShape {
  name: string;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffn: number;
  vocab: number;
}

export const SHAPES: Record<string, BenchShape> = {
  "15M": { name: "15M", dim: 288, layers: 6, heads: 6, kvHeads: 6, ffn: 768, vocab: 32000 },
  "110M": { name: "110M", dim: 768, layers: 12, heads: 12, kvHeads: 12, ffn: 2048, vocab: 32000 },
  "1.1B": { name: "1.1B", dim: 2048, layers: 22, heads: 32, kvHeads: 4, ffn: 5632, vocab: 32000 },
  "7B": { name: "7B", dim: 4096, layers: 32, heads: 32, kvHeads: 32, ffn: 11008, vocab: 32000 },
};

export type BenchType = "f32" | "q8_0" | "q4_0";

/** xorshift32 filling whole 32-bit words: fast enough to write gigabytes of random blocks. */
function fillRandom(dst: Uint8Array, seed: number): number {
  const words = new Uint32Array(dst.buffer, dst.byteOffset, dst.byteLength >>> 2);
  let s = seed | 0 || 1;
  for (let i = 0; i < words.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    words[i] = s;
  }
  for (let i = words.length * 4; i < dst.length; i++) dst[i] = i * 131;
  return s;
}

/**
 * Random blocks whose values spread like N(0, 0.02) weights: random quants with a fixed scale.
 * Q4_0 quants (q - 8) have std ≈ 4.6, Q8_0 quants (uniform int8) ≈ 73.
 */
function randomTensor(type: BenchType, dst: Uint8Array, seed: number) {
  fillRandom(dst, seed);
  if (type === "f32") {
    const f = new Float32Array(dst.buffer, dst.byteOffset, dst.byteLength >>> 2);
    const u = new Int32Array(dst.buffer, dst.byteOffset, dst.byteLength >>> 2);
    for (let i = 0; i < f.length; i++) f[i] = (u[i]! / 2147483648) * 0.035;
    return;
  }
  const blockBytes = type === "q8_0" ? 34 : 18;
  const d = f32ToF16(type === "q8_0" ? 0.02 / 73 : 0.02 / 4.6);
  for (let o = 0; o < dst.length; o += blockBytes) {
    dst[o] = d & 0xff;
    dst[o + 1] = d >>> 8;
  }
}

/** Writes (or reuses) a random-weight Llama GGUF of `shape` in `type`, with a 32000-token vocabulary. */
export function writeBenchModel(path: string, shape: BenchShape, type: BenchType): string {
  if (existsSync(path)) return path;
  mkdirSync(dirname(path), { recursive: true });
  const ggml = type === "f32" ? GGMLType.F32 : type === "q8_0" ? GGMLType.Q8_0 : GGMLType.Q4_0;
  const tokens = ["<unk>", "<s>", "</s>"];
  const types = [2, 3, 3];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(6);
  }
  for (let i = tokens.length; i < shape.vocab; i++) {
    tokens.push(`▁w${i}`);
    types.push(1);
  }
  const w = new GgufWriter();
  w.setString("general.architecture", "llama");
  w.setString("general.name", `bench-${shape.name}-${type}`);
  w.setU32("general.file_type", type === "f32" ? 0 : type === "q8_0" ? 7 : 2);
  w.setU32("general.quantization_version", 2);
  w.setU32("llama.context_length", 2048);
  w.setU32("llama.embedding_length", shape.dim);
  w.setU32("llama.block_count", shape.layers);
  w.setU32("llama.feed_forward_length", shape.ffn);
  w.setU32("llama.rope.dimension_count", shape.dim / shape.heads);
  w.setU32("llama.attention.head_count", shape.heads);
  w.setU32("llama.attention.head_count_kv", shape.kvHeads);
  w.setF32("llama.attention.layer_norm_rms_epsilon", 1e-5);
  w.setString("tokenizer.ggml.model", "llama");
  w.setStringArray("tokenizer.ggml.tokens", tokens);
  w.setF32Array(
    "tokenizer.ggml.scores",
    Float32Array.from(tokens, (_, i) => -i),
  );
  w.setI32Array("tokenizer.ggml.token_type", Int32Array.from(types));
  w.setU32("tokenizer.ggml.bos_token_id", 1);
  w.setU32("tokenizer.ggml.eos_token_id", 2);
  w.setU32("tokenizer.ggml.unknown_token_id", 0);
  let seed = 12345;
  const matrix = (name: string, cols: number, rows: number) =>
    w.addTensor(name, [cols, rows], ggml, (dst) => randomTensor(type, dst, seed++));
  const ones = (name: string) =>
    w.addTensor(name, [shape.dim], GGMLType.F32, (dst) =>
      new Float32Array(dst.buffer, dst.byteOffset, shape.dim).fill(1),
    );
  const hd = shape.dim / shape.heads;
  matrix("token_embd.weight", shape.dim, shape.vocab);
  for (let l = 0; l < shape.layers; l++) {
    ones(`blk.${l}.attn_norm.weight`);
    matrix(`blk.${l}.attn_q.weight`, shape.dim, shape.dim);
    matrix(`blk.${l}.attn_k.weight`, shape.dim, shape.kvHeads * hd);
    matrix(`blk.${l}.attn_v.weight`, shape.dim, shape.kvHeads * hd);
    matrix(`blk.${l}.attn_output.weight`, shape.dim, shape.dim);
    ones(`blk.${l}.ffn_norm.weight`);
    matrix(`blk.${l}.ffn_gate.weight`, shape.dim, shape.ffn);
    matrix(`blk.${l}.ffn_up.weight`, shape.dim, shape.ffn);
    matrix(`blk.${l}.ffn_down.weight`, shape.ffn, shape.dim);
  }
  ones("output_norm.weight");
  matrix("output.weight", shape.dim, shape.vocab);
  const tmp = `${path}.partial`;
  w.write(tmp);
  renameSync(tmp, path);
  return path;
}
