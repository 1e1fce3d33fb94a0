/**
 * The f32 kernels (src/kernels/assembly/f32.ts) against their TypeScript twins
 * (src/runtime/reference.ts) on seeded random data.
 *
 * Error bounds, per element:
 *   matmul (f32, f16, bf16 weights): |err| <= 1e-5 · Σ_k |w·x|. The kernel sums in f32 along
 *     chains of about cols/4 + 3 additions, each rounding by at most 2^-24 of a partial sum no
 *     larger than Σ|w·x|; for cols <= 512 that worst case is under 8e-6 · Σ|w·x|.
 *     Half conversion is exact: every f16 and bf16 bit pattern is checked for equality (f16
 *     inf/NaN, exponent 31, are not special-cased by the kernel and read as ±2^16·(1 + m/1024)).
 *   rmsNorm: |err| <= 1e-5 · |ref|.
 *   rope (angles, cos/sin and rotation in f64 in both): |err| <= 1e-6 · (|x0| + |x1|).
 *   softmax, siluMul (vector exp, rel err < 2e-7): |err| <= 1e-5 · |ref| + 1e-30; the exp itself
 *     is checked through silu at large negative gates: rel 4e-7.
 *   attention: |err| <= 1e-5 · Σ_p prob_p · |v_p,d| + 1e-7 (prob from the float64 reference).
 *   add: exact.
 * Every kernel is also run on a part of its rows: rows outside [r0, r1) must keep a sentinel.
 */
import { describe, expect, it } from "vitest";
import {
  addRef,
  alibiSlopeRef,
  attentionRef,
  bf16ToF32,
  clampRef,
  f16ToF32,
  f32ToBF16,
  f32ToF16,
  geluMulRef,
  geluOfRef,
  geluRef,
  geluTableRef,
  layerNormRef,
  matmulBF16Ref,
  matmulF16Ref,
  matmulF32Ref,
  rmsNormRef,
  ropeRef,
  scaleRef,
  siluMulRef,
  softmaxRef,
} from "../src/runtime/reference.js";
import { WasmHarness } from "./helpers/wasm.js";

const SENTINEL = -12345.5;

/** mulberry32: a small seeded generator of uniform numbers in [0, 1). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomF32(rand: () => number, length: number, scale = 1): Float32Array {
  const a = new Float32Array(length);
  for (let i = 0; i < length; i++) a[i] = (rand() * 2 - 1) * scale;
  return a;
}

function putU16(wasm: WasmHarness, data: Uint16Array): number {
  return wasm.putU8(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}

/** The largest |got - want| / bound over all elements (<= 1 passes), with where it happened. */
function worstRatio(got: Float32Array, want: ArrayLike<number>, bound: (i: number) => number) {
  let worst = 0;
  let at = -1;
  for (let i = 0; i < got.length; i++) {
    const err = Math.abs(got[i]! - want[i]!);
    const ratio = Number.isNaN(err) ? Infinity : err / bound(i);
    if (ratio > worst) {
      worst = ratio;
      at = i;
    }
  }
  return { worst, at, got: got[at], want: want[at] };
}

function expectWithin(
  got: Float32Array,
  want: ArrayLike<number>,
  bound: (i: number) => number,
  what: string,
) {
  const r = worstRatio(got, want, bound);
  expect(r.worst, `${what}: element ${r.at} is ${r.got}, reference ${r.want}`).toBeLessThanOrEqual(1);
}

// ---------------------------------------------------------------------------------------------
// Matrix products
// ---------------------------------------------------------------------------------------------

type WeightKind = "f32" | "f16" | "bf16";

interface MatmulCase {
  rows: number;
  cols: number;
  n: number;
  r0: number;
  r1: number;
  acc: number;
}

