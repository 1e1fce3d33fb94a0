// The worker thread of a WorkerModel (model-worker.ts): loads the model, then runs generations and
// embeddings one at a time as the other side asks. The model yields to this thread's event loop
// between prompt batches and between tokens, so an "abort" message is read there.
import { parentPort, workerData } from "node:worker_threads";
import { type LoadModelOptions, Model } from "./model.js";
import { type ModelThreadRequest, type ModelThreadResponse, serializeError } from "./model-worker.js";

const port = parentPort!;
const data = workerData as { path: string; options: LoadModelOptions };
const post = (m: ModelThreadResponse) => port.postMessage(m);

let model: Model;
try {
  model = await Model.load(data.path, {
    ...data.options,
    onLoadProgress: (fraction) => post({ type: "progress", fraction }),
    onWarning: (message) => post({ type: "warning", message }),
  });
} catch (e) {
  post({ type: "load-failed", error: serializeError(e) });
  process.exit(0); // ends this thread only
}
post({
  type: "loaded",
  info: { config: model.config, contextSize: model.contextSize, threads: model.threads },
});

const controllers = new Map<number, AbortController>();

async function generate(m: Extract<ModelThreadRequest, { type: "generate" }>): Promise<void> {
  const controller = new AbortController();
  controllers.set(m.id, controller);
  let info: ModelThreadResponse & { type: "done" } = { type: "done", id: m.id };
  try {
    const pieces = model.generateFromTokens(m.ids, {
      ...m.options,
      signal: controller.signal,
      onDone: (i) => {
        info = { ...info, info: i };
      },
    });
    for await (const text of pieces) post({ type: "piece", id: m.id, text });
  } catch (e) {
    info = { ...info, error: serializeError(e) };
  } finally {
    controllers.delete(m.id);
  }
  post(info);
}

async function embed(m: Extract<ModelThreadRequest, { type: "embed" }>): Promise<void> {
  const controller = new AbortController();
  controllers.set(m.id, controller);
  try {
    const vector = await model.embed(m.ids, { signal: controller.signal });
    post({ type: "embedding", id: m.id, vector });
  } catch (e) {
    post({ type: "done", id: m.id, error: serializeError(e) });
  } finally {
    controllers.delete(m.id);
  }
}

port.on("message", (m: ModelThreadRequest) => {
  if (m.type === "generate") void generate(m);
  else if (m.type === "embed") void embed(m);
  else if (m.type === "abort") controllers.get(m.id)?.abort();
  else if (m.type === "reset") model.reset();
  else {
    for (const c of controllers.values()) c.abort();
    void model.dispose().then(() => port.close());
  }
});
