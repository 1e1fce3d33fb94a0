// Perplexity and KL divergence as llama-perplexity measures them (tools/perplexity/perplexity.cpp):
// the whole text is tokenized once, BOS first when the vocabulary adds one; it is cut into
// consecutive, non-overlapping chunks of `ctx` tokens (a rest shorter than a chunk is left out),
// each evaluated from an empty cache with its first token replaced by BOS; only the second half of
// a chunk is scored (positions ctx/2 to ctx-2 predict the next token), so every scored token has
// at least ctx/2 tokens of context. The ± of a mean is its standard error, sqrt(var / (n - 1)).
//
// KL divergence compares a model with its base token by token on the same chunks. llama.cpp saves
// the base's log-probabilities to a file first; here both models run side by side in the same
// chunk loop, so memory stays at one batch of logits per model.
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { UserError } from "../errors.js";
import { Model } from "../model/model.js";

export interface PerplexityOptions {
  /** Tokens per chunk (llama.cpp's -c); default 512. */
  ctx?: number;
  /** Most chunks to evaluate; default all that fit. */
  chunks?: number;
  /** Tokens per forward pass when a model is loaded here (a path); default min(ctx, 512). */
  batch?: number;
  /** Compute threads when a model is loaded here; default all cores. */
  threads?: number;
  /** The unquantized model to compare with: KL divergence, top-token agreement, Δppl. */
  klDivergenceBase?: Model | string;
  /** Called after each chunk with the running figures. */
  onChunk?: (progress: PerplexityProgress) => void;
}

/** The figures after `chunk` of `chunks` chunks. */
export interface PerplexityProgress {
  chunk: number;
  chunks: number;
  ppl: number;
  pplError: number;
  /** With a base model: the running KL divergence, ln(ppl/base ppl) and top-token agreement. */
  kl?: { mean: number; meanError: number; lnRatio: number; lnRatioError: number; sameTop: number };
}

export interface PerplexityResult {
  /** Tokens of the whole text (BOS included), chunk length, chunks evaluated, tokens scored. */
  textTokens: number;
  ctx: number;
  chunks: number;
  scoredTokens: number;
  /** exp(mean negative log-likelihood) and its standard error. */
  ppl: number;
  pplError: number;
  /** Mean negative log-likelihood (nats per token). */
  meanNll: number;
  kl?: KlDivergenceResult;
}

/** A model measured against its base on the same tokens (every "Error" is a standard error). */
export interface KlDivergenceResult {
  basePpl: number;
  basePplError: number;
  /** ppl - base ppl. */
  deltaPpl: number;
  deltaPplError: number;
  /** Mean of ln(ppl / base ppl) over tokens: mean nll - mean base nll. */
  lnRatio: number;
  lnRatioError: number;
  pplRatio: number;
  pplRatioError: number;
  /** Correlation of the per-token nll of the two models. */
  nllCorrelation: number;
  /** KL(base ‖ model) per token, in nats: mean, quantiles, extremes. */
  kld: {
    mean: number;
    meanError: number;
    median: number;
    max: number;
    min: number;
    /** By percent: "99.9", "99", "95", "90", "10", "5", "1", "0.1". */
    percentiles: Record<string, number>;
  };
  /** Fraction of tokens where both models' most likely next token is the same. */
  sameTop: number;
  sameTopError: number;
  /** Root mean square of p(token) - base p(token), and the mean of that difference. */
  rmsDeltaP: number;
  rmsDeltaPError: number;
  meanDeltaP: number;
  meanDeltaPError: number;
}

export const PERCENTILES = [99.9, 99, 95, 90, 10, 5, 1, 0.1] as const;

/** Mean of n values from their sum and sum of squares, with its standard error (0 below 2 values). */
function meanAndError(sum: number, sum2: number, n: number): [number, number] {
  const mean = sum / n;
  const variance = sum2 / n - mean * mean;
  return [mean, variance > 0 && n > 1 ? Math.sqrt(variance / (n - 1)) : 0];
}

/** Per-token sums over the scored tokens. */
class Sums {
  n = 0;
  nll = 0;
  nll2 = 0;
  base = 0;
  base2 = 0;
  cross = 0;
  kld = 0;
  kld2 = 0;
  dp = 0;
  dp2 = 0;
  dp4 = 0;
  sameTop = 0;

  ppl(): [number, number] {
    const [m, e] = meanAndError(this.nll, this.nll2, this.n);
    return [Math.exp(m), Math.exp(m) * e];
  }

  /** Covariance of the two means (of nll and base nll). */
  covariance(): number {
    if (this.n < 2) return 0;
    return (this.cross / this.n - (this.nll / this.n) * (this.base / this.n)) / (this.n - 1);
  }

  lnRatio(): [number, number] {
    const [q, qe] = meanAndError(this.nll, this.nll2, this.n);
    const [b, be] = meanAndError(this.base, this.base2, this.n);
    return [q - b, Math.sqrt(Math.max(0, qe * qe + be * be - 2 * this.covariance()))];
  }
}

