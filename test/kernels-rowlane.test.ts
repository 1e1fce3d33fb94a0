/**
 * Q4_0 in the r4 layout (the relaxed module's Q4_0 products; Backend.prepareWeight): repackQ4_0r4
 * lays an interleaved matrix out as repackQ4_0r4Ref states, quantizeQ8_0S writes the reference's
 * Q8_0S blocks, and matmulQ4_0r4 gives every token matmulQ4_0's bits, at token counts that use
 * both tiles, on row ranges split as threads split them, and at the ends of the i16 range its sums
 * use. The plain module, which has no 8-bit dot product, refuses the r4 product.
 */
import { describe, expect, it } from "vitest";
import { GGMLType } from "../src/formats/ggml-types.js";
import { quantizeRow } from "../src/quant/reference.js";
import { rowBytes } from "../src/runtime/backend.js";
import { interleaveRows4Ref, q8_0ToQ8_0S, repackQ4_0r4Ref } from "../src/runtime/reference.js";
import { Rng } from "../src/util/random.js";
import { arena, instantiate, plainModule, relaxedModule, weightBytes } from "./helpers/kernel-modules.js";

const T = GGMLType;

function setup(module: WebAssembly.Module) {
  const memory = new WebAssembly.Memory({ initial: 256, maximum: 256, shared: true });
  return { memory, k: instantiate(module, memory), put: arena(memory) };
}

/** Activations with blocks that stress the quantizer: zeros, ties, equal magnitudes, tiny, huge. */
function activations(rng: Rng, n: number, cols: number): Float32Array {
  const x = rng.fillNormal(new Float32Array(n * cols), 1);
  const t1 = x.subarray(cols, 2 * cols);
  t1.fill(0, 0, 32);
  for (let j = 32; j < 64; j++) t1[j] = (j % 2 ? -1 : 1) * ((j % 127) + 0.5);
  for (let j = 64; j < 96; j++) t1[j] = (rng.nextFloat() - 0.5) * 1e-30;
  for (let j = 96; j < 128; j++) t1[j] = (rng.nextFloat() - 0.5) * 1e4;
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
    const rng = new Rng(5);
    const rows = 16;
    const cols = 96;
    const rb = rowBytes("Q4_0", cols);
    const w = weightBytes("Q4_0", T.Q4_0, rows, cols, rng);
    const p = put(interleaveRows4Ref(w, rows, rb, 18));
    k.repackQ4_0r4!(p, cols, 0, 1);
    k.repackQ4_0r4!(p, cols, 1, rows / 4);
    expect(new Uint8Array(memory.buffer, p, w.length)).toEqual(repackQ4_0r4Ref(w, rows, cols));
  });
});

describe.skipIf(!relaxedModule)("relaxed module: matmulQ4_0r4", () => {
  /** matmulQ4_0 (row-major, Q8_0) and matmulQ4_0r4 (r4, Q8_0S) on the same weights and inputs. */
  function compare(w: Uint8Array, x: Float32Array, rows: number, cols: number, ns: number[], acc: number) {
    const { memory, put } = setup(relaxedModule!);
    const kernels = { plain: instantiate(plainModule, memory), relaxed: instantiate(relaxedModule!, memory) };
    const nMax = x.length / cols;
    const pw = put(w);
    const pr = put(repackQ4_0r4Ref(w, rows, cols));
    const px = put(new Uint8Array(x.buffer));
    const pq = put(new Uint8Array(nMax * cols * 2));
    const ps = put(new Uint8Array(nMax * cols * 2));
    kernels.plain.quantizeQ8_0!(px, pq, cols, nMax, 0, nMax);
    kernels.relaxed.quantizeQ8_0S!(px, ps, cols, nMax, 0, nMax);
    const start = new Float32Array(nMax * rows).map((_, i) => i / 7);
    for (const n of ns) {
      const run = (kernel: string, k: typeof kernels.plain, weights: number, input: number) => {
        const o = put(new Uint8Array(start.buffer));
        const split = 4 * Math.floor(rows / 8);
        k[kernel]!(weights, input, o, rows, cols, n, acc, 0, split);
        k[kernel]!(weights, input, o, rows, cols, n, acc, split, rows);
        return Array.from(new Uint32Array(memory.buffer, o, n * rows));
      };
      const want = run("matmulQ4_0", kernels.plain, pw, pq);
      expect(run("matmulQ4_0r4", kernels.relaxed, pr, ps), `n=${n} acc=${acc}`).toEqual(want);
      expect(run("matmulQ4_0", kernels.relaxed, pw, pq), `n=${n} acc=${acc}`).toEqual(want);
    }
  }

  it("gives matmulQ4_0's bits for every token count and row split", () => {
    const rng = new Rng(21);
    const rows = 24;
    const cols = 320;
    const w = weightBytes("Q4_0", T.Q4_0, rows, cols, rng);
    const x = activations(rng, 19, cols);
    compare(w, x, rows, cols, [1, 2, 3, 4, 5, 7, 8, 16, 17, 19], 0);
    compare(w, x, rows, cols, [1, 6, 19], 1);
  });

  it("keeps exact sums at the extremes: nibbles 0 and 15 against activations ±127", () => {
    const rng = new Rng(22);
    const rows = 8;
    const cols = 128;
    const w = weightBytes("Q4_0", T.Q4_0, rows, cols, rng);
    const fill = [[0x00], [0xff], [0x0f, 0xf0], [0x80, 0x08], [0xff], [0x00], [0xf0], [0x0f]];
    for (let r = 0; r < rows; r++) {
      for (let b = 0; b < cols / 32; b++) {
        const o = r * rowBytes("Q4_0", cols) + b * 18;
        for (let j = 2; j < 18; j++) w[o + j] = fill[r]![(j - 2) % fill[r]!.length]!;
      }
    }
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
    compare(w, x, rows, cols, [1, 4, 6], 0);
  });
});

describe("plain module", () => {
  it("refuses matmulQ4_0r4 (it has no 8-bit dot product)", () => {
    const { k } = setup(plainModule);
    expect(() => k.matmulQ4_0r4!(1 << 20, 1 << 20, 1 << 20, 4, 32, 1, 0, 0, 4)).toThrow(/unreachable/);
  });
});
