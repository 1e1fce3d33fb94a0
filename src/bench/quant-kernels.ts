/**
 * Single-thread speed of the quantized kernels in build/kernels.wasm.
 *
 *   npx tsc -p . && node dist/bench/quant-kernels.js [--json] [--rows R] [--cols C] [--n N] [--only NAME]
 *
 * For every weight type: the matrix product of a rows × cols weight (default 2048 × 5632, the
 * shape of a 1.1B model's FFN down projection transposed) with n tokens, reported as GB/s of
 * weight bytes read (decode, n = 1: a matrix–vector product; its speed bounds token generation)
 * and as tokens·rows·cols MAC/s for prefill (n = 32). Also the activation quantizers (GB/s of f32
 * read) and row dequantization (the embedding lookup). Each figure is the best of several timed
 * rounds of about 0.3 s.
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { GGMLType } from "../formats/ggml-types.js";
import { randomWeights } from "../quant/reference.js";
import { rowBytes, typeName, vecDotType } from "../quant/types.js";
import { Rng } from "../util/random.js";

const wasmPath = fileURLToPath(new URL("../../build/kernels.wasm", import.meta.url));

type Kernel = (...args: number[]) => number;

function instantiate(bytes: number) {
  const pages = Math.ceil(((1 << 20) + bytes + (1 << 20)) / 65536);
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  const module = new WebAssembly.Module(readFileSync(wasmPath));
  const instance = new WebAssembly.Instance(module, { env: { memory, abort: () => {} } });
  let top = 1 << 20;
  return {
    memory,
    k: instance.exports as unknown as Record<string, Kernel>,
    alloc(n: number): number {
      const p = top;
      top = (top + n + 63) & ~63;
      if (top > memory.buffer.byteLength) throw new Error("bench: out of wasm memory");
      return p;
    },
  };
}

/** Best seconds per call over a few rounds of about 0.3 s each. */
function timeIt(fn: () => void, rounds = 5): number {
  fn();
  let t0 = performance.now();
  fn();
  const once = (performance.now() - t0) / 1000;
  const calls = Math.max(1, Math.ceil(0.3 / Math.max(once, 1e-7)));
  let best = Number.POSITIVE_INFINITY;
  for (let r = 0; r < rounds; r++) {
    t0 = performance.now();
    for (let i = 0; i < calls; i++) fn();
    best = Math.min(best, (performance.now() - t0) / 1000 / calls);
  }
  return best;
}

const MATMUL: [GGMLType, string][] = [
  [GGMLType.Q4_0, "matmulQ4_0"],
  [GGMLType.Q4_1, "matmulQ4_1"],
  [GGMLType.Q5_0, "matmulQ5_0"],
  [GGMLType.Q5_1, "matmulQ5_1"],
  [GGMLType.Q8_0, "matmulQ8_0"],
  [GGMLType.Q4_K, "matmulQ4_K"],
  [GGMLType.Q5_K, "matmulQ5_K"],
  [GGMLType.Q6_K, "matmulQ6_K"],
  [GGMLType.Q2_K, "matmulQ2_K"],
  [GGMLType.Q3_K, "matmulQ3_K"],
];

const QUANTIZE: Record<number, string> = {
  [GGMLType.Q8_0]: "quantizeQ8_0",
  [GGMLType.Q8_1]: "quantizeQ8_1",
  [GGMLType.Q8_K]: "quantizeQ8_K",
};

const DEQUANTIZE: [GGMLType, string][] = [
  [GGMLType.F16, "dequantizeF16"],
  [GGMLType.BF16, "dequantizeBF16"],
  [GGMLType.Q4_0, "dequantizeQ4_0"],
  [GGMLType.Q8_0, "dequantizeQ8_0"],
  [GGMLType.Q4_K, "dequantizeQ4_K"],
  [GGMLType.Q6_K, "dequantizeQ6_K"],
];

interface Result {
  name: string;
  value: number;
  unit: string;
  seconds: number;
}

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

