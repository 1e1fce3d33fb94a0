// Architectures and rope variants beyond plain Llama, each run by smallhammer and by llama.cpp
// (node-llama-cpp) on the same random-weight GGUF and compared teacher-forced along llama.cpp's
// greedy continuation, as test/interop-llama.test.ts does for Llama.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, type Llama } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadModel } from "../src/model/model.js";
import { writeRandomLlama } from "../src/model/random-llama.js";
import { quantizeModel } from "../src/quant/quantize-model.js";
import { expectSameAsLlamaCpp } from "./helpers/teacher-forced.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

const TOKENS = 24;
let dir: string;
let llama: Llama;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "sh-interop-arch-"));
  llama = await getLlama({ gpu: false, build: "never", logLevel: "error" as never });
});
afterAll(async () => {
  await llama?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

/** The largest difference between two files' logits after `prompt` (one forward pass each). */
async function largestLogitGap(pathA: string, pathB: string, prompt: number[]): Promise<number> {
  const logits = async (path: string) => {
    const m = await loadModel(path, { worker: false, threads: 1 });
    try {
      return Float32Array.from(m.llama.forward(prompt, 0));
    } finally {
      await m.dispose();
    }
  };
  const a = await logits(pathA);
  const b = await logits(pathB);
  let gap = 0;
  for (let i = 0; i < a.length; i++) gap = Math.max(gap, Math.abs(a[i]! - b[i]!));
  return gap;
}

describe("Llama 3.1 rope_freqs", () => {
  // Divisors from 0.5 to 8 across the pairs: llama.cpp divides each pair's angle by its factor.
  // (Llama 3.1's own factors are 1 for the fast pairs and up to 8 for the slow ones, which barely
  // turn within a short prompt; factors below 1 make a difference a short test can see.)
  const shape = { dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 128, seed: 3, weightScale: 0.25 };
  const headDim = shape.dim / shape.heads;
  const factors = Float32Array.from({ length: headDim / 2 }, (_, i) => 0.5 + (7.5 * i) / (headDim / 2 - 1));
  let withFactors: string;
  let prompt: number[];
  beforeAll(async () => {
    withFactors = join(dir, "rope-freqs-f32.gguf");
    writeTinyLlama(withFactors, { ...shape, ropeFreqs: factors });
    const m = await loadModel(withFactors, { worker: false, threads: 1 });
    prompt = m.tokenize("the world is hello and the world");
    await m.dispose();
  });

  it("the factors change the logits (a model that ignored them would fail the comparisons)", async () => {
    const plain = join(dir, "rope-plain-f32.gguf");
    writeTinyLlama(plain, shape);
    expect(await largestLogitGap(withFactors, plain, prompt)).toBeGreaterThan(1e-2);
  });

  for (const type of ["f32", "q8_0"] as const) {
    it(`${type}: ${TOKENS} tokens teacher-forced along llama.cpp`, async () => {
      let path = withFactors;
      if (type !== "f32") {
        path = join(dir, `rope-freqs-${type}.gguf`);
        await quantizeModel(withFactors, path, type);
      }
      await expectSameAsLlamaCpp(llama, path, prompt, type !== "f32");
    });
  }
});

describe("YaRN rope scaling", () => {
  // Factor 4 from an original context of 32, which the prompt and its continuation pass: the
  // correction dimensions are 0 and 2, so pair 0 keeps its angle, pair 1 takes half of each and
  // the slower pairs are interpolated, and cos and sin grow by 1 + 0.1·ln 4.
  const shape = { dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 128, seed: 5, weightScale: 0.25 };
  const scaling = (type: string) => ({
    metadataString: { "llama.rope.scaling.type": type },
    metadataF32: { "llama.rope.scaling.factor": 4 },
    metadataU32: { "llama.rope.scaling.original_context_length": 32 },
  });
  let yarn: string;
  let prompt: number[];
  beforeAll(async () => {
    yarn = join(dir, "yarn-f32.gguf");
    writeTinyLlama(yarn, { ...shape, ...scaling("yarn") });
    const m = await loadModel(yarn, { worker: false, threads: 1 });
    expect(m.llama.config.rope).toMatchObject({ freqScale: 0.25, yarnOriginalContext: 32 });
    prompt = m.tokenize("the world is hello and the world");
    await m.dispose();
  });

  it("differs from linear scaling by the same factor (a model that ignored YaRN would fail the comparisons)", async () => {
    const linear = join(dir, "yarn-linear-f32.gguf");
    writeTinyLlama(linear, { ...shape, ...scaling("linear") });
    expect(await largestLogitGap(yarn, linear, prompt)).toBeGreaterThan(1e-2);
  });

  for (const type of ["f32", "q8_0"] as const) {
    it(`${type}: ${TOKENS} tokens teacher-forced along llama.cpp`, async () => {
      let path = yarn;
      if (type !== "f32") {
        path = join(dir, `yarn-${type}.gguf`);
        await quantizeModel(yarn, path, type);
      }
      await expectSameAsLlamaCpp(llama, path, prompt, type !== "f32");
    });
  }
});

describe("qwen2: q, k and v biases, NeoX rope, tied head", () => {
  let f32: string;
  let prompt: number[];
  beforeAll(async () => {
    f32 = join(dir, "qwen2-f32.gguf");
    writeTinyLlama(f32, {
      architecture: "qwen2",
      dim: 64,
      layers: 2,
      heads: 4,
      kvHeads: 2,
      ffn: 128,
      seed: 7,
      weightScale: 0.25,
      tiedEmbeddings: true,
    });
    const m = await loadModel(f32, { worker: false, threads: 1 });
    expect(m.llama.config.rope.neox).toBe(true);
    prompt = m.tokenize("hello world and the world is");
    await m.dispose();
  });

  it(`f32: ${TOKENS} tokens teacher-forced along llama.cpp`, async () => {
    await expectSameAsLlamaCpp(llama, f32, prompt, false);
  });

  // Quantized files straight from the random-model writer (every block type the engine runs
  // that llama.cpp's mixes use), untied head.
  for (const type of ["q8_0", "q4_0", "q4_k_m"] as const) {
    it(`${type}: ${TOKENS} tokens teacher-forced along llama.cpp`, async () => {
      const path = join(dir, `qwen2-random-${type}.gguf`);
      const shape = { name: "tiny", architecture: "qwen2", dim: 256, layers: 2, heads: 4, kvHeads: 2 };
      writeRandomLlama(path, { ...shape, ffn: 512, vocab: 512, contextLength: 256, weightStd: 0.3 }, type);
      const m = await loadModel(path, { worker: false, threads: 1 });
      const words = m.tokenize("w1 w2 w3 w10 w11 w12 w100 w7");
      await m.dispose();
      await expectSameAsLlamaCpp(llama, path, words, true);
    });
  }
});

/**
 * A tiny random-weight model of `architecture` written by our writer, compared with llama.cpp at
 * f32 (every step) and quantized by quantizeModel to q8_0 and q4_0 (within the rounding noise).
 */
function compareArchitecture(
  architecture: string,
  check: string,
  extra: Partial<Parameters<typeof writeTinyLlama>[1]> = {},
) {
  describe(`${architecture}: ${check}`, () => {
    let f32: string;
    let prompt: number[];
    beforeAll(async () => {
      f32 = join(dir, `${architecture}-f32.gguf`);
      writeTinyLlama(f32, {
        architecture,
        dim: 64,
        layers: 2,
        heads: 4,
        ffn: 128,
        seed: 11,
        weightScale: 0.25,
        ...extra,
      });
      const m = await loadModel(f32, { worker: false, threads: 1 });
      prompt = m.tokenize("hello world and the world is");
      await m.dispose();
    });

    it(`f32: ${TOKENS} tokens teacher-forced along llama.cpp`, async () => {
      await expectSameAsLlamaCpp(llama, f32, prompt, false);
    });

    for (const type of ["q8_0", "q4_0"] as const) {
      it(`${type}: ${TOKENS} tokens teacher-forced along llama.cpp`, async () => {
        const path = join(dir, `${architecture}-${type}.gguf`);
        await quantizeModel(f32, path, type);
        await expectSameAsLlamaCpp(llama, path, prompt, true);
      });
    }
  });
}

compareArchitecture("gpt2", "learned positions, LayerNorm, fused qkv, biases, GELU MLP, untied head");
compareArchitecture("phi3", "fused qkv and gate/up split at load, NeoX rope, grouped-query heads", {
  kvHeads: 2,
});
// (heads 32 wide with a 64-wide model, as Gemma 7B's 256-wide heads with its 3072-wide model)
compareArchitecture("gemma", "GeGLU, embeddings scaled by √dim, NeoX rope, tied head, wide heads", {
  kvHeads: 2,
  headDim: 32,
  tiedEmbeddings: true,
});
compareArchitecture("mpt", "ALiBi, LayerNorm without bias, fused qkv clamped, GELU MLP", {
  tiedEmbeddings: true,
  metadataF32: { "mpt.attention.max_alibi_bias": 8, "mpt.attention.clamp_kqv": 1.5 },
});
