/**
 * Exact resume across real process deaths: `smallhammer pretrain` killed with SIGKILL mid-run and
 * then resumed with --resume gives the same losses, bit for bit, at every later step as an
 * uninterrupted run; killed while it writes a checkpoint, it leaves the previous checkpoint whole
 * and loadable, and resuming from it reproduces the steps the killed process had done.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readCheckpoint, restoreCheckpoint } from "../src/train/checkpoint.js";
import { LlamaTrainModel } from "../src/train/model.js";
import { CLI, ensureBuilt, ROOT, runCli } from "./helpers/cli.js";

let dir: string;
let cache: string;

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-resume-"));
  const corpus = join(dir, "corpus.txt");
  const text = readFileSync(join(ROOT, "test", "fixtures", "tinyshakespeare.txt"), "utf8");
  writeFileSync(corpus, text.slice(0, 200_000));
  const tokenizer = join(dir, "tokenizer.gguf");
  cache = join(dir, "cache");
  for (const args of [
    ["tokenizer", "train", corpus, "--vocab-size", "512", "--out", tokenizer],
    ["data", "tokenize", corpus, "--tokenizer", tokenizer, "--out", cache, "--val-fraction", "0.1"],
  ]) {
    const r = await runCli(args);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
  }
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface Line {
  step: number;
  loss: number;
  lr: number;
  grad_norm: number;
  tokens: number;
  val_loss?: number;
}

/**
 * Metrics lines without their timings (the only fields that may differ between runs); a last
 * line that a kill cut short is left out.
 */
function metrics(run: string): Line[] {
  if (!existsSync(join(run, "metrics.jsonl"))) return [];
  const lines = readFileSync(join(run, "metrics.jsonl"), "utf8").split("\n");
  return lines.slice(0, -1).map((l) => {
    const { step, loss, lr, grad_norm, tokens, val_loss } = JSON.parse(l) as Line;
    return { step, loss, lr, grad_norm, tokens, ...(val_loss === undefined ? {} : { val_loss }) };
  });
}

/** `smallhammer pretrain` with these flags (a new run), or `--resume run`, as a child process. */
function startChild(run: string, flags: string[] | undefined): ChildProcess {
  const args = flags ? ["--data", cache, "--out", run, ...flags] : ["--resume", run];
  return spawn(process.execPath, [CLI, "pretrain", ...args, "--threads", "2"], {
    cwd: ROOT,
    stdio: ["ignore", "ignore", "pipe"],
  });
}

function exited(
  child: ChildProcess,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  let stderr = "";
  child.stderr?.on("data", (d) => {
    stderr += d;
  });
  return new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal, stderr })));
}

async function runToEnd(run: string, flags?: string[]) {
  const r = await exited(startChild(run, flags));
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
}

/** Polls every few milliseconds until `ready` holds, then kills the child with SIGKILL. */
async function killWhen(child: ChildProcess, ready: () => boolean): Promise<void> {
  const done = exited(child);
  let finished = false;
  void done.then(() => {
    finished = true;
  });
  while (!finished && !ready()) await new Promise((r) => setTimeout(r, 2));
  expect(finished, "the run ended before it could be killed").toBe(false);
  child.kill("SIGKILL");
  expect((await done).signal).toBe("SIGKILL");
}

/** A model file and the flags of a run. */
function runFlags(name: string, shape: object, flags: string[]): string[] {
  const model = join(dir, `${name}.json`);
  writeFileSync(model, JSON.stringify(shape));
  return ["--model", model, "--lr", "2e-3", "--warmup", "10", "--seed", "9", ...flags];
}

describe("resume after SIGKILL", () => {
  it("gives the uninterrupted run's losses at every step", async () => {
    const small = runFlags(
      "small",
      { dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 128, contextLength: 64 },
      [
        ...["--steps", "100", "--batch", "8", "--seq", "32", "--eval-every", "20", "--eval-batches", "2"],
        ...["--sample-every", "30", "--sample-tokens", "8", "--checkpoint-every", "15"],
      ],
    );
    const whole = join(dir, "whole");
    await runToEnd(whole, small);
    const want = metrics(whole);
    expect(want).toHaveLength(100);

    const killed = join(dir, "killed");
    // past the checkpoint of step 30, some steps before the next one
    await killWhen(startChild(killed, small), () => metrics(killed).length >= 36);
    const before = metrics(killed);
    const at = readCheckpoint(join(killed, "checkpoint.gguf")).info.trainer.step;
    expect(before.length).toBeGreaterThan(at);
    expect(before).toEqual(want.slice(0, before.length));
    await runToEnd(killed);
    expect(metrics(killed)).toEqual(want);
    expect(readFileSync(join(killed, "samples.jsonl"), "utf8")).toBe(
      readFileSync(join(whole, "samples.jsonl"), "utf8"),
    );
  });
});

describe("a kill during a checkpoint write", () => {
  it("leaves the previous checkpoint whole, and resuming from it repeats the killed steps exactly", async () => {
    // ~4.5M parameters: each checkpoint is ~55 MB, written after every step
    const big = runFlags("big", { dim: 256, layers: 4, heads: 8, kvHeads: 4, ffn: 1024, contextLength: 64 }, [
      ...["--steps", "40", "--batch", "2", "--seq", "32", "--checkpoint-every", "1", "--eval-every", "0"],
    ]);
    const run = join(dir, "killed-writing");
    const writing = () =>
      existsSync(join(run, "checkpoint.gguf")) &&
      readdirSync(run).some((f) => f.startsWith("checkpoint.gguf.tmp-"));
    await killWhen(startChild(run, big), writing);
    const before = metrics(run);
    expect(readdirSync(run).some((f) => f.startsWith("checkpoint.gguf.tmp-"))).toBe(true);

    // the checkpoint left behind is the last complete one and loads, checksum and all
    const { header, info } = readCheckpoint(join(run, "checkpoint.gguf"));
    const step = info.trainer.step;
    expect(before.length).toBeGreaterThanOrEqual(step + 1);
    const model = await LlamaTrainModel.create(info.config, { batch: info.batch, seq: info.seq, threads: 1 });
    try {
      restoreCheckpoint(join(run, "checkpoint.gguf"), header, model);
    } finally {
      await model.dispose();
    }

    await runToEnd(run);
    const after = metrics(run);
    expect(after.map((l) => l.step)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
    expect(after.slice(0, before.length)).toEqual(before);
    expect(readdirSync(run).filter((f) => f.includes(".tmp-"))).toEqual([]);
  });
});
