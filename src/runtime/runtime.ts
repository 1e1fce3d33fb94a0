import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { setFlagsFromString } from "node:v8";
import { Worker } from "node:worker_threads";
import { CTRL, createExecutor, FLAG_BARRIER, MAX_ARGS, OP_COPY, OP_SLOTS } from "./executor.js";

const PAGE = 65536;
/** Bytes at the bottom of every shard reserved for the kernel module's static data. */
export const SHARD_BASE = 1 << 20;
/** Largest shard: wasm32 memories stop at 4 GiB; stay clear of the edge. */
export const MAX_SHARD_BYTES = 4 * 1024 * 1024 * 1024 - 64 * 1024 * 1024;
const MAX_OPS = 16384;

export type KernelVariant = "plain" | "relaxed";

let cached: { module: WebAssembly.Module; variant: KernelVariant } | undefined;

function kernelBytes(variant: KernelVariant): Buffer {
  const name = variant === "plain" ? "kernels.wasm" : "kernels-relaxed.wasm";
  const url = new URL(`../../build/${name}`, import.meta.url);
  try {
    return readFileSync(url);
  } catch {
    throw new Error(`kernel module missing at ${url.pathname}: run "npm run build:kernels"`);
  }
}

/**
 * The compiled kernel module, chosen once per process. build/kernels-relaxed.wasm (SIMD128 plus
 * relaxed SIMD's 8-bit dot product, used by the Q4_0 products) runs where V8 can run it: Node 20
 * needs the --experimental-wasm-relaxed-simd flag, which is set here at run time. It must also
 * give exactly the plain module's bits on a Q4_0 product (checked once); otherwise, or with
 * SMALLHAMMER_SIMD=plain, build/kernels.wasm (plain SIMD128) runs. SMALLHAMMER_SIMD=relaxed
 * insists on the relaxed module.
 */
export function kernelModule(): WebAssembly.Module {
  return loadKernels().module;
}

/** Which kernel module this process runs. */
export function kernelVariant(): KernelVariant {
  return loadKernels().variant;
}

function loadKernels(): { module: WebAssembly.Module; variant: KernelVariant } {
  if (cached) return cached;
  const want = process.env.SMALLHAMMER_SIMD ?? "auto";
  if (want !== "auto" && want !== "plain" && want !== "relaxed") {
    throw new Error(`SMALLHAMMER_SIMD must be plain, relaxed or auto, not "${want}"`);
  }
  const plain = new WebAssembly.Module(kernelBytes("plain"));
  cached = { module: plain, variant: "plain" };
  if (want === "plain") return cached;
  const why = relaxedProblem(plain);
  if (typeof why !== "string") cached = { module: why, variant: "relaxed" };
  else if (want === "relaxed") throw new Error(`SMALLHAMMER_SIMD=relaxed: ${why}`);
  return cached;
}

/** The relaxed module when this V8 runs it and it agrees with the plain one; else why not. */
function relaxedProblem(plain: WebAssembly.Module): WebAssembly.Module | string {
  let bytes: Buffer;
  try {
    bytes = kernelBytes("relaxed");
  } catch (e) {
    return (e as Error).message;
  }
  let relaxed = compile(bytes);
  if (!relaxed) {
    try {
      setFlagsFromString("--experimental-wasm-relaxed-simd");
    } catch {
      // an embedder that refuses flags: the module stays invalid below
    }
    relaxed = compile(bytes);
    if (!relaxed) return "this V8 does not run WebAssembly relaxed SIMD";
  }
  return q4Product(relaxed) === q4Product(plain)
    ? relaxed
    : "its Q4_0 product differs from the plain module's";
}

function compile(bytes: Buffer): WebAssembly.Module | undefined {
  try {
    return new WebAssembly.Module(bytes);
  } catch {
    return undefined;
  }
}

