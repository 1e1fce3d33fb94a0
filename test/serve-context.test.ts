/**
 * Replies and the context, on a model whose context is 256 tokens (the quickstart's size), over
 * real HTTP: a chat request without max_tokens runs to the end of the context; a prompt that
 * alone does not fit is a 400 with the counts; GET /props gives the context size and POST
 * /tokenize counts a chat's prompt as the completion endpoints do, which is what the chat page
 * needs to keep a conversation within the context.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI, { type APIError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeRandomLlama } from "../src/model/random-llama.js";
import { type RunningServer, startServer } from "../src/serve/server.js";
import { ensureBuilt } from "./helpers/cli.js";

const CTX = 256;
let dir: string;
let server: RunningServer;
let client: OpenAI;

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-serve-context-"));
  const model = join(dir, "small-ctx.gguf");
  writeRandomLlama(
    model,
    { name: "small", dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 192, vocab: 32000, contextLength: CTX },
    "f32",
  );
  // No contextSize: the server takes the file's 256.
  server = await startServer({ model, port: 0, parallel: 2, template: "chatml", threads: 1 });
  await server.ready;
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "x", maxRetries: 0 });
});

afterAll(async () => {
  await server?.close(0);
  rmSync(dir, { recursive: true, force: true });
});

const post = async (path: string, body: unknown) => {
  const r = await fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  // biome-ignore lint/suspicious/noExplicitAny: the fields read are checked by the assertions
  return { status: r.status, body: (await r.json()) as Record<string, any> };
};

describe("the context of a small model", () => {
  it("GET /props gives the model, its context size and its chat template", async () => {
    const r = await fetch(`${server.url}/props`);
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ model: "small-ctx", n_ctx: CTX, slots: 2, chat_template: "chatml" });
  });

  it("without max_tokens a chat reply runs until the context is full", async () => {
    const messages = [{ role: "user" as const, content: "tell me a long story" }];
    const r = await client.chat.completions.create({ model: "small-ctx", messages, seed: 11 });
    expect(r.choices[0]!.finish_reason).toBe("length");
    expect(r.usage!.total_tokens).toBe(CTX);
    expect(r.usage!.completion_tokens).toBeGreaterThan(100);
    // Streamed, with the usage the chat page reads to show how much of the context is taken.
    const stream = await client.chat.completions.create({
      model: "small-ctx",
      messages,
      seed: 11,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let finish: string | null = null;
    let used: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
      used = chunk.usage ?? used;
    }
    expect(text).toBe(r.choices[0]!.message.content);
    expect(finish).toBe("length");
    expect(used).toEqual(r.usage);
  });

  it("a prompt that alone does not fit is a 400 with the counts; so is one that leaves no room for max_tokens", async () => {
    const long = [{ role: "user" as const, content: "w7 ".repeat(300) }];
    const e = (await client.chat.completions
      .create({ model: "small-ctx", messages: long })
      .catch((x: unknown) => x)) as APIError;
    expect(e).toBeInstanceOf(OpenAI.BadRequestError);
    expect(e.code).toBe("context_length_exceeded");
    expect(e.message).toMatch(
      new RegExp(
        `the prompt is \\d+ tokens; the context of ${CTX} tokens leaves room for a prompt of at most ${CTX - 1}`,
      ),
    );
    const short = [{ role: "user" as const, content: "hi" }];
    const e2 = (await client.chat.completions
      .create({ model: "small-ctx", messages: short, max_tokens: 512 })
      .catch((x: unknown) => x)) as APIError;
    expect(e2.code).toBe("context_length_exceeded");
    expect(e2.param).toBe("max_tokens");
    expect(e2.message).toMatch(/max_tokens asks for 512 more: \d+ tokens, over the context of 256/);
  });

  it("POST /tokenize counts a chat's prompt and a completion's prompt as the endpoints do", async () => {
    const messages = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "hello there, how is the world" },
      { role: "assistant", content: "fine" },
      { role: "user", content: "and then?" },
    ];
    const counted = await post("/tokenize", { model: "small-ctx", messages });
    expect(counted.status).toBe(200);
    expect(counted.body.max_model_len).toBe(CTX);
    expect(counted.body.tokens).toHaveLength(counted.body.count);
    const chat = await post("/v1/chat/completions", { model: "small-ctx", messages, max_tokens: 1 });
    expect(chat.body.usage.prompt_tokens).toBe(counted.body.count);

    const prompt = "once upon a time";
    const c = await post("/tokenize", { prompt });
    const completion = await post("/v1/completions", { model: "small-ctx", prompt, max_tokens: 1 });
    expect(c.body.count).toBe(completion.body.usage.prompt_tokens);

    for (const bad of [
      {},
      { prompt: "a", messages },
      { messages: [] },
      { prompt: 5 },
      { model: "other", prompt: "a" },
    ]) {
      const r = await post("/tokenize", bad);
      expect(r.status, JSON.stringify(bad)).toBe(bad.model === "other" ? 404 : 400);
      expect(Object.keys(r.body)).toEqual(["error"]);
    }
  });
});
