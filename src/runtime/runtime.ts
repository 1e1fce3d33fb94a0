import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { CTRL, createExecutor, FLAG_BARRIER, MAX_ARGS, OP_COPY, OP_SLOTS } from "./executor.js";

const PAGE = 65536;
/** Bytes at the bottom of every shard reserved for the kernel module's static data. */
export const SHARD_BASE = 1 << 20;
/** Largest shard: wasm32 memories stop at 4 GiB; stay clear of the edge. */
export const MAX_SHARD_BYTES = 4 * 1024 * 1024 * 1024 - 64 * 1024 * 1024;
const MAX_OPS = 16384;

let cachedModule: WebAssembly.Module | undefined;

/** The compiled kernel module (build/kernels.wasm), compiled once per process. */
export function kernelModule(): WebAssembly.Module {
  if (!cachedModule) {
    const url = new URL("../../build/kernels.wasm", import.meta.url);
    let bytes: Buffer;
    try {
      bytes = readFileSync(url);
    } catch {
      throw new Error(`kernel module missing at ${url.pathname}: run "npm run build:kernels"`);
    }
    cachedModule = new WebAssembly.Module(bytes);
  }
  return cachedModule;
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
    this.workers = workers;
    this.exec = createExecutor({ module: kernelModule(), memories, kernelNames, ctrl, ops, tid: 0, threads });
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
    const workers: Worker[] = [];
    const ready: Promise<void>[] = [];
    for (let tid = 1; tid < threads; tid++) {
      const w = new Worker(new URL("./worker.js", import.meta.url), {
        workerData: { module, memories, kernelNames, ctrl, ops, tid, threads, startGen: 0 },
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
    return new Runtime(threads, memories, kernelNames, ctrl, ops, workers);
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
    this.nOps++;
  }

  /** Runs every recorded op on all threads and returns when they are all done. */
  flush(): void {
    if (this.nOps === 0) return;
    if (this.disposed) throw new Error("runtime is disposed");
    this.barrier();
    const ctrl = this.ctrl;
    Atomics.store(ctrl, CTRL.NOPS, this.nOps);
    Atomics.add(ctrl, CTRL.GEN, 1);
    if (Atomics.load(ctrl, CTRL.SLEEPERS) > 0) Atomics.notify(ctrl, CTRL.GEN);
    this.exec.execute();
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
