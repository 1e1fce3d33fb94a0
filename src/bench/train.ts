// `npm run bench -- train`: pretraining step throughput (forward + backward + AdamW, f32) on the
// 15M and 110M shapes with 1 and 2 threads, achieved GFLOP/s against the measured wasm matmul
// ceiling, an estimate of the share of a step spent outside matrix products, and tokenizer
// training MB/s at vocab 8192. The peer is the same model and step in PyTorch (bench/llama_torch.py,
// see torch-peer.ts), at the same batch, seq and threads, when a Python with torch is found;
// without it there is no ratio.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { UserError } from "../errors.js";
import type { LlamaConfig } from "../model/config.js";
import { Runtime } from "../runtime/runtime.js";
import { trainTokenizer } from "../tokenizer/train.js";
import { RandomWindows, TokenArray } from "../train/data.js";
import { LlamaTrainModel } from "../train/model.js";
import { TrainOps } from "../train/ops.js";
import { LlamaTrainer } from "../train/trainer.js";
import { Rng } from "../util/random.js";
import { waitForQuiet } from "./infer.js";
import {
  checkSameModel,
  describeTorchPeer,
  findTorchPeer,
  runTorchPeer,
  type TorchPeer,
  type TorchPeerResult,
} from "./torch-peer.js";

const SHAPES: Record<
  string,
  { dim: number; layers: number; heads: number; ffn: number; seq: number; batch: number }
> = {
  "15M": { dim: 288, layers: 6, heads: 6, ffn: 768, seq: 256, batch: 4 },
  "110M": { dim: 768, layers: 12, heads: 12, ffn: 2048, seq: 1024, batch: 1 },
};

function config(s: (typeof SHAPES)[string]): LlamaConfig {
  return {
    architecture: "llama",
    dim: s.dim,
    layers: s.layers,
    heads: s.heads,
    kvHeads: s.heads,
    headDim: s.dim / s.heads,
    ffn: s.ffn,
    vocab: 32000,
    contextLength: s.seq,
    normEps: 1e-5,
    rope: { dim: s.dim / s.heads, freqBase: 10000, freqScale: 1, neox: false },
  };
}

/** Matrix-product FLOPs of one training token (forward 2·params, backward 4·params) plus attention. */
function flopsPerToken(c: LlamaConfig, seq: number): { matmul: number; attention: number } {
  const perLayer = 4 * c.dim * c.dim + 3 * c.dim * c.ffn;
  const matmul = 6 * (c.layers * perLayer + c.dim * c.vocab);
  // QKᵀ and AV: 2·2·T·d per token forward (causal: half), backward twice that.
  const attention = 6 * c.layers * seq * c.dim;
  return { matmul, attention };
}

async function matmulCeiling(threads: number): Promise<number> {
  const rows = 768;
  const cols = 768;
  const n = 256;
  const rt = await Runtime.create({ threads, shardBytes: [(rows * cols + n * cols + n * rows) * 4 + 65536] });
  try {
    const w = rt.alloc(0, rows * cols * 4);
    const x = rt.alloc(0, n * cols * 4);
    const out = rt.alloc(0, n * rows * 4);
    const rng = new Rng(1);
    rng.fillNormal(rt.f32(0, w, rows * cols), 0.02);
    rng.fillNormal(rt.f32(0, x, n * cols), 1);
    const ops = new TrainOps(rt, 0);
    const weight = { shard: 0, offset: w, format: "F32" as const, rows, cols };
    ops.matmul(weight, x, n, out, false);
    ops.flush();
    let best = Number.POSITIVE_INFINITY;
    for (let r = 0; r < 5; r++) {
      const t = performance.now();
      for (let i = 0; i < 10; i++) ops.matmul(weight, x, n, out, false);
      ops.flush();
      best = Math.min(best, (performance.now() - t) / 10);
    }
    return (2 * rows * cols * n) / (best / 1000) / 1e9;
  } finally {
    await rt.dispose();
  }
}

/** The best of `steps` timed steps after one warm-up, and the model's parameter count. */
async function stepSeconds(
  c: LlamaConfig,
  batch: number,
  seq: number,
  threads: number,
  steps: number,
): Promise<{ seconds: number; parameters: number; trainable: number }> {
  const model = await LlamaTrainModel.create(c, { batch, seq, threads });
  try {
    model.initialize(1);
    const ids = new Int32Array(200_000);
    const rng = new Rng(2);
    for (let i = 0; i < ids.length; i++) ids[i] = rng.nextU32() % c.vocab;
    const trainer = new LlamaTrainer(model, new RandomWindows(new TokenArray(ids), batch, seq, 3), {
      lr: 1e-4,
      totalSteps: steps + 1,
    });
    trainer.trainStep(); // warm-up
    let best = Number.POSITIVE_INFINITY;
    for (let i = 0; i < steps; i++) best = Math.min(best, trainer.trainStep().ms / 1000);
    return { seconds: best, parameters: model.parameterCount, trainable: model.trainableCount };
  } finally {
    await model.dispose();
  }
}

