/**
 * Shutdown of `smallhammer serve` (a real child process of the built CLI) with requests in flight:
 * after SIGTERM and a grace of one second, every request still gets a whole HTTP answer — a reply,
 * or a 503 in OpenAI's shape, or a stream that ends with an error event and [DONE] — and never an
 * empty reply or a reset connection. Several rounds, since the failure this guards against was a
 * race between writing the last answers and closing the connections.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeRandomLlama } from "../src/model/random-llama.js";
import { CLI, ensureBuilt, ROOT } from "./helpers/cli.js";

let dir: string;
let modelPath: string;

beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-shutdown-"));
  modelPath = join(dir, "slow.gguf");
  // Wide enough that a long reply takes seconds on one thread.
  writeRandomLlama(
    modelPath,
    { name: "slow", dim: 256, layers: 4, heads: 4, kvHeads: 4, ffn: 768, vocab: 32000, contextLength: 2048 },
    "f32",
  );
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

async function startCli(args: string[]) {
  const child = spawn(
    process.execPath,
    [CLI, "serve", "-m", modelPath, "--port", "0", "-t", "1", "--template", "chatml", ...args],
    { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
  );
  let stderr = "";
  const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const port = await new Promise<number>((resolve, reject) => {
    child.stderr!.on("data", (d: Buffer) => {
      stderr += d;
      const m = /on http:\/\/127\.0\.0\.1:(\d+)/.exec(stderr);
      if (m && /loaded in/.test(stderr)) resolve(Number(m[1]));
    });
    exit.then(() => reject(new Error(`serve exited early: ${stderr}`)));
  });
  return { child, port, exit };
}

interface Answer {
  status?: number;
  body: string;
  /** The transport error when the exchange did not complete (an empty reply, a reset). */
  error?: string;
  /** Set once the first bytes of the body arrived. */
  started: Promise<void>;
}

/** POSTs a chat completion on a connection of its own and collects whatever comes back. */
function post(port: number, body: object): Promise<Answer> & { started: Promise<void> } {
  let markStarted!: () => void;
  const started = new Promise<void>((r) => {
    markStarted = r;
  });
  const done = new Promise<Answer>((resolve) => {
    const payload = JSON.stringify(body);
    const req = httpRequest(
      {
        host: "127.0.0.1",
        port,
        path: "/v1/chat/completions",
        method: "POST",
        agent: false,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload) },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => {
          text += d;
          markStarted();
        });
        res.on("end", () => resolve({ status: res.statusCode, body: text, started }));
        res.on("error", (e) => resolve({ status: res.statusCode, body: text, error: e.message, started }));
      },
    );
    req.on("error", (e) => {
      markStarted();
      resolve({ body: "", error: e.message, started });
    });
    req.end(payload);
  });
  return Object.assign(done, { started });
}

function expectOpenAiError(text: string, code: string) {
  const body = JSON.parse(text);
  expect(Object.keys(body)).toEqual(["error"]);
  expect(body.error).toMatchObject({ code, type: expect.any(String), message: expect.any(String) });
  expect("param" in body.error).toBe(true);
}

describe("serve shutdown with --grace 1", () => {
  it("answers every request in flight: 200 or 503, never an empty reply", async () => {
    let cutStreams = 0;
    let refused = 0;
    for (let round = 0; round < 8; round++) {
      const { child, port, exit } = await startCli([
        "--grace",
        "1",
        "--parallel",
        "2",
        "--queue",
        "8",
        "--ctx",
        "2048",
      ]);
      const messages = [{ role: "user", content: `round ${round}: go on` }];
      const base = { model: "slow", messages, temperature: 0.9 };
      // Two streams hold the sequences; the others wait in the queue. The signal comes as soon as
      // the streams start, while the last requests may still be on their way in.
      const streams = [0, 1].map((i) => post(port, { ...base, seed: i, max_tokens: 1500, stream: true }));
      const whole = [2, 3, 4, 5, 6, 7, 8].map((i) => post(port, { ...base, seed: i, max_tokens: 1500 }));
      await Promise.all(streams.map((s) => s.started));
      child.kill("SIGTERM");

      for (const a of whole) {
        const r = await a;
        expect(r.error, `round ${round}: ${r.error} ${r.status} ${r.body.slice(0, 300)}`).toBeUndefined();
        expect([200, 503]).toContain(r.status);
        if (r.status === 503) {
          expectOpenAiError(r.body, "shutting_down");
          refused++;
        } else {
          expect(JSON.parse(r.body).object).toBe("chat.completion");
        }
      }
      for (const s of streams) {
        const r = await s;
        expect(r.error, `round ${round}: ${r.error} ${r.status} ${r.body.slice(0, 300)}`).toBeUndefined();
        expect(r.status).toBe(200);
        expect(r.body.endsWith("data: [DONE]\n\n"), r.body.slice(-200)).toBe(true);
        const events = r.body
          .split("\n\n")
          .filter((e) => e.startsWith("data: {"))
          .map((e) => JSON.parse(e.slice(6)));
        const last = events.at(-1);
        // Cut off past the grace: the stream's last event is the error.
        if (last.error) {
          expect(last.error.code).toBe("shutting_down");
          cutStreams++;
        } else expect(last.choices[0].finish_reason).not.toBeNull();
      }
      expect(await exit).toBe(0);
    }
    // The long requests were cut off (not all answered before the grace ran out).
    expect(refused).toBeGreaterThan(0);
    expect(cutStreams).toBeGreaterThan(0);
  });
});
