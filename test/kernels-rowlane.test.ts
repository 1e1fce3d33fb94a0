/**
 * The row-lane layout r4 (the relaxed module's Q4_0 and K-quant products; Backend.prepareWeight):
 * repack<T>r4 lays a matrix out as the references in src/quant/layout-reference.ts state,
 * quantizeQ8_0S writes the reference's Q8_0S blocks, and each matmul<T>r4 gives every token
 * matmul<T>'s bits, at token counts that use both tiles, on row ranges split as threads split
 * them, and at the ends of the i16 range its sums use. The plain
 * module, which has no 8-bit dot product, refuses the r4 products.
 */
import { describe, expect, it } from "vitest";
import { GGMLType } from "../src/formats/ggml-types.js";
import {
  interleaveRows4Ref,
  q8_0ToQ8_0S,
  repackQ2_Kr4Ref,
  repackQ3_Kr4Ref,
  repackQ4_0r4Ref,
  repackQ4_Kr4Ref,
  repackQ5_Kr4Ref,
  repackQ6_Kr4Ref,
} from "../src/quant/layout-reference.js";
import { quantizeRow } from "../src/quant/reference.js";
import { rowBytes } from "../src/runtime/backend.js";
import { Rng } from "../src/util/random.js";
import {
  arena,
  instantiate,
  type Kernels,
  plainModule,
  relaxedModule,
  weightBytes,
} from "./helpers/kernel-modules.js";

const T = GGMLType;

function setup(module: WebAssembly.Module) {
  const memory = new WebAssembly.Memory({ initial: 256, maximum: 256, shared: true });
  return { memory, k: instantiate(module, memory), put: arena(memory) };
}

/** Activations with blocks that stress the quantizers: zeros, ties, equal magnitudes, tiny, huge. */
function activations(rng: Rng, n: number, cols: number): Float32Array {
  const x = rng.fillNormal(new Float32Array(n * cols), 1);
  const t1 = x.subarray(cols, 2 * cols);
  t1.fill(0, 0, 32);
  for (let j = 32; j < 64; j++) t1[j] = (j % 2 ? -1 : 1) * ((j % 127) + 0.5);
  for (let j = 64; j < 96; j++) t1[j] = (rng.nextFloat() - 0.5) * 1e-30;
  for (let j = 96; j < 128; j++) t1[j] = (rng.nextFloat() - 0.5) * 1e4;
  return x;
}

/** Activations at the ends of the 8-bit range (±127 once quantized), in six sign patterns. */
function extremeActivations(cols: number): Float32Array {
  const n = 6;
  const x = new Float32Array(n * cols);
  for (let j = 0; j < cols; j++) {
    x[j] = 1;
    x[cols + j] = -1;
    x[2 * cols + j] = j % 2 ? -1 : 1;
    x[3 * cols + j] = j % 3 ? 0.5 : -1;
    x[4 * cols + j] = j < 16 || (j >= 64 && j < 80) ? 1 : -1;
    x[5 * cols + j] = j % 32 < 16 ? -1 : 1;
  }
  return x;
}

const modules: [string, WebAssembly.Module | undefined][] = [
  ["plain", plainModule],
  ["relaxed", relaxedModule],
];

