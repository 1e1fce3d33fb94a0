/**
 * Batch invariance, the ground continuous batching stands on: a sequence's logits must not depend
 * on which other sequences share its forward pass, nor on how its tokens are split into passes.
 * Kernels first (every matrix product, per token, against the same token alone), then
 * LlamaModel.forwardBatch against itself and against the single-sequence forward; then the
 * scheduler: generations and embedding jobs get what they get alone, whoever shares their passes.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { GGMLType } from "../src/formats/ggml-types.js";
import { metadataGetter } from "../src/model/config.js";
import { type BatchSegment, LlamaModel } from "../src/model/llama.js";
import type { LoraAdapter, LoraTensor } from "../src/model/lora.js";
import type { GenerationInfo } from "../src/model/model.js";
import type { WeightFormat } from "../src/runtime/backend.js";
import { BatchScheduler, type EmbeddingJob, type GenerationJob } from "../src/serve/scheduler.js";
import { Tokenizer } from "../src/tokenizer/index.js";
import { Rng } from "../src/util/random.js";
import { weightBytes } from "./helpers/kernel-modules.js";
import { type TinyLlama, writeTinyLlama } from "./helpers/tiny-llama.js";
import { WasmHarness } from "./helpers/wasm.js";

const T = GGMLType;

/** A random LoRA adapter on every projection of every layer of `tiny`. */
function randomAdapter(tiny: TinyLlama): LoraAdapter {
  const rng = new Rng(17);
  const tensors: LoraTensor[] = [];
  for (let l = 0; l < tiny.layers; l++) {
    for (const name of ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]) {
      const [inFeatures, outFeatures] = tiny.tensors.get(`blk.${l}.${name}.weight`)!.dims as [number, number];
      const rank = 13;
      tensors.push({
        base: `blk.${l}.${name}.weight`,
        rank,
        inFeatures,
        outFeatures,
        a: rng.fillNormal(new Float32Array(rank * inFeatures), 0.3),
        b: rng.fillNormal(new Float32Array(outFeatures * rank), 0.3),
      });
    }
  }
  return { architecture: "llama", alpha: 6, tensors };
}

/** Weight format -> [kernel, ggml type, activation quantizer or null]. */
const PRODUCTS: [WeightFormat, string, number, string | null][] = [
  ["F32", "matmulF32", T.F32, null],
  ["F16", "matmulF16", T.F16, null],
  ["BF16", "matmulBF16", T.BF16, null],
  ["Q4_0", "matmulQ4_0", T.Q4_0, "quantizeQ8_0"],
  ["Q4_1", "matmulQ4_1", T.Q4_1, "quantizeQ8_1"],
  ["Q5_0", "matmulQ5_0", T.Q5_0, "quantizeQ8_0"],
  ["Q5_1", "matmulQ5_1", T.Q5_1, "quantizeQ8_1"],
  ["Q8_0", "matmulQ8_0", T.Q8_0, "quantizeQ8_0"],
  ["Q4_K", "matmulQ4_K", T.Q4_K, "quantizeQ8_K"],
  ["Q5_K", "matmulQ5_K", T.Q5_K, "quantizeQ8_K"],
  ["Q6_K", "matmulQ6_K", T.Q6_K, "quantizeQ8_K"],
];

describe("matrix products used by forwardBatch", () => {
  it.each(PRODUCTS)(
    "%s: each token of a batch gets the bits it gets alone",
    (format, kernel, type, quant) => {
      const h = new WasmHarness(1024);
      const rng = new Rng(type + 11);
      const rows = 14; // not a multiple of 4: the one-row tiles are used too
      const cols = 512;
      const n = 11;
      const pw = h.putU8(weightBytes(format, type, rows, cols, rng));
      const x = rng.fillNormal(new Float32Array(n * cols));
      const input = (xs: Float32Array, count: number): number => {
        const px = h.putF32(xs);
        if (!quant) return px;
        const pq = h.alloc(count * cols * 4);
        h.k[quant]!(px, pq, cols, count, 0, count);
        return pq;
      };
      const batch = h.alloc(n * rows * 4);
      // two row ranges, as two threads would split them
      h.k[kernel]!(pw, input(x, n), batch, rows, cols, n, 0, 0, 8);
      h.k[kernel]!(pw, input(x, n), batch, rows, cols, n, 0, 8, rows);
      const all = new Uint32Array(h.f32(batch, n * rows).buffer);
      for (let t = 0; t < n; t++) {
        const one = h.alloc(rows * 4);
        h.k[kernel]!(pw, input(x.subarray(t * cols, (t + 1) * cols), 1), one, rows, cols, 1, 0, 0, rows);
        const alone = new Uint32Array(h.f32(one, rows).buffer);
        expect(Array.from(all.subarray(t * rows, (t + 1) * rows)), `token ${t}`).toEqual(Array.from(alone));
      }
    },
  );
});

