/**
 * LoRA in the training model: the loss against the float64 reference Llama with merged weights
 * W + (alpha/rank)·B·A, every LoRA gradient against finite differences of that reference, the
 * frozen base without gradients, and with B = 0 the base model's loss bit for bit. Bounds as in
 * train-model.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LlamaConfig } from "../src/model/config.js";
import { LlamaTrainModel, LORA_PROJECTIONS, type TokenBatch } from "../src/train/model.js";
import { llamaLossRef } from "../src/train/reference.js";
import { Rng } from "../src/util/random.js";

const config: LlamaConfig = {
  architecture: "llama",
  dim: 16,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  headDim: 4,
  ffn: 24,
  vocab: 19,
  contextLength: 16,
  normEps: 1e-5,
  rope: { dim: 4, freqBase: 10000, freqScale: 1, neox: false },
};
const batch: TokenBatch = {
  tokens: Int32Array.from([1, 5, 18, 3, 3, 7, 2, 9, 11, 0, 4, 16]),
  targets: Int32Array.from([5, 18, 3, -1, 7, 12, 9, 11, -1, 4, 16, 1]),
  positions: Int32Array.from([0, 1, 2, 3, 4, 5, 0, 1, 2, 0, 1, 2]),
  segments: Int32Array.from([0, 0, 0, 0, 0, 0, 4, 4, 4, 9, 9, 9]),
};
const segStart = [0, 0, 0, 0, 0, 0, 6, 6, 6, 9, 9, 9];
const count = batch.targets.filter((t) => t >= 0).length;
const lora = { rank: 4, alpha: 6, targets: LORA_PROJECTIONS };

async function makeModel(withLora: boolean, randomB: boolean): Promise<LlamaTrainModel> {
  const model = await LlamaTrainModel.create(config, {
    batch: 2,
    seq: 6,
    threads: 2,
    trainable: () => false,
    lora: withLora ? lora : undefined,
  });
  model.initialize(5);
  const rng = new Rng(99);
  for (const p of model.params) {
    if (p.name.includes(".lora_")) continue;
    const w = model.weights(p);
    if (p.decay) for (let i = 0; i < w.length; i++) w[i] = w[i]! * 12;
    else for (let i = 0; i < w.length; i++) w[i] = 0.6 + 0.8 * rng.nextFloat();
  }
  if (withLora) {
    model.initializeLora(7);
    if (randomB)
      for (const p of model.params) if (p.name.endsWith(".lora_b")) rng.fillNormal(model.weights(p), 0.5);
  }
  return model;
}

/** Reference loss with every adapted weight merged: W + s·B·A. */
function refLoss(weights: Map<string, Float64Array>): number {
  const merged = new Map<string, Float64Array>();
  for (const [name, w] of weights) if (!name.includes(".lora_")) merged.set(name, Float64Array.from(w));
  const s = lora.alpha / lora.rank;
  for (const [name, a] of weights) {
    if (!name.endsWith(".lora_a")) continue;
    const base = name.slice(0, -".lora_a".length);
    const b = weights.get(`${base}.lora_b`)!;
    const w = merged.get(base)!;
    const cols = a.length / lora.rank;
    const rows = b.length / lora.rank;
    for (let o = 0; o < rows; o++)
      for (let i = 0; i < cols; i++) {
        let d = 0;
        for (let r = 0; r < lora.rank; r++) d += b[o * lora.rank + r]! * a[r * cols + i]!;
        w[o * cols + i]! += s * d;
      }
  }
  return llamaLossRef(config, merged, { ...batch, positions: batch.positions!, segStart });
}

