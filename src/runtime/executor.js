// The op-list executor shared by the main thread (thread 0) and every worker thread.
//
// The main thread records ops into a shared Float64Array, then bumps the work generation. Every
// thread walks the same list; each op is split into chunks of output rows that threads claim from
// a shared counter, and an op that ends a phase is followed by a wait until every chunk of the
// phase is done. The wait counts finished chunks, not arrived threads: a thread that the OS has
// not scheduled holds nothing up unless it is in the middle of a chunk; the others take its share
// and it catches up with the list (or skips it) when it runs again. Counting threads instead made
// every phase wait for every thread, and decoding collapsed eightfold on a 2-core machine as soon
// as any other process ran. Waits spin briefly, then sleep on a futex (Atomics.wait).
//
// A worker enters a list only while it is live (its generation published and not yet finished)
// and announces itself in ACTIVE; the main thread, once the list is done, marks it finished and
// waits for ACTIVE to drop to zero before it records the next list over the same op records.

export const CTRL = {
  GEN: 0, // work generation: bumped by the main thread to start an op list
  NOPS: 1, // ops in the current list
  QUIT: 2, // set to stop the workers
  ERROR: 3, // set when a kernel threw; the message goes to ERRMSG via postMessage-free channel
  SLEEPERS: 4, // threads inside Atomics.wait (on GEN, ACTIVE or a done counter)
  ACTIVE: 5, // worker threads inside the current op list
  FINISHED: 6, // the generation of the last op list whose every op is done
  SIZE: 16,
};

/** Slots per op record: fn, shard, rows, align, flags, nargs, args[18]. */
export const OP_SLOTS = 24;
export const MAX_ARGS = OP_SLOTS - 6;
/** fn id of the built-in byte copy between (or within) shards. */
export const OP_COPY = -1;
export const FLAG_BARRIER = 1;

/**
 * Chunks each thread takes of an op, on average. Threads claim an op's row chunks from a shared
 * counter (one per op) instead of owning a fixed share, so a thread slowed by a slower core or by
 * another process does less of the op rather than holding up the barrier. Which thread computes a
 * row never changes its bits: every kernel computes a row the same way whatever its range.
 */
const CHUNKS_PER_THREAD = 4;
const SPIN_WAIT = 20000;
const SPIN_IDLE = 200000;
/** 100 ms naps before the main thread gives up on a wait (5 minutes). */
const STALL_NAPS = 3000;

/**
 * @param {{ module: WebAssembly.Module, memories: WebAssembly.Memory[], kernelNames: string[],
 *   ctrl: Int32Array, ops: Float64Array, claims: Int32Array, tid: number, threads: number }} o
 *   claims: per op i, [2i] the next unclaimed row chunk and [2i + 1] the chunks done (both zeroed by
 *   the main thread when it records the op)
 */
