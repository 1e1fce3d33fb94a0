// Batching: the truncation policy, packing and padding layouts (targets, segments, positions),
// seeded shuffles and validation splits; end to end on the ShareGPT sample.
import { describe, expect, it } from "vitest";
import { type TokenizedExample, tokenizeRecords } from "../src/data/chat-tokens.js";
import {
  type BatchStats,
  emptyBatchStats,
  fitExample,
  type PackedBatch,
  packBatches,
  shuffled,
  splitValidation,
} from "../src/data/packing.js";
import { RecordReader } from "../src/data/records.js";
import { UserError } from "../src/errors.js";
import { Rng } from "../src/util/random.js";
import { spmTokenizer } from "./helpers/shakespeare-vocab.js";

const SHAREGPT = new URL("./fixtures/sharegpt_dummy_conversation.json", import.meta.url).pathname;

function example(ids: number[], mask: number[], line = 1): TokenizedExample {
  return { ids: Int32Array.from(ids), lossMask: Uint8Array.from(mask), source: { file: "f", line } };
}

/** Random examples: a prompt run, then reply runs, lengths 2..maxLen, ids tagged by example. */
function randomExamples(count: number, maxLen: number, seed: number): TokenizedExample[] {
  const rng = new Rng(seed);
  return Array.from({ length: count }, (_, e) => {
    const n = 2 + rng.nextInt(maxLen - 1);
    const ids = Array.from({ length: n }, (_, i) => 1000 * (e + 1) + i);
    const mask = ids.map((_, i) => (i > 0 && rng.nextFloat() < 0.5 ? 1 : 0));
    return example(ids, mask, e + 1);
  });
}

/**
 * Reads the examples back out of a batch, checking the layout on the way: each segment is one
 * example's consecutive positions, positions restart at 0, targets are the next token where it is
 * trained on and -1 elsewhere, padding only at the ends of rows, ids unique in the batch.
 */
function unpack(batch: PackedBatch): TokenizedExample[] {
  const { rows, seqLen, inputs, targets, segmentIds, positions } = batch;
  expect(inputs.length).toBe(rows * seqLen);
  const out: TokenizedExample[] = [];
  const seen = new Set<number>();
  let trained = 0;
  for (let r = 0; r < rows; r++) {
    let p = r * seqLen;
    const end = p + seqLen;
    expect(segmentIds[p]).not.toBe(0); // no empty rows
    while (p < end && segmentIds[p] !== 0) {
      const segment = segmentIds[p]!;
      expect(seen.has(segment)).toBe(false);
      seen.add(segment);
      const start = p;
      while (p < end && segmentIds[p] === segment) {
        expect(positions[p]).toBe(p - start);
        p++;
      }
      const ids = Array.from(inputs.subarray(start, p));
      const mask = [0];
      for (let q = start; q < p - 1; q++) {
        const t = targets[q]!;
        if (t >= 0) {
          expect(t).toBe(inputs[q + 1]);
          trained++;
        }
        mask.push(t >= 0 ? 1 : 0);
      }
      expect(targets[p - 1]).toBe(-1);
      out.push(example(ids, mask));
    }
    for (; p < end; p++) {
      expect(segmentIds[p]).toBe(0);
      expect(targets[p]).toBe(-1);
      expect(positions[p]).toBe(0);
    }
  }
  expect(batch.examples).toBe(seen.size);
  expect(batch.trainedTargets).toBe(trained);
  return out;
}

/** A segment is a run of equal ids over the whole flattened batch: runs = examples + padded rows. */
function runsOfEqualIds(batch: PackedBatch): number {
  let runs = 0;
  for (let i = 0; i < batch.segmentIds.length; i++) {
    if (i === 0 || batch.segmentIds[i] !== batch.segmentIds[i - 1]) runs++;
  }
  return runs;
}

function sameExample(a: TokenizedExample, b: TokenizedExample): void {
  expect([...a.ids]).toEqual([...b.ids]);
  // Position 0 is never a target, whatever the mask says there.
  expect([...a.lossMask.subarray(1)]).toEqual([...b.lossMask.subarray(1)]);
}

