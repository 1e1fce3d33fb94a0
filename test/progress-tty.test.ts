/**
 * Progress output on a terminal: pretrain, finetune and data self-instruct run on a
 * pseudo-terminal (util-linux `script`), and what they wrote is replayed as a terminal shows it.
 * No placeholder is drawn unfilled, no unknown ETA is drawn, and every line printed while the bar
 * is drawn (validation losses, the summary) stands on its own line, not spliced into the bar.
 * Ctrl-C and SIGTERM in data self-instruct save and exit 130 and 143.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { statePath } from "../src/data/self-instruct.js";
import { sparkline } from "../src/util/progress.js";
import { CLI, type CliResult, ensureBuilt, ROOT, runCli } from "./helpers/cli.js";
import {
  distinctTask,
  numberedReply,
  ScriptedTeacher,
  type TeacherStep,
} from "./helpers/scripted-teacher.js";
import { HAS_SCRIPT, runCliOnTerminal, screenLines, withoutEscapes } from "./helpers/terminal.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";
import { writeTinyAlpaca } from "./helpers/train-setup.js";

/** The sparkline's characters, lowest first. */
const SPARKS = "▁▂▃▄▅▆▇█";

let dir: string;

beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-progress-tty-"));
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const servers: ScriptedTeacher[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop();
});

async function teacherWith(script: (n: number) => TeacherStep): Promise<ScriptedTeacher> {
  const server = await new ScriptedTeacher(script).start();
  servers.push(server);
  return server;
}

/** What a bar drawing must never hold: an unfilled `{field}`, an ETA cli-progress could not estimate. */
function expectNothingUnfilled(output: string): void {
  const text = withoutEscapes(output);
  expect(text).not.toMatch(/\{\w*\}/);
  expect(text).not.toMatch(/NF|INF|NULL|Infinity|NaN|undefined/);
}

describe("the loss sparkline", () => {
  it("scales the values from lowest to highest, one character each up to its width", () => {
    expect(sparkline([8, 7, 6, 5, 4, 3, 2, 1])).toBe("█▇▆▅▄▃▂▁");
    expect(sparkline([1, 3, 2])).toBe("▁█▅");
    expect(sparkline([2, 2, 2])).toBe("▄▄▄");
    expect(sparkline([])).toBe("");
    expect(sparkline([Number.NaN, 1, Number.POSITIVE_INFINITY, 2])).toBe("▁█");
  });

  it("averages buckets past its width, the newest bucket ending at the last value", () => {
    // 10 values in width 4: buckets of 3, the oldest one short (the first value alone)
    expect(sparkline([9, 6, 6, 6, 3, 3, 3, 0, 0, 0], 4)).toBe("█▆▃▁");
    const long = Array.from({ length: 120 }, (_, i) => 120 - i);
    expect(sparkline(long, 24)).toHaveLength(24);
  });
});

