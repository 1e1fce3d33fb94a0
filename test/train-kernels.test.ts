/**
 * Training kernels (src/kernels/assembly/train.ts) against their float64 TypeScript twins
 * (src/train/reference.ts), and every backward twin against central finite differences of its
 * forward twin in float64.
 *
 * Finite differences: step 1e-5, so truncation (~1e-10·f''') and rounding (~1e-11) errors stay
 * far below the bound |numeric − analytic| <= 1e-6·(1 + |analytic|).
 * Kernel bounds, per element (f32 arithmetic against float64):
 *   transpose, embedding forward: exact.
 *   sums of f32 products (embedding backward, norm weight gradient, matmul gradients):
 *     |err| <= 1e-5 · Σ|terms| (+ a small absolute floor where outputs cancel to ~0).
 *   attention gradients (differences of probabilities times values): |err| <= 2e-5 · max|ref|.
 *   rope: |err| <= 1e-6 · (|x0| + |x1|) (f32 cos/sin tables and one f32 product-sum).
 *   cross-entropy, swiglu, adamw, rms norm: |err| <= 1e-5 · scale of the inputs involved.
 * Kernels split over row ranges must give bit-identical results to one call over all rows.
 */
import { describe, expect, it } from "vitest";
import { ropeTables } from "../src/train/ops.js";
import {
  adamwRef,
  attentionBackwardRef,
  attentionForwardRef,
  crossEntropyRef,
  embeddingBackwardRef,
  embeddingForwardRef,
  linearBackwardRef,
  linearRef,
  rmsNormBackwardRef,
  rmsNormForwardRef,
  ropeRotateRef,
  segmentStarts,
  sumSquaresRef,
  swigluBackwardRef,
  swigluForwardRef,
  transposeRef,
  type Values,
} from "../src/train/reference.js";
import { Rng } from "../src/util/random.js";
import { WasmHarness } from "./helpers/wasm.js";

function randomArray(rng: Rng, length: number, scale = 1): Float64Array {
  const a = new Float64Array(length);
  for (let i = 0; i < length; i++) a[i] = (rng.nextFloat() * 2 - 1) * scale;
  return a;
}

/** A float64 array rounded to f32 values (so wasm and reference see the same inputs). */
function f32Values(rng: Rng, length: number, scale = 1): Float64Array {
  return Float64Array.from(Float32Array.from(randomArray(rng, length, scale)));
}

/** Central-difference gradient of f at x (x is perturbed in place and restored). */
function numericGradient(f: () => number, x: Float64Array, step = 1e-5): Float64Array {
  const g = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const keep = x[i]!;
    x[i] = keep + step;
    const up = f();
    x[i] = keep - step;
    const down = f();
    x[i] = keep;
    g[i] = (up - down) / (2 * step);
  }
  return g;
}

/** Σ y·weights: the scalar whose gradient with respect to y is `weights`. */
function project(y: Values, weights: Values): number {
  let s = 0;
  for (let i = 0; i < y.length; i++) s += y[i]! * weights[i]!;
  return s;
}

function expectGradient(numeric: Float64Array, analytic: Values, what: string) {
  for (let i = 0; i < numeric.length; i++) {
    const err = Math.abs(numeric[i]! - analytic[i]!);
    expect(err, `${what}[${i}]: numeric ${numeric[i]} analytic ${analytic[i]}`).toBeLessThanOrEqual(
      1e-6 * (1 + Math.abs(analytic[i]!)),
    );
  }
}

function expectClose(got: Values, want: Values, bound: (i: number) => number, what: string) {
  expect(got.length, `${what}: length`).toBe(want.length);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < got.length; i++) {
    const r = Math.abs(got[i]! - want[i]!) / bound(i);
    if (!(r <= worst)) {
      worst = Number.isNaN(r) ? Infinity : r;
      at = i;
    }
  }
  expect(worst, `${what}: element ${at} is ${got[at]}, reference ${want[at]}`).toBeLessThanOrEqual(1);
}

