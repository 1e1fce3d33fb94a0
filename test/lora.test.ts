// LoRA adapter files: llama.cpp's GGUF adapter (loaded by real llama.cpp), PEFT's directory with
// safetensors, and merging an adapter into a base model.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, type Llama } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SafetensorsFile, writeSafetensors } from "../src/formats/safetensors.js";
import {
  addLoraDelta,
  type LoraAdapter,
  type LoraTensor,
  loraScale,
  mergeLora,
  permuteRopeRows,
  readLoraGguf,
  readPeftAdapter,
  writeLoraGguf,
  writePeftAdapter,
} from "../src/model/lora.js";
import { loadModel } from "../src/model/model.js";
import { Rng } from "../src/util/random.js";
import { ensureBuilt, runCli } from "./helpers/cli.js";
import { type TinyLlama, writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let llama: Llama;
let tiny: TinyLlama;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "sh-lora-"));
  llama = await getLlama({ gpu: false, build: "never", logLevel: "error" as never });
  tiny = writeTinyLlama(join(dir, "base.gguf"), { heads: 4, kvHeads: 2, contextLength: 256 });
});
afterAll(async () => {
  await llama?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

/** A random adapter on q, k, v and down of every layer, large enough to change the output. */
function randomAdapter(rank = 4, alpha = 8, seed = 5): LoraAdapter {
  const rng = new Rng(seed);
  const tensors: LoraTensor[] = [];
  for (let l = 0; l < tiny.layers; l++) {
    for (const name of ["attn_q", "attn_k", "attn_v", "ffn_down"]) {
      const base = `blk.${l}.${name}.weight`;
      const info = tiny.tensors.get(base);
      if (!info) throw new Error(`no ${base}`);
      const [inFeatures, outFeatures] = info.dims;
      const rand = (n: number) => Float32Array.from({ length: n }, () => rng.nextNormal(0, 0.3));
      tensors.push({
        base,
        rank,
        inFeatures,
        outFeatures,
        a: rand(rank * inFeatures),
        b: rand(outFeatures * rank),
      });
    }
  }
  return { architecture: "llama", alpha, tensors };
}

async function llamaCppGreedy(path: string, prompt: number[], n: number, lora?: string): Promise<number[]> {
  const model = await llama.loadModel({ modelPath: path });
  try {
    const ctx = await model.createContext({
      contextSize: 256,
      threads: 2,
      experimentalKvCacheKeyType: "F32",
      experimentalKvCacheValueType: "F32",
      ...(lora ? { lora: { adapters: [{ filePath: lora }] } } : {}),
    });
    const out: number[] = [];
    for await (const t of ctx.getSequence().evaluate(prompt as never, { temperature: 0 })) {
      out.push(t as number);
      if (out.length >= n) break;
    }
    await ctx.dispose();
    return out;
  } finally {
    await model.dispose();
  }
}

async function ourGreedy(
  path: string,
  prompt: number[],
  n: number,
  lora?: { adapter: LoraAdapter | string; scale?: number }[],
): Promise<number[]> {
  const model = await loadModel(path, { worker: false, threads: 2, contextSize: 256, lora });
  try {
    const out: number[] = [];
    let logits = model.llama.forward(prompt, 0);
    for (let i = 0; i < n; i++) {
      let best = 0;
      for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
      out.push(best);
      logits = model.llama.forward([best], prompt.length + i);
    }
    return out;
  } finally {
    await model.dispose();
  }
}

describe("safetensors", () => {
  it("round-trips float tensors with an 8-byte aligned header", () => {
    const path = join(dir, "t.safetensors");
    const a = Float32Array.from({ length: 6 }, (_, i) => i - 2.5);
    const b = Float32Array.from([1, 0.5, -2, 65504]);
    writeSafetensors(path, [
      { name: "b", shape: [2, 2], data: b, dtype: "F16" },
      { name: "a", shape: [2, 3], data: a },
    ]);
    const bytes = readFileSync(path);
    const n = Number(bytes.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const header = JSON.parse(bytes.subarray(8, 8 + n).toString());
    expect(header.__metadata__).toEqual({ format: "pt" });
    // Bigger dtypes first: the f32 tensor starts the buffer.
    expect(header.a.data_offsets).toEqual([0, 24]);
    expect(header.b).toEqual({ dtype: "F16", shape: [2, 2], data_offsets: [24, 32] });
    const f = SafetensorsFile.open(path);
    expect([...f.readFloat32("a")]).toEqual([...a]);
    expect([...f.readFloat32("b")]).toEqual([...b]);
    f.close();
  });

  it("names a broken file in one line", () => {
    const path = join(dir, "bad.safetensors");
    writeSafetensors(path, [{ name: "a", shape: [4], data: new Float32Array(4) }]);
    const bytes = readFileSync(path);
    bytes.writeBigUInt64LE(1n << 40n, 0);
    writeFileSync(path, bytes);
    expect(() => SafetensorsFile.open(path)).toThrow(
      /bad\.safetensors: not a safetensors file \(header length/,
    );
  });
});

describe("GGUF LoRA adapter", () => {
  it("round-trips through the file", () => {
    const adapter = randomAdapter();
    const path = join(dir, "rt.gguf");
    writeLoraGguf(path, adapter);
    const back = readLoraGguf(path);
    expect(back.alpha).toBe(8);
    expect(back.architecture).toBe("llama");
    expect(back.tensors.map((t) => t.base)).toEqual(adapter.tensors.map((t) => t.base));
    for (let i = 0; i < adapter.tensors.length; i++) {
      expect(back.tensors[i].a).toEqual(adapter.tensors[i].a);
      expect(back.tensors[i].b).toEqual(adapter.tensors[i].b);
    }
  });

  it("is applied by llama.cpp as the merged model behaves, in llama.cpp and in smallhammer", async () => {
    const adapter = randomAdapter();
    const adapterPath = join(dir, "adapter.gguf");
    const merged = join(dir, "merged.gguf");
    writeLoraGguf(adapterPath, adapter);
    const summary = mergeLora(tiny.path, adapter, merged);
    expect(summary).toEqual({ merged: adapter.tensors.length, chatTemplate: "none", widened: [] });
    const prompt = [tiny.bos, 300, 301, 302, 310];
    const base = await llamaCppGreedy(tiny.path, prompt, 24);
    const withAdapter = await llamaCppGreedy(tiny.path, prompt, 24, adapterPath);
    expect(withAdapter).not.toEqual(base);
    expect(await llamaCppGreedy(merged, prompt, 24)).toEqual(withAdapter);
    expect(await ourGreedy(merged, prompt, 24)).toEqual(withAdapter);
    expect(await ourGreedy(tiny.path, prompt, 24, [{ adapter: adapterPath }])).toEqual(withAdapter);
  });

  it("applied at run time, gives the merged model's logits; with B = 0, the base's exactly", async () => {
    const adapter = randomAdapter(3); // rank 3: padded to the kernels' granule of 4
    const merged = join(dir, "merged3.gguf");
    mergeLora(tiny.path, adapter, merged, { scale: 0.5 });
    const prompt = [tiny.bos, 300, 301, 302, 310, 320, 330];
    const logitsOf = async (path: string, lora?: { adapter: LoraAdapter; scale?: number }[]) => {
      const m = await loadModel(path, { worker: false, threads: 2, contextSize: 64, lora, logitsAll: true });
      try {
        return Float32Array.from(m.llama.forward(prompt, 0));
      } finally {
        await m.dispose();
      }
    };
    const runtime = await logitsOf(tiny.path, [{ adapter, scale: 0.5 }]);
    const fromMerged = await logitsOf(merged);
    const base = await logitsOf(tiny.path);
    let maxDiff = 0;
    let maxChange = 0;
    for (let i = 0; i < runtime.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(runtime[i] - fromMerged[i]));
      maxChange = Math.max(maxChange, Math.abs(runtime[i] - base[i]));
    }
    expect(maxChange).toBeGreaterThan(0.05);
    expect(maxDiff).toBeLessThan(1e-4 * Math.max(1, maxChange));
    // Two adapters stack: this one and a zero one change nothing further.
    const zero = {
      ...adapter,
      tensors: adapter.tensors.map((t) => ({ ...t, b: new Float32Array(t.b.length) })),
    };
    expect(await logitsOf(tiny.path, [{ adapter: zero }])).toEqual(base);
    expect(await logitsOf(tiny.path, [{ adapter, scale: 0.5 }, { adapter: zero }])).toEqual(runtime);
  });

  it("refuses a file that is not an adapter, and an adapter for missing tensors", () => {
    expect(() => readLoraGguf(tiny.path)).toThrow(/base\.gguf: not a LoRA adapter/);
    const adapter = randomAdapter();
    adapter.tensors[0] = { ...adapter.tensors[0], base: "blk.9.attn_q.weight" };
    expect(() => mergeLora(tiny.path, adapter, join(dir, "never.gguf"))).toThrow(/does not have/);
  });
});

describe("merging", () => {
  it("adds alpha/rank · B·A to the weight", () => {
    const t: LoraTensor = {
      base: "w",
      rank: 2,
      inFeatures: 3,
      outFeatures: 2,
      a: Float32Array.from([1, 2, 3, 4, 5, 6]),
      b: Float32Array.from([1, 0, 0, -1]),
    };
    const w = new Float32Array(6);
    addLoraDelta(w, t, loraScale(4, 2));
    // B·A = [[1,2,3],[-4,-5,-6]], scale 2.
    expect([...w]).toEqual([2, 4, 6, -8, -10, -12]);
    expect(loraScale(0, 8, 0.5)).toBe(0.5);
  });
});

describe("PEFT adapter", () => {
  it("writes the files, names, shapes and config fields PEFT uses, and reads back", () => {
    const adapter = randomAdapter(4, 16);
    const out = join(dir, "peft");
    writePeftAdapter(out, adapter, {
      baseModel: "tiny-llama",
      heads: tiny.heads,
      kvHeads: tiny.kvHeads,
      dropout: 0.05,
    });
    // adapter_config.json: LoraConfig's fields (peft/tuners/lora/config.py), as save_pretrained dumps them.
    const config = JSON.parse(readFileSync(join(out, "adapter_config.json"), "utf8"));
    expect(config).toMatchObject({
      peft_type: "LORA",
      task_type: "CAUSAL_LM",
      base_model_name_or_path: "tiny-llama",
      r: 4,
      lora_alpha: 16,
      lora_dropout: 0.05,
      bias: "none",
      fan_in_fan_out: false,
      use_rslora: false,
      inference_mode: true,
    });
    expect(config.target_modules).toEqual(["down_proj", "k_proj", "q_proj", "v_proj"]);
    // Tensor names: the adapter name stripped, under base_model.model (peft/utils/save_and_load.py);
    // lora_A is [r, in_features] and lora_B [out_features, r] (nn.Linear weight layout).
    const f = SafetensorsFile.open(join(out, "adapter_model.safetensors"));
    const q = f.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    expect(q?.shape).toEqual([4, tiny.dim]);
    expect(f.tensor("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight")?.shape).toEqual([
      tiny.kvHeads * tiny.headDim,
      4,
    ]);
    expect(f.tensor("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")?.shape).toEqual([
      tiny.dim,
      4,
    ]);
    expect(f.tensors).toHaveLength(adapter.tensors.length * 2);
    // q's B rows are in Hugging Face's rotate-half order; v's are unchanged.
    const qB = f.readFloat32("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
    expect(qB).toEqual(permuteRopeRows(adapter.tensors[0].b, tiny.dim, 4, tiny.heads, true));
    expect(qB).not.toEqual(adapter.tensors[0].b);
    f.close();
    const back = readPeftAdapter(out, tiny.heads, tiny.kvHeads);
    expect(back.alpha).toBe(16);
    for (const t of adapter.tensors) {
      const b = back.tensors.find((x) => x.base === t.base);
      expect(b?.a).toEqual(t.a);
      expect(b?.b).toEqual(t.b);
    }
  });

  it("permutes rope rows as convert_hf_to_gguf does, and back", () => {
    // One head of dim 4, one column: GGUF rows [0,1,2,3] hold HF rows [0,2,1,3].
    const gguf = Float32Array.from([10, 11, 12, 13]);
    expect([...permuteRopeRows(gguf, 4, 1, 1, true)]).toEqual([10, 12, 11, 13]);
    const x = Float32Array.from({ length: 32 }, (_, i) => i);
    expect(permuteRopeRows(permuteRopeRows(x, 16, 2, 2, true), 16, 2, 2, false)).toEqual(x);
  });
});

describe("smallhammer merge", () => {
  beforeAll(() => ensureBuilt());

  it("merges a GGUF adapter and the same adapter as a PEFT directory into the same model", async () => {
    const adapter = randomAdapter();
    writeLoraGguf(join(dir, "cli-adapter.gguf"), adapter);
    writePeftAdapter(join(dir, "cli-peft"), adapter, {
      baseModel: "tiny",
      heads: tiny.heads,
      kvHeads: tiny.kvHeads,
    });
    const a = await runCli([
      "merge",
      "--base",
      tiny.path,
      "--adapter",
      join(dir, "cli-adapter.gguf"),
      "--out",
      join(dir, "m1.gguf"),
    ]);
    expect(a.stderr).toBe("");
    expect(a.status).toBe(0);
    expect(a.stdout).toContain(`merged ${adapter.tensors.length} adapted tensors`);
    const b = await runCli([
      "merge",
      "--base",
      tiny.path,
      "--adapter",
      join(dir, "cli-peft"),
      "--out",
      join(dir, "m2.gguf"),
      "--json",
    ]);
    expect(b.status).toBe(0);
    expect(JSON.parse(b.stdout)).toEqual({
      merged: adapter.tensors.length,
      chatTemplate: "none",
      widened: [],
    });
    expect(readFileSync(join(dir, "m1.gguf")).equals(readFileSync(join(dir, "m2.gguf")))).toBe(true);
  });

  it("generate --lora continues as the merged model does", async () => {
    const adapter = randomAdapter();
    const path = join(dir, "gen-adapter.gguf");
    writeLoraGguf(path, adapter);
    mergeLora(tiny.path, adapter, join(dir, "gen-merged.gguf"));
    const args = ["-p", "hello world", "-n", "12", "--temp", "0", "--json"];
    const viaLora = await runCli(["generate", "-m", tiny.path, "--lora", path, ...args]);
    expect(viaLora.stderr).toBe("");
    const merged = await runCli(["generate", "-m", join(dir, "gen-merged.gguf"), ...args]);
    const plain = await runCli(["generate", "-m", tiny.path, ...args]);
    expect(JSON.parse(viaLora.stdout).text).toBe(JSON.parse(merged.stdout).text);
    expect(JSON.parse(viaLora.stdout).text).not.toBe(JSON.parse(plain.stdout).text);
    const bad = await runCli(["generate", "-m", tiny.path, "--lora", tiny.path, ...args]);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/not a LoRA adapter/);
  });

  it("names a file that is not an adapter in one line, exit 2", async () => {
    const r = await runCli([
      "merge",
      "--base",
      tiny.path,
      "--adapter",
      tiny.path,
      "--out",
      join(dir, "x.gguf"),
    ]);
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain("not a LoRA adapter");
  });
});
