// The training commands as a user runs them: `node dist/cli/main.js ...` as child processes, on
// a token cache made by `tokenizer train` and `data tokenize` from part of tinyshakespeare.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufHeader } from "../src/formats/gguf.js";
import { readCheckpoint } from "../src/train/checkpoint.js";
import { learningRate } from "../src/train/optimizer.js";
import { CLI, ensureBuilt, expectOk, expectUserError, ROOT, runCli } from "./helpers/cli.js";
import { makeShakespeareCache } from "./helpers/train-setup.js";

let dir: string;
let cache: string;
let model: string;

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-train-cli-"));
  ({ cache } = await makeShakespeareCache(dir, 100_000));
  model = join(dir, "model.json");
  writeFileSync(
    model,
    JSON.stringify({ dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 128, contextLength: 64 }),
  );
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const common = ["--batch", "4", "--seq", "32", "--lr", "3e-3", "--threads", "2"];

/**
 * Each file's bytes (as a hash) and identity (inode and modification time), so that a file
 * rewritten with the same bytes shows as changed too.
 */
function snapshot(run: string, files: string[]) {
  return files.map((f) => {
    const path = join(run, f);
    const { ino, mtimeMs } = statSync(path);
    return { f, sha256: createHash("sha256").update(readFileSync(path)).digest("hex"), ino, mtimeMs };
  });
}

