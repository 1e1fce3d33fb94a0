// `eval mc`: each benchmark format parsed from fixtures written in its publisher's layout, acc and
// acc_norm aggregated as lm-evaluation-harness aggregates them on constructed cases, few-shot
// prompts, and log-likelihoods checked against llama.cpp's (through node-llama-cpp) on the same
// tokens of a small model made here, with and without KV reuse; the CLI end to end.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, type Llama } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UserError } from "../src/errors.js";
import {
  aggregateMc,
  charLength,
  encodePair,
  evaluateMc,
  FewshotSampler,
  LoglikelihoodScorer,
  meanStderr,
  scoreChoices,
} from "../src/eval/mc.js";
import {
  hellaswagPreprocess,
  type McDoc,
  type McFormat,
  readMcFile,
  TRUTHFULQA_PRIMER,
} from "../src/eval/mc-formats.js";
import { parseEvalResult } from "../src/eval/results.js";
import { loadModel, type Model } from "../src/model/model.js";
import { ensureBuilt, expectOk, expectUserError, ROOT, runCli } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

const FIXTURES = join(ROOT, "test", "fixtures", "eval");
const fixture = (name: string) => join(FIXTURES, `mc-${name}.jsonl`);

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "sh-eval-mc-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Writes `lines` as a JSONL file in the test's directory. */
function jsonl(name: string, lines: unknown[]): string {
  const path = join(dir, name);
  writeFileSync(path, lines.map((l) => (typeof l === "string" ? l : JSON.stringify(l))).join("\n"));
  return path;
}