describe("on a terminal", () => {
  it("has util-linux script to make a pseudo-terminal (.ci/run installs it)", () => {
    expect(HAS_SCRIPT).toBe(true);
  });

  it("pretrain draws its bar below the validation lines and ends with the summary on its own line", async () => {
    const corpus = join(dir, "corpus.txt");
    writeFileSync(
      corpus,
      readFileSync(join(ROOT, "test", "fixtures", "tinyshakespeare.txt"), "utf8").slice(0, 60_000),
    );
    const tokenizer = join(dir, "tokenizer.gguf");
    const cache = join(dir, "cache");
    for (const args of [
      ["tokenizer", "train", corpus, "--vocab-size", "400", "--out", tokenizer],
      ["data", "tokenize", corpus, "--tokenizer", tokenizer, "--out", cache, "--val-fraction", "0.1"],
    ]) {
      const r = await runCli(args);
      expect(r.stderr).toBe("");
      expect(r.status).toBe(0);
    }
    const model = join(dir, "model.json");
    writeFileSync(
      model,
      JSON.stringify({ dim: 32, layers: 1, heads: 2, kvHeads: 2, ffn: 64, contextLength: 32 }),
    );
    const out = join(dir, "pretrain");
    const r = await runCliOnTerminal([
      ...["pretrain", "--model", model, "--data", cache, "--out", out, "--steps", "30"],
      ...["--batch", "2", "--seq", "32", "--threads", "1", "--eval-every", "10", "--eval-batches", "1"],
    ]);
    expect(r.status, r.output).toBe(0);
    expectNothingUnfilled(r.output);
    // the bar was drawn (before the first step, with no ETA yet) and redrawn
    expect(withoutEscapes(r.output)).toMatch(/pretrain \[░+\] 0\/30 steps \| 0\.0\/s(?! \|)/);
    const lines = screenLines(r.output);
    expect(lines.slice(0, 3).map((l) => l.split(":")[0])).toEqual(["model", "memory", "training"]);
    const evals = lines.filter((l) => l.startsWith("step "));
    expect(evals, lines.join("\n")).toHaveLength(3);
    for (const l of evals) expect(l).toMatch(/^step (10|20|30): validation loss \d+\.\d{4}$/);
    const bar = lines.filter((l) => l.startsWith("pretrain ["));
    expect(bar).toHaveLength(1);
    // the loss, then a sparkline of the recent losses: 30 steps in buckets of 2
    expect(bar[0]).toMatch(
      /^pretrain \[█+\] 30\/30 steps \| [\d.]+\/s \| ETA 0s \| loss \d+\.\d{3} [▁▂▃▄▅▆▇█]{15} \| \d+ tok\/s$/,
    );
    // the losses fell: the line starts high and ends low
    const spark = /loss \d+\.\d{3} (\S+) \|/.exec(bar[0]!)![1]!;
    expect(SPARKS.indexOf(spark[0]!)).toBeGreaterThan(SPARKS.indexOf(spark.at(-1)!));
    expect(lines.indexOf(bar[0]!)).toBeGreaterThan(lines.indexOf(evals[2]!));
    expect(lines.at(-2)).toMatch(
      new RegExp(
        `^done: 30 steps, loss \\d+\\.\\d{4}, validation loss \\d+\\.\\d{4}; saved ${out}/checkpoint\\.gguf$`,
      ),
    );
    expect(lines.at(-1)).toBe(`report: ${out}/report.html`);
    expect(lines).toHaveLength(9);

    // resumed, the bar starts at the steps done
    const resumed = await runCliOnTerminal(["pretrain", "--resume", out, "--steps", "34", "--threads", "1"]);
    expect(resumed.status, resumed.output).toBe(0);
    expectNothingUnfilled(resumed.output);
    expect(withoutEscapes(resumed.output)).toMatch(/pretrain \[█+░+\] 30\/34 steps \| 0\.0\/s(?! \|)/);
    const after = screenLines(resumed.output);
    expect(after).toContain("training: steps 31 to 34 on 1 threads");
    expect(after.filter((l) => l.startsWith("pretrain ["))).toHaveLength(1);
    // the sparkline holds this process's 4 steps
    expect(after.find((l) => l.startsWith("pretrain ["))).toMatch(/ loss \d+\.\d{3} [▁▂▃▄▅▆▇█]{4} \| /);
    expect(after.at(-2)).toMatch(/^done: 34 steps, loss /);
    expect(after.at(-1)).toBe(`report: ${out}/report.html`);

    // in a pipe: the same lines, with no bar and no sparkline
    const piped = await runCli(["pretrain", "--resume", out, "--steps", "36", "--threads", "1"]);
    expect(piped.status).toBe(0);
    expect(piped.stderr).toBe("");
    expect(piped.stdout).not.toMatch(/[▁▂▃▄▅▆▇█░\x1b]/);
    expect(piped.stdout.trim().split("\n").slice(-2)).toEqual([
      expect.stringMatching(/^done: 36 steps, loss /),
      `report: ${out}/report.html`,
    ]);
  });

  it("finetune never draws an unfilled field and prints its lines above the bar", async () => {
    const tiny = writeTinyLlama(join(dir, "base.gguf"), {
      dim: 32,
      layers: 1,
      heads: 2,
      kvHeads: 2,
      ffn: 64,
      contextLength: 256,
      weightScale: 0.05,
    });
    const data = writeTinyAlpaca(join(dir, "alpaca.jsonl"));
    const out = join(dir, "finetune");
    const r = await runCliOnTerminal([
      ...["finetune", "--base", tiny.path, "--data", data, "--template", "alpaca", "--targets", "q,v"],
      ...["--steps", "6", "--batch", "1", "--seq", "256", "--threads", "1", "--eval-every", "2"],
      ...["--val-fraction", "0.1", "--out", out],
    ]);
    expect(r.status, r.output).toBe(0);
    expectNothingUnfilled(r.output);
    const lines = screenLines(r.output);
    const evals = lines.filter((l) => l.startsWith("step "));
    expect(evals, lines.join("\n")).toHaveLength(3);
    for (const l of evals) expect(l).toMatch(/^step (2|4|6): validation loss \d+\.\d{4}$/);
    const bar = lines.filter((l) => l.startsWith("finetune ["));
    expect(bar).toHaveLength(1);
    expect(bar[0]).toMatch(
      /^finetune \[█+\] 6\/6 steps \| [\d.]+\/s \| ETA 0s \| loss \d+\.\d{3} [▁▂▃▄▅▆▇█]{6} \| \d+ tok\/s$/,
    );
    expect(lines.at(-3)).toMatch(/^done: 6 steps, loss \d+\.\d{4}, validation loss \d+\.\d{4}$/);
    expect(lines.at(-2)).toBe(`wrote ${out}/adapter.gguf (llama.cpp LoRA) and ${out}/peft/ (PEFT)`);
    expect(lines.at(-1)).toBe(`report: ${out}/report.html`);
  });

  it("data self-instruct shows no ETA until one can be estimated, and its summary on its own line", async () => {
    let next = 0;
    // Slow replies, so the bar is drawn a few times before the first task is kept.
    const server = await teacherWith(() => ({
      delayMs: 150,
      text: numberedReply(Array.from({ length: 2 }, () => distinctTask(next++))),
    }));
    const out = join(dir, "tasks.jsonl");
    const r = await runCliOnTerminal([
      ...["data", "self-instruct", "--teacher", server.url, "--model", "m", "--num", "6"],
      ...["--concurrency", "1", "--out", out],
    ]);
    expect(r.status, r.output).toBe(0);
    expectNothingUnfilled(r.output);
    const text = withoutEscapes(r.output);
    // before anything is kept: a rate of zero and no ETA
    expect(text).toMatch(/self-instruct \[░+\] 0\/6 kept \| 0\.0\/s(?! \| ETA)/);
    const lines = screenLines(r.output);
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^self-instruct \[█+\] 6\/6 kept \| [\d.]+\/s \| ETA 0s \| rejected \d+ /);
    expect(lines[1]).toMatch(new RegExp(`^${out}: 6/6 tasks \\(6 new\\); `));
  });
});

