// The judge's part of `npm run bench -- eval`: requests/s of `eval judge`'s pipeline (prompts,
// the teacher client, verdict parsing, the JSONL judgments and the summary) against a zero-latency
// local judge, next to a plain loop of the same requests through the `openai` SDK; the difference
// per request is the tool's own overhead; a loop of the same requests through the teacher client
// alone says how much of it is the client's. The judge is data-teacher.ts in a worker thread, so its
// work does not share the event loop of the client being measured.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import OpenAI from "openai";
import { TeacherClient } from "../data/teacher.js";
import { judgeAnswers } from "../eval/judge.js";
import { scorePrompt } from "../eval/judge-prompts.js";
import { type AnswerSet, type Question, questionKey } from "../eval/mt-bench-files.js";

export interface JudgeBenchOptions {
  /** Judge requests per client (rounded up to whole two-turn questions). */
  requests: number;
  /** Requests in flight (as `eval judge --concurrency`). */
  concurrency: number;
  /** Runs `work` and says how long it took and how disturbed the machine was. */
  measure<T>(
    work: () => Promise<T>,
  ): Promise<{ value: T; seconds: number; disturbed: boolean; foreignCores: number }>;
  /** Progress lines (stderr on a terminal). */
  say(line: string): void;
}

export interface JudgeBenchRow {
  client: "openai SDK loop" | "teacher client loop" | "eval judge";
  requests: number;
  seconds: number;
  msPerRequest: number;
  requestsPerSecond: number;
  foreignCores: number;
  disturbed: boolean;
}

export interface JudgeBenchResult {
  concurrency: number;
  questions: number;
  rows: JudgeBenchRow[];
  /** ms per request of eval judge over the SDK loop, and the part of it the teacher client takes. */
  overheadMsPerRequest: number;
  clientMsPerRequest: number;
  /** The markdown section. */
  text: string;
}

const WARMUP_REQUESTS = 50;
const CATEGORIES = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"];
/** The canned verdict: a short explanation and the grade, as a judge writes them. */
const REPLY =
  "The answer addresses the question directly and is mostly accurate, though it could give one more example.\nScore: [[7]]";

/** Two-turn questions with answers of about a thousand characters, references where MT-bench has them. */
function questionSet(n: number): { questions: Question[]; answers: AnswerSet } {
  const filler = "This sentence stands for the body of an answer of typical length. ".repeat(15);
  const questions: Question[] = [];
  const byId = new Map<string, string[]>();
  for (let i = 0; i < n; i++) {
    const category = CATEGORIES[i % CATEGORIES.length]!;
    const q: Question = {
      id: i + 1,
      category,
      turns: [`Question ${i + 1}: explain the idea behind item ${i}.`, "Now say it again in two sentences."],
    };
    if (["math", "reasoning", "coding"].includes(category))
      q.reference = ["The right answer.", "Still right."];
    questions.push(q);
    byId.set(questionKey(q.id), [
      `Answer ${i}, turn 1. ${filler}`,
      `Answer ${i}, turn 2. ${filler.slice(0, 300)}`,
    ]);
  }
  return { questions, answers: { path: "(generated)", model: "bench", byId } };
}

