/**
 * The relaxed-SIMD kernel module (build/kernels-relaxed.wasm) against the plain one: every matrix
 * product gives the same bits, at token counts that use every tile and row ranges split as threads
 * split them. The relaxed module changes how the integer block sums are formed (an 8-bit dot
 * product), never their values nor the float work after them. Skipped where V8 cannot run relaxed
 * SIMD even with the flag.
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { setFlagsFromString } from "node:v8";
import { describe, expect, it } from "vitest";
import { GGMLType } from "../src/formats/ggml-types.js";
import { quantizeRow, randomWeights } from "../src/quant/reference.js";
import { rowBytes, type WeightFormat } from "../src/runtime/backend.js";
import { Rng } from "../src/util/random.js";
import { runCli } from "./helpers/cli.js";

const build = (name: string) => readFileSync(fileURLToPath(new URL(`../build/${name}`, import.meta.url)));

function relaxedModule(): WebAssembly.Module | undefined {
  const bytes = build("kernels-relaxed.wasm");
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      return new WebAssembly.Module(bytes);
    } catch {
      setFlagsFromString("--experimental-wasm-relaxed-simd");
    }
  }
  return undefined;
}

const relaxed = relaxedModule();
const plain = new WebAssembly.Module(build("kernels.wasm"));

const T = GGMLType;
const PRODUCTS: [WeightFormat, number, string | null][] = [
  ["F32", T.F32, null],
  ["F16", T.F16, null],
  ["Q4_0", T.Q4_0, "quantizeQ8_0"],
  ["Q4_1", T.Q4_1, "quantizeQ8_1"],
  ["Q5_0", T.Q5_0, "quantizeQ8_0"],
  ["Q8_0", T.Q8_0, "quantizeQ8_0"],
  ["Q4_K", T.Q4_K, "quantizeQ8_K"],
  ["Q6_K", T.Q6_K, "quantizeQ8_K"],
];

describe.skipIf(!relaxed)("relaxed SIMD kernels", () => {
  it.each(PRODUCTS)("matmul%s gives the plain module's bits", (format, type, quant) => {
    const memory = new WebAssembly.Memory({ initial: 256, maximum: 256, shared: true });
    const kernels = [plain, relaxed!].map(
      (m) =>
        new WebAssembly.Instance(m, { env: { memory, abort: () => {} } }).exports as Record<
          string,
          (...a: number[]) => void
        >,
    );
    const rng = new Rng(type * 7 + 1);
    const rows = 23;
    const cols = 512;
    const nMax = 19;
    let top = 1 << 20;
    const put = (bytes: Uint8Array) => {
      const p = top;
      new Uint8Array(memory.buffer, p, bytes.length).set(bytes);
      top = (top + bytes.length + 63) & ~63;
      return p;
    };
    let w: Uint8Array;
    if (format === "F32") w = new Uint8Array(rng.fillNormal(new Float32Array(rows * cols), 0.5).buffer);
    else if (format === "F16" || format.endsWith("_K")) w = randomWeights(type, rows, cols, rng);
    else {
      const values = rng.fillNormal(new Float32Array(rows * cols), 0.5);
      w = new Uint8Array(rows * rowBytes(format, cols));
      for (let r = 0; r < rows; r++)
        w.set(quantizeRow(type, values.subarray(r * cols, (r + 1) * cols)), r * rowBytes(format, cols));
    }
    const pw = put(w);
    const x = rng.fillNormal(new Float32Array(nMax * cols), 1);
    const px = put(new Uint8Array(x.buffer));
    const pq = put(new Uint8Array(nMax * cols * 4));
    if (quant) kernels[0]![quant]!(px, pq, cols, nMax, 0, nMax);
    const input = quant ? pq : px;
    for (const n of [1, 2, 3, 4, 5, 8, 19]) {
      const outs = kernels.map((k) => {
        const o = put(new Uint8Array(n * rows * 4));
        k[`matmul${format}`]!(pw, input, o, rows, cols, n, 0, 0, 9);
        k[`matmul${format}`]!(pw, input, o, rows, cols, n, 0, 9, rows);
        return Array.from(new Uint32Array(memory.buffer, o, n * rows));
      });
      expect(outs[1], `n=${n}`).toEqual(outs[0]);
    }
  });

  it("a Q4_0 model writes the same text with either module", async () => {
    const { mkdtempSync, rmSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const { writeRandomLlama } = await import("../src/model/random-llama.js");
    const dir = mkdtempSync(join(tmpdir(), "sh-relaxed-"));
    try {
      const path = join(dir, "q4.gguf");
      writeRandomLlama(
        path,
        { name: "q4", dim: 128, layers: 2, heads: 4, kvHeads: 2, ffn: 320, vocab: 32000, contextLength: 256 },
        "q4_0",
      );
      const args = [
        "generate",
        "-m",
        path,
        "-p",
        "w1 w22 w333",
        "-n",
        "24",
        "--temp",
        "0.9",
        "--seed",
        "7",
        "--json",
      ];
      const runs = await Promise.all(
        ["plain", "relaxed"].map((v) => runCli(args, { env: { ...process.env, SMALLHAMMER_SIMD: v } })),
      );
      for (const r of runs) expect(r.status, r.stderr).toBe(0);
      const [a, b] = runs.map((r) => JSON.parse(r.stdout) as { text: string });
      expect(a!.text.length).toBeGreaterThan(0);
      expect(b!.text).toBe(a!.text);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
