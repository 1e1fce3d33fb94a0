/**
 * The result files of the `eval` commands: one JSON object per run, {"kind": "smallhammer-eval",
 * "type": ...}, with scores by category and overall. `eval report` reads them; readEvalResult
 * checks a file against its type's schema and says in one line what is wrong with it.
 *
 *   mc              eval mc: acc and acc_norm per category, overall with standard errors
 *   judge-single    eval judge: mean judge score per category and overall, every score, unparsed
 *   judge-pairwise  eval judge against a baseline: win / tie / loss / unparsed per category
 *   tasks           eval tasks --summary-out: exact-match accuracy per task family
 */
import { readFileSync, statSync } from "node:fs";
import { z } from "zod";
import { UserError } from "../errors.js";
import type { TaskEvalResult } from "./tasks.js";

export const EVAL_KIND = "smallhammer-eval";
/** Categories a result may have (MMLU has 57 subjects). */
export const MAX_CATEGORIES = 1000;
/** Scores a judge-single result may list. */
export const MAX_SCORES = 1_000_000;
/** Largest result file read. */
export const MAX_RESULT_BYTES = 64 * 1024 * 1024;

const count = z.number().int().min(0);
const fraction = z.number().min(0).max(1);
const stderr = z.number().min(0).nullable();
/** A model or judge name: one line of text. */
const name = z.string().min(1).max(1000);
const categories = <T extends z.ZodType>(score: T) =>
  z
    .record(z.string().min(1).max(1000), score)
    .refine((c) => Object.keys(c).length <= MAX_CATEGORIES, `more than ${MAX_CATEGORIES} categories`);

export const mcResultSchema = z.object({
  kind: z.literal(EVAL_KIND),
  type: z.literal("mc"),
  model: name,
  format: name,
  shots: count,
  categories: categories(z.object({ acc: fraction, acc_norm: fraction, n: count })),
  overall: z.object({
    acc: fraction,
    acc_stderr: stderr,
    acc_norm: fraction,
    acc_norm_stderr: stderr,
    n: count,
  }),
});

/** A mean judge score; null where no verdict could be read. */
const judgeMean = z.object({ mean: z.number().finite().nullable(), n: count });
export const judgeSingleResultSchema = z.object({
  kind: z.literal(EVAL_KIND),
  type: z.literal("judge-single"),
  model: name,
  judge: name,
  categories: categories(judgeMean),
  overall: judgeMean,
  scores: z.array(z.number().finite()).max(MAX_SCORES),
  unparsed: count,
});

const winTieLoss = z.object({ win: count, tie: count, loss: count, unparsed: count });
export const judgePairwiseResultSchema = z.object({
  kind: z.literal(EVAL_KIND),
  type: z.literal("judge-pairwise"),
  model: name,
  baseline: name,
  judge: name,
  categories: categories(winTieLoss),
  overall: winTieLoss,
});

const exactMatch = z
  .object({ correct: count, total: count, accuracy: fraction })
  .refine((s) => s.correct <= s.total, "correct is more than total");
export const tasksResultSchema = z.object({
  kind: z.literal(EVAL_KIND),
  type: z.literal("tasks"),
  model: name,
  categories: categories(exactMatch),
  overall: exactMatch,
});

export type McResult = z.infer<typeof mcResultSchema>;
export type JudgeSingleResult = z.infer<typeof judgeSingleResultSchema>;
export type JudgePairwiseResult = z.infer<typeof judgePairwiseResultSchema>;
export type TasksResult = z.infer<typeof tasksResultSchema>;
export type EvalResult = McResult | JudgeSingleResult | JudgePairwiseResult | TasksResult;

const SCHEMAS = {
  mc: mcResultSchema,
  "judge-single": judgeSingleResultSchema,
  "judge-pairwise": judgePairwiseResultSchema,
  tasks: tasksResultSchema,
} as const;
export type EvalResultType = keyof typeof SCHEMAS;
export const EVAL_RESULT_TYPES = Object.keys(SCHEMAS) as EvalResultType[];

/**
 * `value` as an eval result; a UserError naming `where` and the first problem (the field and
 * what is wrong) when it is not one.
 */
export function parseEvalResult(value: unknown, where: string): EvalResult {
  if (
    value === null ||
    typeof value !== "object" ||
    Array.isArray(value) ||
    (value as { kind?: unknown }).kind !== EVAL_KIND
  ) {
    throw new UserError(`${where}: not a smallhammer eval result (no "kind": "${EVAL_KIND}")`);
  }
  const type = (value as { type?: unknown }).type;
  if (typeof type !== "string" || !Object.hasOwn(SCHEMAS, type)) {
    throw new UserError(
      `${where}: unknown eval result type ${JSON.stringify(type) ?? "(none)"}; expected ${EVAL_RESULT_TYPES.join(", ")}`,
    );
  }
  const r = SCHEMAS[type as EvalResultType].safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const field = issue.path.length > 0 ? `field ${issue.path.map(String).join(".")}: ` : "";
  throw new UserError(
    `${where}: not a valid ${type} result: ${field}${issue.message.replace(/\s*\n\s*/g, " ")}`,
  );
}

/** Reads and checks a result file (at most MAX_RESULT_BYTES). */
export function readEvalResult(path: string): EvalResult {
  let text: string;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new UserError(`${path}: not a file`);
    if (st.size > MAX_RESULT_BYTES) {
      throw new UserError(
        `${path}: ${st.size} bytes is more than an eval result may have (${MAX_RESULT_BYTES})`,
      );
    }
    text = readFileSync(path, "utf8");
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`${path}: cannot read the file (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${path}: not JSON (${(e as Error).message.replace(/\s*\n\s*/g, " ")})`);
  }
  return parseEvalResult(value, path);
}

/** The `tasks` result of an `eval tasks` run (what --summary-out writes). */
export function taskSummary(model: string, result: TaskEvalResult): TasksResult {
  const score = (s: { correct: number; total: number; accuracy: number }) => ({
    correct: s.correct,
    total: s.total,
    accuracy: s.accuracy,
  });
  return {
    kind: EVAL_KIND,
    type: "tasks",
    model,
    categories: Object.fromEntries(Object.entries(result.byFamily).map(([family, s]) => [family, score(s)])),
    overall: score(result),
  };
}