function startCli(args: string[]): { child: ChildProcess; done: Promise<CliResult> } {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d) => {
    stdout += d;
  });
  child.stderr!.on("data", (d) => {
    stderr += d;
  });
  const done = new Promise<CliResult>((resolve) =>
    child.on("close", (status, signal) => resolve({ status, signal, stdout, stderr })),
  );
  return { child, done };
}

const keptLines = (path: string) =>
  existsSync(path)
    ? readFileSync(path, "utf8")
        .split("\n")
        .filter((l) => l !== "").length
    : 0;

describe("data self-instruct stopped by a signal", () => {
  for (const [signal, status] of [
    ["SIGINT", 130],
    ["SIGTERM", 143],
  ] as const) {
    it(`${signal}: saves its state and exits ${status}`, async () => {
      let next = 1000;
      const server = await teacherWith(() => ({
        delayMs: 40,
        text: numberedReply(Array.from({ length: 2 }, () => distinctTask(next++))),
      }));
      const out = join(dir, `${signal}.jsonl`);
      const run = startCli([
        ...["data", "self-instruct", "--teacher", server.url, "--model", "m", "--num", "500"],
        ...["--out", out, "--json"],
      ]);
      while (keptLines(out) < 4) await new Promise((r) => setTimeout(r, 20));
      run.child.kill(signal);
      const r = await run.done;
      expect(r.signal).toBe(null);
      expect(r.status).toBe(status);
      expect(r.stderr).toBe("smallhammer: stopped; run the same command again to resume\n");
      const summary = JSON.parse(r.stdout);
      expect(summary).toMatchObject({ stopped: true, kept: keptLines(out) });
      const state = JSON.parse(readFileSync(statePath(out), "utf8"));
      expect(state.kept).toBe(summary.kept);
      expect(state.outBytes).toBe(readFileSync(out).length);
    });
  }
});
