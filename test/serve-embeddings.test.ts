/**
 * /v1/embeddings with the official `openai` SDK over real HTTP, and llama.cpp's /detokenize:
 * vectors of unit length, equal for equal inputs, equal to the library's `embed` and to the pooled
 * hidden states computed here from LlamaModel.hiddenStates; the file's pooling type (mean when it
 * has none, last, none refused); texts, token arrays, floats and base64; bad input as 400s.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI, { type APIError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadModel, type Model } from "../src/model/model.js";
import { type RunningServer, startServer } from "../src/serve/server.js";
import { ensureBuilt } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
const servers: RunningServer[] = [];
const models: Model[] = [];

beforeAll(() => {
  ensureBuilt(); // the inference thread runs dist/serve/engine-worker.js
  dir = mkdtempSync(join(tmpdir(), "sh-serve-embeddings-"));
});

afterAll(async () => {
  for (const s of servers) await s.close(0);
  for (const m of models) await m.dispose();
  rmSync(dir, { recursive: true, force: true });
});

/** A tiny model with `pooling` (a GGUF pooling_type value) or none, served and loaded in the library. */
async function serve(name: string, pooling?: number) {
  const path = join(dir, `${name}.gguf`);
  writeTinyLlama(path, {
    dim: 64,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    seed: 3,
    weightScale: 0.2,
    contextLength: 256,
    metadataU32: pooling === undefined ? {} : { "llama.pooling_type": pooling },
  });
  const server = await startServer({ model: path, port: 0, parallel: 2, threads: 1, contextSize: 256 });
  servers.push(server);
  await server.ready;
  const model = await loadModel(path, { threads: 1, contextSize: 256, worker: false });
  models.push(model);
  const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
  return { server, model, client };
}

const norm = (v: ArrayLike<number>) => Math.hypot(...Array.from(v));

