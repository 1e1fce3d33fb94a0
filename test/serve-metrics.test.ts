/**
 * /metrics in Prometheus text format (behind the API key like the rest of the API), whose counters
 * move with the requests made, and the request log: one line per request (method, route, status,
 * tokens, ms) through fastify's logger, as JSON lines or one readable line each, also from the CLI.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeRandomLlama } from "../src/model/random-llama.js";
import { prettyLine } from "../src/serve/log.js";
import { type RunningServer, startServer } from "../src/serve/server.js";
import { CLI, ensureBuilt, ROOT } from "./helpers/cli.js";

const KEY = "metrics-key";
let dir: string;
let modelPath: string;
let server: RunningServer;
let client: OpenAI;
const logLines: string[] = [];

beforeAll(async () => {
  ensureBuilt(); // the inference thread runs dist/serve/engine-worker.js
  dir = mkdtempSync(join(tmpdir(), "sh-serve-metrics-"));
  modelPath = join(dir, "tiny.gguf");
  writeRandomLlama(
    modelPath,
    { name: "tiny", dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 192, vocab: 4096, contextLength: 256 },
    "f32",
  );
  server = await startServer({
    model: modelPath,
    port: 0,
    parallel: 3,
    threads: 1,
    template: "chatml",
    apiKey: KEY,
    log: { level: "info", format: "json", destination: { write: (line: string) => logLines.push(line) } },
  });
  await server.ready;
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
}, 60_000);

afterAll(async () => {
  await server?.close(0);
  rmSync(dir, { recursive: true, force: true });
});

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * Parses Prometheus text exposition format (version 0.0.4) strictly: every line is a comment
 * (# HELP / # TYPE), blank, or `name{label="value",...} number`; anything else fails the test.
 */
function parsePrometheus(text: string): Sample[] {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (type) {
      types.set(type[1]!, type[2]!);
      continue;
    }
    if (/^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*$/.test(line)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.e+-]+|NaN|\+Inf|-Inf)$/.exec(line);
    expect(m, `not a Prometheus sample line: ${line}`).not.toBeNull();
    const labels: Record<string, string> = {};
    for (const l of (m![3] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/g)) {
      labels[l[1]!] = l[2]!;
    }
    const value = m![4] === "+Inf" ? Number.POSITIVE_INFINITY : Number(m![4]);
    expect(Number.isNaN(value) && m![4] !== "NaN", line).toBe(false);
    const family = m![1]!.replace(/_(bucket|sum|count)$/, "");
    expect(types.has(m![1]!) || types.has(family), `no # TYPE for ${m![1]}`).toBe(true);
    samples.push({ name: m![1]!, labels, value });
  }
  return samples;
}

