// `quantize` makes the file llama.cpp's llama-quantize makes: for every file type and option, the
// same tensors in the same order, of the same types, with the same bytes, and the same
// general.file_type. llama.cpp's side is llama_model_quantize in node-llama-cpp's libllama.
// The model has 8 layers (the use_more_bits rules pick layers 0, 3, 6 and 7 of 8), grouped-query
// attention with 4 query heads per key/value head (Q2_K's attn_v rule) and a feed-forward width
// of 288, so ffn_down's rows fit no 256-element super-block (llama.cpp's fallback types).
import { closeSync, copyFileSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GGMLType, ggmlTypeName } from "../src/formats/ggml-types.js";
import { GgufFile } from "../src/formats/gguf.js";
import { loadModel } from "../src/model/model.js";
import { FILE_TYPES } from "../src/quant/mixes.js";
import { type QuantizeOptions, type QuantizeProgress, quantizeModel } from "../src/quant/quantize-model.js";
import { type LlamaQuantizeOptions, llamaModelQuantize } from "./helpers/libllama.js";
import { expectSameAsLlamaCpp } from "./helpers/teacher-forced.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let untied: string;
let tied: string;
let f16: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "sh-interop-quantize-"));
  const shape = { dim: 256, layers: 8, heads: 8, kvHeads: 2, ffn: 288, weightScale: 0.05 };
  untied = join(dir, "untied-f32.gguf");
  writeTinyLlama(untied, { ...shape, seed: 5 });
  tied = join(dir, "tied-f32.gguf");
  writeTinyLlama(tied, { ...shape, seed: 6, tiedEmbeddings: true, heads: 4, kvHeads: 4 });
  f16 = join(dir, "untied-f16.gguf");
  await quantizeModel(untied, f16, "F16");
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Compares two GGUF files tensor by tensor: order, shape, type, bytes; and general.file_type. */
function expectSameTensors(ours: string, theirs: string): string[] {
  const a = GgufFile.open(ours);
  const b = GgufFile.open(theirs);
  try {
    const ta = a.header.tensors;
    const tb = b.header.tensors;
    expect(ta.map((t) => t.name)).toEqual(tb.map((t) => t.name));
    expect(a.header.getNumber("general.file_type")).toBe(b.header.getNumber("general.file_type"));
    const types: string[] = [];
    for (let i = 0; i < ta.length; i++) {
      const x = ta[i]!;
      const y = tb[i]!;
      expect(x.dims, x.name).toEqual(y.dims);
      expect(ggmlTypeName(x.type), x.name).toBe(ggmlTypeName(y.type));
      const bx = a.readTensor(x);
      const by = b.readTensor(y);
      if (Buffer.compare(bx, by) !== 0) {
        let at = 0;
        while (bx[at] === by[at]) at++;
        expect(`${x.name} (${ggmlTypeName(x.type)}) differs from byte ${at}`).toBe(`${x.name} identical`);
      }
      types.push(`${x.name}:${ggmlTypeName(x.type)}`);
    }
    return types;
  } finally {
    a.close();
    b.close();
  }
}

async function both(
  input: string,
  label: string,
  type: string,
  ftype: number,
  ours: QuantizeOptions = {},
  theirs: Omit<LlamaQuantizeOptions, "ftype"> = {},
): Promise<string[]> {
  const a = join(dir, `${label}-ours.gguf`);
  const b = join(dir, `${label}-llama.gguf`);
  await quantizeModel(input, a, type, ours);
  llamaModelQuantize(input, b, { ftype, ...theirs, threads: 2 });
  return expectSameTensors(a, b);
}

describe("every file type, byte for byte", () => {
  for (const ft of FILE_TYPES) {
    it(`${ft.name} (general.file_type ${ft.ftype})`, async () => {
      const types = await both(untied, ft.name, ft.name, ft.ftype);
      if (ft.name === "Q4_K_M") {
        // the rules this model exercises, spelled out: more bits for attn_v and ffn_down in
        // use_more_bits layers (0, 3, 6 and 7 of 8), whose 288-wide rows fall back from Q6_K to
        // Q8_0, the rest of ffn_down from Q4_K to Q5_0, and Q6_K for the output
        expect(types).toContain("blk.0.attn_v.weight:q6_K");
        expect(types).toContain("blk.1.attn_v.weight:q4_K");
        expect(types).toContain("blk.0.ffn_down.weight:q8_0");
        expect(types).toContain("blk.1.ffn_down.weight:q5_0");
        expect(types).toContain("output.weight:q6_K");
        expect(types).toContain("token_embd.weight:q4_K");
        expect(types).toContain("blk.3.attn_norm.weight:f32");
      }
      if (ft.name === "Q2_K") expect(types).toContain("blk.4.attn_v.weight:q4_K"); // 4 query heads per kv head
    });
  }
});