function main(): void {
  const json = process.argv.includes("--json");
  const rows = arg("--rows", 2048);
  const cols = arg("--cols", 5632);
  const prefill = arg("--n", 32);
  const onlyAt = process.argv.indexOf("--only");
  const only = onlyAt >= 0 ? process.argv[onlyAt + 1]! : "";
  const rng = new Rng(42);
  const results: Result[] = [];
  const report = (r: Result) => {
    results.push(r);
    if (!json) {
      console.log(
        `${r.name.padEnd(34)} ${r.value.toFixed(2).padStart(8)} ${r.unit.padEnd(8)} ${(r.seconds * 1e3).toFixed(3)} ms`,
      );
    }
  };
  if (!json) console.log(`single thread, weight ${rows} × ${cols}, prefill n = ${prefill}`);

  const x = rng.fillNormal(new Float32Array(prefill * cols));
  const h = instantiate(
    rows * rowBytes(GGMLType.Q8_0, cols) + prefill * cols * 12 + rows * prefill * 4 + (4 << 20),
  );
  const px = h.alloc(x.length * 4);
  new Float32Array(h.memory.buffer, px, x.length).set(x);
  const xq: Record<number, number> = {};
  for (const t of [GGMLType.Q8_0, GGMLType.Q8_1, GGMLType.Q8_K]) {
    xq[t] = h.alloc(prefill * rowBytes(t, cols));
    const q = h.k[QUANTIZE[t]!]!;
    const p = xq[t]!;
    q(px, p, cols, prefill, 0, prefill);
    if (!QUANTIZE[t]!.includes(only)) continue;
    const s = timeIt(() => q(px, p, cols, prefill, 0, prefill));
    report({
      name: `${QUANTIZE[t]} ${prefill}×${cols}`,
      value: (prefill * cols * 4) / s / 1e9,
      unit: "GB/s",
      seconds: s,
    });
  }
  const out = h.alloc(rows * prefill * 4);
  const weights = h.alloc(rows * rowBytes(GGMLType.Q8_0, cols));
  for (const [type, kernel] of MATMUL) {
    if (!kernel.includes(only)) continue;
    const w = randomWeights(type, rows, cols, rng);
    new Uint8Array(h.memory.buffer, weights, w.length).set(w);
    const f = h.k[kernel]!;
    const q = xq[vecDotType(type)]!;
    const s1 = timeIt(() => f(weights, q, out, rows, cols, 1, 0, 0, rows));
    report({ name: `${kernel} n=1`, value: w.length / s1 / 1e9, unit: "GB/s", seconds: s1 });
    const sn = timeIt(() => f(weights, q, out, rows, cols, prefill, 0, 0, rows), 3);
    report({
      name: `${kernel} n=${prefill}`,
      value: (rows * cols * prefill) / sn / 1e9,
      unit: "GMAC/s",
      seconds: sn,
    });
  }
  const dst = h.alloc(cols * 4 * 16);
  for (const [type, kernel] of DEQUANTIZE) {
    if (!kernel.includes(only)) continue;
    const w = randomWeights(
      type === GGMLType.F16 || type === GGMLType.BF16 ? GGMLType.Q8_0 : type,
      16,
      cols,
      rng,
    );
    new Uint8Array(h.memory.buffer, weights, w.length).set(w);
    const f = h.k[kernel]!;
    const blocks =
      (16 * cols) / (type === GGMLType.F16 || type === GGMLType.BF16 ? 1 : type >= 12 ? 256 : 32);
    const s = timeIt(() => f(weights, dst, blocks, 0, blocks));
    report({
      name: `${kernel} 16 rows of ${cols}`,
      value: (16 * cols * 4) / s / 1e9,
      unit: "GB/s out",
      seconds: s,
    });
  }
  if (json)
    console.log(
      JSON.stringify({ rows, cols, prefill, results, typeNames: MATMUL.map(([t]) => typeName(t)) }),
    );
}

main();
