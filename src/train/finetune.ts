/**
 * Fine-tuning: LoRA (frozen f32/f16 base), QLoRA (frozen base held quantized, Q4_0 or Q8_0, run by
 * the quantized kernels) and full fine-tuning, on instruction data (Alpaca, ShareGPT, OpenAI
 * messages, prompt/completion) rendered with a chat template and trained only on the assistant
 * replies. The same trainer, checkpoints and exact resume as pretraining.
 *
 * The run directory holds config.json, metrics.jsonl, checkpoint.gguf (every tensor, the AdamW
 * moments of the trained ones, the data position) and the result: adapter.gguf (llama.cpp's
 * LoRA format) and peft/ (a PEFT adapter) for LoRA and QLoRA, model.gguf for full fine-tuning.
 */

import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { readTokenizerFile, tokenizeRecords } from "../data/chat-tokens.js";
import {
  emptyBatchStats,
  type PackedBatch,
  packBatches,
  shuffled,
  splitValidation,
} from "../data/packing.js";
import { RecordReader } from "../data/records.js";
import { UserError } from "../errors.js";
import { GGMLType } from "../formats/ggml-types.js";
import { readGgufHeader } from "../formats/gguf.js";
import {
  LORA_TARGETS,
  type LoraAdapter,
  type LoraTensor,
  parseLoraTargets,
  writeLoraGguf,
  writePeftAdapter,
} from "../model/lora.js";
import { chooseTemplate } from "../model/templates.js";
import { quantizeModel } from "../quant/quantize-model.js";
import { type CheckpointInfo, readCheckpoint, restoreCheckpoint, saveCheckpoint } from "./checkpoint.js";
import type { BatchSource } from "./data.js";
import { exportCheckpoint } from "./export.js";
import { LlamaTrainModel, type LoraProjection, type TokenBatch } from "./model.js";
import type { PretrainEvent, RunOptions } from "./pretrain.js";
import { LlamaTrainer } from "./trainer.js";

export type FinetuneMethod = "lora" | "qlora" | "full";

export interface FinetuneSettings {
  /** Base model GGUF. */
  base: string;
  /** Dataset file (JSON or JSONL). */
  data: string;
  /** Chat template: a built-in name, or the base model's own when absent. */
  template?: string;
  /** Dataset format (detected when absent). */
  format?: string;
  skipInvalid?: boolean;
  trainOnPrompt?: boolean;
  method: FinetuneMethod;
  /** LoRA rank (a multiple of 4), alpha, targets ("q,k,v,o,gate,up,down" or "all"). */
  rank?: number;
  alpha?: number;
  targets?: string;
  /** LoRA dropout: only 0 is supported. */
  dropout?: number;
  /** Storage of the frozen base for QLoRA: q4_0 (default) or q8_0. */
  baseType?: "q4_0" | "q8_0";
  /** Give steps or epochs (default 1 epoch). */
  steps?: number;
  epochs?: number;
  batch: number;
  seq: number;
  accumulation?: number;
  lr?: number;
  minLr?: number;
  warmupSteps?: number;
  weightDecay?: number;
  gradClip?: number;
  seed?: number;
  /** Share of examples held out for validation (default 0.05). */
  valFraction?: number;
  /** Pack several examples per row (default true). */
  packing?: boolean;
  recompute?: boolean;
  /** Steps between validations and checkpoints (0: only at the end). */
  evalEvery?: number;
  checkpointEvery?: number;
}

export interface FinetuneSummary {
  run: string;
  method: FinetuneMethod;
  steps: number;
  step: number;
  loss: number;
  valLoss?: number;
  interrupted: boolean;
  trainableParameters: number;
  examples: { train: number; validation: number; skipped: Record<string, number> };
  /** What the run produced (absent when interrupted). */
  adapter?: string;
  peft?: string;
  model?: string;
}

const CHECKPOINT = "checkpoint.gguf";
const METRICS = "metrics.jsonl";
const EVAL_BATCHES = 8;

/** Examples to batches, epoch by epoch in a seeded order; its state is (epoch, batch index). */
class ExampleBatches implements BatchSource {
  private epoch = 0;
  private index = 0;
  private current: PackedBatch[] = [];