function runMatmul(kind: WeightKind, c: MatmulCase, seed: number) {
  const rand = rng(seed);
  const { rows, cols, n, r0, r1, acc } = c;
  const wf = randomF32(rand, rows * cols);
  const x = randomF32(rand, n * cols, 2);
  const start = randomF32(rand, n * rows);
  const wasm = new WasmHarness();
  let wPtr: number;
  let weightAt: (i: number) => number;
  const want = start.slice();
  if (kind === "f32") {
    wPtr = wasm.putF32(wf);
    weightAt = (i) => wf[i]!;
    matmulF32Ref(wf, x, want, rows, cols, n, acc);
  } else {
    const bits = Uint16Array.from(wf, kind === "f16" ? f32ToF16 : f32ToBF16);
    wPtr = putU16(wasm, bits);
    const toF32 = kind === "f16" ? f16ToF32 : bf16ToF32;
    weightAt = (i) => toF32(bits[i]!);
    (kind === "f16" ? matmulF16Ref : matmulBF16Ref)(bits, x, want, rows, cols, n, acc);
  }
  const xPtr = wasm.putF32(x);
  // rows outside [r0, r1) hold the sentinel, rows inside the start values (used when acc = 1)
  const initial = start.slice();
  for (let t = 0; t < n; t++)
    for (let r = 0; r < rows; r++) if (r < r0 || r >= r1) initial[t * rows + r] = SENTINEL;
  const outPtr = wasm.putF32(initial);
  const name = `matmul${{ f32: "F32", f16: "F16", bf16: "BF16" }[kind]}`;
  wasm.k[name]!(wPtr, xPtr, outPtr, rows, cols, n, acc, r0, r1);
  const got = wasm.f32(outPtr, n * rows);

  const expected = new Float64Array(n * rows);
  const bound = new Float64Array(n * rows);
  for (let t = 0; t < n; t++) {
    for (let r = 0; r < rows; r++) {
      const i = t * rows + r;
      if (r < r0 || r >= r1) {
        expected[i] = SENTINEL;
        bound[i] = 0;
        continue;
      }
      let abs = 0;
      for (let k = 0; k < cols; k++) abs += Math.abs(weightAt(r * cols + k) * x[t * cols + k]!);
      expected[i] = want[i]!;
      bound[i] = 1e-5 * (abs + (acc ? Math.abs(start[i]!) : 0));
    }
  }
  const r = worstRatio(got, expected, (i) => bound[i]!);
  const where = `${name} rows=${rows} cols=${cols} n=${n} [${r0},${r1}) acc=${acc}`;
  expect(r.worst, `${where}: element ${r.at} is ${r.got}, reference ${r.want}`).toBeLessThanOrEqual(1);
}

const matmulCases: MatmulCase[] = [];
for (const [rows, cols] of [
  [1, 4],
  [3, 8],
  [4, 12],
  [7, 64],
  [13, 36],
  [16, 260],
  [9, 512],
]) {
  for (const n of [1, 2, 3, 4, 5, 9])
    matmulCases.push({ rows: rows!, cols: cols!, n, r0: 0, r1: rows!, acc: 0 });
}
matmulCases.push(
  { rows: 13, cols: 36, n: 6, r0: 2, r1: 11, acc: 0 },
  { rows: 13, cols: 36, n: 6, r0: 5, r1: 6, acc: 1 },
  { rows: 20, cols: 68, n: 7, r0: 3, r1: 17, acc: 1 },
  { rows: 20, cols: 68, n: 1, r0: 3, r1: 17, acc: 1 },
  { rows: 32, cols: 128, n: 8, r0: 8, r1: 24, acc: 0 },
  { rows: 32, cols: 128, n: 8, r0: 0, r1: 32, acc: 1 },
  { rows: 12, cols: 20, n: 4, r0: 12, r1: 12, acc: 0 },
);

describe.each(["f32", "f16", "bf16"] as const)("matmul with %s weights", (kind) => {
  it("matches the reference on odd shapes, partial row ranges and acc = 1", () => {
    for (const [i, c] of matmulCases.entries()) runMatmul(kind, c, 1000 + i);
  });

  if (kind !== "f32") {
    it("converts every 16-bit pattern exactly", () => {
      const rows = 65536;
      const cols = 4;
      const bits = new Uint16Array(rows * cols);
      for (let h = 0; h < rows; h++) bits[h * cols] = h;
      const wasm = new WasmHarness();
      const wPtr = putU16(wasm, bits);
      const xPtr = wasm.putF32([1, 0, 0, 0]);
      const outPtr = wasm.alloc(rows * 4);
      wasm.k[kind === "f16" ? "matmulF16" : "matmulBF16"]!(wPtr, xPtr, outPtr, rows, cols, 1, 0, 0, rows);
      const got = wasm.f32(outPtr, rows);
      // f16 halves with exponent 31 (inf, NaN) are documented to read as ±2^16·(1 + m/1024)
      const toF32 =
        kind === "f16"
          ? (h: number) =>
              ((h >> 10) & 0x1f) === 31
                ? (h & 0x8000 ? -1 : 1) * 2 ** 16 * (1 + (h & 0x3ff) / 1024)
                : f16ToF32(h)
          : bf16ToF32;
      for (let h = 0; h < rows; h++) {
        const want = toF32(h);
        const ok = Number.isNaN(want) ? Number.isNaN(got[h]!) : got[h] === want;
        if (!ok) expect(got[h], `bits 0x${h.toString(16)}`).toBe(want);
      }
    });
  }
});

