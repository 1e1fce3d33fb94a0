// The quantizers of src/quant against ggml's own, called in the libggml-base that node-llama-cpp
// ships: every block must come out byte for byte, with and without importance weights, on data
// that reaches the quantizers' corners (zeros, constant and one-sided groups, outliers, ties,
// tiny and huge magnitudes).
import { describe, expect, it } from "vitest";
import { useSearchKernels } from "../src/quant/kquants.js";
import { dequantizeRow, QUANTIZABLE_TYPES, quantizeRow, quantizeTensor } from "../src/quant/reference.js";
import { GGMLType, QUANT_TYPES, rowBytes, typeName } from "../src/quant/types.js";
import { GGML_TYPE_TABLE, RUNNABLE_TYPES } from "../src/runtime/ggml-type-table.js";
import { Rng } from "../src/util/random.js";
import { plainModule, relaxedModule } from "./helpers/kernel-modules.js";
import { ggmlQuantize } from "./helpers/libllama.js";

const T = GGMLType;

/** Rows of 512 values (two super-blocks, sixteen 32-blocks) from many shapes of data. */
function testRows(rng: Rng): Float32Array[] {
  const cols = 512;
  const rows: Float32Array[] = [];
  const row = (fill: (j: number) => number) => {
    const r = new Float32Array(cols);
    for (let j = 0; j < cols; j++) r[j] = fill(j);
    rows.push(r);
  };
  for (let i = 0; i < 24; i++) {
    const sigma = 10 ** (rng.nextFloat() * 6 - 4);
    row(() => rng.nextNormal() * sigma);
  }
  row(() => 0);
  row(() => 0.25);
  row(() => -3);
  row((j) => (j % 16 === 0 ? 1 : 0));
  row((j) => (j < 256 ? 0 : rng.nextNormal()));
  row(() => Math.abs(rng.nextNormal()) * 0.02); // one-sided: no negative values
  row(() => -Math.abs(rng.nextNormal()) * 0.02);
  row((j) => rng.nextNormal() * 0.01 + (j % 97 === 0 ? 0.5 : 0)); // outliers
  row((j) => ((j * 7919) % 17) - 8); // small integers: exact ties
  row((j) => (((j * 31) % 9) - 4) * 0.125);
  row(() => (rng.nextFloat() - 0.5) * 1e-30);
  row(() => (rng.nextFloat() - 0.5) * 1e4);
  row((j) => (j % 32 < 16 ? 1e-3 : 10) * rng.nextNormal()); // groups of very different scales
  row((j) => Math.sin(j) * (1 + (j >> 6)));
  for (let i = 0; i < 8; i++) {
    // LLM-like: heavy-tailed around zero
    row(() => {
      const n = rng.nextNormal();
      return 0.02 * n * (rng.nextFloat() < 0.02 ? 8 : 1);
    });
  }
  return rows;
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : a.length;
}

const TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0];

