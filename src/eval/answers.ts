/**
 * Answers a question file in MT-bench's layout with a model, for an LLM judge to grade (judge.ts):
 * every turn of a question is asked after the model's own answers to the turns before it, so the
 * second turn ("now rewrite it as a limerick") sees the first answer.
 *
 *   const summary = await answerQuestions({
 *     questions: await readQuestions("question.jsonl"),
 *     answerer: modelAnswerer(await loadModel("model.gguf")),   // or endpointAnswerer(teacher)
 *     model: "model",
 *     out: "answers.jsonl",
 *   });
 *
 * The answerer is a local model or any OpenAI-compatible endpoint (a hosted model's answers sit
 * beside ours). Answers are written in FastChat's layout, one line per question, appended as each
 * question is done; a run started again with the same `out` reads the answered ids back and asks
 * only the rest (a line cut by a kill is dropped and its question asked again).
 */

import { randomUUID } from "node:crypto";
import { closeSync, existsSync, statSync, writeSync } from "node:fs";
import { type TeacherClient, TeacherError, type TeacherMessage } from "../data/teacher.js";
import { UserError } from "../errors.js";
import type { Model } from "../model/model.js";
import {
  answerRecord,
  CATEGORY_TEMPERATURES,
  DEFAULT_ANSWER_TEMPERATURE,
  dropCutLine,
  openAppend,
  type Question,
  questionKey,
  readAnswers,
} from "./mt-bench-files.js";

export interface AnswerSettings {
  temperature: number;
  maxTokens: number;
  /** Seed of the sampler (local models; endpoints get none). */
  seed: number;
  signal?: AbortSignal;
}

export interface AnswerReply {
  text: string;
  promptTokens: number;
  completionTokens: number;
}

/** Something that answers a conversation: a local model or an endpoint. */
export interface Answerer {
  /** How many conversations it answers at once. */
  readonly parallel: number;
  answer(messages: TeacherMessage[], settings: AnswerSettings): Promise<AnswerReply>;
}

/** What answering needs of a loaded model (on this thread or in a worker). */
export type ChatModel = Pick<Model, "chat">;

/** A loaded model answering through its chat template, one conversation at a time. */
export function modelAnswerer(model: ChatModel): Answerer {
  return {
    parallel: 1,
    async answer(messages, settings) {
      let text = "";
      let info = { promptTokens: 0, completionTokens: 0 };
      for await (const piece of model.chat(messages, {
        temperature: settings.temperature,
        maxTokens: settings.maxTokens,
        seed: settings.seed,
        signal: settings.signal,
        onDone: (done) => {
          info = done;
        },
      })) {
        text += piece;
      }
      return { text, promptTokens: info.promptTokens, completionTokens: info.completionTokens };
    },
  };
}

/** An OpenAI-compatible endpoint answering through the teacher client (timeouts, retries, rate limits). */
export function endpointAnswerer(client: TeacherClient, parallel = 4): Answerer {
  return {
    parallel,
    async answer(messages, settings) {
      const reply = await client.complete({
        messages,
        temperature: settings.temperature,
        maxTokens: settings.maxTokens,
        signal: settings.signal,
      });
      return { text: reply.text, promptTokens: reply.promptTokens, completionTokens: reply.completionTokens };
    },
  };
}

export interface AnswerOptions {
  questions: readonly Question[];
  answerer: Answerer;
  /** The model's name in the answers (model_id). */
  model: string;
  /** Answers JSONL, appended to and resumed from. */
  out: string;
  /** One temperature for every question; default: MT-bench's by category (CATEGORY_TEMPERATURES). */
  temperature?: number;
  /** Most tokens per answer (default 1024). */
  maxTokens?: number;
  /** Sampler seed; each turn draws from its own seed made from this, the question and the turn. */
  seed?: number;
  signal?: AbortSignal;
  /** Called once with the resumed count, then after every question answered. */
  onProgress?: (progress: AnswerProgress) => void;
}

export interface AnswerProgress {
  total: number;
  done: number;
  promptTokens: number;
  completionTokens: number;
}

