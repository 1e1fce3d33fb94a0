// Pretraining runs: a model shape, token data and a run directory holding config.json,
// checkpoint.gguf, metrics.jsonl (one line per step) and samples.jsonl. A run stops at its last
// step or when `signal` aborts (the CLI's SIGINT), saving a checkpoint either way; `resume`
// continues a run from its checkpoint with the same losses an uninterrupted run would have had.
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
    writeAtomic(
      join(out, "config.json"),
      `${JSON.stringify({ model: config, tiedEmbeddings: tied, settings: s, data: resolve(data.source) }, null, 2)}\n`,
    );
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

/** The settings and data location stored in a run's checkpoint. */
export function readRun(run: string): {
  info: CheckpointInfo;
  header: GgufHeader;
  settings: ResolvedSettings;
  data: string;
} {
  const path = join(run, CHECKPOINT);
  if (!existsSync(path)) throw new UserError(`${run}: no ${CHECKPOINT} to resume from`);
  const { info, header } = readCheckpoint(path);
  const r = info.run as { kind?: string; settings?: ResolvedSettings; data?: string } | null;
  if (r?.kind !== "pretrain" || !r.settings || !r.data)
    throw new UserError(`${path}: not a pretraining checkpoint`);
  return { info, header, settings: r.settings, data: r.data };
}

/** Continues the run in `run` from its checkpoint until its last step. */
export async function resumePretraining(
  run: string,
  data: PretrainData,
  options: RunOptions = {},
): Promise<PretrainSummary> {
  const { info, header, settings: s, data: dataSource } = readRun(run);
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
      accumulation: info.accumulation,
    });
    trainer.restore(info.trainer);
    trimRunForResume(run, trainer.step);
    return await runLoop(s, trainer, data, tokenizer, header, run, options, dataSource);
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
    parameters: model.parameterCount,
  };
}

export { readModelShape };
