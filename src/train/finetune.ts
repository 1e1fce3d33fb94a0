// Fine-tuning runs: a base model GGUF, a dataset of instructions or conversations, and a run
// directory. Three methods share the training loop of pretraining (train/loop.ts):
//   lora    the base frozen in f32, low-rank adapters on the chosen projections
//   qlora   the same with the frozen layer matrices held quantized (Q4_0 or Q8_0) in memory
//   full    every tensor trains
// The run directory holds config.json, metrics.jsonl, checkpoint.gguf (everything a resume needs:
// the base's tensors, the adapters, the AdamW moments and the data position) and, when the run is
// done, adapter.gguf (llama.cpp's LoRA format) and peft/ (a PEFT adapter directory), or model.gguf
// for a full fine-tune (with the chat template the data was rendered with). A resume may give the
// run a new length (extending it; the cosine schedule is recomputed for the new total); a finished
// run resumed with nothing new to do changes no file.
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { type TemplateChoice, type TokenizedExample, tokenizeRecords } from "../data/chat-tokens.js";
import { type PackedBatch, packBatches, shuffled, splitValidation } from "../data/packing.js";
import { parseFormatName, RecordReader } from "../data/records.js";
import { UserError } from "../errors.js";
import { GGMLType } from "../formats/ggml-types.js";
import { GgufHeader, GgufValueType, GgufWriter, readGgufHeader } from "../formats/gguf.js";
import { architecture } from "../model/arch/index.js";
import { type LlamaConfig, llamaConfigFromMetadata, metadataGetter } from "../model/config.js";
import {
  LORA_TARGETS,
  type LoraAdapter,
  type LoraTarget,
  parseLoraTargets,
  writeLoraGguf,
  writePeftAdapter,
} from "../model/lora.js";
import { chooseTemplate } from "../model/templates.js";
import type { WeightFormat } from "../runtime/backend.js";
import { Tokenizer } from "../tokenizer/index.js";
import {
  type CheckpointInfo,
  copyTokenizerMetadata,
  readCheckpoint,
  restoreCheckpoint,
  saveCheckpoint,
  setLlamaMetadata,
} from "./checkpoint.js";
import type { BatchSource } from "./data.js";
import {
  CHECKPOINT,
  lastMetrics,
  METRICS,
  type RunOptions,
  runTrainingLoop,
  type TrainEvent,
  trimRunForResume,
  writeAtomic,
} from "./loop.js";
import {
  checkMemoryFits,
  checkTrainConfig,
  formatOfGgmlType,
  LlamaTrainModel,
  type LoraOptions,
  type TokenBatch,
  type TrainMemory,
  type TrainModelOptions,
  trainMemory,
} from "./model.js";
import { LlamaTrainer } from "./trainer.js";

export type FinetuneMethod = "lora" | "qlora" | "full";
export const FINETUNE_METHODS: readonly FinetuneMethod[] = ["lora", "qlora", "full"];
/** Formats a QLoRA base can be held in. */
export const QLORA_BASE_TYPES = ["q4_0", "q8_0"] as const;

/** What a fine-tuning run does (stored in its checkpoint; a resume uses it unchanged). */
export interface FinetuneSettings {
  /** The base model GGUF. */
  base: string;
  /** The dataset file (JSONL or a JSON array; Alpaca, ShareGPT, chat messages, prompt/completion). */
  data: string;
  /** The dataset's format (default: detected from its first record). */
  format?: string;
  /** A built-in chat template (alpaca, vicuna_v1.1, llama-2, chatml); default: the base's own. */
  template?: string;
  method: FinetuneMethod;
  /** LoRA rank, a multiple of 4 (default 8). */
  rank?: number;
  /** LoRA alpha; the update is scaled by alpha / rank (default 16). */
  alpha?: number;
  /** Dropout on the LoRA input path (default 0.05). */
  dropout?: number;
  /** Projections to adapt: "q,k,v,o,gate,up,down" (the default) or any subset, or "all". */
  targets?: string;
  /** QLoRA: the format of the frozen layer matrices (default: the base's own when it is quantized, else q4_0). */
  baseType?: string;
  /** Passes over the training examples (default 1); give this or `steps`. */
  epochs?: number;
  /** Optimizer steps. */
  steps?: number;
  /** Rows (sequences) per micro-batch. */
  batch: number;
  /** Tokens per row; longer examples are cut (see data/packing.ts). */
  seq: number;
  /** Micro-batches per optimizer step (default 1). */
  accumulation?: number;
  /** Peak learning rate (default 2e-4 for LoRA and QLoRA, 2e-5 for full). */
  lr?: number;
  minLr?: number;
  warmupSteps?: number;
  /** AdamW weight decay (default 0). */
  weightDecay?: number;
  gradClip?: number;
  beta1?: number;
  beta2?: number;
  /** Seed of the data order, the validation split, LoRA's initial A and its dropout masks. */
  seed?: number;
  /** Share of the examples held out for validation (default 0.05; 0 = none). */
  valFraction?: number;
  /** Several examples per row (default true); false: one example per row, padded. */
  packing?: boolean;
  /** Train on the prompt tokens too. */
  trainOnPrompt?: boolean;
  /** Skip invalid records (counted) instead of stopping at the first. */
  skipInvalid?: boolean;
  recompute?: boolean;
  /** Steps between validations (0 = at the end only; default 50). */
  evalEvery?: number;
  /** Most validation micro-batches per validation (default 20). */
  evalBatches?: number;
  /** Steps between sample replies to the first validation prompt (0 = none, the default). */
  sampleEvery?: number;
  sampleTokens?: number;
  /** Steps between checkpoints (0 = at the end only; default 100). */
  checkpointEvery?: number;
}