describe("half conversions in the reference", () => {
  it("round-trips f16 and bf16 bit patterns", () => {
    for (let h = 0; h < 65536; h++) {
      const f = f16ToF32(h);
      if (!Number.isNaN(f)) expect(f32ToF16(f)).toBe(h);
      const b = bf16ToF32(h);
      if (!Number.isNaN(b)) expect(f32ToBF16(b)).toBe(h);
    }
    expect(f32ToF16(65520)).toBe(0x7c00); // rounds up past the largest half
    expect(f32ToF16(1 + 2 ** -11)).toBe(0x3c00); // ties to even
    expect(f32ToF16(2 ** -25)).toBe(0); // half the smallest subnormal: ties to even (zero)
    expect(f32ToBF16(1 + 2 ** -8)).toBe(0x3f80);
  });
});

// ---------------------------------------------------------------------------------------------
// RMS norm
// ---------------------------------------------------------------------------------------------

describe("rmsNorm", () => {
  for (const [dim, n, r0, r1, inPlace] of [
    [7, 3, 0, 3, false],
    [64, 5, 1, 4, false],
    [100, 4, 0, 4, true],
    [2048, 3, 2, 3, false],
    [4096, 2, 0, 2, true],
    [96, 3, 0, 3, false], // inputs of 1e-3: eps is a large part of the mean square
  ] as const) {
    it(`dim ${dim}, tokens [${r0}, ${r1}) of ${n}${inPlace ? ", in place" : ""}`, () => {
      const rand = rng(dim * 31 + n);
      const x = randomF32(rand, n * dim, dim === 96 ? 1e-3 : 3);
      const weight = randomF32(rand, dim, 2);
      const eps = 1e-5;
      const want = new Float32Array(n * dim);
      rmsNormRef(x, weight, want, dim, eps, n);
      const wasm = new WasmHarness();
      const xPtr = wasm.putF32(x);
      const wPtr = wasm.putF32(weight);
      const outPtr = inPlace ? xPtr : wasm.putF32(new Float32Array(n * dim).fill(SENTINEL));
      wasm.k["rmsNorm"]!(xPtr, wPtr, outPtr, dim, eps, r0, r1);
      const got = wasm.f32(outPtr, n * dim);
      const expected = Float64Array.from(want, (w, i) => {
        const t = Math.floor(i / dim);
        return t >= r0 && t < r1 ? w : inPlace ? x[i]! : SENTINEL;
      });
      expectWithin(got, expected, (i) => 1e-5 * Math.abs(expected[i]!) + 1e-30, "rmsNorm");
    });
  }
});

// ---------------------------------------------------------------------------------------------
// Rope
// ---------------------------------------------------------------------------------------------

