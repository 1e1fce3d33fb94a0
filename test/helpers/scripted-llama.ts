import { GGMLType } from "../../src/formats/ggml-types.js";
import { GgufWriter } from "../../src/formats/gguf.js";

const LETTERS = "abcdefghijklmnopqrstuvwxyz".split("");

/**
 * Writes a Llama GGUF whose greedy (and, with its huge logit margins, any-temperature) reply to any
 * prompt is `chunks` in order, then end of text: a real model for the real inference path, built
 * so that its answer is known. Each chunk is one vocabulary piece; attention and feed-forward
 * outputs are zero, so the residual stream is the token's embedding, a one-hot "state": state 0
 * for every token outside the reply, state i for the reply's i-th piece. The output matrix maps
 * state 0 to the first piece, state i to piece i + 1, and the last state to end of text.
 */
export function writeScriptedLlama(path: string, chunks: string[], contextLength = 8192): void {
  const tokens = ["<unk>", "<s>", "</s>"];
  const types = [2, 3, 3];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(6);
  }
  for (const piece of ["▁", ...LETTERS, ...LETTERS.map((c) => `▁${c}`)]) {
    tokens.push(piece);
    types.push(1);
  }
  const first = tokens.length;
  for (const chunk of chunks) {
    tokens.push(chunk.replace(/ /g, "▁"));
    types.push(1);
  }
  if (new Set(tokens).size !== tokens.length) throw new Error("writeScriptedLlama: repeated piece");
  const vocab = tokens.length;
  const states = chunks.length + 1;
  const dim = Math.max(16, Math.ceil(states / 16) * 16);
  const heads = 2;
  const ffn = 32;

  const embedding = new Float32Array(dim * vocab);
  for (let t = 0; t < vocab; t++) {
    const state = t >= first ? t - first + 1 : 0;
    embedding[t * dim + state] = 1;
  }
  const output = new Float32Array(dim * vocab);
  // From state s, the next token: piece s (0-based) for s < chunks.length, then end of text (id 2).
  for (let s = 0; s < states; s++) {
    const next = s < chunks.length ? first + s : 2;
    output[next * dim + s] = 10;
  }

  const w = new GgufWriter();
  w.setString("general.architecture", "llama");
  w.setString("general.name", "scripted-llama");
  w.setU32("general.file_type", 0);
  w.setU32("llama.context_length", contextLength);
  w.setU32("llama.embedding_length", dim);
  w.setU32("llama.block_count", 1);
  w.setU32("llama.feed_forward_length", ffn);
  w.setU32("llama.rope.dimension_count", dim / heads);
  w.setU32("llama.attention.head_count", heads);
  w.setU32("llama.attention.head_count_kv", heads);
  w.setF32("llama.attention.layer_norm_rms_epsilon", 1e-5);
  w.setF32("llama.rope.freq_base", 10000);
  w.setU32("llama.vocab_size", vocab);
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
  w.setBool("tokenizer.ggml.add_bos_token", true);
  w.setBool("tokenizer.ggml.add_eos_token", false);
  const f32 = (name: string, dims: number[], data: Float32Array) =>
    w.addTensor(name, dims, GGMLType.F32, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  const zeros = (n: number) => new Float32Array(n);
  const ones = (n: number) => new Float32Array(n).fill(1);
  f32("token_embd.weight", [dim, vocab], embedding);
  f32("blk.0.attn_norm.weight", [dim], ones(dim));
  f32("blk.0.attn_q.weight", [dim, dim], zeros(dim * dim));
  f32("blk.0.attn_k.weight", [dim, dim], zeros(dim * dim));
  f32("blk.0.attn_v.weight", [dim, dim], zeros(dim * dim));
  f32("blk.0.attn_output.weight", [dim, dim], zeros(dim * dim));
  f32("blk.0.ffn_norm.weight", [dim], ones(dim));
  f32("blk.0.ffn_gate.weight", [dim, ffn], zeros(dim * ffn));
  f32("blk.0.ffn_up.weight", [dim, ffn], zeros(dim * ffn));
  f32("blk.0.ffn_down.weight", [ffn, dim], zeros(ffn * dim));
  f32("output_norm.weight", [dim], ones(dim));
  f32("output.weight", [dim, vocab], output);
  w.write(path);
}