type ResolvedSettings = Required<Omit<FinetuneSettings, "format" | "template" | "baseType" | "steps">> & {
  format?: string;
  template?: string;
  baseType?: string;
  /** Set when the run's length was given in steps. */
  steps?: number;
};

/** A fine-tuning run's events: the loop's, and what the data came to before the first step. */
export type FinetuneEvent =
  | TrainEvent
  | {
      type: "data";
      /** Examples tokenized, and how they were split. */
      train: number;
      validation: number;
      /** Records skipped (with skipInvalid), by reason. */
      skipped: Record<string, number>;
      /** Trained-on tokens in the training examples. */
      trainedTokens: number;
      steps: number;
    };

export interface FinetuneRunOptions extends Omit<RunOptions, "onEvent"> {
  onEvent?: (e: FinetuneEvent) => void;
}

/** How to continue a run: the run options, and optionally a new length for it. */
export interface ResumeFinetuneOptions extends FinetuneRunOptions {
  /** A new total of optimizer steps (not below the steps done). */
  steps?: number;
  /** A new total of passes over the training examples (sets the steps). */
  epochs?: number;
}

/** A new run: its settings, the run directory, and how to run it (threads, signal, events). */
export interface FinetuneOptions extends FinetuneSettings, FinetuneRunOptions {
  /** The run directory (created; must not hold a run already). */
  out: string;
}

export interface FinetuneSummary {
  run: string;
  method: FinetuneMethod;
  checkpoint: string;
  /** Steps of the whole run, steps done, and steps this call ran. */
  steps: number;
  step: number;
  ranSteps: number;
  /** Loss of the last step; validation loss at the end (when there is validation data). */
  loss: number;
  /** Loss of the first step this call ran. */
  firstLoss: number;
  valLoss?: number;
  tokensSeen: number;
  interrupted: boolean;
  /** True when the run had already reached its last step and written its outputs: nothing ran and no file changed. */
  alreadyDone: boolean;
  parameters: number;
  trainable: number;
  /** Examples trained on and held out, and records skipped (with skipInvalid) by reason. */
  examples: { train: number; validation: number; skipped: Record<string, number> };
  /** Written when the run finished: the adapter (llama.cpp GGUF) and PEFT directory, or the model. */
  adapter?: string;
  peft?: string;
  model?: string;
}

/** What a run will hold in memory, before it loads anything (what `finetune` prints first). */
export interface FinetunePlan {
  config: LlamaConfig;
  parameters: number;
  trainable: number;
  memory: TrainMemory;
}

