/**
 * An LLM judge for answers to MT-bench-style questions (answers.ts), over any OpenAI-compatible
 * endpoint through the teacher client (timeouts, retries with backoff, rate limits, token counts).
 *
 *   const run = await judgeAnswers({
 *     judge: new TeacherClient({ url: "http://127.0.0.1:8080/v1", model: "judge" }),
 *     questions, answers, baseline, references, out: "judgments.jsonl",
 *   });
 *   run.summary   // the result file: judge-single or judge-pairwise
 *
 * Single-answer grading: every turn of every question gets a grade from 1 to 10; a turn of a
 * category with a right answer (REFERENCE_CATEGORIES) is graded against a reference answer when one
 * is given (a reference file, else the question's own `reference`).
 *
 * Pairwise comparison against a baseline's answers: every turn is judged twice, with the model's
 * answer shown first and then with the baseline's first, as MT-bench does to cancel the judge's
 * liking for a position. A win (or loss) counts only when both orders agree; a pair on which the
 * orders disagree is a tie.
 *
 * A reply without a parseable verdict is followed up (up to `reasks` times) with a request for the
 * verdict alone, then counted as unparsed. Every judgment is appended to `out` as it is made, with
 * a hash of what the judge was shown; a run started again reuses each judgment whose hash matches
 * and asks only for the rest, so nothing is asked twice.
 */

import { createHash } from "node:crypto";
import { closeSync, existsSync, statSync, writeSync } from "node:fs";
import { describeSource, readJsonValues } from "../data/records.js";
import { TeacherAbortError, type TeacherClient, type TeacherMessage } from "../data/teacher.js";
import { UserError } from "../errors.js";
import { clientMessage } from "./answers.js";
import {
  type PairVerdict,
  pairPrompt,
  parsePairVerdict,
  parseScore,
  SCORE_REASK,
  scorePrompt,
  VERDICT_REASK,
} from "./judge-prompts.js";
import {
  type AnswerSet,
  dropCutLine,
  MAX_EVAL_LINE_CHARS,
  openAppend,
  type Question,
  questionKey,
  REFERENCE_CATEGORIES,
} from "./mt-bench-files.js";

export interface JudgeOptions {
  judge: TeacherClient;
  questions: readonly Question[];
  answers: AnswerSet;
  /** The baseline's answers: pairwise comparison instead of single-answer grading. */
  baseline?: AnswerSet;
  /** Reference answers by question key (else each question's own `reference`). */
  references?: Map<string, string[]>;
  /** Judgments JSONL, appended to and resumed from. */
  out: string;
  /** Requests in flight at once (default 4). */
  concurrency?: number;
  /** Most tokens per judge reply (default 2048). */
  maxTokens?: number;
  /** Follow-ups asking for the verdict alone after a reply without one (default 1). */
  reasks?: number;
  signal?: AbortSignal;
  /** Called once with the resumed count, then after every judgment. */
  onProgress?: (progress: JudgeProgress) => void;
}

export interface JudgeProgress {
  /** Judgments the run needs (two per turn for pairwise). */
  total: number;
  done: number;
  /** Judgments without a verdict after every follow-up. */
  unparsed: number;
  /** Judge requests sent by this run (follow-ups included). */
  requests: number;
  /** Follow-ups sent by this run. */
  reasked: number;
  promptTokens: number;
  completionTokens: number;
  /** True when some reply had no usage and its tokens were estimated. */
  tokensEstimated: boolean;
  /** Requests sent again by the client (429, 5xx, timeouts...). */
  retries: number;
}

export interface CategoryMean {
  mean: number | null;
  n: number;
}

export interface SingleSummary {
  kind: "smallhammer-eval";
  type: "judge-single";
  model: string;
  judge: string;
  categories: Record<string, CategoryMean>;
  overall: CategoryMean;
  /** Every parsed 1–10 score, in question and turn order. */
  scores: number[];
  unparsed: number;
}

export interface PairCounts {
  win: number;
  tie: number;
  loss: number;
  unparsed: number;
}

export interface PairwiseSummary {
  kind: "smallhammer-eval";
  type: "judge-pairwise";
  model: string;
  baseline: string;
  judge: string;
  categories: Record<string, PairCounts>;
  overall: PairCounts;
}

export type JudgeSummary = SingleSummary | PairwiseSummary;

