/**
 * Fine-tuning runs end to end on a tiny random Llama and a small Alpaca dataset made here: the loss
 * goes down; the adapter llama.cpp loads gives the same greedy text as our run-time adapter and as
 * the merged model; the PEFT directory holds the same adapter; an interrupted run resumes to the
 * same losses and the same adapter bytes; QLoRA trains from a quantized base; a full fine-tune
 * writes a model `generate` runs; bad input through the command line is one line and exit 2.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, type Llama } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { tokenizeRecord, tokenizeRecords } from "../src/data/chat-tokens.js";
import { RecordReader } from "../src/data/records.js";
import { readGgufHeader } from "../src/formats/gguf.js";
import { metadataGetter } from "../src/model/config.js";
import { mergeLora, readLoraGguf, readPeftAdapter } from "../src/model/lora.js";
import { loadModel } from "../src/model/model.js";
import { builtinTemplateSource } from "../src/model/templates.js";
import { Tokenizer } from "../src/tokenizer/index.js";
import { readCheckpoint } from "../src/train/checkpoint.js";
import {
  ExampleBatches,
  type FinetuneEvent,
  type FinetuneOptions,
  finetune,
  resumeFinetune,
} from "../src/train/finetune.js";
import { CLI, ensureBuilt, ROOT, runCli } from "./helpers/cli.js";
import { type TinyLlama, writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let llama: Llama;
let tiny: TinyLlama;
let data: string;

const SUBJECTS = ["the world", "hello", "a bird", "the sea", "is this", "wind and rain"];
const VERBS = ["say", "write", "spell", "repeat"];

/** Alpaca records over the tiny vocabulary: an instruction, sometimes an input, a short output. */
function alpacaRecords(): { instruction: string; input: string; output: string }[] {
  const records: { instruction: string; input: string; output: string }[] = [];
  for (const verb of VERBS) {
    for (const subject of SUBJECTS) {
      const withInput = records.length % 3 === 0;
      records.push({
        instruction: `${verb} ${withInput ? "the input" : subject}`,
        input: withInput ? subject : "",
        output: verb === "spell" ? subject.split("").join(" ") : `${subject}, ${subject}!`,
      });
    }
  }
  return records;
}

