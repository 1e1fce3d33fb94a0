/**
 * `smallhammer serve` with options (or a model context) that cannot work: each is one line on
 * stderr and exit status 2, before the server answers anything; never a stack trace. And the
 * smallest context that does fit --parallel serves.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI, type CliResult, ensureBuilt, ROOT, runCli } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let model: string;

beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-serve-options-"));
  model = join(dir, "opts.gguf");
  writeTinyLlama(model, { contextLength: 256 });
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A copy of the model whose llama.context_length is stored as another GGUF type and value. */
function withContextLength(name: string, type: "u32" | "i32" | "f32", value: number): string {
  const bytes = readFileSync(model);
  const key = Buffer.from("llama.context_length");
  const at = bytes.indexOf(key) + key.length; // then: u32 value type, 4 value bytes
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  expect(view.getUint32(at, true)).toBe(4); // written as UINT32
  view.setUint32(at, { u32: 4, i32: 5, f32: 6 }[type], true);
  if (type === "u32") view.setUint32(at + 4, value, true);
  else if (type === "i32") view.setInt32(at + 4, value, true);
  else view.setFloat32(at + 4, value, true);
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

function expectOneLineExit2(r: CliResult, what: string, pattern?: RegExp) {
  expect(r.status, `${what}: ${r.stderr}`).toBe(2);
  const lines = r.stderr.trim().split("\n");
  const last = lines.at(-1)!;
  expect(last, what).toMatch(/^smallhammer: /);
  expect(r.stderr, what).not.toMatch(/\n\s+at\s|Error:|node:internal/);
  // At most the start-up notices before it, never the "serving" line: nothing was bound.
  expect(r.stderr, what).not.toMatch(/ on http:\/\//);
  if (pattern) expect(last, what).toMatch(pattern);
}

describe("serve refuses options that cannot work", () => {
  it("a context too small for --parallel, or for any prompt", async () => {
    const cases: [string[], RegExp][] = [
      [["--ctx", "2"], /context of 2 tokens is too small for 4 parallel sequences/],
      [["--ctx", "3", "--parallel", "4"], /context of 3 tokens is too small for 4 parallel/],
      [["--ctx", "100", "--parallel", "200"], /context of 100 tokens is too small for 200 parallel/],
      [["--ctx", "1", "--parallel", "1"], /context of 1 token leaves no room/],
    ];
    const results = await Promise.all(
      cases.map(([args]) => runCli(["serve", "-m", model, "--port", "0", "-t", "1", ...args])),
    );
    for (const [i, r] of results.entries()) expectOneLineExit2(r, cases[i]![0].join(" "), cases[i]![1]);
  });

  it("nonsense numbers for --ctx, --parallel, --queue, --timeout, --grace, --port, --body-limit", async () => {
    const cases: string[][] = [
      ["--ctx", "0"],
      ["--ctx", "-5"],
      ["--ctx", "0.5"],
      ["--ctx", "abc"],
      ["--ctx", "1e400"],
      ["--parallel", "0"],
      ["--parallel", "1.5"],
      ["--parallel", "100000"],
      ["--queue", "-1"],
      ["--queue", "x"],
      ["--queue", "1e12"],
      ["--timeout", "0"],
      ["--timeout", "abc"],
      ["--timeout", "NaN"],
      ["--timeout", "1e400"],
      ["--timeout", "1e12"], // past what a timer holds: every request would time out at once
      ["--grace", "-1"],
      ["--grace", "NaN"],
      ["--grace", "Infinity"],
      ["--grace", "1e12"],
      ["--port", "65536"],
      ["--port", "-1"],
      ["--port", "1.5"],
      ["--port", ""],
      ["--body-limit", "10"],
      ["--body-limit", "1e15"],
      ["--cors", "app.example"],
      ["--cors", "http://x.example/path"],
      ["--host", "999.1.1.1"],
    ];
    const results: CliResult[] = [];
    for (let i = 0; i < cases.length; i += 4) {
      const batch = cases.slice(i, i + 4);
      results.push(
        ...(await Promise.all(
          batch.map((args) => runCli(["serve", "-m", model, "--port", "0", "-t", "1", ...args])),
        )),
      );
    }
    results.forEach((r, i) => {
      const what = cases[i]!.join(" ");
      expect(r.status, `${what}: ${r.stderr}`).toBe(2);
      expect(r.stderr.trim().split("\n"), what).toHaveLength(1);
      expect(r.stderr, what).toMatch(/^smallhammer: /);
      expect(r.stderr, what).not.toMatch(/\n\s+at\s|node:internal/);
    });
  });

  it("a model file whose context length is 0, negative or fractional", async () => {
    const files: [string, "u32" | "i32" | "f32", number][] = [
      ["ctx-zero.gguf", "u32", 0],
      ["ctx-negative.gguf", "i32", -5],
      ["ctx-half.gguf", "f32", 0.5],
      ["ctx-one.gguf", "u32", 1],
      ["ctx-two.gguf", "u32", 2],
    ];
    const results = await Promise.all(
      files.map(([name, type, value]) =>
        runCli(["serve", "-m", withContextLength(name, type, value), "--port", "0", "-t", "1"]),
      ),
    );
    for (const [i, r] of results.entries()) expectOneLineExit2(r, files[i]![0]);
  });
});

describe("the smallest context that fits", () => {
  it("--ctx 4 --parallel 4 serves, and a prompt over it is a 400 with the counts", async () => {
    const child = spawn(
      process.execPath,
      [
        CLI,
        "serve",
        "-m",
        model,
        "--port",
        "0",
        "-t",
        "1",
        "--ctx",
        "4",
        "--parallel",
        "4",
        "--template",
        "chatml",
      ],
      { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
    );
    try {
      let stderr = "";
      const url = await new Promise<string>((resolve, reject) => {
        child.stderr.on("data", (d: Buffer) => {
          stderr += d;
          const m = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr);
          if (m && /loaded in/.test(stderr)) resolve(m[1]!);
        });
        child.on("exit", () => reject(new Error(`serve exited: ${stderr}`)));
      });
      const post = (prompt: string, extra: object = {}) =>
        fetch(`${url}/v1/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: "opts", prompt, temperature: 0, ...extra }),
        });
      const ok = await post("a", { max_tokens: 1 });
      expect(ok.status).toBe(200);
      expect(((await ok.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(1);
      const tooLong = await post("hello world and the world");
      expect(tooLong.status).toBe(400);
      const e = ((await tooLong.json()) as { error: { code: string; message: string } }).error;
      expect(e.code).toBe("context_length_exceeded");
      expect(e.message).toMatch(/the prompt is \d+ tokens; the context of 4 tokens/);
    } finally {
      child.kill("SIGTERM");
    }
  });
});
