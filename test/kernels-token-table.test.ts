/**
 * The token-table kernels of a forward pass over several sequences (ropeAt, storeKvAt,
 * attentionAt): against the float64 references, and bit for bit against the one-sequence kernels
 * on each token alone, which is what keeps a sequence's text the same alone or in a batch.
 *
 * Bounds (as for the one-sequence kernels in kernels-f32.test.ts):
 *   ropeAt: |err| <= 2e-6 · max |x| (the pair bound 1e-6 · (|x0| + |x1|), loosened to the largest input)
 *   attentionAt: |err| <= 1e-5 · max_p |v_p,d| + 1e-7 (the output is a convex combination of v)
 */
import { describe, expect, it } from "vitest";
import { TOKEN_ENTRY_BYTES } from "../src/runtime/backend.js";
import { attentionAtRef, ropeAtRef, type TokenRef } from "../src/runtime/reference.js";
import { Rng } from "../src/util/random.js";
import { WasmHarness } from "./helpers/wasm.js";

const ENTRY = TOKEN_ENTRY_BYTES / 4;

/** Writes a token table: [pos, kRow, vRow, k, v] per token. */
function putTable(h: WasmHarness, entries: number[][]): number {
  const p = h.alloc(entries.length * TOKEN_ENTRY_BYTES);
  const view = new Uint32Array(h.memory.buffer, p, entries.length * ENTRY);
  entries.forEach((e, t) => {
    view.set(e, t * ENTRY);
  });
  return p;
}

const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

describe("ropeAt", () => {
  const shapes = [
    { nHeads: 4, headDim: 64, ropeDim: 64, neox: 0 },
    { nHeads: 3, headDim: 48, ropeDim: 32, neox: 1 },
    { nHeads: 2, headDim: 128, ropeDim: 128, neox: 0 },
    { nHeads: 2, headDim: 64, ropeDim: 64, neox: 0, factors: true },
  ];
  for (const c of shapes) {
    it(`heads=${c.nHeads} headDim=${c.headDim} ropeDim=${c.ropeDim} neox=${c.neox}${c.factors ? " with frequency factors" : ""}: each token at its own position`, () => {
      const rng = new Rng(c.headDim + c.neox);
      const positions = [7, 0, 300, 7, 1, 2047];
      const n = positions.length;
      const w = c.nHeads * c.headDim;
      const x = rng.fillNormal(new Float32Array(n * w), 2);
      const freqBase = 10000;
      const freqScale = Math.fround(0.5);
      const factors = c.factors
        ? Float32Array.from({ length: c.ropeDim / 2 }, (_, i) => 1 + (7 * i) / (c.ropeDim / 2))
        : undefined;
      const want = x.slice();
      ropeAtRef(want, positions, c.nHeads, c.headDim, c.ropeDim, freqBase, freqScale, c.neox, factors);

      const h = new WasmHarness();
      const table = putTable(
        h,
        positions.map((p) => [p, 0, 0, 0, 0]),
      );
      const px = h.putF32(x);
      const pf = factors ? h.putF32(factors) : 0;
      // two row ranges, as two threads would split them
      const rows = n * c.nHeads;
      h.k.ropeAt!(px, c.nHeads, c.headDim, c.ropeDim, table, freqBase, freqScale, c.neox, pf, 0, 5);
      h.k.ropeAt!(px, c.nHeads, c.headDim, c.ropeDim, table, freqBase, freqScale, c.neox, pf, 5, rows);
      const got = h.f32(px, n * w);
      let xMax = 0;
      for (const v of x) xMax = Math.max(xMax, Math.abs(v));
      for (let i = 0; i < got.length; i++) {
        expect(Math.abs(got[i]! - want[i]!), `element ${i}`).toBeLessThanOrEqual(2e-6 * xMax);
      }
      // bit for bit what `rope` gives each token alone at its position
      positions.forEach((pos, t) => {
        const alone = h.putF32(x.subarray(t * w, (t + 1) * w));
        h.k.rope!(alone, c.nHeads, c.headDim, c.ropeDim, pos, freqBase, freqScale, c.neox, pf, 0, c.nHeads);
        expect(bits(got.subarray(t * w, (t + 1) * w)), `token ${t}`).toEqual(bits(h.f32(alone, w)));
      });
    });
  }
});

