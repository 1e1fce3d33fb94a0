/**
 * LoRA in the training model: the LoRA kernels against their twins, the LoRA layer's reference
 * backward against finite differences, the whole model's A and B gradients (with dropout) against
 * finite differences of the float64 reference Llama, B = 0 giving the base model's exact logits,
 * merging equal to the adapter at run time, loss masks giving exactly zero gradient, and a frozen
 * Q8_0 base (QLoRA) whose input gradient runs in row blocks.
 *
 * Bounds as in train-model.test.ts: losses within 1e-5 relative of float64; a gradient entry within
 * 1e-3 · (largest |gradient| of its tensor) + 1e-7 of the finite difference (step 1e-4).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GGMLType } from "../src/formats/ggml-types.js";
import type { LlamaConfig } from "../src/model/config.js";
import { addLoraDelta } from "../src/model/lora.js";
import { dequantizeRow, quantizeRow } from "../src/quant/reference.js";
import {
  dropoutKeeps,
  dropoutThreshold,
  type LoraLayerRef,
  loraDropoutSeed,
  loraForwardRef,
  loraLinearBackwardRef,
  loraLinearRef,
} from "../src/train/lora-reference.js";
import { LlamaTrainModel, type TokenBatch, type TrainModelOptions } from "../src/train/model.js";
import { type LayerLinearRef, linearRef, llamaLossRef } from "../src/train/reference.js";
import { Rng } from "../src/util/random.js";
import { WasmHarness } from "./helpers/wasm.js";

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

const RANK = 4;
const ALPHA = 8;
const DROPOUT = 0.25;
const LORA_SEED = 77;
const adapted = (name: string) => /attn_q|attn_v|attn_output|ffn_gate|ffn_down/.test(name);

/** A frozen base with large weights (visible gradients everywhere) and adapters on five matrices. */
async function makeModel(
  options: Partial<TrainModelOptions> = {},
  lora: { dropout?: number; randomB?: boolean } | false = {},
): Promise<LlamaTrainModel> {
  const model = await LlamaTrainModel.create(config, {
    batch: 2,
    seq: 6,
    threads: 2,
    trainable: () => false,
    ...(lora
      ? {
          lora: {
            targets: adapted,
            rank: RANK,
            alpha: ALPHA,
            dropout: lora.dropout ?? DROPOUT,
            seed: LORA_SEED,
          },
        }
      : {}),
    ...options,
  });
  model.initialize(5);
  const rng = new Rng(99);
  for (const p of model.params) {
    if (p.loraOf) continue;
    const w = model.weights(p);
    if (p.decay) for (let i = 0; i < w.length; i++) w[i] = w[i]! * 12;
    else for (let i = 0; i < w.length; i++) w[i] = 0.6 + 0.8 * rng.nextFloat();
  }
  if (lora) {
    model.initializeLora();
    if (lora.randomB !== false) {
      for (const p of model.params) {
        if (p.loraOf && p.name.endsWith(".lora_b")) rng.fillNormal(model.weights(p), 0.5);
      }
    }
  }
  return model;
}

function weightMap(model: LlamaTrainModel): Map<string, Float64Array> {
  return new Map(model.params.map((p) => [p.name, Float64Array.from(model.weights(p))]));
}

/** The reference's layer product with the model's adapters and its pass-0 dropout masks. */
function loraLinear(
  model: LlamaTrainModel,
  weights: Map<string, Float64Array>,
  dropout: number,
): LayerLinearRef {
  const bases = [...new Set(model.params.filter((p) => p.loraOf).map((p) => p.loraOf!))];
  return (name, x, w, rows, cols, n) => {
    const index = bases.indexOf(name);
    if (index < 0) return linearRef(x, w, rows, cols, n);
    const g: LoraLayerRef = {
      rows,
      cols,
      rank: RANK,
      n,
      scale: ALPHA / RANK,
      dropout,
      seed: loraDropoutSeed(LORA_SEED, 0, index),
    };
    return loraLinearRef(x, w, weights.get(`${name}.lora_a`)!, weights.get(`${name}.lora_b`)!, g);
  };
}

function refLoss(model: LlamaTrainModel, weights: Map<string, Float64Array>, dropout = DROPOUT): number {
  return llamaLossRef(
    config,
    weights,
    { ...batch, positions: batch.positions!, segStart },
    loraLinear(model, weights, dropout),
  );
}

