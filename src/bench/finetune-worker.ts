// One LoRA training configuration measured in a process of its own, so that its peak RSS is its
// own:
//
//   node dist/bench/finetune-worker.js '<FinetuneWorkerRequest as JSON>'
//
// Loads the base (frozen matrices in the requested format), adds rank-r adapters, runs `warmup`
// optimizer steps, waits for the machine to go quiet, then times `steps` steps on random tokens.
// Prints one line "RESULT <FinetuneWorkerResult as JSON>" on stdout.
import { readFileSync } from "node:fs";
import { isUserError } from "../errors.js";
import { LORA_TARGETS, parseLoraTargets } from "../model/lora.js";
import type { WeightFormat } from "../runtime/backend.js";
import { RandomWindows, TokenArray } from "../train/data.js";
import { LlamaTrainModel, type TrainMemory } from "../train/model.js";
import { LlamaTrainer } from "../train/trainer.js";
import { Rng } from "../util/random.js";
import { cpuSample, foreignCores, waitForQuiet } from "./infer.js";

export interface FinetuneWorkerRequest {
  path: string;
  /** Storage of the frozen layer matrices: F32 (LoRA), F16, Q8_0 or Q4_0 (QLoRA). */
  format: WeightFormat;
  targets: string;
  rank: number;
  alpha: number;
  batch: number;
  seq: number;
  warmup: number;
  steps: number;
  threads: number;
  quietCores: number;
  quietWaitSeconds: number;
}

export interface FinetuneWorkerResult {
  loadSeconds: number;
  tokensPerSecond: number;
  /** Seconds of each timed step. */
  stepSeconds: number[];
  peakRssBytes: number;
  /** Elements of every tensor, frozen or not. */
  parameters: number;
  trainable: number;
  memory: TrainMemory;
  foreignCores: number;
  losses: number[];
}

function peakRssBytes(): number {
  try {
    const m = /VmHWM:\s*(\d+)\s*kB/.exec(readFileSync("/proc/self/status", "utf8"));
    if (m) return Number(m[1]) * 1024;
  } catch {
    /* no procfs */
  }
  return process.resourceUsage().maxRSS * 1024;
}

async function main(): Promise<void> {
  const req = JSON.parse(process.argv[2]!) as FinetuneWorkerRequest;
  const suffixes = parseLoraTargets(req.targets).map((t) => `.${LORA_TARGETS[t].gguf}.weight`);
  const layerMatrix = (name: string) => name.startsWith("blk.") && !name.endsWith("_norm.weight");
  const loadStarted = performance.now();
  const model = await LlamaTrainModel.load(req.path, {
    batch: req.batch,
    seq: req.seq,
    threads: req.threads,
    trainable: () => false,
    formatOf: (name) => (layerMatrix(name) ? req.format : "F32"),
    lora: {
      targets: (name) => name.startsWith("blk.") && suffixes.some((s) => name.endsWith(s)),
      rank: req.rank,
      alpha: req.alpha,
      dropout: 0.05,
      seed: 1,
    },
  });
  const loadSeconds = (performance.now() - loadStarted) / 1000;
  try {
    const rng = new Rng(2);
    const ids = new Int32Array(Math.max(4 * req.batch * req.seq, 65536));
    for (let i = 0; i < ids.length; i++) ids[i] = 3 + rng.nextInt(model.config.vocab - 3);
    const source = new RandomWindows(new TokenArray(ids), req.batch, req.seq, 3);
    const trainer = new LlamaTrainer(model, source, {
      lr: 1e-4,
      totalSteps: req.warmup + req.steps,
      weightDecay: 0,
    });
    const losses: number[] = [];
    for (let i = 0; i < req.warmup; i++) losses.push(trainer.trainStep().loss);
    await waitForQuiet(req.quietCores, req.quietWaitSeconds);
    const before = cpuSample();
    const started = performance.now();
    const stepSeconds: number[] = [];
    for (let i = 0; i < req.steps; i++) {
      const m = trainer.trainStep();
      stepSeconds.push(m.ms / 1000);
      losses.push(m.loss);
    }
    const seconds = (performance.now() - started) / 1000;
    const result: FinetuneWorkerResult = {
      loadSeconds,
      tokensPerSecond: (req.steps * req.batch * req.seq) / seconds,
      stepSeconds,
      peakRssBytes: peakRssBytes(),
      parameters: model.parameterCount,
      trainable: model.trainableCount,
      memory: model.memory,
      foreignCores: foreignCores(before, cpuSample()),
      losses,
    };
    process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
  } finally {
    await model.dispose();
  }
}

try {
  await main();
} catch (e) {
  // A configuration that does not fit is a result to report, in one line.
  if (!isUserError(e)) throw e;
  process.stderr.write(`${e.message}\n`);
  process.exit(2);
}
