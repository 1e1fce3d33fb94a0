import type { Command } from "commander";
import { evalTasks, makeWorld, TASK_FAMILIES } from "../data/synthetic.js";
import { taskSummary } from "../eval/results.js";
import { evaluateTasks, type TaskEvalResult } from "../eval/tasks.js";
import { readGgufHeader } from "../formats/gguf.js";
import { metadataGetter } from "../model/config.js";
import { loadModel } from "../model/model.js";
import { writeAtomic } from "../train/loop.js";
import { checkOutputs } from "../util/output-path.js";
import { Progress } from "../util/progress.js";
import { registerEvalAnswers } from "./eval-answers.js";
import { registerEvalJudge } from "./eval-judge.js";
import { registerEvalMc } from "./eval-mc.js";
import { registerEvalReport } from "./eval-report.js";
import { FORCE_HELP, intArg, threadsArg } from "./options.js";

interface EvalTasksFlags {
  model: string;
  threads?: number;
  template?: string;
  perFamily: number;
  worldSeed: number;
  maxTokens: number;
  json?: boolean;
  show?: number;
  summaryOut?: string;
  force?: boolean;
}

export function registerEval(program: Command) {
  const evalCmd = program.command("eval").description("measure a model");
  evalCmd
    .command("tasks")
    .description(
      "exact-match accuracy on the held-out tasks of the quickstart's synthetic world (greedy, one line per answer)",
    )
    .requiredOption("-m, --model <file>", "GGUF model file")
    .option("-t, --threads <n>", "compute threads (default: all cores)", threadsArg)
    .option("--template <name>", "chat template (default: the file's, else alpaca)")
    .option("--per-family <n>", "tasks per family", intArg("--per-family", 1, 1000), 12)
    .option("--world-seed <s>", "seed of the synthetic world", intArg("--world-seed", 0, 2 ** 32 - 1), 1)
    .option("--max-tokens <n>", "most tokens per answer", intArg("--max-tokens", 1, 4096), 24)
    .option("--show <n>", "print the first n replies", intArg("--show", 0))
    .option("--json", "print one JSON object with the scores")
    .option("--summary-out <file>", "also write the scores as an eval result file (what `eval report` reads)")
    .option("--force", FORCE_HELP)
    .action(async (flags: EvalTasksFlags) => {
      if (flags.summaryOut !== undefined) {
        checkOutputs({
          inputs: [{ path: flags.model, name: "the model" }],
          outputs: [{ path: flags.summaryOut, flag: "--summary-out" }],
          force: flags.force,
        });
      }
      const result = await evaluateModelOnTasks(flags.model, flags);
      if (flags.summaryOut !== undefined) {
        writeAtomic(flags.summaryOut, `${JSON.stringify(taskSummary(flags.model, result))}\n`);
      }
      if (flags.json) {
        const { replies: _, ...scores } = result;
        process.stdout.write(`${JSON.stringify(scores)}\n`);
        return;
      }
      for (const r of result.replies.slice(0, flags.show ?? 0)) {
        const q = r.task.input ? `${r.task.instruction} [${r.task.input}]` : r.task.instruction;
        process.stdout.write(
          `${r.correct ? "ok  " : "bad "} ${q} -> ${JSON.stringify(r.reply.trim())} (want ${r.task.output})\n`,
        );
      }
      process.stdout.write(formatTaskScores([{ label: flags.model, result }]));
    });
  registerEvalAnswers(evalCmd);
  registerEvalJudge(evalCmd);
  registerEvalMc(evalCmd);
  registerEvalReport(evalCmd);
}

/** Loads a model (alpaca template when the file has none) and scores it on the held-out tasks. */
export async function evaluateModelOnTasks(
  path: string,
  flags: {
    threads?: number;
    template?: string;
    perFamily?: number;
    worldSeed?: number;
    maxTokens?: number;
    progress?: boolean;
  },
): Promise<TaskEvalResult> {
  const own = metadataGetter(readGgufHeader(path))("tokenizer.chat_template");
  const template = flags.template ?? (typeof own === "string" && own.trim() !== "" ? undefined : "alpaca");
  const tasks = evalTasks(makeWorld(flags.worldSeed ?? 1), flags.perFamily ?? 12);
  const model = await loadModel(path, { threads: flags.threads, template, worker: false });
  try {
    const progress = new Progress(
      "eval",
      tasks.length,
      "tasks",
      flags.progress ?? process.stderr.isTTY === true,
    );
    const result = await evaluateTasks(model, tasks, {
      maxTokens: flags.maxTokens,
      onProgress: () => progress.tick(),
    });
    progress.done();
    return result;
  } finally {
    await model.dispose();
  }
}

/** A table with one column per model: accuracy by task family and overall. */
export function formatTaskScores(columns: { label: string; result: TaskEvalResult }[]): string {
  const width = Math.max(8, ...columns.map((c) => c.label.length));
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`.padStart(width);
  const lines = [`${"family".padEnd(14)}${columns.map((c) => ` ${c.label.padStart(width)}`).join("")}`];
  for (const family of TASK_FAMILIES) {
    if (!columns.some((c) => c.result.byFamily[family])) continue;
    lines.push(
      `${family.padEnd(14)}${columns.map((c) => ` ${pct(c.result.byFamily[family]?.accuracy ?? 0)}`).join("")}`,
    );
  }
  lines.push(`${"all".padEnd(14)}${columns.map((c) => ` ${pct(c.result.accuracy)}`).join("")}`);
  return `${lines.join("\n")}\n`;
}
