/**
 * Log-probabilities and several replies per prompt on the server, with the official `openai` SDK
 * over real HTTP: chat's logprobs.content and completions' legacy shape, whole and streamed, equal
 * the log-softmax of the model's logits at each step as the library computes them; n = 3 with a
 * seed gives three choices (indexes 0..2), reply i being the one seed + i gives alone; fields the
 * server does not support answer 400 naming them.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI, { type APIError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadModel, type Model } from "../src/model/model.js";
import { writeRandomLlama } from "../src/model/random-llama.js";
import { tokenString } from "../src/serve/openai.js";
import { type RunningServer, startServer } from "../src/serve/server.js";
import { ensureBuilt } from "./helpers/cli.js";

let dir: string;
let modelPath: string;
let server: RunningServer;
let client: OpenAI;
let model: Model;
const PARALLEL = 4;

beforeAll(async () => {
  ensureBuilt(); // the inference thread runs dist/serve/engine-worker.js
  dir = mkdtempSync(join(tmpdir(), "sh-serve-logprobs-"));
  modelPath = join(dir, "tiny-chat.gguf");
  writeRandomLlama(
    modelPath,
    { name: "tiny", dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 192, vocab: 32000, contextLength: 512 },
    "f32",
  );
  server = await startServer({
    model: modelPath,
    port: 0,
    parallel: PARALLEL,
    contextSize: 512,
    template: "chatml",
    threads: 2,
  });
  await server.ready;
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
  model = await loadModel(modelPath, { threads: 1, contextSize: 512, template: "chatml", worker: false });
}, 120_000);

afterAll(async () => {
  await server?.close(0);
  await model?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

const user = (content: string) => [{ role: "user" as const, content }];

/** log-softmax in float64, the reference the server's values are checked against. */
function logSoftmax(logits: Float32Array): Float64Array {
  let max = Number.NEGATIVE_INFINITY;
  for (const l of logits) max = Math.max(max, l);
  let sum = 0;
  for (const l of logits) sum += Math.exp(l - max);
  const logZ = max + Math.log(sum);
  return Float64Array.from(logits, (l) => l - logZ);
}

/**
 * Greedy decoding of `prompt` with the library's model, `steps` tokens: at each step the chosen
 * token, its log-probability and the `top` best alternatives.
 */
function greedySteps(prompt: number[], steps: number, top: number) {
  const out: { id: number; logprob: number; top: { id: number; logprob: number }[] }[] = [];
  model.reset();
  let logits = model.llama.forward(prompt, 0);
  for (let s = 0; s < steps; s++) {
    const lp = logSoftmax(logits);
    const order = Array.from(lp.keys()).sort((a, b) => lp[b]! - lp[a]! || a - b);
    out.push({
      id: order[0]!,
      logprob: lp[order[0]!]!,
      top: order.slice(0, top).map((id) => ({ id, logprob: lp[id]! })),
    });
    logits = model.llama.forward([order[0]!], prompt.length + s);
  }
  return out;
}

const text = (id: number) => tokenString(model.tokenizer.tokenToPiece(id));

describe("logprobs", () => {
  it("chat: logprobs.content holds each token's log-softmax and its top alternatives", async () => {
    const messages = user("Tell me about rivers");
    const r = await client.chat.completions.create({
      model: server.modelId,
      messages,
      max_tokens: 8,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
    });
    const content = r.choices[0]!.logprobs!.content!;
    expect(content).toHaveLength(r.usage!.completion_tokens);
    const expected = greedySteps(model.chatPromptTokens(messages), content.length, 3);
    content.forEach((c, i) => {
      const e = expected[i]!;
      expect(c.token, `step ${i}`).toBe(text(e.id));
      expect(c.bytes).toEqual(Array.from(model.tokenizer.tokenToPiece(e.id)));
      expect(c.logprob).toBeCloseTo(e.logprob, 4);
      expect(c.top_logprobs.map((t) => t.token)).toEqual(e.top.map((t) => text(t.id)));
      for (const [j, t] of c.top_logprobs.entries()) expect(t.logprob).toBeCloseTo(e.top[j]!.logprob, 4);
    });
    expect(content.map((c) => c.token).join("")).toBe(r.choices[0]!.message.content);

    // Streamed: the same entries, spread over the chunks that carry their text.
    const stream = await client.chat.completions.create({
      model: server.modelId,
      messages,
      max_tokens: 8,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
      stream: true,
    });
    const streamed: OpenAI.ChatCompletionTokenLogprob[] = [];
    for await (const chunk of stream) streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []));
    expect(streamed.map((c) => [c.token, c.logprob])).toEqual(content.map((c) => [c.token, c.logprob]));

    // logprobs without top_logprobs: each token's own, no alternatives.
    const plain = await client.chat.completions.create({
      model: server.modelId,
      messages,
      max_tokens: 3,
      temperature: 0,
      logprobs: true,
    });
    expect(plain.choices[0]!.logprobs!.content!.map((c) => c.top_logprobs)).toEqual([[], [], []]);
    const none = await client.chat.completions.create({ model: server.modelId, messages, max_tokens: 2 });
    expect(none.choices[0]!.logprobs).toBeNull();
  }, 60_000);

  it("sampled tokens (temperature 1) get the log-softmax of the raw logits too", async () => {
    const prompt = "w300 w301 w302";
    const r = await client.completions.create({
      model: server.modelId,
      prompt,
      max_tokens: 6,
      temperature: 1,
      seed: 3,
      logprobs: 0,
    });
    const lp = r.choices[0]!.logprobs!;
    const ids = model.tokenize(prompt, { addSpecial: true });
    model.reset();
    let logits = model.llama.forward(ids, 0);
    lp.tokens!.forEach((token, i) => {
      const ls = logSoftmax(logits);
      // The sampled token: the one whose text the server named (the vocabulary's pieces are unique).
      const id = Array.from(ls.keys()).find((t) => text(t) === token)!;
      expect(lp.token_logprobs![i]).toBeCloseTo(ls[id]!, 4);
      logits = model.llama.forward([id], ids.length + i);
    });
  }, 60_000);

  it("completions: the legacy shape, whole and streamed", async () => {
    const prompt = "w500 w501 w502 w503";
    const r = await client.completions.create({
      model: server.modelId,
      prompt,
      max_tokens: 6,
      temperature: 0,
      logprobs: 2,
    });
    const lp = r.choices[0]!.logprobs!;
    const expected = greedySteps(model.tokenize(prompt, { addSpecial: true }), lp.tokens!.length, 2);
    expect(lp.tokens).toEqual(expected.map((e) => text(e.id)));
    for (const [i, l] of lp.token_logprobs!.entries()) expect(l).toBeCloseTo(expected[i]!.logprob, 4);
    lp.top_logprobs!.forEach((top, i) => {
      // The two best, and the chosen token (here the best itself).
      expect(Object.keys(top).sort()).toEqual(expected[i]!.top.map((t) => text(t.id)).sort());
    });
    // Offsets of each token in the returned text.
    const reply = r.choices[0]!.text;
    for (const [i, o] of lp.text_offset!.entries())
      expect(reply.slice(o).startsWith(lp.tokens![i]!)).toBe(true);

    const stream = await client.completions.create({
      model: server.modelId,
      prompt,
      max_tokens: 6,
      temperature: 0,
      logprobs: 2,
      stream: true,
    });
    const tokens: string[] = [];
    const offsets: number[] = [];
    for await (const chunk of stream) {
      tokens.push(...(chunk.choices[0]?.logprobs?.tokens ?? []));
      offsets.push(...(chunk.choices[0]?.logprobs?.text_offset ?? []));
    }
    expect(tokens).toEqual(lp.tokens);
    expect(offsets).toEqual(lp.text_offset);
  }, 60_000);
});