export function createExecutor(o) {
  const { module, memories, kernelNames, ctrl, ops, claims, tid, threads } = o;
  /** @type {Function[][]} */
  const fns = [];
  /** @type {Uint8Array[]} */
  const bytes = [];
  for (const memory of memories) {
    const instance = new WebAssembly.Instance(module, { env: { memory, abort: onAbort } });
    const ex = /** @type {Record<string, Function>} */ (instance.exports);
    fns.push(
      kernelNames.map((name) => {
        const f = ex[name];
        if (typeof f !== "function") throw new Error(`kernel module has no export ${name}`);
        return f;
      }),
    );
    bytes.push(new Uint8Array(memory.buffer));
  }
  // One reusable argument array per argument count (args, then r0, r1, tid).
  const argArrays = [];
  for (let n = 0; n <= MAX_ARGS; n++) argArrays.push(new Array(n + 3).fill(0));

  /** Waits until word `index` of `array` reads `target` (another thread moves it there). */
  function waitFor(array, index, target) {
    for (let s = 0; s < SPIN_WAIT; s++) if (Atomics.load(array, index) === target) return;
    let naps = 0;
    for (let v = Atomics.load(array, index); v !== target; v = Atomics.load(array, index)) {
      Atomics.add(ctrl, CTRL.SLEEPERS, 1);
      Atomics.wait(array, index, v, 100);
      Atomics.sub(ctrl, CTRL.SLEEPERS, 1);
      // No op takes minutes; a chunk that never ends was taken by a thread that died.
      if (tid === 0 && ++naps > STALL_NAPS) throw new Error("a compute thread stopped responding");
    }
  }

  /** The chunks of the op at slot `b`: rows, rows per chunk, chunks; the same in every thread. */
  function chunking(b) {
    const rows = ops[b + 2];
    const align = ops[b + 3];
    const step = Math.max(1, Math.ceil(Math.ceil(rows / align) / (threads * CHUNKS_PER_THREAD))) * align;
    return { rows, step, chunks: Math.ceil(rows / step) };
  }

  /** Runs rows [r0, r1) of the op at slot b. */
  function run(b, r0, r1) {
    const fn = ops[b];
    const shard = ops[b + 1];
    try {
      if (fn === OP_COPY) {
        // args: srcShard, srcOffset, dstOffset (dst shard is the op's shard); rows are bytes
        const src = bytes[ops[b + 6]];
        const srcOff = ops[b + 7];
        const dstOff = ops[b + 8];
        const dst = bytes[shard];
        if (src === dst) dst.copyWithin(dstOff + r0, srcOff + r0, srcOff + r1);
        else dst.set(src.subarray(srcOff + r0, srcOff + r1), dstOff + r0);
      } else {
        const nargs = ops[b + 5];
        const a = argArrays[nargs];
        for (let j = 0; j < nargs; j++) a[j] = ops[b + 6 + j];
        a[nargs] = r0;
        a[nargs + 1] = r1;
        a[nargs + 2] = tid;
        fns[shard][fn].apply(undefined, a);
      }
    } catch (e) {
      Atomics.store(ctrl, CTRL.ERROR, 1);
      lastError = `${kernelNames[fn] ?? "copy"} failed in thread ${tid}: ${e instanceof Error ? e.message : e}`;
    }
  }

  /**
   * Runs the published op list as thread `tid`: claims chunks of each op while there are any, and
   * at the end of a phase waits until every chunk of the phase is done (by whichever thread).
   */
  function execute() {
    const nOps = Atomics.load(ctrl, CTRL.NOPS);
    if (threads === 1) {
      for (let i = 0; i < nOps; i++) {
        const b = i * OP_SLOTS;
        if (ops[b + 2] > 0 && Atomics.load(ctrl, CTRL.ERROR) === 0) run(b, 0, ops[b + 2]);
      }
      return;
    }
    let phaseStart = 0;
    for (let i = 0; i < nOps; i++) {
      const b = i * OP_SLOTS;
      const { rows, step, chunks } = chunking(b);
      for (;;) {
        const c = Atomics.add(claims, 2 * i, 1);
        if (c >= chunks) break;
        // After a failure the chunks are still counted (so no one waits forever), not computed.
        if (Atomics.load(ctrl, CTRL.ERROR) === 0) run(b, c * step, Math.min(rows, (c + 1) * step));
        Atomics.add(claims, 2 * i + 1, 1);
        if (Atomics.load(ctrl, CTRL.SLEEPERS) > 0) Atomics.notify(claims, 2 * i + 1);
      }
      if (ops[b + 4] & FLAG_BARRIER) {
        for (let j = phaseStart; j <= i; j++) waitFor(claims, 2 * j + 1, chunking(j * OP_SLOTS).chunks);
        phaseStart = i + 1;
      }
    }
  }

  /**
   * The main thread's end of a list it published as generation `gen` and ran to its end: marks the
   * list finished and waits until no worker is still walking it, so its records may be rewritten.
   */
  function finish(gen) {
    Atomics.store(ctrl, CTRL.FINISHED, gen);
    waitFor(ctrl, CTRL.ACTIVE, 0);
  }

  let lastError = "";

  /**
   * Worker loop: wait for a new generation, run it, repeat until QUIT. `seen` must be the
   * generation at the time the worker was created, not one read later: the main thread may
   * already have published the first op list by the time this thread gets to run.
   */
  function serve(seen = 0) {
    for (;;) {
      let spins = 0;
      while (Atomics.load(ctrl, CTRL.GEN) === seen) {
        if (spins++ < SPIN_IDLE) continue;
        Atomics.add(ctrl, CTRL.SLEEPERS, 1);
        Atomics.wait(ctrl, CTRL.GEN, seen, 1000);
        Atomics.sub(ctrl, CTRL.SLEEPERS, 1);
      }
      seen = Atomics.load(ctrl, CTRL.GEN);
      if (Atomics.load(ctrl, CTRL.QUIT) !== 0) return;
      // Enter only a list that is still live: one that finished while this thread was not running
      // is skipped (its records may already hold the next list, being recorded).
      Atomics.add(ctrl, CTRL.ACTIVE, 1);
      if (Atomics.load(ctrl, CTRL.GEN) === seen && Atomics.load(ctrl, CTRL.FINISHED) !== seen) execute();
      Atomics.sub(ctrl, CTRL.ACTIVE, 1);
      if (Atomics.load(ctrl, CTRL.SLEEPERS) > 0) Atomics.notify(ctrl, CTRL.ACTIVE);
      if (lastError) {
        // Surface the first error through stderr; the main thread sees CTRL.ERROR and throws.
        process.stderr.write(`${lastError}\n`);
        lastError = "";
      }
    }
  }

  function takeError() {
    const e = lastError;
    lastError = "";
    return e;
  }

  return { execute, finish, serve, takeError, bytes };
}

function onAbort() {
  throw new Error("kernel abort");
}