describe("rope", () => {
  const cases = [
    { n: 3, nHeads: 4, headDim: 64, ropeDim: 64, pos0: 0, neox: 0, r0: 0, r1: 12 },
    { n: 3, nHeads: 4, headDim: 64, ropeDim: 64, pos0: 0, neox: 1, r0: 0, r1: 12 },
    { n: 5, nHeads: 3, headDim: 48, ropeDim: 32, pos0: 17, neox: 0, r0: 2, r1: 13 },
    { n: 5, nHeads: 3, headDim: 48, ropeDim: 32, pos0: 17, neox: 1, r0: 2, r1: 13 },
    { n: 2, nHeads: 2, headDim: 128, ropeDim: 128, pos0: 1000, neox: 0, r0: 1, r1: 2 },
    { n: 2, nHeads: 2, headDim: 128, ropeDim: 128, pos0: 1000, neox: 1, r0: 0, r1: 4 },
    { n: 4, nHeads: 5, headDim: 80, ropeDim: 20, pos0: 3, neox: 1, r0: 4, r1: 17 },
    // with rope_freqs divisors (Llama 3.1): 1 for the fast pairs, up to 8 for the slow ones
    { n: 3, nHeads: 2, headDim: 64, ropeDim: 64, pos0: 500, neox: 0, r0: 0, r1: 6, factors: true },
    { n: 3, nHeads: 2, headDim: 64, ropeDim: 48, pos0: 9000, neox: 1, r0: 1, r1: 5, factors: true },
  ];
  for (const c of cases) {
    it(`${c.neox ? "neox" : "llama"} order, n=${c.n} heads=${c.nHeads} headDim=${c.headDim} ropeDim=${c.ropeDim} pos0=${c.pos0} rows [${c.r0}, ${c.r1})${c.factors ? ", frequency factors" : ""}`, () => {
      const rand = rng(c.headDim * 7 + c.pos0 + c.neox);
      const width = c.nHeads * c.headDim;
      const x = randomF32(rand, c.n * width, 2);
      const freqBase = 10000;
      const freqScale = Math.fround(0.75);
      const factors = c.factors
        ? Float32Array.from({ length: c.ropeDim / 2 }, (_, i) => 1 + (7 * i) / (c.ropeDim / 2) + rand())
        : undefined;
      const want = x.slice();
      ropeRef(want, c.n, c.nHeads, c.headDim, c.ropeDim, c.pos0, freqBase, freqScale, c.neox, factors);
      // rows outside [r0, r1) must stay as they were
      for (let row = 0; row < c.n * c.nHeads; row++) {
        if (row >= c.r0 && row < c.r1) continue;
        for (let d = 0; d < c.headDim; d++) want[row * c.headDim + d] = x[row * c.headDim + d]!;
      }
      const wasm = new WasmHarness();
      const xPtr = wasm.putF32(x);
      const fPtr = factors ? wasm.putF32(factors) : 0;
      wasm.k["rope"]!(
        xPtr,
        c.nHeads,
        c.headDim,
        c.ropeDim,
        c.pos0,
        freqBase,
        freqScale,
        c.neox,
        fPtr,
        c.r0,
        c.r1,
      );
      const got = wasm.f32(xPtr, c.n * width);
      const half = c.ropeDim / 2;
      const partner = (i: number) => {
        const d = i % c.headDim;
        if (d >= c.ropeDim) return i;
        if (c.neox) return d < half ? i + half : i - half;
        return d % 2 === 0 ? i + 1 : i - 1;
      };
      expectWithin(got, want, (i) => 1e-6 * (Math.abs(x[i]!) + Math.abs(x[partner(i)]!)) + 1e-30, "rope");
    });
  }

  it("leaves dimensions past ropeDim bit-identical", () => {
    const wasm = new WasmHarness();
    const x = randomF32(rng(5), 2 * 64, 1);
    const xPtr = wasm.putF32(x);
    wasm.k["rope"]!(xPtr, 1, 64, 16, 9, 10000, 1, 0, 0, 0, 2);
    const got = wasm.f32(xPtr, 128);
    for (let row = 0; row < 2; row++)
      for (let d = 16; d < 64; d++) expect(got[row * 64 + d]).toBe(x[row * 64 + d]);
  });
});

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

