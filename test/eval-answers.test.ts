/**
 * `smallhammer eval answers`: a local model (random weights, written here) answering the fixture
 * questions, checked against a replay through the library (the second turn is asked after the
 * first answer); a scripted OpenAI-compatible endpoint (the conversations it is sent, the
 * temperatures by category, resuming a partial output and a killed run without asking anything
 * twice); `smallhammer serve` as the endpoint; and one-line errors for bad input.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readAnswers } from "../src/eval/mt-bench-files.js";
import { loadModel } from "../src/model/model.js";
import { writeRandomLlama } from "../src/model/random-llama.js";
import type { RunningServer } from "../src/serve/server.js";
import { ensureBuilt, expectOk, expectUserError, runCli } from "./helpers/cli.js";
import { killMidRun, QUESTIONS, questions, serveEndpoint } from "./helpers/eval-endpoint.js";
import { type ReceivedRequest, ScriptedTeacher } from "./helpers/scripted-teacher.js";

const TURN_COUNT = questions.reduce((n, q) => n + q.turns.length, 0);

interface AnswerLine {
  question_id: number;
  model_id: string;
  model: string;
  category: string;
  choices: { index: number; turns: string[] }[];
}

function readLines(path: string): AnswerLine[] {
  return readFileSync(path, "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
}

let dir: string;
let modelPath: string;

beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-eval-answers-"));
  modelPath = join(dir, "tiny-answerer.gguf");
  writeRandomLlama(
    modelPath,
    { name: "tiny", dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 192, vocab: 1024, contextLength: 1024 },
    "f32",
  );
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("eval answers with a local model", () => {
  it("asks every turn after the answers before it, as the library's chat does", async () => {
    const out = join(dir, "local.jsonl");
    const args = [
      "eval",
      "answers",
      "-m",
      modelPath,
      "--template",
      "chatml",
      "--questions",
      QUESTIONS,
      "--max-tokens",
      "8",
      "-t",
      "1",
      "--json",
    ];
    const r = await runCli([...args, "--out", out]);
    expectOk(r);
    const summary = JSON.parse(r.stdout);
    expect(summary).toMatchObject({
      out,
      model: "tiny-answerer",
      total: questions.length,
      done: questions.length,
      answeredNow: questions.length,
      resumed: 0,
      stopped: false,
    });
    const lines = readLines(out);
    expect(lines.map((l) => l.question_id)).toEqual(questions.map((q) => q.question_id));
    for (const [i, line] of lines.entries()) {
      expect(line).toMatchObject({
        model_id: "tiny-answerer",
        model: "tiny-answerer",
        category: questions[i]!.category,
      });
      expect(line.choices[0]!.turns).toHaveLength(questions[i]!.turns.length);
    }
    expect(summary.completionTokens).toBeGreaterThan(TURN_COUNT);

    // Replay: the prompt of every turn holds the question's earlier turns and the model's answers
    // to them (the prompt tokens add up), and the greedy categories give the same answers.
    const model = await loadModel(modelPath, { template: "chatml", threads: 1 });
    try {
      let promptTokens = 0;
      for (const [i, q] of questions.entries()) {
        const answers = lines[i]!.choices[0]!.turns;
        const history: { role: "user" | "assistant"; content: string }[] = [];
        for (const [t, turn] of q.turns.entries()) {
          history.push({ role: "user", content: turn });
          promptTokens += model.chatPromptTokens(history).length;
          if (["math", "reasoning", "coding", "extraction"].includes(q.category)) {
            let reply = "";
            for await (const piece of model.chat(history, { temperature: 0, maxTokens: 8 })) reply += piece;
            expect(reply, `question ${q.question_id} turn ${t + 1}`).toBe(answers[t]);
          }
          history.push({ role: "assistant", content: answers[t]! });
        }
      }
      expect(summary.promptTokens).toBe(promptTokens);
    } finally {
      await model.dispose();
    }

    // Sampled categories draw from a seed per question and turn: a fresh run gives the same answers.
    const again = join(dir, "local-again.jsonl");
    expectOk(await runCli([...args, "--out", again]));
    expect(readLines(again).map((l) => l.choices)).toEqual(lines.map((l) => l.choices));
  });

  it("refuses a model without a chat template, and endpoint flags without --endpoint, in one line", async () => {
    const base = [
      "eval",
      "answers",
      "-m",
      modelPath,
      "--questions",
      QUESTIONS,
      "--out",
      join(dir, "x.jsonl"),
    ];
    expectUserError(await runCli(base), "tiny-answerer.gguf");
    expectUserError(
      await runCli([...base, "--template", "chatml", "--rpm", "10"]),
      "--rpm: only with --endpoint",
    );
  });
});

describe("eval answers with an endpoint", () => {
  /** Replies name the request and the start of the question they answer. */
  const script = (n: number, r: ReceivedRequest) => ({
    text: `Reply ${n} to "${r.body.messages!.at(-1)!.content.slice(0, 16)}"`,
  });
  let endpoint: ScriptedTeacher;

  beforeAll(async () => {
    endpoint = await new ScriptedTeacher(script).start();
  });
  afterAll(() => endpoint.stop());

  const args = (out: string, extra: string[] = []) => [
    "eval",
    "answers",
    "--endpoint",
    endpoint.url,
    "-m",
    "hosted",
    "--questions",
    QUESTIONS,
    "--out",
    out,
    "--max-tokens",
    "64",
    ...extra,
  ];

  it("sends each turn with the conversation so far, at MT-bench's temperature for the category", async () => {
    const out = join(dir, "hosted.jsonl");
    const before = endpoint.requests.length;
    const r = await runCli(args(out));
    expectOk(r);
    expect(r.stdout).toMatch(
      /hosted\.jsonl: 8\/8 questions answered by hosted \(8 now\); \d+ prompt \+ \d+ completion tokens\n$/,
    );
    const requests = endpoint.requests.slice(before);
    expect(requests).toHaveLength(TURN_COUNT);
    const lines = readLines(out);
    expect(new Set(lines.map((l) => l.question_id))).toEqual(new Set(questions.map((q) => q.question_id)));
    for (const q of questions) {
      const line = lines.find((l) => l.question_id === q.question_id)!;
      expect(line).toMatchObject({ model_id: "hosted", category: q.category });
      const answers = line.choices[0]!.turns;
      // The request of each turn: the earlier turns with their answers, then this turn.
      for (let t = 0; t < q.turns.length; t++) {
        const messages = q.turns
          .slice(0, t + 1)
          .flatMap((u, k) => [
            { role: "user", content: u },
            ...(k < t ? [{ role: "assistant", content: answers[k] }] : []),
          ]);
        const request = requests.find((x) => JSON.stringify(x.body.messages) === JSON.stringify(messages));
        expect(request, `question ${q.question_id} turn ${t + 1}`).toBeDefined();
        expect(answers[t]).toBe(script(request!.n, request!).text);
        expect(request!.body.max_tokens).toBe(64);
        expect(request!.body.model).toBe("hosted");
        const temperature = { writing: 0.7, roleplay: 0.7, stem: 0.1, humanities: 0.1 }[q.category] ?? 0;
        expect(request!.body.temperature).toBe(temperature);
      }
    }
    // The judge's reader takes the file as it is.
    const set = await readAnswers(out);
    expect(set.model).toBe("hosted");
    expect(set.byId.get("1")).toEqual(lines.find((l) => l.question_id === 1)!.choices[0]!.turns);

    // --temp sets one temperature for all.
    const fixed = join(dir, "hosted-temp.jsonl");
    const n = endpoint.requests.length;
    expectOk(await runCli(args(fixed, ["--temp", "0.3", "--concurrency", "1"])));
    expect(new Set(endpoint.requests.slice(n).map((x) => x.body.temperature))).toEqual(new Set([0.3]));
  });

  it("resumes a partial output: only the questions without an answer are asked", async () => {
    const whole = readFileSync(join(dir, "hosted.jsonl"), "utf8").split("\n");
    const partial = join(dir, "hosted-partial.jsonl");
    // Three answers, and a fourth line cut short by a kill.
    writeFileSync(partial, `${whole.slice(0, 3).join("\n")}\n${whole[3]!.slice(0, 30)}`);
    const answered = whole.slice(0, 3).map((l) => JSON.parse(l).question_id as number);
    const before = endpoint.requests.length;
    const r = await runCli(args(partial, ["--json"]));
    expectOk(r);
    expect(JSON.parse(r.stdout)).toMatchObject({ done: 8, answeredNow: 5, resumed: 3 });
    const asked = endpoint.requests.slice(before).map((x) => x.body.messages![0]!.content);
    for (const q of questions) {
      expect(asked.filter((c) => c === q.turns[0]).length).toBe(
        answered.includes(q.question_id) ? 0 : q.turns.length,
      );
    }
    const ids = readLines(partial).map((l) => l.question_id);
    expect(ids.sort()).toEqual(questions.map((q) => q.question_id).sort());
    // Nothing left: a run asks nothing.
    const n = endpoint.requests.length;
    expectOk(await runCli(args(partial)));
    expect(endpoint.requests).toHaveLength(n);
    // Another model's answers are not continued.
    const other = await runCli([...args(partial), "-m", "another"]);
    expectUserError(other, 'holds answers of "hosted", not "another"; choose another --out');
  });

  it("a run killed half-way continues where it stopped", async () => {
    const slow = await new ScriptedTeacher((n, r) => ({ ...script(n, r), delayMs: 100 })).start();
    const out = join(dir, "hosted-killed.jsonl");
    try {
      const killed = await killMidRun(
        [
          "eval",
          "answers",
          "--endpoint",
          slow.url,
          "-m",
          "hosted",
          "--questions",
          QUESTIONS,
          "--out",
          out,
          "--concurrency",
          "1",
        ],
        out,
        3,
      );
      expect(killed.code).toBe(143);
      expect(killed.stderr).toBe("smallhammer: stopped; run the same command again to resume\n");
      const first = readLines(out).map((l) => l.question_id);
      expect(first.length).toBeGreaterThanOrEqual(3);
      expect(first.length).toBeLessThan(questions.length);
      const before = endpoint.requests.length;
      expectOk(await runCli(args(out)));
      const asked = endpoint.requests.slice(before).map((x) => x.body.messages![0]!.content);
      for (const id of first)
        expect(asked).not.toContain(questions.find((q) => q.question_id === id)!.turns[0]);
      expect(
        readLines(out)
          .map((l) => l.question_id)
          .sort(),
      ).toEqual(questions.map((q) => q.question_id).sort());
    } finally {
      await slow.stop();
    }
  });

  it("refuses bad question files and local-model flags in one line", async () => {
    const bad = join(dir, "bad-questions.jsonl");
    writeFileSync(
      bad,
      '{"question_id": 1, "category": "math", "turns": ["What is 2 + 2?"]}\n{"question_id": 2, "category": "math", "turns": "What is 3 + 3?"}\n',
    );
    expectUserError(
      await runCli(args(join(dir, "a.jsonl"), ["--questions", bad])),
      "bad-questions.jsonl:2: field turns: expected a list of strings",
    );
    writeFileSync(
      bad,
      '{"question_id": 1, "category": "math", "turns": ["a"]}\n{"question_id": 1, "category": "math", "turns": ["b"]}\n',
    );
    expectUserError(
      await runCli(args(join(dir, "a.jsonl"), ["--questions", bad])),
      "field question_id: 1 appears twice",
    );
    writeFileSync(bad, '{"question_id": 1, "turns": ["a"]}\n');
    expectUserError(
      await runCli(args(join(dir, "a.jsonl"), ["--questions", bad])),
      "field category: missing",
    );
    expectUserError(
      await runCli(args(join(dir, "a.jsonl"), ["--template", "chatml"])),
      "--template: only for a local model",
    );
    expectUserError(await runCli(args(QUESTIONS)), "would overwrite --questions");
    expect(existsSync(join(dir, "a.jsonl"))).toBe(false);
  });
});

describe("smallhammer serve as the endpoint", () => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await serveEndpoint(modelPath);
  });
  afterAll(async () => {
    await server?.close(0);
  });

  it("answers every turn of every question through the OpenAI-compatible API", async () => {
    const out = join(dir, "served.jsonl");
    const r = await runCli([
      "eval",
      "answers",
      "--endpoint",
      `${server.url}/v1`,
      "-m",
      "tiny-answerer",
      "--questions",
      QUESTIONS,
      "--out",
      out,
      "--max-tokens",
      "6",
      "--json",
    ]);
    expectOk(r);
    const summary = JSON.parse(r.stdout);
    expect(summary).toMatchObject({ done: 8, answeredNow: 8, model: "tiny-answerer" });
    // Token counts come from the server's usage: every reply ran to its limit or ended early.
    expect(summary.completionTokens).toBeGreaterThan(0);
    expect(summary.completionTokens).toBeLessThanOrEqual(6 * TURN_COUNT);
    const lines = readLines(out);
    expect(lines).toHaveLength(8);
    for (const line of lines) {
      const q = questions.find((x) => x.question_id === line.question_id)!;
      expect(line.choices[0]!.turns).toHaveLength(q.turns.length);
    }
  });
});