function resolveSettings(s: FinetuneSettings): ResolvedSettings {
  if (!FINETUNE_METHODS.includes(s.method))
    throw new UserError(`--method ${s.method}: choose ${FINETUNE_METHODS.join(", ")}`);
  if (s.steps !== undefined && s.epochs !== undefined)
    throw new UserError("give --epochs or --steps, not both");
  const positiveInt = (name: string, v: number | undefined) => {
    if (v !== undefined && !(Number.isInteger(v) && v >= 1))
      throw new UserError(`--${name} must be a positive integer, got ${v}`);
  };
  positiveInt("steps", s.steps);
  positiveInt("epochs", s.epochs);
  positiveInt("batch", s.batch);
  positiveInt("seq", s.seq);
  const lr = s.lr ?? (s.method === "full" ? 2e-5 : 2e-4);
  const valFraction = s.valFraction ?? 0.05;
  if (!(valFraction >= 0 && valFraction < 1))
    throw new UserError(`--val-fraction must be in [0, 1), got ${valFraction}`);
  if (s.baseType !== undefined) {
    if (s.method !== "qlora") throw new UserError("--base-type is for --method qlora");
    if (!(QLORA_BASE_TYPES as readonly string[]).includes(s.baseType.toLowerCase()))
      throw new UserError(`--base-type ${s.baseType}: choose ${QLORA_BASE_TYPES.join(" or ")}`);
  }
  const targets = s.targets ?? Object.keys(LORA_TARGETS).join(",");
  if (s.method !== "full") parseLoraTargets(targets);
  if (s.format !== undefined) parseFormatName(s.format);
  return {
    base: resolve(s.base),
    data: resolve(s.data),
    format: s.format,
    template: s.template,
    method: s.method,
    rank: s.rank ?? 8,
    alpha: s.alpha ?? 16,
    dropout: s.dropout ?? 0.05,
    targets,
    baseType: s.baseType?.toLowerCase(),
    epochs: s.epochs ?? 1,
    steps: s.steps,
    batch: s.batch,
    seq: s.seq,
    accumulation: s.accumulation ?? 1,
    lr,
    minLr: s.minLr ?? lr / 10,
    warmupSteps: s.warmupSteps ?? -1,
    weightDecay: s.weightDecay ?? 0,
    gradClip: s.gradClip ?? 1,
    beta1: s.beta1 ?? 0.9,
    beta2: s.beta2 ?? 0.999,
    seed: s.seed ?? 1337,
    valFraction,
    packing: s.packing ?? true,
    trainOnPrompt: s.trainOnPrompt ?? false,
    skipInvalid: s.skipInvalid ?? false,
    recompute: s.recompute ?? false,
    evalEvery: s.evalEvery ?? 50,
    evalBatches: s.evalBatches ?? 20,
    sampleEvery: s.sampleEvery ?? 0,
    sampleTokens: s.sampleTokens ?? 64,
    checkpointEvery: s.checkpointEvery ?? 100,
  };
}

function readBase(path: string): { header: GgufHeader; config: LlamaConfig; tokenizer: Tokenizer } {
  if (!existsSync(path)) throw new UserError(`--base ${path}: no such file`);
  const header = readGgufHeader(path);
  const arch = header.get("general.architecture")?.value;
  if (arch !== "llama")
    throw new UserError(`${path}: fine-tuning needs a llama model, this is ${String(arch)}`);
  const embd = header.tensor("token_embd.weight");
  if (!embd) throw new UserError(`${path}: tensor token_embd.weight is missing`);
  const config = llamaConfigFromMetadata(metadataGetter(header), path, embd.dims[1] ?? 1);
  // The trainer's rope has no frequency factors: training on such a file would learn with other
  // positions than the model runs with.
  if (header.tensor("rope_freqs.weight"))
    throw new UserError(
      `${path}: fine-tuning a model with rope_freqs.weight (Llama 3.1 rope scaling) is not supported`,
    );
  if (config.rope.yarnOriginalContext !== undefined || config.rope.attnFactor !== undefined)
    throw new UserError(
      `${path}: fine-tuning a model with ${config.rope.yarnOriginalContext !== undefined ? "YaRN rope scaling" : "rope.scaling.attn_factor"} is not supported`,
    );
  let tokenizer: Tokenizer;
  try {
    tokenizer = Tokenizer.fromGgufMetadata(metadataGetter(header));
  } catch (e) {
    if (e instanceof UserError) throw new UserError(`${path}: ${e.message}`);
    throw e;
  }
  return { header, config, tokenizer };
}

/** The training model's options for a method (the same for a new run and its resume). */
function modelOptions(
  s: ResolvedSettings,
  typeOf: (name: string) => GGMLType | undefined,
  threads: number | undefined,
): Omit<TrainModelOptions, "tiedEmbeddings"> {
  const base = { batch: s.batch, seq: s.seq, threads, recompute: s.recompute };
  if (s.method === "full") return { ...base, trainable: () => true, formatOf: () => "F32" };
  const targets = parseLoraTargets(s.targets).map((t: LoraTarget) => `.${LORA_TARGETS[t].gguf}.weight`);
  const lora: LoraOptions = {
    targets: (name) => name.startsWith("blk.") && targets.some((t) => name.endsWith(t)),
    rank: s.rank,
    alpha: s.alpha,
    dropout: s.dropout,
    seed: s.seed,
  };
  const layerMatrix = (name: string) => name.startsWith("blk.") && !name.endsWith("_norm.weight");
  const formatOf = (name: string): WeightFormat => {
    if (s.method !== "qlora" || !layerMatrix(name)) return "F32";
    if (s.baseType) return s.baseType.toUpperCase() as WeightFormat;
    const t = typeOf(name);
    const own = t === undefined ? undefined : formatOfGgmlType(t);
    return own && own !== "F32" && own !== "F16" && own !== "BF16" ? own : "Q4_0";
  };
  return { ...base, trainable: () => false, formatOf, lora };
}