describe.each(modules.filter(([, m]) => m !== undefined))("%s module", (_, module) => {
  it("quantizeQ8_0S writes the reference's blocks: Q8_0's quants, d as f32, 8·Σq", () => {
    const { memory, k, put } = setup(module!);
    const n = 5;
    const cols = 256;
    const x = activations(new Rng(11), n, cols);
    const pq = put(new Uint8Array(n * (cols / 32) * 40).fill(0xa5));
    const px = put(new Uint8Array(x.buffer));
    k.quantizeQ8_0S!(px, pq, cols, n, 0, 2);
    k.quantizeQ8_0S!(px, pq, cols, n, 2, 4);
    const rb = (cols / 32) * 40;
    for (let t = 0; t < n; t++) {
      const want =
        t < 4
          ? q8_0ToQ8_0S(quantizeRow(T.Q8_0, x.subarray(t * cols, (t + 1) * cols)))
          : new Uint8Array(rb).fill(0xa5);
      expect(new Uint8Array(memory.buffer, pq + t * rb, rb), `token ${t}`).toEqual(want);
    }
  });

  it("repackQ4_0r4 turns the x4 layout into the r4 layout", () => {
    const { memory, k, put } = setup(module!);
    const rows = 16;
    const cols = 96;
    const w = weightBytes("Q4_0", T.Q4_0, rows, cols, new Rng(5));
    const p = put(interleaveRows4Ref(w, rows, rowBytes("Q4_0", cols), 18));
    k.repackQ4_0r4!(p, cols, 0, 1);
    k.repackQ4_0r4!(p, cols, 1, rows / 4);
    expect(new Uint8Array(memory.buffer, p, w.length)).toEqual(repackQ4_0r4Ref(w, rows, cols));
  });

  it.each([
    ["Q2_K", T.Q2_K, repackQ2_Kr4Ref],
    ["Q3_K", T.Q3_K, repackQ3_Kr4Ref],
    ["Q4_K", T.Q4_K, repackQ4_Kr4Ref],
    ["Q5_K", T.Q5_K, repackQ5_Kr4Ref],
    ["Q6_K", T.Q6_K, repackQ6_Kr4Ref],
  ] as const)("repack%sr4 turns the row-major matrix into the r4 layout", (format, type, ref) => {
    const { memory, k, put } = setup(module!);
    const rows = 12;
    const cols = 512;
    const rb = rowBytes(format, cols);
    const w = weightBytes(format, type, rows, cols, new Rng(6));
    const p = put(w);
    const scratch = put(new Uint8Array(2 * 4 * rb));
    // two threads' group ranges, each with its own scratch
    k[`repack${format}r4`]!(p, cols, scratch, 4 * rb, 0, 1, 0);
    k[`repack${format}r4`]!(p, cols, scratch, 4 * rb, 1, rows / 4, 1);
    expect(new Uint8Array(memory.buffer, p, w.length)).toEqual(ref(w, rows, cols));
  });
});

interface RowLane {
  format: "Q4_0" | "Q2_K" | "Q3_K" | "Q4_K" | "Q5_K" | "Q6_K";
  type: number;
  block: number;
  /** the r4 layout, and the activation quantizers of the row-major and the r4 product */
  repack: (w: Uint8Array, rows: number, cols: number) => Uint8Array;
  quantize: string;
  quantizeR4: string;
  /** sets every quant of row r's block at byte o to its extreme pattern */
  extreme: (w: Uint8Array, o: number, r: number) => void;
}

const NIBBLES = [[0x00], [0xff], [0x0f, 0xf0], [0x80, 0x08], [0xff], [0x00], [0xf0], [0x0f]];
const fill = (w: Uint8Array, from: number, to: number, pattern: number[]) => {
  for (let j = from; j < to; j++) w[j] = pattern[(j - from) % pattern.length]!;
};

const ROW_LANE: RowLane[] = [
  {
    format: "Q4_0",
    type: T.Q4_0,
    block: 32,
    repack: repackQ4_0r4Ref,
    quantize: "quantizeQ8_0",
    quantizeR4: "quantizeQ8_0S",
    extreme: (w, o, r) => fill(w, o + 2, o + 18, NIBBLES[r]!),
  },
  {
    format: "Q2_K",
    type: T.Q2_K,
    block: 256,
    repack: repackQ2_Kr4Ref,
    quantize: "quantizeQ8_K",
    quantizeR4: "quantizeQ8_K",
    // largest scales and mins (15), then 2-bit quants 0 or 3 in the nibble pattern
    extreme: (w, o, r) => {
      fill(w, o, o + 16, [0xff]);
      fill(w, o + 16, o + 80, NIBBLES[r]!);
    },
  },
  {
    format: "Q3_K",
    type: T.Q3_K,
    block: 256,
    repack: repackQ3_Kr4Ref,
    quantize: "quantizeQ8_K",
    quantizeR4: "quantizeQ8_K",
    // scales at both ends (6-bit 63 and 0: 31 and -32 in turn), quants all 3 or all -4 (every bit
    // of hmask and qs set or clear)
    extreme: (w, o, r) => {
      fill(w, o + 96, o + 108, [r % 2 ? 0x00 : 0xff]);
      fill(w, o, o + 96, [[0x00], [0xff], [0xff], [0x00], [0xff], [0x00], [0xff], [0x00]][r]!);
    },
  },
  {
    format: "Q4_K",
    type: T.Q4_K,
    block: 256,
    repack: repackQ4_Kr4Ref,
    quantize: "quantizeQ8_K",
    quantizeR4: "quantizeQ8_K",
    // largest 6-bit scales and mins (63), then the nibble pattern
    extreme: (w, o, r) => {
      fill(w, o + 4, o + 16, [0xff]);
      fill(w, o + 16, o + 144, NIBBLES[r]!);
    },
  },
  {
    format: "Q5_K",
    type: T.Q5_K,
    block: 256,
    repack: repackQ5_Kr4Ref,
    quantize: "quantizeQ8_K",
    quantizeR4: "quantizeQ8_K",
    // largest scales and mins, the nibble pattern, and every fifth bit set (quants up to 31) or clear
    extreme: (w, o, r) => {
      fill(w, o + 4, o + 16, [0xff]);
      fill(w, o + 16, o + 48, [r % 2 ? 0x00 : 0xff]);
      fill(w, o + 48, o + 176, NIBBLES[r]!);
    },
  },
  {
    format: "Q6_K",
    type: T.Q6_K,
    block: 256,
    repack: repackQ6_Kr4Ref,
    quantize: "quantizeQ8_K",
    quantizeR4: "quantizeQ8_K",
    // scales at both ends (127, -128 in turn), then quants 0 or 63 (all bits of ql and qh alike)
    extreme: (w, o, r) => {
      fill(w, o + 192, o + 208, [0x7f, 0x80]);
      fill(w, o, o + 192, [[0x00], [0xff], [0xff], [0x00], [0xff], [0x00], [0xff], [0x00]][r]!);
    },
  },
];