function expectClose(a: ArrayLike<number>, b: ArrayLike<number>, tolerance = 1e-5) {
  expect(a.length).toBe(b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  expect(worst).toBeLessThan(tolerance);
}

/** The unit-length mean or last of the hidden states of `ids`, computed here. */
function pooled(model: Model, ids: number[], how: "mean" | "last"): Float64Array {
  model.reset();
  const dim = model.config.dim;
  const states = new Float32Array(ids.length * dim);
  for (let p = 0; p < ids.length; p += model.llama.batchSize) {
    const chunk = ids.slice(p, p + model.llama.batchSize);
    states.set(model.llama.hiddenStates(chunk, p), p * dim);
  }
  const v = new Float64Array(dim);
  if (how === "last") for (let i = 0; i < dim; i++) v[i] = states[(ids.length - 1) * dim + i]!;
  else {
    for (let t = 0; t < ids.length; t++) for (let i = 0; i < dim; i++) v[i]! += states[t * dim + i]!;
  }
  const n = norm(v);
  return v.map((x) => x / n);
}

describe("/v1/embeddings", () => {
  it("mean pooling by default: unit vectors, equal for equal inputs, as the library and the states give", async () => {
    const { server, model, client } = await serve("mean");
    const inputs = ["the cat sat", "hello world", "the cat sat"];
    // The SDK asks for base64 and decodes it.
    const r = await client.embeddings.create({ model: server.modelId, input: inputs });
    expect(r.data.map((d) => d.index)).toEqual([0, 1, 2]);
    for (const d of r.data) {
      expect(d.embedding).toHaveLength(64);
      expect(norm(d.embedding)).toBeCloseTo(1, 5);
    }
    expect(r.data[2]!.embedding).toEqual(r.data[0]!.embedding);
    expect(r.data[1]!.embedding).not.toEqual(r.data[0]!.embedding);
    const ids = inputs.map((t) => model.tokenize(t, { addSpecial: true }));
    expect(r.usage.prompt_tokens).toBe(ids.flat().length);
    expect(r.usage.total_tokens).toBe(r.usage.prompt_tokens);
    for (let i = 0; i < 2; i++) {
      expectClose(r.data[i]!.embedding, await model.embed(inputs[i]!));
      expectClose(r.data[i]!.embedding, pooled(model, ids[i]!, "mean"));
    }

    // Floats, and token ids (one array, or several) for the same texts.
    const floats = await client.embeddings.create({
      model: server.modelId,
      input: "hello world",
      encoding_format: "float",
    });
    expect(floats.data[0]!.embedding).toEqual(r.data[1]!.embedding);
    const one = await client.embeddings.create({ model: server.modelId, input: ids[1]! });
    expect(one.data[0]!.embedding).toEqual(r.data[1]!.embedding);
    const several = await client.embeddings.create({ model: server.modelId, input: [ids[0]!, ids[1]!] });
    expect(several.data.map((d) => d.embedding)).toEqual([r.data[0]!.embedding, r.data[1]!.embedding]);

    // An input longer than one batch (128 tokens) is pooled over all its batches.
    const long = Array.from({ length: 200 }, (_, i) => 3 + 256 + (i % 40));
    const l = await client.embeddings.create({ model: server.modelId, input: long });
    expectClose(l.data[0]!.embedding, pooled(model, long, "mean"));
  }, 60_000);

  it("concurrent requests share forward passes and get exactly the vectors each gets alone", async () => {
    const server = servers[0]!;
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
    const long = Array.from({ length: 150 }, (_, i) => 3 + 256 + ((i * 7) % 40));
    const requests: (string | string[] | number[])[] = [
      "the cat sat on the mat",
      ["hello", "a longer sentence about the world and the cat"],
      long,
      "hello world",
      ["b", "the dog"],
    ];
    const vectors = (r: { data: { embedding: number[] }[] }) => r.data.map((d) => d.embedding);
    const alone = [];
    for (const input of requests) {
      alone.push(vectors(await client.embeddings.create({ model: server.modelId, input })));
    }
    const together = await Promise.all(
      requests.map((input) => client.embeddings.create({ model: server.modelId, input })),
    );
    expect(together.map(vectors)).toEqual(alone);
  }, 60_000);

  it("the file's pooling_type: last is the last token's state; none is refused", async () => {
    const { server, model, client } = await serve("last", 3);
    expect(model.poolingType).toBe("last");
    const r = await client.embeddings.create({ model: server.modelId, input: "hello world" });
    const ids = model.tokenize("hello world", { addSpecial: true });
    expectClose(r.data[0]!.embedding, pooled(model, ids, "last"));
    expectClose(r.data[0]!.embedding, await model.embed("hello world"));

    const none = await serve("none", 0);
    const e = (await none.client.embeddings
      .create({ model: none.server.modelId, input: "hi" })
      .catch((x: unknown) => x)) as APIError;
    expect(e.status).toBe(400);
    expect(e.message).toMatch(/pooling type is none/);
    await expect(none.model.embed("hi")).rejects.toThrow(/pooling type is none/);
  }, 60_000);

  it("bad input: 400 naming the field", async () => {
    const { server } = servers.length ? { server: servers[0]! } : await serve("mean2");
    const post = async (body: unknown) => {
      const res = await fetch(`${server.url}/v1/embeddings`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      return {
        status: res.status,
        error: ((await res.json()) as { error: { param: string; message: string } }).error,
      };
    };
    const model = server.modelId;
    expect(await post({ model, input: ["a", ""] })).toMatchObject({
      status: 400,
      error: { param: "input[1]" },
    });
    expect(await post({ model, input: [1, 99999] })).toMatchObject({
      status: 400,
      error: { param: "input[0]" },
    });
    expect(await post({ model, input: [] })).toMatchObject({ status: 400, error: { param: "input" } });
    const long = await post({ model, input: Array.from({ length: 300 }, () => 5) });
    expect(long).toMatchObject({ status: 400, error: { param: "input[0]" } });
    expect(long.error.message).toMatch(/300 tokens, more than the context of 256/);
    expect(await post({ model, input: "a", dimensions: 32 })).toMatchObject({
      status: 400,
      error: { param: "dimensions" },
    });
    expect(await post({ model, input: "a", encoding_format: "int8" })).toMatchObject({
      status: 400,
      error: { param: "encoding_format" },
    });
    expect(await post({ model, input: "a", truncate: true })).toMatchObject({
      status: 400,
      error: { param: "truncate" },
    });
    expect(await post({ model: "other", input: "a" })).toMatchObject({ status: 404 });
  }, 60_000);
});

describe("/detokenize", () => {
  it("turns /tokenize's ids back into text, and names a bad id", async () => {
    const server = servers[0]!;
    const post = (path: string, body: unknown) =>
      fetch(`${server.url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    const { tokens } = (await (await post("/tokenize", { prompt: "hello world" })).json()) as {
      tokens: number[];
    };
    const r = await post("/detokenize", { tokens: tokens.slice(1) }); // without BOS
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ content: "hello world" });
    expect(await (await post("/detokenize", { tokens: [] })).json()).toEqual({ content: "" });
    const bad = await post("/detokenize", { tokens: [5, 1_000_000] });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { param: string } }).error.param).toBe("tokens[1]");
  });
});
