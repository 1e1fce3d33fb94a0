// Converting one tensor's rows from any readable type to a quantized type, on as many threads as
// asked: the rows of a tensor are independent, so any split gives the same bytes. Threads take
// chunks of rows from a shared counter (no thread waits on a slow neighbour) and write only their
// own rows of a shared output buffer; the calling thread takes chunks too, then blocks until the
// others are done (GgufWriter asks for a tensor's bytes synchronously).
import { existsSync } from "node:fs";
import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from "node:worker_threads";
import { GGMLType } from "../formats/ggml-types.js";
import { dequantizeRow, quantizeRow } from "./reference.js";
import { searchKernelModule } from "./search-kernels.js";

/** One tensor to convert: `rows` rows of `cols` elements from `src` (of srcType) to `dst` (of dstType). */
export interface RowJob {
  srcType: number;
  dstType: number;
  cols: number;
  rows: number;
  src: Uint8Array;
  dst: Uint8Array;
  /** Importance per column (ggml's weighted quantizers), or none. */
  rowWeights?: Float32Array;
}

/** Shared state of a job, Int32 slots: the next row to take, threads done, first bad row, a thread failed. */
const NEXT = 0;
const DONE = 1;
const BAD = 2;
const FAILED = 3;

/**
 * Converts the rows the counter in `state` hands out, `chunk` at a time, until none are left or a
 * row holds a NaN or infinity (whose index, the smallest any thread met, goes to state[BAD]).
 */
function convertChunks(job: RowJob, state: Int32Array, chunk: number): void {
  const { srcType, dstType, cols, rows, src, dst, rowWeights } = job;
  const inRow = src.length / rows;
  const outRow = dst.length / rows;
  const scratch = new Float32Array(cols);
  // f32 rows are read where they lie, when they lie on 4-byte boundaries
  const inPlace = srcType === GGMLType.F32 && src.byteOffset % 4 === 0;
  for (;;) {
    const r0 = Atomics.add(state, NEXT, chunk);
    if (r0 >= rows) return;
    const r1 = Math.min(rows, r0 + chunk);
    for (let r = r0; r < r1; r++) {
      const row: Float32Array = inPlace
        ? new Float32Array(src.buffer, src.byteOffset + r * inRow, cols)
        : dequantizeRow(srcType, src.subarray(r * inRow, (r + 1) * inRow), cols, scratch);
      for (let j = 0; j < cols; j++) {
        if (!Number.isFinite(row[j]!)) {
          // Keep the smallest bad row, so the error names the row a one-thread run names; stop all.
          for (let seen = Atomics.load(state, BAD); r < seen; seen = Atomics.load(state, BAD)) {
            if (Atomics.compareExchange(state, BAD, seen, r) === seen) break;
          }
          Atomics.store(state, NEXT, rows);
          return;
        }
      }
      quantizeRow(dstType, row, dst.subarray(r * outRow, (r + 1) * outRow), rowWeights);
    }
  }
}

/** The message a quantize thread gets per tensor (buffers shared, not copied). */
export interface ThreadJob {
  srcType: number;
  dstType: number;
  cols: number;
  rows: number;
  src: SharedArrayBuffer;
  dst: SharedArrayBuffer;
  state: SharedArrayBuffer;
  chunk: number;
  rowWeights?: Float32Array;
}

/** A quantize thread's side of a job: convert, then report done (and any failure on `errors`). */
export function runThreadJob(m: ThreadJob, errors: MessagePort): void {
  const state = new Int32Array(m.state);
  try {
    const job = { ...m, src: new Uint8Array(m.src), dst: new Uint8Array(m.dst) };
    convertChunks(job, state, m.chunk);
  } catch (e) {
    Atomics.store(state, NEXT, m.rows);
    Atomics.store(state, FAILED, 1);
    errors.postMessage(e instanceof Error ? e.message : String(e));
  } finally {
    Atomics.add(state, DONE, 1);
    Atomics.notify(state, DONE);
  }
}

const THREAD_URL = new URL("../../dist/quant/quantize-thread.js", import.meta.url);

/** Jobs smaller than this many weights run on the calling thread alone. */
const MIN_SHARED_WEIGHTS = 1 << 16;

/**
 * The calling thread and `threads − 1` worker threads converting tensors one at a time. Without
 * the built thread module (dist/, `npm run build`), the calling thread works alone: same bytes.
 */
export class RowConverter {
  private readonly workers: { worker: Worker; errors: MessagePort }[] = [];

  constructor(readonly threads: number) {
    if (threads > 1 && existsSync(THREAD_URL)) {
      for (let i = 1; i < threads; i++) {
        const { port1, port2 } = new MessageChannel();
        const workerData = { errors: port2, kernels: searchKernelModule() };
        const worker = new Worker(THREAD_URL, { workerData, transferList: [port2] });
        worker.unref();
        this.workers.push({ worker, errors: port1 });
      }
    }
  }

  /** Room for a tensor's source bytes that the threads can share without a copy. */
  sourceBuffer(bytes: number): Uint8Array {
    return new Uint8Array(this.workers.length > 0 ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes));
  }

  /**
   * Converts every row of `job` into job.dst; returns the first row holding a NaN or infinity
   * (nothing after it is converted), or −1.
   */
  convert(job: RowJob): number {
    const { rows, cols } = job;
    const helpers = rows * cols >= MIN_SHARED_WEIGHTS ? this.workers : [];
    const state = new Int32Array(new SharedArrayBuffer(16));
    state[BAD] = rows;
    const n = helpers.length + 1;
    const chunk = Math.max(1, Math.min(64, Math.ceil(rows / (8 * n))));
    if (helpers.length === 0) {
      convertChunks(job, state, chunk);
      return state[BAD]! < rows ? state[BAD]! : -1;
    }
    let src = job.src.buffer;
    if (
      !(src instanceof SharedArrayBuffer) ||
      job.src.byteOffset !== 0 ||
      job.src.length !== src.byteLength
    ) {
      src = new SharedArrayBuffer(job.src.length);
      new Uint8Array(src).set(job.src);
    }
    const dst = new SharedArrayBuffer(job.dst.length);
    const shared = state.buffer as SharedArrayBuffer;
    // (a copy of the weights alone: a view would send its whole buffer to every thread)
    const m: ThreadJob = { ...job, src, dst, state: shared, chunk, rowWeights: job.rowWeights?.slice() };
    for (const h of helpers) h.worker.postMessage(m);
    let failure: unknown;
    try {
      convertChunks({ ...job, src: new Uint8Array(src), dst: new Uint8Array(dst) }, state, chunk);
    } catch (e) {
      Atomics.store(state, NEXT, rows);
      failure = e;
    }
    for (let done = Atomics.load(state, DONE); done < helpers.length; done = Atomics.load(state, DONE)) {
      Atomics.wait(state, DONE, done);
    }
    if (failure !== undefined) throw failure;
    if (state[FAILED]) {
      const messages = helpers.map((h) => receiveMessageOnPort(h.errors)?.message).filter((s) => s);
      throw new Error(`quantize thread failed: ${messages.join("; ")}`);
    }
    job.dst.set(new Uint8Array(dst));
    return state[BAD]! < rows ? state[BAD]! : -1;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((h) => h.worker.terminate()));
    for (const h of this.workers) h.errors.close();
  }
}