describe("LoRA kernels", () => {
  /**
   * Against their twins, split over uneven row ranges as threads would split them. Bounds: f32
   * sums against float64, |err| <= 1e-5 · Σ|terms| per element (the sums of absolute products).
   */
  it("forward, dB, du with dx, and dA match the float64 reference, with and without dropout", () => {
    const h = new WasmHarness(64);
    const rng = new Rng(4);
    const g0 = { rows: 24, cols: 36, rank: 8, n: 7, scale: 2 };
    const rand = (k: number) =>
      Float64Array.from(Float32Array.from({ length: k }, () => rng.nextFloat() * 2 - 1));
    const x = rand(g0.n * g0.cols);
    const w = new Float64Array(g0.rows * g0.cols);
    const a = rand(g0.rank * g0.cols);
    const b = rand(g0.rows * g0.rank);
    const dy = rand(g0.n * g0.rows);
    const abs = (v: Float64Array) => Float64Array.from(v, Math.abs);
    const put = (v: Float64Array) => h.putF32(Float32Array.from(v));
    const [xp, ap, bp, dyp] = [put(x), put(a), put(b), put(dy)];
    for (const dropout of [0, 0.3]) {
      const g: LoraLayerRef = { ...g0, dropout, seed: 0xdeadbeef };
      const threshold = dropoutThreshold(dropout);
      const scale = Math.fround(g.scale / (1 - dropout));
      const ref = loraForwardRef(x, a, b, g);
      const back = loraLinearBackwardRef(dy, x, w, a, b, g);
      // the same sums over absolute values, without dropout: a bound on every term's size
      const plain = { ...g, dropout: 0, scale };
      const bound = loraForwardRef(abs(x), abs(a), abs(b), plain);
      const backBound = loraLinearBackwardRef(abs(dy), abs(x), w, abs(a), abs(b), plain);
      const close = (got: Float32Array, want: Float64Array, size: Float64Array, what: string) => {
        for (let i = 0; i < want.length; i++) {
          const err = Math.abs(got[i]! - want[i]!);
          expect(err, `${what}[${i}] dropout ${dropout}`).toBeLessThanOrEqual(1e-5 * size[i]! + 1e-7);
        }
      };
      const u = h.alloc(g.n * g.rank * 4);
      const out = h.putF32(new Float32Array(g.n * g.rows).fill(1));
      const scratch = h.alloc(g.cols * 4 * 2);
      const forward = (r0: number, r1: number, tid: number) =>
        h.k.loraForward!(
          xp,
          ap,
          bp,
          u,
          out,
          g.cols,
          g.rows,
          g.rank,
          scale,
          threshold,
          g.seed,
          1,
          scratch,
          g.cols * 4,
          r0,
          r1,
          tid,
        );
      forward(0, 3, 0);
      forward(3, g.n, 1);
      close(h.f32(u, g.n * g.rank), ref.u, bound.u, "u");
      close(
        h.f32(out, g.n * g.rows),
        ref.delta.map((v) => v + 1),
        bound.delta.map((v) => v + 1),
        "out",
      );
      const db = h.putF32(new Float32Array(g.rows * g.rank));
      h.k.loraBackwardB!(dyp, u, db, g.n, g.rows, g.rank, 0, 8);
      h.k.loraBackwardB!(dyp, u, db, g.n, g.rows, g.rank, 8, g.rows);
      close(h.f32(db, g.rows * g.rank), back.db, backBound.db, "dB");
      const du = h.alloc(g.n * g.rank * 4);
      const dx = h.putF32(new Float32Array(g.n * g.cols));
      h.k.loraBackwardInput!(dyp, ap, bp, du, dx, g.cols, g.rows, g.rank, scale, threshold, g.seed, 0, 4);
      h.k.loraBackwardInput!(dyp, ap, bp, du, dx, g.cols, g.rows, g.rank, scale, threshold, g.seed, 4, g.n);
      close(h.f32(du, g.n * g.rank), back.du, backBound.du, "du");
      close(h.f32(dx, g.n * g.cols), back.dx, backBound.dx, "dx");
      const da = h.putF32(new Float32Array(g.rank * g.cols));
      h.k.loraBackwardA!(xp, du, da, g.n, g.cols, g.rank, scale, threshold, g.seed, 0, 12);
      h.k.loraBackwardA!(xp, du, da, g.n, g.cols, g.rank, scale, threshold, g.seed, 12, g.cols);
      close(h.f32(da, g.rank * g.cols), back.da, backBound.da, "dA");
    }
  });

  it("the dropout mask drops the share asked for", () => {
    for (const p of [0.05, 0.25, 0.5]) {
      const threshold = dropoutThreshold(p);
      let dropped = 0;
      const n = 100_000;
      for (let i = 0; i < n; i++) if (!dropoutKeeps(1234, i, threshold)) dropped++;
      expect(Math.abs(dropped / n - p)).toBeLessThan(0.01);
    }
  });
});

