/**
 * End to end against a real teacher: `smallhammer serve` running a model written here, and
 * `smallhammer data self-instruct` asking it for tasks through the OpenAI-compatible API. The
 * model is built so that its reply is a known list of tasks in Alpaca's format (one vocabulary
 * piece per chunk; see helpers/scripted-llama.ts), so the whole path is real: chat template,
 * tokenizer, inference, HTTP, the teacher client, the parser, the filters and the output file,
 * which must validate as Alpaca data.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RecordReader } from "../src/data/records.js";
import { CLI, type CliResult, ensureBuilt, ROOT } from "./helpers/cli.js";
import { writeScriptedLlama } from "./helpers/scripted-llama.js";

const TASKS = [
  {
    instruction: "Name three trees that grow in old northern forests.",
    input: "",
    output: "Spruce, fir and birch.",
  },
  {
    instruction: "Convert the temperature from Celsius to Fahrenheit.",
    input: "25 degrees",
    output: "77 degrees Fahrenheit.",
  },
  {
    instruction: "Give a short title to the story below.",
    input: "A fox outwits a crow to win a piece of cheese.",
    output: "The Fox and the Cheese",
  },
  {
    instruction: "Explain what a leap year is in one sentence.",
    input: "",
    output: "A year with 366 days, adding February 29 every four years or so.",
  },
  { instruction: "Draw a cat using only words and symbols.", input: "", output: "=^.^=" },
  {
    instruction: "List the planets in order of distance from the Sun.",
    input: "",
    output: "Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune.",
  },
];

/** The reply in Alpaca's numbered format, cut into pieces at task boundaries (tasks 4 to 9). */
function replyChunks(): string[] {
  return TASKS.map((t, i) => {
    const n = i + 4;
    const separator = i === 0 ? "" : "\n###\n";
    return `${separator}${n}. Instruction: ${t.instruction}\n${n}. Input:\n${t.input || "<noinput>"}\n${n}. Output:\n${t.output}`;
  });
}

let dir: string;
let model: string;
let serve: ChildProcess;
let url: string;

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-self-instruct-serve-"));
  model = join(dir, "teacher.gguf");
  writeScriptedLlama(model, replyChunks());
  serve = spawn(
    process.execPath,
    [CLI, "serve", "-m", model, "--port", "0", "--ctx", "8192", "--template", "chatml", "-t", "1"],
    {
      cwd: ROOT,
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  url = await new Promise<string>((resolve, reject) => {
    let err = "";
    serve.stderr!.on("data", (d) => {
      err += d;
      const m = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(err);
      if (m) resolve(m[1]!);
    });
    serve.on("exit", (code) => reject(new Error(`serve exited (${code}): ${err}`)));
  });
  // Wait until the model is loaded.
  for (let i = 0; i < 200; i++) {
    const health = await fetch(`${url}/health`)
      .then((r) => r.status)
      .catch(() => 0);
    if (health === 200) break;
    await new Promise((r) => setTimeout(r, 50));
  }
});

afterAll(async () => {
  if (serve && serve.exitCode === null) {
    const exited = new Promise((r) => serve.once("exit", r));
    serve.kill("SIGTERM");
    await exited;
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function cli(args: string[]): Promise<CliResult> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d) => {
    stdout += d;
  });
  child.stderr!.on("data", (d) => {
    stderr += d;
  });
  return new Promise((resolve) =>
    child.on("close", (status, signal) => resolve({ status, signal, stdout, stderr })),
  );
}

describe("self-instruct against smallhammer serve", () => {
  it("generates tasks that validate as Alpaca data", async () => {
    const out = join(dir, "generated.jsonl");
    const r = await cli([
      "data",
      "self-instruct",
      "--teacher",
      `${url}/v1`,
      "--model",
      "teacher",
      "--num",
      "5",
      "--out",
      out,
      "--concurrency",
      "1",
      "--max-tokens",
      "64",
      "--json",
    ]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const summary = JSON.parse(r.stdout);
    expect(summary).toMatchObject({
      kept: 5,
      target: 5,
      replies: 1,
      candidates: 6,
      rejected: { "blacklisted word": 1 },
    });
    // Token counts come from the server's usage.
    expect(summary.tokensEstimated).toBe(false);
    expect(summary.completionTokens).toBe(TASKS.length + 1);
    expect(summary.promptTokens).toBeGreaterThan(500);

    const expected = TASKS.filter((t) => !t.instruction.startsWith("Draw"));
    const lines = readFileSync(out, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(lines).toEqual(expected);
    // The readers take it as Alpaca data, record by record.
    const reader = await RecordReader.open(out);
    expect(reader.format).toBe("alpaca");
    const records = [];
    for await (const record of reader) records.push(record);
    expect(records).toHaveLength(5);
    expect(records[1]!.messages).toEqual([
      { role: "user", content: expected[1]!.instruction, input: expected[1]!.input },
      { role: "assistant", content: expected[1]!.output },
    ]);
    // And the dataset tools take it too.
    const stats = await cli(["data", "stats", out, "--json"]);
    expect(JSON.parse(stats.stdout)).toMatchObject({ format: "alpaca", records: 5 });
    // And finetune takes it as it is (a LoRA run of two steps on the teacher itself).
    const run = join(dir, "tuned");
    const ft = await cli([
      "finetune",
      "--base",
      model,
      "--data",
      out,
      "--template",
      "alpaca",
      "--steps",
      "2",
      "--batch",
      "2",
      "--seq",
      "512",
      "--val-fraction",
      "0",
      "--out",
      run,
      "--json",
    ]);
    expect(ft.stderr).toBe("");
    expect(ft.status).toBe(0);
    expect(JSON.parse(ft.stdout)).toMatchObject({ step: 2, examples: { train: 5 } });
    expect(existsSync(join(run, "adapter.gguf"))).toBe(true);
  });

  it("a model name the server does not serve is one clear line", async () => {
    const r = await cli([
      "data",
      "self-instruct",
      "--teacher",
      url,
      "--model",
      "nope",
      "--num",
      "1",
      "--out",
      join(dir, "x.jsonl"),
    ]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(
      /^smallhammer: teacher http:\/\/127\.0\.0\.1:\d+\/v1: 404 .*"nope" a model it serves\?\)\n$/,
    );
  });
});
