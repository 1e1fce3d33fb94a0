// A worker thread of RowConverter (quantize-rows.ts): converts the rows of each tensor it is sent.
import { type MessagePort, parentPort, workerData } from "node:worker_threads";
import { runThreadJob, type ThreadJob } from "./quantize-rows.js";
import { useKernelModule } from "./search-kernels.js";

const { errors, kernels } = workerData as { errors: MessagePort; kernels?: WebAssembly.Module };
if (kernels) useKernelModule(kernels);
parentPort!.on("message", (m: ThreadJob) => runThreadJob(m, errors));
