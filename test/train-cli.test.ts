// The training commands as a user runs them: `export` through `node dist/cli/main.js ...` as a
// child process; `pretrain` in this process, through its command registration, with token data
// held in memory behind the same interface a token cache gives it.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerPretrain } from "../src/cli/pretrain.js";
import { isUserError } from "../src/errors.js";
import { readGgufHeader } from "../src/formats/gguf.js";
import { readCheckpoint } from "../src/train/checkpoint.js";
import { TokenArray } from "../src/train/data.js";
import { type OpenedPretrainData, pretrain } from "../src/train/pretrain.js";
import { ensureBuilt, ROOT, runCli } from "./helpers/cli.js";
import { spmDescription, spmTokenizer, writeVocabGguf } from "./helpers/shakespeare-vocab.js";

let dir: string;
let run: string;
let tokenizerPath: string;
let ids: Int32Array;

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-train-cli-"));
  tokenizerPath = join(dir, "tokenizer.gguf");
  writeVocabGguf(tokenizerPath, spmDescription());
  const text = readFileSync(join(ROOT, "..", "shared", "data", "tinyshakespeare.txt"), "utf8").slice(
    0,
    50_000,
  );
  ids = Int32Array.from(spmTokenizer().encode(text));
  run = join(dir, "run");
  await pretrain(
    {
      shape: { dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 128, contextLength: 64 },
      steps: 30,
      batch: 8,
      seq: 32,
      lr: 3e-3,
    },
    { source: dir, train: new TokenArray(ids), tokenizerPath },
    run,
    { threads: 2 },
  );
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function expectUserError(r: { status: number | null; stderr: string }, mention: string) {
  expect(r.status).toBe(2);
  const lines = r.stderr.replace(/\n$/, "").split("\n");
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^smallhammer: /);
  expect(lines[0]).toContain(mention);
}

describe("export", () => {
  it("writes a q8_0 model that generate runs, and says what it wrote", () => {
    const out = join(dir, "model.gguf");
    const r = runCli(["export", run, "--out", out, "--type", "q8_0", "--json"]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ out, type: "q8_0", step: 30, tensors: 21 });
    const h = readGgufHeader(out);
    expect(h.getNumber("general.file_type")).toBe(7);
    expect(h.tensor("blk.0.attn_q.weight")!.type).toBe(8);
    const g = runCli(["generate", "-m", out, "-p", "ROMEO:", "-n", "8", "--temp", "0", "-t", "1", "--json"]);
    expect(g.stderr).toBe("");
    expect(JSON.parse(g.stdout)).toMatchObject({ completionTokens: 8 });
  });

  it("refuses what is not a training run with one line", () => {
    expectUserError(
      runCli(["export", join(dir, "nowhere"), "--out", join(dir, "x.gguf")]),
      "no checkpoint.gguf",
    );
    expectUserError(
      runCli(["export", join(dir, "tokenizer.gguf"), "--out", join(dir, "x.gguf")]),
      "not a smallhammer training checkpoint",
    );
    expectUserError(runCli(["export", run, "--out", join(dir, "x.gguf"), "--type", "q9"]), "--type q9");
    expectUserError(
      runCli(["export", run, "--out", join(run, "checkpoint.gguf")]),
      "would overwrite the checkpoint",
    );
  });
});

/** Runs `smallhammer pretrain ARGS` in this process; returns what it printed, or the error it threw. */
async function pretrainCli(args: string[], during?: () => void): Promise<{ stdout: string; error?: Error }> {
  const program = new Command("smallhammer").exitOverride().configureOutput({ outputError: () => {} });
  const opened: string[] = [];
  registerPretrain(program, async (source) => {
    opened.push(source);
    const cut = Math.floor(ids.length * 0.9);
    const data: OpenedPretrainData = {
      source,
      train: new TokenArray(ids.subarray(0, cut)),
      val: new TokenArray(ids.subarray(cut)),
      tokenizerPath,
      vocab: spmTokenizer().vocabSize,
      close: () => {},
    };
    return data;
  });
  let stdout = "";
  const write = process.stdout.write;
  process.stdout.write = ((chunk: string) => {
    stdout += chunk;
    return true;
  }) as typeof process.stdout.write;
  const timer = during ? setTimeout(during, 200) : undefined;
  try {
    await program.parseAsync(["node", "smallhammer", "pretrain", ...args]);
    return { stdout };
  } catch (e) {
    return { stdout, error: e as Error };
  } finally {
    clearTimeout(timer);
    process.stdout.write = write;
  }
}