describe("LlamaModel.forwardBatch", () => {
  let dir: string;
  let path: string;
  let model: LlamaModel;
  let sharded: LlamaModel;
  let adapted: LlamaModel;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "sh-batch-"));
    path = join(dir, "tiny.gguf");
    const tiny = writeTinyLlama(path, {
      dim: 64,
      layers: 3,
      heads: 4,
      kvHeads: 2,
      ffn: 160,
      seed: 9,
      weightScale: 0.2,
    });
    model = await LlamaModel.load(path, { threads: 2, contextSize: 64, sequences: 4, batchSize: 24 });
    adapted = await LlamaModel.load(path, {
      threads: 2,
      contextSize: 64,
      sequences: 4,
      batchSize: 24,
      lora: [{ adapter: randomAdapter(tiny), scale: 0.7 }],
    });
    sharded = await LlamaModel.load(path, {
      threads: 2,
      contextSize: 64,
      sequences: 4,
      batchSize: 24,
      maxShardBytes: (1 << 20) + 400_000,
    });
  });
  afterAll(async () => {
    await model?.dispose();
    await sharded?.dispose();
    await adapted?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  const prompt = [1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51];
  const other = [1, 60, 61, 62, 63, 64, 65, 66, 67];
  const copy = (logits: Float32Array[]) => logits.map((l) => Float32Array.from(l));

  /** Logits of `prompt` on `seq` and of three decoding steps, with `fill` choosing the company. */
  function run(m: LlamaModel, seq: number, chunks: number[], company: (step: number) => BatchSegment[]) {
    const got: Float32Array[] = [];
    let pos = 0;
    let step = 0;
    for (const size of chunks) {
      const mine: BatchSegment = { seq, tokens: prompt.slice(pos, pos + size), pos0: pos };
      const others = company(step++);
      const out = m.forwardBatch([...others.slice(0, 1), mine, ...others.slice(1)]);
      if (pos + size === prompt.length) got.push(Float32Array.from(out[others.length > 0 ? 1 : 0]!));
      pos += size;
    }
    for (const next of [70, 71, 72]) {
      const others = company(step++);
      const out = m.forwardBatch([...others, { seq, tokens: [next], pos0: pos++ }]);
      got.push(Float32Array.from(out.at(-1)!));
    }
    return got;
  }

  it("gives a sequence the same logits alone and in company, whatever its prefill chunks", () => {
    for (const m of [model, sharded, adapted]) {
      const alone = run(m, 0, [prompt.length], () => []);
      // Other sequences prefill and decode in the same passes, at other positions.
      let p1 = 0;
      let p2 = 0;
      const crowd = run(m, 1, [5, 1, 7], (step) => {
        const segs: BatchSegment[] = [];
        if (p1 < other.length) {
          segs.push({ seq: 2, tokens: other.slice(p1, p1 + 4), pos0: p1 });
          p1 += Math.min(4, other.length - p1);
        } else segs.push({ seq: 2, tokens: [80 + step], pos0: p1++ });
        segs.push({ seq: 3, tokens: [90 + step, 91 + step], pos0: p2 });
        p2 += 2;
        return segs;
      });
      expect(crowd).toEqual(alone);
      expect(alone.every((l) => l.every(Number.isFinite))).toBe(true);
    }
    expect(run(sharded, 0, [prompt.length], () => [])).toEqual(run(model, 0, [prompt.length], () => []));
    // The adapter is applied in the batched pass too.
    expect(run(adapted, 0, [prompt.length], () => [])).not.toEqual(run(model, 0, [prompt.length], () => []));
  });

  it("decodes one token of one sequence bit for bit as forward does", () => {
    const a: Float32Array[] = [];
    const b: Float32Array[] = [];
    prompt.slice(0, 6).forEach((id, pos) => {
      a.push(Float32Array.from(model.forward([id], pos, 0)));
      b.push(...copy(model.forwardBatch([{ seq: 1, tokens: [id], pos0: pos }])));
    });
    expect(b).toEqual(a);
  });

  it("prefills to the logits forward computes, up to rounding", () => {
    const a = Float32Array.from(model.forward(prompt, 0, 0));
    const [b] = copy(model.forwardBatch([{ seq: 1, tokens: prompt, pos0: 0 }]));
    let scale = 0;
    for (const v of a) scale = Math.max(scale, Math.abs(v));
    for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b![i]!)).toBeLessThanOrEqual(1e-5 * scale);
  });

  it("rejects a batch over the batch size, a repeated sequence and positions past the context", () => {
    expect(() => model.forwardBatch([{ seq: 0, tokens: new Array(25).fill(5), pos0: 0 }])).toThrow(
      /batch size is 24/,
    );
    expect(() =>
      model.forwardBatch([
        { seq: 0, tokens: [5], pos0: 0 },
        { seq: 0, tokens: [6], pos0: 1 },
      ]),
    ).toThrow(/twice/);
    expect(() => model.forwardBatch([{ seq: 0, tokens: [5, 6], pos0: 63 }])).toThrow(/context of 64/);
    expect(() => model.forwardBatch([{ seq: 4, tokens: [5], pos0: 0 }])).toThrow(/does not exist/);
  });
});

