// The command line as a user runs it: `node dist/cli/main.js ...` as a child process, with
// pipes for stdin/stdout/stderr (not a TTY), on small random-weight models written here.
import { spawn } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufHeader } from "../src/formats/gguf.js";
import { CLI, ensureBuilt, expectOk, expectUserError, ROOT, runCli } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let tiny: string;

beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "smallhammer-cli-"));
  tiny = join(dir, "tiny.gguf");
  writeTinyLlama(tiny);
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface InspectJson {
  architecture: string;
  config: { dim: number; layers: number; heads: number; vocab: number };
  memory: { contextSize: number; total: number };
  metadata: Record<string, unknown>;
  tensors: { name: string; type: string; dims: number[]; bytes: number }[];
}

async function inspectJson(file: string): Promise<InspectJson> {
  const r = await runCli(["inspect", file, "--json"]);
  expectOk(r);
  return JSON.parse(r.stdout) as InspectJson;
}

describe("inspect", () => {
  it("prints the architecture, shape, metadata keys, a tensor table and the memory needed", async () => {
    const r = await runCli(["inspect", tiny]);
    expectOk(r);
    const out = r.stdout;
    expect(out).toMatch(/^architecture +llama$/m);
    expect(out).toMatch(/^shape +dim 64, 2 layers, 4 heads \(4 KV\), head dim 16, ffn 160, vocab 333$/m);
    expect(out).toMatch(/^memory +.* to run with a 128-token context: weights .* \+ KV cache .*/m);
    for (const key of ["general.architecture", "llama.block_count", "tokenizer.ggml.tokens"]) {
      expect(out).toMatch(new RegExp(`^  ${key.replaceAll(".", "\\.")} `, "m"));
    }
    expect(out).toMatch(/^ {2}name +type +shape +size$/m);
    expect(out).toMatch(/^ {2}token_embd\.weight +f32 +\[64, 333\] /m);
    expect(out).toMatch(/^ {2}blk\.1\.ffn_down\.weight +f32 +\[160, 64\] /m);
    expect(out).toMatch(/^ {2}total .*: 21 × f32/m);
  });

  it("--json has the config, the tensors and the memory estimate", async () => {
    const j = await inspectJson(tiny);
    expect(j.architecture).toBe("llama");
    expect(j.config).toMatchObject({ dim: 64, layers: 2, heads: 4, vocab: 333 });
    expect(j.tensors).toHaveLength(21);
    expect(j.tensors[0]).toMatchObject({ name: "token_embd.weight", type: "f32", dims: [64, 333] });
    expect(j.memory.contextSize).toBe(128);
    expect(j.memory.total).toBeGreaterThan(0);
    expect(j.metadata["general.architecture"]).toBe("llama");
  });

  it("--ctx sets the context of the memory estimate", async () => {
    const r = await runCli(["inspect", tiny, "--json", "--ctx", "64"]);
    expectOk(r);
    expect((JSON.parse(r.stdout) as InspectJson).memory.contextSize).toBe(64);
    expectUserError(await runCli(["inspect", tiny, "--ctx", "abc"]), "--ctx");
  });
});

