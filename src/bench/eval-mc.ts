// The multiple-choice part of `npm run bench -- eval`: questions/s of `eval mc`'s scoring on a
// random-weight Llama of a bench shape (110M by default), with the KV cache reused between a
// question's choices (the context evaluated once, each continuation from the last context token)
// and, for comparison, with every choice evaluated from its first token. Questions are shaped like
// zero-shot HellaSwag: a context and four endings of set token lengths (each "w123" word is one
// token of the random model's vocabulary). Both ways must give the same log-likelihoods.
import { evaluateMc } from "../eval/mc.js";
import type { McDoc } from "../eval/mc-formats.js";
import { loadModel } from "../model/model.js";
import { type LlamaShape, type RandomModelType, randomLlamaFile } from "../model/random-llama.js";
import { Rng } from "../util/random.js";

export interface McBenchOptions {
  shape: LlamaShape;
  type: RandomModelType;
  /** Where the random model file is cached. */
  dir: string;
  threads: number;
  questions: number;
  contextTokens: number;
  endingTokens: number;
  choices: number;
  /** Runs `work` and says how long it took and how disturbed the machine was. */
  measure<T>(
    work: () => Promise<T>,
  ): Promise<{ value: T; seconds: number; disturbed: boolean; foreignCores: number }>;
  say(line: string): void;
}

export interface McBenchRow {
  mode: "KV reuse" | "no reuse";
  questions: number;
  seconds: number;
  questionsPerSecond: number;
  /** Tokens the model evaluated per question. */
  tokensPerQuestion: number;
  foreignCores: number;
  disturbed: boolean;
}

export interface McBenchResult {
  shape: string;
  type: RandomModelType;
  threads: number;
  choices: number;
  contextTokens: number;
  endingTokens: number;
  rows: McBenchRow[];
  /** Questions/s with reuse over questions/s without. */
  speedup: number;
  /** Largest difference of a choice's log-likelihood between the two ways. */
  maxDifference: number;
  /** The markdown section. */
  text: string;
}

/** Questions of random one-token words: a context and `choices` endings. */
function questions(o: McBenchOptions, seed: number): McDoc[] {
  const rng = new Rng(seed);
  const words = (n: number) =>
    Array.from({ length: n }, () => `w${rng.nextInt(o.shape.vocab - 400)}`).join(" ");
  return Array.from({ length: o.questions }, (_, i) => {
    const context = words(o.contextTokens);
    const choices = Array.from({ length: o.choices }, () => words(o.endingTokens));
    return {
      where: `bench question ${i + 1}`,
      choices,
      pairs: choices.map((c) => ({ context, continuation: ` ${c}` })),
      gold: 0,
      example: "",
      description: "",
    };
  });
}

export async function benchMc(o: McBenchOptions): Promise<McBenchResult> {
  const path = randomLlamaFile(o.dir, o.shape, o.type, (p) => o.say(`writing ${p}`));
  const model = await loadModel(path, {
    threads: o.threads,
    logitsAll: true,
    worker: false,
    contextSize: 2048,
  });
  try {
    const docs = questions(o, 1);
    // Warm-up: the first forward passes pay for compiling and paging in.
    await evaluateMc(model, questions({ ...o, questions: 2 }, 2), { format: "generic" });
    const rows: McBenchRow[] = [];
    const scores: number[][] = [];
    for (const reuse of [true, false]) {
      o.say(`scoring ${docs.length} questions ${reuse ? "with" : "without"} KV reuse`);
      const m = await o.measure(() => evaluateMc(model, docs, { format: "generic", reuse }));
      scores.push(m.value.questions.flatMap((q) => q.loglikelihoods));
      rows.push({
        mode: reuse ? "KV reuse" : "no reuse",
        questions: docs.length,
        seconds: m.seconds,
        questionsPerSecond: docs.length / m.seconds,
        tokensPerQuestion: m.value.evaluatedTokens / docs.length,
        foreignCores: m.foreignCores,
        disturbed: m.disturbed,
      });
    }
    const maxDifference = Math.max(...scores[0]!.map((v, i) => Math.abs(v - scores[1]![i]!)));
    const speedup = rows[0]!.questionsPerSecond / rows[1]!.questionsPerSecond;
    const lines = [
      `## eval mc: ${o.shape.name} ${o.type}, ${o.threads} threads, ${o.choices} choices, context ${o.contextTokens} tokens, endings ${o.endingTokens} tokens`,
      "",
      "| mode | questions | seconds | questions/s | tokens/question | disturbed |",
      "|---|---:|---:|---:|---:|---|",
      ...rows.map(
        (r) =>
          `| ${r.mode} | ${r.questions} | ${r.seconds.toFixed(1)} | ${r.questionsPerSecond.toFixed(2)} | ${r.tokensPerQuestion.toFixed(0)} | ${r.disturbed ? `yes (${r.foreignCores.toFixed(2)} cores)` : "no"} |`,
      ),
      "",
      `KV reuse: ${speedup.toFixed(2)}x the questions/s; largest log-likelihood difference between the two ${maxDifference.toExponential(1)} nats.`,
    ];
    return {
      shape: o.shape.name,
      type: o.type,
      threads: o.threads,
      choices: o.choices,
      contextTokens: o.contextTokens,
      endingTokens: o.endingTokens,
      rows,
      speedup,
      maxDifference,
      text: lines.join("\n"),
    };
  } finally {
    await model.dispose();
  }
}