  constructor(
    private readonly examples: readonly import("../data/chat-tokens.js").TokenizedExample[],
    readonly batch: number,
    readonly seq: number,
    private readonly padId: number,
    private readonly seed: number,
    private readonly packing: boolean,
    private readonly shuffle = true,
  ) {
    this.current = this.batchesOf(0);
    if (this.current.length === 0) throw new UserError("no example has a token to train on");
  }

  private batchesOf(epoch: number): PackedBatch[] {
    const order = this.shuffle ? shuffled(this.examples, this.seed + 1 + epoch) : this.examples;
    return [
      ...packBatches(
        order,
        { seqLen: this.seq, batchSize: this.batch, padId: this.padId, packing: this.packing },
        emptyBatchStats(),
      ),
    ];
  }

  get batchesPerEpoch(): number {
    return this.current.length;
  }

  next(): TokenBatch {
    if (this.index >= this.current.length) {
      this.epoch++;
      this.index = 0;
      this.current = this.batchesOf(this.epoch);
    }
    const b = this.current[this.index++]!;
    return {
      rows: b.rows,
      seq: b.seqLen,
      tokens: b.inputs,
      targets: b.targets,
      positions: b.positions,
      segments: b.segmentIds,
    };
  }

  state(): unknown {
    return { kind: "examples", epoch: this.epoch, index: this.index };
  }

  restore(state: unknown): void {
    const s = state as { kind?: string; epoch?: number; index?: number };
    if (s?.kind !== "examples" || !Number.isInteger(s.epoch) || !Number.isInteger(s.index))
      throw new UserError("the checkpoint's data position is not a fine-tuning position");
    this.epoch = s.epoch!;
    this.index = s.index!;
    this.current = this.batchesOf(this.epoch);
  }
}

function loraProjections(targets: string): LoraProjection[] {
  return parseLoraTargets(targets).map((t) => LORA_TARGETS[t].gguf as LoraProjection);
}

/** The base file training reads: for QLoRA, the base quantized (kept in the run directory). */
async function trainingBase(s: FinetuneSettings, run: string): Promise<string> {
  if (s.method !== "qlora") return s.base;
  const h = readGgufHeader(s.base);
  const q = h.tensor("blk.0.attn_q.weight");
  const want = s.baseType === "q8_0" ? GGMLType.Q8_0 : GGMLType.Q4_0;
  if (q && q.type === want) return s.base;
  const path = join(run, `base-${s.baseType ?? "q4_0"}.gguf`);
  if (!existsSync(path)) await quantizeModel(s.base, path, s.baseType ?? "q4_0");
  return path;
}

function validate(s: FinetuneSettings): void {
  if (!["lora", "qlora", "full"].includes(s.method))
    throw new UserError(`--method must be lora, qlora or full, got "${s.method}"`);
  if (s.dropout !== undefined && s.dropout !== 0) {
    throw new UserError("--dropout: LoRA dropout is not supported yet; use --dropout 0");
  }
  if (s.baseType !== undefined && s.baseType !== "q4_0" && s.baseType !== "q8_0")
    throw new UserError(`--base-type must be q4_0 or q8_0, got "${s.baseType}"`);
  if (s.steps !== undefined && s.epochs !== undefined)
    throw new UserError("give --steps or --epochs, not both");
  if (s.method !== "full") loraProjections(s.targets ?? "all");
}

/** Starts a fine-tuning run in `out` (a new directory) or, with `resume`, continues one. */
export async function finetune(
  settings: FinetuneSettings & { out: string } & RunOptions,
): Promise<FinetuneSummary> {
  const out = settings.out;
  if (existsSync(join(out, CHECKPOINT))) {
    throw new UserError(
      `${out} already holds a run; continue it with --resume ${out} or choose another --out`,
    );
  }
  validate(settings);
  mkdirSync(out, { recursive: true });
  const s: FinetuneSettings = { ...settings, base: resolve(settings.base), data: resolve(settings.data) };
  delete (s as { out?: string }).out;
  delete (s as { onEvent?: unknown }).onEvent;
  delete (s as { signal?: unknown }).signal;
  delete (s as { threads?: unknown }).threads;
  writeFileSync(join(out, "config.json"), `${JSON.stringify(s, null, 2)}\n`);
  writeFileSync(join(out, METRICS), "");
  return run(s, out, settings, undefined);
}

