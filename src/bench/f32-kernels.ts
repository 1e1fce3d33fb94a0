/**
 * Single-thread speed of the f32 kernels in build/kernels.wasm.
 *
 *   npx tsc -p . && node dist/bench/f32-kernels.js [--json]
 *
 * matmul: GFLOP/s (2·rows·cols·n flops per call) for f32, f16 and bf16 weights at n = 1 (decode,
 * a matrix–vector product) and n = 128 (prefill) on a 2048 × 2048 weight. attention: time of
 * one layer's attention over 512 cache positions (decode: 1 token at position 511; prefill:
 * 512 tokens from position 0), 32 heads of 128, with 32 and with 8 kv heads.
 * Each figure is the fastest of many timed calls after a warm-up (see timeIt).
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const wasmPath = fileURLToPath(new URL("../../build/kernels.wasm", import.meta.url));

type Kernel = (...args: number[]) => void;

interface Kernels {
  memory: WebAssembly.Memory;
  k: Record<string, Kernel>;
  alloc(bytes: number): number;
}

function instantiate(pages: number): Kernels {
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  const module = new WebAssembly.Module(readFileSync(wasmPath));
  const instance = new WebAssembly.Instance(module, { env: { memory, abort: () => {} } });
  let top = 1 << 20;
  return {
    memory,
    k: instance.exports as unknown as Record<string, Kernel>,
    alloc(bytes: number) {
      const p = top;
      top = (top + bytes + 63) & ~63;
      if (top > memory.buffer.byteLength) throw new Error("bench: out of wasm memory");
      return p;
    },
  };
}

function fillRandom(memory: WebAssembly.Memory, p: number, count: number, seed: number): void {
  const a = new Float32Array(memory.buffer, p, count);
  let s = seed >>> 0;
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 4294967296 - 0.5;
  }
}

function fillHalves(memory: WebAssembly.Memory, p: number, count: number, seed: number): void {
  // values in about ±0.5, as f16 (exponent 13..14) or bf16 (exponent 125..126) bit patterns alike
  const a = new Uint16Array(memory.buffer, p, count);
  let s = seed >>> 0;
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = 0x3400 | (s >>> 22) | ((s & 1) << 15);
  }
}

/**
 * Best seconds per call. The kernels are first run for about 0.4 s so that V8 has moved them
 * from its baseline compiler to the optimising one; then calls (or batches of calls, for calls
 * under 2 ms) are timed for about `seconds` and the fastest is kept, which filters out time
 * lost to other processes on a shared machine.
 */
function timeIt(fn: () => void, seconds = 1.5): number {
  const warmEnd = performance.now() + 400;
  let calls = 0;
  while (performance.now() < warmEnd) {
    fn();
    calls++;
  }
  const once = 400 / calls / 1000;
  const batch = Math.max(1, Math.ceil(0.002 / once));
  let best = Infinity;
  const end = performance.now() + seconds * 1000;
  do {
    const t0 = performance.now();
    for (let i = 0; i < batch; i++) fn();
    best = Math.min(best, (performance.now() - t0) / 1000 / batch);
  } while (performance.now() < end);
  return best;
}

interface Result {
  name: string;
  seconds: number;
  gflops?: number;
}

function benchMatmul(kern: Kernels, results: Result[]): void {
  const rows = 2048;
  const cols = 2048;
  const maxN = 128;
  const w = kern.alloc(rows * cols * 4);
  const x = kern.alloc(maxN * cols * 4);
  const out = kern.alloc(maxN * rows * 4);
  fillRandom(kern.memory, x, maxN * cols, 2);
  for (const kind of ["F32", "F16", "BF16"]) {
    if (kind === "F32") fillRandom(kern.memory, w, rows * cols, 1);
    else fillHalves(kern.memory, w, rows * cols, 1);
    const fn = kern.k[`matmul${kind}`]!;
    for (const n of [1, 128]) {
      const seconds = timeIt(() => fn(w, x, out, rows, cols, n, 0, 0, rows));
      const gflops = (2 * rows * cols * n) / seconds / 1e9;
      results.push({ name: `matmul${kind} ${rows}x${cols} n=${n}`, seconds, gflops });
    }
  }
}