/** Parameter count, trainable count and memory of a run, from the base's header alone. */
export function finetunePlan(settings: FinetuneSettings, threads?: number): FinetunePlan {
  const s = resolveSettings(settings);
  const { header, config } = readBase(s.base);
  return planOf(s, header, config, threads);
}

/** The plan of a run; checks the shape, batch and LoRA settings against the base. */
function planOf(
  s: ResolvedSettings,
  header: GgufHeader,
  config: LlamaConfig,
  threads?: number,
): FinetunePlan {
  checkTrainConfig(config, s.seq);
  const tied = !header.tensor("output.weight");
  const options = modelOptions(s, (name) => header.tensor(name)?.type, threads);
  const memory = trainMemory(config, { ...options, tiedEmbeddings: tied });
  const layer = architecture(config.architecture).layerTensors;
  let parameters = 0;
  for (const t of header.tensors) parameters += t.dims.reduce((a, b) => a * b, 1);
  let trainable = parameters;
  if (s.method !== "full") {
    trainable = 0;
    for (const t of parseLoraTargets(s.targets)) {
      const [inF, outF] = layer.find((spec) => spec.role === LORA_TARGETS[t].gguf)!.dims(config);
      trainable += config.layers * s.rank * (inF + outF);
    }
  }
  return { config, parameters, trainable, memory };
}

interface PreparedData {
  train: TokenizedExample[];
  validation: TokenizedExample[];
  skipped: Record<string, number>;
  template?: TemplateChoice & { source: string };
}

/** Reads and tokenizes the dataset and splits off the validation examples. */
async function prepareData(
  s: ResolvedSettings,
  header: GgufHeader,
  tokenizer: Tokenizer,
): Promise<PreparedData> {
  const reader = await RecordReader.open(s.data, {
    format: s.format === undefined ? undefined : parseFormatName(s.format),
    skipInvalid: s.skipInvalid,
  });
  let template: (TemplateChoice & { source: string }) | undefined;
  let examples: TokenizedExample[];
  try {
    if (reader.format !== "completion") {
      const file = header.get("tokenizer.chat_template")?.value;
      template = chooseTemplate(typeof file === "string" ? file : undefined, s.template);
    }
    examples = await tokenizeRecords(reader, { tokenizer, template, trainOnPrompt: s.trainOnPrompt });
  } finally {
    await reader.close();
  }
  if (examples.length === 0) throw new UserError(`${s.data}: no usable records`);
  const { train, validation } = splitValidation(examples, { fraction: s.valFraction, seed: s.seed });
  return { train, validation, skipped: Object.fromEntries(reader.skipped), template };
}

function toTokenBatch(b: PackedBatch): TokenBatch {
  return {
    rows: b.rows,
    seq: b.seqLen,
    tokens: b.inputs,
    targets: b.targets,
    positions: b.positions,
    segments: b.segmentIds,
  };
}

interface ExampleBatchesState {
  kind: "examples";
  examples: number;
  epoch: number;
  index: number;
}

/**
 * Fine-tuning batches: epoch e packs the training examples in the order shuffled(seed + 1 + e);
 * the stream runs on into further epochs. Its state is (epoch, batches taken in the epoch).
 */
export class ExampleBatches implements BatchSource {
  private epoch = 0;
  private index = 0;
  private batches?: Generator<TokenBatch>;

  constructor(
    readonly examples: readonly TokenizedExample[],
    readonly batch: number,
    readonly seq: number,
    readonly packing: boolean,
    readonly padId: number,
    readonly seed: number,
  ) {
    if (examples.length === 0) throw new UserError("no training examples");
  }

  private *epochBatches(epoch: number): Generator<TokenBatch> {
    const order = shuffled(this.examples, this.seed + 1 + epoch);
    const options = { seqLen: this.seq, batchSize: this.batch, packing: this.packing, padId: this.padId };
    for (const b of packBatches(order, options)) yield toTokenBatch(b);
  }

