/**
 * `smallhammer eval judge` against judges over real HTTP on 127.0.0.1: a scripted judge (a small
 * server in the test whose verdicts follow from the answers it is shown) for the aggregation, the
 * references, the follow-up after a reply without a verdict, the position swap (a win counts only
 * when it survives the swap; a pair the orders disagree on is a tie) and resuming (a pre-seeded
 * partial output, a changed answer, a run killed half-way: nothing judged is asked again); and
 * `smallhammer serve` with random weights, whose replies hold no verdict (asked again, then counted
 * as unparsed). Verdict parsing is checked on its own too.
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parsePairVerdict, parseScore, SCORE_REASK, VERDICT_REASK } from "../src/eval/judge-prompts.js";
import { writeRandomLlama } from "../src/model/random-llama.js";
import type { RunningServer } from "../src/serve/server.js";
import { ensureBuilt, expectOk, expectUserError, ROOT, runCli } from "./helpers/cli.js";
import { killMidRun, QUESTIONS, questions, serveEndpoint } from "./helpers/eval-endpoint.js";
import { type ReceivedRequest, ScriptedTeacher, type TeacherStep } from "./helpers/scripted-teacher.js";

const REFERENCES = join(ROOT, "test", "fixtures", "eval", "references.jsonl");
/** Every (question, turn) in file order, turns from 1. */
const TURNS = questions.flatMap((q) =>
  q.turns.map((_, t) => ({ q: q.question_id, t: t + 1, category: q.category })),
);

let dir: string;
beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-eval-judge-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** An answer file in FastChat's layout whose every answer carries a marker `<<model qNtT>>`. */
function writeAnswers(
  path: string,
  model: string,
  skip: number[] = [],
  change?: (q: number, t: number) => string,
) {
  const lines = questions
    .filter((q) => !skip.includes(q.question_id))
    .map((q) => ({
      question_id: q.question_id,
      answer_id: `${model}-${q.question_id}`,
      model_id: model,
      choices: [
        {
          index: 0,
          turns: q.turns.map(
            (_, t) => change?.(q.question_id, t + 1) ?? `An answer. <<${model} q${q.question_id}t${t + 1}>>`,
          ),
        },
      ],
      tstamp: 0,
    }));
  writeFileSync(path, lines.map((l) => `${JSON.stringify(l)}\n`).join(""));
}

const MARKER = /<<(\w+) q(\d+)t(\d+)>>/g;

/** The last answer marker in a text: the answer being judged (earlier turns come before it). */
function lastMarker(text: string): { model: string; q: number; t: number } | undefined {
  const m = [...text.matchAll(MARKER)].at(-1);
  return m ? { model: m[1]!, q: Number(m[2]), t: Number(m[3]) } : undefined;
}

function userPrompt(r: ReceivedRequest): string {
  return r.body.messages![1]!.content;
}

/** The grade the scripted judge gives: q7 turn 1 only after a follow-up, q8 turn 2 never. */
function gradeOf(q: number, t: number): number | undefined {
  if (q === 8 && t === 2) return undefined;
  if (q === 7 && t === 1) return 3;
  return ((q * 3 + t) % 10) + 1;
}

function singleJudge(): (n: number, r: ReceivedRequest) => TeacherStep {
  return (_n, r) => {
    const messages = r.body.messages!;
    const marker = lastMarker(userPrompt(r))!;
    if (messages.length === 4) {
      // The follow-up: the judge's reply and a request for the grade alone.
      expect(messages[3]).toEqual({ role: "user", content: SCORE_REASK });
      const grade = gradeOf(marker.q, marker.t);
      return { text: grade === undefined ? "No." : `Score: [[${grade}]]` };
    }
    if (marker.q === 7 && marker.t === 1) return { text: "Hmm, it is hard to say." };
    if (marker.q === 8 && marker.t === 2) return { text: "I would rather not grade this one." };
    // Near-misses of the format still parse.
    const grade = gradeOf(marker.q, marker.t)!;
    if (marker.q === 6) return { text: `Clear and correct.\nRating: ${grade}/10` };
    return { text: `The answer is fair; it could say more.\nScore: [[${grade}]]` };
  };
}

