/**
 * Exact-match accuracy of a model on instruction tasks with checkable answers (the synthetic world
 * of data/synthetic.ts by default): greedy decoding of each task through the model's chat
 * template, the reply compared with the answer by `isCorrect`.
 */

import { isCorrect, type SyntheticTask } from "../data/synthetic.js";
import type { ModelBase } from "../model/model.js";

export interface TaskEvalOptions {
  /** Most tokens per reply (default 24). */
  maxTokens?: number;
  /** Called after every task with the number done. */
  onProgress?: (done: number) => void;
  signal?: AbortSignal;
}

export interface FamilyScore {
  total: number;
  correct: number;
  accuracy: number;
}

export interface TaskEvalResult extends FamilyScore {
  byFamily: Record<string, FamilyScore>;
  /** Every task with the model's reply. */
  replies: { task: SyntheticTask; reply: string; correct: boolean }[];
}

export async function evaluateTasks(
  model: ModelBase,
  tasks: readonly SyntheticTask[],
  options: TaskEvalOptions = {},
): Promise<TaskEvalResult> {
  const replies: TaskEvalResult["replies"] = [];
  for (const task of tasks) {
    let reply = "";
    const messages = [{ role: "user" as const, content: task.instruction, input: task.input }];
    for await (const piece of model.chat(messages, {
      temperature: 0,
      maxTokens: options.maxTokens ?? 24,
      // One line is all the answer: stopping there saves decoding the rest.
      stop: ["\n"],
      signal: options.signal,
    })) {
      reply += piece;
    }
    replies.push({ task, reply, correct: isCorrect(reply, task.output) });
    options.onProgress?.(replies.length);
  }
  const byFamily: Record<string, FamilyScore> = {};
  for (const r of replies) {
    byFamily[r.task.family] ??= { total: 0, correct: 0, accuracy: 0 };
    const f = byFamily[r.task.family];
    f.total++;
    if (r.correct) f.correct++;
  }
  for (const f of Object.values(byFamily)) f.accuracy = f.correct / f.total;
  const correct = replies.filter((r) => r.correct).length;
  return {
    total: replies.length,
    correct,
    accuracy: replies.length ? correct / replies.length : 0,
    byFamily,
    replies,
  };
}