export interface JudgeRun {
  /** The result file (`--json`, `--summary-out`); complete only when `stopped` is false. */
  summary: JudgeSummary;
  progress: JudgeProgress;
  /** Judgments reused from an earlier run. */
  reused: number;
  /** True when it stopped on the signal before the last judgment. */
  stopped: boolean;
  /** Turns judged against a reference answer, and turns of reference categories judged without one. */
  withReference: number;
  withoutReference: number;
  /** Mean grade by turn number (single), and pairs the two orders disagreed on (pairwise). */
  turnMeans: CategoryMean[];
  inconsistent: number;
}

type Order = "model-first" | "baseline-first";

/** One request for a verdict: a turn of a question, and for pairwise the order of the two answers. */
interface Job {
  question: Question;
  /** 0-based. */
  turn: number;
  order?: Order;
  messages: TeacherMessage[];
  hash: string;
  key: string;
}

/** What a judgment found: a grade, or the winner (the model, the baseline, a tie), or nothing. */
interface Verdict {
  score?: number | null;
  winner?: "model" | "baseline" | "tie" | null;
}

function jobKey(question: Question, turn: number, order?: Order): string {
  return `${questionKey(question.id)}\u0000${turn + 1}\u0000${order ?? ""}`;
}

function hashMessages(messages: TeacherMessage[]): string {
  return createHash("sha256").update(JSON.stringify(messages)).digest("hex").slice(0, 16);
}

/** The answers of `set` to `question`, checked to cover every turn. */
function answersTo(set: AnswerSet, question: Question, what: string): string[] {
  const turns = set.byId.get(questionKey(question.id));
  if (!turns) {
    throw new UserError(`${set.path}: no ${what} to question ${question.id}; answer every question first`);
  }
  if (turns.length < question.turns.length) {
    throw new UserError(
      `${set.path}: the ${what} to question ${question.id} has ${turns.length} turns, the question ${question.turns.length}`,
    );
  }
  return turns;
}

/** The reference answers to turns 0..turn of a reference category's question, when there are. */
function referenceFor(
  question: Question,
  turn: number,
  references: Map<string, string[]> | undefined,
): string[] | undefined {
  if (!REFERENCE_CATEGORIES.includes(question.category)) return undefined;
  const reference = references?.get(questionKey(question.id)) ?? question.reference;
  return reference && reference.length > turn ? reference.slice(0, turn + 1) : undefined;
}