describe("pretrain", () => {
  const common = ["--batch", "4", "--seq", "32", "--lr", "3e-3", "--threads", "2"];

  it("prints the model and its memory first, then validation losses, samples and a summary", async () => {
    const config = join(dir, "model.json");
    writeFileSync(
      config,
      JSON.stringify({ dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 128, contextLength: 64 }),
    );
    const out = join(dir, "cli-run");
    const r = await pretrainCli([
      "--model",
      config,
      "--data",
      dir,
      "--out",
      out,
      "--steps",
      "12",
      ...common,
      "--eval-every",
      "6",
      "--eval-batches",
      "2",
      "--sample-every",
      "12",
      "--sample-tokens",
      "6",
    ]);
    expect(r.error).toBeUndefined();
    const lines = r.stdout.trim().split("\n");
    expect(lines[0]).toMatch(
      /^model: 0\.\d\dM parameters \(dim 64, 2 layers, 4 heads, 2 kv heads, ffn 128, vocab 624, context 64\)$/,
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
  });

  it("Ctrl-C saves a checkpoint and says how to continue; --resume finishes the run", async () => {
    const out = join(dir, "cli-interrupted");
    const first = await pretrainCli(
      ["--model", join(dir, "model.json"), "--data", dir, "--out", out, "--steps", "60", ...common],
      () => process.emit("SIGINT"),
    );
    expect(first.error).toBeUndefined();
    const step = Number(/interrupted after step (\d+) of 60: saved /.exec(first.stdout)?.[1]);
    expect(step).toBeGreaterThanOrEqual(0);
    expect(step).toBeLessThan(60);
    expect(first.stdout).toContain(`continue with: smallhammer pretrain --resume ${out}`);
    expect(readCheckpoint(join(out, "checkpoint.gguf")).info.trainer.step).toBe(step);
    const refused = await pretrainCli(["--resume", out, "--lr", "0.1"]);
    expect(isUserError(refused.error)).toBe(true);
    expect(refused.error!.message).toBe("--resume continues a run with its own settings; drop --lr");
    const second = await pretrainCli(["--resume", out, "--json"]);
    expect(second.error).toBeUndefined();
    expect(JSON.parse(second.stdout)).toMatchObject({
      steps: 60,
      step: 60,
      ranSteps: 60 - step,
      interrupted: false,
    });
  });

  it("refuses bad flags and a model that does not fit, with one clear message", async () => {
    const bad = async (args: string[], message: RegExp) => {
      const r = await pretrainCli(args);
      expect(isUserError(r.error), String(r.error)).toBe(true);
      expect(r.error!.message).toMatch(message);
    };
    await bad(
      ["--model", "huge", "--data", dir, "--out", join(dir, "x"), "--steps", "1"],
      /--model huge: not a preset \(tiny, small, 15m, 42m, 110m\)/,
    );
    await bad(["--model", "tiny", "--data", dir, "--out", join(dir, "x")], /give --steps or --tokens/);
    await bad(["--model", "tiny", "--out", join(dir, "x"), "--steps", "1"], /--data is required/);
    await bad(
      [
        "--model",
        "110m",
        "--data",
        dir,
        "--out",
        join(dir, "x"),
        "--steps",
        "1",
        "--batch",
        "64",
        "--seq",
        "1024",
      ],
      /needs [\d.]+ GiB .*more than one WebAssembly memory/,
    );
  });
});
