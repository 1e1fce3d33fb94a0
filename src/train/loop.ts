// The run loop pretraining and fine-tuning share: optimizer steps with progress events, one line
// per step in metrics.jsonl, validation, samples and checkpoints on their schedules, and a stop
// after the current step when the signal aborts (saving a checkpoint either way). What differs
// between the two (where batches come from, what a checkpoint records, how a sample is made)
// comes in as hooks.
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import type { LlamaConfig } from "../model/config.js";
import type { TrainMemory } from "./model.js";
import type { LlamaTrainer, StepMetrics } from "./trainer.js";

export const CHECKPOINT = "checkpoint.gguf";
export const METRICS = "metrics.jsonl";
export const SAMPLES = "samples.jsonl";

/** What happened, reported as it happens (the CLI draws progress from these). */
export type TrainEvent =
  | {
      type: "start";
      config: LlamaConfig;
      parameters: number;
      /** Parameters that train (all of them in pretraining; the adapters in LoRA). */
      trainable: number;
      memory: TrainMemory;
      steps: number;
      fromStep: number;
      threads: number;
    }
  | { type: "step"; metrics: StepMetrics; tokensPerSecond: number; etaSeconds: number }
  | { type: "eval"; step: number; valLoss: number }
  | { type: "sample"; step: number; text: string }
  | { type: "checkpoint"; step: number; path: string };

export interface RunOptions {
  /** Compute threads (default: all cores). Results do not depend on it. */
  threads?: number;
  /** Aborting stops after the current step and saves a checkpoint. */
  signal?: AbortSignal;
  onEvent?: (e: TrainEvent) => void;
}

/** When things happen in a run, in optimizer steps (0 = only at the end, or never for samples). */
export interface LoopSchedule {
  steps: number;
  evalEvery: number;
  sampleEvery: number;
  checkpointEvery: number;
}

export interface LoopHooks {
  /** Writes the run's checkpoint (atomically). */
  save(): void;
  /** The validation loss, or undefined when the run has no validation data. */
  validate(): number | undefined;
  /** A sample of the model's text, and the prompt it continues when there is one (appended to samples.jsonl). */
  sample?(): string | { prompt: string; text: string };
}

export interface LoopResult {
  /** Loss of the last step run (NaN when none ran). */
  loss: number;
  valLoss?: number;
  interrupted: boolean;
  fromStep: number;
}

/** Writes a small file through a temporary name and a rename. */
export function writeAtomic(path: string, text: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
}

/**
 * Prepares a run directory for resuming at `step`: removes what a checkpoint write cut short left
 * (its temporary file; the checkpoint is the last whole one) and drops the lines of
 * metrics.jsonl and samples.jsonl written after the checkpoint (their steps run again).
 */
export function trimRunForResume(run: string, step: number): void {
  for (const f of readdirSync(run))
    if (f.startsWith(`${CHECKPOINT}.tmp-`)) rmSync(join(run, f), { force: true });
  for (const file of [METRICS, SAMPLES]) {
    const path = join(run, file);
    if (!existsSync(path)) continue;
    const keep = readFileSync(path, "utf8")
      .split("\n")
      .filter((line) => {
        try {
          return (JSON.parse(line) as { step: number }).step <= step;
        } catch {
          return false;
        }
      });
    writeAtomic(path, keep.map((l) => `${l}\n`).join(""));
  }
}

/** The last line of a run's metrics.jsonl (undefined when there is none). */
export function lastMetrics(run: string): { step: number; loss: number; val_loss?: number } | undefined {
  const path = join(run, METRICS);
  if (!existsSync(path)) return undefined;
  const lines = readFileSync(path, "utf8").trimEnd().split("\n");
  try {
    return JSON.parse(lines.at(-1) ?? "") as { step: number; loss: number; val_loss?: number };
  } catch {
    return undefined;
  }
}

/**
 * Runs `trainer` from its current step to `schedule.steps` in the run directory `run`. A trainer
 * already at the last step runs nothing and changes no file (no event, no checkpoint).
 */
export async function runTrainingLoop(
  trainer: LlamaTrainer,
  schedule: LoopSchedule,
  run: string,
  hooks: LoopHooks,
  options: RunOptions,
): Promise<LoopResult> {
  const model = trainer.model;
  const emit = options.onEvent ?? (() => {});
  const checkpointPath = join(run, CHECKPOINT);
  const fromStep = trainer.step;
  if (fromStep >= schedule.steps) {
    const last = lastMetrics(run);
    return { loss: last?.loss ?? Number.NaN, valLoss: last?.val_loss, interrupted: false, fromStep };
  }
  emit({
    type: "start",
    config: model.config,
    parameters: model.parameterCount,
    trainable: model.trainableCount,
    memory: model.memory,
    steps: schedule.steps,
    fromStep,
    threads: model.threads,
  });
  const save = () => {
    hooks.save();
    emit({ type: "checkpoint", step: trainer.step, path: checkpointPath });
  };
  const validate = (): number | undefined => {
    const v = hooks.validate();
    if (v !== undefined) emit({ type: "eval", step: trainer.step, valLoss: v });
    return v;
  };
  const sample = (sampler: NonNullable<LoopHooks["sample"]>) => {
    const made = sampler();
    const { prompt, text } = typeof made === "string" ? { prompt: undefined, text: made } : made;
    writeFileSync(join(run, SAMPLES), `${JSON.stringify({ step: trainer.step, prompt, text })}\n`, {
      flag: "a",
    });
    emit({ type: "sample", step: trainer.step, text });
  };

  let loss = Number.NaN;
  let valLoss: number | undefined;
  let interrupted = false;
  const started = performance.now();
  let tokensRun = 0;
  while (trainer.step < schedule.steps) {
    if (options.signal?.aborted) {
      interrupted = true;
      break;
    }
    const m = trainer.trainStep();
    loss = m.loss;
    tokensRun += m.tokens;
    const seconds = (performance.now() - started) / 1000;
    const tokensPerSecond = tokensRun / seconds;
    const line: Record<string, number> = {
      step: m.step,
      loss: m.loss,
      lr: m.lr,
      grad_norm: m.gradNorm,
      tokens: trainer.tokensSeen,
      tokens_per_s: Math.round(tokensPerSecond),
      ms: Math.round(m.ms),
    };
    const last = trainer.step === schedule.steps;
    if ((schedule.evalEvery > 0 && m.step % schedule.evalEvery === 0) || last) {
      valLoss = validate();
      if (valLoss !== undefined) line.val_loss = valLoss;
    }
    writeFileSync(join(run, METRICS), `${JSON.stringify(line)}\n`, { flag: "a" });
    emit({
      type: "step",
      metrics: m,
      tokensPerSecond,
      etaSeconds: ((schedule.steps - trainer.step) * seconds) / (trainer.step - fromStep),
    });
    if (hooks.sample && schedule.sampleEvery > 0 && m.step % schedule.sampleEvery === 0) sample(hooks.sample);
    if (!last && schedule.checkpointEvery > 0 && m.step % schedule.checkpointEvery === 0) save();
    // Let signal handlers run between steps.
    await yieldToEventLoop();
  }
  save();
  return { loss, valLoss, interrupted, fromStep };
}