export async function benchJudge(options: JudgeBenchOptions): Promise<JudgeBenchResult> {
  const { concurrency, measure, say } = options;
  const questionCount = Math.ceil(options.requests / 2);
  const requests = 2 * questionCount;
  const { questions, answers } = questionSet(questionCount + Math.ceil(WARMUP_REQUESTS / 2));
  const dir = mkdtempSync(join(tmpdir(), "smallhammer-bench-judge-"));
  say("starting the zero-latency judge");
  const judge = await startJudge([REPLY]);
  try {
    const prompt = scorePrompt(questions[0]!.turns, answers.byId.get("1")!, 1);
    const sdk = new OpenAI({ baseURL: judge.url, apiKey: "no-key", maxRetries: 0 });
    const sdkLoop = async (n: number) => {
      let next = 0;
      let parsed = 0;
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (next < n) {
            next++;
            const completion = await sdk.chat.completions.create({
              model: "canned",
              messages: prompt,
              max_tokens: 2048,
              temperature: 0,
            });
            if (completion.choices[0]?.message?.content?.endsWith("[[7]]")) parsed++;
          }
        }),
      );
      if (parsed !== n) throw new Error(`the judge's replies came back wrong (${parsed} of ${n})`);
      return n;
    };
    const client = new TeacherClient({ url: judge.url, model: "canned" });
    const clientLoop = async (n: number) => {
      let next = 0;
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (next < n) {
            next++;
            await client.complete({ messages: prompt, maxTokens: 2048, temperature: 0 });
          }
        }),
      );
      return n;
    };
    const pipeline = async (from: number, count: number, name: string) => {
      const out = join(dir, name);
      const run = await judgeAnswers({
        judge: new TeacherClient({ url: judge.url, model: "canned" }),
        questions: questions.slice(from, from + count),
        answers,
        out,
        concurrency,
      });
      if (run.summary.type !== "judge-single" || run.summary.overall.n !== 2 * count) {
        throw new Error("the judge pipeline did not grade every turn");
      }
      return run;
    };
    say(`openai SDK loop: ${requests} requests`);
    await sdkLoop(WARMUP_REQUESTS);
    const loop = await measure(() => sdkLoop(requests));
    say(`teacher client loop: ${requests} requests`);
    await clientLoop(WARMUP_REQUESTS);
    const plain = await measure(() => clientLoop(requests));
    say(`eval judge: ${requests} requests`);
    const warm = Math.ceil(WARMUP_REQUESTS / 2);
    await pipeline(0, warm, "warmup.jsonl");
    const run = await measure(() => pipeline(warm, questionCount, "judgments.jsonl"));
    const rows = [
      row("openai SDK loop", requests, loop),
      row("teacher client loop", requests, plain),
      row("eval judge", run.value.progress.requests, run),
    ];
    const overheadMsPerRequest = rows[2]!.msPerRequest - rows[0]!.msPerRequest;
    const clientMsPerRequest = rows[1]!.msPerRequest - rows[0]!.msPerRequest;
    const text =
      `\nJudge requests against a zero-latency local judge (${concurrency} in flight, single-answer grading ` +
      `of ${questionCount} two-turn questions with answers of about 1,000 characters):\n\n` +
      "| client | requests | seconds | ms/request | requests/s |\n" +
      "| ------ | -------: | ------: | ---------: | ---------: |\n" +
      rows
        .map(
          (r) =>
            `| ${r.client} | ${r.requests} | ${r.seconds.toFixed(2)} | ${r.msPerRequest.toFixed(2)} | ${r.requestsPerSecond.toFixed(0)} |` +
            (r.disturbed ? ` disturbed (${r.foreignCores.toFixed(2)} foreign cores)` : ""),
        )
        .join("\n") +
      `\n\neval judge over the SDK loop: ${overheadMsPerRequest.toFixed(2)} ms per request, of which the teacher ` +
      `client's policy (timeout signal, rate limiter, reading the body itself) takes ${clientMsPerRequest.toFixed(2)} ms ` +
      "and the judging (prompts, hashes, verdict parsing, JSONL appends, summary) the rest.\n";
    return { concurrency, questions: questionCount, rows, overheadMsPerRequest, clientMsPerRequest, text };
  } finally {
    await judge.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

function row(
  client: JudgeBenchRow["client"],
  requests: number,
  m: { seconds: number; disturbed: boolean; foreignCores: number },
): JudgeBenchRow {
  return {
    client,
    requests,
    seconds: m.seconds,
    msPerRequest: (1000 * m.seconds) / requests,
    requestsPerSecond: requests / m.seconds,
    foreignCores: m.foreignCores,
    disturbed: m.disturbed,
  };
}

/** Starts the zero-latency judge (data-teacher.ts answering with `replies` in turn) in a worker thread. */
function startJudge(replies: string[]): Promise<{ url: string; close(): Promise<void> }> {
  const worker = new Worker(new URL("./data-teacher.js", import.meta.url), { workerData: { replies } });
  return new Promise((resolve, reject) => {
    worker.once("error", reject);
    worker.once("message", (message: { port: number }) => {
      resolve({
        url: `http://127.0.0.1:${message.port}/v1`,
        close: async () => {
          await worker.terminate();
        },
      });
    });
  });
}
