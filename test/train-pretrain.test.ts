/**
 * Pretraining runs through the library: the run directory's files, an interrupted run resumed to
 * the same losses as an uninterrupted one, and export to a model GGUF that our inference runs with
 * the training forward pass's logits and llama.cpp loads with the same greedy choices.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, type Llama } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufHeader } from "../src/formats/gguf.js";
import { metadataGetter } from "../src/model/config.js";
import { loadModel } from "../src/model/model.js";
import { Tokenizer } from "../src/tokenizer/index.js";
import { readCheckpoint, restoreCheckpoint } from "../src/train/checkpoint.js";
import { TokenArray } from "../src/train/data.js";
import { exportCheckpoint } from "../src/train/export.js";
import { LlamaTrainModel } from "../src/train/model.js";
import { PRESETS } from "../src/train/presets.js";
import {
  type PretrainData,
  type PretrainSettings,
  pretrain,
  pretrainPlan,
  resumePretraining,
} from "../src/train/pretrain.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let data: PretrainData;
let tokenizer: Tokenizer;

const settings: PretrainSettings = {
  shape: { dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 128, contextLength: 64 },
  steps: 24,
  batch: 4,
  seq: 32,
  lr: 3e-3,
  warmupSteps: 3,
  evalEvery: 8,
  evalBatches: 2,
  sampleEvery: 12,
  sampleTokens: 12,
  checkpointEvery: 8,
  seed: 5,
};

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "sh-pretrain-"));
  const tokPath = join(dir, "tokenizer.gguf");
  writeTinyLlama(tokPath);
  tokenizer = Tokenizer.fromGgufMetadata(metadataGetter(readGgufHeader(tokPath)));
  const text = readFileSync(join(__dirname, "./fixtures/tinyshakespeare.txt"), "utf8")
    .slice(0, 60_000)
    .toLowerCase();
  const ids = Int32Array.from(tokenizer.encode(text));
  const cut = Math.floor(ids.length * 0.9);
  data = {
    source: dir,
    train: new TokenArray(ids.subarray(0, cut)),
    val: new TokenArray(ids.subarray(cut)),
    tokenizerPath: tokPath,
  };
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface MetricsLine {
  step: number;
  loss: number;
  lr: number;
  grad_norm: number;
  tokens: number;
  val_loss?: number;
}

/** The metrics lines without their timings. */
function metrics(run: string): MetricsLine[] {
  return readFileSync(join(run, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => {
      const { step, loss, lr, grad_norm, tokens, val_loss } = JSON.parse(l) as MetricsLine;
      return { step, loss, lr, grad_norm, tokens, ...(val_loss === undefined ? {} : { val_loss }) };
    });
}

describe("pretrain", () => {
  let full: string;

  it("writes config.json, one metrics line per step, samples and a checkpoint", async () => {
    full = join(dir, "full");
    const events: string[] = [];
    const summary = await pretrain(settings, data, full, { threads: 2, onEvent: (e) => events.push(e.type) });
    expect(summary).toMatchObject({ steps: 24, ranSteps: 24, interrupted: false });
    const m = metrics(full);
    expect(m.map((l) => l.step)).toEqual(Array.from({ length: 24 }, (_, i) => i + 1));
    expect(m.filter((l) => l.val_loss !== undefined).map((l) => l.step)).toEqual([8, 16, 24]);
    expect(m[23]!.loss).toBeLessThan(m[0]!.loss - 1);
    const samples = readFileSync(join(full, "samples.jsonl"), "utf8").trim().split("\n");
    expect(samples.map((l) => JSON.parse(l).step)).toEqual([12, 24]);
    expect(JSON.parse(readFileSync(join(full, "config.json"), "utf8")).model.dim).toBe(64);
    expect(events[0]).toBe("start");
    expect(events.filter((e) => e === "checkpoint")).toHaveLength(3);
    expect(readCheckpoint(join(full, "checkpoint.gguf")).info.trainer.step).toBe(24);
    await expect(pretrain(settings, data, full)).rejects.toThrow(/already holds a run/);
    expect(pretrainPlan(settings, tokenizer.vocabSize).parameters).toBe(summary.parameters);
  });

  it("refuses a model that does not fit in one WebAssembly memory, with the estimate", async () => {
    const huge: PretrainSettings = { ...settings, shape: PRESETS["110m"]!, batch: 64, seq: 1024 };
    const plan = pretrainPlan(huge, tokenizer.vocabSize);
    expect(plan.parameters).toBeGreaterThan(80e6);
    expect(plan.memory.total).toBeGreaterThan(4 * 2 ** 30);
    const gib = (plan.memory.total / 2 ** 30).toFixed(2);
    await expect(pretrain(huge, data, join(dir, "huge"))).rejects.toThrow(
      new RegExp(`needs ${gib} GiB .*more than one WebAssembly memory holds`),
    );
    // the same run with recomputation and a smaller batch fits
    expect(
      pretrainPlan({ ...huge, batch: 4, recompute: true }, tokenizer.vocabSize).memory.total,
    ).toBeLessThan(2 ** 31);
  });

  it("an interrupted run resumes to the same losses and files as an uninterrupted one", async () => {
    const run = join(dir, "interrupted");
    const controller = new AbortController();
    const first = await pretrain(settings, data, run, {
      threads: 2,
      signal: controller.signal,
      onEvent: (e) => {
        if (e.type === "step" && e.metrics.step === 10) controller.abort();
      },
    });
    expect(first).toMatchObject({ interrupted: true, ranSteps: 10 });
    expect(readCheckpoint(join(run, "checkpoint.gguf")).info.trainer.step).toBe(10);
    const second = await resumePretraining(run, data, { threads: 1 });
    expect(second).toMatchObject({ interrupted: false, ranSteps: 14, steps: 24 });
    expect(metrics(run)).toEqual(metrics(full));
    expect(readFileSync(join(run, "samples.jsonl"), "utf8")).toBe(
      readFileSync(join(full, "samples.jsonl"), "utf8"),
    );
  });
});

describe("export", () => {
  let llama: Llama;
  beforeAll(async () => {
    llama = await getLlama({ gpu: false, build: "never", logLevel: "error" as never });
  });
  afterAll(async () => {
    await llama?.dispose();
  });

  it("gives our inference the training forward pass's next-token logits", async () => {
    const ckpt = join(dir, "full", "checkpoint.gguf");
    const out = join(dir, "model-f32.gguf");
    const summary = await exportCheckpoint(join(dir, "full"), out);
    expect(summary).toMatchObject({ type: "f32", step: 24, tensors: 2 + 2 * 9 + 1 });
    expect(readGgufHeader(out).tensors.some((t) => t.name.startsWith("adam"))).toBe(false);
    const prompt = tokenizer.encode("first citizen:\nbefore we proceed");
    const { header, info } = readCheckpoint(ckpt);
    const trainModel = await LlamaTrainModel.create(info.config, { batch: 1, seq: 32, threads: 1 });
    const inference = await loadModel(out, { worker: false, threads: 1 });
    try {
      restoreCheckpoint(ckpt, header, trainModel);
      const want = trainModel.nextTokenLogits(prompt);
      const got = inference.llama.forward(prompt, 0);
      const scale = want.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      for (let i = 0; i < want.length; i++)
        expect(Math.abs(got[i]! - want[i]!)).toBeLessThanOrEqual(1e-4 * scale);
      expect(inference.tokenize("hello")).toEqual(tokenizer.encode("hello"));
      // and back into training memory from the exported file: the same bits
      const again = await LlamaTrainModel.load(out, { batch: 1, seq: 32, threads: 2 });
      try {
        expect(again.nextTokenLogits(prompt)).toEqual(want);
      } finally {
        await again.dispose();
      }
    } finally {
      await trainModel.dispose();
      await inference.dispose();
    }
  });

  it("a q8_0 export loads in llama.cpp and makes the same greedy choices as ours", async () => {
    const out = join(dir, "model-q8_0.gguf");
    await exportCheckpoint(join(dir, "full", "checkpoint.gguf"), out, "q8_0");
    expect(existsSync(`${out}.f32-${process.pid}`)).toBe(false);
    const prompt = tokenizer.encode("first citizen:");
    const model = await llama.loadModel({ modelPath: out });
    const ctx = await model.createContext({ contextSize: 64, threads: 1 });
    const theirs: number[] = [];
    for await (const t of ctx.getSequence().evaluate(prompt as never, { temperature: 0 })) {
      theirs.push(t as number);
      if (theirs.length >= 8) break;
    }
    await ctx.dispose();
    await model.dispose();
    // teacher-forced along llama.cpp's choices: ours is the same token, or within a hair of it
    const ours = await loadModel(out, { worker: false, threads: 1, contextSize: 64 });
    try {
      let logits = ours.llama.forward(prompt, 0);
      for (let i = 0; i < theirs.length; i++) {
        let best = 0;
        for (let v = 1; v < logits.length; v++) if (logits[v]! > logits[best]!) best = v;
        expect(logits[best]! - logits[theirs[i]!]!, `step ${i}`).toBeLessThanOrEqual(1e-2);
        logits = ours.llama.forward([theirs[i]!], prompt.length + i);
      }
      // a frozen Q8_0 base for fine-tuning: the matrices stay Q8_0, only the norms train
      const base = await LlamaTrainModel.load(out, {
        batch: 1,
        seq: 32,
        threads: 2,
        trainable: (name) => name.endsWith("norm.weight"),
      });
      try {
        expect(base.param("blk.0.attn_q.weight").weight.format).toBe("Q8_0");
        expect(base.param("output.weight").weight.format).toBe("F32");
        const want = ours.llama.forward(prompt, 0).slice();
        const got = base.nextTokenLogits(prompt);
        const scale = want.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
        for (let i = 0; i < want.length; i++)
          expect(Math.abs(got[i]! - want[i]!)).toBeLessThanOrEqual(2e-2 * scale);
      } finally {
        await base.dispose();
      }
    } finally {
      await ours.dispose();
    }
  });
});
