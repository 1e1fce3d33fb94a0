// The architecture seam: one table of tensor names (inference, LoRA, training, writers) and one
// layer body that the single-sequence and the batched forward passes both run.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UserError } from "../src/errors.js";
import { readGgufHeader } from "../src/formats/gguf.js";
import { ARCHITECTURES, hfTensorName, projectionRoles, tensorNames } from "../src/model/arch/index.js";
import { LlamaModel } from "../src/model/llama.js";
import { LORA_TARGETS } from "../src/model/lora.js";
import { finetunePlan } from "../src/train/finetune.js";
import { LlamaTrainModel } from "../src/train/model.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "sh-model-arch-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

const shape = { dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 128, weightScale: 0.2 };

describe("the tensor table", () => {
  it("names every tensor of a llama file, in file order", () => {
    const path = join(dir, "names.gguf");
    const tiny = writeTinyLlama(path, shape);
    const config = { ...tiny, architecture: "llama", vocab: tiny.tokens.length } as never;
    const names = tensorNames("llama", config, (n) => n === "output.weight");
    expect(readGgufHeader(path).tensors.map((t) => t.name)).toEqual(names);
    expect(names[0]).toBe("token_embd.weight");
    expect(names.at(-1)).toBe("output.weight");
  });

  it("gives qwen2 its q, k and v biases and keeps Hugging Face's names", () => {
    const spec = ARCHITECTURES.qwen2!.layerTensors;
    expect(spec.filter((t) => t.kind === "bias").map((t) => `${t.role}.${t.suffix}`)).toEqual([
      "attn_q.bias",
      "attn_k.bias",
      "attn_v.bias",
    ]);
    const kBias = spec.find((t) => t.role === "attn_k" && t.suffix === "bias")!;
    expect(hfTensorName(kBias, 3)).toBe("model.layers.3.self_attn.k_proj.bias");
    // Llama's q and k rows are reordered by the converter, Qwen2's are not.
    expect(ARCHITECTURES.llama!.layerTensors.find((t) => t.role === "attn_q")!.hfPermute).toBe("heads");
    expect(spec.find((t) => t.role === "attn_q")!.hfPermute).toBeUndefined();
  });

  it("is where LoRA's targets come from", () => {
    expect(Object.values(LORA_TARGETS).map((t) => t.gguf)).toEqual(projectionRoles("llama"));
    expect(LORA_TARGETS.gate.peft).toBe("mlp.gate_proj");
    expect(LORA_TARGETS.o.peft).toBe("self_attn.o_proj");
  });
});

describe("one layer body for forward and forwardBatch", () => {
  // For each architecture path: two sequences decoded in one batched pass get, bit for bit, the
  // logits each gets from the single-sequence forward.
  for (const [label, extra] of [
    ["qwen2 (biases, NeoX rope)", { architecture: "qwen2" }],
    ["llama with rope_freqs", { ropeFreqs: Float32Array.from({ length: 8 }, (_, i) => 0.5 + i) }],
    ["gpt2 (learned positions per sequence)", { architecture: "gpt2" }],
    [
      "mpt (ALiBi, clamped q/k/v)",
      {
        architecture: "mpt",
        metadataF32: { "mpt.attention.max_alibi_bias": 8, "mpt.attention.clamp_kqv": 2 },
      },
    ],
    ["phi3 (fused tensors split at load)", { architecture: "phi3" }],
    ["gemma (GeGLU, scaled embeddings)", { architecture: "gemma", tiedEmbeddings: true }],
  ] as const) {
    it(label, async () => {
      const path = join(dir, `batch-${label.split(" ")[0]}.gguf`);
      writeTinyLlama(path, { ...shape, ...extra, seed: 9 });
      const a = [1, 40, 41, 42, 43];
      const b = [1, 50, 51];
      const solo = await LlamaModel.load(path, { threads: 2, contextSize: 32 });
      const many = await LlamaModel.load(path, { threads: 2, contextSize: 32, sequences: 2 });
      try {
        const want = [a, b].map((t) => {
          solo.forward(t.slice(0, -1), 0);
          return Float32Array.from(solo.forward(t.slice(-1), t.length - 1));
        });
        many.forwardBatch([
          { seq: 0, tokens: a.slice(0, -1), pos0: 0 },
          { seq: 1, tokens: b.slice(0, -1), pos0: 0 },
        ]);
        const got = many.forwardBatch([
          { seq: 0, tokens: a.slice(-1), pos0: a.length - 1 },
          { seq: 1, tokens: b.slice(-1), pos0: b.length - 1 },
        ]);
        expect(Array.from(got[0]!)).toEqual(Array.from(want[0]!));
        expect(Array.from(got[1]!)).toEqual(Array.from(want[1]!));
      } finally {
        await solo.dispose();
        await many.dispose();
      }
    });
  }
});

