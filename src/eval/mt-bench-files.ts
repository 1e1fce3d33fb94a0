/**
 * The files of an answer-and-judge evaluation, in MT-bench's layouts (FastChat's llm_judge):
 *
 *   questions   {"question_id": 81, "category": "writing", "turns": ["...", "..."], "reference"?: [...]}
 *   answers     {"question_id": 81, "model_id": "m", "choices": [{"index": 0, "turns": ["...", "..."]}], ...}
 *               (also read: {"question_id", "model", "turns": [...]})
 *   references  answers in the same layout, by a model trusted to be right (FastChat's
 *               reference_answer/gpt-4.jsonl)
 *
 * Every one of them is untrusted input: files over MAX_EVAL_FILE_BYTES and lines over
 * MAX_EVAL_LINE_CHARS are refused, and a malformed record is one line naming the file, the line and
 * the field. The append-only outputs (answers, judgments) lose at most their last line to a kill,
 * which `dropCutLine` removes before a resumed run appends.
 */

import { closeSync, fstatSync, ftruncateSync, openSync, readSync, statSync } from "node:fs";
import { basename } from "node:path";
import { describeSource, type RecordSource, readJsonValues } from "../data/records.js";
import { UserError } from "../errors.js";

/** Largest question, answer or reference file read (MT-bench's 80 questions take 40 KB). */
export const MAX_EVAL_FILE_BYTES = 32 << 20;
/** Longest line of such a file, in characters. */
export const MAX_EVAL_LINE_CHARS = 1 << 20;
/** Most turns in one question. */
export const MAX_TURNS = 64;

export type QuestionId = number | string;

export interface Question {
  id: QuestionId;
  category: string;
  /** The user's turns; every later turn is asked after the answers to the earlier ones. */
  turns: string[];
  /** Right answers to the turns, when the file carries them (MT-bench's math and reasoning do). */
  reference?: string[];
}

export interface AnswerSet {
  path: string;
  /** The answering model's name (model_id), one per file. */
  model: string;
  /** Answer turns by questionKey. */
  byId: Map<string, string[]>;
}

/** The key of a question id in maps: 81 and "81" are the same question. */
export function questionKey(id: QuestionId): string {
  return String(id);
}

/** The categories whose questions have a right answer: judged against a reference answer. */
export const REFERENCE_CATEGORIES: readonly string[] = ["math", "reasoning", "coding"];

/**
 * Sampling temperature by category, as MT-bench answers: creative categories sampled, the ones with
 * a right answer greedy. Others get DEFAULT_ANSWER_TEMPERATURE.
 */
export const CATEGORY_TEMPERATURES: Readonly<Record<string, number>> = {
  writing: 0.7,
  roleplay: 0.7,
  extraction: 0,
  math: 0,
  coding: 0,
  reasoning: 0,
  stem: 0.1,
  humanities: 0.1,
};
export const DEFAULT_ANSWER_TEMPERATURE = 0.7;

/** Streams a file's JSON values (JSONL or one array) within the eval limits, objects only. */
async function* evalRecords(
  path: string,
  what: string,
): AsyncGenerator<{ source: RecordSource; value: Record<string, unknown> }> {
  let size: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new UserError(`${path}: not a file`);
    size = st.size;
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(
      `${path}: cannot read the ${what} (${(e as NodeJS.ErrnoException).code ?? String(e)})`,
    );
  }
  if (size > MAX_EVAL_FILE_BYTES) {
    throw new UserError(
      `${path}: ${size} bytes is more than a ${what} may hold (${MAX_EVAL_FILE_BYTES >> 20} MiB)`,
    );
  }
  for await (const item of readJsonValues(path, { maxLineChars: MAX_EVAL_LINE_CHARS })) {
    if (item.error !== undefined) throw new UserError(`${describeSource(item.source)}: ${item.error}`);
    const value = item.value;
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw new UserError(`${describeSource(item.source)}: expected a JSON object`);
    }
    yield { source: item.source, value: value as Record<string, unknown> };
  }
}

function fieldError(source: RecordSource, field: string, problem: string): UserError {
  return new UserError(`${describeSource(source)}: field ${field}: ${problem}`);
}

function readId(source: RecordSource, value: unknown): QuestionId {
  if (typeof value === "number" && Number.isSafeInteger(value)) return value;
  if (typeof value === "string" && value.trim() !== "" && value.length <= 256) return value;
  if (value === undefined) throw fieldError(source, "question_id", "missing");
  throw fieldError(source, "question_id", "expected an integer or a short string");
}

