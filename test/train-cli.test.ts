// The training commands as a user runs them: `node dist/cli/main.js ...` as child processes, on
// a token cache made by `tokenizer train` and `data tokenize` from part of tinyshakespeare.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufHeader } from "../src/formats/gguf.js";
import { readCheckpoint } from "../src/train/checkpoint.js";
import { CLI, ensureBuilt, ROOT, runCli } from "./helpers/cli.js";

let dir: string;
let cache: string;
let model: string;

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-train-cli-"));
  const corpus = join(dir, "corpus.txt");
  const text = readFileSync(join(ROOT, "..", "shared", "data", "tinyshakespeare.txt"), "utf8");
  writeFileSync(corpus, text.slice(0, 100_000));
  const tokenizer = join(dir, "tokenizer.gguf");
  cache = join(dir, "cache");
  expectOk(await runCli(["tokenizer", "train", corpus, "--vocab-size", "400", "--out", tokenizer]));
  expectOk(
    await runCli([
      "data",
      "tokenize",
      corpus,
      "--tokenizer",
      tokenizer,
      "--out",
      cache,
      "--val-fraction",
      "0.1",
    ]),
  );
  model = join(dir, "model.json");
  writeFileSync(
    model,
    JSON.stringify({ dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 128, contextLength: 64 }),
  );
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function expectOk(r: { status: number | null; stderr: string }) {
  expect(r.stderr).toBe("");
  expect(r.status).toBe(0);
}

/** Exit 2 with exactly one line on stderr that starts "smallhammer:" and contains `mention`. */
function expectUserError(r: { status: number | null; stderr: string }, mention: string) {
  expect(r.status).toBe(2);
  const lines = r.stderr.replace(/\n$/, "").split("\n");
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^smallhammer: /);
  expect(lines[0]).toContain(mention);
}

const common = ["--batch", "4", "--seq", "32", "--lr", "3e-3", "--threads", "2"];

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
    expect(lines.at(-1)).toMatch(
      new RegExp(`^done: 12 steps, loss [\\d.]+, validation loss [\\d.]+; saved ${out}/checkpoint.gguf$`),
    );
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
    expect(await exited).toBe(0);
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
    expect(await done).toBe(0);
    const summary = JSON.parse(json) as { steps: number; step: number; interrupted: boolean };
    expect(summary).toMatchObject({ steps: 2000, interrupted: true });
    expect(summary.step).toBeGreaterThan(step);
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