describe("truncation policy", () => {
  it("keeps the start, cuts the tail, drops trailing prompt tokens, drops examples with nothing to train", () => {
    const ex = example([1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 1, 1, 0, 1, 1, 0]);
    let fit = fitExample(ex, 100);
    expect(fit.truncated).toBe(false);
    expect([...fit.example!.ids]).toEqual([1, 2, 3, 4, 5, 6, 7]); // the untrained last token goes
    expect(fit.trainedCut).toBe(0);
    expect(fit.example!.source).toBe(ex.source);

    fit = fitExample(ex, 6);
    expect(fit.truncated).toBe(true);
    expect([...fit.example!.ids]).toEqual([1, 2, 3, 4, 5, 6]);
    expect(fit.trainedCut).toBe(1);

    fit = fitExample(ex, 5); // position 4 is a prompt token: cut back to the last trained one
    expect([...fit.example!.ids]).toEqual([1, 2, 3, 4]);
    expect(fit.trainedCut).toBe(2);

    fit = fitExample(ex, 2);
    expect(fit.example).toBeUndefined();
    expect(fit.truncated).toBe(true);
    expect(fit.trainedCut).toBe(4);

    // A mask on position 0 alone trains nothing.
    expect(fitExample(example([1, 2], [1, 0]), 10).example).toBeUndefined();
  });
});

