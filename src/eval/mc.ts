/**
 * Multiple-choice benchmarks scored by log-likelihood, as lm-evaluation-harness scores them: each
 * choice's continuation is scored by the sum of its tokens' log-probabilities given the context;
 * acc counts questions whose gold choice scores highest, acc_norm the same after dividing each
 * score by its choice's length in characters; both are means over questions, with the standard
 * error of a mean (sample standard deviation over √n), per category and overall.
 *
 * Tokens follow the harness's encoding of a (context, continuation) pair: whitespace at the end of
 * the context moves to the start of the continuation, the continuation's tokens are those of
 * context + continuation after the context's own tokens, and a sequence longer than the context
 * window loses tokens from its left. BOS starts the context when the model's tokenizer asks for it.
 *
 * The KV cache is reused between evaluations: tokens already in it (the question's context, a
 * few-shot prefix shared with the previous question) are not evaluated again; each continuation
 * is evaluated from the last context token on, over the positions the previous choice used, so a
 * question of four choices costs its context once plus four continuations.
 */
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { UserError } from "../errors.js";
import type { LlamaModel } from "../model/llama.js";
import type { Model } from "../model/model.js";
import type { Tokenizer } from "../tokenizer/index.js";
import { Rng } from "../util/random.js";
import type { McDoc, McFormat } from "./mc-formats.js";
import type { McResult } from "./results.js";

/** Python's len() of a string: code points. */
export const charLength = (s: string) => {
  let n = 0;
  for (const _ of s) n++;
  return n;
};

/** Index of the largest value, the first one on ties (as numpy's argmax). */
export function argmax(values: readonly number[]): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

/** log softmax(logits)[id], in float64. */
export function logProbability(logits: Float32Array, id: number): number {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  return logits[id]! - max - Math.log(sum);
}

/** A (context, continuation) pair as tokens, encoded as the harness encodes it. */
export function encodePair(
  tokenizer: Tokenizer,
  context: string,
  continuation: string,
): { context: number[]; continuation: number[] } {
  const trimmed = context.trimEnd();
  continuation = context.slice(trimmed.length) + continuation;
  // Dataset text is text: "</s>" in a question is not the end-of-sequence token.
  const bos = tokenizer.addBos && tokenizer.bosId !== undefined ? [tokenizer.bosId] : [];
  const encode = (s: string) => [...bos, ...tokenizer.encode(s, { addSpecial: false, parseSpecial: false })];
  const whole = encode(trimmed + continuation);
  const ctx = encode(trimmed);
  return { context: ctx, continuation: whole.slice(ctx.length) };
}

/**
 * Log-likelihoods of continuations on one sequence of a model loaded with `logitsAll`. With
 * `reuse`, the tokens at the start of a request that the KV cache already holds (from the requests
 * before) are not evaluated again; without it every request is evaluated whole.
 */
export class LoglikelihoodScorer {
  /** Tokens whose keys and values sit in the cache at positions 0, 1, ... */
  private cached: number[] = [];
  /** Tokens evaluated so far. */
  evaluatedTokens = 0;

  constructor(
    private readonly llama: LlamaModel,
    readonly reuse = true,
  ) {
    if (!llama.logitsAll) throw new Error("LoglikelihoodScorer needs a model loaded with logitsAll");
  }

  /** Sum of log P(continuation[i] | context, continuation[<i]); `where` names the question in errors. */
  loglikelihood(context: readonly number[], continuation: readonly number[], where: string): number {
    if (continuation.length === 0) throw new UserError(`${where}: a choice makes no tokens`);
    if (context.length === 0) {
      throw new UserError(
        `${where}: the context is empty and the model's tokenizer adds no BOS token to start it`,
      );
    }
    const window = this.llama.contextSize;
    if (continuation.length > window) {
      throw new UserError(
        `${where}: a choice is ${continuation.length} tokens, more than the context of ${window} tokens holds`,
      );
    }
    let all = [...context, ...continuation];
    if (all.length > window + 1) all = all.slice(all.length - window - 1);
    // The model reads every token but the last; row r of its output predicts token r + 1.
    const feed = all.length - 1;
    const first = feed - continuation.length;
    let keep = 0;
    if (this.reuse) {
      // The row predicting the first continuation token is needed, so evaluation starts there at the latest.
      const max = Math.min(this.cached.length, first);
      while (keep < max && this.cached[keep] === all[keep]) keep++;
    }
    this.cached.length = keep;
    const vocab = this.llama.config.vocab;
    const batch = this.llama.batchSize;
    let sum = 0;
    for (let p = keep; p < feed; p += batch) {
      const chunk = all.slice(p, Math.min(feed, p + batch));
      const logits = this.llama.forward(chunk, p);
      this.cached.push(...chunk);
      this.evaluatedTokens += chunk.length;
      for (let j = Math.max(0, first - p); j < chunk.length; j++) {
        sum += logProbability(logits.subarray(j * vocab, (j + 1) * vocab), all[p + j + 1]!);
      }
    }
    return sum;
  }