describe("untrusted files", () => {
  it("refuses rope_freqs that are zero, negative or not finite, in one line", async () => {
    const path = join(dir, "bad-freqs.gguf");
    writeTinyLlama(path, {
      ...shape,
      ropeFreqs: Float32Array.from({ length: 8 }, (_, i) => (i === 5 ? 0 : 1)),
    });
    await expect(LlamaModel.load(path, { threads: 1 })).rejects.toThrow(
      /rope_freqs\.weight holds 0; frequency factors must be finite and above 0/,
    );
  });

  it("refuses rope_freqs of the wrong length", async () => {
    const path = join(dir, "short-freqs.gguf");
    writeTinyLlama(path, { ...shape, ropeFreqs: new Float32Array(5).fill(1) });
    const err = await LlamaModel.load(path, { threads: 1 }).catch((e) => e);
    expect(err).toBeInstanceOf(UserError);
    expect(err.message).toMatch(/tensor rope_freqs\.weight has shape \[5\], expected \[8\]/);
  });

  it("refuses a qwen2 file without its biases, naming the tensor", async () => {
    const path = join(dir, "qwen2-nobias.gguf");
    writeTinyLlama(path, { ...shape, architecture: "qwen2" });
    // Rename the first bias so the file lacks it (same length, so offsets stay valid).
    const bytes = readFileSync(path);
    const at = bytes.indexOf("blk.0.attn_q.bias");
    bytes.write("blk.0.attn_q.bia_", at);
    writeFileSync(path, bytes);
    await expect(LlamaModel.load(path, { threads: 1 })).rejects.toThrow(
      /tensor blk\.0\.attn_q\.bias is missing/,
    );
  });
});

