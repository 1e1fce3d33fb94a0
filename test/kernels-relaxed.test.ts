/**
 * The relaxed-SIMD kernel module (build/kernels-relaxed.wasm) against the plain one: every matrix
 * product gives the same bits, at token counts that use every tile and row ranges split as threads
 * split them. The relaxed module changes how the integer block sums are formed (an 8-bit dot
 * product), never their values nor the float work after them. Skipped where V8 cannot run relaxed
 * SIMD even with the flag.
 */
import { describe, expect, it } from "vitest";
import { GGMLType } from "../src/formats/ggml-types.js";
import type { WeightFormat } from "../src/runtime/backend.js";
import { Rng } from "../src/util/random.js";
import { runCli } from "./helpers/cli.js";
import { arena, instantiate, plainModule, relaxedModule, weightBytes } from "./helpers/kernel-modules.js";

const T = GGMLType;
const PRODUCTS: [WeightFormat, number, string | null][] = [
  ["F32", T.F32, null],
  ["F16", T.F16, null],
  ["Q4_0", T.Q4_0, "quantizeQ8_0"],
  ["Q4_1", T.Q4_1, "quantizeQ8_1"],
  ["Q5_0", T.Q5_0, "quantizeQ8_0"],
  ["Q8_0", T.Q8_0, "quantizeQ8_0"],
  ["Q2_K", T.Q2_K, "quantizeQ8_K"],
  ["Q3_K", T.Q3_K, "quantizeQ8_K"],
  ["Q4_K", T.Q4_K, "quantizeQ8_K"],
  ["Q6_K", T.Q6_K, "quantizeQ8_K"],
];

describe.skipIf(!relaxedModule)("relaxed SIMD kernels", () => {
  it.each(PRODUCTS)("matmul%s gives the plain module's bits", (format, type, quant) => {
    const memory = new WebAssembly.Memory({ initial: 256, maximum: 256, shared: true });
    const kernels = [plainModule, relaxedModule!].map((m) => instantiate(m, memory));
    const rng = new Rng(type * 7 + 1);
    const rows = 23;
    const cols = 512;
    const nMax = 19;
    const put = arena(memory);
    const w = weightBytes(format, type, rows, cols, rng);
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

  it.each([
    ["q4_0", 128, 2, 320],
    ["q4_k_m", 256, 8, 512],
  ] as const)("a %s model writes the same text with either module", async (type, dim, layers, ffn) => {
    const { mkdtempSync, rmSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const { writeRandomLlama } = await import("../src/model/random-llama.js");
    const dir = mkdtempSync(join(tmpdir(), "sh-relaxed-"));
    try {
      const path = join(dir, `${type}.gguf`);
      writeRandomLlama(
        path,
        { name: type, dim, layers, heads: 4, kvHeads: 2, ffn, vocab: 32000, contextLength: 256 },
        type,
      );
      if (type === "q4_k_m") {
        // llama.cpp's mix: Q6_K for the output and for attn_v and ffn_down in layers 0, 3, 6 and 7 of 8
        const { readGgufHeader } = await import("../src/formats/gguf.js");
        const types = new Map(readGgufHeader(path).tensors.map((t) => [t.name, t.type]));
        expect(types.get("output.weight")).toBe(GGMLType.Q6_K);
        const six = [0, 1, 2, 3, 4, 5, 6, 7].filter(
          (l) => types.get(`blk.${l}.ffn_down.weight`) === GGMLType.Q6_K,
        );
        expect(six).toEqual([0, 3, 6, 7]);
        expect(types.get("blk.3.attn_v.weight")).toBe(GGMLType.Q6_K);
        expect(types.get("blk.1.attn_v.weight")).toBe(GGMLType.Q4_K);
        expect(types.get("blk.1.ffn_gate.weight")).toBe(GGMLType.Q4_K);
      }
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