  /** Forgets what the cache holds. */
  reset(): void {
    this.cached = [];
  }
}

function pushTo<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

/** acc and acc_norm of one question from its choices' log-likelihoods. */
export function scoreChoices(
  loglikelihoods: readonly number[],
  choices: readonly string[],
  gold: number,
): { acc: number; accNorm: number } {
  const normed = loglikelihoods.map((ll, i) => ll / charLength(choices[i]!));
  return { acc: argmax(loglikelihoods) === gold ? 1 : 0, accNorm: argmax(normed) === gold ? 1 : 0 };
}

/** The standard error of the mean of `values` (sample standard deviation / √n); null below 2 values. */
export function meanStderr(values: readonly number[]): number | null {
  const n = values.length;
  if (n < 2) return null;
  const mean = values.reduce((a, b) => a + b, 0) / n;
  const variance = values.reduce((a, v) => a + (v - mean) ** 2, 0) / (n - 1);
  return Math.sqrt(variance) / Math.sqrt(n);
}

export interface McQuestionScore {
  category?: string;
  gold: number;
  loglikelihoods: number[];
  acc: number;
  accNorm: number;
}

/** Means by category (sorted by name) and overall, with the standard errors of the overall means. */
export function aggregateMc(scores: readonly McQuestionScore[]): Pick<McResult, "categories" | "overall"> {
  const mean = (v: number[]) => (v.length === 0 ? 0 : v.reduce((a, b) => a + b, 0) / v.length);
  const byCategory = new Map<string, McQuestionScore[]>();
  for (const s of scores) {
    if (s.category === undefined) continue;
    pushTo(byCategory, s.category, s);
  }
  const categories: McResult["categories"] = {};
  for (const name of [...byCategory.keys()].sort()) {
    const list = byCategory.get(name)!;
    categories[name] = {
      acc: mean(list.map((s) => s.acc)),
      acc_norm: mean(list.map((s) => s.accNorm)),
      n: list.length,
    };
  }
  const acc = scores.map((s) => s.acc);
  const accNorm = scores.map((s) => s.accNorm);
  return {
    categories,
    overall: {
      acc: mean(acc),
      acc_stderr: meanStderr(acc),
      acc_norm: mean(accNorm),
      acc_norm_stderr: meanStderr(accNorm),
      n: scores.length,
    },
  };
}

/**
 * Few-shot examples drawn from a pool of records: for MMLU the first K of the question's subject
 * (the harness's first_n over the subject's dev split), for the others K drawn at random for each
 * question from one seeded generator. When the pool is the evaluated file itself, a question is
 * never its own example.
 */
export class FewshotSampler {
  private readonly rng: Rng;
  private readonly bySubject = new Map<string, McDoc[]>();

  constructor(
    private readonly pool: readonly McDoc[],
    private readonly shots: number,
    private readonly format: McFormat,
    seed: number,
    /** The pool is the evaluated file: question i is pool[i]. */
    private readonly samePool = false,
  ) {
    this.rng = new Rng(seed);
    if (format === "mmlu") {
      for (const d of pool) {
        pushTo(this.bySubject, d.category!, d);
      }
    }
    const need = shots + (samePool ? 1 : 0);
    if (shots > 0 && format !== "mmlu" && pool.length < need) {
      throw new UserError(
        `--shots ${shots} needs ${need} few-shot records, the few-shot data has ${pool.length}`,
      );
    }
  }

  /** The prompt text before question `index`'s own context: description and solved examples. */
  prefix(doc: McDoc, index: number): string {
    if (this.shots === 0) return doc.description;
    let examples: McDoc[];
    if (this.format === "mmlu") {
      const subject = this.bySubject.get(doc.category!) ?? [];
      examples = subject.filter((d) => !(this.samePool && d === this.pool[index])).slice(0, this.shots);
      if (examples.length < this.shots) {
        throw new UserError(
          `${doc.where}: --shots ${this.shots} needs ${this.shots} few-shot records of subject ${doc.category}, the few-shot data has ${examples.length}`,
        );
      }
    } else {
      const want = this.shots + (this.samePool ? 1 : 0);
      const drawn = new Set<number>();
      while (drawn.size < want) drawn.add(this.rng.nextInt(this.pool.length));
      examples = [...drawn]
        .filter((i) => !(this.samePool && i === index))
        .slice(0, this.shots)
        .map((i) => this.pool[i]!);
    }
    return `${doc.description}${examples.map((e) => `${e.example}\n\n`).join("")}`;
  }
}

