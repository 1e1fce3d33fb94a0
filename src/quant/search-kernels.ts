// The K-quant scale searches in WebAssembly (src/kernels/assembly/quant-search.ts), on a small
// memory of their own: kquants.ts copies one group of floats in, calls, and copies the quants out.
import { kernelModule, SHARD_BASE } from "../runtime/runtime.js";

/** Largest group a search takes (ggml's groups are 16 or 32 floats). */
const MAX_GROUP = 256;

export interface SearchKernels {
  /** Group of floats to search (MAX_GROUP). */
  x: Float32Array;
  /** Its weights (make_qkx*) or importance (make_qx, when passed). */
  w: Float32Array;
  /** The quants found. */
  L: Uint8Array;
  Li: Int8Array;
  /** The min make_qkx* found (positive). */
  min: Float32Array;
  searchScaleMin(
    three: number,
    n: number,
    nmax: number,
    rmin: number,
    rdelta: number,
    nstep: number,
    mad: number,
  ): number;
  searchScale(n: number, nmax: number, weighted: boolean): number;
  searchScaleQ3(n: number, nmax: number): number;
}

let loaded: SearchKernels | null | undefined;
let given: WebAssembly.Module | undefined;

/**
 * The kernel module to run the searches from, already compiled (a quantize thread gets its
 * parent's, which saves it compiling and checking the module itself). Call before any search.
 */
export function useKernelModule(module: WebAssembly.Module): void {
  given = module;
}

/** The compiled module the searches run from, or undefined where it is not built. */
export function searchKernelModule(): WebAssembly.Module | undefined {
  try {
    return given ?? kernelModule();
  } catch {
    return undefined;
  }
}

/** The searches, or null where the kernel module is not built (the TypeScript ones run then). */
export function searchKernels(): SearchKernels | null {
  if (loaded !== undefined) return loaded;
  const module = searchKernelModule();
  if (!module) {
    loaded = null;
    return loaded;
  }
  let k: Record<string, (...a: number[]) => number>;
  const memory = new WebAssembly.Memory({
    initial: SHARD_BASE / 65536 + 1,
    maximum: SHARD_BASE / 65536 + 1,
    shared: true,
  });
  try {
    const instance = new WebAssembly.Instance(module, { env: { memory, abort: () => {} } });
    k = instance.exports as typeof k;
  } catch {
    loaded = null;
    return loaded;
  }
  const x = SHARD_BASE;
  const w = x + 4 * MAX_GROUP;
  const L = w + 4 * MAX_GROUP;
  const laux = L + MAX_GROUP;
  const min = laux + MAX_GROUP;
  const { searchScaleMin, searchScale, searchScaleQ3 } = k;
  if (!searchScaleMin || !searchScale || !searchScaleQ3) {
    loaded = null;
    return loaded;
  }
  const buf = memory.buffer;
  loaded = {
    x: new Float32Array(buf, x, MAX_GROUP),
    w: new Float32Array(buf, w, MAX_GROUP),
    L: new Uint8Array(buf, L, MAX_GROUP),
    Li: new Int8Array(buf, L, MAX_GROUP),
    min: new Float32Array(buf, min, 1),
    searchScaleMin: (three, n, nmax, rmin, rdelta, nstep, mad) =>
      searchScaleMin(three, n, nmax, x, w, L, laux, rmin, rdelta, nstep, mad, min),
    searchScale: (n, nmax, weighted) => searchScale(n, nmax, x, L, weighted ? w : 0),
    searchScaleQ3: (n, nmax) => searchScaleQ3(n, nmax, x, L),
  };
  return loaded;
}