/** The same pretraining step in PyTorch: its best of `steps` after one warm-up, as ours. */
function runPeerStep(
  peer: TorchPeer,
  c: LlamaConfig,
  batch: number,
  seq: number,
  threads: number,
  steps: number,
): Promise<TorchPeerResult> {
  return runTorchPeer(peer, {
    mode: "pretrain",
    dim: c.dim,
    layers: c.layers,
    heads: c.heads,
    kvHeads: c.kvHeads,
    ffn: c.ffn,
    vocab: c.vocab,
    batch,
    seq,
    threads,
    warmup: 1,
    steps,
    timing: "best",
    lr: 1e-4,
    weightDecay: 0.1,
    gradClip: 1,
    normEps: c.normEps,
    ropeBase: c.rope.freqBase,
  });
}

export async function runTrainBench(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      shapes: { type: "string", default: "15M,110M" },
      threads: { type: "string", default: "1,2" },
      steps: { type: "string", default: "3" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(
      "npm run bench -- train [--shapes 15M,110M] [--threads 1,2] [--steps 3]\n\n" +
        "PyTorch peer: bench/llama_torch.py run by SMALLHAMMER_PYTHON, else python3 or /usr/bin/python3,\n" +
        "whichever imports torch (Debian: apt-get install python3-torch).\n",
    );
    return;
  }
  const steps = Number(values.steps);
  if (!Number.isInteger(steps) || steps < 1)
    throw new UserError(`--steps: expected a positive integer, got "${values.steps}"`);
  const threads = values.threads!.split(",").map((t) => {
    const n = Number(t);
    if (!Number.isInteger(n) || n < 1)
      throw new UserError(`--threads: expected positive integers, got "${t}"`);
    return n;
  });
  const shapes = values.shapes!.split(",").map((name) => {
    const s = SHAPES[name.trim()];
    if (!s)
      throw new UserError(`--shapes: unknown shape "${name}" (known: ${Object.keys(SHAPES).join(", ")})`);
    return { name: name.trim(), ...s };
  });
  const peer = findTorchPeer();
  const foreign = await waitForQuiet(0.3, 60, (s) => process.stderr.write(`${s}\n`));
  const disturbed = foreign > 0.3 ? ` DISTURBED: other processes used ${foreign.toFixed(2)} cores` : "";
  const peerLine = describeTorchPeer(peer);
  process.stdout.write(
    `pretraining step: forward + backward + AdamW, f32, vocab 32000 (best of ${steps} steps)${disturbed}\npeer: ${peerLine}\n\n`,
  );
  process.stdout.write(
    `${"shape".padEnd(6)} ${"thr".padStart(3)} ${"batch×seq".padEnd(10)} ${"tok/s".padStart(8)} ${"GFLOP/s".padStart(8)} ${"ceiling".padStart(8)} ${"of ceil".padStart(8)} ${"outside mm".padStart(10)} ${"torch tok/s".padStart(11)} ${"ratio".padStart(6)}\n`,
  );
  for (const t of threads) {
    const ceiling = await matmulCeiling(t);
    for (const s of shapes) {
      const c = config(s);
      const ours = await stepSeconds(c, s.batch, s.seq, t, steps);
      const sec = ours.seconds;
      const tokens = s.batch * s.seq;
      let theirs: TorchPeerResult | undefined;
      let note = "";
      if (peer) {
        try {
          theirs = await runPeerStep(peer, c, s.batch, s.seq, t, steps);
        } catch (e) {
          note = `  PyTorch: ${(e as Error).message.split("\n")[0]}`;
        }
      }
      // A different model would make the ratio meaningless: stop.
      if (theirs) checkSameModel(theirs, ours, `${s.name} pretraining`);
      const f = flopsPerToken(c, s.seq);
      const gflops = ((f.matmul + f.attention) * tokens) / sec / 1e9;
      // Time the products would take at the ceiling; the rest of the step is everything else.
      const mmSeconds = (f.matmul * tokens) / (ceiling * 1e9);
      const outside = Math.max(0, 1 - mmSeconds / sec);
      process.stdout.write(
        `${s.name.padEnd(6)} ${String(t).padStart(3)} ${`${s.batch}×${s.seq}`.padEnd(10)} ${(tokens / sec).toFixed(0).padStart(8)} ${gflops.toFixed(1).padStart(8)} ${ceiling.toFixed(1).padStart(8)} ${`${((100 * gflops) / ceiling).toFixed(0)}%`.padStart(8)} ${`${(100 * outside).toFixed(0)}%`.padStart(10)} ${(theirs ? theirs.tokensPerSecond.toFixed(0) : "-").padStart(11)} ${(theirs ? `${(tokens / sec / theirs.tokensPerSecond).toFixed(2)}x` : "-").padStart(6)}${note}\n`,
      );
    }
  }
  const corpus = readFileSync(new URL("../../test/fixtures/tinyshakespeare.txt", import.meta.url), "utf8");
  const t0 = performance.now();
  await trainTokenizer(corpus.split(/\n\n+/), { vocabSize: 8192 });
  const seconds = (performance.now() - t0) / 1000;
  process.stdout.write(
    `\ntokenizer training, vocab 8192, tinyshakespeare (${(corpus.length / 1e6).toFixed(2)} MB): ${seconds.toFixed(2)} s, ${(corpus.length / 1e6 / seconds).toFixed(2)} MB/s (target >= 1 MB/s)\n`,
  );
}
