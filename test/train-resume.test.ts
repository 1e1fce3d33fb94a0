/**
 * Exact resume across real process deaths: a pretraining process killed with SIGKILL mid-run and
 * then resumed gives the same losses, bit for bit, at every later step as an uninterrupted run; a
 * process killed while it writes a checkpoint leaves the previous checkpoint, whole and loadable,
 * and resuming from it reproduces the steps the killed process had done.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readCheckpoint, restoreCheckpoint } from "../src/train/checkpoint.js";
import { LlamaTrainModel } from "../src/train/model.js";
import type { PretrainSettings } from "../src/train/pretrain.js";
import { ensureBuilt, ROOT } from "./helpers/cli.js";
import { spmDescription, spmTokenizer, writeVocabGguf } from "./helpers/shakespeare-vocab.js";

const CHILD = join(ROOT, "test", "helpers", "pretrain-child.mjs");
let dir: string;
let idsPath: string;
let tokenizerPath: string;

beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-resume-"));
  tokenizerPath = join(dir, "tokenizer.gguf");
  writeVocabGguf(tokenizerPath, spmDescription());
  const text = readFileSync(join(ROOT, "..", "shared", "data", "tinyshakespeare.txt"), "utf8").slice(
    0,
    200_000,
  );
  const ids = Int32Array.from(spmTokenizer().encode(text));
  idsPath = join(dir, "ids.bin");
  writeFileSync(idsPath, new Uint8Array(ids.buffer));
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

function startChild(run: string, settings: PretrainSettings | undefined, resume = false): ChildProcess {
  const settingsPath = join(dir, `${run.split("/").pop()}-settings.json`);
  if (settings) writeFileSync(settingsPath, JSON.stringify(settings));
  const args = [CHILD, idsPath, tokenizerPath, run, settingsPath, ...(resume ? ["resume"] : [])];
  return spawn(process.execPath, args, { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"] });
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

async function runToEnd(run: string, settings?: PretrainSettings, resume = false) {
  const r = await exited(startChild(run, settings, resume));
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

const small: PretrainSettings = {
  shape: { dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 128, contextLength: 64 },
  steps: 100,
  batch: 8,
  seq: 32,
  lr: 2e-3,
  warmupSteps: 10,
  evalEvery: 20,
  evalBatches: 2,
  sampleEvery: 30,
  sampleTokens: 8,
  checkpointEvery: 15,
  seed: 9,
};

describe("resume after SIGKILL", () => {
  it("gives the uninterrupted run's losses at every step", async () => {
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
    await runToEnd(killed, undefined, true);
    expect(metrics(killed)).toEqual(want);
    expect(readFileSync(join(killed, "samples.jsonl"), "utf8")).toBe(
      readFileSync(join(whole, "samples.jsonl"), "utf8"),
    );
  });
});

describe("a kill during a checkpoint write", () => {
  it("leaves the previous checkpoint whole, and resuming from it repeats the killed steps exactly", async () => {
    // ~4.5M parameters: each checkpoint is ~55 MB, written after every step
    const big: PretrainSettings = {
      ...small,
      shape: { dim: 256, layers: 4, heads: 8, kvHeads: 4, ffn: 1024, contextLength: 64 },
      steps: 40,
      batch: 2,
      checkpointEvery: 1,
      evalEvery: 0,
      sampleEvery: 0,
    };
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

    await runToEnd(run, undefined, true);
    const after = metrics(run);
    expect(after.map((l) => l.step)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
    expect(after.slice(0, before.length)).toEqual(before);
    expect(readdirSync(run).filter((f) => f.includes(".tmp-"))).toEqual([]);
  });
});