describe("quantizers are ggml's, byte for byte", () => {
  const rng = new Rng(2024);
  const rows = testRows(rng);
  const cols = rows[0]!.length;
  const data = new Float32Array(rows.length * cols);
  for (let i = 0; i < rows.length; i++) data.set(rows[i]!, i * cols);
  // importance weights as an imatrix holds them: mean squared activations, positive, wide range
  const imatrix = new Float32Array(cols);
  for (let j = 0; j < cols; j++) imatrix[j] = Math.exp(2 * rng.nextNormal()) * (j % 50 === 0 ? 30 : 1);
  const zeroSome = imatrix.slice();
  for (let j = 0; j < cols; j += 3) zeroSome[j] = 0;

  for (const type of TYPES) {
    for (const [label, qw] of [
      ["reference", undefined],
      ["importance-weighted", imatrix],
      ["importance-weighted, some weights 0", zeroSome],
    ] as const) {
      it(`${typeName(type)} ${label}`, () => {
        const rb = rowBytes(type, cols);
        const ours = quantizeTensor(type, data, rows.length, cols, qw);
        const theirs = ggmlQuantize(type, data, rows.length, cols, rb, qw);
        for (let r = 0; r < rows.length; r++) {
          const a = ours.subarray(r * rb, (r + 1) * rb);
          const b = theirs.subarray(r * rb, (r + 1) * rb);
          const at = firstDifference(a, b);
          if (at >= 0) expect(`row ${r} differs from byte ${at}`).toBe(`row ${r} identical`);
        }
      });
    }
  }

  it("Q2_K and Q3_K decode as ggml's dequantizers do (round trip within the format's error)", () => {
    for (const type of [T.Q2_K, T.Q3_K]) {
      const rb = rowBytes(type, cols);
      for (const r of rows.slice(0, 24)) {
        const back = dequantizeRow(type, quantizeRow(type, r), cols);
        let amax = 0;
        let err = 0;
        for (let j = 0; j < cols; j++) {
          amax = Math.max(amax, Math.abs(r[j]!));
          err = Math.max(err, Math.abs(back[j]! - r[j]!));
        }
        // 2-bit and 3-bit quants: within half a step of a 4- / 6-bit-scaled grid of the range
        expect(err, `${typeName(type)} row max error`).toBeLessThanOrEqual(
          amax * (type === T.Q2_K ? 0.7 : 0.4),
        );
        expect(rb).toBe((cols / 256) * (type === T.Q2_K ? 84 : 110));
      }
    }
  });
});

describe("the scale searches in WebAssembly", () => {
  // (the quantizers run them by default; the byte-for-byte tests above check them against ggml)
  it("give the bytes of their TypeScript reference, with and without importance weights", () => {
    const rng = new Rng(77);
    const rows = testRows(rng);
    const cols = rows[0]!.length;
    const data = new Float32Array(rows.length * cols);
    for (let i = 0; i < rows.length; i++) data.set(rows[i]!, i * cols);
    const qw = new Float32Array(cols);
    for (let j = 0; j < cols; j++) qw[j] = j % 7 === 0 ? 0 : Math.exp(2 * rng.nextNormal());
    expect(useSearchKernels(true)).toBe(true);
    for (const type of TYPES) {
      for (const w of [undefined, qw]) {
        useSearchKernels(false);
        const ts = quantizeTensor(type, data, rows.length, cols, w);
        useSearchKernels(true);
        const wasm = quantizeTensor(type, data, rows.length, cols, w);
        const at = firstDifference(wasm, ts);
        if (at >= 0) expect(`${typeName(type)} differs from byte ${at}`).toBe(`${typeName(type)} identical`);
      }
    }
  });
});

describe("the type table", () => {
  it("every runnable type has its kernels and layouts in both modules", () => {
    for (const module of [plainModule, relaxedModule]) {
      if (!module) continue;
      const exports = new Set(WebAssembly.Module.exports(module).map((e) => e.name));
      for (const r of RUNNABLE_TYPES) {
        const want = [`dequantize${r.format}`, `matmul${r.format}`];
        if (r.format === "F32") want.shift(); // f32 rows are copied, not decoded
        if (r.activation) want.push(`quantize${r.activation}`);
        if ("x4" in r) want.push(`matmul${r.format}x4`);
        if ("r4" in r) want.push(`matmul${r.format}r4`, `repack${r.format}r4`, `quantize${r.r4.activation}`);
        for (const k of want) expect(exports.has(k), `${r.name}: ${k}`).toBe(true);
      }
    }
  });

  it("every type it marks decodable or encodable has a reference", () => {
    const rng = new Rng(3);
    for (const r of GGML_TYPE_TABLE) {
      const x = new Float32Array(256);
      for (let j = 0; j < 256; j++) x[j] = rng.nextNormal() * 0.1;
      if ("encode" in r) {
        expect(QUANTIZABLE_TYPES).toContain(r.type);
        const back = dequantizeRow(r.type, quantizeRow(r.type, x), 256);
        for (let j = 0; j < 256; j++) expect(Math.abs(back[j]! - x[j]!), r.name).toBeLessThan(0.25);
      }
      if ("decode" in r) expect(QUANT_TYPES).toContain(r.type);
    }
  });
});