describe("options and inputs", () => {
  it("--output-tensor-type and --token-embedding-type", async () => {
    const types = await both(
      untied,
      "types",
      "Q4_K_M",
      15,
      { outputTensorType: "q8_0", tokenEmbeddingType: "q3_K" },
      { outputTensorType: GGMLType.Q8_0, tokenEmbeddingType: GGMLType.Q3_K },
    );
    expect(types).toContain("output.weight:q8_0");
    expect(types).toContain("token_embd.weight:q3_K");
  });

  it("--leave-output-tensor", async () => {
    const types = await both(
      untied,
      "leave",
      "Q3_K_M",
      12,
      { leaveOutputTensor: true },
      { leaveOutputTensor: true },
    );
    expect(types).toContain("output.weight:f32");
  });

  it("--pure (and the progress callback)", async () => {
    const seen: QuantizeProgress[] = [];
    const onProgress = (p: QuantizeProgress) => seen.push(p);
    const types = await both(untied, "pure", "Q5_K_M", 17, { pure: true, onProgress }, { pure: true });
    expect(seen.length).toBe(types.filter((t) => !t.endsWith(":f32")).length);
    expect(seen.at(-1)!.weightsDone).toBe(seen.at(-1)!.weights);
    expect(seen.every((p, i) => i === 0 || p.weightsDone > seen[i - 1]!.weightsDone)).toBe(true);
    expect(types).toContain("blk.0.attn_v.weight:q5_K");
    expect(types).toContain("output.weight:q5_K");
  });

  it("tied embeddings: token_embd takes the output's type", async () => {
    const types = await both(tied, "tied-q4km", "Q4_K_M", 15);
    expect(types).toContain("token_embd.weight:q6_K");
    await both(tied, "tied-q2k", "Q2_K", 10);
  });

  it("another architecture (qwen2: its biases stay f32, its counts come from qwen2.* keys)", async () => {
    const qwen2 = join(dir, "qwen2-f32.gguf");
    writeTinyLlama(qwen2, {
      dim: 256,
      layers: 4,
      heads: 8,
      kvHeads: 2,
      ffn: 512,
      seed: 8,
      architecture: "qwen2",
    });
    const types = await both(qwen2, "qwen2-q4km", "Q4_K_M", 15);
    expect(types).toContain("blk.0.attn_q.bias:f32");
    await both(qwen2, "qwen2-q8", "Q8_0", 7);
  });

  it("an F16 input", async () => {
    await both(f16, "f16-q4km", "Q4_K_M", 15);
  });

  it("any thread count: the same bytes (1 and 3 threads)", async () => {
    await both(untied, "q4km-1-thread", "Q4_K_M", 15, { threads: 1 });
    await both(f16, "f16-q3km-3-threads", "Q3_K_M", 12, { threads: 3 });
    // and with importance weights (the weighted quantizers are checked against ggml's elsewhere)
    const imatrix = new Map<string, Float32Array>();
    const file = GgufFile.open(untied);
    for (const t of file.header.tensors) {
      if (t.dims.length === 2)
        imatrix.set(
          t.name,
          Float32Array.from({ length: t.dims[0]! }, (_, j) => 1 + (j % 13)),
        );
    }
    file.close();
    const one = join(dir, "imatrix-1-thread.gguf");
    const three = join(dir, "imatrix-3-threads.gguf");
    await quantizeModel(untied, one, "Q2_K", { imatrix, threads: 1 });
    await quantizeModel(untied, three, "Q2_K", { imatrix, threads: 3 });
    expect(Buffer.compare(readFileSync(one), readFileSync(three))).toBe(0);
  });

  it("a NaN names the first row that holds one, on any thread count", async () => {
    const bad = join(dir, "nan-f32.gguf");
    copyFileSync(untied, bad);
    const file = GgufFile.open(bad);
    const t = file.header.tensors.find((x) => x.name === "blk.2.ffn_up.weight")!;
    file.close();
    const fd = openSync(bad, "r+");
    const cols = t.dims[0]!;
    for (const row of [5, 40])
      writeSync(
        fd,
        Buffer.from(new Float32Array([Number.NaN]).buffer),
        0,
        4,
        t.fileOffset + (row * cols + 7) * 4,
      );
    closeSync(fd);
    for (const threads of [1, 3]) {
      await expect(quantizeModel(bad, join(dir, "nan-q4km.gguf"), "Q4_K_M", { threads })).rejects.toThrow(
        /blk\.2\.ffn_up\.weight holds a NaN or infinite value \(row 5\)/,
      );
    }
  });
});

describe("llama.cpp's Q2_K and Q3_K files run here as in llama.cpp", () => {
  // Q2_K puts Q2_K, Q3_K and Q4_K matrices in one file, Q3_K_S Q3_K nearly everywhere
  for (const [name, ftype] of [
    ["Q2_K", 10],
    ["Q3_K_S", 11],
  ] as const) {
    it(`${name}: every greedy step picks llama.cpp's token or one within rounding of it`, async () => {
      const base = join(dir, `run-${name}-f32.gguf`);
      writeTinyLlama(base, {
        dim: 256,
        layers: 2,
        heads: 4,
        kvHeads: 4,
        ffn: 512,
        seed: 21,
        weightScale: 0.1,
      });
      const path = join(dir, `run-${name}.gguf`);
      llamaModelQuantize(base, path, { ftype, threads: 2 });
      const ours = await loadModel(path, { threads: 2, contextSize: 128, worker: false });
      const types = new Set(GgufFile.open(path).header.tensors.map((t) => ggmlTypeName(t.type)));
      expect(types).toContain(name === "Q2_K" ? "q2_K" : "q3_K");
      const prompt = ours.tokenize("hello world");
      await ours.dispose();
      const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" as never });
      try {
        const ref = await expectSameAsLlamaCpp(llama, path, prompt, true, 24, 2);
        expect(new Set(ref).size, "a continuation that says something").toBeGreaterThan(3);
      } finally {
        await llama.dispose();
      }
    });
  }
});
