import { mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Command } from "commander";
import { GGMLType } from "../formats/ggml-types.js";
import { GgufWriter } from "../formats/gguf.js";
import { inspectGguf } from "../model/inspect.js";
import { loadModel } from "../model/model.js";
import { quantizeModel } from "../quant/quantize-model.js";
import { Rng } from "../util/random.js";
import { intArg } from "./options.js";

/**
 * Writes a random-weight Llama GGUF with a SentencePiece vocabulary (byte fallback, letters,
 * a few words) of the given shape, in F32. The file loads in smallhammer and llama.cpp.
 */
export function writeRandomLlama(
  path: string,
  shape: { dim: number; layers: number; heads: number; kvHeads: number; ffn: number; seed?: number },
): void {
  const { dim, layers, heads, kvHeads, ffn } = shape;
  const tokens = ["<unk>", "<s>", "</s>"];
  const types = [2, 3, 3];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(6);
  }
  const letters = "abcdefghijklmnopqrstuvwxyz".split("");
  const pieces = [
    "▁",
    ...letters,
    ...letters.map((c) => `▁${c}`),
    "▁th",
    "▁an",
    "▁to",
    "▁of",
    "▁in",
    "▁is",
    "▁it",
  ];
  pieces.push("▁and", "▁the", ...[",", ".", "!", "?"]);
  for (const p of pieces) {
    tokens.push(p);
    types.push(1);
  }
  const scores = Float32Array.from(tokens, (_, i) => (types[i] === 1 ? -i : 0));
  const w = new GgufWriter();
  w.setString("general.architecture", "llama");
  w.setString("general.name", `random-llama-${dim}x${layers}`);
  w.setU32("general.file_type", 0);
  w.setU32("llama.context_length", 512);
  w.setU32("llama.embedding_length", dim);
  w.setU32("llama.block_count", layers);
  w.setU32("llama.feed_forward_length", ffn);
  w.setU32("llama.rope.dimension_count", dim / heads);
  w.setU32("llama.attention.head_count", heads);
  w.setU32("llama.attention.head_count_kv", kvHeads);
  w.setF32("llama.attention.layer_norm_rms_epsilon", 1e-5);
  w.setString("tokenizer.ggml.model", "llama");
  w.setStringArray("tokenizer.ggml.tokens", tokens);
  w.setF32Array("tokenizer.ggml.scores", scores);
  w.setI32Array("tokenizer.ggml.token_type", Int32Array.from(types));
  w.setU32("tokenizer.ggml.bos_token_id", 1);
  w.setU32("tokenizer.ggml.eos_token_id", 2);
  w.setU32("tokenizer.ggml.unknown_token_id", 0);
  w.setBool("tokenizer.ggml.add_bos_token", true);
  const rng = new Rng(shape.seed ?? 1);
  const matrix = (name: string, cols: number, rows: number) =>
    w.addTensor(name, [cols, rows], GGMLType.F32, (dst) => {
      rng.fillNormal(new Float32Array(dst.buffer, dst.byteOffset, cols * rows), 0.08);
    });
  const ones = (name: string) =>
    w.addTensor(name, [dim], GGMLType.F32, (dst) =>
      new Float32Array(dst.buffer, dst.byteOffset, dim).fill(1),
    );
  const vocab = tokens.length;
  const hd = dim / heads;
  matrix("token_embd.weight", dim, vocab);
  for (let l = 0; l < layers; l++) {
    ones(`blk.${l}.attn_norm.weight`);
    matrix(`blk.${l}.attn_q.weight`, dim, dim);
    matrix(`blk.${l}.attn_k.weight`, dim, kvHeads * hd);
    matrix(`blk.${l}.attn_v.weight`, dim, kvHeads * hd);
    matrix(`blk.${l}.attn_output.weight`, dim, dim);
    ones(`blk.${l}.ffn_norm.weight`);
    matrix(`blk.${l}.ffn_gate.weight`, dim, ffn);
    matrix(`blk.${l}.ffn_up.weight`, dim, ffn);
    matrix(`blk.${l}.ffn_down.weight`, ffn, dim);
  }
  ones("output_norm.weight");
  matrix("output.weight", dim, vocab);
  w.write(path);
}

export function registerDemo(program: Command) {
  program
    .command("demo")
    .description(
      "write a random-weight Llama, quantize it to q4_0, inspect it and generate from it (an engine check)",
    )
    .option("--dir <dir>", "where to write the model files", ".tmp/demo")
    .option("-t, --threads <n>", "compute threads (default: all cores)", intArg("--threads", 1, 1024))
    .action(async (flags: { dir: string; threads?: number }) => {
      mkdirSync(flags.dir, { recursive: true });
      const f32 = join(flags.dir, "random-f32.gguf");
      const q4 = join(flags.dir, "random-q4_0.gguf");
      const say = (s: string) => process.stdout.write(`${s}\n`);
      let t = performance.now();
      const lap = () => {
        const now = performance.now();
        const s = ((now - t) / 1000).toFixed(2);
        t = now;
        return s;
      };
      say("smallhammer demo: the engine end to end on a random-weight model (its text is noise by design)");
      writeRandomLlama(f32, { dim: 512, layers: 8, heads: 8, kvHeads: 4, ffn: 1408, seed: 1 });
      say(`1. wrote ${f32} (${(statSync(f32).size / 1048576).toFixed(1)} MiB) in ${lap()} s`);
      const q = await quantizeModel(f32, q4, "q4_0");
      say(
        `2. quantized to q4_0: ${q.quantized} tensors, ${(q.outputBytes / 1048576).toFixed(1)} MiB, in ${lap()} s`,
      );
      const report = inspectGguf(q4).text.split("\n");
      say(`3. inspect ${q4}:`);
      for (const line of report.slice(0, 7)) say(`   ${line}`);
      const model = await loadModel(q4, { threads: flags.threads, contextSize: 512 });
      try {
        say(`4. loaded on ${model.llama.threads} threads in ${lap()} s; generating 64 tokens (greedy):`);
        let info: { promptTokens: number; completionTokens: number } | undefined;
        let text = "";
        const t0 = performance.now();
        for await (const piece of model.generate("the cat sat on the", {
          maxTokens: 64,
          temperature: 0,
          onDone: (i) => (info = i),
        })) {
          text += piece;
        }
        const s = (performance.now() - t0) / 1000;
        say(`   ${JSON.stringify(text.slice(0, 160))}`);
        say(
          `   ${info?.completionTokens} tokens in ${s.toFixed(2)} s (${((info?.completionTokens ?? 0) / s).toFixed(1)} tokens/s)`,
        );
      } finally {
        await model.dispose();
      }
      say("Next: `smallhammer inspect|generate|chat -m <a real GGUF>`; see README.md.");
    });
}