  /** Batches in epoch e (packing depends on the epoch's order). */
  batchesIn(epoch: number): number {
    let n = 0;
    for (const _ of this.epochBatches(epoch)) n++;
    return n;
  }

  next(): TokenBatch {
    for (let tries = 0; tries < 2; tries++) {
      this.batches ??= this.epochBatches(this.epoch);
      const r = this.batches.next();
      if (!r.done) {
        this.index++;
        return r.value;
      }
      this.epoch++;
      this.index = 0;
      this.batches = undefined;
    }
    throw new UserError(
      `no example fits in a sequence of ${this.seq} tokens with a trained token left; raise --seq`,
    );
  }

  state(): ExampleBatchesState {
    return { kind: "examples", examples: this.examples.length, epoch: this.epoch, index: this.index };
  }

  restore(state: unknown): void {
    const s = state as Partial<ExampleBatchesState> | null;
    if (s?.kind !== "examples" || s.epoch === undefined || s.index === undefined)
      throw new UserError("checkpoint: the data position is not a fine-tuning state");
    if (s.examples !== this.examples.length) {
      throw new UserError(
        `checkpoint: the run trained on ${s.examples} examples, the dataset now gives ${this.examples.length}; resume with the same data`,
      );
    }
    this.epoch = s.epoch;
    this.index = 0;
    this.batches = this.epochBatches(s.epoch);
    while (this.index < s.index) {
      if (this.batches.next().done)
        throw new UserError("checkpoint: the data position is past the epoch's end");
      this.index++;
    }
  }
}

/** A fixed list of batches, from the start every time (validation). */
class FixedBatches implements BatchSource {
  private at = 0;
  constructor(
    readonly list: readonly TokenBatch[],
    readonly batch: number,
    readonly seq: number,
  ) {}
  next(): TokenBatch {
    const b = this.list[this.at % this.list.length]!;
    this.at++;
    return b;
  }
  state(): unknown {
    return { at: this.at };
  }
  restore(): void {
    throw new Error("FixedBatches cannot be restored");
  }
}

/** Everything a run keeps in its checkpoint besides the model. */
interface FinetuneRunInfo {
  kind: "finetune";
  settings: ResolvedSettings;
  /** Steps of the whole run (set when it started, or by a resume that extends it). */
  steps: number;
  baseName: string;
  /** How the data split (absent in runs started before it was recorded). */
  examples?: FinetuneSummary["examples"];
}

function baseNameOf(header: GgufHeader, path: string): string {
  const name = header.get("general.name")?.value;
  return typeof name === "string" && name.trim() !== "" ? name : basename(path).replace(/\.gguf$/, "");
}

/**
 * Fine-tunes `base` on `data` into the run directory `out`, for example
 *
 *   const summary = await finetune({ base: "model.gguf", data: "alpaca.jsonl", template: "alpaca",
 *     method: "lora", rank: 8, alpha: 16, targets: "q,v", steps: 200, batch: 4, seq: 256,
 *     lr: 2e-4, out: "run", onEvent: (e) => console.log(e) });
 *   // summary.adapter: run/adapter.gguf; summary.firstLoss, summary.loss, summary.valLoss
 */
export async function finetune(options: FinetuneOptions): Promise<FinetuneSummary> {
  const { out, threads, signal, onEvent, ...settings } = options;
  return startFinetune(settings, out, { threads, signal, onEvent });
}

async function startFinetune(
  settings: FinetuneSettings,
  out: string,
  options: FinetuneRunOptions,
): Promise<FinetuneSummary> {
  if (existsSync(join(out, CHECKPOINT))) {
    throw new UserError(
      `${out} already holds a run; continue it with --resume ${out} or choose another --out`,
    );
  }
  const s = resolveSettings(settings);
  const { header, config, tokenizer } = readBase(s.base);
  // Refuse what does not fit before reading the data.
  checkMemoryFits(planOf(s, header, config, options.threads).memory, `fine-tuning ${s.base}`);
  const data = await prepareData(s, header, tokenizer);
  const source = newSource(s, data, tokenizer);
  const steps = s.steps ?? stepsOfEpochs(source, s.epochs, s.accumulation);
  emitData(options, data, steps);
  const model = await LlamaTrainModel.load(
    s.base,
    modelOptions(s, (name) => header.tensor(name)?.type, options.threads),
  );
  try {
    mkdirSync(out, { recursive: true });
    const info: FinetuneRunInfo = {
      kind: "finetune",
      settings: s,
      steps,
      baseName: baseNameOf(header, s.base),
      examples: examplesOf(data),
    };
    writeAtomic(
      join(out, "config.json"),
      `${JSON.stringify({ model: model.config, tiedEmbeddings: model.tiedEmbeddings, template: data.template?.label ?? null, ...info }, null, 2)}\n`,
    );
    writeAtomic(join(out, METRICS), "");
    const trainer = new LlamaTrainer(model, source, optimizerOf(s, steps));
    return await runFinetune(info, trainer, data, tokenizer, header, out, options);
  } finally {
    await model.dispose();
  }
}

