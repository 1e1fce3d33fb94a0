// AdamW and the learning-rate schedule.
import { UserError } from "../errors.js";
import type { LlamaTrainModel } from "./model.js";

export interface OptimizerOptions {
  /** Peak learning rate. */
  lr: number;
  /** Learning rate at the end of the cosine decay (default lr / 10). */
  minLr?: number;
  /** Steps of linear warmup from 0 to lr (default 0). */
  warmupSteps?: number;
  /** Steps of the whole run; the cosine reaches minLr at the last one. */
  totalSteps: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Decoupled weight decay of the matrices (norm weights never decay). Default 0.1. */
  weightDecay?: number;
  /** Largest global gradient norm; larger gradients are scaled down to it (0 = off). Default 1. */
  gradClip?: number;
}

export type ResolvedOptimizerOptions = Required<OptimizerOptions>;

export function resolveOptimizerOptions(o: OptimizerOptions): ResolvedOptimizerOptions {
  const r: ResolvedOptimizerOptions = {
    lr: o.lr,
    minLr: o.minLr ?? o.lr / 10,
    warmupSteps: o.warmupSteps ?? 0,
    totalSteps: o.totalSteps,
    beta1: o.beta1 ?? 0.9,
    beta2: o.beta2 ?? 0.95,
    eps: o.eps ?? 1e-8,
    weightDecay: o.weightDecay ?? 0.1,
    gradClip: o.gradClip ?? 1,
  };
  const check = (ok: boolean, what: string) => {
    if (!ok) throw new UserError(`optimizer: ${what}`);
  };
  check(r.lr > 0 && Number.isFinite(r.lr), `learning rate must be positive, got ${r.lr}`);
  check(r.minLr >= 0 && r.minLr <= r.lr, `minimum learning rate must be from 0 to ${r.lr}, got ${r.minLr}`);
  check(
    Number.isInteger(r.totalSteps) && r.totalSteps >= 1,
    `total steps must be a positive integer, got ${r.totalSteps}`,
  );
  check(
    Number.isInteger(r.warmupSteps) && r.warmupSteps >= 0,
    `warmup steps must be a whole number, got ${r.warmupSteps}`,
  );
  check(r.beta1 >= 0 && r.beta1 < 1 && r.beta2 >= 0 && r.beta2 < 1, "betas must be in [0, 1)");
  check(r.eps > 0, "eps must be positive");
  check(r.weightDecay >= 0, "weight decay must not be negative");
  check(r.gradClip >= 0, "gradient clip must not be negative");
  return r;
}

/**
 * The learning rate of step s (0-based): linear warmup to lr over warmupSteps, then a cosine from
 * lr down to minLr at the last step.
 */
export function learningRate(o: ResolvedOptimizerOptions, s: number): number {
  if (s < o.warmupSteps) return (o.lr * (s + 1)) / o.warmupSteps;
  const span = o.totalSteps - o.warmupSteps;
  if (span <= 1) return o.lr;
  const progress = Math.min(1, (s - o.warmupSteps) / (span - 1));
  return o.minLr + 0.5 * (o.lr - o.minLr) * (1 + Math.cos(Math.PI * progress));
}

/**
 * Applies one AdamW update to every trainable tensor of `model` from its accumulated gradients,
 * scaled by gradScale (the clipping factor), and clears the gradients. `step` is the 1-based
 * count of updates so far including this one (for the bias corrections).
 */
export function adamwUpdate(
  model: LlamaTrainModel,
  o: ResolvedOptimizerOptions,
  lr: number,
  gradScale: number,
  step: number,
): void {
  const bc1 = 1 / (1 - o.beta1 ** step);
  const bc2 = 1 / (1 - o.beta2 ** step);
  for (const p of model.params) {
    if (!p.trainable) continue;
    model.ops.adamw(
      { param: p.weight.offset, grad: p.grad, m: p.m, v: p.v, length: p.length },
      {
        lr,
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weightDecay: p.decay ? o.weightDecay : 0,
        gradScale,
        bc1,
        bc2,
      },
    );
  }
  model.ops.flush();
}
