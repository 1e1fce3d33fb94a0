// perplexity and KL divergence by llama-perplexity's method, checked against llama.cpp's own
// next-token probabilities (through node-llama-cpp) on the same chunks of the same tokens.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, type Llama } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { perplexity } from "../src/eval/perplexity.js";
import { Model } from "../src/model/model.js";
import { quantizeModel } from "../src/quant/quantize-model.js";
import { ensureBuilt, expectOk, ROOT, runCli } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

const CTX = 64;
const CHUNKS = 5;
/** The tiny model's vocabulary: 3 special, 256 byte and the default pieces. */
let VOCAB: number;
let dir: string;
let llama: Llama;
let f32: string;
let q8: string;
let q4: string;
let textFile: string;
let text: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "sh-ppl-"));
  llama = await getLlama({ gpu: false, build: "never", logLevel: "error" as never });
  f32 = join(dir, "tiny-f32.gguf");
  writeTinyLlama(f32, { dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 128, seed: 3, weightScale: 0.15 });
  q8 = join(dir, "tiny-q8_0.gguf");
  q4 = join(dir, "tiny-q4_0.gguf");
  await quantizeModel(f32, q8, "q8_0");
  await quantizeModel(f32, q4, "q4_0");
  text = readFileSync(join(ROOT, "test", "fixtures", "tinyshakespeare.txt"), "utf8").slice(0, 2500);
  textFile = join(dir, "text.txt");
  writeFileSync(textFile, text);
});
afterAll(async () => {
  await llama?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * llama.cpp's next-token distributions over the scored half of each chunk, as llama-perplexity
 * evaluates them: each chunk from an empty cache, its first token replaced by BOS.
 */
async function llamaCppDistributions(path: string, tokens: number[], chunks: number) {
  const model = await llama.loadModel({ modelPath: path });
  try {
    const ctx = await model.createContext({
      contextSize: CTX,
      threads: 2,
      experimentalKvCacheKeyType: "F32",
      experimentalKvCacheValueType: "F32",
      // Flash attention rounds through f16; without it, llama.cpp's f32 arithmetic is ours.
      flashAttention: false,
    });
    const seq = ctx.getSequence();
    const rows: { next: number; probs: Float64Array }[] = [];
    const first = CTX >> 1;
    for (let c = 0; c < chunks; c++) {
      const chunk = tokens.slice(c * CTX, (c + 1) * CTX);
      chunk[0] = 1; // BOS
      await seq.clearHistory();
      const input = chunk.map((t, i) =>
        i >= first && i <= CTX - 2 ? ([t, { generateNext: { probabilities: true } }] as const) : t,
      );
      const out = await seq.controlledEvaluate(input as never);
      for (let i = first; i <= CTX - 2; i++) {
        const map = out[i]!.next.probabilities!;
        expect(map.size).toBe(VOCAB);
        const probs = new Float64Array(VOCAB);
        for (const [t, p] of map) probs[t as number] = p;
        rows.push({ next: chunk[i + 1]!, probs });
      }
    }
    await ctx.dispose();
    return rows;
  } finally {
    await model.dispose();
  }
}

/** Perplexity and its ± from per-token probabilities of the actual next tokens, plainly. */
function pplOf(rows: { next: number; probs: Float64Array }[]) {
  const nll = rows.map((r) => -Math.log(r.probs[r.next]!));
  const mean = nll.reduce((a, b) => a + b, 0) / nll.length;
  const mean2 = nll.reduce((a, b) => a + b * b, 0) / nll.length;
  const ppl = Math.exp(mean);
  return { ppl, error: ppl * Math.sqrt((mean2 - mean * mean) / (nll.length - 1)) };
}

function argmax(p: Float64Array): number {
  let best = 0;
  for (let i = 1; i < p.length; i++) if (p[i]! > p[best]!) best = i;
  return best;
}

async function textTokens(path: string): Promise<number[]> {
  const m = await Model.load(path, { threads: 1 });
  VOCAB = m.config.vocab;
  try {
    return m.tokenize(text);
  } finally {
    await m.dispose();
  }
}

const near = (ours: number, ref: number, rel: number) =>
  expect(Math.abs(ours - ref), `${ours} against ${ref}`).toBeLessThanOrEqual(rel * Math.abs(ref));

describe("perplexity", () => {
  it("equals llama.cpp's on the same chunks (f32 and q8_0), batch size and threads aside", async () => {
    const tokens = await textTokens(f32);
    expect(tokens[0]).toBe(1);
    expect(tokens.length).toBeGreaterThanOrEqual(CHUNKS * CTX);
    for (const path of [f32, q8]) {
      const ref = pplOf(await llamaCppDistributions(path, tokens, CHUNKS));
      const ours = await perplexity(path, text, { ctx: CTX, chunks: CHUNKS, batch: 16, threads: 2 });
      expect(ours.chunks).toBe(CHUNKS);
      expect(ours.scoredTokens).toBe(CHUNKS * (CTX - 1 - CTX / 2));
      expect(ours.textTokens).toBe(tokens.length);
      near(ours.ppl, ref.ppl, 0.001);
      near(ours.pplError, ref.error, 0.001);
      // One batch per chunk and one thread: the same figures.
      const whole = await perplexity(path, text, { ctx: CTX, chunks: CHUNKS, threads: 1 });
      near(whole.ppl, ours.ppl, 1e-5);
    }
  });

  it("KL divergence, Δppl and same-top against the base equal llama.cpp's (q4_0 against f32)", async () => {
    const tokens = await textTokens(f32);
    const base = await llamaCppDistributions(f32, tokens, CHUNKS);
    const quant = await llamaCppDistributions(q4, tokens, CHUNKS);
    const klds = base.map((b, t) => {
      const q = quant[t]!.probs;
      let sum = 0;
      for (let i = 0; i < b.probs.length; i++) {
        if (b.probs[i]! > 0) sum += b.probs[i]! * (Math.log(b.probs[i]!) - Math.log(q[i]!));
      }
      return sum;
    });
    const refKld = klds.reduce((a, b) => a + b, 0) / klds.length;
    const refSame = base.filter((b, t) => argmax(b.probs) === argmax(quant[t]!.probs)).length / base.length;
    const refQ = pplOf(quant);
    const refB = pplOf(base);

    const progress: number[] = [];
    const ours = await perplexity(q4, text, {
      ctx: CTX,
      chunks: CHUNKS,
      batch: 32,
      threads: 2,
      klDivergenceBase: f32,
      onChunk: (p) => progress.push(p.chunk),
    });
    expect(progress).toEqual([1, 2, 3, 4, 5]);
    const kl = ours.kl!;
    near(ours.ppl, refQ.ppl, 0.001);
    near(kl.basePpl, refB.ppl, 0.001);
    // Differences of two figures each within 0.1%: within 0.2% of the perplexity.
    expect(Math.abs(kl.deltaPpl - (refQ.ppl - refB.ppl))).toBeLessThanOrEqual(0.002 * refB.ppl);
    expect(Math.abs(kl.lnRatio - Math.log(refQ.ppl / refB.ppl))).toBeLessThanOrEqual(0.002);
    expect(kl.kld.mean).toBeGreaterThan(0);
    near(kl.kld.mean, refKld, 0.005);
    // A token whose two best candidates lie within rounding of each other may go either way.
    const n = base.length;
    expect(Math.abs(Math.round(kl.sameTop * n) - Math.round(refSame * n))).toBeLessThanOrEqual(1);
    expect(kl.sameTop).toBeLessThan(1);
    // The quantiles are ordered and lie within the extremes.
    const q = kl.kld.percentiles;
    const ordered = [
      kl.kld.min,
      q["0.1"],
      q["1"],
      q["5"],
      q["10"],
      kl.kld.median,
      q["90"],
      q["95"],
      q["99"],
      q["99.9"],
      kl.kld.max,
    ];
    for (let i = 1; i < ordered.length; i++) expect(ordered[i]!).toBeGreaterThanOrEqual(ordered[i - 1]!);
  });

  it("a model against itself: KL divergence 0, same top token everywhere, Δppl 0", async () => {
    const r = await perplexity(q8, text, { ctx: CTX, chunks: 3, klDivergenceBase: q8, threads: 1 });
    const kl = r.kl!;
    expect(kl.kld.mean).toBe(0);
    expect(kl.kld.max).toBe(0);
    expect(kl.sameTop).toBe(1);
    expect(kl.deltaPpl).toBe(0);
    expect(kl.lnRatio).toBe(0);
    expect(kl.basePpl).toBe(r.ppl);
  });

  it("a loaded model is used as it is, when it was loaded for scoring", async () => {
    const m = await Model.load(f32, { threads: 1, contextSize: CTX, batchSize: CTX, logitsAll: true });
    try {
      const a = await perplexity(m, text, { ctx: CTX, chunks: 2 });
      const b = await perplexity(f32, text, { ctx: CTX, chunks: 2, threads: 1 });
      expect(a.ppl).toBe(b.ppl);
    } finally {
      await m.dispose();
    }
    const plain = await Model.load(f32, { threads: 1 });
    try {
      await expect(perplexity(plain, text, { ctx: CTX })).rejects.toThrow(/logitsAll/);
    } finally {
      await plain.dispose();
    }
  });
});

describe("smallhammer perplexity", () => {
  beforeAll(() => ensureBuilt());

  it("prints the running estimate and the final figure; --json has the same figures", async () => {
    const args = ["perplexity", "-m", q8, "-f", textFile, "--ctx", String(CTX), "--chunks", "3", "-t", "1"];
    const out = await runCli(args);
    expectOk(out);
    const lines = out.stdout.trim().split("\n");
    expect(lines.slice(0, 3).map((l) => l.slice(0, 6))).toEqual(["[1/3] ", "[2/3] ", "[3/3] "]);
    const json = await runCli([...args, "--json"]);
    expectOk(json);
    const r = JSON.parse(json.stdout);
    expect(r.chunks).toBe(3);
    expect(out.stdout).toContain(`perplexity: ${r.ppl.toFixed(4)} ± ${r.pplError.toFixed(4)}`);
    const lib = await perplexity(q8, text, { ctx: CTX, chunks: 3, threads: 1 });
    expect(r.ppl).toBeCloseTo(lib.ppl, 10);
  });

  it("--kl-divergence-base prints the KL divergence, its percentiles and the top-token agreement", async () => {
    const r = await runCli([
      "perplexity",
      "-m",
      q4,
      "-f",
      textFile,
      "-c",
      String(CTX),
      "--chunks",
      "2",
      "--kl-divergence-base",
      f32,
    ]);
    expectOk(r);
    expect(r.stdout).toMatch(/KL divergence: mean \d+\.\d{6} ± \d+\.\d{6}, median/);
    expect(r.stdout).toMatch(/KL divergence percentiles: 99\.9% \d/);
    expect(r.stdout).toMatch(/same top token: \d+\.\d\d ± \d+\.\d\d%/);
    expect(r.stdout).toMatch(/Δppl: -?\d+\.\d{6} ± \d+\.\d{6}/);
  });

  it("refuses, in one line, a text too short for two chunks, a base of another vocabulary, a missing file", async () => {
    const short = join(dir, "short.txt");
    writeFileSync(short, "hello world");
    const other = join(dir, "other.gguf");
    writeTinyLlama(other, { dim: 64, layers: 1, heads: 4, ffn: 128, pieces: ["▁", "a", "b"] });
    const cases: [string[], RegExp][] = [
      // --ctx within the model's training length (128): beyond it a warning line comes first
      [["-m", f32, "-f", short, "-c", "128"], /needs? at least 256/],
      [["-m", f32, "-f", textFile, "-c", "64", "--kl-divergence-base", other], /not a base of that model/],
      [["-m", f32, "-f", join(dir, "missing.txt"), "-c", "128"], /missing\.txt: no such file/],
      [["-m", f32, "-f", textFile, "-c", "2"], /--ctx must be an integer from 3/],
    ];
    for (const [args, message] of cases) {
      const r = await runCli(["perplexity", ...args]);
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
      expect(r.stderr).toMatch(message);
    }
  });
});