export interface AnswerSummary extends AnswerProgress {
  out: string;
  model: string;
  /** Questions answered by this run. */
  answeredNow: number;
  /** Questions an earlier run had answered. */
  resumed: number;
  /** True when it stopped on the signal before the last question. */
  stopped: boolean;
}

/** The temperature a question is answered with. */
export function answerTemperature(question: Question, fixed?: number): number {
  return fixed ?? CATEGORY_TEMPERATURES[question.category] ?? DEFAULT_ANSWER_TEMPERATURE;
}

/** A seed per question and turn, so a resumed run draws what an uninterrupted one would. */
export function turnSeed(seed: number, question: Question, turn: number): number {
  let h = (seed ^ 0x811c9dc5) >>> 0;
  for (const ch of `${questionKey(question.id)}\u0000${turn}`)
    h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193);
  return h >>> 0;
}

export async function answerQuestions(options: AnswerOptions): Promise<AnswerSummary> {
  const { questions, answerer, model, out } = options;
  const maxTokens = options.maxTokens ?? 1024;
  const done = await answeredBefore(out, model);
  const todo = questions.filter((q) => !done.has(questionKey(q.id)));
  const progress: AnswerProgress = {
    total: questions.length,
    done: questions.length - todo.length,
    promptTokens: 0,
    completionTokens: 0,
  };
  const resumed = progress.done;
  options.onProgress?.({ ...progress });

  const fd = openAppend(out);
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  let failure: unknown;
  let next = 0;
  const worker = async () => {
    while (next < todo.length && !signal.aborted) {
      const question = todo[next++]!;
      const messages: TeacherMessage[] = [];
      const answers: string[] = [];
      try {
        for (let t = 0; t < question.turns.length; t++) {
          messages.push({ role: "user", content: question.turns[t]! });
          const reply = await answerer.answer([...messages], {
            temperature: answerTemperature(question, options.temperature),
            maxTokens,
            seed: turnSeed(options.seed ?? 0, question, t),
            signal,
          });
          if (signal.aborted) return; // an answer cut by the stop is not kept
          progress.promptTokens += reply.promptTokens;
          progress.completionTokens += reply.completionTokens;
          answers.push(reply.text);
          messages.push({ role: "assistant", content: reply.text });
        }
      } catch (e) {
        if (signal.aborted) return;
        failure ??=
          e instanceof UserError
            ? new UserError(
                `question ${question.id}, turn ${answers.length + 1}: ${clientMessage(e, "endpoint")}`,
                e.status,
              )
            : e;
        stop.abort();
        return;
      }
      writeSync(fd, `${JSON.stringify(answerRecord(question, model, answers, randomUUID()))}\n`);
      progress.done++;
      options.onProgress?.({ ...progress });
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.max(1, answerer.parallel) }, worker));
  } finally {
    closeSync(fd);
  }
  if (failure) throw failure;
  return {
    ...progress,
    out,
    model,
    answeredNow: progress.done - resumed,
    resumed,
    stopped: progress.done < progress.total,
  };
}

/**
 * The question ids an earlier run answered in `out` (after dropping a line a kill cut short); an
 * output holding another model's answers is refused.
 */
async function answeredBefore(out: string, model: string): Promise<Set<string>> {
  if (!existsSync(out)) return new Set();
  if (!statSync(out).isFile()) throw new UserError(`${out}: not a file`);
  dropCutLine(out);
  if (statSync(out).size === 0) return new Set();
  const earlier = await readAnswers(out);
  if (earlier.model !== model) {
    throw new UserError(`${out} holds answers of "${earlier.model}", not "${model}"; choose another --out`);
  }
  return new Set(earlier.byId.keys());
}

/**
 * A client error's message naming the client's role here: the teacher client says "teacher URL:
 * ...", which is an endpoint to `eval answers` and a judge to `eval judge`.
 */
export function clientMessage(e: UserError, role: string): string {
  return e instanceof TeacherError ? e.message.replace(/^teacher /, `${role} `) : e.message;
}