/** Linear interpolation between the two nearest of sorted `v` (ascending) at `fraction`. */
function quantile(v: Float32Array, fraction: number): number {
  const p = fraction * (v.length - 1);
  const i = Math.floor(p);
  const j = Math.min(i + 1, v.length - 1);
  return (1 - (p - i)) * v[i]! + (p - i) * v[j]!;
}

/**
 * `m` ready to score chunks of `ctx` tokens: loaded with logitsAll when it is a path (`owned`: the
 * caller disposes of it), else checked.
 */
export async function openForScoring(
  m: Model | string,
  ctx: number,
  options: Pick<PerplexityOptions, "batch" | "threads">,
): Promise<{ model: Model; owned: boolean }> {
  if (typeof m !== "string") {
    if (!m.llama.logitsAll || m.contextSize < ctx) {
      throw new UserError(
        `${m.path}: to measure perplexity, load the model with logitsAll and a context of at least ${ctx} tokens`,
      );
    }
    return { model: m, owned: false };
  }
  const batch = Math.min(options.batch ?? 512, ctx);
  const model = await Model.load(m, {
    threads: options.threads,
    contextSize: ctx,
    batchSize: batch,
    logitsAll: true,
  });
  return { model, owned: true };
}

/** The text's tokens as llama.cpp's perplexity takes them: BOS first when the vocabulary adds one. */
function textTokens(model: Model, text: string): number[] {
  if (model.tokenizer.addEos) {
    throw new UserError(
      `${model.path}: its vocabulary adds EOS to every text, which perplexity cannot score`,
    );
  }
  return model.tokenize(text, { addSpecial: true, parseSpecial: false });
}

/**
 * The perplexity of `model` (a loaded Model or a GGUF path) on `text`, by llama-perplexity's
 * method; with `klDivergenceBase`, also how far its next-token distributions are from the base
 * model's. A model passed loaded must have been loaded with `logitsAll` and a context of at least
 * `ctx`; paths are loaded (and disposed) here.
 */
export async function perplexity(
  model: Model | string,
  text: string,
  options: PerplexityOptions = {},
): Promise<PerplexityResult> {
  const ctx = options.ctx ?? 512;
  if (!Number.isInteger(ctx) || ctx < 3)
    throw new UserError(`the chunk length must be at least 3 tokens, got ${ctx}`);
  const opened: { model: Model; owned: boolean }[] = [];
  try {
    const q = await openForScoring(model, ctx, options);
    opened.push(q);
    if (options.klDivergenceBase === model && typeof model !== "string") {
      // One model's logits view would be overwritten by its own next pass.
      throw new Error(
        "perplexity: the base must be another Model (load the file twice to compare it with itself)",
      );
    }
    const base = options.klDivergenceBase && (await openForScoring(options.klDivergenceBase, ctx, options));
    if (base) opened.push(base);
    return await score(q.model, base ? base.model : undefined, text, ctx, options);
  } finally {
    for (const o of opened) if (o.owned) await o.model.dispose();
  }
}

async function score(
  model: Model,
  base: Model | undefined,
  text: string,
  ctx: number,
  options: PerplexityOptions,
): Promise<PerplexityResult> {
  const vocab = model.config.vocab;
  const tokens = textTokens(base ?? model, text);
  if (base) {
    if (base.config.vocab !== vocab) {
      throw new UserError(
        `${base.path} has ${base.config.vocab} tokens in its vocabulary, ${model.path} has ${vocab}: not a base of that model`,
      );
    }
    const own = textTokens(model, text);
    if (own.length !== tokens.length || own.some((t, i) => t !== tokens[i])) {
      throw new UserError(
        `${base.path} and ${model.path} tokenize the text differently: not a base of that model`,
      );
    }
  }
  if (tokens.length < 2 * ctx) {
    throw new UserError(
      `the text is ${tokens.length} tokens; chunks of ${ctx} tokens need at least ${2 * ctx} (two chunks)`,
    );
  }
  const chunks = Math.min(options.chunks ?? Number.POSITIVE_INFINITY, Math.floor(tokens.length / ctx));
  const first = ctx >> 1;
  const perChunk = ctx - 1 - first;
  const bos = model.tokenizer.addBos ? model.tokenizer.bosId : undefined;
  const step = Math.min(model.llama.batchSize, base?.llama.batchSize ?? Number.POSITIVE_INFINITY);
  const sums = new Sums();
  const klds = base ? new Float32Array(chunks * perChunk) : undefined;
  for (let c = 0; c < chunks; c++) {
    const chunk = tokens.slice(c * ctx, (c + 1) * ctx);
    if (bos !== undefined) chunk[0] = bos;
    for (let p = 0; p < ctx; p += step) {
      const n = Math.min(step, ctx - p);
      const ids = chunk.slice(p, p + n);
      // Both views stay valid until the same model's next forward: the models have their own memory.
      const logits = model.llama.forward(ids, p);
      const baseLogits = base?.llama.forward(ids, p);
      for (let r = Math.max(0, first - p); r < n && p + r <= ctx - 2; r++) {
        const next = chunk[p + r + 1]!;
        const row = logits.subarray(r * vocab, (r + 1) * vocab);
        if (baseLogits) {
          const i = sums.n;
          klds![i] = scoreAgainstBase(row, baseLogits.subarray(r * vocab, (r + 1) * vocab), next, sums);
        } else {
          const nll = logSumExp(row).logZ - row[next]!;
          sums.n++;
          sums.nll += nll;
          sums.nll2 += nll * nll;
        }
      }
    }
    if (options.onChunk) {
      const [ppl, pplError] = sums.ppl();
      const progress: PerplexityProgress = { chunk: c + 1, chunks, ppl, pplError };
      if (base) {
        const [mean, meanError] = meanAndError(sums.kld, sums.kld2, sums.n);
        const [lnRatio, lnRatioError] = sums.lnRatio();
        progress.kl = { mean, meanError, lnRatio, lnRatioError, sameTop: sums.sameTop / sums.n };
      }
      options.onChunk(progress);
    }
    // Let a progress bar draw and signals arrive between chunks.
    await yieldToEventLoop();
  }
  const [ppl, pplError] = sums.ppl();
  const result: PerplexityResult = {
    textTokens: tokens.length,
    ctx,
    chunks,
    scoredTokens: sums.n,
    ppl,
    pplError,
    meanNll: sums.nll / sums.n,
  };
  if (klds) result.kl = klResult(sums, klds);
  return result;
}