describe("generate", () => {
  it("prints a greedy continuation and exits 0", async () => {
    const r = await runCli(["generate", "-m", tiny, "-p", "hello", "-n", "8", "--temp", "0", "-t", "1"]);
    expectOk(r);
    expect(r.stdout.endsWith("\n")).toBe(true);
    expect(r.stdout.trim().length).toBeGreaterThan(0);
    // Greedy decoding does not depend on the thread count.
    const again = await runCli(["generate", "-m", tiny, "-p", "hello", "-n", "8", "--temp", "0", "-t", "2"]);
    expect(again.stdout).toBe(r.stdout);
  });

  it("the same --seed gives the same text at temperature 0.8", async () => {
    const args = ["generate", "-m", tiny, "-p", "hello", "-n", "24", "--temp", "0.8", "--seed", "1234"];
    const a = await runCli(args);
    const b = await runCli(args);
    expectOk(a);
    expectOk(b);
    expect(a.stdout.trim().length).toBeGreaterThan(0);
    expect(b.stdout).toBe(a.stdout);
  });

  it("--json gives the text and the token counts", async () => {
    const r = await runCli(["generate", "-m", tiny, "-p", "hello", "-n", "8", "--temp", "0", "--json"]);
    expectOk(r);
    const lines = r.stdout.trim().split("\n");
    expect(lines).toHaveLength(1);
    const j = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(typeof j.text).toBe("string");
    expect(j.promptTokens).toBeGreaterThanOrEqual(2); // BOS + "▁hello"
    expect(j.completionTokens).toBeGreaterThanOrEqual(1);
    expect(j.completionTokens).toBeLessThanOrEqual(8);
    expect(["stop", "length"]).toContain(j.finishReason);
    expect(typeof j.seconds).toBe("number");
    // The streamed text is the same text.
    const streamed = await runCli(["generate", "-m", tiny, "-p", "hello", "-n", "8", "--temp", "0"]);
    expect(streamed.stdout).toBe(`${j.text}\n`);
  });
});

describe("quantize", () => {
  const matrices = (j: InspectJson) => j.tensors.filter((t) => t.dims.length === 2);
  const norms = (j: InspectJson) => j.tensors.filter((t) => t.name.endsWith("norm.weight"));

  for (const type of ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "f16"]) {
    it(`--type ${type} writes a file that inspect reads and generate runs`, async () => {
      const out = join(dir, `tiny-${type}.gguf`);
      const q = await runCli(["quantize", tiny, out, "--type", type]);
      expectOk(q);
      // output.weight's rows of 64 fit no 256-element block: llama.cpp's mix falls back to q8_0 (q8_0 and f16 need none)
      expect(q.stdout).toContain(`${out}: ${type}, 16 tensors converted, 5 kept`);
      if (type !== "f16" && type !== "q8_0")
        expect(q.stdout).toContain("(1 fell back: rows not a multiple of 256)");
      const j = await inspectJson(out);
      expect(j.architecture).toBe("llama");
      expect(j.tensors).toHaveLength(21);
      // llama.cpp's mixes give output.weight Q6_K, here Q8_0: its rows of 64 fit no 256-element block
      const want = (name: string) => (name === "output.weight" && type !== "f16" ? "q8_0" : type);
      expect(matrices(j).map((t) => t.type)).toEqual(matrices(j).map((t) => want(t.name)));
      expect(norms(j)).toHaveLength(5);
      for (const t of norms(j)) expect(t.type).toBe("f32");
      expect(j.metadata["general.file_type"]).toBe(
        { q8_0: 7, q4_0: 2, q4_1: 3, q5_0: 8, q5_1: 9, f16: 1 }[type],
      );
      const g = await runCli(["generate", "-m", out, "-p", "hello", "-n", "8", "--temp", "0", "--json"]);
      expectOk(g);
      expect((JSON.parse(g.stdout) as { completionTokens: number }).completionTokens).toBeGreaterThan(0);
    });
  }

  it("--json prints a summary", async () => {
    const out = join(dir, "tiny-json.gguf");
    const r = await runCli(["quantize", tiny, out, "--type", "q8_0", "--json"]);
    expectOk(r);
    expect(JSON.parse(r.stdout)).toMatchObject({ type: "q8_0", quantized: 16, kept: 5 });
  });

  it("an unknown --type exits 2 with one line and writes nothing", async () => {
    const out = join(dir, "tiny-q3.gguf");
    const r = await runCli(["quantize", tiny, out, "--type", "q3_x"]);
    expectUserError(r, "--type q3_x");
    expect(r.stdout).toBe("");
    expect(existsSync(out)).toBe(false);
  });
});