/** Bits of a small Q4_0 product (5 tokens, rows and columns off the tile sizes) as a string. */
function q4Product(module: WebAssembly.Module): string {
  const memory = new WebAssembly.Memory({ initial: 20, maximum: 20, shared: true });
  const k = new WebAssembly.Instance(module, { env: { memory, abort: () => {} } }).exports as Record<
    string,
    (...args: number[]) => void
  >;
  const rows = 7;
  const cols = 96;
  const n = 5;
  const w = SHARD_BASE;
  const x = w + 4096;
  const xq = x + 4096;
  const out = xq + 4096;
  const bytes = new Uint8Array(memory.buffer);
  const f = new Float32Array(memory.buffer, x, n * cols);
  let seed = 12345;
  const next = () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed >>> 16;
  };
  for (let i = 0; i < rows * (cols / 32) * 18; i++) bytes[w + i] = next() & 0xff;
  for (let b = 0; b < rows * (cols / 32); b++) {
    bytes[w + b * 18] = next() & 0xff; // f16 scale: a normal number of modest size
    bytes[w + b * 18 + 1] = 0x20 + (next() & 7);
  }
  for (let i = 0; i < f.length; i++) f[i] = (next() / 32768 - 1) * 3;
  k.quantizeQ8_0!(x, xq, cols, n, 0, n);
  k.matmulQ4_0!(w, xq, out, rows, cols, n, 0, 0, rows);
  return Array.from(new Uint32Array(memory.buffer, out, n * rows)).join(",");
}

/** Names of every function the module exports, in a fixed order shared by all threads. */
function exportedKernels(module: WebAssembly.Module): string[] {
  return WebAssembly.Module.exports(module)
    .filter((e) => e.kind === "function")
    .map((e) => e.name)
    .sort();
}

export interface RuntimeOptions {
  /** Total compute threads including the calling thread; default: all cores. */
  threads?: number;
  /** Byte size of each memory shard (each becomes one shared WebAssembly.Memory). */
  shardBytes: number[];
}

/**
 * A pool of threads that share a set of WebAssembly memories ("shards") and run kernel op lists.
 * Each shard is at most 4 GiB (wasm32); a model larger than that spreads its layers over several
 * shards and copies the small activations between them. Ops are recorded with `op`/`copy`, and
 * `flush` runs them on all threads, the calling thread included, returning when all are done.
 */
export class Runtime {
  readonly threads: number;
  readonly memories: WebAssembly.Memory[];
  private readonly tops: number[];
  private readonly limits: number[];
  private readonly kernelIndex = new Map<string, number>();
  private readonly ctrl: Int32Array;
  private readonly ops: Float64Array;
  private readonly claims: Int32Array;
  private nOps = 0;
  private readonly workers: Worker[] = [];
  private readonly exec: ReturnType<typeof createExecutor>;
  private disposed = false;

  private constructor(
    threads: number,
    memories: WebAssembly.Memory[],
    kernelNames: string[],
    ctrl: Int32Array,
    ops: Float64Array,
    claims: Int32Array,
    workers: Worker[],
  ) {
    this.threads = threads;
    this.memories = memories;
    this.tops = memories.map(() => SHARD_BASE);
    this.limits = memories.map((m) => m.buffer.byteLength);
    kernelNames.forEach((n, i) => {
      this.kernelIndex.set(n, i);
    });
    this.ctrl = ctrl;
    this.ops = ops;
    this.claims = claims;
    this.workers = workers;
    this.exec = createExecutor({
      module: kernelModule(),
      memories,
      kernelNames,
      ctrl,
      ops,
      claims,
      tid: 0,
      threads,
    });
  }

  static async create(options: RuntimeOptions): Promise<Runtime> {
    const threads = Math.max(1, Math.floor(options.threads ?? availableParallelism()));
    const module = kernelModule();
    const kernelNames = exportedKernels(module);
    const memories = options.shardBytes.map((bytes) => {
      const need = SHARD_BASE + bytes;
      if (need > MAX_SHARD_BYTES) throw new Error(`shard of ${need} bytes exceeds the wasm32 limit`);
      const pages = Math.ceil(need / PAGE);
      return new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
    });
    const ctrl = new Int32Array(new SharedArrayBuffer(CTRL.SIZE * 4));
    const ops = new Float64Array(new SharedArrayBuffer(MAX_OPS * OP_SLOTS * 8));
    const claims = new Int32Array(new SharedArrayBuffer(2 * MAX_OPS * 4));
    const workers: Worker[] = [];
    const ready: Promise<void>[] = [];
    for (let tid = 1; tid < threads; tid++) {
      const w = new Worker(new URL("./worker.js", import.meta.url), {
        workerData: { module, memories, kernelNames, ctrl, ops, claims, tid, threads, startGen: 0 },
      });
      w.unref();
      ready.push(
        new Promise((resolve, reject) => {
          w.once("message", () => resolve());
          w.once("error", reject);
        }),
      );
      workers.push(w);
    }
    await Promise.all(ready);
    return new Runtime(threads, memories, kernelNames, ctrl, ops, claims, workers);
  }