/** Continues the fine-tuning run in `run` from its checkpoint. */
export async function resumeFinetune(runDir: string, options: RunOptions = {}): Promise<FinetuneSummary> {
  const path = join(runDir, CHECKPOINT);
  if (!existsSync(path)) throw new UserError(`${runDir}: no ${CHECKPOINT} to resume from`);
  const { info, header } = readCheckpoint(path);
  const r = info.run as { kind?: string; settings?: FinetuneSettings } | null;
  if (r?.kind !== "finetune" || !r.settings) throw new UserError(`${path}: not a fine-tuning checkpoint`);
  for (const f of readdirSync(runDir))
    if (f.startsWith(`${CHECKPOINT}.tmp-`)) rmSync(join(runDir, f), { force: true });
  return run(r.settings, runDir, options, { info, header, path });
}

async function run(
  s: FinetuneSettings,
  out: string,
  options: RunOptions,
  resumeFrom: { info: CheckpointInfo; header: ReturnType<typeof readGgufHeader>; path: string } | undefined,
): Promise<FinetuneSummary> {
  const emit = options.onEvent ?? ((_: PretrainEvent) => {});
  const seed = s.seed ?? 1;
  const baseHeader = readGgufHeader(s.base);
  const { tokenizer, chatTemplate } = readTokenizerFile(s.base);
  const chosen = chooseTemplate(chatTemplate, s.template);
  const reader = await RecordReader.open(s.data, { format: s.format as never, skipInvalid: s.skipInvalid });
  const examples = await tokenizeRecords(reader, {
    tokenizer,
    template: { name: chosen.name, template: chosen.template, label: chosen.label },
    trainOnPrompt: s.trainOnPrompt,
  });
  const skipped = Object.fromEntries(reader.skipped);
  if (examples.length === 0) throw new UserError(`${s.data}: no usable records`);
  const split = splitValidation(examples, {
    fraction: examples.length > 1 ? (s.valFraction ?? 0.05) : 0,
    seed,
  });
  const padId = tokenizer.padId ?? tokenizer.eosId ?? 0;
  const packing = s.packing ?? true;
  const source = new ExampleBatches(split.train, s.batch, s.seq, padId, seed, packing);
  const accumulation = s.accumulation ?? 1;
  const steps = s.steps ?? Math.max(1, Math.ceil(((s.epochs ?? 1) * source.batchesPerEpoch) / accumulation));

  const lora =
    s.method === "full"
      ? undefined
      : {
          rank: s.rank ?? 8,
          alpha: s.alpha ?? 16,
          targets: loraProjections(s.targets ?? "q,k,v,o,gate,up,down"),
        };
  const basePath = await trainingBase(s, out);
  const model = await LlamaTrainModel.load(basePath, {
    batch: s.batch,
    seq: s.seq,
    threads: options.threads,
    recompute: s.recompute,
    trainable: () => s.method === "full",
    lora,
  });
  try {
    const trainer = new LlamaTrainer(model, source, {
      lr: s.lr ?? (s.method === "full" ? 1e-4 : 1e-3),
      minLr: s.minLr,
      warmupSteps: s.warmupSteps ?? Math.min(20, Math.floor(steps / 10)),
      weightDecay: s.weightDecay ?? 0,
      gradClip: s.gradClip,
      totalSteps: steps,
      accumulation,
    });
    if (resumeFrom) {
      restoreCheckpoint(resumeFrom.path, resumeFrom.header, model);
      trainer.restore(resumeFrom.info.trainer);
      const lines = readFileSync(join(out, METRICS), "utf8").split("\n");
      const keep = lines.filter((line) => {
        try {
          return (JSON.parse(line) as { step: number }).step <= trainer.step;
        } catch {
          return false;
        }
      });
      writeFileSync(join(out, METRICS), keep.map((l) => `${l}\n`).join(""));
    } else if (lora) model.initializeLora(seed);

    const checkpointPath = join(out, CHECKPOINT);
    const save = () => {
      saveCheckpoint(
        checkpointPath,
        model,
        {
          config: model.config,
          tiedEmbeddings: model.tiedEmbeddings,
          batch: s.batch,
          seq: s.seq,
          accumulation,
          optimizer: trainer.optimizer,
          trainer: trainer.state(),
          run: { kind: "finetune", settings: s },
        },
        baseHeader,
      );
      emit({ type: "checkpoint", step: trainer.step, path: checkpointPath });
    };
    const validation = () => {
      if (split.validation.length === 0) return undefined;
      const v = new ExampleBatches(split.validation, s.batch, s.seq, padId, seed, packing, false);
      const valLoss = trainer.evaluate(v, Math.min(EVAL_BATCHES, v.batchesPerEpoch));
      emit({ type: "eval", step: trainer.step, valLoss });
      return valLoss;
    };

    const fromStep = trainer.step;
    emit({
      type: "start",
      config: model.config,
      parameters: model.trainableCount,
      memory: model.memory,
      steps,
      fromStep,
      threads: model.threads,
    });
    let loss = Number.NaN;
    let valLoss: number | undefined;
    let interrupted = false;
    const started = performance.now();
    let tokensRun = 0;
    const evalEvery = s.evalEvery ?? 0;
    const checkpointEvery = s.checkpointEvery ?? 0;
    while (trainer.step < steps) {
      if (options.signal?.aborted) {
        interrupted = true;
        break;
      }
      const m = trainer.trainStep();
      loss = m.loss;
      tokensRun += m.tokens;
      const seconds = (performance.now() - started) / 1000;
      const line: Record<string, number> = {
        step: m.step,
        loss: m.loss,
        lr: m.lr,
        grad_norm: m.gradNorm,
        tokens: trainer.tokensSeen,
        tokens_per_s: Math.round(tokensRun / seconds),
      };
      const last = trainer.step === steps;
      if ((evalEvery > 0 && m.step % evalEvery === 0) || last) {
        valLoss = validation();
        if (valLoss !== undefined) line.val_loss = valLoss;
      }
      writeFileSync(join(out, METRICS), `${JSON.stringify(line)}\n`, { flag: "a" });
      emit({
        type: "step",
        metrics: m,
        tokensPerSecond: tokensRun / seconds,
        etaSeconds: ((steps - trainer.step) * seconds) / (trainer.step - fromStep),
      });
      if (!last && checkpointEvery > 0 && m.step % checkpointEvery === 0) save();
      await yieldToEventLoop();
    }
    save();
    const summary: FinetuneSummary = {
      run: out,
      method: s.method,
      steps,
      step: trainer.step,
      loss,
      valLoss,
      interrupted,
      trainableParameters: model.trainableCount,
      examples: { train: split.train.length, validation: split.validation.length, skipped },
    };
    if (interrupted) return summary;
    if (lora) {
      const adapter = extractAdapter(model, lora.alpha);
      summary.adapter = join(out, "adapter.gguf");
      writeLoraGguf(summary.adapter, adapter);
      summary.peft = join(out, "peft");
      writePeftAdapter(summary.peft, adapter, {
        baseModel: s.base,
        heads: model.config.heads,
        kvHeads: model.config.kvHeads,
        dropout: 0,
      });
    } else {
      summary.model = join(out, "model.gguf");
      const tmp = `${summary.model}.export`;
      await exportCheckpoint(checkpointPath, tmp, "f32");
      renameSync(tmp, summary.model);
    }
    return summary;
  } finally {
    await model.dispose();
  }
}

/** The trained A and B of every adapted projection, as an adapter. */
export function extractAdapter(model: LlamaTrainModel, alpha: number): LoraAdapter {
  const tensors: LoraTensor[] = [];
  for (const p of model.params) {
    if (!p.name.endsWith(".lora_a")) continue;
    const base = p.name.slice(0, -".lora_a".length);
    const b = model.param(`${base}.lora_b`);
    const [inFeatures, rank] = p.dims as [number, number];
    const outFeatures = b.dims[1]!;
    tensors.push({
      base,
      rank,
      inFeatures,
      outFeatures,
      a: model.weights(p).slice(),
      b: model.weights(b).slice(),
    });
  }
  return { architecture: "llama", alpha, tensors };
}
