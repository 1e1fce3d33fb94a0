// Pretraining runs: a model shape, token data and a run directory holding config.json,
// checkpoint.gguf, metrics.jsonl (one line per step) and samples.jsonl. A run stops at its last
// step or when `signal` aborts (the CLI's SIGINT), saving a checkpoint either way; `resume`
// continues a run from its checkpoint with the same losses an uninterrupted run would have had,
// or, given a new length, extends (or shortens) it: the cosine schedule is recomputed for the new
// total. A finished run resumed with nothing new to do runs nothing and changes no file.
import { existsSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { UserError } from "../errors.js";
import { type GgufHeader, readGgufHeader } from "../formats/gguf.js";
import { type LlamaConfig, metadataGetter } from "../model/config.js";
import { Tokenizer } from "../tokenizer/index.js";
import { type CheckpointInfo, readCheckpoint, restoreCheckpoint, saveCheckpoint } from "./checkpoint.js";
import { RandomWindows, type TokenSequence } from "./data.js";
import {
  CHECKPOINT,
  lastMetrics,
  METRICS,
  type RunOptions,
  runTrainingLoop,
  SAMPLES,
  type TrainEvent,
  trimRunForResume,
  writeAtomic,
} from "./loop.js";
import { LlamaTrainModel, type TrainMemory, trainMemory, trainParameterCount } from "./model.js";
import { configOfShape, type ModelShape, readModelShape } from "./presets.js";
import { LlamaTrainer } from "./trainer.js";

export type { RunOptions };

/** How to continue a run: the run options, and optionally a new length for it. */
export interface ResumePretrainOptions extends RunOptions {
  /** A new total of optimizer steps (not below the steps done). */
  steps?: number;
  /** A new total of tokens, as for a new run (sets the steps). */
  tokens?: number;
}

/** Token data to pretrain on: train and validation ids and the tokenizer that made them. */
export interface PretrainData {
  /** Where the data lives (recorded in the run so resume can find it). */
  source: string;
  train: TokenSequence;
  /** Validation tokens; validation is skipped without them. */
  val?: TokenSequence;
  /** A GGUF file with the tokenizer.* metadata (a token cache's tokenizer.gguf, or a model). */
  tokenizerPath: string;
}

/** PretrainData opened from a directory (a token cache), closed when the run ends. */
export interface OpenedPretrainData extends PretrainData {
  /** Tokens in the tokenizer's vocabulary. */
  vocab: number;
  close(): void;
}

/** The settings of a pretraining run (stored in its checkpoint; resume uses them). */
export interface PretrainSettings {
  /** A preset name (see PRESETS) or a config.json path, already read. */
  shape: ModelShape;
  /** Optimizer steps; give this or `tokens`. */
  steps?: number;
  /** Tokens to train on; steps = ceil(tokens / (batch·seq·accumulation)). */
  tokens?: number;
  batch: number;
  seq: number;
  accumulation?: number;
  lr?: number;
  minLr?: number;
  warmupSteps?: number;
  weightDecay?: number;
  gradClip?: number;
  beta1?: number;
  beta2?: number;
  seed?: number;
  recompute?: boolean;
  /** Steps between validations (0 = only at the end). */
  evalEvery?: number;
  /** Micro-batches per validation. */
  evalBatches?: number;
  /** Steps between sample generations (0 = none). */
  sampleEvery?: number;
  sampleTokens?: number;
  /** Steps between checkpoints (0 = only at the end and on interrupt). */
  checkpointEvery?: number;
}

type ResolvedSettings = Required<Omit<PretrainSettings, "tokens" | "steps">> & { steps: number };

/** What happened, reported as it happens (the CLI draws progress from these). */
export type PretrainEvent = TrainEvent;

export interface PretrainSummary {
  run: string;
  checkpoint: string;
  /** Steps of the whole run. */
  steps: number;
  /** Steps done when this call returned. */
  step: number;
  /** Steps this call ran (fewer than steps - fromStep when interrupted). */
  ranSteps: number;
  loss: number;
  valLoss?: number;
  tokensSeen: number;
  interrupted: boolean;
  /** True when the run had already reached its last step: nothing ran and no file changed. */
  alreadyDone: boolean;
  parameters: number;
}

/** The validation windows are the same at every evaluation. */
const VAL_SEED = 0x5eed;

function resolveSettings(s: PretrainSettings): ResolvedSettings {
  const accumulation = s.accumulation ?? 1;
  let steps = s.steps;
  if (steps === undefined && s.tokens !== undefined)
    steps = Math.ceil(s.tokens / (s.batch * s.seq * accumulation));
  if (steps === undefined) throw new UserError("give the length of the run with --steps or --tokens");
  if (!Number.isInteger(steps) || steps < 1)
    throw new UserError(`steps must be a positive integer, got ${steps}`);
  const lr = s.lr ?? 1e-3;
  return {
    shape: s.shape,
    steps,
    batch: s.batch,
    seq: s.seq,
    accumulation,
    lr,
    minLr: s.minLr ?? lr / 10,
    warmupSteps: s.warmupSteps ?? Math.min(100, Math.floor(steps / 10)),
    weightDecay: s.weightDecay ?? 0.1,
    gradClip: s.gradClip ?? 1,
    beta1: s.beta1 ?? 0.9,
    beta2: s.beta2 ?? 0.95,
    seed: s.seed ?? 1337,
    recompute: s.recompute ?? false,
    evalEvery: s.evalEvery ?? 100,
    evalBatches: s.evalBatches ?? 8,
    sampleEvery: s.sampleEvery ?? 0,
    sampleTokens: s.sampleTokens ?? 64,
    checkpointEvery: s.checkpointEvery ?? 100,
  };
}

function tokenizerOf(header: GgufHeader, what: string): Tokenizer {
  try {
    return Tokenizer.fromGgufMetadata(metadataGetter(header));
  } catch (e) {
    if (e instanceof UserError) throw new UserError(`${what}: ${e.message}`);
    throw e;
  }
}

/** Parameter count and memory of a run before it starts (what `pretrain` prints first). */
export function pretrainPlan(
  settings: PretrainSettings,
  vocab: number,
  threads?: number,
): { config: LlamaConfig; parameters: number; memory: TrainMemory } {
  const s = resolveSettings(settings);
  const config = configOfShape(s.shape, vocab, "model");
  const tied = s.shape.tiedEmbeddings ?? false;
  const memory = trainMemory(config, {
    batch: s.batch,
    seq: s.seq,
    threads,
    recompute: s.recompute,
    tiedEmbeddings: tied,
  });
  return { config, parameters: trainParameterCount(config, tied), memory };
}

/** Starts a new pretraining run in `out` (which must not hold one already). */
export async function pretrain(
  settings: PretrainSettings,
  data: PretrainData,
  out: string,
  options: RunOptions = {},
): Promise<PretrainSummary> {
  if (existsSync(join(out, CHECKPOINT))) {
    throw new UserError(
      `${out} already holds a run; continue it with --resume ${out} or choose another --out`,
    );
  }
  const s = resolveSettings(settings);
  const tokenizerHeader = readGgufHeader(data.tokenizerPath);
  const tokenizer = tokenizerOf(tokenizerHeader, data.tokenizerPath);
  const config = configOfShape(s.shape, tokenizer.vocabSize, "model");
  const tied = s.shape.tiedEmbeddings ?? false;
  const model = await LlamaTrainModel.create(config, {
    batch: s.batch,
    seq: s.seq,
    threads: options.threads,
    recompute: s.recompute,
    tiedEmbeddings: tied,
  });
  try {
    model.initialize(s.seed);
    mkdirSync(out, { recursive: true });
    writeRunConfig(out, config, tied, s, resolve(data.source));
    writeAtomic(join(out, METRICS), "");
    writeAtomic(join(out, SAMPLES), "");
    const trainer = new LlamaTrainer(model, new RandomWindows(data.train, s.batch, s.seq, s.seed), {
      ...s,
      totalSteps: s.steps,
    });
    return await runLoop(s, trainer, data, tokenizer, tokenizerHeader, out, options, resolve(data.source));
  } finally {
    await model.dispose();
  }
}

/** config.json: what the run is, for people and tools (resume reads the checkpoint). */
function writeRunConfig(out: string, config: LlamaConfig, tied: boolean, s: ResolvedSettings, data: string) {
  writeAtomic(
    join(out, "config.json"),
    `${JSON.stringify({ model: config, tiedEmbeddings: tied, settings: s, data }, null, 2)}\n`,
  );
}

interface StoredRun {
  info: CheckpointInfo;
  header: GgufHeader;
  settings: ResolvedSettings;
  data: string;
}

/** The settings and data location stored in a run's checkpoint. */
export function readRun(run: string): StoredRun {
  const path = join(run, CHECKPOINT);
  if (!existsSync(path)) throw new UserError(`${run}: no ${CHECKPOINT} to resume from`);
  const { info, header } = readCheckpoint(path);
  const r = info.run as { kind?: string; settings?: ResolvedSettings; data?: string } | null;
  if (r?.kind !== "pretrain" || !r.settings || !r.data)
    throw new UserError(`${path}: not a pretraining checkpoint`);
  return { info, header, settings: r.settings, data: r.data };
}

/**
 * The steps done and the length of the run when resumed with `change` (a new --steps or --tokens,
 * else its own). Refuses a length below the steps done.
 */
function targetOf(
  run: string,
  { info, settings: s }: StoredRun,
  change: { steps?: number; tokens?: number },
): { step: number; steps: number } {
  const step = info.trainer.step;
  if (change.steps !== undefined && change.tokens !== undefined)
    throw new UserError("give --steps or --tokens, not both");
  let steps = s.steps;
  let given = "";
  if (change.steps !== undefined) {
    steps = change.steps;
    given = `--steps ${change.steps}`;
  } else if (change.tokens !== undefined) {
    steps = Math.ceil(change.tokens / (s.batch * s.seq * s.accumulation));
    given = `--tokens ${change.tokens} (${steps} steps)`;
  }
  if (!Number.isInteger(steps) || steps < 1)
    throw new UserError(`steps must be a positive integer, got ${steps}`);
  if (steps < step)
    throw new UserError(`${given}: ${run} has already done ${step} steps; give more to extend it`);
  return { step, steps };
}

/**
 * The summary of the run in `run` when it has nothing to do under `change` (it has reached its
 * last step): read from its files, which stay untouched. Undefined when there are steps to run.
 */
export function finishedPretraining(
  run: string,
  change: { steps?: number; tokens?: number } = {},
): PretrainSummary | undefined {
  return finishedOf(run, readRun(run), change);
}

function finishedOf(
  run: string,
  stored: StoredRun,
  change: { steps?: number; tokens?: number },
): PretrainSummary | undefined {
  const { step, steps } = targetOf(run, stored, change);
  if (step < steps) return undefined;
  const { info } = stored;
  const last = lastMetrics(run);
  return {
    run,
    checkpoint: join(run, CHECKPOINT),
    steps,
    step,
    ranSteps: 0,
    loss: last?.loss ?? Number.NaN,
    valLoss: last?.val_loss,
    tokensSeen: info.trainer.tokensSeen,
    interrupted: false,
    alreadyDone: true,
    parameters: trainParameterCount(info.config, info.tiedEmbeddings),
  };
}

/**
 * Continues the run in `run` from its checkpoint until its last step: its own, or the new
 * `options.steps` / `options.tokens`, which extends (or shortens) it with the cosine schedule
 * recomputed for the new total. A run with nothing left to do returns at once, changing nothing.
 */
export async function resumePretraining(
  run: string,
  data: PretrainData,
  options: ResumePretrainOptions = {},
): Promise<PretrainSummary> {
  const stored = readRun(run);
  const finished = finishedOf(run, stored, options);
  if (finished) return finished;
  const { steps } = targetOf(run, stored, options);
  const { info, header, data: dataSource } = stored;
  const s: ResolvedSettings = { ...stored.settings, steps };
  const tokenizer = tokenizerOf(header, join(run, CHECKPOINT));
  if (tokenizer.vocabSize !== info.config.vocab) {
    throw new UserError(
      `${run}: the checkpoint's tokenizer has ${tokenizer.vocabSize} tokens, its model ${info.config.vocab}`,
    );
  }
  const dataVocab = tokenizerOf(readGgufHeader(data.tokenizerPath), data.tokenizerPath).vocabSize;
  if (dataVocab !== info.config.vocab) {
    throw new UserError(
      `${data.source}: its tokenizer has ${dataVocab} tokens, the run's model ${info.config.vocab}`,
    );
  }
  const model = await LlamaTrainModel.create(info.config, {
    batch: s.batch,
    seq: s.seq,
    threads: options.threads,
    recompute: s.recompute,
    tiedEmbeddings: info.tiedEmbeddings,
  });
  try {
    restoreCheckpoint(join(run, CHECKPOINT), header, model);
    const trainer = new LlamaTrainer(model, new RandomWindows(data.train, s.batch, s.seq, s.seed), {
      ...info.optimizer,
      totalSteps: steps,
      accumulation: info.accumulation,
    });
    trainer.restore(info.trainer);
    trimRunForResume(run, trainer.step);
    // A new length reaches config.json once a checkpoint records it (resume reads the checkpoint).
    const onSaved =
      steps === stored.settings.steps
        ? undefined
        : () => writeRunConfig(run, info.config, info.tiedEmbeddings, s, dataSource);
    return await runLoop(s, trainer, data, tokenizer, header, run, options, dataSource, onSaved);
  } finally {
    await model.dispose();
  }
}

async function runLoop(
  s: ResolvedSettings,
  trainer: LlamaTrainer,
  data: PretrainData,
  tokenizer: Tokenizer,
  tokenizerHeader: GgufHeader,
  out: string,
  options: RunOptions,
  dataSource: string,
  onSaved?: () => void,
): Promise<PretrainSummary> {
  const model = trainer.model;
  const result = await runTrainingLoop(
    trainer,
    s,
    out,
    {
      save: () => {
        const info: CheckpointInfo = {
          config: model.config,
          tiedEmbeddings: model.tiedEmbeddings,
          batch: s.batch,
          seq: s.seq,
          accumulation: s.accumulation,
          optimizer: trainer.optimizer,
          trainer: trainer.state(),
          run: { kind: "pretrain", settings: s, data: dataSource },
        };
        saveCheckpoint(join(out, CHECKPOINT), model, info, tokenizerHeader);
        onSaved?.();
      },
      validate: () => {
        if (!data.val || data.val.tokens < s.seq + 1) return undefined;
        return trainer.evaluate(
          new RandomWindows(data.val, s.batch, s.seq, VAL_SEED, "validation data"),
          s.evalBatches,
        );
      },
      sample: () => {
        const prompt = tokenizer.bosId !== undefined ? [tokenizer.bosId] : [];
        const ids = trainer.generate(
          prompt,
          s.sampleTokens,
          { temperature: 0.8, topK: 40, seed: s.seed + trainer.step },
          tokenizer.eosId,
        );
        return tokenizer.decode(ids);
      },
    },
    options,
  );
  return {
    run: out,
    checkpoint: join(out, CHECKPOINT),
    steps: s.steps,
    step: trainer.step,
    ranSteps: trainer.step - result.fromStep,
    loss: result.loss,
    valLoss: result.valLoss,
    tokensSeen: trainer.tokensSeen,
    interrupted: result.interrupted,
    alreadyDone: false,
    parameters: model.parameterCount,
  };
}

export { readModelShape };
