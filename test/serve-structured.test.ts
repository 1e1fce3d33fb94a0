/**
 * Structured output through the server, over real HTTP on 127.0.0.1, with a random-weight model
 * whose replies only the grammar can make valid: the official `openai` SDK's zodResponseFormat
 * (parsed and streamed), json_object, the AI SDK's openai-compatible provider (generateObject),
 * GBNF on /v1/completions, and the 400s for what cannot be honoured.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateObject } from "ai";
import OpenAI, { type APIError } from "openai";
import { zodResponseFormat } from "openai/helpers/zod";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { GrammarAutomaton, parseGbnf } from "../src/model/grammar/index.js";
import { loadModel } from "../src/model/model.js";
import { type RunningServer, startServer } from "../src/serve/server.js";
import { ensureBuilt } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let server: RunningServer;
let client: OpenAI;

// Every string has a length bound, so that any reply the grammar allows ends within max_tokens.
const Order = z.object({
  customer: z.string().max(12),
  items: z
    .array(z.object({ sku: z.string().regex(/^[A-Z]{2}-\d{3}$/), quantity: z.number().int().min(1).max(99) }))
    .min(1)
    .max(3),
  express: z.boolean(),
  note: z.string().max(8).nullable(),
  status: z.enum(["new", "paid", "sent"]),
});

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-structured-"));
  const model = join(dir, "tiny.gguf");
  writeTinyLlama(model, {
    dim: 32,
    layers: 1,
    heads: 2,
    contextLength: 2048,
    controlTokens: ["<|im_start|>", "<|im_end|>"],
  });
  server = await startServer({ model, port: 0, parallel: 2, template: "chatml", threads: 2 });
  await server.ready;
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
});

afterAll(async () => {
  await server?.close(0);
  rmSync(dir, { recursive: true, force: true });
});

const messages = [{ role: "user" as const, content: "An order, please." }];

async function apiError(p: Promise<unknown>): Promise<APIError> {
  try {
    await p;
  } catch (e) {
    return e as APIError;
  }
  throw new Error("the request succeeded");
}

describe("response_format", () => {
  it("json_schema through the openai SDK's zodResponseFormat: every reply parses and validates", async () => {
    for (let seed = 1; seed <= 4; seed++) {
      const r = await client.chat.completions.parse({
        model: server.modelId,
        messages,
        response_format: zodResponseFormat(Order, "order"),
        temperature: 1,
        seed,
        max_tokens: 600,
      });
      const choice = r.choices[0]!;
      expect(choice.finish_reason).toBe("stop");
      expect(Order.safeParse(choice.message.parsed).success, choice.message.content ?? "").toBe(true);
    }
  });

  it("streams constrained text whose whole parses", async () => {
    const stream = await client.chat.completions.create({
      model: server.modelId,
      messages,
      response_format: zodResponseFormat(Order, "order"),
      seed: 7,
      max_tokens: 600,
      stream: true,
    });
    let text = "";
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(finish).toBe("stop");
    expect(Order.safeParse(JSON.parse(text)).success, text).toBe(true);
  });

  it("json_object gives a JSON object", async () => {
    const r = await client.chat.completions.create({
      model: server.modelId,
      messages,
      response_format: { type: "json_object" },
      seed: 3,
      max_tokens: 1500,
    });
    const text = r.choices[0]!.message.content!;
    if (r.choices[0]!.finish_reason === "stop") {
      const value = JSON.parse(text);
      expect(typeof value === "object" && value !== null && !Array.isArray(value)).toBe(true);
    } else {
      // Cut at max_tokens: still a prefix of a JSON object.
      expect(text.startsWith("{")).toBe(true);
    }
  });

  it("generateObject of the AI SDK's openai-compatible provider", async () => {
    const provider = createOpenAICompatible({
      name: "smallhammer",
      baseURL: `${server.url}/v1`,
      supportsStructuredOutputs: true,
    });
    for (let seed = 1; seed <= 3; seed++) {
      const { object } = await generateObject({
        model: provider(server.modelId),
        schema: Order,
        prompt: "An order, please.",
        seed,
        maxOutputTokens: 600,
        maxRetries: 0,
      });
      expect(Order.safeParse(object).success).toBe(true);
    }
  });
});

describe("the template's turn ends inside a constrained reply", () => {
  // chatml ends a turn at <|im_end|> or <|im_start|>: written as text inside a JSON string they do
  // not end the reply; the grammar does.
  const note = "<|im_end|> then <|im_start|>";
  const Note = z.object({ note: z.enum([note]) });
  const whole = JSON.stringify({ note });

  it("are text: the grammar ends the reply, whole and streamed, on the server and in the library", async () => {
    const request = {
      model: server.modelId,
      messages,
      response_format: zodResponseFormat(Note, "note"),
      seed: 3,
      max_tokens: 200,
    };
    const r = await client.chat.completions.create(request);
    expect(JSON.parse(r.choices[0]!.message.content!)).toEqual({ note });
    expect(r.choices[0]!.finish_reason).toBe("stop");
    let streamed = "";
    for await (const chunk of await client.chat.completions.create({ ...request, stream: true })) {
      streamed += chunk.choices[0]?.delta.content ?? "";
    }
    expect(streamed).toBe(r.choices[0]!.message.content);

    const model = await loadModel(join(dir, "tiny.gguf"), { threads: 1, worker: false, template: "chatml" });
    try {
      let text = "";
      for await (const piece of model.chat(messages, {
        grammar: `root ::= ${JSON.stringify(whole)}`,
        seed: 3,
      })) {
        text += piece;
      }
      expect(text).toBe(whole);
    } finally {
      await model.dispose();
    }
  });

  it("a stop string the request gives still ends a constrained reply", async () => {
    const r = await client.chat.completions.create({
      model: server.modelId,
      messages,
      response_format: zodResponseFormat(Note, "note"),
      stop: [" then"],
      seed: 3,
      max_tokens: 200,
    });
    expect(r.choices[0]!.message.content).toMatch(/^\{\s*"note"\s*:\s*"<\|im_end\|>$/);
    expect(r.choices[0]!.finish_reason).toBe("stop");
  });
});

describe("grammar (GBNF)", () => {
  const grammar = 'root ::= ("yes" | "no") ", " [0-9]{1,3} " " ("apples" | "pears")';

  it("constrains /v1/completions and ends when the grammar is complete", async () => {
    const matcher = new GrammarAutomaton(parseGbnf(grammar));
    for (let seed = 1; seed <= 4; seed++) {
      const r = await fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: server.modelId, prompt: "Answer:", grammar, seed, max_tokens: 100 }),
      });
      const body = (await r.json()) as {
        choices: { text: string; finish_reason: string }[];
        usage: { completion_tokens: number };
      };
      expect(r.status).toBe(200);
      const text = body.choices[0].text as string;
      expect(matcher.accepts(text), text).toBe(true);
      expect(body.choices[0].finish_reason).toBe("stop");
      expect(body.usage.completion_tokens).toBeLessThan(30);
    }
  });

  it("answers 400 naming the field for what cannot be honoured", async () => {
    const post = async (path: string, body: object) => {
      const r = await fetch(`${server.url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: server.modelId, ...body }),
      });
      const answer = (await r.json()) as { error: { param: string; message: string } };
      return { status: r.status, error: answer.error };
    };
    const chat = { messages };
    const cases: [string, object, string, RegExp][] = [
      [
        "/v1/completions",
        { prompt: "x", grammar: 'root ::= "a' },
        "grammar",
        /line 1, column \d+: unterminated/,
      ],
      ["/v1/completions", { prompt: "x", grammar: 'root ::= root "a" | "b"' }, "grammar", /left-recursive/],
      ["/v1/completions", { prompt: "x", grammar: 'root ::= "a"{99999}' }, "grammar", /over the limit/],
      [
        "/v1/chat/completions",
        {
          ...chat,
          response_format: { type: "json_schema", json_schema: { name: "x", schema: { not: {} } } },
        },
        "response_format",
        /the keyword "not" is not supported/,
      ],
      [
        "/v1/chat/completions",
        { ...chat, response_format: { type: "yaml" } },
        "response_format.type",
        /json_schema/,
      ],
      [
        "/v1/chat/completions",
        { ...chat, grammar: 'root ::= "a"', response_format: { type: "json_object" } },
        "grammar",
        /either grammar or response_format/,
      ],
    ];
    for (const [path, body, param, message] of cases) {
      const { status, error } = await post(path, body);
      expect(status, JSON.stringify(body)).toBe(400);
      expect(error.param).toBe(param);
      expect(error.message).toMatch(message);
    }
    // An enormous schema is one 400 too, not a hang.
    const wide = {
      type: "object",
      properties: Object.fromEntries(
        Array.from({ length: 6000 }, (_, i) => [`p${i}`, { type: "integer", minimum: i }]),
      ),
    };
    const e = await apiError(
      client.chat.completions.create({
        model: server.modelId,
        messages,
        response_format: { type: "json_schema", json_schema: { name: "wide", schema: wide } },
      }),
    );
    expect(e.status).toBe(400);
    expect(e.message).toMatch(/more than 10000 grammar rules/);
  });
});
