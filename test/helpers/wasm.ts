import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const wasmPath = fileURLToPath(new URL("../../build/kernels.wasm", import.meta.url));

/**
 * A single-threaded instance of the kernel module over a fresh shared memory, for kernel tests.
 * `alloc` hands out 64-byte aligned regions above the module's static data; `f32`/`u8` copy in and out.
 */
export class WasmHarness {
  readonly memory: WebAssembly.Memory;
  readonly k: Record<string, (...args: number[]) => number>;
  private top = 1 << 20;

  constructor(pages = 512) {
    this.memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
    const module = new WebAssembly.Module(readFileSync(wasmPath));
    const instance = new WebAssembly.Instance(module, { env: { memory: this.memory, abort: () => {} } });
    this.k = instance.exports as unknown as Record<string, (...args: number[]) => number>;
  }

  alloc(bytes: number): number {
    const p = this.top;
    this.top = (this.top + bytes + 63) & ~63;
    if (this.top > this.memory.buffer.byteLength) throw new Error("WasmHarness out of memory");
    return p;
  }

  putF32(data: Float32Array | number[]): number {
    const p = this.alloc(data.length * 4);
    new Float32Array(this.memory.buffer, p, data.length).set(data);
    return p;
  }

  putU8(data: Uint8Array): number {
    const p = this.alloc(data.length);
    new Uint8Array(this.memory.buffer, p, data.length).set(data);
    return p;
  }

  f32(p: number, n: number): Float32Array {
    return new Float32Array(this.memory.buffer, p, n).slice();
  }

  u8(p: number, n: number): Uint8Array {
    return new Uint8Array(this.memory.buffer, p, n).slice();
  }
}