describe("benchmark formats", () => {
  const continuations = (d: McDoc) => d.pairs.map((p) => p.continuation);

  it("hellaswag: activity label, ctx_a and capitalised ctx_b, WikiHow markers cleaned", async () => {
    const docs = await readMcFile(fixture("hellaswag"), "hellaswag");
    expect(docs).toHaveLength(3);
    expect(docs[0]!.pairs[0]!.context).toBe(
      "Making tea: A woman fills a kettle with water and sets it on the stove. She",
    );
    expect(docs[0]!.gold).toBe(2);
    expect(continuations(docs[0]!)[2]).toBe(" waits for the water to boil and pours it over the tea leaves.");
    // " [title]" becomes ". ", other brackets go, double spaces become one; "if it is DRY".capitalize()
    expect(docs[1]!.pairs[0]!.context).toBe(
      "Home and Garden: How to water a cactus. Check the soil first. Push a finger into the soil. If it is dry",
    );
    expect(docs[1]!.choices[0]).toBe(" Water it slowly until water runs from the pot.");
    expect(docs[1]!.choices[2]).toBe(" Paint the pot Use blue paint.");
    expect(docs[1]!.gold).toBe(0); // "0" as Hugging Face writes labels
    expect(docs[2]!.pairs[0]!.context).toBe("Riding a bike: A boy climbs onto a bicycle and pushes off. He");
    expect(docs[2]!.choices).toHaveLength(3);
    expect(docs.every((d) => d.category === undefined)).toBe(true);
    expect(hellaswagPreprocess("  a [step] b  ")).toBe("a b");
  });

  it("arc: Hugging Face's and AllenAI's layouts, letter and number keys", async () => {
    const docs = await readMcFile(fixture("arc"), "arc");
    expect(docs.map((d) => d.gold)).toEqual([1, 1, 0]);
    expect(docs[0]!.pairs[1]).toEqual({
      context: "Question: Which of these is a source of light?\nAnswer:",
      continuation: " the Sun",
    });
    expect(docs[2]!.pairs[0]!.context).toBe("Question: What do plants need to make food?\nAnswer:");
    expect(docs[2]!.choices).toEqual(["sunlight", "darkness", "plastic", "noise"]);
    expect(docs[2]!.where).toBe(`${fixture("arc")}:3`);
  });

  it("mmlu: lettered choices, the subject's heading, answers as index, letter or digit string", async () => {
    const docs = await readMcFile(fixture("mmlu"), "mmlu");
    expect(docs.map((d) => d.gold)).toEqual([1, 0, 2, 1]);
    expect(docs.map((d) => d.category)).toEqual([
      "elementary_mathematics",
      "elementary_mathematics",
      "high_school_biology",
      "elementary_mathematics",
    ]);
    expect(docs[0]!.description).toBe(
      "The following are multiple choice questions (with answers) about elementary mathematics.\n\n",
    );
    expect(docs[3]!.pairs[0]!.context).toBe("What is 3 times 3?\nA. 6\nB. 9\nC. 12\nD. 33\nAnswer:");
    expect(continuations(docs[3]!)).toEqual([" A", " B", " C", " D"]);
    expect(docs[3]!.example).toBe("What is 3 times 3?\nA. 6\nB. 9\nC. 12\nD. 33\nAnswer: B");
  });

  it("piqa, truthfulqa_mc and generic", async () => {
    const piqa = await readMcFile(fixture("piqa"), "piqa");
    expect(piqa.map((d) => d.gold)).toEqual([1, 0]);
    expect(piqa[0]!.pairs[1]).toEqual({
      context: "Question: To keep bread fresh for longer,\nAnswer:",
      continuation: " keep it in a closed bag in a cool place.",
    });
    const tqa = await readMcFile(fixture("truthfulqa"), "truthfulqa_mc");
    expect(tqa.map((d) => d.gold)).toEqual([0, 1]);
    expect(tqa[0]!.pairs[0]!.context).toBe(
      `${TRUTHFULQA_PRIMER}\n\nQ: What happens if you swallow a watermelon seed?\nA:`,
    );
    expect(TRUTHFULQA_PRIMER.split("\n\n")).toHaveLength(6);
    const generic = await readMcFile(fixture("generic"), "generic");
    expect(generic.map((d) => d.category)).toEqual(["geography", "arithmetic", "words", "arithmetic"]);
    expect(generic[0]!.pairs[0]).toEqual({ context: "The capital of France is", continuation: " Paris" });
  });

  it("winogrande: partial scoring, the same rest of the sentence under each option", async () => {
    const docs = await readMcFile(fixture("winogrande"), "winogrande");
    expect(docs[0]!.pairs).toEqual([
      { context: "The trophy did not fit in the suitcase because the trophy", continuation: " was too big." },
      {
        context: "The trophy did not fit in the suitcase because the suitcase",
        continuation: " was too big.",
      },
    ]);
    // acc_norm divides by the lengths of what is chosen among: the sentences with each option
    expect(docs[0]!.choices).toEqual(docs[0]!.pairs.map((p) => p.context));
    expect(docs.map((d) => d.gold)).toEqual([0, 1]);
    expect(docs[1]!.example).toBe("Anna gave her umbrella to Maria because Maria was going out in the rain.");
  });

  it("refuses a bad record in one line naming the file, the line and the field", async () => {
    const cases: [McFormat, unknown, string][] = [
      [
        "winogrande",
        { sentence: "no blank here", option1: "a", option2: "b", answer: "1" },
        "field sentence: has no blank",
      ],
      [
        "winogrande",
        { sentence: "a _ b", option1: "a", option2: "b", answer: "" },
        "test split hides its answers",
      ],
      [
        "mmlu",
        { question: "q", subject: "s", choices: ["a", "b", "c", "d"], answer: "E" },
        "past the 4 choices",
      ],
      [
        "arc",
        { question: "q", choices: { text: ["a", "b"], label: ["A", "B"] }, answerKey: "C" },
        "answerKey",
      ],
      ["hellaswag", { ctx: "c", endings: ["a", "b"], label: 7 }, "answer index 7 is past the 2 choices"],
      ["hellaswag", { endings: ["a", "b"], label: 0 }, "needs ctx_a"],
      [
        "truthfulqa_mc",
        { question: "q", mc1_targets: { choices: ["a", "b"], labels: [1, 1] } },
        "exactly one 1",
      ],
      ["generic", { context: "c", choices: ["only one"], label: 0 }, "field choices"],
      ["piqa", [1, 2], "expected a JSON object"],
      ["generic", "{not json", "JSON"],
    ];
    for (const [format, record, mention] of cases) {
      const path = jsonl("bad.jsonl", [{ context: "ok", choices: ["a", "b"], label: 0 }, record]);
      const error = await readMcFile(path, format).catch((e: unknown) => e);
      expect(error, `${format} ${mention}`).toBeInstanceOf(UserError);
      const message = (error as Error).message;
      expect(message.split("\n")).toHaveLength(1);
      // the first line is a generic record: every format but generic stops there
      expect(message).toContain(format === "generic" ? `${path}:2` : `${path}:1`);
      if (format === "generic") expect(message).toContain(mention);
    }
    // the same records on a line of their own are reported with their problem
    for (const [format, record, mention] of cases) {
      const path = jsonl("bad.jsonl", [record]);
      const message = await readMcFile(path, format).catch((e: Error) => e.message);
      expect(message, format).toContain(`${path}:1`);
      expect(message, format).toContain(mention);
    }
    await expect(readMcFile(jsonl("empty.jsonl", []), "generic")).rejects.toThrow("no records");
    await expect(readMcFile(join(dir, "missing.jsonl"), "generic")).rejects.toThrow("cannot read the file");
  });

  it("reads a JSON array and stops at --limit", async () => {
    const path = join(dir, "array.json");
    writeFileSync(
      path,
      JSON.stringify([1, 2, 3].map((i) => ({ context: `c${i}`, choices: ["a", "b"], label: 0 }))),
    );
    const docs = await readMcFile(path, "generic", { limit: 2 });
    expect(docs.map((d) => d.pairs[0]!.context)).toEqual(["c1", "c2"]);
  });
});