/** What the single-answer summary must hold, computed from the script's grades. */
function expectedSingle(model: string, judge: string) {
  const scores: number[] = [];
  const byCategory = new Map<string, number[]>();
  for (const { q, t, category } of TURNS) {
    const g = gradeOf(q, t);
    if (g === undefined) continue;
    scores.push(g);
    byCategory.set(category, [...(byCategory.get(category) ?? []), g]);
  }
  const mean = (v: number[]) => ({ mean: v.reduce((a, b) => a + b, 0) / v.length, n: v.length });
  return {
    kind: "smallhammer-eval",
    type: "judge-single",
    model,
    judge,
    categories: Object.fromEntries([...byCategory].map(([c, v]) => [c, mean(v)])),
    overall: mean(scores),
    scores,
    unparsed: 1,
  };
}

/** The key of a judgment line or of a request: question, turn and order. */
function lineKeys(path: string): string[] {
  return readFileSync(path, "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l))
    .map((j) => `${j.question_id}/${j.turn}/${j.order ?? ""}`);
}

function singleArgs(judge: ScriptedTeacher, answers: string, out: string, extra: string[] = []): string[] {
  return [
    "eval",
    "judge",
    "--judge",
    judge.url,
    "--judge-model",
    "scripted",
    "--questions",
    QUESTIONS,
    "--answers",
    answers,
    "--out",
    out,
    "--concurrency",
    "1",
    ...extra,
  ];
}

describe("verdict parsing", () => {
  it("reads a 1-10 grade, the last one given, with fallbacks, and nothing else", () => {
    expect(parseScore("Good.\nScore: [[7]]")).toBe(7);
    expect(parseScore("Score: [[ 10 ]]")).toBe(10);
    expect(parseScore("I first thought [[3]] but on reflection\nScore: [[8]]")).toBe(8);
    expect(parseScore("Rating: [[6.5]]")).toBe(6.5);
    expect(parseScore("Score: 4")).toBe(4);
    expect(parseScore("I'd give it 9/10.")).toBe(9);
    expect(parseScore("[5]")).toBe(5);
    expect(parseScore("Score: [[0]]")).toBeUndefined();
    expect(parseScore("Score: [[11]]")).toBeUndefined();
    expect(parseScore('Give the grade as "Score: [[N]]"')).toBeUndefined();
    expect(parseScore("Score: [[4]] or Score: [[6]]")).toBeUndefined();
    expect(parseScore("w12 w7 w19")).toBeUndefined();
    expect(parseScore("")).toBeUndefined();
  });

  it("reads a pairwise verdict, the last one given, and refuses a line naming two", () => {
    expect(parsePairVerdict("A is clearer.\nVerdict: [[A]]")).toBe("A");
    expect(parsePairVerdict("Verdict: [[b]]")).toBe("B");
    expect(parsePairVerdict("Verdict: [[tie]]")).toBe("tie");
    expect(parsePairVerdict("[[C]]")).toBe("tie");
    expect(parsePairVerdict("At first [[A]] seemed right.\nVerdict: [[B]]")).toBe("B");
    expect(parsePairVerdict("Verdict: Assistant B")).toBe("B");
    expect(parsePairVerdict("The verdict is a tie")).toBe("tie");
    expect(parsePairVerdict("The verdict is a close call")).toBeUndefined();
    expect(parsePairVerdict('"Verdict: [[A]]" when A is better, "Verdict: [[B]]" otherwise')).toBeUndefined();
    expect(parsePairVerdict("Both are fine.")).toBeUndefined();
  });

  it("refuses long near-misses without backtracking through them", () => {
    const spaces = " ".repeat(200_000);
    expect(parseScore(`Score${spaces}is${spaces}:${spaces}*${spaces}x`)).toBeUndefined();
    expect(parseScore(`[[${spaces}7${spaces}/${spaces}x`)).toBeUndefined();
    expect(parsePairVerdict(`Verdict${spaces}is${spaces}:${spaces}Assistant${spaces}x`)).toBeUndefined();
    expect(parsePairVerdict(`[[${spaces}A${spaces}x`)).toBeUndefined();
  });
});

describe("single-answer grading with a scripted judge", () => {
  let judge: ScriptedTeacher;
  let answers: string;
  let out: string;
  let expected: ReturnType<typeof expectedSingle>;

  beforeAll(async () => {
    judge = await new ScriptedTeacher(singleJudge()).start();
    answers = join(dir, "alpha.jsonl");
    writeAnswers(answers, "alpha");
    out = join(dir, "single.jsonl");
    expected = expectedSingle("alpha", "scripted");
  });
  afterAll(() => judge.stop());

  it("grades every turn, follows up a reply without a verdict, and sums up by category", async () => {
    const summaryOut = join(dir, "single-summary.json");
    const r = await runCli(
      singleArgs(judge, answers, out, ["--reference", REFERENCES, "--summary-out", summaryOut, "--json"]),
    );
    expectOk(r);
    const summary = JSON.parse(r.stdout);
    expect(summary).toEqual(expected);
    expect(JSON.parse(readFileSync(summaryOut, "utf8"))).toEqual(expected);
    // One request per turn, and one follow-up each for q7 turn 1 and q8 turn 2.
    expect(judge.requests).toHaveLength(TURNS.length + 2);
    for (const request of judge.requests) {
      expect(request.body.temperature).toBe(0);
      expect(request.body.model).toBe("scripted");
      expect(request.body.messages![0]!.role).toBe("system");
    }
    // Every judgment is in the output, the unparsed one with a null score, asked twice.
    const lines = readFileSync(out, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(lines).toHaveLength(TURNS.length);
    const q8t2 = lines.find((j) => j.question_id === 8 && j.turn === 2);
    expect(q8t2).toMatchObject({ type: "single", judge: "scripted", model: "alpha", score: null, asked: 2 });
    expect(lines.find((j) => j.question_id === 7 && j.turn === 1)).toMatchObject({ score: 3, asked: 2 });

    // References: math, reasoning and coding turns are judged against the reference file's answers
    // (for q3 in place of the question's own), the others without one.
    const prompt = (q: number, t: number) =>
      userPrompt(
        judge.requests.find((x) => lastMarker(userPrompt(x))?.q === q && lastMarker(userPrompt(x))?.t === t)!,
      );
    expect(prompt(3, 1)).toContain("[Reference answer]\nFrom 09:40 to 13:05 is 3 hours 25 minutes");
    expect(prompt(3, 2)).toContain("### Reference answer to question 2\nAt 10% faster");
    expect(prompt(4, 1)).toContain("Ana is taller than Cal.");
    expect(prompt(5, 2)).toContain("y\\b");
    for (const q of [1, 2, 6, 7, 8]) expect(prompt(q, 1)).not.toContain("Reference answer");
    // A second turn is judged with the conversation before it in view.
    expect(prompt(1, 2)).toContain("<<alpha q1t1>>");
    expect(prompt(1, 2)).toContain(questions[0]!.turns[1]);
    expect(prompt(1, 1)).not.toContain("<<alpha q1t2>>");
  });

  it("prints a markdown report, and without --reference uses the questions' own", async () => {
    const before = judge.requests.length;
    const r = await runCli(singleArgs(judge, answers, join(dir, "single-own-ref.jsonl")));
    expectOk(r);
    const fmt = (c: string) => expected.categories[c]!.mean.toFixed(2);
    expect(r.stdout).toContain("## alpha: single-answer grades (1-10) by scripted");
    expect(r.stdout).toContain(`| math | ${fmt("math")} | 2 |`);
    expect(r.stdout).toContain(`| humanities | ${fmt("humanities")} | 1 |`);
    expect(r.stdout).toContain(`| **overall** | ${expected.overall.mean.toFixed(2)} | ${TURNS.length - 1} |`);
    expect(r.stdout).toContain(
      "1 turn without a parseable verdict (after 2 follow-ups this run) is left out",
    );
    // q3 has its own references; q4 and q5 have none without the file.
    expect(r.stdout).toContain(
      "Judged against a reference answer: 2 turns; 4 turns of math, reasoning or coding had none.",
    );
    const q3 = judge.requests.slice(before).find((x) => lastMarker(userPrompt(x))?.q === 3)!;
    expect(userPrompt(q3)).toContain("[Reference answer]\n205 minutes.");
  });

  it("resumes a partial output: nothing judged before is asked again", async () => {
    // The first six judgments and a line cut short by a kill.
    const partial = join(dir, "single-partial.jsonl");
    const whole = readFileSync(out, "utf8").split("\n");
    writeFileSync(partial, `${whole.slice(0, 6).join("\n")}\n${whole[6]!.slice(0, 40)}`);
    const seeded = lineKeys(out).slice(0, 6);
    const again = await new ScriptedTeacher(singleJudge()).start();
    try {
      const r = await runCli(singleArgs(again, answers, partial, ["--reference", REFERENCES, "--json"]));
      expectOk(r);
      expect(JSON.parse(r.stdout)).toEqual(expected);
      const asked = again.requests.map((x) => lastMarker(userPrompt(x))!).map((m) => `${m.q}/${m.t}/`);
      expect(asked.filter((k) => seeded.includes(k))).toEqual([]);
      expect(new Set(asked).size).toBe(TURNS.length - 6);
      expect(lineKeys(partial).sort()).toEqual(lineKeys(out).sort());
      // Run again on the finished output: nothing is asked at all.
      const n = again.requests.length;
      const done = await runCli(singleArgs(again, answers, partial, ["--reference", REFERENCES, "--json"]));
      expectOk(done);
      expect(JSON.parse(done.stdout)).toEqual(expected);
      expect(again.requests).toHaveLength(n);
    } finally {
      await again.stop();
    }
  });

  it("asks again only for the judgments whose answer changed", async () => {
    const copy = join(dir, "single-changed.jsonl");
    copyFileSync(out, copy);
    const changed = join(dir, "alpha-changed.jsonl");
    writeAnswers(
      changed,
      "alpha",
      [],
      (q, t) => (q === 1 && t === 2 ? "A new answer. <<alpha q1t2>>" : undefined)!,
    );
    const before = judge.requests.length;
    const r = await runCli(singleArgs(judge, changed, copy, ["--reference", REFERENCES, "--json"]));
    expectOk(r);
    expect(JSON.parse(r.stdout)).toEqual(expected);
    const asked = judge.requests.slice(before);
    expect(asked).toHaveLength(1);
    expect(userPrompt(asked[0]!)).toContain("A new answer. <<alpha q1t2>>");
  });

  it("a run killed half-way continues where it stopped", async () => {
    const slow = await new ScriptedTeacher((n, r) => ({ ...singleJudge()(n, r), delayMs: 150 })).start();
    const killed = join(dir, "single-killed.jsonl");
    try {
      const run = await killMidRun(singleArgs(slow, answers, killed, ["--reference", REFERENCES]), killed, 5);
      expect(run.code).toBe(143);
      expect(run.stderr).toBe("smallhammer: stopped; run the same command again to resume\n");
      const first = lineKeys(killed);
      expect(first.length).toBeGreaterThanOrEqual(5);
      expect(first.length).toBeLessThan(TURNS.length);

      const rest = await new ScriptedTeacher(singleJudge()).start();
      try {
        const r = await runCli(singleArgs(rest, answers, killed, ["--reference", REFERENCES, "--json"]));
        expectOk(r);
        expect(JSON.parse(r.stdout)).toEqual(expected);
        const asked = rest.requests.map((x) => lastMarker(userPrompt(x))!).map((m) => `${m.q}/${m.t}/`);
        expect(asked.filter((k) => first.includes(k))).toEqual([]);
        expect(lineKeys(killed)).toHaveLength(TURNS.length);
      } finally {
        await rest.stop();
      }
    } finally {
      await slow.stop();
    }
  });

  it("refuses an output of another judge, missing answers, and a bad URL in one line", async () => {
    const other = await runCli([...singleArgs(judge, answers, out), "--judge-model", "another"]);
    expectUserError(other, 'holds judgments of another run (type single, judge "scripted", model "alpha")');

    const partialAnswers = join(dir, "alpha-partial.jsonl");
    writeAnswers(partialAnswers, "alpha", [8]);
    const missing = await runCli(singleArgs(judge, partialAnswers, join(dir, "x.jsonl")));
    expectUserError(missing, "no answer to question 8");

    const url = await runCli([...singleArgs(judge, answers, join(dir, "y.jsonl")), "--judge", "ftp://x"]);
    expectUserError(url, '--judge: "ftp://x" is not an http(s) URL');

    const notSummary = join(dir, "notes.txt");
    writeFileSync(notSummary, "my notes\n");
    const summary = await runCli([...singleArgs(judge, answers, out), "--summary-out", notSummary]);
    expectUserError(summary, "is not an eval summary; add --force to replace it");
    expect(readFileSync(notSummary, "utf8")).toBe("my notes\n");
  });
});

describe("pairwise comparison with a scripted judge", () => {
  /** Which model the scripted judge prefers on a turn: alpha when q + t is even, else beta. */
  const better = (q: number, t: number) => ((q + t) % 2 === 0 ? "alpha" : "beta");

  const pairJudge = (_n: number, r: ReceivedRequest): TeacherStep => {
    const messages = r.body.messages!;
    const content = userPrompt(r);
    const cut = Math.max(
      content.indexOf("[Assistant B's answer]"),
      content.indexOf("[Conversation with assistant B]"),
    );
    const a = lastMarker(content.slice(0, cut))!;
    const b = lastMarker(content.slice(cut))!;
    expect([a.q, a.t]).toEqual([b.q, b.t]);
    expect(a.model).not.toBe(b.model);
    const { q, t } = a;
    if (messages.length === 4) {
      expect(messages[3]).toEqual({ role: "user", content: VERDICT_REASK });
      return { text: "Still undecided." };
    }
    if (q === 2) return { text: "The first one reads better.\nVerdict: [[A]]" }; // position bias
    if (q === 6 && t === 1) return { text: "Equally good.\nVerdict: [[tie]]" };
    if (q === 4 && t === 2) return { text: "[[C]]" }; // FastChat's tie
    if (q === 8 && t === 2 && a.model === "alpha") return { text: "I cannot choose." };
    const letter = better(q, t) === a.model ? "A" : "B";
    if (q === 5) return { text: `Verdict: Assistant ${letter}` };
    return { text: `One of them is more accurate.\nVerdict: [[${letter}]]` };
  };

  /** The outcome for alpha of each turn, as the rules say it must come out. */
  const outcome = (q: number, t: number): "win" | "tie" | "loss" | "unparsed" => {
    if (q === 2) return "tie"; // the orders disagree
    if ((q === 6 && t === 1) || (q === 4 && t === 2)) return "tie";
    if (q === 8 && t === 2) return "unparsed";
    return better(q, t) === "alpha" ? "win" : "loss";
  };

  it("counts a win only when it survives the swap; a pair the orders disagree on is a tie", async () => {
    const judge = await new ScriptedTeacher(pairJudge).start();
    try {
      const alpha = join(dir, "pair-alpha.jsonl");
      const beta = join(dir, "pair-beta.jsonl");
      writeAnswers(alpha, "alpha");
      writeAnswers(beta, "beta");
      const out = join(dir, "pairwise.jsonl");
      const args = [
        "eval",
        "judge",
        "--judge",
        judge.url,
        "--judge-model",
        "scripted",
        "--questions",
        QUESTIONS,
        "--answers",
        alpha,
        "--baseline",
        beta,
        "--out",
        out,
      ];
      const r = await runCli([...args, "--json"]);
      expectOk(r);
      const zero = () => ({ win: 0, tie: 0, loss: 0, unparsed: 0 });
      const categories: Record<string, ReturnType<typeof zero>> = {};
      const overall = zero();
      for (const { q, t, category } of TURNS) {
        categories[category] ??= zero();
        categories[category]![outcome(q, t)]++;
        overall[outcome(q, t)]++;
      }
      expect(JSON.parse(r.stdout)).toEqual({
        kind: "smallhammer-eval",
        type: "judge-pairwise",
        model: "alpha",
        baseline: "beta",
        judge: "scripted",
        categories,
        overall,
      });
      expect(overall.tie).toBe(4);
      expect(overall.win + overall.loss).toBe(TURNS.length - 5);
      // Both orders of every turn, and one follow-up for q8 turn 2 with alpha first.
      expect(judge.requests).toHaveLength(2 * TURNS.length + 1);
      const lines = readFileSync(out, "utf8")
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l));
      const q2 = lines.filter((j) => j.question_id === 2 && j.turn === 1);
      expect(q2.map((j) => [j.order, j.winner]).sort()).toEqual([
        ["baseline-first", "baseline"],
        ["model-first", "model"],
      ]);
      // A second turn shows each assistant's own conversation.
      const turn2 = judge.requests.find((x) => userPrompt(x).includes("<<alpha q3t2>>"))!;
      expect(userPrompt(turn2)).toMatch(
        /Conversation with assistant A\][\s\S]*<<(alpha|beta) q3t1>>[\s\S]*<<\1 q3t2>>/,
      );

      // The markdown report of the same judgments, with nothing asked again.
      const n = judge.requests.length;
      const md = await runCli(args);
      expectOk(md);
      expect(judge.requests).toHaveLength(n);
      expect(md.stdout).toContain("## alpha against beta, judged by scripted in both orders");
      const rate = (100 * overall.win) / (overall.win + overall.tie + overall.loss);
      expect(md.stdout).toContain(
        `| **overall** | ${overall.win} | ${overall.tie} | ${overall.loss} | 1 | ${rate.toFixed(1)}% |`,
      );
      expect(md.stdout).toContain("2 pairs on which they disagreed count as ties.");

      // The same model twice is no comparison.
      expectUserError(
        await runCli([...args.slice(0, -4), "--baseline", alpha, "--out", join(dir, "z.jsonl")]),
        'both hold answers of "alpha"',
      );
    } finally {
      await judge.stop();
    }
  });
});

