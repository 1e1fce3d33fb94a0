// A compute thread of the runtime. It instantiates the kernel module once per memory shard and then
// runs the op lists that the main thread publishes, in step with the other threads.
// Plain JavaScript so that it runs unchanged from src/ (tests) and dist/ (the package).
import { parentPort, workerData } from "node:worker_threads";
import { createExecutor } from "./executor.js";

const { module, memories, kernelNames, ctrl, ops, claims, tid, threads, startGen } = workerData;
const exec = createExecutor({ module, memories, kernelNames, ctrl, ops, claims, tid, threads });
parentPort?.postMessage("ready");
exec.serve(startGen);