describe("scoring and aggregation", () => {
  it("acc takes the largest log-likelihood, acc_norm divides by the length in characters", () => {
    // the long right answer loses on the sum but wins per character
    expect(scoreChoices([-4, -12], ["ab", "abcdefghijkl"], 1)).toEqual({ acc: 0, accNorm: 1 });
    // ties go to the first choice, as numpy's argmax
    expect(scoreChoices([-1, -1], ["a", "b"], 1)).toEqual({ acc: 0, accNorm: 0 });
    expect(scoreChoices([-1, -1], ["a", "b"], 0)).toEqual({ acc: 1, accNorm: 1 });
    // characters are code points (Python's len), not UTF-16 units or bytes
    expect(charLength("é😀x")).toBe(3);
    expect(scoreChoices([-3, -3.5], ["😀😀😀", "abcd"], 1).accNorm).toBe(1);
  });

  it("means by category and overall with the harness's standard error", () => {
    const q = (category: string, acc: number, accNorm: number) => ({
      category,
      gold: 0,
      loglikelihoods: [],
      acc,
      accNorm,
    });
    const scores = [q("b", 1, 1), q("a", 0, 1), q("b", 1, 0), q("b", 1, 1)];
    const r = aggregateMc(scores);
    expect(Object.keys(r.categories)).toEqual(["a", "b"]);
    expect(r.categories).toEqual({ a: { acc: 0, acc_norm: 1, n: 1 }, b: { acc: 1, acc_norm: 2 / 3, n: 3 } });
    // acc 1,0,1,1: mean 0.75, sample std 0.5, stderr 0.5 / 2
    expect(r.overall.acc).toBe(0.75);
    expect(r.overall.acc_stderr).toBeCloseTo(0.25, 12);
    expect(r.overall.acc_norm).toBe(0.75);
    expect(r.overall.n).toBe(4);
    expect(meanStderr([1])).toBeNull(); // N/A, as the harness prints it
    expect(meanStderr([0, 0, 0])).toBe(0);
  });

  it("few-shot prompts: MMLU's first k of the subject, others drawn with a seed, never the question itself", async () => {
    const dev = await readMcFile(fixture("mmlu-dev"), "mmlu");
    const test = await readMcFile(fixture("mmlu"), "mmlu");
    const mmlu = new FewshotSampler(dev, 2, "mmlu", 1234);
    expect(mmlu.prefix(test[2]!, 2)).toBe(
      "The following are multiple choice questions (with answers) about high school biology.\n\n" +
        "What do fish use to breathe?\nA. Lungs\nB. Gills\nC. Leaves\nD. Feathers\nAnswer: B\n\n" +
        "Which organ pumps blood?\nA. Heart\nB. Liver\nC. Skin\nD. Hair\nAnswer: A\n\n",
    );
    expect(() => new FewshotSampler(dev, 3, "mmlu", 1).prefix(test[0]!, 0)).toThrow(
      "needs 3 few-shot records of subject elementary_mathematics, the few-shot data has 2",
    );
    const generic = await readMcFile(fixture("generic"), "generic");
    const prefixes = (seed: number) => {
      const s = new FewshotSampler(generic, 2, "generic", seed, true);
      return generic.map((d, i) => s.prefix(d, i));
    };
    expect(prefixes(7)).toEqual(prefixes(7));
    for (const [i, p] of prefixes(7).entries()) {
      const examples = p.split("\n\n").filter((e) => e !== "");
      expect(examples).toHaveLength(2);
      expect(examples).not.toContain(generic[i]!.example);
    }
    expect(() => new FewshotSampler(generic, 4, "generic", 1, true)).toThrow("needs 5 few-shot records");
  });
});