describe("attention", () => {
  const cases = [
    { n: 1, pos0: 0, nHeads: 2, nKvHeads: 2, headDim: 64, r0: 0, r1: 2 },
    { n: 1, pos0: 12, nHeads: 4, nKvHeads: 1, headDim: 64, r0: 0, r1: 4 },
    { n: 5, pos0: 0, nHeads: 4, nKvHeads: 2, headDim: 48, r0: 0, r1: 20 },
    { n: 6, pos0: 9, nHeads: 4, nKvHeads: 2, headDim: 64, r0: 3, r1: 21 },
    { n: 3, pos0: 30, nHeads: 6, nKvHeads: 3, headDim: 48, r0: 1, r1: 17 },
    { n: 2, pos0: 61, nHeads: 8, nKvHeads: 2, headDim: 128, r0: 0, r1: 16 },
    { n: 7, pos0: 2, nHeads: 2, nKvHeads: 1, headDim: 20, r0: 0, r1: 14 },
    // ALiBi (MPT), 12 heads: slopes of the first 8 and of the 4 past the largest power of 2
    { n: 4, pos0: 20, nHeads: 12, nKvHeads: 12, headDim: 16, r0: 2, r1: 45, maxBias: 8 },
    { n: 3, pos0: 5, nHeads: 4, nKvHeads: 2, headDim: 32, r0: 0, r1: 12, maxBias: 8 },
  ];
  for (const c of cases as ((typeof cases)[number] & { maxBias?: number })[]) {
    const maxBias = c.maxBias ?? 0;
    it(`n=${c.n} pos0=${c.pos0} heads=${c.nHeads}/${c.nKvHeads} headDim=${c.headDim} rows [${c.r0}, ${c.r1})${maxBias ? " ALiBi" : ""}`, () => {
      const rand = rng(c.n * 101 + c.pos0 * 7 + c.headDim);
      const positions = c.pos0 + c.n;
      const qWidth = c.nHeads * c.headDim;
      const kvWidth = c.nKvHeads * c.headDim;
      const q = randomF32(rand, c.n * qWidth, 2);
      const k = randomF32(rand, positions * kvWidth, 2);
      const v = randomF32(rand, positions * kvWidth, 3);
      // k and v rows past the last position a token may see are poisoned: causality is checked
      // by the result staying finite and matching the reference.
      const kCache = new Float32Array((positions + 3) * kvWidth).fill(Number.NaN);
      const vCache = new Float32Array((positions + 3) * kvWidth).fill(Number.NaN);
      kCache.set(k);
      vCache.set(v);
      const want = new Float32Array(c.n * qWidth);
      attentionRef(q, k, v, want, c.n, c.pos0, c.nHeads, c.nKvHeads, c.headDim, maxBias);

      const wasm = new WasmHarness();
      const qPtr = wasm.putF32(q);
      const kPtr = wasm.putF32(kCache);
      const vPtr = wasm.putF32(vCache);
      const outPtr = wasm.putF32(new Float32Array(c.n * qWidth).fill(SENTINEL));
      const scratchStride = ((positions * 4 + 15) & ~15) + 64;
      const scratch = wasm.alloc(3 * scratchStride);
      const tid = 2;
      wasm.k["attention"]!(
        qPtr,
        kPtr,
        vPtr,
        outPtr,
        c.n,
        c.pos0,
        c.nHeads,
        c.nKvHeads,
        c.headDim,
        scratch,
        scratchStride,
        maxBias,
        c.r0,
        c.r1,
        tid,
      );
      const got = wasm.f32(outPtr, c.n * qWidth);

      // bound: 1e-5 · Σ_p prob_p · |v_p,d|, with prob from a float64 softmax
      const group = c.nHeads / c.nKvHeads;
      const expected = new Float64Array(c.n * qWidth);
      const bound = new Float64Array(c.n * qWidth);
      for (let row = 0; row < c.n * c.nHeads; row++) {
        const base = row * c.headDim;
        if (row < c.r0 || row >= c.r1) {
          expected.fill(SENTINEL, base, base + c.headDim);
          bound.fill(1e-30, base, base + c.headDim);
          continue;
        }
        const t = Math.floor(row / c.nHeads);
        const kvh = Math.floor((row % c.nHeads) / group);
        const len = c.pos0 + t + 1;
        const scores: number[] = [];
        for (let p = 0; p < len; p++) {
          let dot = 0;
          for (let d = 0; d < c.headDim; d++) dot += q[base + d]! * k[p * kvWidth + kvh * c.headDim + d]!;
          const alibi = maxBias ? alibiSlopeRef(row % c.nHeads, c.nHeads, maxBias) * (p - (len - 1)) : 0;
          scores.push(dot / Math.sqrt(c.headDim) + alibi);
        }
        const max = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - max));
        const sum = e.reduce((a, b) => a + b, 0);
        for (let d = 0; d < c.headDim; d++) {
          let mag = 0;
          for (let p = 0; p < len; p++)
            mag += (e[p]! / sum) * Math.abs(v[p * kvWidth + kvh * c.headDim + d]!);
          expected[base + d] = want[base + d]!;
          bound[base + d] = 1e-5 * mag + 1e-7;
        }
      }
      expectWithin(got, expected, (i) => bound[i]!, "attention");
    });
  }
});

// ---------------------------------------------------------------------------------------------
// Elementwise
// ---------------------------------------------------------------------------------------------