function examplesOf(data: PreparedData): FinetuneSummary["examples"] {
  return { train: data.train.length, validation: data.validation.length, skipped: data.skipped };
}

/** Optimizer steps of `epochs` passes over the training examples. */
function stepsOfEpochs(source: ExampleBatches, epochs: number, accumulation: number): number {
  let batches = 0;
  for (let e = 0; e < epochs; e++) batches += source.batchesIn(e);
  return Math.max(1, Math.ceil(batches / accumulation));
}

/** What a finished run wrote at its end (the adapter and PEFT directory, or the model). */
function outputsOf(run: string, method: FinetuneMethod): Pick<FinetuneSummary, "adapter" | "peft" | "model"> {
  return method === "full"
    ? { model: join(run, "model.gguf") }
    : { adapter: join(run, "adapter.gguf"), peft: join(run, "peft") };
}

/**
 * Continues the fine-tuning run in `run` from its checkpoint until its last step: its own, or the
 * new `options.steps` / `options.epochs`, which extends (or shortens) it with the cosine schedule
 * recomputed for the new total. A run that has reached its last step and written its outputs
 * returns at once, changing nothing (one cut short after its last checkpoint writes its outputs).
 */
export async function resumeFinetune(
  run: string,
  options: ResumeFinetuneOptions = {},
): Promise<FinetuneSummary> {
  const { steps: newSteps, epochs: newEpochs, ...runOptions } = options;
  if (newSteps !== undefined && newEpochs !== undefined)
    throw new UserError("give --epochs or --steps, not both");
  const path = join(run, CHECKPOINT);
  if (!existsSync(path)) throw new UserError(`${run}: no ${CHECKPOINT} to resume from`);
  const { info, header } = readCheckpoint(path);
  const r = info.run as Partial<FinetuneRunInfo> | null;
  if (r?.kind !== "finetune" || !r.settings || !r.steps)
    throw new UserError(`${path}: not a fine-tuning checkpoint`);
  const stored = r as FinetuneRunInfo;
  const done = info.trainer.step;
  const tokenizer = Tokenizer.fromGgufMetadata(metadataGetter(header));
  // The data is read only when needed: epochs count its batches; a finished run needs none.
  let data: PreparedData | undefined;
  let source: ExampleBatches | undefined;
  const readData = async () => {
    data ??= await prepareData(stored.settings, header, tokenizer);
    source ??= newSource(stored.settings, data, tokenizer);
    return { data, source };
  };
  let steps = newSteps ?? stored.steps;
  let settings = newSteps === undefined ? stored.settings : { ...stored.settings, steps: newSteps };
  let given = `--steps ${newSteps}`;
  if (newEpochs !== undefined) {
    if (!(Number.isInteger(newEpochs) && newEpochs >= 1))
      throw new UserError(`--epochs must be a positive integer, got ${newEpochs}`);
    steps = stepsOfEpochs((await readData()).source, newEpochs, stored.settings.accumulation);
    settings = { ...stored.settings, epochs: newEpochs, steps: undefined };
    given = `--epochs ${newEpochs} (${steps} steps)`;
  }
  if (!(Number.isInteger(steps) && steps >= 1))
    throw new UserError(`--steps must be a positive integer, got ${steps}`);
  if (steps < done)
    throw new UserError(`${given}: ${run} has already done ${done} steps; give more to extend it`);
  const outputs = outputsOf(run, stored.settings.method);
  if (steps === done && Object.values(outputs).every((p) => existsSync(p))) {
    const examples = stored.examples ?? examplesOf((await readData()).data);
    return finishedSummary(run, info, header, stored, steps, examples, outputs);
  }
  const runInfo: FinetuneRunInfo = { ...stored, settings, steps };
  const ready = await readData();
  emitData(runOptions, ready.data, steps);
  const s = runInfo.settings;
  const model = await LlamaTrainModel.create(info.config, {
    ...modelOptions(s, (name) => header.tensor(name)?.type, runOptions.threads),
    tiedEmbeddings: info.tiedEmbeddings,
  });
  try {
    restoreCheckpoint(path, header, model);
    const trainer = new LlamaTrainer(model, ready.source, {
      ...info.optimizer,
      totalSteps: steps,
      accumulation: info.accumulation,
    });
    trainer.restore(info.trainer);
    // Dropout masks are keyed by the pass: continue where the interrupted run was.
    model.loraPass = trainer.step * trainer.accumulation;
    trimRunForResume(run, trainer.step);
    const onSaved = steps === stored.steps ? undefined : () => updateRunConfig(run, runInfo);
    return await runFinetune(runInfo, trainer, ready.data, tokenizer, header, run, runOptions, onSaved);
  } finally {
    await model.dispose();
  }
}

