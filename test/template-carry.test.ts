/**
 * A fine-tune's chat template travels with every model made from it: the quickstart's pipeline
 * (LoRA fine-tune with --template alpaca, merge, quantize q4_0) and a full fine-tune's export give
 * models that carry tokenizer.chat_template and every tokenizer key of their input, and that
 * `chat` (the command, stdin piped) and model.chat() use with no --template. A model with no
 * template anywhere: `chat` says so at start (exit 2), `serve` says so at start and keeps serving
 * completions.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type GgufKv, readGgufHeader } from "../src/formats/gguf.js";
import { readLoraGguf, readPeftAdapter } from "../src/model/lora.js";
import { loadModel } from "../src/model/model.js";
import { builtinTemplateSource } from "../src/model/templates.js";
import { CLI, ensureBuilt, ROOT, runCli } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let base: string;
let data: string;
const ALPACA = builtinTemplateSource("alpaca");
const CHATML = builtinTemplateSource("chatml");

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-template-carry-"));
  base = join(dir, "base.gguf");
  writeTinyLlama(base, { dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 160, contextLength: 256 });
  data = join(dir, "alpaca.jsonl");
  const records = ["hello", "the world", "a bird", "the sea"].flatMap((s) => [
    { instruction: `say ${s}`, input: "", output: `${s}, ${s}!` },
    { instruction: "repeat the input", input: s, output: s },
  ]);
  writeFileSync(data, records.map((r) => `${JSON.stringify(r)}\n`).join(""));
});
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The tokenizer.* keys of a GGUF file with their values. */
function tokenizerKeys(path: string): Map<string, GgufKv> {
  const header = readGgufHeader(path);
  return new Map([...header.metadata].filter(([key]) => key.startsWith("tokenizer.")));
}

/** `out` has every tokenizer key of `input` unchanged, and `template` as its chat template. */
function expectTokenizerOf(out: string, input: string, template: string): void {
  const expected = tokenizerKeys(input);
  expected.delete("tokenizer.chat_template");
  const actual = tokenizerKeys(out);
  expect(actual.get("tokenizer.chat_template")?.value).toBe(template);
  actual.delete("tokenizer.chat_template");
  expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort());
  for (const [key, kv] of expected) expect(actual.get(key), key).toEqual(kv);
}

async function cli(args: string[], input?: string) {
  const r = await runCli(args, { input, timeoutMs: 300_000 });
  if (r.status !== 0) throw new Error(`smallhammer ${args.join(" ")} failed (${r.status}): ${r.stderr}`);
  return r;
}

/** Two quick training steps on the Alpaca records. */
function train(): string[] {
  return [
    "--data",
    data,
    "--steps",
    "2",
    "--batch",
    "2",
    "--seq",
    "128",
    "--threads",
    "2",
    "--eval-every",
    "0",
  ];
}

