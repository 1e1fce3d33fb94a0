/**
 * The HTTP server with the official `openai` SDK as its client, over real HTTP on 127.0.0.1, with
 * a random-weight model written by the test: chat and completions, streamed and not, stop strings,
 * seeds, error shapes and statuses, concurrency (continuous batching, queue, disconnects), bad
 * input, and the CLI's shutdown on SIGTERM.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { connect } from "node:net";
import { networkInterfaces, tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI, { type APIError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type LoraTensor, writeLoraGguf } from "../src/model/lora.js";
import { writeRandomLlama } from "../src/model/random-llama.js";
import { type RunningServer, startServer } from "../src/serve/server.js";
import { Rng } from "../src/util/random.js";
import { CLI, ensureBuilt, ROOT, runNode } from "./helpers/cli.js";

let dir: string;
let modelPath: string;
let server: RunningServer;
let client: OpenAI;
const PARALLEL = 8;
const QUEUE = 8;

/** A small random Llama with a 32000-piece vocabulary (its replies practically never end by themselves). */
function writeModel(path: string) {
  writeRandomLlama(
    path,
    { name: "tiny", dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 192, vocab: 32000, contextLength: 512 },
    "f32",
  );
}

beforeAll(async () => {
  ensureBuilt(); // the inference thread runs dist/serve/engine-worker.js
  dir = mkdtempSync(join(tmpdir(), "sh-serve-"));
  modelPath = join(dir, "tiny-chat.gguf");
  writeModel(modelPath);
  server = await startServer({
    model: modelPath,
    port: 0,
    parallel: PARALLEL,
    queue: QUEUE,
    contextSize: 2048,
    template: "chatml",
    threads: 2,
  });
  await server.ready;
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
});

afterAll(async () => {
  await server?.close(0);
  rmSync(dir, { recursive: true, force: true });
});

const user = (content: string) => [{ role: "user" as const, content }];

async function chatText(params: Omit<OpenAI.ChatCompletionCreateParamsNonStreaming, "model">, c = client) {
  const r = await c.chat.completions.create({ model: server.modelId, ...params });
  return r.choices[0]!.message.content ?? "";
}

/** Streams a chat completion; returns the text, the finish reason, the roles seen and the usage. */
async function chatStream(
  params: Omit<OpenAI.ChatCompletionCreateParamsStreaming, "model" | "stream">,
  c = client,
) {
  const stream = await c.chat.completions.create({ model: server.modelId, ...params, stream: true });
  let text = "";
  let finish: string | null = null;
  let chunks = 0;
  const roles: string[] = [];
  let usage: OpenAI.CompletionUsage | undefined;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices[0];
    if (!choice) continue;
    if (choice.delta.role) roles.push(choice.delta.role);
    text += choice.delta.content ?? "";
    finish = choice.finish_reason ?? finish;
  }
  return { text, finish, chunks, roles, usage };
}

async function health(s = server) {
  const r = await fetch(`${s.url}/health`);
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
}

