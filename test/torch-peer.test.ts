/**
 * The PyTorch peer of the training benchmarks (bench/llama_torch.py through src/bench/torch-peer.ts)
 * computes smallhammer's model: with the same weights, its float64 loss equals the float64
 * reference Llama's (src/train/reference.ts) on a model with grouped-query heads, with and without
 * LoRA adapters; its parameter counts equal smallhammer's; and a timed run of each mode reports
 * what the benches read. Runs where a Python that imports torch is found; the checks that need
 * none always run.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { runChild } from "../src/bench/child.js";
import {
  checkSameModel,
  findTorchPeer,
  runTorchPeer,
  type TorchPeerRequest,
  torchPeerScript,
} from "../src/bench/torch-peer.js";
import { isUserError } from "../src/errors.js";
import type { LlamaConfig } from "../src/model/config.js";
import { loraLinearRef } from "../src/train/lora-reference.js";
import { LlamaTrainModel, type TrainModelOptions } from "../src/train/model.js";
import { linearRef, llamaLossRef } from "../src/train/reference.js";
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
  contextLength: 8,
  normEps: 1e-5,
  rope: { dim: 4, freqBase: 10000, freqScale: 1, neox: false },
};
const batch = 2;
const seq = 6;
const tokens = [1, 5, 18, 3, 3, 7, 2, 9, 11, 0, 4, 16];
const targets = [5, 18, 3, -1, 7, 12, 9, 11, -1, 4, 16, 1];
const lora = { rank: 4, alpha: 8, targets: ["q", "v", "down"] as const };
const loraSuffixes = [".attn_q.weight", ".attn_v.weight", ".ffn_down.weight"];

const peer = findTorchPeer();
const dir = mkdtempSync(join(tmpdir(), "torch-peer-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function request(mode: "pretrain" | "lora"): TorchPeerRequest {
  return {
    mode,
    dim: config.dim,
    layers: config.layers,
    heads: config.heads,
    kvHeads: config.kvHeads,
    ffn: config.ffn,
    vocab: config.vocab,
    batch,
    seq,
    threads: 1,
    warmup: 1,
    steps: 2,
    timing: "best",
    lr: 1e-3,
    weightDecay: 0.1,
    gradClip: 1,
    normEps: config.normEps,
    ropeBase: config.rope.freqBase,
    ...(mode === "lora"
      ? { rank: lora.rank, alpha: lora.alpha, dropout: 0.05, targets: [...lora.targets] }
      : {}),
  };
}

/** Our model with weights large enough that the loss is far from ln(vocab), and LoRA B not zero. */
async function ourModel(withLora: boolean): Promise<LlamaTrainModel> {
  const options: TrainModelOptions = { batch, seq, threads: 1 };
  if (withLora) {
    options.trainable = () => false;
    options.lora = {
      targets: (name) => loraSuffixes.some((s) => name.endsWith(s)),
      rank: lora.rank,
      alpha: lora.alpha,
    };
  }
  const model = await LlamaTrainModel.create(config, options);
  model.initialize(5);
  const rng = new Rng(7);
  for (const p of model.params) {
    const w = model.weights(p);
    if (p.decay) for (let i = 0; i < w.length; i++) w[i] = w[i]! * 12;
    else for (let i = 0; i < w.length; i++) w[i] = 0.6 + 0.8 * rng.nextFloat();
  }
  return model;
}

/** The peer's float64 loss of the batch under `model`'s weights. */
async function peerLoss(model: LlamaTrainModel, mode: "pretrain" | "lora") {
  const weightsFile = join(dir, `${mode}.json`);
  writeFileSync(
    weightsFile,
    JSON.stringify(Object.fromEntries(model.params.map((p) => [p.name, Array.from(model.weights(p))]))),
  );
  const req = { ...request(mode), evaluate: { weightsFile, tokens, targets } };
  return runChild<{ loss: number; parameters: number }>(
    peer!.python,
    [torchPeerScript(), JSON.stringify(req)],
    120,
  );
}

