// Eval result files of every type for the report tests: three models (base, tuned, tuned q4_0) on
// two multiple-choice benchmarks (one with subjects), the synthetic tasks, a judge's scores and a
// pairwise judgment. The numbers are made up for the tests; each object is a valid result.
import type {
  JudgePairwiseResult,
  JudgeSingleResult,
  McResult,
  TasksResult,
} from "../../src/eval/results.js";

export const MODELS = ["base f32", "tuned f32", "tuned q4_0"] as const;

function mc(model: string, format: string, shots: number, accs: Record<string, number>, n = 40): McResult {
  const cats = Object.entries(accs);
  const acc = cats.length > 0 ? cats.reduce((s, [, a]) => s + a, 0) / cats.length : 0.5;
  return {
    kind: "smallhammer-eval",
    type: "mc",
    model,
    format,
    shots,
    categories: Object.fromEntries(cats.map(([c, a]) => [c, { acc: a, acc_norm: Math.min(1, a + 0.02), n }])),
    overall: {
      acc,
      acc_stderr: Math.sqrt((acc * (1 - acc)) / (n * Math.max(1, cats.length))),
      acc_norm: Math.min(1, acc + 0.02),
      acc_norm_stderr: 0.03,
      n: n * Math.max(1, cats.length),
    },
  };
}

function hellaswag(model: string, acc: number): McResult {
  return {
    ...mc(model, "hellaswag", 0, {}),
    overall: { acc, acc_stderr: 0.02, acc_norm: acc + 0.03, acc_norm_stderr: 0.02, n: 400 },
  };
}

function tasks(model: string, correct: number[]): TasksResult {
  const families = ["add", "reverse", "lookup"];
  const total = 12;
  const sum = correct.reduce((a, b) => a + b, 0);
  return {
    kind: "smallhammer-eval",
    type: "tasks",
    model,
    categories: Object.fromEntries(
      families.map((f, i) => [f, { correct: correct[i]!, total, accuracy: correct[i]! / total }]),
    ),
    overall: { correct: sum, total: total * families.length, accuracy: sum / (total * families.length) },
  };
}

function judge(model: string, scores: number[]): JudgeSingleResult {
  const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
  const half = Math.floor(scores.length / 2);
  return {
    kind: "smallhammer-eval",
    type: "judge-single",
    model,
    judge: "judge-7b",
    categories: {
      writing: { mean: mean(scores.slice(0, half)), n: half },
      math: { mean: mean(scores.slice(half)), n: scores.length - half },
    },
    overall: { mean: mean(scores), n: scores.length },
    scores,
    unparsed: 1,
  };
}

/** One result of every type for each model (the pairwise ones compare the tuned models with the base). */
export function sampleResults() {
  const mmlu = (model: string, shift: number) =>
    mc(model, "mmlu", 5, {
      abstract_algebra: 0.25 + shift,
      high_school_biology: 0.3 + shift,
      world_religions: 0.28 + shift * 1.5,
    });
  const pairwise = (model: string, win: number, tie: number, loss: number): JudgePairwiseResult => ({
    kind: "smallhammer-eval",
    type: "judge-pairwise",
    model,
    baseline: "base f32",
    judge: "judge-7b",
    categories: {
      writing: { win: Math.ceil(win / 2), tie: Math.floor(tie / 2), loss: Math.floor(loss / 2), unparsed: 0 },
      math: { win: Math.floor(win / 2), tie: Math.ceil(tie / 2), loss: Math.ceil(loss / 2), unparsed: 1 },
    },
    overall: { win, tie, loss, unparsed: 1 },
  });
  return [
    mmlu(MODELS[0], 0),
    mmlu(MODELS[1], 0.12),
    mmlu(MODELS[2], 0.1),
    hellaswag(MODELS[0], 0.26),
    hellaswag(MODELS[1], 0.31),
    hellaswag(MODELS[2], 0.3),
    tasks(MODELS[0], [0, 0, 0]),
    tasks(MODELS[1], [6, 12, 5]),
    tasks(MODELS[2], [5, 12, 5]),
    judge(MODELS[0], [1, 2, 2, 3, 1, 2, 1, 1]),
    judge(MODELS[1], [5, 6, 7, 4, 6, 5, 3, 8]),
    judge(MODELS[2], [5, 6, 6, 4, 5, 5, 3, 7]),
    pairwise(MODELS[1], 14, 3, 3),
    pairwise(MODELS[2], 12, 4, 4),
  ];
}