/** Polls until `check` holds (the server updates its counters between steps). */
async function until(check: () => Promise<boolean>, what: string) {
  for (let i = 0; i < 300; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting until ${what}`);
}

/** Raw HTTP exchange: status and body text. */
async function raw(path: string, init: RequestInit = {}, s = server) {
  const r = await fetch(`${s.url}${path}`, init);
  return { status: r.status, text: await r.text(), headers: r.headers };
}

const JSON_TYPE = { "content-type": "application/json" };

function expectErrorShape(text: string, status: number) {
  const body = JSON.parse(text);
  expect(Object.keys(body)).toEqual(["error"]);
  expect(typeof body.error.message).toBe("string");
  expect(body.error.message).not.toMatch(/\n|\s+at\s+\S+\s+\(|node:internal|\.ts:\d|\.js:\d/);
  expect(typeof body.error.type).toBe("string");
  expect("param" in body.error && "code" in body.error).toBe(true);
  expect(status).toBeGreaterThanOrEqual(400);
  return body.error as { message: string; type: string; param: string | null; code: string | null };
}

describe("OpenAI API", () => {
  it("lists and describes the model, and reports health", async () => {
    const list = await client.models.list();
    expect(list.data.map((m) => m.id)).toEqual(["tiny-chat"]);
    expect((await client.models.retrieve("tiny-chat")).owned_by).toBe("smallhammer");
    const h = await health();
    expect(h.status).toBe(200);
    expect(h.body).toMatchObject({ status: "ok", model: "tiny-chat", slots: { total: PARALLEL, busy: 0 } });
  });

  it("answers a chat completion whole, with usage counts", async () => {
    const r = await client.chat.completions.create({
      model: server.modelId,
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: "hello there" },
      ],
      max_tokens: 12,
      seed: 3,
      temperature: 0.7,
      top_p: 0.9,
    });
    expect(r.object).toBe("chat.completion");
    expect(r.model).toBe("tiny-chat");
    expect(r.choices).toHaveLength(1);
    expect(r.choices[0]!.message.role).toBe("assistant");
    expect(r.choices[0]!.message.content!.length).toBeGreaterThan(0);
    expect(r.choices[0]!.finish_reason).toBe("length");
    expect(r.usage!.completion_tokens).toBe(12);
    expect(r.usage!.prompt_tokens).toBeGreaterThan(5);
    expect(r.usage!.total_tokens).toBe(r.usage!.prompt_tokens + 12);
  });

  it("streams a chat completion as the same text, with role, finish reason and usage", async () => {
    const params = { messages: user("tell me a story"), max_tokens: 16, seed: 42 };
    const whole = await chatText(params);
    const s = await chatStream({ ...params, stream_options: { include_usage: true } });
    expect(s.text).toBe(whole);
    expect(s.roles).toEqual(["assistant"]);
    expect(s.finish).toBe("length");
    expect(s.chunks).toBeGreaterThan(10);
    expect(s.usage).toMatchObject({ completion_tokens: 16 });
  });

  it("answers and streams completions", async () => {
    const params = { model: server.modelId, prompt: "once upon a time", max_tokens: 10, seed: 5 };
    const whole = await client.completions.create(params);
    expect(whole.object).toBe("text_completion");
    expect(whole.choices[0]!.finish_reason).toBe("length");
    expect(whole.usage).toMatchObject({ completion_tokens: 10 });
    const stream = await client.completions.create({ ...params, stream: true });
    let text = "";
    let finish: string | null = null;
    for await (const c of stream) {
      text += c.choices[0]?.text ?? "";
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    expect(text).toBe(whole.choices[0]!.text);
    expect(finish).toBe("length");
    // OpenAI's default for completions is 16 tokens.
    const dflt = await client.completions.create({ model: server.modelId, prompt: "once", seed: 1 });
    expect(dflt.usage!.completion_tokens).toBe(16);
  });

  it("gives the same text for the same seed, and another for another seed", async () => {
    const params = { messages: user("pick a word"), max_tokens: 20, temperature: 1 };
    const a = await chatText({ ...params, seed: 123 });
    const b = await chatText({ ...params, seed: 123 });
    const c = await chatText({ ...params, seed: 124 });
    expect(b).toBe(a);
    expect(c).not.toBe(a);
    const g1 = await chatText({ ...params, temperature: 0 });
    const g2 = await chatText({ ...params, temperature: 0, seed: 9 });
    expect(g2).toBe(g1);
  });

  it("stops before a stop string, streamed or not", async () => {
    const params = { messages: user("count"), max_tokens: 30, seed: 77 };
    const full = await chatText(params);
    const words = full.split(" ").filter(Boolean);
    const stop = ` ${words[5]}`;
    const expected = full.slice(0, full.indexOf(stop));
    const r = await client.chat.completions.create({
      model: server.modelId,
      ...params,
      stop: [stop, "never"],
    });
    expect(r.choices[0]!.message.content).toBe(expected);
    expect(r.choices[0]!.finish_reason).toBe("stop");
    const s = await chatStream({ ...params, stop });
    expect(s.text).toBe(expected);
    expect(s.finish).toBe("stop");
  });

  it("accepts text parts and the developer role", async () => {
    const text = await chatText({
      messages: [
        { role: "developer", content: "Be brief." },
        { role: "user", content: [{ type: "text", text: "hi" }] },
      ],
      max_tokens: 3,
    });
    expect(text.length).toBeGreaterThan(0);
  });
});

describe("errors", () => {
  it("an unknown model is a 404 in OpenAI's shape", async () => {
    const e = await client.chat.completions
      .create({ model: "gpt-4", messages: user("hi") })
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OpenAI.NotFoundError);
    expect((e as APIError).code).toBe("model_not_found");
    expect((e as APIError).param).toBe("model");
    await expect(client.models.retrieve("nope")).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });

  it("bad fields are 400s naming the field", async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ temperature: 3 }, "temperature"],
      [{ max_tokens: 0 }, "max_tokens"],
      [{ max_tokens: 1.5 }, "max_tokens"],
      [{ top_p: 0 }, "top_p"],
      [{ n: PARALLEL + 1 }, "n"],
      [{ stop: [1] }, "stop"],
      [{ messages: [] }, "messages"],
      [{ messages: [{ role: "tool", content: "x" }] }, "messages.0.tool_call_id"],
      [
        { messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] },
        "messages.0.content",
      ],
      [{ presence_penalty: 0.5 }, "presence_penalty"],
    ];
    for (const [patch, param] of cases) {
      const body = { model: server.modelId, messages: user("hi"), max_tokens: 2, ...patch };
      const r = await raw("/v1/chat/completions", {
        method: "POST",
        headers: JSON_TYPE,
        body: JSON.stringify(body),
      });
      expect(r.status, JSON.stringify(patch)).toBe(400);
      const err = expectErrorShape(r.text, r.status);
      expect(err.param, JSON.stringify(patch)).toBe(param);
      expect(err.type).toBe("invalid_request_error");
    }
    const e = await client.chat.completions
      .create({ model: server.modelId, messages: user("hi"), temperature: -1 })
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OpenAI.BadRequestError);
  });

  it("a prompt over the context is a 400 that gives the counts", async () => {
    const long = "w300 ".repeat(2100);
    const e = (await client.chat.completions
      .create({ model: server.modelId, messages: user(long) })
      .catch((x: unknown) => x)) as APIError;
    expect(e).toBeInstanceOf(OpenAI.BadRequestError);
    expect(e.code).toBe("context_length_exceeded");
    expect(e.message).toMatch(/the prompt is \d+ tokens; the context of 2048 tokens/);
    const e2 = (await client.completions
      .create({ model: server.modelId, prompt: "hello", max_tokens: 3000 })
      .catch((x: unknown) => x)) as APIError;
    expect(e2.code).toBe("context_length_exceeded");
    expect(e2.message).toMatch(
      /the prompt is \d+ tokens and max_tokens asks for 3000 more: \d+ tokens, over the context of 2048/,
    );
  });

  it("malformed JSON, a body that is not an object, an empty body: 400", async () => {
    for (const body of ["{bad json", "[1,2]", "", "null", '"text"', "{".repeat(100_000)]) {
      const r = await raw("/v1/chat/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
      });
      expect(r.status, body.slice(0, 20)).toBe(400);
      expectErrorShape(r.text, r.status);
    }
  });

  it("a body over the limit is a 413", async () => {
    const big = JSON.stringify({ model: server.modelId, messages: user("x".repeat(2 << 20)) });
    const r = await raw("/v1/chat/completions", { method: "POST", headers: JSON_TYPE, body: big });
    expect(r.status).toBe(413);
    expect(expectErrorShape(r.text, r.status).code).toBe("request_too_large");
  });

  it("an unknown route is a 404; bytes that are not HTTP get a 400", async () => {
    const r = await raw("/v1/audio/speech", { method: "POST", body: "{}" });
    expect(r.status).toBe(404);
    expectErrorShape(r.text, r.status);
    const reply = await new Promise<string>((resolve, reject) => {
      const sock = connect(server.port, "127.0.0.1", () => sock.write("\x16\x03\x01 garbage\r\n\r\n"));
      let got = "";
      sock.on("data", (d) => {
        got += d;
      });
      sock.on("close", () => resolve(got));
      sock.on("error", reject);
    });
    expect(reply).toMatch(/^HTTP\/1\.1 400 /);
    expectErrorShape(reply.slice(reply.indexOf("\r\n\r\n") + 4), 400);
  });

  it("binds to loopback by default", async () => {
    expect(server.host).toBe("127.0.0.1");
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const external = Object.values(networkInterfaces())
      .flat()
      .find((a) => a && a.family === "IPv4" && !a.internal);
    if (external) {
      const refused = await new Promise<boolean>((resolve) => {
        const s = connect(server.port, external.address);
        s.on("connect", () => {
          s.destroy();
          resolve(false);
        });
        s.on("error", () => resolve(true));
      });
      expect(refused, `port ${server.port} reachable on ${external.address}`).toBe(true);
    }
  });
});

describe("API key", () => {
  let guarded: RunningServer;
  beforeAll(async () => {
    guarded = await startServer({
      model: modelPath,
      port: 0,
      apiKey: "s3cret",
      parallel: 1,
      contextSize: 64,
      threads: 1,
      template: "chatml",
    });
    await guarded.ready;
  });
  afterAll(async () => {
    await guarded?.close(0);
  });

  it("no key or a wrong key is a 401; the right key works; / and /health stay open", async () => {
    const make = (apiKey: string) => new OpenAI({ baseURL: `${guarded.url}/v1`, apiKey, maxRetries: 0 });
    const params = { model: guarded.modelId, messages: user("hi"), max_tokens: 2 };
    for (const key of ["wrong", "s3cret2", "s3cre"]) {
      const e = (await make(key)
        .chat.completions.create(params)
        .catch((x: unknown) => x)) as APIError;
      expect(e).toBeInstanceOf(OpenAI.AuthenticationError);
      expect(e.code).toBe("invalid_api_key");
    }
    const none = await raw("/v1/models", {}, guarded);
    expect(none.status).toBe(401);
    expect(expectErrorShape(none.text, 401).message).toMatch(/missing API key/);
    const bad = await raw("/v1/chat/completions", { method: "POST", body: "{" }, guarded);
    expect(bad.status).toBe(401); // the key is checked before the body is read
    const ok = await make("s3cret").chat.completions.create(params);
    expect(ok.choices[0]!.finish_reason).toBe("length");
    expect((await raw("/", {}, guarded)).status).toBe(200);
    expect((await health(guarded)).status).toBe(200);
  });
});

describe("LoRA", () => {
  it("serves the model with a run-time adapter", async () => {
    const rng = new Rng(8);
    const tensors: LoraTensor[] = [];
    for (let l = 0; l < 2; l++) {
      for (const [name, inFeatures, outFeatures] of [
        ["attn_q", 64, 64],
        ["attn_v", 64, 32],
        ["ffn_down", 192, 64],
      ] as const) {
        tensors.push({
          base: `blk.${l}.${name}.weight`,
          rank: 8,
          inFeatures,
          outFeatures,
          a: rng.fillNormal(new Float32Array(8 * inFeatures), 0.5),
          b: rng.fillNormal(new Float32Array(outFeatures * 8), 0.5),
        });
      }
    }
    const adapterPath = join(dir, "adapter.gguf");
    writeLoraGguf(adapterPath, { architecture: "llama", alpha: 16, tensors });
    const s = await startServer({
      model: modelPath,
      lora: [{ adapter: adapterPath }],
      port: 0,
      parallel: 2,
      contextSize: 256,
      threads: 1,
      template: "chatml",
    });
    try {
      await s.ready;
      const c = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "x", maxRetries: 0 });
      const params = { messages: user("hello"), max_tokens: 12, seed: 4 };
      const adapted = await chatText(params, c);
      expect(await chatText(params, c)).toBe(adapted);
      expect(adapted).not.toBe(await chatText(params));
    } finally {
      await s.close(0);
    }
  });
});

describe("loading", () => {
  it("answers 503 while the model loads", async () => {
    let release!: () => void;
    const s = await startServer({
      model: modelPath,
      port: 0,
      parallel: 1,
      contextSize: 64,
      threads: 1,
      template: "chatml",
      loadAfter: new Promise<void>((r) => {
        release = r;
      }),
    });
    try {
      const h = await health(s);
      expect(h.status).toBe(503);
      expect((h.body.error as { code: string }).code).toBe("model_loading");
      const c = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "x", maxRetries: 0 });
      const e = (await c.models.list().catch((x: unknown) => x)) as APIError;
      expect(e).toBeInstanceOf(OpenAI.InternalServerError);
      expect(e.status).toBe(503);
      expect(e.code).toBe("model_loading");
      release();
      await s.ready;
      expect((await health(s)).status).toBe(200);
      expect((await c.models.list()).data).toHaveLength(1);
    } finally {
      release();
      await s.close(0);
    }
  });
});

describe("concurrency", () => {
  const prompts = Array.from({ length: 16 }, (_, i) => ({
    messages: user(`client ${i} says ${"w9 ".repeat(i % 5)}hello`),
    max_tokens: 12 + (i % 7),
    seed: 1000 + i,
    temperature: 0.9,
  }));

  it("16 concurrent streaming clients each get the text they get alone", async () => {
    const alone: string[] = [];
    for (const p of prompts) alone.push((await chatStream(p)).text);
    const together = await Promise.all(prompts.map((p) => chatStream(p)));
    together.forEach((t, i) => {
      expect(t.text, `client ${i}`).toBe(alone[i]);
      expect(t.finish).toBe("length");
    });
    expect(new Set(alone).size).toBe(16);
    const h = await health();
    expect(h.body).toMatchObject({ slots: { busy: 0 }, queue: { waiting: 0 }, requests: 0 });
  });

  it("clients that disconnect free their sequences; the queue overflows into 429s", async () => {
    // Long enough that none ends by itself before the clients hang up.
    const long = { messages: user("go on"), max_tokens: 1900, temperature: 0.9 };
    const before = (await health()).body.generations as { finished: number; cancelled: number };
    for (let round = 0; round < 3; round++) {
      const controllers = Array.from({ length: PARALLEL + QUEUE }, () => new AbortController());
      const streams = controllers.map((ac, i) =>
        client.chat.completions.create(
          { model: server.modelId, ...long, seed: i, stream: true },
          { signal: ac.signal },
        ),
      );
      // All sequences busy and the queue full: one more is turned away.
      await until(async () => {
        const b = (await health()).body as { slots: { busy: number }; queue: { waiting: number } };
        return b.slots.busy === PARALLEL && b.queue.waiting === QUEUE;
      }, "every sequence is busy and the queue is full");
      const e = (await client.chat.completions
        .create({ model: server.modelId, ...long })
        .catch((x: unknown) => x)) as APIError;
      expect(e).toBeInstanceOf(OpenAI.RateLimitError);
      expect(e.code).toBe("queue_full");
      expect(e.headers?.get("retry-after")).toBe("1");
      // Read a little of each running stream, then hang up on everyone.
      const first = await streams[0]!;
      for await (const _ of first) break;
      for (const ac of controllers) ac.abort();
      await Promise.allSettled(streams);
      await until(async () => {
        const b = (await health()).body as {
          slots: { busy: number };
          queue: { waiting: number };
          requests: number;
        };
        return b.slots.busy === 0 && b.queue.waiting === 0 && b.requests === 0;
      }, "the disconnected clients' sequences are free");
      expect(server.stats()).toEqual({ busy: 0, waiting: 0, requests: 0 });
    }
    // Every one of them was cancelled, none ran to its end.
    const after = (await health()).body.generations as { finished: number; cancelled: number };
    expect(after).toEqual({
      finished: before.finished,
      cancelled: before.cancelled + 3 * (PARALLEL + QUEUE),
    });
    // The freed sequences serve new requests with the same results as before.
    expect((await chatStream(prompts[3]!)).text).toBe((await chatStream(prompts[3]!)).text);
  });

  it("rounds of clients hanging up mid-reply leave memory at its baseline", async () => {
    // A process of its own, so that a full collection can be forced between rounds.
    const r = await runNode([
      "--expose-gc",
      join(ROOT, "test", "helpers", "serve-memory.mjs"),
      modelPath,
      "40",
    ]);
    expect(r.status, r.stderr).toBe(0);
    const rounds = r.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { heapUsed: number; rss: number });
    expect(rounds).toHaveLength(40);
    // The live heap after a full collection stays put past the warm-up (measured: about 20 KB a
    // round of 16 requests). The RSS swings by some 40 MB as the inference thread's heap grows
    // and is collected, but levels off: the second half's peak stays within reach of the first
    // half's (a KV cache kept per request would add 4 MB a round, 80 MB over the second half).
    expect(rounds[39]!.heapUsed - rounds[7]!.heapUsed).toBeLessThan(2 * 1024 * 1024);
    const peak = (from: number, to: number) => Math.max(...rounds.slice(from, to).map((x) => x.rss));
    expect(peak(20, 40)).toBeLessThan(peak(0, 20) + 24 * 1024 * 1024);
  });

  it("a request past its timeout is stopped: 504, or an error event in a stream", async () => {
    const s = await startServer({
      model: modelPath,
      port: 0,
      parallel: 1,
      contextSize: 256,
      threads: 1,
      template: "chatml",
      timeoutMs: 1,
    });
    try {
      await s.ready;
      const c = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "x", maxRetries: 0 });
      const params = { model: s.modelId, messages: user("hi"), max_tokens: 150 };
      const e = (await c.chat.completions.create(params).catch((x: unknown) => x)) as APIError;
      expect(e.status).toBe(504);
      expect(e.code).toBe("timeout");
      const streamed = await chatStream({ messages: user("hi"), max_tokens: 150 }, c).catch(
        (x: unknown) => x,
      );
      expect(streamed).toBeInstanceOf(OpenAI.APIError);
      expect((streamed as APIError).message).toMatch(/took longer than/);
      await until(async () => s.stats().requests === 0, "the timed-out requests are gone");
    } finally {
      await s.close(0);
    }
  });
});

describe("bad input", () => {
  it("1,000 random malformed requests never crash the server or leak a stack trace", async () => {
    const rng = new Rng(2024);
    const pick = <T>(xs: T[]): T => xs[rng.nextInt(xs.length)]!;
    const junk = (): unknown =>
      pick<() => unknown>([
        () => rng.nextInt(1e9) - 5e8,
        () => rng.nextFloat() * 1e308 * (rng.nextFloat() < 0.5 ? -1 : 1),
        () => "x".repeat(rng.nextInt(50)),
        () => null,
        () => true,
        () => [junk(), junk()],
        () => ({ [pick(["a", "role", "content", "__proto__", "constructor"])]: junk() }),
        () => "\u0000\ud800\uffff",
      ])();
    const fields = [
      "model",
      "messages",
      "prompt",
      "temperature",
      "top_p",
      "max_tokens",
      "stop",
      "seed",
      "stream",
      "n",
      "stream_options",
      "top_k",
    ];
    const bodies = (): string | Uint8Array => {
      const kind = rng.nextInt(6);
      if (kind === 0) return Uint8Array.from({ length: rng.nextInt(64) }, () => rng.nextInt(256));
      if (kind === 1) return JSON.stringify(junk());
      const body: Record<string, unknown> = { model: pick([server.modelId, "other", 5]) };
      if (rng.nextFloat() < 0.7)
        body.messages = pick([
          user("hi"),
          [],
          [{ role: "user" }],
          junk(),
          [{ role: "user", content: junk() }],
        ]);
      if (rng.nextFloat() < 0.3) body.prompt = pick(["hi", junk(), ["a", "b"]]);
      for (let i = rng.nextInt(4); i > 0; i--) body[pick(fields)] = junk();
      body.max_tokens ??= pick([1, 2, -1, 0, 1e12, "3"]);
      const text = JSON.stringify(body);
      return kind === 2 ? text.slice(0, rng.nextInt(text.length)) : text;
    };
    const paths = [
      "/v1/chat/completions",
      "/v1/completions",
      "/v1/chat/completions",
      "/v1/models",
      "/v1/models/%00",
      "/health",
      "/v1/../etc/passwd",
      "/v1/completions?x=%zz",
    ];
    const methods = ["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH"];
    const contentTypes = [
      "application/json",
      "application/json",
      "application/json",
      "text/plain",
      "application/x-www-form-urlencoded",
      "",
      "application/json; charset=latin1",
    ];
    let crashed = 0;
    const statuses = new Map<number, number>();
    const one = () =>
      new Promise<void>((resolve, reject) => {
        const method = pick(methods);
        const body = method === "GET" ? undefined : bodies();
        const headers: Record<string, string> = {};
        const type = pick(contentTypes);
        if (type) headers["content-type"] = type;
        if (body !== undefined) headers["content-length"] = String(Buffer.byteLength(body));
        const req = httpRequest(
          { host: "127.0.0.1", port: server.port, path: pick(paths), method, headers },
          (res) => {
            let text = "";
            res.setEncoding("utf8");
            res.on("data", (d: string) => {
              text += d;
            });
            res.on("end", () => {
              const status = res.statusCode!;
              statuses.set(status, (statuses.get(status) ?? 0) + 1);
              try {
                expect(status, text).toBeLessThan(500);
                if (status >= 400) expectErrorShape(text, status);
                resolve();
              } catch (e) {
                reject(e);
              }
            });
          },
        );
        req.on("error", () => {
          crashed++;
          resolve();
        });
        req.end(body);
      });
    let next = 0;
    const worker = async () => {
      while (next < 1000) {
        next++;
        await one();
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
    expect(crashed).toBe(0);
    expect([...statuses.keys()].every((s) => s < 500)).toBe(true);
    expect(statuses.get(400)).toBeGreaterThan(100);
    expect(statuses.get(415)).toBeGreaterThan(10); // bodies not sent as application/json
    expect((await health()).status).toBe(200);
    expect(await chatText({ messages: user("still there?"), max_tokens: 3 })).not.toBe("");
  });
});

describe("smallhammer serve (CLI)", () => {
  /** Starts the CLI on a free port; resolves with the child and its base URL once it has loaded. */
  async function startCli(
    args: string[],
  ): Promise<{ child: ChildProcess; url: string; stderr: () => string; exit: Promise<number | null> }> {
    const child = spawn(
      process.execPath,
      [CLI, "serve", "-m", modelPath, "--port", "0", "-t", "1", "--template", "chatml", ...args],
      {
        cwd: ROOT,
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let stderr = "";
    const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    const url = await new Promise<string>((resolve, reject) => {
      child.stderr!.on("data", (d: Buffer) => {
        stderr += d;
        const m = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr);
        if (m && /loaded in/.test(stderr)) resolve(m[1]!);
      });
      exit.then(() => reject(new Error(`serve exited early: ${stderr}`)));
    });
    return { child, url, stderr: () => stderr, exit };
  }

  it("SIGTERM stops accepting, lets a streaming reply finish, then exits 0", async () => {
    const { child, url, stderr, exit } = await startCli(["--ctx", "512", "--grace", "60"]);
    const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: "x", maxRetries: 0 });
    const stream = await c.chat.completions.create({
      model: "tiny-chat",
      messages: user("hi"),
      max_tokens: 300,
      stream: true,
      seed: 1, // a fixed draw: an unseeded one may sample the end token within 300 tokens
    });
    let text = "";
    let finish: string | null = null;
    let signalled = false;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (!signalled && text.length > 0) {
        signalled = true;
        child.kill("SIGTERM");
        // New connections are refused once the server stops listening.
        await until(async () => {
          try {
            await fetch(`${url}/health`);
            return false;
          } catch {
            return true;
          }
        }, "the server stops accepting connections");
      }
    }
    expect(finish).toBe("length");
    expect(await exit).toBe(0);
    expect(stderr()).toMatch(/SIGTERM: finishing requests in flight/);
  });

  it("past the grace period, requests still running end with an error event", async () => {
    const { child, url, exit } = await startCli(["--ctx", "512", "--grace", "0", "--parallel", "1"]);
    const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: "x", maxRetries: 0 });
    const result = chatStreamUntilSignal(c, child);
    const e = await result.catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OpenAI.APIError);
    expect((e as APIError).message).toMatch(/shutting down/);
    expect(await exit).toBe(0);
  });

  it("a bad flag or model file is one line and exit 2", async () => {
    const { spawnSync } = await import("node:child_process");
    const r = spawnSync(process.execPath, [CLI, "serve", "-m", join(dir, "missing.gguf")], {
      encoding: "utf8",
    });
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    const l = spawnSync(
      process.execPath,
      [CLI, "serve", "-m", modelPath, "--port", "0", "--lora", "a.gguf"],
      {
        encoding: "utf8",
      },
    );
    expect(l.status).toBe(2);
    expect(l.stderr.trim().split("\n").at(-1)).toMatch(/^smallhammer: .*a\.gguf/);
    expect(l.stderr).not.toMatch(/\n\s+at\s/);
  });
});

/** Streams a long reply, sends SIGTERM at the first text, and reads on until the stream ends. */
async function chatStreamUntilSignal(c: OpenAI, child: ChildProcess) {
  const stream = await c.chat.completions.create({
    model: "tiny-chat",
    messages: user("hi"),
    max_tokens: 400,
    stream: true,
  });
  let signalled = false;
  for await (const chunk of stream) {
    if (!signalled && chunk.choices[0]?.delta.content) {
      signalled = true;
      child.kill("SIGTERM");
    }
  }
}