describe("softmax", () => {
  for (const [cols, rows, r0, r1] of [
    [1, 2, 0, 2],
    [3, 4, 1, 3],
    [5, 3, 0, 3],
    [32, 5, 2, 5],
    [1001, 3, 0, 2],
    [32000, 2, 1, 2],
  ] as const) {
    it(`rows [${r0}, ${r1}) of ${rows} × ${cols}`, () => {
      const rand = rng(cols + rows);
      const x = randomF32(rand, rows * cols, 12);
      if (cols > 4) x[1] = -200; // far below the maximum: e^x underflows to zero in both
      const want = x.slice();
      softmaxRef(want, cols);
      for (let i = 0; i < rows * cols; i++) {
        const r = Math.floor(i / cols);
        if (r < r0 || r >= r1) want[i] = x[i]!;
      }
      const wasm = new WasmHarness();
      const xPtr = wasm.putF32(x);
      wasm.k["softmax"]!(xPtr, cols, r0, r1);
      const got = wasm.f32(xPtr, rows * cols);
      expectWithin(got, want, (i) => 1e-5 * Math.abs(want[i]!) + 1e-30, "softmax");
    });
  }
});

describe("siluMul", () => {
  it("matches the reference over a wide range of gates, on a partial element range", () => {
    const rand = rng(77);
    const size = 1031;
    const gate = randomF32(rand, size, 20);
    gate.set([0, -0, 1e-8, -1e-8, 80, -80, 88.5, -88.5, 100, -100], 0);
    const up = randomF32(rand, size, 3);
    const want = new Float32Array(size);
    siluMulRef(gate, up, want);
    const [r0, r1] = [1, 1030];
    want[0] = SENTINEL;
    want[1030] = SENTINEL;
    const wasm = new WasmHarness();
    const gPtr = wasm.putF32(gate);
    const uPtr = wasm.putF32(up);
    const outPtr = wasm.putF32(new Float32Array(size).fill(SENTINEL));
    wasm.k["siluMul"]!(gPtr, uPtr, outPtr, r0, r1);
    expectWithin(wasm.f32(outPtr, size), want, (i) => 1e-5 * Math.abs(want[i]!) + 1e-30, "siluMul");
  });
});

describe("vector exp", () => {
  it("has relative error under 4e-7, seen through silu(g) = g / (1 + e^-g) for g in [-80, -5]", () => {
    // here e^-g dominates 1 + e^-g, so silu carries the exp error plus four f32 roundings
    const rand = rng(11);
    const size = 4099;
    const gate = Float32Array.from({ length: size }, () => -5 - 75 * rand());
    const up = new Float32Array(size).fill(1);
    const wasm = new WasmHarness();
    const gPtr = wasm.putF32(gate);
    const uPtr = wasm.putF32(up);
    const outPtr = wasm.alloc(size * 4);
    wasm.k["siluMul"]!(gPtr, uPtr, outPtr, 0, size);
    const want = Float64Array.from(gate, (g) => g / (1 + Math.exp(-g)));
    expectWithin(wasm.f32(outPtr, size), want, (i) => 4e-7 * Math.abs(want[i]!), "exp");
  });
});

describe("layerNorm", () => {
  for (const [dim, n, r0, r1, withBias] of [
    [64, 3, 0, 3, true],
    [37, 4, 1, 3, false],
    [768, 2, 1, 2, true],
  ] as const) {
    it(`dim ${dim}, rows [${r0}, ${r1}) of ${n}${withBias ? ", with bias" : ""}: as the f32 reference, within 2 ulps`, () => {
      const rand = rng(dim + n);
      const x = randomF32(rand, n * dim, 3);
      for (let i = 0; i < dim; i++) x[i] = x[i]! + 40; // a large mean, which the centring must remove
      const weight = randomF32(rand, dim, 2);
      const bias = withBias ? randomF32(rand, dim, 1) : undefined;
      const want = new Float32Array(n * dim);
      layerNormRef(x, weight, bias, want, dim, 1e-5, n);
      const wasm = new WasmHarness();
      const xPtr = wasm.putF32(x);
      const wPtr = wasm.putF32(weight);
      const bPtr = bias ? wasm.putF32(bias) : 0;
      const outPtr = wasm.putF32(new Float32Array(n * dim).fill(SENTINEL));
      wasm.k["layerNorm"]!(xPtr, wPtr, bPtr, outPtr, dim, 1e-5, r0, r1);
      const expected = want.map((v, i) =>
        Math.floor(i / dim) >= r0 && Math.floor(i / dim) < r1 ? v : SENTINEL,
      );
      // (the sums run in a different order: the mean and variance may differ in their last bit)
      expectWithin(
        wasm.f32(outPtr, n * dim),
        expected,
        (i) => 2.4e-7 * Math.abs(expected[i]!) + 1e-6,
        "layerNorm",
      );
    });
  }
});

