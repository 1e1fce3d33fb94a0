import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UserError } from "../src/errors.js";
import { LlamaModel } from "../src/model/llama.js";
import { loadModel, type Model } from "../src/model/model.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let path: string;
let model: Model;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "sh-model-"));
  path = join(dir, "tiny.gguf");
  writeTinyLlama(path, { dim: 64, layers: 4, heads: 4, kvHeads: 2, ffn: 160, seed: 5, weightScale: 0.2 });
  model = await loadModel(path, { worker: false, threads: 2, contextSize: 128 });
});
afterAll(async () => {
  await model?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

async function collect(it: AsyncIterable<string>): Promise<string> {
  let s = "";
  for await (const piece of it) s += piece;
  return s;
}

describe("Model API", () => {
  it("tokenizes and detokenizes", () => {
    const ids = model.tokenize("hello world");
    expect(ids[0]).toBe(model.tokenizer.bosId);
    expect(model.detokenize(ids.slice(1))).toBe("hello world");
  });

  it("generates the same text for the same seed, and greedy text for temperature 0", async () => {
    const a = await collect(model.generate("the cat", { maxTokens: 24, seed: 42, temperature: 0.9 }));
    const b = await collect(model.generate("the cat", { maxTokens: 24, seed: 42, temperature: 0.9 }));
    expect(a).toBe(b);
    expect(a.length).toBeGreaterThan(0);
    const g1 = await collect(model.generate("the cat", { maxTokens: 16, temperature: 0 }));
    const g2 = await collect(model.generate("the cat", { maxTokens: 16, temperature: 0, seed: 7 }));
    expect(g1).toBe(g2);
  });

  it("the KV prefix cache does not change results", async () => {
    const opts = { maxTokens: 16, temperature: 0 };
    const warm = await collect(model.generate("the dog and the cat", opts));
    model.reset();
    const cold = await collect(model.generate("the dog and the cat", opts));
    expect(warm).toBe(cold);
  });

  it("stops before a stop string and reports counts", async () => {
    const full = await collect(model.generate("the", { maxTokens: 30, temperature: 0 }));
    const stop = full.slice(5, 8);
    let info: { completionTokens: number; finishReason: string } | undefined;
    const cut = await collect(
      model.generate("the", { maxTokens: 30, temperature: 0, stop: [stop], onDone: (i) => (info = i) }),
    );
    expect(full.startsWith(cut)).toBe(true);
    expect(cut.includes(stop)).toBe(false);
    expect(info?.finishReason).toBe("stop");
  });

  it("chat renders the conversation with a template and streams a reply", async () => {
    const m = await loadModel(path, { worker: false, threads: 1, contextSize: 128, template: "chatml" });
    try {
      const reply = await collect(
        m.chat([{ role: "user", content: "hi" }], { maxTokens: 8, temperature: 0 }),
      );
      expect(typeof reply).toBe("string");
      expect(m.formatChat([{ role: "user", content: "hi" }])).toContain("<|im_start|>user\nhi<|im_end|>");
    } finally {
      await m.dispose();
    }
  });

  it("rejects a prompt longer than the context with a UserError giving the counts", async () => {
    const long = "a b c d ".repeat(200);
    await expect(collect(model.generate(long))).rejects.toThrow(UserError);
    await expect(collect(model.generate(long))).rejects.toThrow(/tokens.*context of 128/);
  });

  it("aborts between tokens", async () => {
    const ac = new AbortController();
    let n = 0;
    const run = async () => {
      for await (const _ of model.generate("the", { maxTokens: 100, temperature: 0, signal: ac.signal })) {
        if (++n === 3) ac.abort();
      }
    };
    await expect(run()).rejects.toMatchObject({ name: "AbortError", code: "ABORT_ERR" });
    expect(n).toBe(3);
  });
});

describe("memory shards", () => {
  it("a model spread over several wasm memories computes the same logits as one memory", async () => {
    const one = await LlamaModel.load(path, { threads: 2, contextSize: 64 });
    const many = await LlamaModel.load(path, {
      threads: 2,
      contextSize: 64,
      maxShardBytes: (1 << 20) + 400_000,
    });
    try {
      expect(one.shardCount).toBe(1);
      expect(many.shardCount).toBeGreaterThan(2);
      const tokens = [1, 40, 41, 42, 43, 44];
      const a = Float32Array.from(one.forward(tokens, 0));
      const b = Float32Array.from(many.forward(tokens, 0));
      expect(b).toEqual(a);
      const a2 = Float32Array.from(one.forward([45], tokens.length));
      const b2 = Float32Array.from(many.forward([45], tokens.length));
      expect(b2).toEqual(a2);
    } finally {
      await one.dispose();
      await many.dispose();
    }
  });
});