async function scrape(): Promise<Sample[]> {
  const res = await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${KEY}` } });
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
  return parsePrometheus(await res.text());
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const s = samples.filter(
    (x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v),
  );
  return s.reduce((sum, x) => sum + x.value, 0);
}

describe("/metrics", () => {
  it("needs the key like the rest of the API", async () => {
    const res = await fetch(`${server.url}/metrics`);
    expect(res.status).toBe(401);
  });

  it("parses as Prometheus text, and its counters move with requests", async () => {
    const before = await scrape();
    for (const name of [
      "smallhammer_http_requests_total",
      "smallhammer_prompt_tokens_total",
      "smallhammer_completion_tokens_total",
      "smallhammer_queue_length",
      "smallhammer_slots_busy",
      "smallhammer_slots_total",
      "smallhammer_time_to_first_token_seconds_count",
      "smallhammer_time_per_output_token_seconds_count",
    ]) {
      expect(before.some((s) => s.name === name) || name.includes("http_requests"), name).toBe(true);
    }
    expect(value(before, "smallhammer_slots_total")).toBe(3);

    const chat = await client.chat.completions.create({
      model: server.modelId,
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 5,
      n: 2,
    });
    const stream = await client.completions.create({
      model: server.modelId,
      prompt: "w300 w301",
      max_tokens: 4,
      stream: true,
      stream_options: { include_usage: true },
    });
    let streamed: OpenAI.CompletionUsage | undefined;
    for await (const c of stream) if (c.usage) streamed = c.usage;
    const emb = await client.embeddings.create({ model: server.modelId, input: "w300 w301 w302" });
    expect(
      (await fetch(`${server.url}/nowhere`, { headers: { authorization: `Bearer ${KEY}` } })).status,
    ).toBe(404);

    const after = await scrape();
    const route = (r: string, status = "200") => ({ method: "POST", route: r, status });
    for (const r of ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]) {
      const d =
        value(after, "smallhammer_http_requests_total", route(r)) -
        value(before, "smallhammer_http_requests_total", route(r));
      expect(d, r).toBe(1);
    }
    expect(value(after, "smallhammer_http_requests_total", { route: "(no route)", status: "404" })).toBe(1);
    // The first scrape is counted once it is answered.
    expect(
      value(after, "smallhammer_http_requests_total", { route: "/metrics", status: "200" }),
    ).toBeGreaterThanOrEqual(1);
    expect(value(after, "smallhammer_http_requests_total", { route: "/metrics", status: "401" })).toBe(1);

    const prompt = chat.usage!.prompt_tokens + streamed!.prompt_tokens + emb.usage.prompt_tokens;
    const completion = chat.usage!.completion_tokens + streamed!.completion_tokens;
    const moved = (name: string) => value(after, name) - value(before, name);
    expect(moved("smallhammer_prompt_tokens_total")).toBe(prompt);
    expect(moved("smallhammer_completion_tokens_total")).toBe(completion);
    expect(moved("smallhammer_time_to_first_token_seconds_count")).toBe(2);
    // One observation per reply with more than one token: the chat's two and the completion.
    expect(moved("smallhammer_time_per_output_token_seconds_count")).toBe(3);
    const buckets = after.filter((s) => s.name === "smallhammer_time_to_first_token_seconds_bucket");
    expect(buckets.find((b) => b.labels.le === "+Inf")!.value).toBe(
      value(after, "smallhammer_time_to_first_token_seconds_count"),
    );
    expect(value(after, "smallhammer_queue_length")).toBe(0);
    expect(value(after, "smallhammer_slots_busy")).toBe(0);
  }, 60_000);
});

describe("request log", () => {
  it("one JSON line per request: method, route, status, tokens, ms", async () => {
    logLines.length = 0;
    const r = await client.completions.create({ model: server.modelId, prompt: "w400", max_tokens: 3 });
    await fetch(`${server.url}/health`);
    await fetch(`${server.url}/v1/models`); // no key: 401
    await new Promise((resolve) => setTimeout(resolve, 50)); // the close event comes after the answer
    const records = logLines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(records).toHaveLength(3);
    expect(records[0]).toMatchObject({
      level: 30,
      method: "POST",
      route: "/v1/completions",
      status: 200,
      prompt_tokens: r.usage!.prompt_tokens,
      completion_tokens: r.usage!.completion_tokens,
      msg: "POST /v1/completions 200",
    });
    expect(typeof records[0]!.ms).toBe("number");
    expect(records[1]).toMatchObject({ method: "GET", route: "/health", status: 200 });
    expect(records[1]).not.toHaveProperty("prompt_tokens");
    expect(records[2]).toMatchObject({ method: "GET", route: "/v1/models", status: 401 });
  });

  it("pretty: one readable line per record", () => {
    const line = prettyLine(
      JSON.stringify({
        level: 30,
        time: Date.UTC(2024, 0, 2, 3, 4, 5, 678),
        pid: 1,
        hostname: "h",
        reqId: "req-1",
        method: "POST",
        route: "/v1/completions",
        status: 200,
        prompt_tokens: 3,
        completion_tokens: 4,
        ms: 12,
        msg: "POST /v1/completions 200",
      }),
    );
    expect(line).toBe(
      "03:04:05.678 INFO  POST /v1/completions 200 method=POST route=/v1/completions status=200 prompt_tokens=3 completion_tokens=4 ms=12\n",
    );
  });

  it("the CLI: --log-format pretty writes one line per request to stderr; --log-level warn none", async () => {
    async function run(flags: string[]): Promise<string> {
      const child: ChildProcess = spawn(
        process.execPath,
        [CLI, "serve", "-m", modelPath, "--port", "0", "-t", "1", "--parallel", "1", ...flags],
        { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"] },
      );
      let err = "";
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      const url = await new Promise<string>((resolve, reject) => {
        child.stderr!.setEncoding("utf8").on("data", (d: string) => {
          err += d;
          const u = /on (http:\/\/[^\s]+) /.exec(err)?.[1];
          if (u && /loaded in/.test(err)) resolve(u);
        });
        child.once("exit", () => reject(new Error(err)));
      });
      const from = err.length;
      await fetch(`${url}/health`);
      await fetch(`${url}/nowhere`);
      await new Promise((resolve) => setTimeout(resolve, 200));
      child.kill("SIGTERM");
      await exited;
      return err.slice(from);
    }
    const pretty = (await run(["--log-format", "pretty"])).split("\n").filter((l) => / (GET|POST) /.test(l));
    expect(pretty).toHaveLength(2);
    expect(pretty[0]).toMatch(/^\d\d:\d\d:\d\d\.\d{3} INFO {2}GET \/health 200 .*status=200 ms=\d+$/);
    expect(pretty[1]).toMatch(/INFO {2}GET \(no route\) 404 /);
    const quiet = await run(["--log-level", "warn"]);
    expect(quiet).not.toMatch(/GET \/health/);
  }, 60_000);
});