/** A tiny model of three 96-token sequences for the scheduler tests, loaded for the enclosing describe. */
function schedulerModel(seed: number, use: (llama: LlamaModel, tokenizer: Tokenizer) => void): void {
  let dir: string;
  let llama: LlamaModel | undefined;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "sh-sched-"));
    const path = join(dir, "tiny.gguf");
    writeTinyLlama(path, { dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 160, seed, weightScale: 0.3 });
    llama = await LlamaModel.load(path, { threads: 2, contextSize: 96, sequences: 3, batchSize: 16 });
    use(llama, Tokenizer.fromGgufMetadata(metadataGetter(llama.header)));
  });
  afterAll(async () => {
    await llama?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });
}

describe("BatchScheduler", () => {
  let llama: LlamaModel;
  let tokenizer: Tokenizer;
  schedulerModel(3, (m, t) => {
    llama = m;
    tokenizer = t;
  });

  interface Outcome {
    text: string;
    info?: GenerationInfo;
    started: boolean;
  }

  /** Runs `jobs` (all submitted at once, or at the steps given) to the end; returns each one's outcome. */
  function runJobs(
    jobs: GenerationJob[],
    at: number[] = [],
    onStep?: (s: BatchScheduler, step: number) => void,
  ) {
    const out = new Map<number, Outcome>(jobs.map((j) => [j.id, { text: "", started: false }]));
    const scheduler = new BatchScheduler(llama, tokenizer, (events) => {
      for (const e of events) {
        const o = out.get(e.id)!;
        if (e.type === "started") o.started = true;
        else if (e.type === "text") o.text += e.text;
        else if (e.type === "done") o.info = e.info;
      }
    });
    let step = 0;
    const pending = jobs.map((j, i) => ({ j, at: at[i] ?? 0 }));
    for (;;) {
      for (const p of pending.filter((p) => p.at === step)) scheduler.submit(p.j);
      onStep?.(scheduler, step);
      const worked = scheduler.step();
      step++;
      if (!worked && pending.every((p) => p.at < step) && scheduler.waiting === 0) break;
      if (step > 10_000) throw new Error("scheduler did not finish");
    }
    return out;
  }

  const job = (
    id: number,
    text: string,
    seed: number,
    maxTokens = 20,
    stop: string[] = [],
  ): GenerationJob => ({
    id,
    prompt: tokenizer.encode(text, { addSpecial: true }),
    maxTokens,
    stop,
    sampling: { seed, temperature: 0.9 },
  });

  it("gives every generation the text it gets alone, whoever shares its steps", () => {
    const jobs = [
      job(1, "the cat and the dog", 1),
      job(2, "hello world", 2, 30),
      job(3, "is the world", 3, 7),
      job(4, "hello world", 4),
      job(5, "a b c d e f g h i j k l m n o p q r s t u v w x y z", 5, 12),
      job(6, "the", 6, 25),
    ];
    const alone = jobs.map((j) => runJobs([j]).get(j.id)!);
    for (const a of alone) {
      expect(a.info?.finishReason).not.toBe("abort");
      expect(a.text.length).toBeGreaterThan(0);
    }
    // Six generations on three sequences, arriving at different steps.
    const together = runJobs(jobs, [0, 0, 1, 3, 3, 8]);
    jobs.forEach((j, i) => {
      expect(together.get(j.id)!.text, `job ${j.id}`).toBe(alone[i]!.text);
      expect(together.get(j.id)!.info?.completionTokens).toBe(alone[i]!.info?.completionTokens);
      expect(together.get(j.id)!.info?.finishReason).toBe(alone[i]!.info?.finishReason);
    });
  });

  it("reuses a free sequence's cached prefix and gets the same text", () => {
    const a = job(1, "the cat and the dog and the world", 7);
    const b = { ...job(2, "the cat and the dog and the world", 7) };
    const out = runJobs([a, b], [0, 30]);
    expect(out.get(1)!.info?.evaluatedPromptTokens).toBe(a.prompt.length);
    expect(out.get(2)!.info?.evaluatedPromptTokens).toBe(1);
    expect(out.get(2)!.text).toBe(out.get(1)!.text);
  });

  it("stops at a stop string, and at max tokens", () => {
    const base = runJobs([job(1, "hello", 11, 30)]).get(1)!;
    const cut = base.text.slice(6, 9);
    const stopped = runJobs([job(1, "hello", 11, 30, [cut])]).get(1)!;
    expect(stopped.info?.finishReason).toBe("stop");
    expect(stopped.text).toBe(base.text.slice(0, base.text.indexOf(cut)));
    const short = runJobs([job(1, "hello", 11, 3)]).get(1)!;
    expect(short.info).toMatchObject({ completionTokens: 3, finishReason: "length" });
  });

  it("cancels queued and running generations and frees their sequences", () => {
    const jobs = [1, 2, 3, 4, 5].map((id) => job(id, "the world is", id, 40));
    let scheduler: BatchScheduler | undefined;
    const out = runJobs(jobs, [], (s, step) => {
      scheduler = s;
      if (step === 2) {
        expect(s.busy).toBe(3);
        expect(s.waiting).toBe(2);
        s.cancel(1); // running
        s.cancel(5); // queued
      }
    });
    expect(out.get(1)!.info?.finishReason).toBe("abort");
    expect(out.get(5)!.info).toMatchObject({ finishReason: "abort", completionTokens: 0 });
    expect(out.get(5)!.started).toBe(false);
    for (const id of [2, 3, 4]) expect(out.get(id)!.info?.finishReason).toBe("length");
    expect(scheduler!.busy).toBe(0);
    expect(scheduler!.waiting).toBe(0);
  });
});