function putI32(wasm: WasmHarness, data: ArrayLike<number>): number {
  const a = Int32Array.from(data);
  return wasm.putU8(new Uint8Array(a.buffer));
}

/** Runs a kernel over [0, rows) in one call and again split at `cuts`, returning both outputs. */
function splitRuns(
  rows: number,
  cuts: number[],
  setup: (wasm: WasmHarness) => {
    call: (r0: number, r1: number, tid: number) => void;
    read: () => Float32Array;
  },
): Float32Array {
  const whole = new WasmHarness();
  const a = setup(whole);
  a.call(0, rows, 0);
  const one = a.read();
  const parts = new WasmHarness();
  const b = setup(parts);
  const bounds = [0, ...cuts, rows];
  for (let i = 0; i + 1 < bounds.length; i++) b.call(bounds[i]!, bounds[i + 1]!, i);
  expect(Array.from(b.read()), "split rows give the same bits").toEqual(Array.from(one));
  return one;
}

describe("finite differences of the float64 references", () => {
  const rng = new Rng(7);

  it("linear: dx and dW", () => {
    const [rows, cols, n] = [5, 6, 3];
    const x = randomArray(rng, n * cols);
    const w = randomArray(rng, rows * cols);
    const r = randomArray(rng, n * rows);
    const { dx, dw } = linearBackwardRef(r, x, w, rows, cols, n);
    const f = () => project(linearRef(x, w, rows, cols, n), r);
    expectGradient(numericGradient(f, x), dx, "dx");
    expectGradient(numericGradient(f, w), dw, "dW");
  });

  it("embedding: scatter-add of repeated ids", () => {
    const [vocab, dim] = [5, 3];
    const table = randomArray(rng, vocab * dim);
    const ids = [1, 3, 1, 0, 1];
    const r = randomArray(rng, ids.length * dim);
    const f = () => project(embeddingForwardRef(table, ids, dim), r);
    expectGradient(numericGradient(f, table), embeddingBackwardRef(ids, r, dim, vocab), "dtable");
  });

  it("rms norm: dx and dw", () => {
    const [dim, n, eps] = [7, 3, 1e-5];
    const x = randomArray(rng, n * dim);
    const w = randomArray(rng, dim);
    const r = randomArray(rng, n * dim);
    const { dx, dw } = rmsNormBackwardRef(x, w, r, dim, eps, n);
    const f = () => project(rmsNormForwardRef(x, w, dim, eps, n).out, r);
    expectGradient(numericGradient(f, x), dx, "dx");
    expectGradient(numericGradient(f, w), dw, "dw");
  });

  it("rope: the gradient is the inverse rotation", () => {
    const [nHeads, headDim, ropeDim] = [2, 8, 8];
    const positions = [0, 5, 2, 9];
    const x = randomArray(rng, positions.length * nHeads * headDim);
    const r = randomArray(rng, x.length);
    const f = () => project(ropeRotateRef(x, positions, nHeads, headDim, ropeDim, 10000, 1, false), r);
    const dx = ropeRotateRef(r, positions, nHeads, headDim, ropeDim, 10000, 1, true);
    expectGradient(numericGradient(f, x), dx, "dx");
  });

  it("attention: dq, dk, dv with grouped heads and two segments", () => {
    const s = { n: 6, nHeads: 4, nKvHeads: 2, headDim: 4 };
    const segStart = segmentStarts(s.n, [0, 0, 0, 1, 1, 1]);
    expect(Array.from(segStart)).toEqual([0, 0, 0, 3, 3, 3]);
    const q = randomArray(rng, s.n * s.nHeads * s.headDim);
    const k = randomArray(rng, s.n * s.nKvHeads * s.headDim);
    const v = randomArray(rng, s.n * s.nKvHeads * s.headDim);
    const r = randomArray(rng, q.length);
    const { dq, dk, dv } = attentionBackwardRef(q, k, v, r, segStart, s);
    const f = () => project(attentionForwardRef(q, k, v, segStart, s).out, r);
    expectGradient(numericGradient(f, q), dq, "dq");
    expectGradient(numericGradient(f, k), dk, "dk");
    expectGradient(numericGradient(f, v), dv, "dv");
  });

  it("swiglu: dgate and dup", () => {
    const gate = randomArray(rng, 9, 4);
    const up = randomArray(rng, 9, 2);
    const r = randomArray(rng, 9);
    const { dgate, dup } = swigluBackwardRef(gate, up, r);
    const f = () => project(swigluForwardRef(gate, up), r);
    expectGradient(numericGradient(f, gate), dgate, "dgate");
    expectGradient(numericGradient(f, up), dup, "dup");
  });

  it("cross-entropy: dlogits of the scaled loss sum, no gradient from masked targets", () => {
    const vocab = 5;
    const targets = [2, -1, 0, 4];
    const logits = randomArray(rng, targets.length * vocab, 3);
    const dscale = 0.37;
    const f = () =>
      dscale * crossEntropyRef(logits, targets, vocab, dscale).losses.reduce((a, b) => a + b, 0);
    const { dlogits } = crossEntropyRef(logits, targets, vocab, dscale);
    expectGradient(numericGradient(f, logits), dlogits, "dlogits");
    for (let i = vocab; i < 2 * vocab; i++) expect(dlogits[i]).toBe(0);
  });
});