describe("a fine-tune's template is in every model made from it", () => {
  let merged: string;
  let quantized: string;

  beforeAll(async () => {
    const run = join(dir, "lora");
    await cli(["finetune", "--base", base, "--template", "alpaca", ...train(), "--out", run]);
    merged = join(dir, "tuned-f32.gguf");
    quantized = join(dir, "tuned-q4_0.gguf");
    await cli(["merge", "--base", base, "--adapter", join(run, "adapter.gguf"), "--out", merged]);
    await cli(["quantize", merged, quantized, "--type", "q4_0"]);
  }, 600_000);

  it("LoRA: the adapter, the PEFT directory, the merged and the quantized model carry it", async () => {
    const run = join(dir, "lora");
    expect(readLoraGguf(join(run, "adapter.gguf")).chatTemplate).toBe(ALPACA);
    expect(readFileSync(join(run, "peft", "chat_template.jinja"), "utf8")).toBe(ALPACA);
    expect(readPeftAdapter(join(run, "peft"), 4, 2).chatTemplate).toBe(ALPACA);
    expectTokenizerOf(merged, base, ALPACA);
    expectTokenizerOf(quantized, merged, ALPACA);
    // Merging the PEFT directory gives the same template.
    const fromPeft = join(dir, "tuned-peft.gguf");
    const r = await cli(["merge", "--base", base, "--adapter", join(run, "peft"), "--out", fromPeft]);
    expect(r.stdout).toContain("chat template from the adapter");
    expectTokenizerOf(fromPeft, base, ALPACA);
  });

  it("an adapter without a template keeps the base's", async () => {
    const withTemplate = join(dir, "base-chatml.gguf");
    writeTinyLlama(withTemplate, {
      dim: 64,
      layers: 2,
      heads: 4,
      kvHeads: 2,
      ffn: 160,
      contextLength: 256,
      chatTemplate: CHATML,
    });
    const run = join(dir, "lora-completion");
    const completions = join(dir, "completion.jsonl");
    writeFileSync(
      completions,
      `${JSON.stringify({ prompt: "say hello", completion: " hello!" })}\n`.repeat(6),
    );
    await cli(["finetune", "--base", withTemplate, ...train(), "--data", completions, "--out", run]);
    expect(readLoraGguf(join(run, "adapter.gguf")).chatTemplate).toBeUndefined();
    const out = join(dir, "completion-merged.gguf");
    const r = await cli([
      "merge",
      "--base",
      withTemplate,
      "--adapter",
      join(run, "adapter.gguf"),
      "--out",
      out,
    ]);
    expect(r.stdout).toContain("chat template from the base");
    expectTokenizerOf(out, withTemplate, CHATML);
  });

  it("full fine-tune: the checkpoint, the model and every export carry it", async () => {
    const run = join(dir, "full");
    await cli([
      "finetune",
      "--base",
      base,
      "--method",
      "full",
      "--template",
      "chatml",
      ...train(),
      "--out",
      run,
    ]);
    expectTokenizerOf(join(run, "model.gguf"), base, CHATML);
    expectTokenizerOf(join(run, "checkpoint.gguf"), base, CHATML);
    for (const type of ["f32", "q8_0"]) {
      const out = join(dir, `exported-${type}.gguf`);
      await cli(["export", run, "-o", out, "--type", type]);
      expectTokenizerOf(out, join(run, "checkpoint.gguf"), CHATML);
    }
  });

  it("`chat` works on the merged and the quantized model with no --template", async () => {
    for (const model of [merged, quantized]) {
      const r = await cli(["chat", "-m", model, "-n", "4", "-t", "1", "--temp", "0"], "say hello\n");
      expect(r.stderr).toBe("");
      expect(r.stdout).toContain("template model file");
      expect(r.stdout).not.toContain("no chat template");
    }
  });

  it("model.chat() works on the merged and the quantized model with no template option", async () => {
    for (const path of [merged, quantized]) {
      const model = await loadModel(path, { threads: 1 });
      try {
        expect(model.template().source).toBe(ALPACA);
        expect(model.formatChat([{ role: "user", content: "say hello" }])).toContain(
          "### Instruction:\nsay hello\n\n### Response:\n",
        );
        let finished = false;
        for await (const _ of model.chat([{ role: "user", content: "say hello" }], {
          maxTokens: 4,
          temperature: 0,
          onDone: () => {
            finished = true;
          },
        })) {
          // the reply of a random model; only that it runs matters here
        }
        expect(finished).toBe(true);
      } finally {
        await model.dispose();
      }
    }
  });
});

describe("no chat template anywhere", () => {
  it("`chat` says so at start in one line, exit 2", async () => {
    const r = await runCli(["chat", "-m", base, "-t", "1"], { input: "hello\n" });
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split("\n")).toEqual([
      `smallhammer: ${base}: the model file has no chat template (tokenizer.chat_template); choose one with --template alpaca|vicuna_v1.1|llama-2|chatml`,
    ]);
    expect(r.stdout).toBe("");
  });

  it("`serve` says so at start in one line and keeps serving completions", async () => {
    const child: ChildProcess = spawn(
      process.execPath,
      [CLI, "serve", "-m", base, "--port", "0", "-t", "1"],
      {
        cwd: ROOT,
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    try {
      let stderr = "";
      const port = await new Promise<number>((resolve, reject) => {
        child.stderr!.on("data", (d: Buffer) => {
          stderr += d;
          const m = /on http:\/\/127\.0\.0\.1:(\d+)/.exec(stderr);
          if (m && /loaded in/.test(stderr)) resolve(Number(m[1]));
        });
        child.on("exit", () => reject(new Error(`serve exited early: ${stderr}`)));
      });
      const notices = stderr.split("\n").filter((l) => l.includes("chat template"));
      expect(notices).toEqual([
        `smallhammer serve: ${base}: the model file has no chat template (tokenizer.chat_template); choose one with --template alpaca|vicuna_v1.1|llama-2|chatml; /v1/chat/completions will answer 400, /v1/completions works`,
      ]);
      const post = (path: string, body: object) =>
        fetch(`http://127.0.0.1:${port}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
        });
      const chat = await post("/v1/chat/completions", {
        model: "base",
        messages: [{ role: "user", content: "hello" }],
        max_tokens: 2,
      });
      expect(chat.status).toBe(400);
      expect(((await chat.json()) as { error: { code: string } }).error.code).toBe("no_chat_template");
      const completion = await post("/v1/completions", { model: "base", prompt: "hello", max_tokens: 2 });
      expect(completion.status).toBe(200);
    } finally {
      child.kill("SIGKILL");
    }
  });
});