/** max, argmax and log Σ exp(row) (in float64). */
function logSumExp(row: Float32Array): { max: number; top: number; logZ: number } {
  let max = row[0]!;
  let top = 0;
  for (let i = 1; i < row.length; i++) {
    if (row[i]! > max) {
      max = row[i]!;
      top = i;
    }
  }
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i]! - max);
  return { max, top, logZ: max + Math.log(sum) };
}

/** Adds one token's figures against the base to `s`; returns its KL(base ‖ model). */
function scoreAgainstBase(row: Float32Array, baseRow: Float32Array, next: number, s: Sums): number {
  const q = logSumExp(row);
  const b = logSumExp(baseRow);
  let kld = 0;
  for (let i = 0; i < row.length; i++) {
    const lb = baseRow[i]! - b.logZ;
    kld += Math.exp(lb) * (lb - (row[i]! - q.logZ));
  }
  const nll = q.logZ - row[next]!;
  const nllBase = b.logZ - baseRow[next]!;
  s.n++;
  s.nll += nll;
  s.nll2 += nll * nll;
  s.base += nllBase;
  s.base2 += nllBase * nllBase;
  s.cross += nll * nllBase;
  s.kld += kld;
  s.kld2 += kld * kld;
  const dp = Math.exp(-nll) - Math.exp(-nllBase);
  s.dp += dp;
  s.dp2 += dp * dp;
  s.dp4 += dp * dp * dp * dp;
  if (q.top === b.top) s.sameTop++;
  return kld;
}

function klResult(s: Sums, klds: Float32Array): KlDivergenceResult {
  const [ppl, pplError] = s.ppl();
  const [baseNll, baseNllError] = meanAndError(s.base, s.base2, s.n);
  const basePpl = Math.exp(baseNll);
  const basePplError = basePpl * baseNllError;
  const [, nllError] = meanAndError(s.nll, s.nll2, s.n);
  const cov = s.covariance();
  const [lnRatio, lnRatioError] = s.lnRatio();
  const [kldMean, kldError] = meanAndError(s.kld, s.kld2, s.n);
  const [mse, mseError] = meanAndError(s.dp2, s.dp4, s.n);
  const [meanDeltaP, meanDeltaPError] = meanAndError(s.dp, s.dp2, s.n);
  const rms = Math.sqrt(mse);
  const sameTop = s.sameTop / s.n;
  klds.sort();
  const n = klds.length;
  const percentiles: Record<string, number> = {};
  for (const p of PERCENTILES) percentiles[String(p)] = quantile(klds, p / 100);
  return {
    basePpl,
    basePplError,
    deltaPpl: ppl - basePpl,
    deltaPplError: Math.sqrt(
      Math.max(0, pplError * pplError + basePplError * basePplError - 2 * ppl * basePpl * cov),
    ),
    lnRatio,
    lnRatioError,
    pplRatio: Math.exp(lnRatio),
    pplRatioError: Math.exp(lnRatio) * lnRatioError,
    nllCorrelation: nllError > 0 && baseNllError > 0 ? cov / (nllError * baseNllError) : 1,
    kld: {
      mean: kldMean,
      meanError: kldError,
      median: n % 2 === 0 ? (klds[n / 2 - 1]! + klds[n / 2]!) / 2 : klds[(n - 1) / 2]!,
      max: klds[n - 1]!,
      min: klds[0]!,
      percentiles,
    },
    sameTop,
    sameTopError: s.n > 1 ? Math.sqrt((sameTop * (1 - sameTop)) / (s.n - 1)) : 0,
    rmsDeltaP: rms,
    rmsDeltaPError: rms > 0 ? (0.5 / rms) * mseError : 0,
    meanDeltaP,
    meanDeltaPError,
  };
}
