// The inference thread of the server: loads the model, runs the batch scheduler step after step,
// and talks to the HTTP thread (engine.ts) by messages. Between two steps it yields to its event
// loop, so new generations and cancellations arrive at step boundaries.
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { parentPort, workerData } from "node:worker_threads";
import { isUserError } from "../errors.js";
import { metadataGetter } from "../model/config.js";
import { LlamaModel } from "../model/llama.js";
import { Tokenizer } from "../tokenizer/index.js";
import type { EngineRequest, EngineResponse, EngineWorkerData } from "./engine.js";
import { BatchScheduler } from "./scheduler.js";

const port = parentPort!;
const data = workerData as EngineWorkerData;
const post = (m: EngineResponse) => port.postMessage(m);

let llama: LlamaModel;
let scheduler: BatchScheduler;
try {
  llama = await LlamaModel.load(data.path, {
    threads: data.threads,
    contextSize: data.contextSize,
    lora: data.lora,
    sequences: data.sequences,
    batchSize: data.batchSize,
  });
  const tokenizer = Tokenizer.fromGgufMetadata(metadataGetter(llama.header));
  scheduler = new BatchScheduler(llama, tokenizer, (events) => post({ type: "events", events }));
} catch (e) {
  post({ type: "load-failed", message: e instanceof Error ? e.message : String(e), user: isUserError(e) });
  process.exit(0);
}

let closing = false;
let wake: (() => void) | undefined;
port.on("message", (m: EngineRequest) => {
  if (m.type === "generate" || m.type === "embed") scheduler.submit(m.job);
  else if (m.type === "cancel") scheduler.cancel(m.id);
  else closing = true;
  wake?.();
});

post({
  type: "loaded",
  info: {
    contextSize: llama.contextSize,
    sequences: llama.sequences,
    batchSize: llama.batchSize,
    threads: llama.threads,
    kvCacheBytes: llama.kvCacheBytes,
  },
});

while (!closing) {
  let worked: boolean;
  try {
    worked = scheduler.step();
  } catch (e) {
    post({ type: "failed", message: e instanceof Error ? e.message : String(e) });
    break;
  }
  if (worked) await yieldToEventLoop();
  else
    await new Promise<void>((resolve) => {
      wake = resolve;
    });
  wake = undefined;
}
await llama.dispose();
port.close();
