// One engine measured in its own process (so peak RSS is its own): prefill of P tokens, then
// decode of D tokens, best of R repetitions after a warm-up. Prints one JSON line.
import { LlamaModel } from "../model/llama.js";

const [engine, path, threadsArg, prefillArg, decodeArg, repsArg] = process.argv.slice(2);
const threads = Number(threadsArg);
const P = Number(prefillArg);
const D = Number(decodeArg);
const reps = Number(repsArg ?? 2);
const prompt = Array.from({ length: P }, (_, i) => 300 + ((i * 7919) % 30000));

function argmax(l: Float32Array): number {
  let b = 0;
  for (let i = 1; i < l.length; i++) if (l[i]! > l[b]!) b = i;
  return b;
}

function maxRssBytes(): number {
  return process.resourceUsage().maxRSS * 1024;
}

async function ours() {
  const t0 = performance.now();
  const m = await LlamaModel.load(path!, { threads, contextSize: P + D + 8, batchSize: Math.min(P, 128) });
  const loadSeconds = (performance.now() - t0) / 1000;
  m.forward(prompt.slice(0, 8), 0); // warm-up
  let prefill = 0;
  let decode = 0;
  for (let r = 0; r < reps; r++) {
    const a = performance.now();
    let logits = m.forward(prompt, 0);
    const b = performance.now();
    for (let i = 0; i < D; i++) logits = m.forward([argmax(logits)], P + i);
    const c = performance.now();
    prefill = Math.max(prefill, (P * 1000) / (b - a));
    decode = Math.max(decode, (D * 1000) / (c - b));
  }
  const shards = m.shardCount;
  await m.dispose();
  return { prefill, decode, loadSeconds, shards };
}

async function llamaCpp() {
  const { getLlama } = await import("node-llama-cpp");
  const llama = await getLlama({ gpu: false, build: "never" });
  const t0 = performance.now();
  const model = await llama.loadModel({ modelPath: path! });
  const ctx = await model.createContext({ contextSize: P + D + 8, batchSize: Math.min(P, 128), threads });
  const loadSeconds = (performance.now() - t0) / 1000;
  const seq = ctx.getSequence();
  await seq.evaluateWithoutGeneratingNewTokens(prompt.slice(0, 8) as never); // warm-up
  let prefill = 0;
  let decode = 0;
  for (let r = 0; r < reps; r++) {
    await seq.clearHistory();
    const a = performance.now();
    await seq.evaluateWithoutGeneratingNewTokens(prompt as never);
    const b = performance.now();
    // Decode: one token per evaluation, as generation does; sampling is left out on both sides
    // (ours takes an argmax in JS, a few microseconds).
    for (let k = 0; k < D; k++) await seq.evaluateWithoutGeneratingNewTokens([prompt[k % P]!] as never);
    const c = performance.now();
    prefill = Math.max(prefill, (P * 1000) / (b - a));
    decode = Math.max(decode, (D * 1000) / (c - b));
  }
  await ctx.dispose();
  await model.dispose();
  return { prefill, decode, loadSeconds, shards: 0 };
}

const result = engine === "ours" ? await ours() : await llamaCpp();
process.stdout.write(`${JSON.stringify({ ...result, maxRss: maxRssBytes() })}\n`);
process.exit(0);