describe("LoRA training", () => {
  let model: LlamaTrainModel;
  let loss: number;
  beforeAll(async () => {
    model = await makeModel(true, true);
    model.setBatch(batch);
    loss = model.forwardBackward(1 / count) / count;
  });
  afterAll(async () => model?.dispose());

  it("trains only A and B, and its loss matches the merged float64 reference", () => {
    const trained = model.params.filter((p) => p.trainable).map((p) => p.name);
    expect(trained).toHaveLength(2 * LORA_PROJECTIONS.length * config.layers);
    expect(trained.every((n) => n.includes(".lora_"))).toBe(true);
    const weights = new Map(model.params.map((p) => [p.name, Float64Array.from(model.weights(p))]));
    const want = refLoss(weights);
    expect(Math.abs(loss - want)).toBeLessThanOrEqual(1e-5 * want);
  });

  it("every A and B gradient matches finite differences of the reference", () => {
    const weights = new Map(model.params.map((p) => [p.name, Float64Array.from(model.weights(p))]));
    const rng = new Rng(3);
    const step = 1e-4;
    for (const p of model.params.filter((q) => q.trainable)) {
      const g = model.gradient(p);
      const w = weights.get(p.name)!;
      const largest = g.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      expect(largest, `${p.name} has a gradient`).toBeGreaterThan(1e-5);
      const picks = new Set<number>([g.findIndex((x) => Math.abs(x) === largest)]);
      while (picks.size < 4) picks.add(rng.nextInt(w.length));
      for (const i of picks) {
        const keep = w[i]!;
        w[i] = keep + step;
        const up = refLoss(weights);
        w[i] = keep - step;
        const down = refLoss(weights);
        w[i] = keep;
        const numeric = (up - down) / (2 * step);
        expect(
          Math.abs(g[i]! - numeric),
          `${p.name}[${i}]: analytic ${g[i]}, numeric ${numeric}`,
        ).toBeLessThanOrEqual(1e-3 * largest + 1e-7);
      }
    }
  });

  it("with B = 0 gives the base model's loss bit for bit, and the same bits with recomputation", async () => {
    const fresh = await makeModel(true, false);
    const base = await makeModel(false, false);
    const recompute = await LlamaTrainModel.create(config, {
      batch: 2,
      seq: 6,
      threads: 1,
      trainable: () => false,
      lora,
      recompute: true,
    });
    try {
      fresh.setBatch(batch);
      base.setBatch(batch);
      expect(fresh.evaluate()).toBe(base.evaluate());
      for (const p of recompute.params) recompute.weights(p).set(model.weights(model.param(p.name)));
      recompute.setBatch(batch);
      expect(recompute.forwardBackward(1 / count) / count).toBe(loss);
      for (const p of recompute.params.filter((q) => q.trainable))
        expect(recompute.gradient(p), p.name).toEqual(model.gradient(model.param(p.name)));
    } finally {
      await Promise.all([fresh.dispose(), base.dispose(), recompute.dispose()]);
    }
  });

  it("tokens without a target contribute exactly zero gradient", async () => {
    // Segment 2 (positions 6..11) has no targets; changing its tokens must not change one bit of
    // any gradient, since its losses are masked and attention does not cross segments.
    const masked = (tokens: number[]): TokenBatch => ({
      tokens: Int32Array.from(tokens),
      targets: Int32Array.from([5, 18, 3, 3, 7, 12, -1, -1, -1, -1, -1, -1]),
      segments: Int32Array.from([1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]),
    });
    const run = async (tokens: number[]) => {
      const m = await makeModel(true, true);
      try {
        m.setBatch(masked(tokens));
        const l = m.forwardBackward(1 / 6);
        return { l, grads: m.params.filter((p) => p.trainable).map((p) => m.gradient(p).slice()) };
      } finally {
        await m.dispose();
      }
    };
    const a = await run([1, 5, 18, 3, 3, 7, 2, 9, 11, 0, 4, 16]);
    const b = await run([1, 5, 18, 3, 3, 7, 17, 1, 1, 8, 13, 6]);
    expect(b.l).toBe(a.l);
    for (let i = 0; i < a.grads.length; i++) expect(b.grads[i]).toEqual(a.grads[i]);
    expect(a.grads.some((g) => g.some((x) => x !== 0))).toBe(true);
  });
});