/** A new length in config.json, once a checkpoint records it (resume reads the checkpoint). */
function updateRunConfig(run: string, info: FinetuneRunInfo): void {
  const path = join(run, "config.json");
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  } catch {
    return; // config.json only describes the run; the checkpoint is what a resume reads
  }
  writeAtomic(
    path,
    `${JSON.stringify({ ...config, settings: info.settings, steps: info.steps }, null, 2)}\n`,
  );
}

/** The summary of a run that had nothing left to do, from its checkpoint and metrics. */
function finishedSummary(
  run: string,
  info: CheckpointInfo,
  header: GgufHeader,
  stored: FinetuneRunInfo,
  steps: number,
  examples: FinetuneSummary["examples"],
  outputs: Pick<FinetuneSummary, "adapter" | "peft" | "model">,
): FinetuneSummary {
  let all = 0;
  let trainable = 0;
  for (const t of header.tensors) {
    const n = t.dims.reduce((a, b) => a * b, 1);
    if (t.name.startsWith("adam_m.")) trainable += n;
    else if (!t.name.startsWith("adam_v.")) all += n;
  }
  const last = lastMetrics(run);
  return {
    run,
    method: stored.settings.method,
    checkpoint: join(run, CHECKPOINT),
    steps,
    step: info.trainer.step,
    ranSteps: 0,
    loss: last?.loss ?? Number.NaN,
    firstLoss: Number.NaN,
    valLoss: last?.val_loss,
    tokensSeen: info.trainer.tokensSeen,
    interrupted: false,
    alreadyDone: true,
    parameters: all - (stored.settings.method === "full" ? 0 : trainable),
    trainable,
    examples,
    ...outputs,
  };
}

function newSource(s: ResolvedSettings, data: PreparedData, tokenizer: Tokenizer): ExampleBatches {
  const padId = tokenizer.padId ?? tokenizer.eosId ?? 0;
  return new ExampleBatches(data.train, s.batch, s.seq, s.packing, padId, s.seed);
}

function emitData(options: FinetuneRunOptions, data: PreparedData, steps: number): void {
  let trainedTokens = 0;
  for (const e of data.train) for (let i = 1; i < e.lossMask.length; i++) trainedTokens += e.lossMask[i]!;
  options.onEvent?.({
    type: "data",
    train: data.train.length,
    validation: data.validation.length,
    skipped: data.skipped,
    trainedTokens,
    steps,
  });
}

function optimizerOf(s: ResolvedSettings, steps: number) {
  return {
    lr: s.lr,
    minLr: s.minLr,
    warmupSteps: s.warmupSteps >= 0 ? s.warmupSteps : Math.min(100, Math.floor(steps / 10)),
    totalSteps: steps,
    beta1: s.beta1,
    beta2: s.beta2,
    weightDecay: s.weightDecay,
    gradClip: s.gradClip,
    accumulation: s.accumulation,
  };
}