describe("LoRA layer reference", () => {
  it("its backward pass matches finite differences, with dropout", () => {
    const rng = new Rng(11);
    const g: LoraLayerRef = { rows: 8, cols: 12, rank: 4, n: 5, scale: 2, dropout: 0.3, seed: 1234 };
    const rand = (k: number) => Float64Array.from({ length: k }, () => rng.nextFloat() * 2 - 1);
    const x = rand(g.n * g.cols);
    const w = rand(g.rows * g.cols);
    const a = rand(g.rank * g.cols);
    const b = rand(g.rows * g.rank);
    const dy = rand(g.n * g.rows);
    const loss = () => {
      const y = loraLinearRef(x, w, a, b, g);
      let s = 0;
      for (let i = 0; i < y.length; i++) s += y[i]! * dy[i]!;
      return s;
    };
    const { dx, da, db } = loraLinearBackwardRef(dy, x, w, a, b, g);
    for (const [values, grad] of [
      [x, dx],
      [a, da],
      [b, db],
    ] as const) {
      for (let i = 0; i < values.length; i++) {
        const keep = values[i]!;
        values[i] = keep + 1e-5;
        const up = loss();
        values[i] = keep - 1e-5;
        const down = loss();
        values[i] = keep;
        expect(Math.abs((up - down) / 2e-5 - grad[i]!)).toBeLessThanOrEqual(1e-6 * (1 + Math.abs(grad[i]!)));
      }
    }
    // some inputs are dropped: their gradient is only the base's
    const keeps = Array.from({ length: x.length }, (_, i) =>
      dropoutKeeps(g.seed, i, dropoutThreshold(g.dropout)),
    );
    expect(keeps.filter((k) => !k).length).toBeGreaterThan(5);
  });
});

describe("LoRA in the training model", () => {
  let model: LlamaTrainModel;
  let loss: number;
  let weights: Map<string, Float64Array>;
  beforeAll(async () => {
    model = await makeModel();
    weights = weightMap(model);
    expect(model.setBatch(batch)).toBe(count);
    loss = model.forwardBackward(1 / count) / count;
  });
  afterAll(async () => {
    await model?.dispose();
  });

  it("trains only A and B of the adapted matrices, with llama.cpp's names and dims", () => {
    const trainable = model.params.filter((p) => p.trainable);
    expect(trainable.map((p) => p.name)).toContain("blk.1.ffn_down.weight.lora_b");
    expect(trainable).toHaveLength(2 * 5 * config.layers);
    expect(trainable.every((p) => p.loraOf)).toBe(true);
    const a = model.param("blk.0.attn_v.weight.lora_a");
    const b = model.param("blk.0.attn_v.weight.lora_b");
    expect(a.dims).toEqual([config.dim, RANK]);
    expect(b.dims).toEqual([RANK, config.kvHeads * config.headDim]);
    expect(model.loraPass).toBe(1);
  });

  it("the loss with dropout matches the float64 reference with the same masks", () => {
    const want = refLoss(model, weights);
    expect(Math.abs(loss - want)).toBeLessThanOrEqual(1e-5 * want);
    // and dropout mattered: without it the loss differs
    expect(Math.abs(refLoss(model, weights, 0) - want)).toBeGreaterThan(1e-4);
  });

  it("A and B gradients match finite differences of the reference", () => {
    const rng = new Rng(3);
    const step = 1e-4;
    for (const p of model.params.filter((q) => q.trainable)) {
      const g = model.gradient(p);
      const w = weights.get(p.name)!;
      const largest = g.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      expect(largest, `${p.name} has a gradient`).toBeGreaterThan(1e-4);
      const picks = new Set<number>([g.findIndex((x) => Math.abs(x) === largest)]);
      while (picks.size < 4) picks.add(rng.nextInt(w.length));
      for (const i of picks) {
        const keep = w[i]!;
        w[i] = keep + step;
        const up = refLoss(model, weights);
        w[i] = keep - step;
        const down = refLoss(model, weights);
        w[i] = keep;
        const numeric = (up - down) / (2 * step);
        expect(Math.abs(g[i]! - numeric), `${p.name}[${i}]: ${g[i]} vs ${numeric}`).toBeLessThanOrEqual(
          1e-3 * largest + 1e-7,
        );
      }
    }
  });

  it("gives the same bits with recomputation and one thread; the next pass draws new masks", async () => {
    const grads = new Map(
      model.params.filter((p) => p.trainable).map((p) => [p.name, model.gradient(p).slice()]),
    );
    for (const options of [{ recompute: true }, { threads: 1 }]) {
      const other = await makeModel(options);
      try {
        other.setBatch(batch);
        expect(other.forwardBackward(1 / count) / count).toBe(loss);
        for (const p of other.params.filter((q) => q.trainable)) {
          expect(other.gradient(p), p.name).toEqual(grads.get(p.name));
        }
        // pass 1 uses other masks; setting the pass back repeats pass 0 exactly
        other.zeroGradients();
        expect(other.forwardBackward(1 / count) / count).not.toBe(loss);
        other.zeroGradients();
        other.loraPass = 0;
        expect(other.forwardBackward(1 / count) / count).toBe(loss);
      } finally {
        await other.dispose();
      }
    }
  });
});