function metricLines(run: string): { step: number; lr: number }[] {
  return readFileSync(join(run, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
}

describe("pretrain", () => {
  it("prints the model and its memory first, then validation losses, samples and a summary", async () => {
    const out = join(dir, "run");
    const r = await runCli([
      ...["pretrain", "--model", model, "--data", cache, "--out", out, "--steps", "12", ...common],
      ...["--eval-every", "6", "--eval-batches", "2", "--sample-every", "12", "--sample-tokens", "6"],
    ]);
    expectOk(r);
    const lines = r.stdout.trim().split("\n");
    expect(lines[0]).toMatch(
      /^model: 0\.\d\dM parameters \(dim 64, 2 layers, 4 heads, 2 kv heads, ffn 128, vocab 400, context 64\)$/,
    );
    expect(lines[1]).toMatch(
      /^memory: [\d.]+ MiB \(weights [\d.]+, gradients [\d.]+, optimizer [\d.]+, activations [\d.]+, scratch [\d.]+\)$/,
    );
    expect(lines[2]).toBe("training: steps 1 to 12 on 2 threads");
    expect(lines.filter((l) => /^step (6|12): validation loss \d+\.\d{4}$/.test(l))).toHaveLength(2);
    expect(lines.some((l) => l.startsWith("step 12 sample: "))).toBe(true);
    expect(lines.at(-2)).toMatch(
      new RegExp(`^done: 12 steps, loss [\\d.]+, validation loss [\\d.]+; saved ${out}/checkpoint.gguf$`),
    );
    expect(lines.at(-1)).toBe(`report: ${out}/report.html`);
    for (const f of ["config.json", "metrics.jsonl", "samples.jsonl", "checkpoint.gguf"]) {
      expect(existsSync(join(out, f)), f).toBe(true);
    }
  });

  it("Ctrl-C saves a checkpoint and says how to continue; --resume goes on from it", async () => {
    const out = join(dir, "interrupted");
    const child = spawn(
      process.execPath,
      [CLI, "pretrain", "--model", model, "--data", cache, "--out", out, "--steps", "2000", ...common],
      { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
    );
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      stdout += d;
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    const metrics = join(out, "metrics.jsonl");
    while (!(existsSync(metrics) && readFileSync(metrics, "utf8").split("\n").length > 5)) {
      await new Promise((r) => setTimeout(r, 10));
    }
    child.kill("SIGINT");
    // 128 + SIGINT, as shells report an interrupted command
    expect(await exited).toBe(130);
    expect(stderr).toBe("");
    const step = Number(/interrupted after step (\d+) of 2000: saved /.exec(stdout)?.[1]);
    expect(step).toBeGreaterThanOrEqual(5);
    expect(step).toBeLessThan(2000);
    expect(stdout).toContain(`continue with: smallhammer pretrain --resume ${out}`);
    expect(readCheckpoint(join(out, "checkpoint.gguf")).info.trainer.step).toBe(step);

    expectUserError(
      await runCli(["pretrain", "--resume", out, "--lr", "0.1"]),
      "--resume continues a run with its own settings; drop --lr",
    );
    // a run of 2000 steps resumed for a few: interrupt it again right away through --json
    const again = spawn(process.execPath, [CLI, "pretrain", "--resume", out, "--json"], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let json = "";
    again.stdout.on("data", (d) => {
      json += d;
    });
    const done = new Promise<number | null>((resolve) => again.on("exit", (code) => resolve(code)));
    while (!(readFileSync(metrics, "utf8").split("\n").length > step + 5)) {
      await new Promise((r) => setTimeout(r, 10));
    }
    again.kill("SIGINT");
    expect(await done).toBe(130);
    const summary = JSON.parse(json) as { steps: number; step: number; interrupted: boolean };
    expect(summary).toMatchObject({ steps: 2000, interrupted: true });
    expect(summary.step).toBeGreaterThan(step);
  });

  it("SIGTERM saves a checkpoint like Ctrl-C and exits 143", async () => {
    const out = join(dir, "terminated");
    const child = spawn(
      process.execPath,
      [CLI, "pretrain", "--model", model, "--data", cache, "--out", out, "--steps", "2000", ...common],
      { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
    );
    let stdout = "";
    child.stdout.on("data", (d) => {
      stdout += d;
    });
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    const metrics = join(out, "metrics.jsonl");
    while (!(existsSync(metrics) && readFileSync(metrics, "utf8").split("\n").length > 3)) {
      await new Promise((r) => setTimeout(r, 10));
    }
    child.kill("SIGTERM");
    expect(await exited).toBe(143);
    const step = Number(/interrupted after step (\d+) of 2000: saved /.exec(stdout)?.[1]);
    expect(step).toBeGreaterThanOrEqual(3);
    expect(readCheckpoint(join(out, "checkpoint.gguf")).info.trainer.step).toBe(step);
  });

  it("a finished run resumed with nothing to do says so and changes no file; --steps extends it", async () => {
    const out = join(dir, "finished");
    expectOk(
      await runCli([
        ...["pretrain", "--model", model, "--data", cache, "--out", out, "--steps", "6", ...common],
        ...["--eval-every", "3", "--eval-batches", "1", "--sample-every", "6", "--sample-tokens", "4"],
      ]),
    );
    const files = ["checkpoint.gguf", "metrics.jsonl", "samples.jsonl", "config.json"];
    const before = snapshot(out, files);
    const finished = `${out} is finished: 6 of 6 steps; pass --steps N above 6 to extend it\n`;
    for (const extra of [[], ["--steps", "6"], ["--tokens", String(6 * 4 * 32)]]) {
      const r = await runCli(["pretrain", "--resume", out, ...extra]);
      expectOk(r);
      expect(r.stdout, extra.join(" ")).toBe(finished);
      expect(snapshot(out, files)).toEqual(before);
    }
    const json = await runCli(["pretrain", "--resume", out, "--json"]);
    expectOk(json);
    expect(JSON.parse(json.stdout)).toMatchObject({ steps: 6, step: 6, ranSteps: 0, alreadyDone: true });
    expectUserError(
      await runCli(["pretrain", "--resume", out, "--steps", "4"]),
      `--steps 4: ${out} has already done 6 steps; give more to extend it`,
    );
    expectUserError(
      await runCli(["pretrain", "--resume", out, "--steps", "8", "--tokens", "9000"]),
      "give --steps or --tokens, not both",
    );
    expect(snapshot(out, files)).toEqual(before);

    const metricsBefore = readFileSync(join(out, "metrics.jsonl"), "utf8");
    const extended = await runCli(["pretrain", "--resume", out, "--steps", "10", "--threads", "2"]);
    expectOk(extended);
    const lines = extended.stdout.trim().split("\n");
    expect(lines).toContain("training: steps 7 to 10 on 2 threads");
    expect(lines.at(-2)).toMatch(/^done: 10 steps, loss \d+\.\d{4}, validation loss \d+\.\d{4}; saved /);
    // the first six steps stay as they were; four more follow from the checkpoint
    expect(readFileSync(join(out, "metrics.jsonl"), "utf8").startsWith(metricsBefore)).toBe(true);
    const metrics = metricLines(out);
    expect(metrics.map((m) => m.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const { info } = readCheckpoint(join(out, "checkpoint.gguf"));
    expect(info.trainer.step).toBe(10);
    expect(info.optimizer.totalSteps).toBe(10);
    // the cosine is recomputed for ten steps: up again from its end at step 6, down to the minimum at 10
    for (const m of metrics.slice(6)) expect(m.lr).toBe(learningRate(info.optimizer, m.step - 1));
    expect(metrics[6]!.lr).toBeGreaterThan(metrics[5]!.lr);
    expect(metrics[9]!.lr).toBeCloseTo(info.optimizer.minLr, 12);
    const config = JSON.parse(readFileSync(join(out, "config.json"), "utf8"));
    expect(config.settings.steps).toBe(10);

    // --tokens extends too, in the run's own tokens per step
    const byTokens = await runCli(["pretrain", "--resume", out, "--tokens", String(12 * 4 * 32)]);
    expectOk(byTokens);
    expect(byTokens.stdout).toContain("training: steps 11 to 12 on ");
    expect(readCheckpoint(join(out, "checkpoint.gguf")).info.trainer.step).toBe(12);
    const again = await runCli(["pretrain", "--resume", out]);
    expectOk(again);
    expect(again.stdout).toBe(`${out} is finished: 12 of 12 steps; pass --steps N above 12 to extend it\n`);
  });

  it("refuses bad flags and a model that does not fit, with one line", async () => {
    const out = join(dir, "refused");
    expectUserError(
      await runCli(["pretrain", "--model", "huge", "--data", cache, "--out", out, "--steps", "1"]),
      "--model huge: not a preset (tiny, small, 15m, 42m, 110m)",
    );
    expectUserError(
      await runCli(["pretrain", "--model", "tiny", "--data", cache, "--out", out]),
      "give --steps or --tokens",
    );
    expectUserError(
      await runCli(["pretrain", "--model", "tiny", "--out", out, "--steps", "1"]),
      "--data is required",
    );
    expectUserError(
      await runCli(["pretrain", "--model", "tiny", "--data", dir, "--out", out, "--steps", "1"]),
      "not a usable token cache",
    );
    expectUserError(
      await runCli(["pretrain", "--resume", join(dir, "nothing")]),
      "no checkpoint.gguf to resume from",
    );
    const huge = await runCli([
      ...["pretrain", "--model", "110m", "--data", cache, "--out", out, "--steps", "1"],
      ...["--batch", "64", "--seq", "1024"],
    ]);
    expectUserError(huge, "more than one WebAssembly memory holds");
    expect(huge.stderr).toMatch(/needs [\d.]+ GiB \(weights/);
    expect(huge.stdout).toMatch(/^model: 8\d\.\d\dM parameters/);
    expect(existsSync(out)).toBe(false);
  });
});

describe("export", () => {
  it("writes a q8_0 model that generate runs, and says what it wrote", async () => {
    const run = join(dir, "run");
    const out = join(dir, "model.gguf");
    const r = await runCli(["export", run, "--out", out, "--type", "q8_0", "--json"]);
    expectOk(r);
    expect(JSON.parse(r.stdout)).toMatchObject({ out, type: "q8_0", step: 12, tensors: 21 });
    const h = readGgufHeader(out);
    expect(h.getNumber("general.file_type")).toBe(7);
    expect(h.tensor("blk.0.attn_q.weight")!.type).toBe(8);
    const g = await runCli([
      "generate",
      "-m",
      out,
      "-p",
      "ROMEO:",
      "-n",
      "8",
      "--temp",
      "0",
      "-t",
      "1",
      "--json",
    ]);
    expect(g.stderr).toBe("");
    expect(JSON.parse(g.stdout)).toMatchObject({ completionTokens: 8 });
  });

  it("refuses what is not a training run with one line", async () => {
    const run = join(dir, "run");
    expectUserError(
      await runCli(["export", join(dir, "nowhere"), "--out", join(dir, "x.gguf")]),
      "no checkpoint.gguf",
    );
    expectUserError(
      await runCli(["export", join(dir, "tokenizer.gguf"), "--out", join(dir, "x.gguf")]),
      "not a smallhammer training checkpoint",
    );
    expectUserError(await runCli(["export", run, "--out", join(dir, "x.gguf"), "--type", "q9"]), "--type q9");
    expectUserError(
      await runCli(["export", run, "--out", join(run, "checkpoint.gguf")]),
      "would overwrite the checkpoint",
    );
  });
});