describe("packing", () => {
  it("every example lands once, in order within rows, with segments, positions and targets as documented", () => {
    const examples = randomExamples(300, 40, 1);
    const stats = emptyBatchStats();
    const batches = [...packBatches(examples, { seqLen: 64, batchSize: 4, padId: 0 }, stats)];
    const unpacked = batches.flatMap(unpack);
    const fitted = examples.map((e) => fitExample(e, 64).example).filter((e) => e !== undefined);
    expect(stats.dropped).toBe(examples.length - fitted.length);
    // First-fit keeps the order of examples within each row; compare as sets keyed by first id.
    const byFirst = new Map(unpacked.map((e) => [e.ids[0]!, e]));
    expect(byFirst.size).toBe(fitted.length);
    for (const f of fitted) sameExample(byFirst.get(f.ids[0]!)!, f);
    for (const b of batches) {
      expect(b.rows).toBeLessThanOrEqual(4);
      expect(b.seqLen).toBe(64);
      const paddedRows = Array.from({ length: b.rows }, (_, r) => b.segmentIds[r * 64 + 63] === 0).filter(
        Boolean,
      ).length;
      expect(runsOfEqualIds(b)).toBe(b.examples + paddedRows);
    }
    expect(stats.examples).toBe(300);
    expect(stats.batches).toBe(batches.length);
    expect(stats.rows).toBe(batches.reduce((n, b) => n + b.rows, 0));
    expect(stats.tokens + stats.paddingPositions).toBe(stats.rows * 64);
    expect(stats.tokens).toBe(fitted.reduce((n, e) => n + e.ids.length, 0));
    expect(stats.trainedTargets).toBe(batches.reduce((n, b) => n + b.trainedTargets, 0));
    // Packing fills rows: far fewer rows than examples.
    expect(stats.rows).toBeLessThan(examples.length / 2);
  });

  it("long examples are cut to seqLen and counted; examples left with nothing to train are dropped", () => {
    const examples = [
      example([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
      example([11, 12, 13, 14, 15, 16, 17, 18], [0, 0, 0, 0, 0, 0, 1, 1]),
      example([21, 22, 23], [0, 1, 1]),
    ];
    const stats: BatchStats = emptyBatchStats();
    const batches = [...packBatches(examples, { seqLen: 5, batchSize: 8, padId: 99 }, stats)];
    const unpacked = batches.flatMap(unpack);
    expect(unpacked.map((e) => [...e.ids])).toEqual([
      [1, 2, 3, 4, 5],
      [21, 22, 23],
    ]);
    expect(stats).toMatchObject({ examples: 3, truncated: 2, dropped: 1, trainedTokensCut: 5 + 2 });
    expect([...batches[0]!.inputs.subarray(5, 10)]).toEqual([21, 22, 23, 99, 99]);
  });

  it("padding mode: one example per row, padded to seqLen or to the batch's longest", () => {
    const examples = randomExamples(50, 30, 2);
    for (const padToLongest of [false, true]) {
      const batches = [
        ...packBatches(examples, { seqLen: 32, batchSize: 8, padId: 0, packing: false, padToLongest }),
      ];
      expect(batches.map((b) => b.rows)).toEqual([8, 8, 8, 8, 8, 8, 2]);
      const unpacked = batches.flatMap(unpack);
      const fitted = examples.map((e) => fitExample(e, 32).example).filter((e) => e !== undefined);
      expect(unpacked).toHaveLength(fitted.length);
      for (const [i, e] of unpacked.entries()) sameExample(e, fitted[i]!);
      for (const [i, b] of batches.entries()) {
        const longest = Math.max(...fitted.slice(i * 8, i * 8 + b.rows).map((e) => e.ids.length));
        expect(b.seqLen).toBe(padToLongest ? longest : 32);
      }
    }
  });

  it("bad sizes are UserErrors", () => {
    expect(() => [...packBatches([], { seqLen: 1, batchSize: 1, padId: 0 })]).toThrow(UserError);
    expect(() => [...packBatches([], { seqLen: 8, batchSize: 0, padId: 0 })]).toThrow(UserError);
  });
});

describe("shuffling and validation split", () => {
  it("shuffled: a permutation fixed by the seed", () => {
    const items = Array.from({ length: 100 }, (_, i) => i);
    const a = shuffled(items, 7);
    expect(shuffled(items, 7)).toEqual(a);
    expect(shuffled(items, 8)).not.toEqual(a);
    expect([...a].sort((x, y) => x - y)).toEqual(items);
    expect(a).not.toEqual(items);
    expect(items[0]).toBe(0); // the input is not touched
  });

  it("splitValidation: disjoint, complete, in the original order, fixed by the seed", () => {
    const items = Array.from({ length: 1000 }, (_, i) => i);
    const { train, validation } = splitValidation(items, { fraction: 0.05, seed: 3 });
    expect(validation).toHaveLength(50);
    expect(train).toHaveLength(950);
    expect([...train, ...validation].sort((x, y) => x - y)).toEqual(items);
    expect(train).toEqual([...train].sort((x, y) => x - y));
    expect(validation).toEqual([...validation].sort((x, y) => x - y));
    expect(splitValidation(items, { fraction: 0.05, seed: 3 }).validation).toEqual(validation);
    expect(splitValidation(items, { fraction: 0.05, seed: 4 }).validation).not.toEqual(validation);
    expect(splitValidation(items, { count: 7, seed: 3 }).validation).toHaveLength(7);
    expect(splitValidation(items.slice(0, 10), { fraction: 0.01, seed: 1 }).validation).toHaveLength(1);
    expect(splitValidation(items, { fraction: 0, seed: 1 }).validation).toHaveLength(0);
    expect(() => splitValidation(items.slice(0, 3), { count: 3, seed: 1 })).toThrow(
      /leaves no training examples/,
    );
    expect(() => splitValidation(items, { fraction: 1, seed: 1 })).toThrow(UserError);
  });
});

describe("end to end on the ShareGPT sample", () => {
  it("records -> tokens -> split -> shuffled packed batches: every trained token is a target once", async () => {
    const tokenizer = spmTokenizer();
    const examples = await tokenizeRecords(await RecordReader.open(SHAREGPT), {
      tokenizer,
      template: { name: "vicuna_v1.1" },
    });
    expect(examples).toHaveLength(500);
    const { train, validation } = splitValidation(examples, { fraction: 0.1, seed: 1 });
    expect(validation).toHaveLength(50);
    const seqLen = 256;
    for (const [set, seed] of [
      [train, 11],
      [validation, 12],
    ] as const) {
      const stats = emptyBatchStats();
      const batches = [
        ...packBatches(shuffled(set, seed), { seqLen, batchSize: 4, padId: tokenizer.eosId! }, stats),
      ];
      const unpacked = batches.flatMap(unpack);
      expect(unpacked).toHaveLength(set.length - stats.dropped);
      const fitted = set.map((e) => fitExample(e, seqLen).example).filter((e) => e !== undefined);
      const key = (e: TokenizedExample) => `${e.ids.join(",")}|${e.lossMask.subarray(1).join("")}`;
      expect(unpacked.map(key).sort()).toEqual(fitted.map(key).sort());
      const expectedTargets = fitted.reduce(
        (n, e) => n + e.lossMask.subarray(1).reduce((a, b) => a + b, 0),
        0,
      );
      expect(stats.trainedTargets).toBe(expectedTargets);
      expect(stats.truncated).toBeGreaterThan(0);
    }
  });
});