describe("architectures beyond Llama refuse what they do not run, in one line", () => {
  it("a gpt2 context longer than its learned positions", async () => {
    const path = join(dir, "gpt2-ctx.gguf");
    writeTinyLlama(path, { ...shape, architecture: "gpt2", contextLength: 64 });
    await expect(LlamaModel.load(path, { threads: 1, contextSize: 65 })).rejects.toThrow(
      /a context of 65 tokens is longer than the 64 positions position_embd\.weight holds/,
    );
  });

  it("a tensor the architecture does not have, Phi-3's long-context rope factors by name", async () => {
    const path = join(dir, "phi3-extra.gguf");
    writeTinyLlama(path, { ...shape, architecture: "phi3" });
    const bytes = readFileSync(path);
    // (same lengths as the names they replace, so offsets stay valid)
    bytes.write("outpu_.weight", bytes.lastIndexOf("output.weight")); // the head, after blk.N.attn_output
    writeFileSync(path, bytes);
    await expect(LlamaModel.load(path, { threads: 1 })).rejects.toThrow(
      /tensor outpu_\.weight is not part of a phi3 model that smallhammer runs/,
    );
    bytes.write("rope_factors_long.weight", bytes.indexOf("blk.1.attn_output.weight"));
    writeFileSync(path, bytes);
    await expect(LlamaModel.load(path, { threads: 1 })).rejects.toThrow(
      /tensor rope_factors_long\.weight \(phi3's long-context rope factors\) is not supported/,
    );
  });

  it("a LoRA update of a fused tensor", async () => {
    const path = join(dir, "phi3-lora.gguf");
    writeTinyLlama(path, { ...shape, architecture: "phi3" });
    const rows = shape.dim + 2 * (shape.dim / shape.heads) * shape.kvHeads;
    const adapter = {
      architecture: "phi3",
      alpha: 4,
      tensors: [
        {
          base: "blk.0.attn_qkv.weight",
          rank: 4,
          inFeatures: shape.dim,
          outFeatures: rows,
          a: new Float32Array(4 * shape.dim),
          b: new Float32Array(rows * 4),
        },
      ],
    };
    await expect(LlamaModel.load(path, { threads: 1, lora: [{ adapter }] })).rejects.toThrow(
      /cannot apply an update to blk\.0\.attn_qkv\.weight/,
    );
  });

  it("negative or non-numeric ALiBi and clamp settings, naming the key", async () => {
    const path = join(dir, "mpt-bad.gguf");
    writeTinyLlama(path, {
      ...shape,
      architecture: "mpt",
      metadataF32: { "mpt.attention.max_alibi_bias": -1 },
    });
    await expect(LlamaModel.load(path, { threads: 1 })).rejects.toThrow(
      /metadata mpt\.attention\.max_alibi_bias = -1 is invalid: must be a finite number of at least 0/,
    );
  });
});

describe("training refuses what its graph does not compute", () => {
  it("a llama file with rope_freqs or YaRN, and a qwen2 file, in one line each", async () => {
    const freqs = join(dir, "train-freqs.gguf");
    writeTinyLlama(freqs, { ...shape, ropeFreqs: new Float32Array(8).fill(2) });
    await expect(LlamaTrainModel.load(freqs, { seq: 8, batch: 1 })).rejects.toThrow(
      /training a model with rope_freqs\.weight \(Llama 3\.1 rope scaling\) is not supported/,
    );
    const yarn = join(dir, "train-yarn.gguf");
    writeTinyLlama(yarn, {
      ...shape,
      metadataString: { "llama.rope.scaling.type": "yarn" },
      metadataF32: { "llama.rope.scaling.factor": 4 },
    });
    await expect(LlamaTrainModel.load(yarn, { seq: 8, batch: 1 })).rejects.toThrow(
      /training a model with YaRN rope scaling is not supported/,
    );
    expect(() =>
      finetunePlan({ base: yarn, data: "unused.jsonl", method: "lora", batch: 1, seq: 8 }),
    ).toThrow(/fine-tuning a model with YaRN rope scaling is not supported/);
    const qwen = join(dir, "train-qwen2.gguf");
    writeTinyLlama(qwen, { ...shape, architecture: "qwen2" });
    await expect(LlamaTrainModel.load(qwen, { seq: 8, batch: 1 })).rejects.toThrow(
      /architecture qwen2 cannot be trained/,
    );
    const gpt2 = join(dir, "train-gpt2.gguf");
    writeTinyLlama(gpt2, { ...shape, architecture: "gpt2" });
    await expect(LlamaTrainModel.load(gpt2, { seq: 8, batch: 1 })).rejects.toThrow(
      /architecture gpt2 cannot be trained/,
    );
  });
});

describe("context beyond the training length", () => {
  it("warns once, naming both lengths", async () => {
    const path = join(dir, "ctx.gguf");
    writeTinyLlama(path, { ...shape, contextLength: 64 });
    const warnings: string[] = [];
    const m = await LlamaModel.load(path, {
      threads: 1,
      contextSize: 100,
      onWarning: (w) => warnings.push(w),
    });
    await m.dispose();
    expect(warnings).toEqual([
      `${path}: a context of 100 tokens is longer than the 64 the model was trained with`,
    ]);
    const quiet = await LlamaModel.load(path, {
      threads: 1,
      contextSize: 64,
      onWarning: (w) => warnings.push(w),
    });
    await quiet.dispose();
    expect(warnings.length).toBe(1);
  });
});