/** llama.cpp's log-probabilities of `continuation` after `context`, read from its full next-token distributions. */
async function llamaCppLoglikelihood(
  llama: Llama,
  path: string,
  pairs: { context: number[]; continuation: number[] }[],
): Promise<number[]> {
  const model = await llama.loadModel({ modelPath: path });
  try {
    const ctx = await model.createContext({
      contextSize: 512,
      threads: 2,
      experimentalKvCacheKeyType: "F32",
      experimentalKvCacheValueType: "F32",
    });
    const out: number[] = [];
    const seq = ctx.getSequence();
    for (const { context, continuation } of pairs) {
      await seq.clearHistory();
      const all = [...context, ...continuation];
      const first = context.length - 1;
      const input = all.slice(0, -1).map((t, i) =>
        i >= first
          ? ([
              t,
              {
                generateNext: {
                  probabilities: true,
                  options: { temperature: 1, topK: 0, topP: 1, minP: 0 },
                },
              },
            ] as const)
          : t,
      );
      const results = await seq.controlledEvaluate(input as never);
      let sum = 0;
      for (let i = first; i < all.length - 1; i++) {
        const p = results[i]!.next.probabilities!.get(all[i + 1]! as never);
        sum += Math.log(p ?? 0);
      }
      out.push(sum);
    }
    await ctx.dispose();
    return out;
  } finally {
    await model.dispose();
  }
}

describe("log-likelihoods against llama.cpp", () => {
  let llama: Llama;
  let path: string;
  let model: Model;

  beforeAll(async () => {
    llama = await getLlama({ gpu: false, build: "never", logLevel: "error" as never });
    path = join(dir, "mc-tiny.gguf");
    writeTinyLlama(path, {
      dim: 64,
      layers: 2,
      heads: 4,
      kvHeads: 2,
      ffn: 128,
      seed: 3,
      weightScale: 0.3,
      contextLength: 512,
    });
    model = await loadModel(path, { threads: 2, logitsAll: true, worker: false, batchSize: 16 });
  });
  afterAll(async () => {
    await model?.dispose();
    await llama?.dispose();
  });

  it("every choice of every format scores as llama.cpp scores it, with and without KV reuse", async () => {
    const formats: [McFormat, string][] = [
      ["hellaswag", "hellaswag"],
      ["mmlu", "mmlu"],
      ["winogrande", "winogrande"],
      ["generic", "generic"],
    ];
    for (const [format, file] of formats) {
      const docs = await readMcFile(fixture(file), format);
      const reuse = await evaluateMc(model, docs, { format });
      const whole = await evaluateMc(model, docs, { format, reuse: false });
      // Reuse evaluates fewer tokens and gives the same scores.
      expect(reuse.evaluatedTokens).toBeLessThan(whole.evaluatedTokens);
      for (const [i, q] of reuse.questions.entries()) {
        for (const [c, ll] of q.loglikelihoods.entries()) {
          expect(ll).toBeCloseTo(whole.questions[i]!.loglikelihoods[c]!, 4);
        }
      }
      expect(whole.result).toEqual(reuse.result);
      const pairs = docs.flatMap((d) =>
        d.pairs.map((p) => encodePair(model.tokenizer, d.description + p.context, p.continuation)),
      );
      const reference = await llamaCppLoglikelihood(llama, path, pairs);
      const ours = reuse.questions.flatMap((q) => q.loglikelihoods);
      expect(ours).toHaveLength(reference.length);
      for (const [i, ll] of ours.entries()) {
        expect(Number.isFinite(ll) && ll < 0, `${format} choice ${i}`).toBe(true);
        // f32 weights in both engines: the sums agree to a few thousandths of a nat
        expect(Math.abs(ll - reference[i]!), `${format} choice ${i}: ${ll} vs ${reference[i]}`).toBeLessThan(
          2e-3 * Math.max(1, Math.abs(reference[i]!)),
        );
      }
    }
  });

  it("a question longer than the context loses tokens on its left, as in the harness", async () => {
    const small = await loadModel(path, {
      threads: 1,
      logitsAll: true,
      worker: false,
      contextSize: 24,
      batchSize: 8,
    });
    try {
      const long = "the quick brown fox jumps over the lazy dog ".repeat(4);
      const docs = [
        {
          where: "x:1",
          description: "",
          gold: 0,
          choices: ["a", "b"],
          example: "",
          pairs: [
            { context: long, continuation: " hello" },
            { context: long, continuation: " the" },
          ],
        },
      ];
      const out = await evaluateMc(small, docs, { format: "generic" });
      expect(out.truncated).toBe(1);
      // the same as scoring the last 25 tokens (the window plus the predicted last one) whole
      const t = encodePair(small.tokenizer, long, " hello");
      expect(t.context.length + t.continuation.length).toBeGreaterThan(25);
      const all = [...t.context, ...t.continuation].slice(-25);
      const scorer = new LoglikelihoodScorer(small.llama, false);
      const expected = scorer.loglikelihood(
        all.slice(0, all.length - t.continuation.length),
        t.continuation,
        "x",
      );
      expect(out.questions[0]!.loglikelihoods[0]).toBeCloseTo(expected, 5);
    } finally {
      await small.dispose();
    }
  });
});