function referenceLoss(model: LlamaTrainModel): number {
  const weights = new Map(model.params.map((p) => [p.name, Float64Array.from(model.weights(p))]));
  const positions = [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5];
  const segStart = [0, 0, 0, 0, 0, 0, 6, 6, 6, 6, 6, 6];
  return llamaLossRef(
    config,
    weights,
    { tokens, targets, positions, segStart },
    (name, x, w, rows, cols, n) => {
      const a = weights.get(`${name}.lora_a`);
      const b = weights.get(`${name}.lora_b`);
      if (!a || !b) return linearRef(x, w, rows, cols, n);
      const layer = { rows, cols, rank: lora.rank, n, scale: lora.alpha / lora.rank, dropout: 0, seed: 0 };
      return loraLinearRef(x, w, a, b, layer);
    },
  );
}

describe.skipIf(!peer)("bench/llama_torch.py against smallhammer", () => {
  for (const mode of ["pretrain", "lora"] as const) {
    it(`${mode}: the same weights give the reference's loss, and the same parameter count`, async () => {
      const model = await ourModel(mode === "lora");
      try {
        const theirs = await peerLoss(model, mode);
        const want = referenceLoss(model);
        expect(want).toBeGreaterThan(0.5);
        expect(Math.abs(theirs.loss - want)).toBeLessThanOrEqual(1e-12 * want);
        expect(theirs.parameters).toBe(model.parameterCount);
      } finally {
        await model.dispose();
      }
    });

    it(`${mode}: a timed run trains the same number of parameters as ours`, async () => {
      const model = await ourModel(mode === "lora");
      try {
        const r = await runTorchPeer(peer!, request(mode), 120);
        checkSameModel(r, { parameters: model.parameterCount, trainable: model.trainableCount }, mode);
        expect(r.trainable).toBe(mode === "lora" ? model.trainableCount : model.parameterCount);
        expect(r.losses).toHaveLength(3);
        for (const loss of r.losses) expect(Number.isFinite(loss)).toBe(true);
        expect(r.stepSeconds).toHaveLength(2);
        expect(r.tokensPerSecond).toBeCloseTo((batch * seq) / Math.min(...r.stepSeconds), 6);
        expect(r.peakRssBytes).toBeGreaterThan(1 << 20);
        expect(r.threads).toBe(1);
        expect(r.torchVersion).toBe(peer!.torchVersion);
      } finally {
        await model.dispose();
      }
    });
  }

  it("refuses a bad request in one line", async () => {
    await expect(
      runTorchPeer(peer!, { ...request("lora"), targets: ["q", "x" as "q"] }, 120),
    ).rejects.toThrow(
      /^llama_torch\.py: targets must be a list of q, k, v, o, gate, up, down, got \['q', 'x'\]$/,
    );
  });
});

describe("peer checks", () => {
  it("a different parameter count stops the bench", () => {
    const result = { parameters: 100, trainable: 10 } as Parameters<typeof checkSameModel>[0];
    expect(() => checkSameModel(result, { parameters: 100, trainable: 10 }, "x")).not.toThrow();
    expect(() => checkSameModel(result, { parameters: 101, trainable: 10 }, "15M pretraining")).toThrow(
      /^15M pretraining: the PyTorch peer's model has 100 parameters \(10 trainable\), smallhammer's 101/,
    );
    expect(() => checkSameModel(result, { parameters: 100, trainable: 11 }, "x")).toThrow(/does not compute/);
  });

  it("SMALLHAMMER_PYTHON that cannot import torch is a user error naming it", () => {
    const saved = process.env.SMALLHAMMER_PYTHON;
    process.env.SMALLHAMMER_PYTHON = join(dir, "no-such-python");
    try {
      findTorchPeer();
      expect.unreachable();
    } catch (e) {
      expect(isUserError(e)).toBe(true);
      expect((e as Error).message).toMatch(/^SMALLHAMMER_PYTHON=.*no-such-python cannot import torch: /);
    } finally {
      if (saved === undefined) delete process.env.SMALLHAMMER_PYTHON;
      else process.env.SMALLHAMMER_PYTHON = saved;
    }
  });
});