describe("smallhammer serve as the judge", () => {
  let server: RunningServer;

  beforeAll(async () => {
    const model = join(dir, "tiny-judge.gguf");
    writeRandomLlama(
      model,
      { name: "tiny", dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 192, vocab: 2048, contextLength: 4096 },
      "f32",
    );
    server = await serveEndpoint(model, 4096);
  });
  afterAll(async () => {
    await server?.close(0);
  });

  it("random weights give no verdict: each judgment is asked again, then counted as unparsed", async () => {
    const questionsFile = join(dir, "two-questions.jsonl");
    writeFileSync(
      questionsFile,
      readFileSync(QUESTIONS, "utf8")
        .split("\n")
        .filter((l) => /"question_id": [37],/.test(l))
        .join("\n"),
    );
    const alpha = join(dir, "serve-alpha.jsonl");
    const beta = join(dir, "serve-beta.jsonl");
    writeAnswers(alpha, "alpha");
    writeAnswers(beta, "beta");
    const base = [
      "eval",
      "judge",
      "--judge",
      `${server.url}/v1`,
      "--judge-model",
      "tiny-judge",
      "--questions",
      questionsFile,
      "--answers",
      alpha,
      "--max-tokens",
      "8",
    ];

    const single = join(dir, "serve-single.jsonl");
    const r = await runCli([...base, "--out", single, "--json"]);
    expectOk(r);
    expect(JSON.parse(r.stdout)).toEqual({
      kind: "smallhammer-eval",
      type: "judge-single",
      model: "alpha",
      judge: "tiny-judge",
      categories: {},
      overall: { mean: null, n: 0 },
      scores: [],
      unparsed: 3,
    });
    const lines = readFileSync(single, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(lines).toHaveLength(3);
    for (const line of lines) expect(line).toMatchObject({ score: null, asked: 2 });

    const pair = join(dir, "serve-pair.jsonl");
    const p = await runCli([...base, "--baseline", beta, "--out", pair]);
    expectOk(p);
    expect(p.stdout).toContain("| **overall** | 0 | 0 | 0 | 3 | - | - |");
    expect(p.stdout).toContain("3 pairs without a parseable verdict (after 6 follow-ups this run)");
    expect(p.stdout).toContain("6 judgments (0 from an earlier run); 12 requests this run");
  });
});