describe.skipIf(!relaxedModule).each(ROW_LANE)("relaxed module: matmul$format r4", (f) => {
  /** matmul<format> (row-major) and matmul<format>r4 on the same weights and inputs. */
  function compare(w: Uint8Array, x: Float32Array, rows: number, cols: number, ns: number[], acc: number) {
    const { memory, put } = setup(relaxedModule!);
    const kernels = { plain: instantiate(plainModule, memory), relaxed: instantiate(relaxedModule!, memory) };
    const nMax = x.length / cols;
    const pw = put(w);
    const pr = put(f.repack(w, rows, cols));
    const px = put(new Uint8Array(x.buffer));
    const pq = put(new Uint8Array(nMax * cols * 2));
    const ps = put(new Uint8Array(nMax * cols * 2));
    kernels.plain[f.quantize]!(px, pq, cols, nMax, 0, nMax);
    kernels.relaxed[f.quantizeR4]!(px, ps, cols, nMax, 0, nMax);
    const start = new Float32Array(nMax * rows).map((_, i) => i / 7);
    for (const n of ns) {
      const run = (kernel: string, k: Kernels, weights: number, input: number) => {
        const o = put(new Uint8Array(start.buffer));
        const split = 4 * Math.floor(rows / 8);
        k[kernel]!(weights, input, o, rows, cols, n, acc, 0, split);
        k[kernel]!(weights, input, o, rows, cols, n, acc, split, rows);
        return Array.from(new Uint32Array(memory.buffer, o, n * rows));
      };
      const want = run(`matmul${f.format}`, kernels.plain, pw, pq);
      expect(run(`matmul${f.format}r4`, kernels.relaxed, pr, ps), `n=${n} acc=${acc}`).toEqual(want);
      expect(run(`matmul${f.format}`, kernels.relaxed, pw, pq), `n=${n} acc=${acc}`).toEqual(want);
    }
  }

  it("gives the row-major product's bits for every token count and row split", () => {
    const rng = new Rng(21 + f.type);
    const rows = 24;
    const cols = 5 * f.block;
    const w = weightBytes(f.format, f.type, rows, cols, rng);
    const x = activations(rng, 19, cols);
    compare(w, x, rows, cols, [1, 2, 3, 4, 5, 7, 8, 16, 17, 19], 0);
    compare(w, x, rows, cols, [1, 6, 19], 1);
  });

  it("keeps exact sums at the extremes: nibbles 0 and 15 against activations ±127", () => {
    const rows = 8;
    const cols = 4 * f.block;
    const w = weightBytes(f.format, f.type, rows, cols, new Rng(22 + f.type));
    const rb = rowBytes(f.format, cols);
    const bytes = rb / (cols / f.block);
    for (let r = 0; r < rows; r++) {
      for (let b = 0; b < cols / f.block; b++) f.extreme(w, r * rb + b * bytes, r);
    }
    compare(w, extremeActivations(cols), rows, cols, [1, 4, 6], 0);
  });
});

describe("plain module", () => {
  it.each(["matmulQ4_0r4", "matmulQ2_Kr4", "matmulQ3_Kr4", "matmulQ4_Kr4", "matmulQ6_Kr4"])(
    "refuses %s (it has no 8-bit dot product)",
    (kernel) => {
      const { k } = setup(plainModule);
      expect(() => k[kernel]!(1 << 20, 1 << 20, 1 << 20, 4, 256, 1, 0, 0, 4)).toThrow(/unreachable/);
    },
  );
});