describe("GELU through ggml's f16 table", () => {
  const table = geluTableRef();

  it("the table is the tanh approximation rounded to f16", () => {
    for (const x of [-3, -1, -0.5, 0, 0.25, 1, 2, 5]) {
      const exact = 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * x * (1 + 0.044715 * x * x)));
      expect(f16ToF32(table[f32ToF16(x)]!)).toBeCloseTo(exact, 2);
    }
    expect(geluOfRef(-10)).toBe(0);
    expect(geluOfRef(10)).toBe(10);
    expect(geluOfRef(12.5)).toBe(12.5);
  });

  it("gelu and geluMul give the reference's bits for every f16 input and around ±10", () => {
    const halves = Float32Array.from({ length: 1 << 16 }, (_, h) => f16ToF32(h)).filter(
      (v) => Number.isFinite(v) && Math.abs(v) < 1e4,
    );
    const edges = [-10, -9.999999, -10.000001, 10, 9.999999, 10.000001, -20, 20, 1e-8, -1e-8];
    const rand = rng(5);
    const x = Float32Array.from([...halves, ...edges, ...randomF32(rand, 4000, 12)]);
    const up = randomF32(rand, x.length, 3);
    const size = x.length;
    const wasm = new WasmHarness(1024);
    const tablePtr = wasm.putU8(new Uint8Array(table.buffer));
    const xPtr = wasm.putF32(x);
    const upPtr = wasm.putF32(up);
    const outPtr = wasm.putF32(new Float32Array(size).fill(SENTINEL));
    wasm.k["gelu"]!(xPtr, outPtr, tablePtr, 1, size - 1);
    const want = new Float32Array(size);
    geluRef(x, want);
    want[0] = SENTINEL;
    want[size - 1] = SENTINEL;
    expect(wasm.f32(outPtr, size)).toEqual(want);
    wasm.k["geluMul"]!(xPtr, upPtr, outPtr, tablePtr, 0, size);
    geluMulRef(x, up, want);
    expect(wasm.f32(outPtr, size)).toEqual(want);
  });
});

describe("scale and clamp", () => {
  it("are exact, in place and on a partial element range", () => {
    const rand = rng(8);
    const size = 517;
    const x = randomF32(rand, size, 30);
    const wasm = new WasmHarness();
    const xPtr = wasm.putF32(x);
    const outPtr = wasm.putF32(new Float32Array(size).fill(SENTINEL));
    wasm.k["scale"]!(xPtr, outPtr, Math.fround(Math.sqrt(2048)), 3, 500);
    const scaled = new Float32Array(size);
    scaleRef(x, Math.sqrt(2048), scaled);
    const got = wasm.f32(outPtr, size);
    for (let i = 0; i < size; i++) expect(got[i]).toBe(i >= 3 && i < 500 ? scaled[i] : SENTINEL);
    wasm.k["clamp"]!(xPtr, 8.5, 0, 400);
    const clamped = x.slice(0, 400);
    clampRef(clamped, 8.5);
    const inPlace = wasm.f32(xPtr, size);
    expect(Array.from(inPlace.subarray(0, 400))).toEqual(Array.from(clamped));
    expect(Array.from(inPlace.subarray(400))).toEqual(Array.from(x.subarray(400)));
  });
});

describe("add", () => {
  it("is exact, in place and on a partial element range", () => {
    const rand = rng(3);
    const size = 1003;
    const a = randomF32(rand, size, 5);
    const b = randomF32(rand, size, 5);
    const want = new Float32Array(size);
    addRef(a, b, want);
    const wasm = new WasmHarness();
    const aPtr = wasm.putF32(a);
    const bPtr = wasm.putF32(b);
    wasm.k["add"]!(aPtr, bPtr, aPtr, 2, 999);
    const got = wasm.f32(aPtr, size);
    for (let i = 0; i < size; i++) expect(got[i]).toBe(i >= 2 && i < 999 ? want[i] : a[i]);
  });
});
