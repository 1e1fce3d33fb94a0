// Run by serve.test.ts as `node --expose-gc serve-memory.mjs MODEL ROUNDS`: serves MODEL in this
// process, runs ROUNDS rounds of 16 streaming clients that read a little and hang up, and prints
// one JSON line per round with the JS heap in use after a full collection and the process RSS.
import OpenAI from "openai";
import { startServer } from "../../dist/serve/server.js";

const [model, rounds] = [process.argv[2], Number(process.argv[3] ?? 20)];
const server = await startServer({
  model,
  port: 0,
  parallel: 16,
  queue: 16,
  contextSize: 512,
  template: "chatml",
  threads: 1,
});
await server.ready;
const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "x", maxRetries: 0 });
const models = await client.models.list();
const id = models.data[0].id;

async function round() {
  const controllers = Array.from({ length: 16 }, () => new AbortController());
  const streams = controllers.map((ac, i) =>
    client.chat.completions.create(
      {
        model: id,
        messages: [{ role: "user", content: `go on ${i}` }],
        max_tokens: 400,
        seed: i,
        stream: true,
      },
      { signal: ac.signal },
    ),
  );
  for (const s of streams) {
    for await (const _ of await s) break;
  }
  for (const ac of controllers) ac.abort();
  await Promise.allSettled(streams);
  while (server.stats().busy > 0 || server.stats().requests > 0) await new Promise((r) => setTimeout(r, 10));
}

for (let i = 0; i < rounds; i++) {
  await round();
  globalThis.gc();
  globalThis.gc();
  const m = process.memoryUsage();
  process.stdout.write(`${JSON.stringify({ round: i + 1, heapUsed: m.heapUsed, rss: m.rss })}\n`);
}
await server.close();