  /** Reserves `bytes` in a shard; returns its byte offset. Memory is never freed piecemeal. */
  alloc(shard: number, bytes: number, align = 64): number {
    const p = Math.ceil(this.tops[shard]! / align) * align;
    if (p + bytes > this.limits[shard]!) {
      throw new Error(`shard ${shard} is full: ${bytes} bytes wanted, ${this.limits[shard]! - p} left`);
    }
    this.tops[shard] = p + bytes;
    return p;
  }

  /** Bytes still free in a shard. */
  free(shard: number): number {
    return this.limits[shard]! - this.tops[shard]!;
  }

  u8(shard: number, offset: number, length: number): Uint8Array {
    return new Uint8Array(this.memories[shard]!.buffer, offset, length);
  }

  f32(shard: number, offset: number, length: number): Float32Array {
    return new Float32Array(this.memories[shard]!.buffer, offset, length);
  }

  u32(shard: number, offset: number, length: number): Uint32Array {
    return new Uint32Array(this.memories[shard]!.buffer, offset, length);
  }

  has(kernel: string): boolean {
    return this.kernelIndex.has(kernel);
  }

  /**
   * Records a kernel call on `shard`, split over `rows` output rows in chunks of `align`.
   * `barrier` ends the phase: later ops see this op's output. Ops in one phase run concurrently.
   */
  op(kernel: string, shard: number, rows: number, args: number[], align = 1, barrier = true): void {
    const fn = this.kernelIndex.get(kernel);
    if (fn === undefined) throw new Error(`unknown kernel ${kernel}`);
    if (args.length > MAX_ARGS) throw new Error(`kernel ${kernel}: too many arguments`);
    this.record(fn, shard, rows, align, barrier, args);
  }

  /** Records a byte copy from (srcShard, srcOffset) to (dstShard, dstOffset). */
  copy(
    dstShard: number,
    dstOffset: number,
    srcShard: number,
    srcOffset: number,
    bytes: number,
    barrier = true,
  ) {
    this.record(OP_COPY, dstShard, bytes, 4096, barrier, [srcShard, srcOffset, dstOffset]);
  }

  /** Ends the current phase after the last recorded op. */
  barrier(): void {
    if (this.nOps > 0) this.ops[(this.nOps - 1) * OP_SLOTS + 4] = FLAG_BARRIER;
  }

  private record(fn: number, shard: number, rows: number, align: number, barrier: boolean, args: number[]) {
    if (this.nOps === MAX_OPS) this.flush();
    const b = this.nOps * OP_SLOTS;
    const ops = this.ops;
    ops[b] = fn;
    ops[b + 1] = shard;
    ops[b + 2] = rows;
    ops[b + 3] = align;
    ops[b + 4] = barrier ? FLAG_BARRIER : 0;
    ops[b + 5] = args.length;
    for (let j = 0; j < args.length; j++) ops[b + 6 + j] = args[j]!;
    this.claims[2 * this.nOps] = 0;
    this.claims[2 * this.nOps + 1] = 0;
    this.nOps++;
  }

  /** Runs every recorded op on all threads and returns when they are all done. */
  flush(): void {
    if (this.nOps === 0) return;
    if (this.disposed) throw new Error("runtime is disposed");
    this.barrier();
    const ctrl = this.ctrl;
    Atomics.store(ctrl, CTRL.NOPS, this.nOps);
    const gen = Atomics.add(ctrl, CTRL.GEN, 1) + 1;
    if (Atomics.load(ctrl, CTRL.SLEEPERS) > 0) Atomics.notify(ctrl, CTRL.GEN);
    this.exec.execute();
    this.exec.finish(gen);
    this.nOps = 0;
    if (Atomics.load(ctrl, CTRL.ERROR) !== 0) {
      Atomics.store(ctrl, CTRL.ERROR, 0);
      throw new Error(`kernel failure: ${this.exec.takeError() || "in a worker thread (see stderr)"}`);
    }
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    Atomics.store(this.ctrl, CTRL.QUIT, 1);
    Atomics.add(this.ctrl, CTRL.GEN, 1);
    Atomics.notify(this.ctrl, CTRL.GEN);
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
