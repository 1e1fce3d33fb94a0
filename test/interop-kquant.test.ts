// A Q4_K_M-style file (Q4_K matrices, Q6_K for attn_v, ffn_down and the output, as llama.cpp's
// mix does, plus Q5_K, Q3_K and Q2_K) run by smallhammer and llama.cpp along llama.cpp's greedy
// continuation.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, type Llama } from "node-llama-cpp";
import { afterAll, beforeAll, it } from "vitest";
import { GGMLType } from "../src/formats/ggml-types.js";
import { GgufWriter, readGgufHeader } from "../src/formats/gguf.js";
import { loadModel } from "../src/model/model.js";
import { f32ToF16 } from "../src/quant/fp16.js";
import { randomKQuantBlocks } from "../src/quant/reference.js";
import { typeSize } from "../src/quant/types.js";
import { Rng } from "../src/util/random.js";
import { expectSameAsLlamaCpp } from "./helpers/teacher-forced.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let llama: Llama;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "sh-kquant-"));
  llama = await getLlama({ gpu: false, build: "never" });
});
afterAll(async () => {
  await llama?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

/** Rescales random K-quant blocks to weights of LLM-like size (|w| mostly below 0.1). */
function tame(type: GGMLType, blocks: Uint8Array, rng: Rng): Uint8Array {
  const bytes = typeSize(type);
  const view = new DataView(blocks.buffer, blocks.byteOffset, blocks.byteLength);
  const half = (o: number, scale: number) => view.setUint16(o, f32ToF16(scale * (1 + rng.nextFloat())), true);
  for (let o = 0; o < blocks.length; o += bytes) {
    if (type === GGMLType.Q6_K) half(o + 208, 0.0005);
    else if (type === GGMLType.Q3_K) half(o + 108, 0.0005);
    else if (type === GGMLType.Q2_K) {
      half(o + 80, 0.001);
      half(o + 82, 0.001);
    } else {
      half(o, 0.0002);
      half(o + 2, 0.0002);
    }
  }
  return blocks;
}

function kTypeFor(name: string, layer: number): GGMLType {
  if (name.includes("attn_v") || name.includes("ffn_down") || name === "output.weight") return GGMLType.Q6_K;
  if (name.includes("ffn_up") && layer % 2 === 1) return GGMLType.Q5_K;
  if (name.includes("ffn_gate") && layer % 2 === 1) return GGMLType.Q2_K;
  if (name.includes("attn_q") && layer % 2 === 1) return GGMLType.Q3_K;
  return GGMLType.Q4_K;
}

it("K-quant mix: every step picks llama.cpp's token or one within rounding of it", async () => {
  const base = join(dir, "base.gguf");
  writeTinyLlama(base, { dim: 256, layers: 2, heads: 4, kvHeads: 2, ffn: 512, seed: 3 });
  const h = readGgufHeader(base);
  const w = new GgufWriter();
  w.copyMetadataFrom(h);
  w.setU32("general.file_type", 15);
  w.setU32("general.quantization_version", 2);
  const rng = new Rng(9);
  for (const t of h.tensors) {
    if (t.dims.length === 1) {
      w.addTensor(t.name, t.dims, GGMLType.F32, new Uint8Array(new Float32Array(t.dims[0]!).fill(1).buffer));
      continue;
    }
    const type = kTypeFor(t.name, Number(t.name.split(".")[1] ?? 0));
    w.addTensor(t.name, t.dims, type, tame(type, randomKQuantBlocks(type, t.elementCount / 256, rng), rng));
  }
  const path = join(dir, "kmix.gguf");
  w.write(path);

  const ours = await loadModel(path, { threads: 2, contextSize: 128, worker: false });
  const prompt = ours.tokenize("hello world");
  await ours.dispose();
  await expectSameAsLlamaCpp(llama, path, prompt, true, 32, 2);
});
