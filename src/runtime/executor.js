// The op-list executor shared by the main thread (thread 0) and every worker thread.
//
// The main thread records ops into a shared Float64Array, then bumps the work generation. Every
// thread walks the same list; each op is split by output rows, and a barrier follows each op that
// ends a phase. A barrier spins briefly and then sleeps on a futex (Atomics.wait), because a pure
// spin collapses on a 2-core machine as soon as anything else runs.

export const CTRL = {
  GEN: 0, // work generation: bumped by the main thread to start an op list
  ARRIVED: 1, // threads arrived at the current barrier
  BGEN: 2, // barrier generation
  NOPS: 3, // ops in the current list
  QUIT: 4, // set to stop the workers
  ERROR: 5, // set when a kernel threw; the message goes to ERRMSG via postMessage-free channel
  SLEEPERS: 6, // threads inside Atomics.wait on BGEN or GEN
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
const SPIN_BARRIER = 20000;
const SPIN_IDLE = 200000;
/** 100 ms naps before the main thread gives up on a barrier (5 minutes). */
const STALL_NAPS = 3000;

/**
 * @param {{ module: WebAssembly.Module, memories: WebAssembly.Memory[], kernelNames: string[],
 *   ctrl: Int32Array, ops: Float64Array, claims: Int32Array, tid: number, threads: number }} o
 *   claims: per op, the next unclaimed row chunk (zeroed by the main thread when it records the op)
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

  function barrier() {
    const g = Atomics.load(ctrl, CTRL.BGEN);
    if (Atomics.add(ctrl, CTRL.ARRIVED, 1) === threads - 1) {
      Atomics.store(ctrl, CTRL.ARRIVED, 0);
      Atomics.add(ctrl, CTRL.BGEN, 1);
      if (Atomics.load(ctrl, CTRL.SLEEPERS) > 0) Atomics.notify(ctrl, CTRL.BGEN);
      return;
    }
    for (let s = 0; s < SPIN_BARRIER; s++) if (Atomics.load(ctrl, CTRL.BGEN) !== g) return;
    let naps = 0;
    while (Atomics.load(ctrl, CTRL.BGEN) === g) {
      Atomics.add(ctrl, CTRL.SLEEPERS, 1);
      Atomics.wait(ctrl, CTRL.BGEN, g, 100);
      Atomics.sub(ctrl, CTRL.SLEEPERS, 1);
      // No op takes minutes; a thread that never arrives has died. Fail instead of hanging.
      if (tid === 0 && ++naps > STALL_NAPS) throw new Error("a compute thread stopped responding");
    }
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

  /** Runs the published op list as thread `tid`; returns after the list's last barrier. */
  function execute() {
    const nOps = Atomics.load(ctrl, CTRL.NOPS);
    for (let i = 0; i < nOps; i++) {
      const b = i * OP_SLOTS;
      const rows = ops[b + 2];
      const align = ops[b + 3];
      const units = Math.ceil(rows / align);
      if (threads === 1) {
        if (rows > 0 && Atomics.load(ctrl, CTRL.ERROR) === 0) run(b, 0, rows);
      } else {
        // chunks of whole align units, claimed one at a time
        const step = Math.max(1, Math.ceil(units / (threads * CHUNKS_PER_THREAD))) * align;
        const chunks = Math.ceil(rows / step);
        for (;;) {
          const c = Atomics.add(claims, i, 1);
          if (c >= chunks || Atomics.load(ctrl, CTRL.ERROR) !== 0) break;
          run(b, c * step, Math.min(rows, (c + 1) * step));
        }
      }
      if (ops[b + 4] & FLAG_BARRIER) barrier();
    }
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
      execute();
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

  return { execute, serve, barrier, takeError, bytes };
}

function onAbort() {
  throw new Error("kernel abort");
}
