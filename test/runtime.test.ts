import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WasmBackend } from "../src/runtime/backend.js";
import { Runtime } from "../src/runtime/runtime.js";

function seeded(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296 - 0.5;
  };
}

describe("Runtime: thread pool over shared memory shards", () => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await Runtime.create({ threads: 3, shardBytes: [1 << 20, 1 << 20] });
  });
  afterAll(async () => {
    await rt.dispose();
  });

  it("splits an op by rows over all threads and sees every row computed once", () => {
    const n = 10_000;
    const rnd = seeded(1);
    const a = Float32Array.from({ length: n }, rnd);
    const b = Float32Array.from({ length: n }, rnd);
    const pa = rt.alloc(0, n * 4);
    const pb = rt.alloc(0, n * 4);
    rt.f32(0, pa, n).set(a);
    rt.f32(0, pb, n).set(b);
    // in place (a += b), twice over: a row computed twice, or not at all, shows
    rt.op("add", 0, n, [pa, pb, pa], 16);
    rt.op("add", 0, n, [pa, pb, pa], 16);
    rt.flush();
    const out = rt.f32(0, pa, n);
    for (let i = 0; i < n; i++) expect(out[i]).toBe(Math.fround(Math.fround(a[i]! + b[i]!) + b[i]!));
  });

  it("runs dependent phases in order and copies between shards", () => {
    const n = 4096;
    const x = rt.alloc(0, n * 4);
    const y = rt.alloc(1, n * 4);
    rt.f32(0, x, n).fill(1);
    // x = x + x three times (phases), then copy to shard 1 and add once more there.
    for (let i = 0; i < 3; i++) rt.op("add", 0, n, [x, x, x], 64);
    rt.copy(1, y, 0, x, n * 4);
    rt.op("add", 1, n, [y, y, y], 64);
    rt.flush();
    expect(rt.f32(0, x, n).every((v) => v === 8)).toBe(true);
    expect(rt.f32(1, y, n).every((v) => v === 16)).toBe(true);
  });

  it("matmul through the backend matches a plain product for many flushes", () => {
    const backend = new WasmBackend(rt);
    const rows = 37;
    const cols = 64;
    const n = 3;
    const rnd = seeded(7);
    const w = Float32Array.from({ length: rows * cols }, rnd);
    const x = Float32Array.from({ length: n * cols }, rnd);
    const pw = rt.alloc(0, w.length * 4);
    const px = rt.alloc(0, x.length * 4);
    const po = rt.alloc(0, rows * n * 4);
    rt.f32(0, pw, w.length).set(w);
    rt.f32(0, px, x.length).set(x);
    for (let rep = 0; rep < 200; rep++) {
      backend.matmul(
        { shard: 0, offset: px },
        n,
        cols,
        [{ w: { shard: 0, offset: pw, format: "F32", rows, cols }, out: { shard: 0, offset: po } }],
        { shard: 0, offset: 0 },
      );
      backend.flush();
    }
    const out = rt.f32(0, po, rows * n);
    for (let t = 0; t < n; t++) {
      for (let r = 0; r < rows; r++) {
        let s = 0;
        for (let k = 0; k < cols; k++) s += w[r * cols + k]! * x[t * cols + k]!;
        expect(Math.abs(out[t * rows + r]! - s)).toBeLessThan(1e-4);
      }
    }
  });

  it("keeps phases in order over thousands of short lists, whichever threads join each", () => {
    // Short lists end before a worker has woken up for them, so workers join some lists late,
    // skip others, and the next list is recorded while they may still be leaving the last one.
    // Each phase reads rows that other chunks of the phase before wrote: an op run before its
    // phase's predecessors are done, twice, or from a stale record, breaks the expected values.
    const n = 2048;
    const x = rt.alloc(0, n * 4);
    const y = rt.alloc(0, n * 4);
    for (let list = 0; list < 3000; list++) {
      const half = list % 2 === 0 ? n / 2 : 64 + (list % 37);
      rt.f32(0, x, n).fill(1);
      rt.f32(0, y, n).fill(0);
      rt.op("add", 0, 2 * half, [x, x, x], 16); // x = 2
      rt.op("add", 0, half, [x + 4 * half, x, y], 16); // y[i] = x[i + half] + x[i] = 4
      rt.op("add", 0, half, [y, x + 4 * half, x + 4 * half], 1); // x[half + i] = y[i] + x[half + i] = 6
      rt.flush();
      const xs = rt.f32(0, x, n);
      const ys = rt.f32(0, y, n);
      for (let i = 0; i < half; i++) {
        if (xs[i] !== 2 || ys[i] !== 4 || xs[half + i] !== 6) {
          expect.fail(`list ${list}, row ${i}: x ${xs[i]}, y ${ys[i]}, x[half + i] ${xs[half + i]}`);
        }
      }
    }
  });

  it("rejects unknown kernels and allocations past the end of a shard", () => {
    expect(() => rt.op("noSuchKernel", 0, 1, [])).toThrow(/unknown kernel/);
    expect(() => rt.alloc(0, 1 << 30)).toThrow(/shard 0 is full/);
  });
});
