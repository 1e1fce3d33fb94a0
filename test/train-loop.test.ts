/**
 * The training step (accumulation, clipping, AdamW on the schedule), deterministic data order, and
 * checkpoints: a restored trainer continues with bit-identical losses; a damaged or truncated
 * checkpoint is refused.
 */
import {
  closeSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { LlamaConfig } from "../src/model/config.js";
import { readCheckpoint, restoreCheckpoint, saveCheckpoint } from "../src/train/checkpoint.js";
import { RandomWindows, TokenArray } from "../src/train/data.js";
import { LlamaTrainModel } from "../src/train/model.js";
import { learningRate, resolveOptimizerOptions } from "../src/train/optimizer.js";
import { adamwRef } from "../src/train/reference.js";
import { LlamaTrainer, type TrainerOptions } from "../src/train/trainer.js";
import { Rng } from "../src/util/random.js";

const dir = mkdtempSync(join(tmpdir(), "sh-train-loop-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const config: LlamaConfig = {
  architecture: "llama",
  dim: 32,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  headDim: 8,
  ffn: 64,
  vocab: 23,
  contextLength: 32,
  normEps: 1e-5,
  rope: { dim: 8, freqBase: 10000, freqScale: 1, neox: false },
};

/** A learnable stream: a few fixed phrases in random order. */
function corpus(length: number, seed: number): Int32Array {
  const phrases = [
    [1, 4, 9, 16, 22, 3],
    [2, 7, 7, 11, 5],
    [1, 8, 13, 21, 0, 6, 19],
    [2, 10, 12, 14],
  ];
  const rng = new Rng(seed);
  const out: number[] = [];
  while (out.length < length) out.push(...phrases[rng.nextInt(phrases.length)]!);
  return Int32Array.from(out.slice(0, length));
}

const data = new TokenArray(corpus(4000, 1));
const hyper: TrainerOptions = { lr: 3e-3, totalSteps: 40, warmupSteps: 4, accumulation: 2, gradClip: 1 };

async function makeTrainer(threads = 2, seed = 42) {
  const model = await LlamaTrainModel.create(config, { batch: 3, seq: 16, threads });
  model.initialize(seed);
  return new LlamaTrainer(model, new RandomWindows(data, 3, 16, seed), hyper);
}

describe("schedule", () => {
  it("warms up linearly and decays along a cosine to minLr at the last step", () => {
    const o = resolveOptimizerOptions({ lr: 1, minLr: 0.1, warmupSteps: 4, totalSteps: 14 });
    expect([0, 1, 2, 3].map((s) => learningRate(o, s))).toEqual([0.25, 0.5, 0.75, 1]);
    expect(learningRate(o, 4)).toBe(1);
    expect(learningRate(o, 9)).toBeCloseTo(0.1 + 0.45 * (1 + Math.cos((Math.PI * 5) / 9)), 12);
    expect(learningRate(o, 13)).toBeCloseTo(0.1, 12);
  });
});

describe("training step", () => {
  it("is AdamW on the accumulated, clipped mean-loss gradient", async () => {
    const trainer = await makeTrainer();
    const model = trainer.model;
    const reference = await LlamaTrainModel.create(config, { batch: 3, seq: 16, threads: 2 });
    try {
      reference.initialize(42);
      const source = new RandomWindows(data, 3, 16, 42);
      const batches = [source.next(), source.next()];
      const count = batches.reduce((s, b) => s + b.targets.length, 0);
      let loss = 0;
      for (const b of batches) {
        reference.setBatch(b);
        loss += reference.forwardBackward(1 / count);
      }
      const norm = Math.sqrt(reference.gradientSumSquares());
      const metrics = trainer.trainStep();
      expect(metrics.loss).toBe(loss / count);
      expect(metrics.gradNorm).toBe(norm);
      expect(norm).toBeGreaterThan(1); // so the clip to 1 acts
      expect(metrics.lr).toBe(3e-3 / 4);
      const o = trainer.optimizer;
      for (const p of reference.params) {
        const param = Float64Array.from(reference.weights(p));
        const m = new Float64Array(p.length);
        const v = new Float64Array(p.length);
        adamwRef(param, reference.gradient(p), m, v, {
          lr: metrics.lr,
          beta1: o.beta1,
          beta2: o.beta2,
          eps: o.eps,
          weightDecay: p.decay ? o.weightDecay : 0,
          gradScale: 1 / norm,
          step: 1,
        });
        const got = model.weights(p);
        for (let i = 0; i < p.length; i++) {
          expect(Math.abs(got[i]! - param[i]!), `${p.name}[${i}]`).toBeLessThanOrEqual(
            1e-3 * metrics.lr + 1e-7,
          );
        }
        expect(model.gradient(p).every((g) => g === 0)).toBe(true);
      }
    } finally {
      await reference.dispose();
      await model.dispose();
    }
  });

  it("learns: the same seed gives the same losses, and the loss falls", async () => {
    const a = await makeTrainer();
    const b = await makeTrainer(1);
    try {
      const la: number[] = [];
      const lb: number[] = [];
      for (let s = 0; s < 40; s++) {
        la.push(a.trainStep().loss);
        if (s < 5) lb.push(b.trainStep().loss);
      }
      expect(lb).toEqual(la.slice(0, 5));
      const first = la.slice(0, 3).reduce((x, y) => x + y) / 3;
      const last = la.slice(-3).reduce((x, y) => x + y) / 3;
      expect(first).toBeGreaterThan(2.8); // about ln(23) at the start
      expect(last).toBeLessThan(first * 0.6);
      const valid = a.evaluate(new RandomWindows(new TokenArray(corpus(1000, 2)), 3, 16, 7), 4);
      expect(valid).toBeLessThan(first * 0.6);
      // the model continues a phrase it has learned
      const next = a.generate([1, 4, 9], 3, { temperature: 0 });
      expect(next).toEqual([16, 22, 3]);
    } finally {
      await a.model.dispose();
      await b.model.dispose();
    }
  });
});

describe("checkpoints", () => {
  it("a restored trainer continues with bit-identical losses", async () => {
    const path = join(dir, "ckpt.gguf");
    const a = await makeTrainer();
    const info = () => ({
      config,
      tiedEmbeddings: false,
      batch: 3,
      seq: 16,
      accumulation: 2,
      optimizer: a.optimizer,
      trainer: a.state(),
      run: { note: "test" },
    });
    try {
      for (let s = 0; s < 5; s++) a.trainStep();
      saveCheckpoint(path, a.model, info());
      const after = [0, 1, 2, 3].map(() => a.trainStep().loss);

      const { header, info: read } = readCheckpoint(path);
      expect(read.trainer.step).toBe(5);
      expect(read.run).toEqual({ note: "test" });
      expect(read.config).toMatchObject({ dim: 32, layers: 2, heads: 4, kvHeads: 2, ffn: 64, vocab: 23 });
      const model = await LlamaTrainModel.create(read.config, {
        batch: read.batch,
        seq: read.seq,
        threads: 1,
      });
      try {
        restoreCheckpoint(path, header, model);
        const b = new LlamaTrainer(model, new RandomWindows(data, 3, 16, 999), {
          ...read.optimizer,
          accumulation: read.accumulation,
        });
        b.restore(read.trainer);
        expect([0, 1, 2, 3].map(() => b.trainStep().loss)).toEqual(after);
        expect(b.step).toBe(9);
      } finally {
        await model.dispose();
      }
    } finally {
      await a.model.dispose();
    }
  });

  it("refuses a damaged or truncated file, whatever a temporary file beside it holds", async () => {
    const path = join(dir, "ckpt.gguf");
    const good = readFileSync(path);
    const { header } = readCheckpoint(path);
    const model = await LlamaTrainModel.create(config, { batch: 3, seq: 16, threads: 1 });
    try {
      // one flipped bit in the data of the last tensor
      const bad = join(dir, "flipped.gguf");
      writeFileSync(bad, good);
      const fd = openSync(bad, "r+");
      const at = statSync(bad).size - 5;
      writeSync(fd, Uint8Array.of(good[at]! ^ 0x10), 0, 1, at);
      closeSync(fd);
      expect(() => restoreCheckpoint(bad, readCheckpoint(bad).header, model)).toThrow(/checksum/);
      // cut short, as a write stopped midway would leave it
      const cut = join(dir, "cut.gguf");
      writeFileSync(cut, good.subarray(0, good.length >> 1));
      expect(() => readCheckpoint(cut)).toThrow(/truncated/);
      // a half-written temporary file next to the checkpoint changes nothing
      writeFileSync(`${path}.tmp-12345`, good.subarray(0, 1000));
      restoreCheckpoint(path, header, model);
    } finally {
      await model.dispose();
    }
  });
});