describe("storeKvAt and attentionAt", () => {
  // (maxBias: ALiBi, with 6 heads also the slopes past the largest power of 2)
  const shapes = [
    { nHeads: 4, nKvHeads: 2, headDim: 64, maxBias: 0 },
    { nHeads: 6, nKvHeads: 6, headDim: 48, maxBias: 8 },
    { nHeads: 8, nKvHeads: 1, headDim: 20, maxBias: 0 },
  ];
  for (const c of shapes) {
    it(`heads=${c.nHeads}/${c.nKvHeads} headDim=${c.headDim}${c.maxBias ? " ALiBi" : ""}: three sequences, a prompt chunk among decoding tokens`, () => {
      const rng = new Rng(c.nHeads * 31 + c.headDim);
      const kvWidth = c.nKvHeads * c.headDim;
      const qWidth = c.nHeads * c.headDim;
      const rowBytes = kvWidth * 4;
      const context = 40;
      const h = new WasmHarness();
      // Three sequences with some history; the pass brings: seq 0 one token at 9, seq 2 three
      // prompt tokens at 0..2, seq 1 one token at 25. Cache rows past what a token may see are NaN.
      const history = [9, 25, 0];
      const caches = history.map((len) => {
        const k = new Float32Array(context * kvWidth).fill(Number.NaN);
        const v = new Float32Array(context * kvWidth).fill(Number.NaN);
        k.set(rng.fillNormal(new Float32Array(len * kvWidth), 1));
        v.set(rng.fillNormal(new Float32Array(len * kvWidth), 1));
        return { k, v, kp: h.putF32(k), vp: h.putF32(v) };
      });
      const tokens: [seq: number, pos: number][] = [
        [0, 9],
        [2, 0],
        [2, 1],
        [2, 2],
        [1, 25],
      ];
      const n = tokens.length;
      const table = putTable(
        h,
        tokens.map(([s, pos]) => {
          const { kp, vp } = caches[s]!;
          return [pos, kp + pos * rowBytes, vp + pos * rowBytes, kp, vp];
        }),
      );
      const kNew = rng.fillNormal(new Float32Array(n * kvWidth), 1);
      const vNew = rng.fillNormal(new Float32Array(n * kvWidth), 1);
      const pk = h.putF32(kNew);
      const pv = h.putF32(vNew);
      h.k.storeKvAt!(pk, pv, table, rowBytes, 0, 2);
      h.k.storeKvAt!(pk, pv, table, rowBytes, 2, n);
      // every new row landed where its token's position is, and nothing else moved
      tokens.forEach(([s, pos], t) => {
        caches[s]!.k.set(kNew.subarray(t * kvWidth, (t + 1) * kvWidth), pos * kvWidth);
        caches[s]!.v.set(vNew.subarray(t * kvWidth, (t + 1) * kvWidth), pos * kvWidth);
      });
      for (const cache of caches) {
        expect(bits(h.f32(cache.kp, context * kvWidth))).toEqual(bits(cache.k));
        expect(bits(h.f32(cache.vp, context * kvWidth))).toEqual(bits(cache.v));
      }

      const q = rng.fillNormal(new Float32Array(n * qWidth), 1);
      const pq = h.putF32(q);
      const out = h.alloc(n * qWidth * 4);
      const stride = context * 4 + 64;
      const scratch = h.alloc(2 * stride);
      const rows = n * c.nHeads;
      h.k.attentionAt!(pq, table, out, c.nHeads, c.nKvHeads, c.headDim, scratch, stride, c.maxBias, 0, 7, 0);
      h.k.attentionAt!(
        pq,
        table,
        out,
        c.nHeads,
        c.nKvHeads,
        c.headDim,
        scratch,
        stride,
        c.maxBias,
        7,
        rows,
        1,
      );
      const got = h.f32(out, n * qWidth);

      const refs: TokenRef[] = tokens.map(([s, pos]) => ({ pos, k: caches[s]!.k, v: caches[s]!.v }));
      const want = new Float32Array(n * qWidth);
      attentionAtRef(q, refs, want, c.nHeads, c.nKvHeads, c.headDim, c.maxBias);
      let vMax = 0;
      for (const { v } of caches)
        for (const x of v) if (Number.isFinite(x)) vMax = Math.max(vMax, Math.abs(x));
      for (let i = 0; i < got.length; i++) {
        expect(Math.abs(got[i]! - want[i]!), `element ${i}`).toBeLessThanOrEqual(1e-5 * vMax + 1e-7);
      }
      // bit for bit what `attention` gives each token alone over its own cache
      tokens.forEach(([s, pos], t) => {
        const o = h.alloc(qWidth * 4);
        const cache = caches[s]!;
        h.k.attention!(
          pq + t * qWidth * 4,
          cache.kp,
          cache.vp,
          o,
          1,
          pos,
          c.nHeads,
          c.nKvHeads,
          c.headDim,
          scratch,
          stride,
          c.maxBias,
          0,
          c.nHeads,
          0,
        );
        expect(bits(got.subarray(t * qWidth, (t + 1) * qWidth)), `token ${t}`).toEqual(
          bits(h.f32(o, qWidth)),
        );
      });
    });
  }
});
