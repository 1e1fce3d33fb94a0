import { existsSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import type { Command } from "commander";
import { UserError } from "../errors.js";
import {
  type CategoryMean,
  type JudgeProgress,
  type JudgeRun,
  judgeAnswers,
  type PairCounts,
} from "../eval/judge.js";
import { readAnswers, readQuestions, readReferences } from "../eval/mt-bench-files.js";
import { type CheckedInput, checkOutputs } from "../util/output-path.js";
import { Progress } from "../util/progress.js";
import { addClientOptions, type ClientFlags, clientFor } from "./eval-answers.js";
import { Interruption } from "./interrupt.js";
import { intArg, numArg } from "./options.js";

interface EvalJudgeFlags extends ClientFlags {
  judge: string;
  judgeModel: string;
  questions: string;
  answers: string;
  baseline?: string;
  reference?: string;
  out: string;
  summaryOut?: string;
  maxTokens: number;
  reasks: number;
  priceIn: number;
  priceOut: number;
  force?: boolean;
  json?: boolean;
}

export function registerEvalJudge(evalCmd: Command): void {
  const cmd = evalCmd
    .command("judge")
    .description(
      "grade answers from `eval answers` with an LLM judge behind an OpenAI-compatible API: 1-10 per turn, or win/tie/loss against --baseline judged in both orders; run it again with the same --out to resume",
    )
    .requiredOption("--judge <url>", "the judge's API base URL, e.g. http://127.0.0.1:8080/v1")
    .requiredOption("--judge-model <name>", "the judge's model name")
    .requiredOption("--questions <file>", "the questions the answers answer (MT-bench layout)")
    .requiredOption("--answers <file>", "the answers to judge (FastChat's layout or ours)")
    .option("--baseline <file>", "a baseline's answers: compare pairwise instead of grading")
    .option(
      "--reference <file>",
      "reference answers for math, reasoning and coding, FastChat's layout (default: the questions' own reference)",
    )
    .requiredOption("--out <file>", "judgments JSONL (appended to; a rerun asks only for what is missing)")
    .option("--summary-out <file>", "also write the JSON summary to this file")
    .option("--max-tokens <n>", "most tokens per judge reply", intArg("--max-tokens", 1, 65536), 2048)
    .option(
      "--reasks <n>",
      "follow-ups asking for the verdict alone after a reply without one",
      intArg("--reasks", 0, 10),
      1,
    )
    .option(
      "--price-in <price>",
      "price per million prompt tokens, for the cost estimate",
      numArg("--price-in", 0),
      0,
    )
    .option(
      "--price-out <price>",
      "price per million completion tokens, for the cost estimate",
      numArg("--price-out", 0),
      0,
    );
  addClientOptions(cmd, "judge")
    .option("--force", "replace a --summary-out file that is not an eval summary")
    .option("--json", "print the JSON summary instead of the markdown report");
  cmd.action(async (flags: EvalJudgeFlags) => {
    const inputs: CheckedInput[] = [
      { path: flags.questions, name: "--questions" },
      { path: flags.answers, name: "--answers" },
    ];
    if (flags.baseline !== undefined) inputs.push({ path: flags.baseline, name: "--baseline" });
    if (flags.reference !== undefined) inputs.push({ path: flags.reference, name: "--reference" });
    checkOutputs({
      inputs,
      outputs: [
        { path: flags.out, flag: "--out", existing: "caller" },
        ...(flags.summaryOut === undefined
          ? []
          : [{ path: flags.summaryOut, flag: "--summary-out", existing: "caller" as const }]),
      ],
    });
    if (flags.summaryOut !== undefined && !flags.force) checkSummaryOut(flags.summaryOut);
    const judge = clientFor("--judge", flags.judge, flags.judgeModel, flags);
    const questions = await readQuestions(flags.questions);
    const answers = await readAnswers(flags.answers);
    const baseline =
      flags.baseline === undefined ? undefined : await readAnswers(flags.baseline, "baseline file");
    const references = flags.reference === undefined ? undefined : await readReferences(flags.reference);

    const cost = (p: JudgeProgress) =>
      (p.promptTokens * flags.priceIn + p.completionTokens * flags.priceOut) / 1e6;
    let progress: Progress | undefined;
    let shown: number | undefined;
    const interruption = new Interruption();
    let run: JudgeRun;
    try {
      run = await judgeAnswers({
        judge,
        questions,
        answers,
        baseline,
        references,
        out: flags.out,
        concurrency: flags.concurrency ?? 4,
        maxTokens: flags.maxTokens,
        reasks: flags.reasks,
        signal: interruption.signal,
        onProgress: (p) => {
          // The first call gives the total and the resumed count: shown, but not part of the rate and ETA.
          progress ??= new Progress("judge", p.total, "judgments", {
            enabled: process.stderr.isTTY === true && !flags.json,
            detail: true,
            start: p.done,
          });
          progress.tick(p.done - (shown ?? p.done), {
            detail: `unparsed ${p.unparsed} | ${p.promptTokens + p.completionTokens} tokens | cost ${cost(p).toFixed(4)}`,
          });
          shown = p.done;
        },
      });
    } finally {
      interruption.dispose();
      progress?.done();
    }
    if (run.stopped) {
      process.stderr.write("smallhammer: stopped; run the same command again to resume\n");
      interruption.setExitStatus();
      return;
    }
    const json = `${JSON.stringify(run.summary)}\n`;
    if (flags.summaryOut !== undefined) {
      const tmp = `${flags.summaryOut}.tmp-${process.pid}`;
      writeFileSync(tmp, json);
      renameSync(tmp, flags.summaryOut);
    }
    process.stdout.write(flags.json ? json : judgeReport(run, cost(run.progress)));
  });
}

/** An existing --summary-out is replaced only when it is an eval summary (else with --force). */
function checkSummaryOut(path: string): void {
  if (!existsSync(path)) return;
  let kind: unknown;
  try {
    if (statSync(path).size <= 1 << 20) kind = JSON.parse(readFileSync(path, "utf8")).kind;
  } catch {
    // not JSON: not a summary
  }
  if (kind !== "smallhammer-eval") {
    throw new UserError(`--summary-out ${path} exists and is not an eval summary; add --force to replace it`);
  }
}

const count = (n: number, noun: string) => `${n} ${noun}${n === 1 ? "" : "s"}`;
const fixed = (x: number | null, digits = 2) => (x === null ? "-" : x.toFixed(digits));
const percent = (x: number, n: number) => (n === 0 ? "-" : `${((100 * x) / n).toFixed(1)}%`);

/** The markdown report of a finished run. */
export function judgeReport(run: JudgeRun, cost: number): string {
  const s = run.summary;
  const lines: string[] = [];
  if (s.type === "judge-single") {
    lines.push(
      `## ${s.model}: single-answer grades (1-10) by ${s.judge}`,
      "",
      "| category | mean | n |",
      "| -------- | ---: | -: |",
    );
    const row = (name: string, m: CategoryMean) => `| ${name} | ${fixed(m.mean)} | ${m.n} |`;
    for (const [category, m] of Object.entries(s.categories)) lines.push(row(category, m));
    run.turnMeans.forEach((m, t) => {
      lines.push(row(`turn ${t + 1}`, m));
    });
    lines.push(row("**overall**", s.overall), "");
  } else {
    lines.push(
      `## ${s.model} against ${s.baseline}, judged by ${s.judge} in both orders`,
      "",
      "| category | win | tie | loss | unparsed | win rate | win rate, ties half |",
      "| -------- | --: | --: | ---: | -------: | -------: | ------------------: |",
    );
    const row = (name: string, c: PairCounts) => {
      const n = c.win + c.tie + c.loss;
      return `| ${name} | ${c.win} | ${c.tie} | ${c.loss} | ${c.unparsed} | ${percent(c.win, n)} | ${percent(c.win + c.tie / 2, n)} |`;
    };
    for (const [category, c] of Object.entries(s.categories)) lines.push(row(category, c));
    lines.push(row("**overall**", s.overall), "");
    lines.push(
      `A win or a loss counts when both orders agree; ${count(run.inconsistent, "pair")} on which they disagreed ${run.inconsistent === 1 ? "counts as a tie" : "count as ties"}.`,
    );
  }
  const p = run.progress;
  const unparsed = s.type === "judge-single" ? s.unparsed : s.overall.unparsed;
  if (unparsed > 0) {
    lines.push(
      `${count(unparsed, s.type === "judge-single" ? "turn" : "pair")} without a parseable verdict ` +
        `(after ${count(p.reasked, "follow-up")} this run) ${unparsed === 1 ? "is" : "are"} left out of the means and rates.`,
    );
  }
  if (run.withReference + run.withoutReference > 0) {
    lines.push(
      `Judged against a reference answer: ${count(run.withReference, "turn")}` +
        (run.withoutReference > 0
          ? `; ${count(run.withoutReference, "turn")} of math, reasoning or coding had none.`
          : "."),
    );
  }
  lines.push(
    `${p.done} judgments (${run.reused} from an earlier run); ${p.requests} requests this run, ` +
      `${p.promptTokens} prompt + ${p.completionTokens} completion tokens${p.tokensEstimated ? " (some estimated)" : ""}, ` +
      `cost ${cost.toFixed(4)}${p.retries > 0 ? `; ${p.retries} retries` : ""}.`,
  );
  return `${lines.join("\n")}\n`;
}