describe("eval mc (CLI)", () => {
  let path: string;
  beforeAll(() => {
    ensureBuilt();
    path = join(dir, "cli-tiny.gguf");
    writeTinyLlama(path, {
      dim: 32,
      layers: 1,
      heads: 2,
      ffn: 64,
      seed: 9,
      weightScale: 0.3,
      contextLength: 1024,
    });
  });

  it("prints markdown with per-subject scores, and --json an eval result; --summary-out writes it", async () => {
    const args = ["eval", "mc", "-m", path, "--data", fixture("mmlu"), "--format", "mmlu", "-t", "1"];
    const fewshot = ["--shots", "2", "--fewshot-data", fixture("mmlu-dev")];
    const md = await runCli([...args, ...fewshot]);
    expectOk(md);
    expect(md.stdout).toContain("| model | format | shots | n | acc | ± | acc_norm | ± |");
    expect(md.stdout).toMatch(/\| mmlu \| 2 \| 4 \| [01]\.\d{4} \| 0\.\d{4} \|/);
    expect(md.stdout).toContain("| elementary_mathematics | 3 |");
    expect(md.stdout).toContain("| high_school_biology | 1 |");
    const summary = join(dir, "mmlu.json");
    const json = await runCli([...args, ...fewshot, "--json", "--summary-out", summary]);
    expectOk(json);
    const result = parseEvalResult(JSON.parse(json.stdout), "stdout");
    expect(result).toMatchObject({ type: "mc", format: "mmlu", shots: 2, model: path });
    expect(JSON.parse(readFileSync(summary, "utf8"))).toEqual(JSON.parse(json.stdout));
    // without KV reuse: the same result
    const whole = await runCli([...args, ...fewshot, "--json", "--no-kv-reuse"]);
    expectOk(whole);
    expect(JSON.parse(whole.stdout)).toEqual(JSON.parse(json.stdout));
    // an existing summary is replaced only with --force
    expectUserError(await runCli([...args, "--summary-out", summary]), "--force");
  });

  it("refuses bad flags and bad data in one line", async () => {
    const base = ["eval", "mc", "-m", path];
    expectUserError(await runCli([...base, "--data", fixture("arc"), "--format", "race"]), "--format");
    expectUserError(
      await runCli([...base, "--data", fixture("arc"), "--format", "arc", "--shots", "2"]),
      "--fewshot-data",
    );
    expectUserError(
      await runCli([
        ...base,
        "--data",
        fixture("truthfulqa"),
        "--format",
        "truthfulqa_mc",
        "--shots",
        "1",
        "--fewshot-data",
        fixture("truthfulqa"),
      ]),
      "six solved questions",
    );
    expectUserError(
      await runCli([...base, "--data", fixture("arc"), "--format", "mmlu"]),
      `${fixture("arc")}:1`,
    );
    expectUserError(
      await runCli([
        ...base,
        "--data",
        fixture("generic"),
        "--format",
        "generic",
        "--summary-out",
        fixture("generic"),
      ]),
      "would overwrite",
    );
  });
});