describe("BatchScheduler with embedding jobs", () => {
  let llama: LlamaModel;
  let tokenizer: Tokenizer;
  schedulerModel(5, (m, t) => {
    llama = m;
    tokenizer = t;
  });

  const ids = (n: number, from: number) => Array.from({ length: n }, (_, i) => 3 + 256 + ((from + i) % 40));

  /** Runs `jobs` (submitted at once) to the end; returns each one's vectors and the step it ended in. */
  function run(jobs: (EmbeddingJob | GenerationJob)[]) {
    const out = new Map<number, { vectors?: Float32Array[]; step?: number }>();
    let step = 0;
    const scheduler = new BatchScheduler(llama, tokenizer, (events) => {
      for (const e of events) {
        if (e.type === "embeddings") out.set(e.id, { vectors: e.vectors, step });
        if (e.type === "done") out.set(e.id, { step });
      }
    });
    for (const j of jobs) scheduler.submit(j);
    while (scheduler.step()) step++;
    return out;
  }

  it("embeds the inputs of concurrent jobs in one pass, each to the vector it gets alone", () => {
    const a: EmbeddingJob = { id: 1, inputs: [ids(5, 0), ids(40, 7)], pooling: "mean" };
    const b: EmbeddingJob = { id: 2, inputs: [ids(7, 3)], pooling: "last" };
    const c: EmbeddingJob = { id: 3, inputs: [ids(9, 11), ids(2, 1)], pooling: "mean" };
    const alone = [a, b].map((j) => run([j]).get(j.id)!);
    // Two short inputs (12 tokens, within the batch of 16) share one pass.
    const passes = [vi.spyOn(llama, "hiddenStatesBatch"), vi.spyOn(llama, "hiddenStates")];
    const pair = run([{ ...a, inputs: [a.inputs[0]!] }, b]);
    expect(passes.reduce((n, spy) => n + spy.mock.calls.length, 0)).toBe(1);
    for (const spy of passes) spy.mockRestore();
    expect(pair.get(1)!.step).toBe(0);
    expect(pair.get(2)!.step).toBe(0);
    expect(pair.get(1)!.vectors).toEqual([alone[0]!.vectors![0]]);
    expect(pair.get(2)!.vectors).toEqual(alone[1]!.vectors);

    // Inputs longer than the room a pass leaves them, beside a generation on the third sequence.
    const cAlone = run([c]).get(3)!;
    const generation: GenerationJob = {
      id: 4,
      prompt: tokenizer.encode("the cat and the dog", { addSpecial: true }),
      maxTokens: 6,
      stop: [],
      sampling: { seed: 1 },
    };
    const crowd = run([a, b, generation, c]);
    expect(crowd.get(1)!.vectors).toEqual(alone[0]!.vectors);
    expect(crowd.get(2)!.vectors).toEqual(alone[1]!.vectors);
    expect(crowd.get(3)!.vectors).toEqual(cAlone.vectors);
    for (const v of [...alone[0]!.vectors!, ...cAlone.vectors!]) expect(v.every(Number.isFinite)).toBe(true);
  });
});