describe("chat", () => {
  it("runs a conversation from stdin with /reset, /system and /exit", async () => {
    const input = ["hello there", "how are you", "/reset", "/system Be brief", "and again", "/exit", ""];
    const r = await runCli(
      ["chat", "-m", tiny, "--template", "chatml", "-n", "12", "--temp", "0", "-t", "1"],
      {
        input: input.join("\n"),
      },
    );
    expectOk(r);
    const out = r.stdout;
    const [header, help] = out.split("\n");
    expect(header).toBe("tiny-llama · context 128 · template chatml");
    expect(help).toMatch(/^commands: \/reset/);
    // One prompt per line read; /exit ends the chat without a prompt after it.
    const turns = out.slice(header!.length + help!.length + 2).split(/^> /m);
    expect(turns[0]).toBe("");
    expect(turns.slice(1)).toHaveLength(6);
    const [r1, r2, reset, sys, r3, exit] = turns.slice(1);
    for (const reply of [r1, r2, r3]) {
      expect(reply!.endsWith("\n")).toBe(true);
      expect(reply!.trim().length).toBeGreaterThan(0);
    }
    expect(reset).toBe("(new conversation)\n");
    expect(sys).toBe("(system prompt set; new conversation)\n");
    expect(exit).toBe("");
  });

  it("answers every line when the input ends without /exit", async () => {
    const r = await runCli(
      ["chat", "-m", tiny, "--template", "chatml", "-n", "6", "--temp", "0", "-t", "1"],
      {
        input: "hello there\n/nonsense\nhow are you",
      },
    );
    expectOk(r);
    expect(r.stdout.match(/^> /gm)).toHaveLength(3);
    expect(r.stdout).toContain("> unknown command /nonsense;");
  });

  it("without a template in the file or --template it exits 2 and suggests --template", async () => {
    const r = await runCli(["chat", "-m", tiny], { input: "hello\n" });
    expectUserError(r, "--template");
    expect(r.stdout).toBe("");
    expectUserError(await runCli(["chat", "-m", tiny, "--template", "nope"]), "nope");
  });

  it("SIGINT stops a streaming reply and the chat goes on", async () => {
    // A model that never ends a reply by itself: the output row of </s> is zero, so its logit (0)
    // is never the greedy choice over 300 random ones; a context large enough for 2000 tokens.
    const endless = join(dir, "endless.gguf");
    const m = writeTinyLlama(endless, { contextLength: 4096 });
    const out = readGgufHeader(endless).tensor("output.weight")!;
    const fd = openSync(endless, "r+");
    writeSync(fd, new Uint8Array(m.dim * 4), 0, m.dim * 4, out.fileOffset + m.eos * m.dim * 4);
    closeSync(fd);
    const args = ["-m", endless, "--ctx", "4096", "-n", "2000", "--temp", "0", "-t", "1"];

    // Without an interrupt the reply runs to its length.
    const full = await runCli(["generate", ...args, "-p", "hello", "--json"]);
    expectOk(full);
    expect(JSON.parse(full.stdout)).toMatchObject({ completionTokens: 2000, finishReason: "length" });

    const child = spawn(process.execPath, [CLI, "chat", ...args, "--template", "chatml"], {
      cwd: ROOT,
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    let interrupted = false;
    let exited = false;
    const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.on("exit", (code, signal) => {
        exited = true;
        resolve({ code, signal });
      });
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
      const reply = stdout.split("\n> ")[1];
      if (!interrupted && reply !== undefined && reply.length >= 16) {
        interrupted = true;
        child.kill("SIGINT");
      }
      if (interrupted && /\[stopped\]\n> $/.test(stdout) && child.stdin.writable) {
        child.stdin.end("/exit\n");
      }
    });
    child.stdin.write("hello\n");
    const timer = setTimeout(() => {
      if (!exited) child.kill("SIGKILL");
    }, 90_000);
    const { code, signal } = await done;
    clearTimeout(timer);
    expect(interrupted).toBe(true);
    expect(stderr).toBe("");
    expect(signal).toBeNull();
    expect(code).toBe(0);
    expect(stdout).toMatch(/\n> [\s\S]+ \[stopped\]\n> $/);
  });
});