describe("LoRA output", () => {
  const prompt = [1, 5, 18, 3, 3, 7];

  it("with B = 0 (its initial value) the logits are the base model's, bit for bit", async () => {
    const lora = await makeModel({}, { randomB: false });
    const base = await makeModel({}, false);
    try {
      expect(lora.params.some((p) => p.loraOf && model32(lora, p.name).some((v) => v !== 0))).toBe(true);
      expect(lora.nextTokenLogits(prompt)).toEqual(base.nextTokenLogits(prompt));
    } finally {
      await lora.dispose();
      await base.dispose();
    }
  });

  it("merging W + s·B·A equals applying the adapter at run time, within float tolerance", async () => {
    const lora = await makeModel();
    const merged = await makeModel({}, false);
    try {
      const tensors = lora.loraTensors();
      expect(tensors).toHaveLength(5 * config.layers);
      for (const t of tensors) {
        const w = Float32Array.from(merged.weights(merged.param(t.base)));
        addLoraDelta(w, t, ALPHA / RANK);
        merged.weights(merged.param(t.base)).set(w);
      }
      const a = lora.nextTokenLogits(prompt);
      const b = merged.nextTokenLogits(prompt);
      const base = await makeModel({}, false);
      const c = base.nextTokenLogits(prompt);
      await base.dispose();
      let largest = 0;
      let moved = 0;
      for (let i = 0; i < a.length; i++) {
        largest = Math.max(largest, Math.abs(a[i]!));
        moved = Math.max(moved, Math.abs(a[i]! - c[i]!));
      }
      expect(moved, "the adapter changes the output").toBeGreaterThan(1e-2 * largest);
      for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThanOrEqual(1e-4 * largest);
    } finally {
      await lora.dispose();
      await merged.dispose();
    }
  });
});

function model32(model: LlamaTrainModel, name: string): Float32Array {
  return model.weights(model.param(name));
}