export interface McEvalOptions {
  format: McFormat;
  shots?: number;
  /** Records the few-shot examples come from (needed when shots > 0). */
  fewshot?: readonly McDoc[];
  /** The few-shot records are the evaluated ones (a question is never its own example). */
  fewshotIsData?: boolean;
  /** Seed of the few-shot draws (default 1234, the harness's). */
  fewshotSeed?: number;
  /** Reuse the KV cache between evaluations (default true). */
  reuse?: boolean;
  /** The model's name in the result (default: the model's path). */
  modelName?: string;
  /** Called after every question with the number done. */
  onProgress?: (done: number) => void;
  signal?: AbortSignal;
}

export interface McEvalResult {
  result: McResult;
  questions: McQuestionScore[];
  /** Tokens the model evaluated (fewer with KV reuse). */
  evaluatedTokens: number;
  /** Questions whose prompt lost tokens on its left to fit the context. */
  truncated: number;
}

/** Scores `docs` on a model loaded with `logitsAll` (see loadModel). */
export async function evaluateMc(
  model: Model,
  docs: readonly McDoc[],
  options: McEvalOptions,
): Promise<McEvalResult> {
  const shots = options.shots ?? 0;
  if (shots > 0 && options.format === "truthfulqa_mc") {
    throw new UserError(
      "--shots: truthfulqa_mc's prompt holds its own six solved questions; leave --shots at 0",
    );
  }
  if (shots > 0 && options.fewshot === undefined)
    throw new UserError(`--shots ${shots} needs --fewshot-data FILE`);
  const sampler = new FewshotSampler(
    options.fewshot ?? [],
    shots,
    options.format,
    options.fewshotSeed ?? 1234,
    options.fewshotIsData ?? false,
  );
  const scorer = new LoglikelihoodScorer(model.llama, options.reuse ?? true);
  const questions: McQuestionScore[] = [];
  let truncated = 0;
  for (const [i, doc] of docs.entries()) {
    if (options.signal?.aborted) throw new UserError("stopped");
    const prefix = sampler.prefix(doc, i);
    let cut = false;
    const loglikelihoods = doc.pairs.map((pair) => {
      const tokens = encodePair(model.tokenizer, prefix + pair.context, pair.continuation);
      if (tokens.context.length + tokens.continuation.length > model.contextSize + 1) cut = true;
      return scorer.loglikelihood(tokens.context, tokens.continuation, doc.where);
    });
    if (cut) truncated++;
    questions.push({
      category: doc.category,
      gold: doc.gold,
      loglikelihoods,
      ...scoreChoices(loglikelihoods, doc.choices, doc.gold),
    });
    options.onProgress?.(questions.length);
    // Lets a progress bar draw and a signal arrive between questions.
    await yieldToEventLoop();
  }
  return {
    result: {
      kind: "smallhammer-eval",
      type: "mc",
      model: options.modelName ?? model.path,
      format: options.format,
      shots,
      ...aggregateMc(questions),
    },
    questions,
    evaluatedTokens: scorer.evaluatedTokens,
    truncated,
  };
}

/** The scores as markdown: the overall line (with standard errors, as the harness prints them), then each category. */
export function formatMcMarkdown(result: McResult): string {
  const f = (v: number) => v.toFixed(4);
  const se = (v: number | null) => (v === null ? "N/A" : f(v));
  const o = result.overall;
  const lines = [
    "| model | format | shots | n | acc | ± | acc_norm | ± |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
    `| ${cell(result.model)} | ${result.format} | ${result.shots} | ${o.n} | ${f(o.acc)} | ${se(o.acc_stderr)} | ${f(o.acc_norm)} | ${se(o.acc_norm_stderr)} |`,
  ];
  const names = Object.keys(result.categories);
  if (names.length > 0) {
    lines.push("", "| category | n | acc | acc_norm |", "|---|---:|---:|---:|");
    for (const name of names) {
      const c = result.categories[name]!;
      lines.push(`| ${cell(name)} | ${c.n} | ${f(c.acc)} | ${f(c.acc_norm)} |`);
    }
  }
  return `${lines.join("\n")}\n`;
}

/** Text in a markdown table cell: one line, pipes escaped. */
function cell(s: string): string {
  return s.replace(/[\r\n]+/g, " ").replaceAll("|", "\\|");
}