function readTurns(source: RecordSource, field: string, value: unknown, allowEmpty = false): string[] {
  if (value === undefined) throw fieldError(source, field, "missing");
  if (!Array.isArray(value) || !value.every((t) => typeof t === "string")) {
    throw fieldError(source, field, "expected a list of strings");
  }
  if (value.length === 0 && !allowEmpty) throw fieldError(source, field, "empty");
  if (value.length > MAX_TURNS) throw fieldError(source, field, `more than ${MAX_TURNS} turns`);
  return value as string[];
}

/** A question file in MT-bench's layout; ids must be unique. */
export async function readQuestions(path: string): Promise<Question[]> {
  const questions: Question[] = [];
  const seen = new Set<string>();
  for await (const { source, value } of evalRecords(path, "question file")) {
    const id = readId(source, value.question_id);
    if (seen.has(questionKey(id))) throw fieldError(source, "question_id", `${id} appears twice`);
    seen.add(questionKey(id));
    const category = value.category;
    if (category === undefined) throw fieldError(source, "category", "missing");
    if (typeof category !== "string" || category.trim() === "" || category.length > 64) {
      throw fieldError(source, "category", "expected a short non-empty string");
    }
    const turns = readTurns(source, "turns", value.turns);
    const question: Question = { id, category, turns };
    if (value.reference !== undefined) question.reference = readTurns(source, "reference", value.reference);
    questions.push(question);
  }
  if (questions.length === 0) throw new UserError(`${path}: no questions`);
  return questions;
}

/** The answer turns of a record: FastChat's `choices[0].turns`, or `turns`. */
function answerTurns(source: RecordSource, value: Record<string, unknown>): string[] {
  if (value.choices !== undefined) {
    const choices = value.choices;
    if (!Array.isArray(choices) || choices.length === 0) {
      throw fieldError(source, "choices", "expected a non-empty list");
    }
    const first = choices[0] as { turns?: unknown } | null;
    if (first === null || typeof first !== "object")
      throw fieldError(source, "choices[0]", "expected an object");
    return readTurns(source, "choices[0].turns", first.turns, true);
  }
  return readTurns(source, "turns", value.turns, true);
}

/**
 * An answer file (FastChat's layout or ours): one model's answers. A question answered twice keeps
 * its last answer, as FastChat's tools do. Without a model name in the records, the file's name
 * (without .jsonl) stands for the model.
 */
export async function readAnswers(path: string, what = "answer file"): Promise<AnswerSet> {
  const byId = new Map<string, string[]>();
  let model: string | undefined;
  for await (const { source, value } of evalRecords(path, what)) {
    const id = readId(source, value.question_id);
    const name = value.model_id ?? value.model;
    if (name !== undefined) {
      if (typeof name !== "string" || name === "") throw fieldError(source, "model_id", "expected a string");
      if (model !== undefined && name !== model) {
        throw new UserError(
          `${describeSource(source)}: answers of "${name}" after answers of "${model}"; an answer file holds one model's answers`,
        );
      }
      model = name;
    }
    byId.set(questionKey(id), answerTurns(source, value));
  }
  return { path, model: model ?? basename(path).replace(/\.jsonl?$/i, ""), byId };
}

/** Reference answers by question (FastChat's layout: question_id, choices[0].turns). */
export async function readReferences(path: string): Promise<Map<string, string[]>> {
  const byId = new Map<string, string[]>();
  for await (const { source, value } of evalRecords(path, "reference file")) {
    byId.set(questionKey(readId(source, value.question_id)), answerTurns(source, value));
  }
  return byId;
}

/** An answer record in FastChat's layout (with our `model` and `category` beside model_id). */
export function answerRecord(
  question: Question,
  model: string,
  turns: string[],
  answerId: string,
  tstamp = Date.now() / 1000,
): Record<string, unknown> {
  return {
    question_id: question.id,
    answer_id: answerId,
    model_id: model,
    model,
    category: question.category,
    choices: [{ index: 0, turns }],
    tstamp,
  };
}

/**
 * Truncates an append-only output after its last newline: a line a kill cut short is dropped, and
 * the next run appends after whole lines.
 */
export function dropCutLine(path: string): void {
  const fd = openSync(path, "r+");
  try {
    const size = fstatSync(fd).size;
    const buf = Buffer.alloc(65536);
    for (let end = size; end > 0; ) {
      const start = Math.max(0, end - buf.length);
      const n = readSync(fd, buf, 0, end - start, start);
      const nl = buf.subarray(0, n).lastIndexOf(0x0a);
      if (nl >= 0) {
        if (start + nl + 1 < size) ftruncateSync(fd, start + nl + 1);
        return;
      }
      end = start;
    }
    ftruncateSync(fd, 0);
  } finally {
    closeSync(fd);
  }
}

/** Opens an append-only output; a UserError naming it when that fails. */
export function openAppend(path: string): number {
  try {
    return openSync(path, "a");
  } catch (e) {
    throw new UserError(`${path}: cannot write (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
}
