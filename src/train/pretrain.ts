// Pretraining runs: a model shape, token data and a run directory holding config.json,
// checkpoint.gguf, metrics.jsonl (one line per step) and samples.jsonl. A run stops at its last
// step or when `signal` aborts (the CLI's SIGINT), saving a checkpoint either way; `resume`
// continues a run from its checkpoint with the same losses an uninterrupted run would have had.
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { UserError } from "../errors.js";
import { type GgufHeader, readGgufHeader } from "../formats/gguf.js";
import { type LlamaConfig, metadataGetter } from "../model/config.js";
import { Tokenizer } from "../tokenizer/index.js";
import { type CheckpointInfo, readCheckpoint, restoreCheckpoint, saveCheckpoint } from "./checkpoint.js";
import { RandomWindows, type TokenSequence } from "./data.js";
import { LlamaTrainModel, type TrainMemory, trainMemory, trainParameterCount } from "./model.js";
import { configOfShape, type ModelShape, readModelShape } from "./presets.js";
import { LlamaTrainer, type StepMetrics } from "./trainer.js";

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
export type PretrainEvent =
  | {
      type: "start";
      config: LlamaConfig;
      parameters: number;
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
  onEvent?: (e: PretrainEvent) => void;
}

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

const CHECKPOINT = "checkpoint.gguf";
const METRICS = "metrics.jsonl";
const SAMPLES = "samples.jsonl";
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

/** Writes a small file through a temporary name and a rename. */
function writeAtomic(path: string, text: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
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
    // A write that a crash cut short left only its temporary file; the checkpoint is the last whole one.
    for (const f of readdirSync(run))
      if (f.startsWith(`${CHECKPOINT}.tmp-`)) rmSync(join(run, f), { force: true });
    // Lines written after the checkpoint belong to steps that will run again.
    for (const file of [METRICS, SAMPLES]) {
      const path = join(run, file);
      const lines = existsSync(path) ? readFileSync(path, "utf8").split("\n") : [];
      const keep = lines.filter((line) => {
        try {
          return (JSON.parse(line) as { step: number }).step <= trainer.step;
        } catch {
          return false;
        }
      });
      writeAtomic(path, keep.map((l) => `${l}\n`).join(""));
    }
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
  const emit = options.onEvent ?? (() => {});
  const checkpointPath = join(out, CHECKPOINT);
  const fromStep = trainer.step;
  emit({
    type: "start",
    config: model.config,
    parameters: model.parameterCount,
    memory: model.memory,
    steps: s.steps,
    fromStep,
    threads: model.threads,
  });
  const save = () => {
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
    saveCheckpoint(checkpointPath, model, info, tokenizerHeader);
    emit({ type: "checkpoint", step: trainer.step, path: checkpointPath });
  };
  const validate = (): number | undefined => {
    if (!data.val || data.val.tokens < s.seq + 1) return undefined;
    const v = trainer.evaluate(
      new RandomWindows(data.val, s.batch, s.seq, VAL_SEED, "validation data"),
      s.evalBatches,
    );
    emit({ type: "eval", step: trainer.step, valLoss: v });
    return v;
  };
  const sample = () => {
    const prompt = tokenizer.bosId !== undefined ? [tokenizer.bosId] : [];
    const ids = trainer.generate(
      prompt,
      s.sampleTokens,
      { temperature: 0.8, topK: 40, seed: s.seed + trainer.step },
      tokenizer.eosId,
    );
    const text = tokenizer.decode(ids);
    writeFileSync(join(out, SAMPLES), `${JSON.stringify({ step: trainer.step, text })}\n`, { flag: "a" });
    emit({ type: "sample", step: trainer.step, text });
  };

  let loss = Number.NaN;
  let valLoss: number | undefined;
  let interrupted = false;
  const started = performance.now();
  let tokensRun = 0;
  while (trainer.step < s.steps) {
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
    const last = trainer.step === s.steps;
    if ((s.evalEvery > 0 && m.step % s.evalEvery === 0) || last) {
      valLoss = validate();
      if (valLoss !== undefined) line.val_loss = valLoss;
    }
    writeFileSync(join(out, METRICS), `${JSON.stringify(line)}\n`, { flag: "a" });
    emit({
      type: "step",
      metrics: m,
      tokensPerSecond,
      etaSeconds: ((s.steps - trainer.step) * seconds) / (trainer.step - fromStep),
    });
    if (s.sampleEvery > 0 && m.step % s.sampleEvery === 0) sample();
    if (!last && s.checkpointEvery > 0 && m.step % s.checkpointEvery === 0) save();
    // Let signal handlers run between steps.
    await yieldToEventLoop();
  }
  save();
  return {
    run: out,
    checkpoint: checkpointPath,
    steps: s.steps,
    step: trainer.step,
    ranSteps: trainer.step - fromStep,
    loss,
    valLoss,
    tokensSeen: trainer.tokensSeen,
    interrupted,
    parameters: model.parameterCount,
  };
}

export { readModelShape };
