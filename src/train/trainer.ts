// The training loop's step: accumulate micro-batch gradients, clip the global norm, update with
// AdamW on the schedule. Pretraining and fine-tuning share it; they differ in the BatchSource
// (and in which tensors train, see TrainModelOptions.trainable).
import { UserError } from "../errors.js";
import { Sampler, type SamplerOptions } from "../model/sampler.js";
import type { BatchSource } from "./data.js";
import type { LlamaTrainModel, TokenBatch } from "./model.js";
import {
  adamwUpdate,
  learningRate,
  type OptimizerOptions,
  type ResolvedOptimizerOptions,
  resolveOptimizerOptions,
} from "./optimizer.js";

export interface TrainerOptions extends OptimizerOptions {
  /** Micro-batches whose gradients add up to one optimizer step (default 1). */
  accumulation?: number;
}

/** What one optimizer step did. */
export interface StepMetrics {
  /** 1-based number of this step. */
  step: number;
  /** Mean loss over the step's target tokens. */
  loss: number;
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Tokens evaluated (inputs, masked or not). */
  tokens: number;
  ms: number;
}

/** Where a trainer stands: what a checkpoint stores besides the tensors. */
export interface TrainerState {
  /** Optimizer steps done. */
  step: number;
  /** Input tokens consumed so far. */
  tokensSeen: number;
  /** The batch source's position (BatchSource.state()). */
  data: unknown;
}

export class LlamaTrainer {
  readonly optimizer: ResolvedOptimizerOptions;
  readonly accumulation: number;
  step = 0;
  tokensSeen = 0;

  constructor(
    readonly model: LlamaTrainModel,
    readonly source: BatchSource,
    options: TrainerOptions,
  ) {
    this.optimizer = resolveOptimizerOptions(options);
    this.accumulation = options.accumulation ?? 1;
    if (!Number.isInteger(this.accumulation) || this.accumulation < 1)
      throw new UserError(`gradient accumulation must be a positive integer, got ${this.accumulation}`);
    if (source.batch !== model.batch || source.seq !== model.seq) {
      throw new Error(
        `batch source gives ${source.batch}×${source.seq}, the model takes ${model.batch}×${model.seq}`,
      );
    }
  }

  state(): TrainerState {
    return { step: this.step, tokensSeen: this.tokensSeen, data: this.source.state() };
  }

  restore(s: TrainerState): void {
    this.step = s.step;
    this.tokensSeen = s.tokensSeen;
    this.source.restore(s.data);
  }

  /** Runs one optimizer step over `accumulation` micro-batches. */
  trainStep(): StepMetrics {
    const started = performance.now();
    const model = this.model;
    const batches: TokenBatch[] = [];
    let count = 0;
    for (let i = 0; i < this.accumulation; i++) {
      const b = this.source.next();
      batches.push(b);
      for (const t of b.targets) if (t >= 0) count++;
    }
    let lossSum = 0;
    let tokens = 0;
    const dscale = 1 / Math.max(count, 1);
    for (const b of batches) {
      model.setBatch(b);
      lossSum += model.forwardBackward(dscale);
      tokens += b.tokens.length;
    }
    const loss = lossSum / Math.max(count, 1);
    const gradNorm = Math.sqrt(model.gradientSumSquares());
    if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
      throw new UserError(
        `training diverged at step ${this.step + 1} (loss ${loss}, gradient norm ${gradNorm}); lower the learning rate`,
      );
    }
    const clip = this.optimizer.gradClip;
    const gradScale = clip > 0 && gradNorm > clip ? clip / gradNorm : 1;
    const lr = learningRate(this.optimizer, this.step);
    adamwUpdate(model, this.optimizer, lr, gradScale, this.step + 1);
    this.step++;
    this.tokensSeen += tokens;
    return { step: this.step, loss, lr, gradNorm, tokens, ms: performance.now() - started };
  }

  /**
   * Mean loss over `batches` micro-batches of `source` (forward only, no gradients). Pass a fresh
   * source with a fixed seed to measure on the same tokens every time.
   */
  evaluate(source: BatchSource, batches: number): number {
    let sum = 0;
    let count = 0;
    for (let i = 0; i < batches; i++) {
      const b = source.next();
      count += this.model.setBatch(b);
      sum += this.model.evaluate();
    }
    return sum / Math.max(count, 1);
  }

  /**
   * Continues `prompt` by up to maxTokens tokens sampled from the model (each step re-reads at
   * most the last seq tokens); stops early at `stop`. Returns the new tokens.
   */
  generate(
    prompt: readonly number[],
    maxTokens: number,
    sampling: SamplerOptions = {},
    stop?: number,
  ): number[] {
    const sampler = new Sampler(sampling);
    const all = [...prompt];
    const out: number[] = [];
    for (let i = 0; i < maxTokens; i++) {
      const logits = this.model.nextTokenLogits(all.slice(-this.model.seq));
      const next = sampler.sample(logits, all);
      if (next === stop) break;
      all.push(next);
      out.push(next);
    }
    return out;
  }
}