describe("training kernels match the references", () => {
  const rng = new Rng(11);

  it("transpose pads with zeros and splits by destination rows", () => {
    for (const [rows, cols, ld] of [
      [7, 10, 8],
      [16, 12, 16],
      [5, 3, 9],
    ] as const) {
      const src = f32Values(rng, rows * cols);
      const got = splitRuns(cols, [cols >> 1], (wasm) => {
        const s = wasm.putF32(Float32Array.from(src));
        const d = wasm.putF32(new Float32Array(cols * ld).fill(99));
        return {
          call: (r0, r1) => wasm.k.transpose!(s, d, rows, cols, ld, r0, r1),
          read: () => wasm.f32(d, cols * ld),
        };
      });
      expect(Array.from(got)).toEqual(Array.from(transposeRef(src, rows, cols, ld)));
    }
  });

  it("matmul gradients through transposes and matmulF32", () => {
    const [rows, cols, n] = [12, 20, 7];
    const nPad = 8;
    const x = f32Values(rng, n * cols);
    const w = f32Values(rng, rows * cols);
    const dy = f32Values(rng, n * rows);
    const want = linearBackwardRef(dy, x, w, rows, cols, n);
    const wasm = new WasmHarness();
    const [px, pw, pdy] = [x, w, dy].map((a) => wasm.putF32(Float32Array.from(a)));
    const wT = wasm.alloc(rows * cols * 4);
    const xT = wasm.alloc(cols * nPad * 4);
    const dyT = wasm.alloc(rows * nPad * 4);
    const dx = wasm.alloc(n * cols * 4);
    const start = f32Values(rng, rows * cols);
    const dw = wasm.putF32(Float32Array.from(start));
    const k = wasm.k;
    k.transpose!(pw, wT, rows, cols, rows, 0, cols);
    k.matmulF32!(wT, pdy, dx, cols, rows, n, 0, 0, cols);
    k.transpose!(px, xT, n, cols, nPad, 0, cols);
    k.transpose!(pdy, dyT, n, rows, nPad, 0, rows);
    k.matmulF32!(xT, dyT, dw, cols, nPad, rows, 1, 0, cols);
    const absDx = linearBackwardRef(dy.map(Math.abs), x, w.map(Math.abs), rows, cols, n).dx;
    const absDw = linearBackwardRef(dy.map(Math.abs), x.map(Math.abs), w, rows, cols, n).dw;
    expectClose(wasm.f32(dx, n * cols), want.dx, (i) => 1e-5 * absDx[i]! + 1e-30, "dx");
    const wantDw = want.dw.map((g, i) => g + start[i]!);
    expectClose(wasm.f32(dw, rows * cols), wantDw, (i) => 1e-5 * (absDw[i]! + Math.abs(start[i]!)), "dW");
  });

  it("embedding forward copies rows; backward adds repeated ids in token order", () => {
    const [vocab, dim] = [9, 12];
    const ids = [3, 1, 3, 8, 0, 3, 1];
    const table = f32Values(rng, vocab * dim);
    const dout = f32Values(rng, ids.length * dim);
    const wasm = new WasmHarness();
    const pt = wasm.putF32(Float32Array.from(table));
    const pi = putI32(wasm, ids);
    const po = wasm.alloc(ids.length * dim * 4);
    wasm.k.embeddingForward!(pt, pi, po, dim, 0, ids.length);
    expect(Array.from(wasm.f32(po, ids.length * dim))).toEqual(
      Array.from(embeddingForwardRef(table, ids, dim)),
    );
    const got = splitRuns(vocab, [2, 3, 7], (w) => {
      const i = putI32(w, ids);
      const g = w.putF32(Float32Array.from(dout));
      const d = w.putF32(new Float32Array(vocab * dim));
      return {
        call: (r0, r1) => w.k.embeddingBackward!(d, i, g, dim, ids.length, r0, r1),
        read: () => w.f32(d, vocab * dim),
      };
    });
    const want = embeddingBackwardRef(ids, dout, dim, vocab);
    const abs = embeddingBackwardRef(ids, dout.map(Math.abs), dim, vocab);
    expectClose(got, want, (i) => 1e-6 * abs[i]! + 1e-30, "dtable");
  });

  it("rms norm forward, input gradient (acc 0 and 1) and weight gradient", () => {
    for (const dim of [4, 20, 36]) {
      const n = 5;
      const eps = 1e-5;
      const x = f32Values(rng, n * dim, 2);
      const w = f32Values(rng, dim);
      const dout = f32Values(rng, n * dim);
      const base = f32Values(rng, n * dim);
      const wasm = new WasmHarness();
      const [px, pw, pg, pdx] = [x, w, dout, base].map((a) => wasm.putF32(Float32Array.from(a)));
      const po = wasm.alloc(n * dim * 4);
      const pr = wasm.alloc(n * 4);
      wasm.k.rmsNormForward!(px, pw, po, pr, dim, eps, 0, n);
      const ref = rmsNormForwardRef(x, w, dim, eps, n);
      expectClose(wasm.f32(po, n * dim), ref.out, (i) => 1e-5 * (Math.abs(ref.out[i]!) + 1e-6), "out");
      expectClose(wasm.f32(pr, n), ref.rstd, (i) => 1e-6 * ref.rstd[i]!, "rstd");
      const grads = rmsNormBackwardRef(x, w, dout, dim, eps, n);
      const scale = (i: number) => {
        const t = Math.floor(i / dim);
        return ref.rstd[t]! * 4;
      };
      wasm.k.rmsNormBackward!(px, pw, pr, pg, pdx, dim, 1, 0, n);
      const wantAcc = grads.dx.map((g, i) => g + base[i]!);
      expectClose(wasm.f32(pdx, n * dim), wantAcc, (i) => 1e-5 * (scale(i) + Math.abs(base[i]!)), "dx acc");
      const pdx0 = wasm.alloc(n * dim * 4);
      wasm.k.rmsNormBackward!(px, pw, pr, pg, pdx0, dim, 0, 0, n);
      expectClose(wasm.f32(pdx0, n * dim), grads.dx, (i) => 1e-5 * scale(i), "dx");
      // in place over dout
      wasm.k.rmsNormBackward!(px, pw, pr, pg, pg, dim, 0, 0, n);
      expectClose(wasm.f32(pg, n * dim), grads.dx, (i) => 1e-5 * scale(i), "dx in place");
      const dw = splitRuns(dim, [4], (h) => {
        const [hx, hg] = [x, dout].map((a) => h.putF32(Float32Array.from(a)));
        const hr = h.putF32(Float32Array.from(ref.rstd));
        const hw = h.putF32(new Float32Array(dim).fill(0.5));
        return {
          call: (r0, r1) => h.k.rmsNormBackwardWeight!(hx, hr, hg, hw, dim, n, r0, r1),
          read: () => h.f32(hw, dim),
        };
      });
      const absDw = rmsNormBackwardRef(x.map(Math.abs), w, dout.map(Math.abs), dim, eps, n).dw;
      expectClose(
        dw,
        grads.dw.map((g) => g + 0.5),
        (i) => 1e-5 * (absDw[i]! + 0.5),
        "dw",
      );
    }
  });

  it("rope rotates by per-token positions and the inverse undoes it", () => {
    const [nHeads, headDim, ropeDim] = [3, 16, 12];
    const positions = [0, 1, 7, 3, 30, 2];
    const table = ropeTables(32, ropeDim, 10000, 0.5);
    const x = f32Values(rng, positions.length * nHeads * headDim);
    for (const inverse of [false, true]) {
      const got = splitRuns(positions.length * nHeads, [4, 5], (wasm) => {
        const p = wasm.putF32(Float32Array.from(x));
        const pos = putI32(wasm, positions);
        const c = wasm.putF32(table.cos);
        const s = wasm.putF32(table.sin);
        return {
          call: (r0, r1) =>
            wasm.k.ropeRotate!(p, pos, c, s, nHeads, headDim, ropeDim, inverse ? 1 : 0, r0, r1),
          read: () => wasm.f32(p, x.length),
        };
      });
      const want = ropeRotateRef(x, positions, nHeads, headDim, ropeDim, 10000, 0.5, inverse);
      expectClose(got, want, (i) => 1e-6 * (Math.abs(x[i]!) + Math.abs(x[i ^ 1]!)) + 1e-30, "rope");
    }
  });

  it("attention forward and backward with grouped heads, segments and long rows", () => {
    for (const s of [
      { n: 9, nHeads: 4, nKvHeads: 2, headDim: 8, segments: [0, 0, 0, 0, 1, 1, 2, 2, 2] },
      { n: 13, nHeads: 2, nKvHeads: 1, headDim: 36, segments: undefined },
      { n: 6, nHeads: 3, nKvHeads: 3, headDim: 4, segments: [5, 5, 5, 5, 5, 5] },
      { n: 7, nHeads: 2, nKvHeads: 1, headDim: 16, segments: undefined },
      { n: 5, nHeads: 2, nKvHeads: 2, headDim: 28, segments: [1, 1, 2, 2, 2] },
      { n: 6, nHeads: 4, nKvHeads: 2, headDim: 48, segments: undefined },
    ]) {
      const hd = s.headDim;
      const segStart = segmentStarts(s.n, s.segments);
      const segEnd = new Int32Array(s.n);
      for (let t = s.n - 1; t >= 0; t--)
        segEnd[t] = t + 1 < s.n && segStart[t + 1] === segStart[t] ? segEnd[t + 1]! : t + 1;
      const q = f32Values(rng, s.n * s.nHeads * hd, 2);
      const k = f32Values(rng, s.n * s.nKvHeads * hd, 2);
      const v = f32Values(rng, s.n * s.nKvHeads * hd);
      const dout = f32Values(rng, q.length);
      const ref = attentionForwardRef(q, k, v, segStart, s);
      const grads = attentionBackwardRef(q, k, v, dout, segStart, s);
      const stride = 4 * s.n * 4;
      const setup = (wasm: WasmHarness) => {
        const [pq, pk, pv, pg] = [q, k, v, dout].map((a) => wasm.putF32(Float32Array.from(a)));
        const ps = putI32(wasm, segStart);
        const pe = putI32(wasm, segEnd);
        const scratch = wasm.alloc(4 * stride);
        const out = wasm.alloc(q.length * 4);
        const lse = wasm.alloc(s.n * s.nHeads * 4);
        const delta = wasm.alloc(s.n * s.nHeads * 4);
        const dq = wasm.alloc(q.length * 4);
        const dk = wasm.alloc(k.length * 4);
        const dv = wasm.alloc(v.length * 4);
        return { pq, pk, pv, pg, ps, pe, scratch, out, lse, delta, dq, dk, dv, wasm };
      };
      const rowsQ = s.n * s.nHeads;
      const rowsKv = s.n * s.nKvHeads;
      const forward = splitRuns(rowsQ, [3, 7], (wasm) => {
        const b = setup(wasm);
        return {
          call: (r0, r1, tid) =>
            wasm.k.attentionForward!(
              b.pq,
              b.pk,
              b.pv,
              b.out,
              b.lse,
              b.ps,
              s.nHeads,
              s.nKvHeads,
              hd,
              b.scratch,
              stride,
              r0,
              r1,
              tid,
            ),
          read: () => Float32Array.from([...wasm.f32(b.out, q.length), ...wasm.f32(b.lse, rowsQ)]),
        };
      });
      expectClose(
        forward.subarray(0, q.length),
        ref.out,
        (i) => 1e-5 * 4 + 1e-6 * Math.abs(ref.out[i]!),
        "out",
      );
      expectClose(forward.subarray(q.length), ref.lse, (i) => 1e-5 * (1 + Math.abs(ref.lse[i]!)), "lse");
      const backward = (part: "q" | "kv") =>
        splitRuns(part === "q" ? rowsQ : rowsKv, [2, 5], (wasm) => {
          const b = setup(wasm);
          const fwd = () =>
            wasm.k.attentionForward!(
              b.pq,
              b.pk,
              b.pv,
              b.out,
              b.lse,
              b.ps,
              s.nHeads,
              s.nKvHeads,
              hd,
              b.scratch,
              stride,
              0,
              rowsQ,
              0,
            );
          const bq = (r0: number, r1: number, tid: number) =>
            wasm.k.attentionBackwardQuery!(
              b.pq,
              b.pk,
              b.pv,
              b.out,
              b.pg,
              b.lse,
              b.ps,
              b.dq,
              b.delta,
              s.nHeads,
              s.nKvHeads,
              hd,
              b.scratch,
              stride,
              r0,
              r1,
              tid,
            );
          const bkv = (r0: number, r1: number, tid: number) =>
            wasm.k.attentionBackwardKeyValue!(
              b.pq,
              b.pk,
              b.pv,
              b.pg,
              b.lse,
              b.delta,
              b.pe,
              b.dk,
              b.dv,
              s.nHeads,
              s.nKvHeads,
              hd,
              b.scratch,
              stride,
              r0,
              r1,
              tid,
            );
          fwd();
          if (part === "kv") bq(0, rowsQ, 0);
          return {
            call: part === "q" ? bq : bkv,
            read: () =>
              part === "q"
                ? wasm.f32(b.dq, q.length)
                : Float32Array.from([...wasm.f32(b.dk, k.length), ...wasm.f32(b.dv, v.length)]),
          };
        });
      const dq = backward("q");
      const largest = (a: Float64Array) => a.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      expectClose(dq, grads.dq, () => 2e-5 * largest(grads.dq), "dq");
      const dkv = backward("kv");
      expectClose(dkv.subarray(0, k.length), grads.dk, () => 2e-5 * largest(grads.dk), "dk");
      expectClose(dkv.subarray(k.length), grads.dv, () => 2e-5 * largest(grads.dv), "dv");
    }
  });

  it("swiglu backward, also in place", () => {
    const n = 23;
    const gate = f32Values(rng, n, 6);
    const up = f32Values(rng, n, 2);
    const dout = f32Values(rng, n);
    const want = swigluBackwardRef(gate, up, dout);
    const wasm = new WasmHarness();
    const [pg, pu, pd] = [gate, up, dout].map((a) => wasm.putF32(Float32Array.from(a)));
    wasm.k.swigluBackward!(pg, pu, pd, pg, pu, 0, n);
    const bound = (i: number) =>
      1e-5 * Math.abs(dout[i]!) * (1 + Math.abs(gate[i]!)) * (1 + Math.abs(up[i]!));
    expectClose(wasm.f32(pg, n), want.dgate, bound, "dgate");
    expectClose(wasm.f32(pu, n), want.dup, bound, "dup");
  });

  it("cross-entropy losses and gradients, with masked targets and padded rows (vocabulary 37, stride 40)", () => {
    const vocab = 37;
    const stride = 40;
    const targets = [3, -1, 36, 0, 17];
    const logits = f32Values(rng, targets.length * vocab, 8);
    const padded = new Float32Array(targets.length * stride).fill(7);
    for (let t = 0; t < targets.length; t++)
      padded.set(logits.subarray(t * vocab, (t + 1) * vocab), t * stride);
    const dscale = 0.25;
    const want = crossEntropyRef(logits, targets, vocab, dscale);
    const wantPadded = new Float64Array(padded.length);
    for (let t = 0; t < targets.length; t++)
      wantPadded.set(want.dlogits.subarray(t * vocab, (t + 1) * vocab), t * stride);
    const got = splitRuns(targets.length, [2], (wasm) => {
      const pl = wasm.putF32(padded);
      const pt = putI32(wasm, targets);
      const ploss = wasm.alloc(targets.length * 4);
      return {
        call: (r0, r1) => wasm.k.crossEntropy!(pl, pt, ploss, vocab, stride, dscale, r0, r1),
        read: () => Float32Array.from([...wasm.f32(ploss, targets.length), ...wasm.f32(pl, padded.length)]),
      };
    });
    expectClose(got.subarray(0, targets.length), want.losses, () => 1e-5 * 8, "losses");
    expectClose(got.subarray(targets.length), wantPadded, () => 1e-6 * dscale, "dlogits");
  });

  it("adamw updates, zeroes the gradient; sumSquares adds blocks", () => {
    const n = 4096 * 2 + 7;
    const param = f32Values(rng, n);
    const grad = f32Values(rng, n, 0.1);
    const m = f32Values(rng, n, 0.01);
    const v = Float64Array.from(Float32Array.from(randomArray(rng, n, 1e-3).map(Math.abs)));
    const h = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradScale: 0.5, step: 3 };
    const wasm = new WasmHarness();
    const [pp, pg, pm, pv] = [param, grad, m, v].map((a) => wasm.putF32(Float32Array.from(a)));
    const sq = wasm.alloc(3 * 8);
    wasm.k.sumSquares!(pg, n, sq, 0, 3);
    const blocks = new Float64Array(wasm.memory.buffer, sq, 3);
    expect(Math.abs(blocks[0]! + blocks[1]! + blocks[2]! - sumSquaresRef(grad))).toBeLessThan(
      1e-6 * sumSquaresRef(grad),
    );
    const bc1 = 1 / (1 - h.beta1 ** h.step);
    const bc2 = 1 / (1 - h.beta2 ** h.step);
    wasm.k.adamw!(pp, pg, pm, pv, h.lr, h.beta1, h.beta2, h.eps, h.weightDecay, h.gradScale, bc1, bc2, 0, n);
    const [wp, wm, wv] = [param.slice(), m.slice(), v.slice()];
    adamwRef(wp, grad, wm, wv, h);
    const terms = (i: number) => h.beta1 * Math.abs(m[i]!) + (1 - h.beta1) * Math.abs(grad[i]! * h.gradScale);
    expectClose(wasm.f32(pm, n), wm, (i) => 1e-6 * terms(i), "m");
    expectClose(wasm.f32(pv, n), wv, (i) => 1e-5 * Math.abs(wv[i]!) + 1e-12, "v");
    // the update is at most ~lr per element; compare the change to it
    expectClose(wasm.f32(pp, n), wp, () => 1e-4 * h.lr + 1e-7, "param");
    expect(wasm.f32(pg, n).every((g) => g === 0)).toBe(true);
  });
});