function benchAttention(kern: Kernels, results: Result[]): void {
  const nHeads = 32;
  const headDim = 128;
  const positions = 512;
  const q = kern.alloc(positions * nHeads * headDim * 4);
  const out = kern.alloc(positions * nHeads * headDim * 4);
  const k = kern.alloc(positions * nHeads * headDim * 4);
  const v = kern.alloc(positions * nHeads * headDim * 4);
  const scratch = kern.alloc(positions * 4);
  fillRandom(kern.memory, q, positions * nHeads * headDim, 3);
  fillRandom(kern.memory, k, positions * nHeads * headDim, 4);
  fillRandom(kern.memory, v, positions * nHeads * headDim, 5);
  const attention = kern.k["attention"]!;
  for (const nKvHeads of [32, 8]) {
    const decode = timeIt(() =>
      attention(q, k, v, out, 1, positions - 1, nHeads, nKvHeads, headDim, scratch, 0, 0, 0, nHeads, 0),
    );
    const flopsDecode = 4 * nHeads * positions * headDim;
    results.push({
      name: `attention decode 1 token @512, ${nHeads}/${nKvHeads} heads × ${headDim}`,
      seconds: decode,
      gflops: flopsDecode / decode / 1e9,
    });
    const prefill = timeIt(
      () =>
        attention(
          q,
          k,
          v,
          out,
          positions,
          0,
          nHeads,
          nKvHeads,
          headDim,
          scratch,
          0,
          0,
          0,
          positions * nHeads,
          0,
        ),
      3,
    );
    const flopsPrefill = 4 * nHeads * headDim * ((positions * (positions + 1)) / 2);
    results.push({
      name: `attention prefill 512 tokens, ${nHeads}/${nKvHeads} heads × ${headDim}`,
      seconds: prefill,
      gflops: flopsPrefill / prefill / 1e9,
    });
  }
}

function benchElementwise(kern: Kernels, results: Result[]): void {
  const size = 1 << 20;
  const a = kern.alloc(size * 4);
  const b = kern.alloc(size * 4);
  const out = kern.alloc(size * 4);
  fillRandom(kern.memory, a, size, 6);
  fillRandom(kern.memory, b, size, 7);
  const w = kern.alloc(4096 * 4);
  fillRandom(kern.memory, w, 4096, 8);
  results.push({
    name: "siluMul 1M elements",
    seconds: timeIt(() => kern.k["siluMul"]!(a, b, out, 0, size)),
  });
  results.push({
    name: "softmax 32 rows × 32000",
    seconds: timeIt(() => kern.k["softmax"]!(out, 32000, 0, 32)),
  });
  results.push({
    name: "rmsNorm 256 tokens × 4096",
    seconds: timeIt(() => kern.k["rmsNorm"]!(a, w, out, 4096, 1e-5, 0, 256)),
  });
  results.push({
    name: "rope 256 tokens × 32 heads × 128",
    seconds: timeIt(() => kern.k["rope"]!(a, 32, 128, 128, 100, 10000, 1, 0, 0, 0, 256 * 32)),
  });
}

function main(): void {
  const json = process.argv.includes("--json");
  const kern = instantiate(1600);
  const results: Result[] = [];
  benchMatmul(kern, results);
  benchAttention(kern, results);
  benchElementwise(kern, results);
  if (json) {
    console.log(JSON.stringify(results, null, 2));
    return;
  }
  for (const r of results) {
    const ms = (r.seconds * 1000).toFixed(3).padStart(10);
    const rate = r.gflops === undefined ? "" : `${r.gflops.toFixed(2).padStart(8)} GFLOP/s`;
    console.log(`${r.name.padEnd(56)} ${ms} ms ${rate}`);
  }
}

main();