const common = (out: string): FinetuneOptions => ({
  base: tiny.path,
  data,
  template: "alpaca",
  method: "lora",
  rank: 8,
  alpha: 16,
  targets: "all",
  steps: 40,
  batch: 4,
  seq: 256,
  lr: 1e-2,
  warmupSteps: 2,
  valFraction: 0.1,
  evalEvery: 0,
  seed: 7,
  threads: 2,
  out,
});

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "sh-finetune-"));
  tiny = writeTinyLlama(join(dir, "base.gguf"), {
    dim: 64,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    ffn: 160,
    contextLength: 256,
    weightScale: 0.05,
  });
  data = join(dir, "alpaca.jsonl");
  writeFileSync(
    data,
    alpacaRecords()
      .map((r) => `${JSON.stringify(r)}\n`)
      .join(""),
  );
  llama = await getLlama({ gpu: false, build: "never", logLevel: "error" as never });
});
afterAll(async () => {
  await llama?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

function metricsOf(run: string): { step: number; loss: number }[] {
  return readFileSync(join(run, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
}

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

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** The last five steps' mean loss is at least one nat below the first three steps' (from ~5.9). */
function expectLearned(losses: number[]): void {
  expect(mean(losses.slice(-5))).toBeLessThan(mean(losses.slice(0, 3)) - 1);
}

async function llamaCppGreedy(path: string, prompt: number[], n: number, lora?: string): Promise<number[]> {
  const model = await llama.loadModel({ modelPath: path });
  try {
    const ctx = await model.createContext({
      contextSize: 256,
      threads: 2,
      experimentalKvCacheKeyType: "F32",
      experimentalKvCacheValueType: "F32",
      ...(lora ? { lora: { adapters: [{ filePath: lora }] } } : {}),
    });
    const out: number[] = [];
    for await (const t of ctx.getSequence().evaluate(prompt as never, { temperature: 0 })) {
      out.push(t as number);
      if (out.length >= n) break;
    }
    await ctx.dispose();
    return out;
  } finally {
    await model.dispose();
  }
}

async function ourGreedy(path: string, prompt: number[], n: number, lora?: string): Promise<number[]> {
  const model = await loadModel(path, {
    worker: false,
    threads: 2,
    contextSize: 256,
    lora: lora ? [{ adapter: lora }] : undefined,
  });
  try {
    const out: number[] = [];
    let logits = model.llama.forward(prompt, 0);
    for (let i = 0; i < n; i++) {
      let best = 0;
      for (let v = 1; v < logits.length; v++) if (logits[v]! > logits[best]!) best = v;
      out.push(best);
      logits = model.llama.forward([best], prompt.length + i);
    }
    return out;
  } finally {
    await model.dispose();
  }
}

describe("LoRA fine-tune", () => {
  const run = () => join(dir, "lora");
  let events: FinetuneEvent[];
  beforeAll(async () => {
    events = [];
    const summary = await finetune({ ...common(run()), onEvent: (e) => events.push(e) });
    expect(summary.interrupted).toBe(false);
    expect(summary.adapter).toBe(join(run(), "adapter.gguf"));
  });

  it("reports its data, trains only the adapters, and the loss goes down", () => {
    const d = events.find((e) => e.type === "data");
    expect(d).toMatchObject({ type: "data", train: 22, validation: 2, steps: 40 });
    const start = events.find((e) => e.type === "start");
    // rank 8 on all seven projections of two layers: 8·(in + out) each
    const perLayer = 8 * (64 + 64) * 2 + 8 * (64 + 32) * 2 + 8 * (64 + 160) * 3;
    expect(start).toMatchObject({ trainable: 2 * perLayer });
    const losses = metricsOf(run()).map((m) => m.loss);
    expect(losses).toHaveLength(40);
    expectLearned(losses);
    const config = JSON.parse(readFileSync(join(run(), "config.json"), "utf8"));
    expect(config).toMatchObject({ kind: "finetune", steps: 40, template: "alpaca" });
    expect(config.settings).toMatchObject({ method: "lora", rank: 8, alpha: 16 });
  });

  it("writes a PEFT directory holding the same adapter", () => {
    const adapter = readLoraGguf(join(run(), "adapter.gguf"));
    expect(adapter.alpha).toBe(16);
    expect(adapter.tensors).toHaveLength(14);
    const config = JSON.parse(readFileSync(join(run(), "peft", "adapter_config.json"), "utf8"));
    expect(config).toMatchObject({ peft_type: "LORA", r: 8, lora_alpha: 16, lora_dropout: 0.05 });
    expect(config.target_modules).toEqual([
      "down_proj",
      "gate_proj",
      "k_proj",
      "o_proj",
      "q_proj",
      "up_proj",
      "v_proj",
    ]);
    const peft = readPeftAdapter(join(run(), "peft"), tiny.heads, tiny.kvHeads);
    const byBase = new Map(peft.tensors.map((t) => [t.base, t]));
    for (const t of adapter.tensors) {
      expect(byBase.get(t.base)!.a).toEqual(t.a);
      expect(byBase.get(t.base)!.b).toEqual(t.b);
      expect(
        t.b.some((v) => v !== 0),
        `${t.base} B trained`,
      ).toBe(true);
    }
  });

  it("llama.cpp applies the adapter with our greedy continuation, and the merged model too", async () => {
    const header = readGgufHeader(tiny.path);
    const tokenizer = Tokenizer.fromGgufMetadata(metadataGetter(header));
    const record = alpacaRecords()[1]!;
    const example = tokenizeRecord(
      {
        kind: "chat",
        messages: [
          { role: "user", content: record.instruction },
          { role: "assistant", content: record.output },
        ],
        source: { file: "test", line: 1 },
      },
      { tokenizer, template: { name: "alpaca" } },
    );
    const prompt = Array.from(example.ids.subarray(0, example.lossMask.indexOf(1)));
    const adapter = join(run(), "adapter.gguf");
    const ours = await ourGreedy(tiny.path, prompt, 12, adapter);
    const base = await ourGreedy(tiny.path, prompt, 12);
    expect(ours).not.toEqual(base);
    expect(await llamaCppGreedy(tiny.path, prompt, 12, adapter)).toEqual(ours);
    const merged = join(dir, "merged.gguf");
    mergeLora(tiny.path, readLoraGguf(adapter), merged);
    expect(await llamaCppGreedy(merged, prompt, 12)).toEqual(ours);
  });
});

describe("loss masks from the data", () => {
  it("targets are the next token where the reply and its end are, and −1 everywhere else", async () => {
    const tokenizer = Tokenizer.fromGgufMetadata(metadataGetter(readGgufHeader(tiny.path)));
    const reader = await RecordReader.open(data);
    const examples = await tokenizeRecords(reader, { tokenizer, template: { name: "alpaca" } });
    const records = alpacaRecords();
    expect(examples).toHaveLength(records.length);
    examples.forEach((e, i) => {
      // the trained tokens are exactly the reply and the end-of-sequence token
      const trained = Array.from(e.ids).filter((_, j) => e.lossMask[j] === 1);
      expect(trained.at(-1)).toBe(tokenizer.eosId);
      expect(tokenizer.decode(trained.slice(0, -1)).trim()).toBe(records[i]!.output);
    });
    // one example per row: each batch's targets follow its example's mask exactly
    const unpacked = new ExampleBatches(examples, 1, 256, false, 0, 3);
    for (let b = 0; b < examples.length; b++) {
      const batch = unpacked.next();
      const e = examples.find((x) => x.ids.every((id, j) => batch.tokens[j] === id))!;
      for (let j = 0; j < batch.tokens.length; j++) {
        const want = j + 1 < e.ids.length && e.lossMask[j + 1] === 1 ? e.ids[j + 1] : -1;
        expect(batch.targets[j], `position ${j}`).toBe(want);
      }
    }
    // packed: an epoch's targets count each trained token once
    const packed = new ExampleBatches(examples, 2, 256, true, 0, 3);
    let targets = 0;
    for (let b = 0; b < packed.batchesIn(0); b++)
      for (const t of packed.next().targets) if (t >= 0) targets++;
    expect(targets).toBe(examples.reduce((n, e) => n + e.lossMask.reduce((a, m) => a + m, 0), 0));
  });
});

describe("resume", () => {
  it("an interrupted run continues to the same losses and the same adapter bytes", async () => {
    const settings = (out: string) => ({ ...common(out), steps: 8, dropout: 0.1, checkpointEvery: 0 });
    const whole = join(dir, "whole");
    await finetune(settings(whole));
    const cut = join(dir, "cut");
    const controller = new AbortController();
    const first = await finetune({
      ...settings(cut),
      signal: controller.signal,
      onEvent: (e) => {
        if (e.type === "step" && e.metrics.step === 3) controller.abort();
      },
    });
    expect(first).toMatchObject({ interrupted: true, step: 3 });
    expect(existsSync(join(cut, "adapter.gguf"))).toBe(false);
    const rest = await resumeFinetune(cut, { threads: 1 });
    expect(rest).toMatchObject({ interrupted: false, step: 8, ranSteps: 5 });
    expect(metricsOf(cut).map((m) => m.loss)).toEqual(metricsOf(whole).map((m) => m.loss));
    expect(readFileSync(join(cut, "adapter.gguf"))).toEqual(readFileSync(join(whole, "adapter.gguf")));

    // Cut short between its last checkpoint and its outputs, a run writes them on resume, training nothing.
    const adapter = readFileSync(join(cut, "adapter.gguf"));
    rmSync(join(cut, "adapter.gguf"));
    const events: string[] = [];
    const outputs = await resumeFinetune(cut, { threads: 1, onEvent: (e) => events.push(e.type) });
    expect(outputs).toMatchObject({ step: 8, ranSteps: 0, alreadyDone: false, interrupted: false });
    expect(events).toEqual(["data"]);
    expect(readFileSync(join(cut, "adapter.gguf"))).toEqual(adapter);
    expect(metricsOf(cut).map((m) => m.loss)).toEqual(metricsOf(whole).map((m) => m.loss));
    // and then it has nothing left to do
    const done = await resumeFinetune(cut, { threads: 1, onEvent: (e) => events.push(e.type) });
    expect(done).toMatchObject({ step: 8, steps: 8, ranSteps: 0, alreadyDone: true, loss: outputs.loss });
    expect(events).toEqual(["data"]);
  });
});

describe("QLoRA", () => {
  it("trains adapters over a Q4_0 base held quantized, and the loss goes down", async () => {
    const out = join(dir, "qlora");
    const summary = await finetune({ ...common(out), method: "qlora", baseType: "q4_0" });
    expectLearned(metricsOf(out).map((m) => m.loss));
    expect(summary.adapter).toBeDefined();
    // the checkpoint keeps the base as Q4_0
    const checkpoint = readGgufHeader(join(out, "checkpoint.gguf"));
    expect(checkpoint.tensor("blk.0.ffn_up.weight")!.type).toBe(2);
    expect(checkpoint.tensor("blk.0.ffn_up.weight.lora_a")!.type).toBe(0);
  });
});

describe("full fine-tune", () => {
  it("writes a model with the chat template that generate runs", async () => {
    const out = join(dir, "full");
    const summary = await finetune({ ...common(out), method: "full", lr: 3e-3, steps: 30 });
    expectLearned(metricsOf(out).map((m) => m.loss));
    expect(summary.model).toBe(join(out, "model.gguf"));
    const header = readGgufHeader(summary.model!);
    expect(header.get("tokenizer.chat_template")?.value).toBe(builtinTemplateSource("alpaca"));
    ensureBuilt();
    const r = await runCli([
      "generate",
      "--model",
      summary.model!,
      "--prompt",
      "say hello",
      "-n",
      "8",
      "--temp",
      "0",
    ]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
  });
});

describe("command line", () => {
  it("bad --targets and a bad record are one line each, exit 2", async () => {
    ensureBuilt();
    const base = ["finetune", "--base", tiny.path, "--data", data, "--template", "alpaca", "--seq", "128"];
    let r = await runCli([...base, "--targets", "q,x", "--out", join(dir, "bad1")]);
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split("\n")).toEqual([
      'smallhammer: --targets: unknown projection "x" (choose from q, k, v, o, gate, up, down, or all)',
    ]);
    const broken = join(dir, "broken.jsonl");
    writeFileSync(broken, `${JSON.stringify(alpacaRecords()[0])}\n{"instruction": "x", "output": 3}\n`);
    r = await runCli([...base.slice(0, 3), "--data", broken, ...base.slice(5), "--out", join(dir, "bad2")]);
    expect(r.status).toBe(2);
    const lines = r.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/broken\.jsonl:2/);
  });

  it("trains through the command line and prints the plan first", async () => {
    ensureBuilt();
    const out = join(dir, "cli");
    const r = await runCli([
      "finetune",
      ...["--base", tiny.path, "--data", data, "--template", "alpaca", "--targets", "q,v"],
      ...["--steps", "3", "--batch", "2", "--seq", "256", "--threads", "2", "--out", out],
    ]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^base: /);
    // rank 8 on q (64 → 64) and v (64 → 32) of two layers
    expect(lines[1]).toMatch(/^lora: 3,584 trainable parameters \(\d+\.\d\d%\)$/);
    expect(lines[2]).toMatch(/^memory: /);
    expect(r.stdout).toMatch(/wrote .*adapter\.gguf \(llama\.cpp LoRA\)/);
  });

  it("a finished run resumed with nothing to do says so and changes no file; --steps and --epochs extend it", async () => {
    ensureBuilt();
    const out = join(dir, "cli-finished");
    const r = await runCli([
      "finetune",
      ...["--base", tiny.path, "--data", data, "--template", "alpaca", "--targets", "q,v"],
      ...[
        "--steps",
        "3",
        "--batch",
        "2",
        "--seq",
        "256",
        "--threads",
        "2",
        "--eval-every",
        "0",
        "--out",
        out,
      ],
    ]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const files = [
      "checkpoint.gguf",
      "metrics.jsonl",
      "config.json",
      "adapter.gguf",
      "peft/adapter_config.json",
      "peft/adapter_model.safetensors",
    ];
    const before = snapshot(out, files);
    const finished = `${out} is finished: 3 of 3 steps; pass --steps N above 3 (or more --epochs) to extend it\n`;
    for (const extra of [[], ["--steps", "3"]]) {
      const again = await runCli(["finetune", "--resume", out, ...extra]);
      expect(again.stderr).toBe("");
      expect(again.status).toBe(0);
      expect(again.stdout).toBe(finished);
      expect(snapshot(out, files)).toEqual(before);
    }
    const json = await runCli(["finetune", "--resume", out, "--json"]);
    expect(json.status).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({
      steps: 3,
      step: 3,
      ranSteps: 0,
      alreadyDone: true,
      adapter: join(out, "adapter.gguf"),
      examples: { train: 23, validation: 1 },
    });
    const below = await runCli(["finetune", "--resume", out, "--steps", "2"]);
    expect(below.status).toBe(2);
    expect(below.stderr).toBe(
      `smallhammer: --steps 2: ${out} has already done 3 steps; give more to extend it\n`,
    );
    expect(snapshot(out, files)).toEqual(before);

    const metricsBefore = readFileSync(join(out, "metrics.jsonl"), "utf8");
    const extended = await runCli(["finetune", "--resume", out, "--steps", "5", "--threads", "2"]);
    expect(extended.stderr).toBe("");
    expect(extended.status).toBe(0);
    expect(extended.stdout).toContain("training: steps 4 to 5 on 2 threads");
    expect(extended.stdout).toMatch(/done: 5 steps, loss \d+\.\d{4}/);
    expect(readFileSync(join(out, "metrics.jsonl"), "utf8").startsWith(metricsBefore)).toBe(true);
    expect(metricsOf(out).map((m) => m.step)).toEqual([1, 2, 3, 4, 5]);
    const { info } = readCheckpoint(join(out, "checkpoint.gguf"));
    expect(info.trainer.step).toBe(5);
    expect(info.optimizer.totalSteps).toBe(5);
    expect(JSON.parse(readFileSync(join(out, "config.json"), "utf8"))).toMatchObject({ steps: 5 });
    // the adapter written at the end is the extended run's
    expect(snapshot(out, ["adapter.gguf"])[0]!.sha256).not.toBe(before[3]!.sha256);

    // --epochs counts the run's own batches: the data line gives the steps it comes to
    const byEpochs = await runCli(["finetune", "--resume", out, "--epochs", "2", "--threads", "2"]);
    expect(byEpochs.stderr).toBe("");
    expect(byEpochs.status).toBe(0);
    const steps = Number(/; (\d+) steps$/m.exec(byEpochs.stdout)?.[1]);
    expect(steps).toBeGreaterThan(5);
    expect(byEpochs.stdout).toContain(`training: steps 6 to ${steps} on 2 threads`);
    expect(readCheckpoint(join(out, "checkpoint.gguf")).info.trainer.step).toBe(steps);
    const done = await runCli(["finetune", "--resume", out, "--epochs", "2"]);
    expect(done.stdout).toBe(
      `${out} is finished: ${steps} of ${steps} steps; pass --steps N above ${steps} (or more --epochs) to extend it\n`,
    );
  });

  it("Ctrl-C saves a checkpoint, exits 130, and --resume goes on from it", async () => {
    ensureBuilt();
    const out = join(dir, "cli-interrupted");
    const child = spawn(
      process.execPath,
      [
        ...[CLI, "finetune", "--base", tiny.path, "--data", data, "--template", "alpaca", "--targets", "q,v"],
        ...["--steps", "2000", "--batch", "2", "--seq", "256", "--threads", "2", "--out", out],
      ],
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
    while (!(existsSync(metrics) && readFileSync(metrics, "utf8").split("\n").length > 3)) {
      await new Promise((r) => setTimeout(r, 10));
    }
    child.kill("SIGINT");
    expect(await exited).toBe(130);
    expect(stderr).toBe("");
    const step = Number(/interrupted after step (\d+) of 2000: saved /.exec(stdout)?.[1]);
    expect(step).toBeGreaterThanOrEqual(3);
    expect(stdout).toContain(`continue with: smallhammer finetune --resume ${out}`);
    expect(readCheckpoint(join(out, "checkpoint.gguf")).info.trainer.step).toBe(step);
    expect(existsSync(join(out, "adapter.gguf"))).toBe(false);
    // resumed to a shorter length, it finishes from the checkpoint and writes the adapter
    const rest = await runCli(["finetune", "--resume", out, "--steps", String(step + 2), "--json"]);
    expect(rest.stderr).toBe("");
    expect(rest.status).toBe(0);
    expect(JSON.parse(rest.stdout)).toMatchObject({ step: step + 2, ranSteps: 2, interrupted: false });
    expect(existsSync(join(out, "adapter.gguf"))).toBe(true);
  });
});