describe("n > 1", () => {
  it("n = 3 with a seed: three choices, indexes 0..2, reply i as seed + i gives it alone", async () => {
    const params = { model: server.modelId, messages: user("Name a town"), max_tokens: 6, seed: 7 };
    const r = await client.chat.completions.create({ ...params, n: 3 });
    expect(r.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    const texts = r.choices.map((c) => c.message.content);
    expect(new Set(texts).size).toBeGreaterThan(1);
    for (let i = 0; i < 3; i++) {
      const alone = await client.chat.completions.create({ ...params, seed: 7 + i });
      expect(alone.choices[0]!.message.content, `reply ${i}`).toBe(texts[i]);
    }
    // The prompt counts once, the replies' tokens add up.
    const one = await client.chat.completions.create({ ...params, n: 1 });
    expect(r.usage!.prompt_tokens).toBe(one.usage!.prompt_tokens);
    expect(r.usage!.completion_tokens).toBe(18);

    // Streamed: each index starts with the assistant role, gets its text and its own finish.
    const stream = await client.chat.completions.create({
      ...params,
      n: 3,
      stream: true,
      stream_options: { include_usage: true },
    });
    const got = ["", "", ""];
    const roles: number[] = [];
    const finishes: number[] = [];
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        if (c.delta.role) roles.push(c.index);
        got[c.index] += c.delta.content ?? "";
        if (c.finish_reason) finishes.push(c.index);
      }
    }
    expect(roles.sort()).toEqual([0, 1, 2]);
    expect(finishes.sort()).toEqual([0, 1, 2]);
    expect(got).toEqual(texts);
    expect(usage?.completion_tokens).toBe(18);

    // Completions too, with logprobs per choice.
    const c = await client.completions.create({
      model: server.modelId,
      prompt: "w700",
      max_tokens: 4,
      seed: 11,
      n: 2,
      logprobs: 1,
    });
    expect(c.choices.map((x) => x.index)).toEqual([0, 1]);
    for (const x of c.choices) expect(x.logprobs!.tokens!.join("")).toBe(x.text);
  }, 60_000);

  it("n above --parallel is a 400 naming n", async () => {
    const e = (await client.chat.completions
      .create({ model: server.modelId, messages: user("hi"), n: PARALLEL + 1 })
      .catch((x: unknown) => x)) as APIError;
    expect(e.status).toBe(400);
    expect((e.error as { param?: string }).param).toBe("n");
    expect(e.message).toMatch(/--parallel/);
  });
});

describe("fields the server does not support", () => {
  async function refused(body: Record<string, unknown>, path = "/v1/chat/completions") {
    const res = await fetch(`${server.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: server.modelId,
        ...(path === "/v1/completions" ? { prompt: "hi" } : { messages: user("hi") }),
        ...body,
      }),
    });
    expect(res.status).toBe(400);
    return ((await res.json()) as { error: { message: string; param: string | null } }).error;
  }

  it("answer 400 naming the field", async () => {
    expect((await refused({ logit_bias: { "5": 10 } })).param).toBe("logit_bias");
    expect((await refused({ frequency_penalty: 0.5 })).param).toBe("frequency_penalty");
    expect((await refused({ top_logprobs: 2 })).param).toBe("top_logprobs");
    expect((await refused({ logprobs: true, top_logprobs: 21 })).param).toBe("top_logprobs");
    const e = await refused({ service_tier: "flex" });
    expect(e.param).toBe("service_tier");
    expect(e.message).toMatch(/service_tier.*not supported/);
    expect((await refused({ echo: true }, "/v1/completions")).param).toBe("echo");
    expect((await refused({ logprobs: true }, "/v1/completions")).param).toBe("logprobs");
  });
});
