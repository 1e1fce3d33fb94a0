/**
 * The interleaved weight layout (Backend.prepareWeight): interleaveRows4 puts block b of row j of
 * each group of four rows at (4·b + j) blocks from the group's start (checked byte for byte against
 * that permutation written out here), and every matmul<format>x4 on the interleaved weight gives
 * the bits matmul<format> gives on the rows, in both kernel modules.
 */
import { describe, expect, it } from "vitest";
import { GGMLType } from "../src/formats/ggml-types.js";
import { interleaveRows4Ref } from "../src/quant/layout-reference.js";
import { BLOCK, rowBytes, type WeightFormat } from "../src/runtime/backend.js";
import { Rng } from "../src/util/random.js";
import { arena, instantiate, plainModule, relaxedModule, weightBytes } from "./helpers/kernel-modules.js";

const modules: [string, WebAssembly.Module | undefined][] = [
  ["plain", plainModule],
  ["relaxed", relaxedModule],
];

const T = GGMLType;
const FORMATS: [WeightFormat, number, string][] = [
  ["Q4_0", T.Q4_0, "quantizeQ8_0"],
  ["Q4_1", T.Q4_1, "quantizeQ8_1"],
  ["Q5_0", T.Q5_0, "quantizeQ8_0"],
  ["Q5_1", T.Q5_1, "quantizeQ8_1"],
  ["Q8_0", T.Q8_0, "quantizeQ8_0"],
  ["Q2_K", T.Q2_K, "quantizeQ8_K"],
  ["Q3_K", T.Q3_K, "quantizeQ8_K"],
  ["Q4_K", T.Q4_K, "quantizeQ8_K"],
  ["Q5_K", T.Q5_K, "quantizeQ8_K"],
  ["Q6_K", T.Q6_K, "quantizeQ8_K"],
];

describe.each(modules.filter(([, m]) => m !== undefined))("%s module", (_, module) => {
  it.each(FORMATS)(
    "%s: interleaveRows4 lays the rows out as stated, and the x4 product gives the row product's bits",
    (format, type, quant) => {
      const memory = new WebAssembly.Memory({ initial: 256, maximum: 256, shared: true });
      const k = instantiate(module!, memory);
      const rng = new Rng(type + 3);
      const rows = 28;
      const cols = format.endsWith("_K") ? 512 : 320;
      const nMax = 19;
      const rb = rowBytes(format, cols);
      const bb = BLOCK[format].bytes;
      const put = arena(memory);
      const w = weightBytes(format, type, rows, cols, rng);
      const pw = put(w);
      const pi = put(w);
      const scratch = put(new Uint8Array(2 * 4 * rb));
      // two threads' group ranges
      k.interleaveRows4!(pi, rb, bb, scratch, 4 * rb, 0, 3, 0);
      k.interleaveRows4!(pi, rb, bb, scratch, 4 * rb, 3, rows / 4, 1);
      expect(new Uint8Array(memory.buffer, pi, w.length)).toEqual(interleaveRows4Ref(w, rows, rb, bb));

      const x = rng.fillNormal(new Float32Array(nMax * cols), 1);
      const px = put(new Uint8Array(x.buffer));
      const pq = put(new Uint8Array(nMax * cols * 4));
      k[quant]!(px, pq, cols, nMax, 0, nMax);
      for (const n of [1, 2, 3, 4, 5, 8, 19]) {
        const run = (kernel: string, weights: number) => {
          const o = put(new Uint8Array(n * rows * 4));
          k[kernel]!(weights, pq, o, rows, cols, n, 0, 0, 12);
          k[kernel]!(weights, pq, o, rows, cols, n, 0, 12, rows);
          return Array.from(new Uint32Array(memory.buffer, o, n * rows));
        };
        expect(run(`matmul${format}x4`, pi), `n=${n}`).toEqual(run(`matmul${format}`, pw));
      }
    },
  );
});
