import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { setFlagsFromString } from "node:v8";
import { quantizeRow, randomWeights } from "../../src/quant/reference.js";
import { rowBytes, type WeightFormat } from "../../src/runtime/backend.js";
import type { Rng } from "../../src/util/random.js";

export type Kernels = Record<string, (...args: number[]) => void>;

function compile(name: string): WebAssembly.Module | undefined {
  const bytes = readFileSync(fileURLToPath(new URL(`../../build/${name}`, import.meta.url)));
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      return new WebAssembly.Module(bytes);
    } catch {
      setFlagsFromString("--experimental-wasm-relaxed-simd");
    }
  }
  return undefined;
}

/** Both kernel modules; the relaxed one is undefined where V8 cannot run relaxed SIMD even with the flag. */
export const plainModule = compile("kernels.wasm")!;
export const relaxedModule = compile("kernels-relaxed.wasm");

/** An instance of `module` over `memory`, and a bump allocator above its static data. */
export function instantiate(module: WebAssembly.Module, memory: WebAssembly.Memory) {
  return new WebAssembly.Instance(module, { env: { memory, abort: () => {} } }).exports as Kernels;
}

/** Puts bytes into `memory` one after another (64-byte aligned) above the kernels' static data. */
export function arena(memory: WebAssembly.Memory): (bytes: Uint8Array) => number {
  let top = 1 << 20;
  return (bytes) => {
    const p = top;
    new Uint8Array(memory.buffer, p, bytes.length).set(bytes);
    top = (top + bytes.length + 63) & ~63;
    return p;
  };
}

/** rows × cols random weights in `format` (ggml type `type`): normal values, rounded to the format (K-quants: random blocks). */
export function weightBytes(
  format: WeightFormat,
  type: number,
  rows: number,
  cols: number,
  rng: Rng,
): Uint8Array {
  if (format === "F32") return new Uint8Array(rng.fillNormal(new Float32Array(rows * cols), 0.5).buffer);
  if (format.endsWith("_K")) return randomWeights(type, rows, cols, rng);
  const values = rng.fillNormal(new Float32Array(rows * cols), 0.5);
  const rb = rowBytes(format, cols);
  const out = new Uint8Array(rows * rb);
  for (let r = 0; r < rows; r++)
    out.set(quantizeRow(type, values.subarray(r * cols, (r + 1) * cols)), r * rb);
  return out;
}