describe("loss masks", () => {
  it("a batch whose targets are all masked gives exactly zero gradient", async () => {
    const m = await makeModel();
    try {
      m.setBatch({ ...batch, targets: new Int32Array(batch.tokens.length).fill(-1) });
      expect(m.forwardBackward(1)).toBe(0);
      for (const p of m.params.filter((q) => q.trainable)) {
        expect(
          m.gradient(p).every((g) => g === 0),
          p.name,
        ).toBe(true);
      }
    } finally {
      await m.dispose();
    }
  });

  it("the gradient is the sum of the trained tokens' own gradients: masked ones add nothing", async () => {
    const whole = await makeModel({}, { dropout: 0 });
    const parts = await makeModel({}, { dropout: 0 });
    try {
      whole.setBatch(batch);
      whole.forwardBackward(1 / count);
      // one trained token at a time, all others masked, accumulated
      for (let t = 0; t < batch.targets.length; t++) {
        if (batch.targets[t]! < 0) continue;
        const targets = new Int32Array(batch.targets.length).fill(-1);
        targets[t] = batch.targets[t]!;
        parts.setBatch({ ...batch, targets });
        parts.forwardBackward(1 / count);
      }
      for (const p of whole.params.filter((q) => q.trainable)) {
        const a = whole.gradient(p);
        const b = parts.gradient(parts.param(p.name));
        const largest = a.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
        expect(largest).toBeGreaterThan(0);
        for (let i = 0; i < a.length; i++)
          expect(Math.abs(a[i]! - b[i]!), p.name).toBeLessThanOrEqual(1e-5 * largest);
      }
    } finally {
      await whole.dispose();
      await parts.dispose();
    }
  });
});

describe("QLoRA: a frozen quantized base", () => {
  // ffn 320 > 256 rows: the gate and up input gradients run in two row blocks. F16 runs the same
  // forward arithmetic as f32, so its gradients agree closely; Q8_0 also rounds the activations
  // of every forward product to 8 bits (measured: 6e-3 to 6e-2 relative error of a gradient).
  for (const [format, type, bound] of [
    ["F16", GGMLType.F16, 1e-4],
    ["Q8_0", GGMLType.Q8_0, 0.1],
  ] as const) {
    it(`${format}: trains the adapters like a base of the decoded values, through several row blocks`, async () => {
      const shape: LlamaConfig = { ...config, dim: 32, headDim: 8, ffn: 320 };
      const lora = { targets: adapted, rank: RANK, alpha: ALPHA, dropout: 0.1, seed: 5 };
      const options = { batch: 2, seq: 6, threads: 2, trainable: () => false, lora };
      const layerMatrix = (name: string) => name.startsWith("blk.") && !name.endsWith("norm.weight");
      const quantized = await LlamaTrainModel.create(shape, {
        ...options,
        formatOf: (name) => (layerMatrix(name) ? format : "F32"),
      });
      const f32 = await LlamaTrainModel.create(shape, options);
      try {
        f32.initialize(8);
        f32.initializeLora();
        const rng = new Rng(6);
        for (const p of f32.params) {
          const w = f32.weights(p);
          if (p.name.endsWith(".lora_b")) rng.fillNormal(w, 0.5);
          else if (p.decay && !p.loraOf) for (let i = 0; i < w.length; i++) w[i] = w[i]! * 3;
          const target = quantized.param(p.name);
          if (target.weight.format === "F32") {
            quantized.weights(target).set(w);
            continue;
          }
          const cols = p.dims[0]!;
          const bytes = quantized.storedBytes(target);
          const rowBytes = bytes.length / (p.length / cols);
          for (let r = 0; r < p.length / cols; r++) {
            const row = w.subarray(r * cols, (r + 1) * cols);
            const dst = bytes.subarray(r * rowBytes, (r + 1) * rowBytes);
            quantizeRow(type, row, dst);
            row.set(dequantizeRow(type, dst, cols));
          }
        }
        expect(quantized.params.filter((p) => p.weight.format === format)).toHaveLength(14);
        quantized.setBatch(batch);
        f32.setBatch(batch);
        const lq = quantized.forwardBackward(1 / count) / count;
        const lf = f32.forwardBackward(1 / count) / count;
        expect(Math.abs(lq - lf)).toBeLessThan(bound * lf);
        for (const p of f32.params.filter((x) => x.trainable)) {
          const gf = f32.gradient(p);
          const gq = quantized.gradient(quantized.param(p.name));
          let norm = 0;
          let error = 0;
          for (let i = 0; i < gf.length; i++) {
            norm += gf[i]! ** 2;
            error += (gq[i]! - gf[i]!) ** 2;
          }
          expect(norm).toBeGreaterThan(0);
          expect(Math.sqrt(error / norm), p.name).toBeLessThan(bound);
        }
        // the quantized model holds no f32 copy of a quantized matrix
        expect(quantized.memory.weights).toBeLessThan(f32.memory.weights);
      } finally {
        await quantized.dispose();
        await f32.dispose();
      }
    });
  }
});