export async function judgeAnswers(options: JudgeOptions): Promise<JudgeRun> {
  const { judge, questions, answers, baseline, out } = options;
  const pairwise = baseline !== undefined;
  const reasks = options.reasks ?? 1;
  if (pairwise && baseline.model === answers.model) {
    throw new UserError(
      `${answers.path} and ${baseline.path} both hold answers of "${answers.model}"; compare two models`,
    );
  }

  // Every judgment the run needs, in question and turn order.
  const jobs: Job[] = [];
  let withReference = 0;
  let withoutReference = 0;
  for (const question of questions) {
    const mine = answersTo(answers, question, "answer");
    const theirs = pairwise ? answersTo(baseline, question, "baseline answer") : undefined;
    for (let turn = 0; turn < question.turns.length; turn++) {
      const reference = referenceFor(question, turn, options.references);
      if (reference) withReference++;
      else if (REFERENCE_CATEGORIES.includes(question.category)) withoutReference++;
      const add = (messages: TeacherMessage[], order?: Order) =>
        jobs.push({
          question,
          turn,
          order,
          messages,
          hash: hashMessages(messages),
          key: jobKey(question, turn, order),
        });
      if (theirs) {
        add(pairPrompt(question.turns, mine, theirs, turn, reference), "model-first");
        add(pairPrompt(question.turns, theirs, mine, turn, reference), "baseline-first");
      } else add(scorePrompt(question.turns, mine, turn, reference));
    }
  }

  const identity = {
    type: pairwise ? "pairwise" : "single",
    judge: judge.model,
    model: answers.model,
    ...(pairwise ? { baseline: baseline.model } : {}),
  };
  const earlier = await judgedBefore(out, identity);
  const verdicts = new Map<string, Verdict>();
  for (const job of jobs) {
    const found = earlier.get(job.key);
    if (found && found.hash === job.hash) verdicts.set(job.key, found.verdict);
  }
  const reused = verdicts.size;
  const todo = jobs.filter((j) => !verdicts.has(j.key));
  const progress: JudgeProgress = {
    total: jobs.length,
    done: reused,
    unparsed: [...verdicts.values()].filter((v) => v.score === null || v.winner === null).length,
    requests: 0,
    reasked: 0,
    promptTokens: 0,
    completionTokens: 0,
    tokensEstimated: false,
    retries: 0,
  };
  options.onProgress?.({ ...progress });

  const ask = async (messages: TeacherMessage[], signal: AbortSignal): Promise<string> => {
    const reply = await judge.complete({
      messages,
      temperature: 0,
      maxTokens: options.maxTokens ?? 2048,
      signal,
      onRetry: () => {
        progress.retries++;
      },
    });
    progress.requests++;
    progress.promptTokens += reply.promptTokens;
    progress.completionTokens += reply.completionTokens;
    if (!reply.usageReported) progress.tokensEstimated = true;
    return reply.text;
  };

  const fd = openAppend(out);
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  let failure: unknown;
  let next = 0;
  const worker = async () => {
    while (next < todo.length && !signal.aborted) {
      const job = todo[next++]!;
      let reply: string;
      let verdict: Verdict;
      let asked = 0;
      try {
        let messages = job.messages;
        for (;;) {
          reply = await ask(messages, signal);
          asked++;
          verdict = readVerdict(reply, job.order);
          if (verdict.score !== null && verdict.winner !== null) break;
          if (asked > reasks) break;
          progress.reasked++;
          // An empty reply is asked again as it was; otherwise the judge sees its reply and a follow-up.
          messages =
            reply.trim() === ""
              ? job.messages
              : [
                  ...job.messages,
                  { role: "assistant", content: reply },
                  { role: "user", content: job.order ? VERDICT_REASK : SCORE_REASK },
                ];
        }
      } catch (e) {
        if (e instanceof TeacherAbortError || signal.aborted) return;
        failure ??= e instanceof UserError ? new UserError(clientMessage(e, "judge"), e.status) : e;
        stop.abort();
        return;
      }
      verdicts.set(job.key, verdict);
      writeSync(fd, `${JSON.stringify(judgmentRecord(identity, job, verdict, reply, asked))}\n`);
      progress.done++;
      if (verdict.score === null || verdict.winner === null) progress.unparsed++;
      options.onProgress?.({ ...progress });
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.max(1, options.concurrency ?? 4) }, worker));
  } finally {
    closeSync(fd);
  }
  if (failure) throw failure;

  const base = { withReference, withoutReference, reused, progress, stopped: progress.done < progress.total };
  if (pairwise) {
    const { summary, inconsistent } = pairwiseSummary(
      questions,
      verdicts,
      judge.model,
      answers.model,
      baseline.model,
    );
    return { ...base, summary, turnMeans: [], inconsistent };
  }
  const { summary, turnMeans } = singleSummary(questions, verdicts, judge.model, answers.model);
  return { ...base, summary, turnMeans, inconsistent: 0 };
}

/** The verdict in a reply: a grade (single) or the winner with the order undone (pairwise). */
function readVerdict(reply: string, order: Order | undefined): Verdict {
  if (order === undefined) return { score: parseScore(reply) ?? null };
  const v: PairVerdict | undefined = parsePairVerdict(reply);
  if (v === undefined) return { winner: null };
  if (v === "tie") return { winner: "tie" };
  const first = order === "model-first" ? "model" : "baseline";
  const second = order === "model-first" ? "baseline" : "model";
  return { winner: v === "A" ? first : second };
}

function judgmentRecord(
  identity: Record<string, string>,
  job: Job,
  verdict: Verdict,
  reply: string,
  asked: number,
): Record<string, unknown> {
  return {
    question_id: job.question.id,
    category: job.question.category,
    turn: job.turn + 1,
    ...identity,
    ...(job.order ? { order: job.order, winner: verdict.winner } : { score: verdict.score }),
    prompt_hash: job.hash,
    judgment: reply,
    asked,
    tstamp: Date.now() / 1000,
  };
}

/**
 * The judgments an earlier run wrote to `out`, by job key (after dropping a line a kill cut short).
 * A file that holds judgments of another kind, judge, model or baseline is refused.
 */