async function runFinetune(
  info: FinetuneRunInfo,
  trainer: LlamaTrainer,
  data: PreparedData,
  tokenizer: Tokenizer,
  header: GgufHeader,
  out: string,
  options: FinetuneRunOptions,
  onSaved?: () => void,
): Promise<FinetuneSummary> {
  const s = info.settings;
  const model = trainer.model;
  // Every file the run writes carries the template it trained with (export and merge keep it).
  const tokenizerHeader = withChatTemplate(header, data.template?.source);
  const validation: TokenBatch[] = [];
  if (data.validation.length > 0) {
    const padId = tokenizer.padId ?? tokenizer.eosId ?? 0;
    const packed = packBatches(data.validation, {
      seqLen: s.seq,
      batchSize: s.batch,
      packing: s.packing,
      padId,
    });
    for (const b of packed) {
      if (validation.length === s.evalBatches) break;
      if (b.trainedTargets > 0) validation.push(toTokenBatch(b));
    }
  }
  // Sample replies answer the first validation (else training) example's prompt.
  const sampleFrom = data.validation[0] ?? data.train[0]!;
  const firstTrained = sampleFrom.lossMask.indexOf(1);
  const samplePrompt = Array.from(
    sampleFrom.ids.subarray(0, firstTrained > 0 ? firstTrained : sampleFrom.ids.length),
  );
  let firstLoss = Number.NaN;
  const onEvent = (e: TrainEvent) => {
    if (e.type === "step" && Number.isNaN(firstLoss)) firstLoss = e.metrics.loss;
    options.onEvent?.(e);
  };
  const schedule = {
    steps: info.steps,
    evalEvery: s.evalEvery,
    sampleEvery: s.sampleEvery,
    checkpointEvery: s.checkpointEvery,
  };
  const result = await runTrainingLoop(
    trainer,
    schedule,
    out,
    {
      save: () => {
        const checkpoint: CheckpointInfo = {
          config: model.config,
          tiedEmbeddings: model.tiedEmbeddings,
          batch: s.batch,
          seq: s.seq,
          accumulation: s.accumulation,
          optimizer: trainer.optimizer,
          trainer: trainer.state(),
          run: info,
        };
        saveCheckpoint(join(out, CHECKPOINT), model, checkpoint, tokenizerHeader);
        onSaved?.();
      },
      validate: () =>
        validation.length === 0
          ? undefined
          : trainer.evaluate(new FixedBatches(validation, s.batch, s.seq), validation.length),
      sample: () => {
        const prompt = samplePrompt.slice(-Math.max(1, model.seq - s.sampleTokens));
        return {
          prompt: tokenizer.decode(prompt),
          text: tokenizer.decode(
            trainer.generate(prompt, s.sampleTokens, { temperature: 0 }, tokenizer.eosId),
          ),
        };
      },
    },
    { ...options, onEvent },
  );
  const summary: FinetuneSummary = {
    run: out,
    method: s.method,
    checkpoint: join(out, CHECKPOINT),
    steps: info.steps,
    step: trainer.step,
    ranSteps: trainer.step - result.fromStep,
    loss: result.loss,
    firstLoss,
    valLoss: result.valLoss,
    tokensSeen: trainer.tokensSeen,
    interrupted: result.interrupted,
    alreadyDone: false,
    parameters: model.parameterCount - (s.method === "full" ? 0 : model.trainableCount),
    trainable: model.trainableCount,
    examples: examplesOf(data),
  };
  if (result.interrupted) return summary;
  if (s.method === "full") {
    summary.model = join(out, "model.gguf");
    writeFullModel(summary.model, model, tokenizerHeader, info.baseName);
  } else {
    const adapter: LoraAdapter = {
      architecture: "llama",
      alpha: s.alpha,
      tensors: model.loraTensors(),
      ...(data.template === undefined ? {} : { chatTemplate: data.template.source }),
    };
    summary.adapter = join(out, "adapter.gguf");
    writeLoraGguf(summary.adapter, adapter, `${info.baseName} LoRA`);
    summary.peft = join(out, "peft");
    writePeftAdapter(summary.peft, adapter, {
      baseModel: info.baseName,
      heads: model.config.heads,
      kvHeads: model.config.kvHeads,
      dropout: s.dropout,
    });
  }
  return summary;
}

/**
 * `header` with `templateSource` as its tokenizer.chat_template: the tokenizer metadata a run's
 * files carry (a run on completion records has no template and keeps the base's, if any).
 */
function withChatTemplate(header: GgufHeader, templateSource: string | undefined): GgufHeader {
  if (templateSource === undefined) return header;
  const metadata = new Map(header.metadata);
  metadata.set("tokenizer.chat_template", { type: GgufValueType.STRING, value: templateSource });
  return new GgufHeader(
    header.path,
    header.version,
    header.fileSize,
    header.alignment,
    header.dataOffset,
    metadata,
    header.tensors,
  );
}

/** The fully fine-tuned model as an f32 GGUF with the run's tokenizer metadata (template included). */
function writeFullModel(
  path: string,
  model: LlamaTrainModel,
  tokenizerHeader: GgufHeader,
  baseName: string,
): void {
  const w = new GgufWriter();
  setLlamaMetadata(w, model.config, `${baseName} fine-tuned`, 0);
  copyTokenizerMetadata(w, tokenizerHeader);
  for (const p of model.params) w.addTensor(p.name, p.dims, GGMLType.F32, model.storedBytes(p));
  w.write(path);
}