async function judgedBefore(
  out: string,
  identity: Record<string, string>,
): Promise<Map<string, { hash: string; verdict: Verdict }>> {
  const found = new Map<string, { hash: string; verdict: Verdict }>();
  if (!existsSync(out)) return found;
  if (!statSync(out).isFile()) throw new UserError(`${out}: not a file`);
  dropCutLine(out);
  const describe = (r: Record<string, unknown>) =>
    `type ${r.type}, judge "${r.judge}", model "${r.model}"${r.baseline === undefined ? "" : `, baseline "${r.baseline}"`}`;
  for await (const item of readJsonValues(out, { maxLineChars: 4 * MAX_EVAL_LINE_CHARS })) {
    const r = item.value as Record<string, unknown> | undefined;
    const where = describeSource(item.source);
    if (
      item.error !== undefined ||
      r === null ||
      typeof r !== "object" ||
      typeof r.prompt_hash !== "string"
    ) {
      throw new UserError(`${where}: not a judgment; choose another --out`);
    }
    const other =
      Object.entries(identity).some(([k, v]) => r[k] !== v) ||
      (identity.baseline === undefined && r.baseline !== undefined);
    if (other) {
      throw new UserError(
        `${out} holds judgments of another run (${describe(r)}), not of this one (${describe(identity)}); choose another --out`,
      );
    }
    const turn = r.turn;
    const id = r.question_id;
    if (
      !(typeof id === "number" || typeof id === "string") ||
      typeof turn !== "number" ||
      !Number.isInteger(turn) ||
      turn < 1
    ) {
      throw new UserError(`${where}: not a judgment (question_id, turn); choose another --out`);
    }
    let verdict: Verdict;
    if (identity.type === "pairwise") {
      const w = r.winner;
      if (!(w === "model" || w === "baseline" || w === "tie" || w === null) || !isOrder(r.order)) {
        throw new UserError(`${where}: not a pairwise judgment (order, winner); choose another --out`);
      }
      verdict = { winner: w };
    } else {
      const s = r.score;
      if (!(s === null || (typeof s === "number" && s >= 1 && s <= 10))) {
        throw new UserError(`${where}: not a graded judgment (score); choose another --out`);
      }
      verdict = { score: s };
    }
    const key = `${questionKey(id)}\u0000${turn}\u0000${identity.type === "pairwise" ? r.order : ""}`;
    found.set(key, { hash: r.prompt_hash, verdict });
  }
  return found;
}

function isOrder(x: unknown): x is Order {
  return x === "model-first" || x === "baseline-first";
}

function mean(values: number[]): CategoryMean {
  return { mean: values.length ? values.reduce((a, b) => a + b, 0) / values.length : null, n: values.length };
}

function singleSummary(
  questions: readonly Question[],
  verdicts: Map<string, Verdict>,
  judge: string,
  model: string,
): { summary: SingleSummary; turnMeans: CategoryMean[] } {
  const byCategory = new Map<string, number[]>();
  const byTurn: number[][] = [];
  const scores: number[] = [];
  let unparsed = 0;
  for (const question of questions) {
    for (let turn = 0; turn < question.turns.length; turn++) {
      const verdict = verdicts.get(jobKey(question, turn));
      if (!verdict) continue; // not judged yet (a stopped run)
      if (verdict.score === null || verdict.score === undefined) {
        unparsed++;
        continue;
      }
      scores.push(verdict.score);
      if (!byCategory.has(question.category)) byCategory.set(question.category, []);
      byCategory.get(question.category)!.push(verdict.score);
      byTurn[turn] ??= [];
      byTurn[turn]!.push(verdict.score);
    }
  }
  const categories: Record<string, CategoryMean> = {};
  for (const [category, values] of byCategory) categories[category] = mean(values);
  return {
    summary: {
      kind: "smallhammer-eval",
      type: "judge-single",
      model,
      judge,
      categories,
      overall: mean(scores),
      scores,
      unparsed,
    },
    turnMeans: Array.from(byTurn, (values) => mean(values ?? [])),
  };
}

function pairwiseSummary(
  questions: readonly Question[],
  verdicts: Map<string, Verdict>,
  judge: string,
  model: string,
  baseline: string,
): { summary: PairwiseSummary; inconsistent: number } {
  const zero = (): PairCounts => ({ win: 0, tie: 0, loss: 0, unparsed: 0 });
  const categories: Record<string, PairCounts> = {};
  const overall = zero();
  let inconsistent = 0;
  for (const question of questions) {
    for (let turn = 0; turn < question.turns.length; turn++) {
      const first = verdicts.get(jobKey(question, turn, "model-first"));
      const second = verdicts.get(jobKey(question, turn, "baseline-first"));
      if (!first || !second) continue; // not judged yet (a stopped run)
      let outcome: keyof PairCounts;
      if (first.winner === null || second.winner === null) outcome = "unparsed";
      else if (first.winner !== second.winner) {
        // The orders disagree: the judge preferred a position, not an answer.
        outcome = "tie";
        inconsistent++;
      } else outcome = first.winner === "model" ? "win" : first.winner === "baseline" ? "loss" : "tie";
      categories[question.category] ??= zero();
      categories[question.category]![outcome]++;
      overall[outcome]++;
    }
  }
  return {
    summary: {
      kind: "smallhammer-eval",
      type: "judge-pairwise",
      model,
      baseline,
      judge,
      categories,
      overall,
    },
    inconsistent,
  };
}
