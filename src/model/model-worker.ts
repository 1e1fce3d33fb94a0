/**
 * A model in a worker thread, what loadModel gives by default. The weights, the KV cache and every
 * forward pass live in the worker (model-thread.ts), so a prompt of thousands of tokens never
 * holds up this thread's event loop; this side tokenizes, renders chat templates and turns the
 * worker's messages back into async iterators, promises and errors of the same classes and codes
 * as the in-thread Model's. An AbortSignal reaches the worker as a message, which it reads between
 * two prompt batches or two tokens.
 */
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { AbortError, type ErrorCode, UserError } from "../errors.js";
import { type GgufHeader, readGgufHeader } from "../formats/gguf.js";
import { Tokenizer } from "../tokenizer/index.js";
import { type LlamaConfig, metadataGetter } from "./config.js";
import { warnOnStderr } from "./llama.js";
import {
  busyError,
  type EmbedOptions,
  type GenerateOptions,
  type GenerationInfo,
  type LoadModelOptions,
  ModelBase,
} from "./model.js";

/** What the worker says about the model once it is loaded. */
export interface ModelThreadInfo {
  config: LlamaConfig;
  contextSize: number;
  threads: number;
}

/** An error as it crosses between threads: its class is rebuilt from `name` and `user`. */
export interface SerializedError {
  name: string;
  message: string;
  code?: string;
  status?: number;
  user: boolean;
  stack?: string;
}

/** Generation options that cross to the worker: the callbacks and the signal stay here. */
export type ThreadGenerateOptions = Omit<GenerateOptions, "signal" | "onDone">;

export type ModelThreadRequest =
  | { type: "generate"; id: number; ids: number[]; options: ThreadGenerateOptions }
  | { type: "embed"; id: number; ids: number[] }
  | { type: "abort"; id: number }
  | { type: "reset" }
  | { type: "dispose" };

export type ModelThreadResponse =
  | { type: "progress"; fraction: number }
  | { type: "warning"; message: string }
  | { type: "loaded"; info: ModelThreadInfo }
  | { type: "load-failed"; error: SerializedError }
  | { type: "piece"; id: number; text: string }
  | { type: "embedding"; id: number; vector: Float32Array }
  | { type: "done"; id: number; info?: GenerationInfo; error?: SerializedError };

export function serializeError(e: unknown): SerializedError {
  if (!(e instanceof Error)) return { name: "Error", message: String(e), user: false };
  const code = (e as { code?: unknown }).code;
  return {
    name: e.name,
    message: e.message,
    code: typeof code === "string" ? code : undefined,
    status: e instanceof UserError ? e.status : undefined,
    user: e instanceof UserError,
    stack: e.stack,
  };
}

/** The error a SerializedError stands for; an AbortError carries `cause` (the signal's reason). */
export function deserializeError(s: SerializedError, cause?: unknown): Error {
  if (s.name === "AbortError") return new AbortError(s.message, { cause });
  if (s.user) return new UserError(s.message, s.status, s.code as ErrorCode | undefined);
  const e = new Error(s.message) as Error & { code?: string };
  e.name = s.name;
  if (s.code !== undefined) e.code = s.code;
  if (s.stack !== undefined) e.stack = s.stack;
  return e;
}

// The worker runs compiled JavaScript: dist/model/model-thread.js, from dist/ or from src/ alike.
const THREAD_URL = new URL("../../dist/model/model-thread.js", import.meta.url);

type Listener = (m: ModelThreadResponse) => void;

/** A model whose forward passes run in a worker thread; see ModelBase for what it offers. */
export class WorkerModel extends ModelBase {
  private readonly worker: Worker;
  private readonly info: ModelThreadInfo;
  private readonly listeners = new Map<number, Listener>();
  private nextId = 1;
  private busy = false;
  /** Why the model cannot be used any more (disposed, or its thread stopped). */
  private gone?: string;
  private readonly exited: Promise<void>;

  private constructor(
    path: string,
    header: GgufHeader,
    tokenizer: Tokenizer,
    template: string | undefined,
    worker: Worker,
    info: ModelThreadInfo,
  ) {
    super(path, header, tokenizer, template);
    this.worker = worker;
    this.info = info;
    worker.on("message", (m: ModelThreadResponse) => {
      if ("id" in m) this.listeners.get(m.id)?.(m);
    });
    worker.on("error", (e) => this.stop(`the model's thread failed: ${e.message}`));
    this.exited = new Promise((resolve) => {
      worker.once("exit", () => {
        this.stop("the model's thread exited");
        resolve();
      });
    });
    // Idle, the thread does not keep the process alive; work in flight does (see listen).
    worker.unref();
  }

  /** Starts the worker and loads the model there; onLoadProgress and onWarning are called here. */
  static async load(path: string, options: LoadModelOptions = {}): Promise<WorkerModel> {
    if (!existsSync(THREAD_URL)) {
      throw new Error(`${fileURLToPath(THREAD_URL)} is missing: run "npm run build"`);
    }
    // The header again on this thread: tokenizing and chat templates run here.
    const header = readGgufHeader(path);
    const tokenizer = Tokenizer.fromGgufMetadata(metadataGetter(header));
    const { onLoadProgress, onWarning, worker: _, ...rest } = options;
    const worker = new Worker(THREAD_URL, { workerData: { path, options: rest } });
    let onMessage: (m: ModelThreadResponse) => void = () => {};
    let onExit: (code: number) => void = () => {};
    try {
      const info = await new Promise<ModelThreadInfo>((resolve, reject) => {
        onMessage = (m) => {
          if (m.type === "progress") onLoadProgress?.(m.fraction);
          else if (m.type === "warning") (onWarning ?? warnOnStderr)(m.message);
          else if (m.type === "loaded") resolve(m.info);
          else if (m.type === "load-failed") reject(deserializeError(m.error));
        };
        onExit = (code) =>
          reject(new Error(`the model's thread exited (code ${code}) while loading ${path}`));
        worker.on("message", onMessage);
        worker.once("error", reject);
        worker.once("exit", onExit);
      });
      return new WorkerModel(path, header, tokenizer, options.template, worker, info);
    } catch (e) {
      await worker.terminate();
      throw e;
    } finally {
      worker.off("message", onMessage);
      worker.off("exit", onExit);
    }
  }

  get config(): LlamaConfig {
    return this.info.config;
  }

  get contextSize(): number {
    return this.info.contextSize;
  }

  get threads(): number {
    return this.info.threads;
  }

  async *generateFromTokens(ids: number[], options: GenerateOptions = {}): AsyncGenerator<string> {
    this.usable();
    if (this.busy) throw busyError();
    const { signal, onDone, ...rest } = options;
    if (signal?.aborted) throw new AbortError("the generation was aborted", { cause: signal.reason });
    this.busy = true;
    const id = this.nextId++;
    const pieces: string[] = [];
    let done: Extract<ModelThreadResponse, { type: "done" }> | undefined;
    let wake: (() => void) | undefined;
    this.listen(id, (m) => {
      if (m.type === "piece") pieces.push(m.text);
      else if (m.type === "done") done = m;
      wake?.();
    });
    const abort = () => this.post({ type: "abort", id });
    signal?.addEventListener("abort", abort, { once: true });
    this.post({ type: "generate", id, ids, options: rest });
    const next = () =>
      new Promise<void>((resolve) => {
        wake = resolve;
      });
    try {
      for (;;) {
        if (pieces.length > 0) yield pieces.shift()!;
        else if (done) break;
        else await next();
      }
    } finally {
      signal?.removeEventListener("abort", abort);
      // A consumer that stops early (break, return): stop the worker's generation too.
      if (!done) abort();
      while (!done) await next();
      this.listeners.delete(id);
      this.idle();
      this.busy = false;
      if (done.info) onDone?.(done.info);
    }
    if (done.error) throw deserializeError(done.error, signal?.reason);
  }

  protected async embedTokens(ids: number[], options: EmbedOptions): Promise<Float32Array> {
    this.usable();
    if (this.busy) throw busyError();
    const signal = options.signal;
    if (signal?.aborted) throw new AbortError("the embedding was aborted", { cause: signal.reason });
    this.busy = true;
    const id = this.nextId++;
    const abort = () => this.post({ type: "abort", id });
    signal?.addEventListener("abort", abort, { once: true });
    try {
      return await new Promise<Float32Array>((resolve, reject) => {
        this.listen(id, (m) => {
          if (m.type === "embedding") resolve(m.vector);
          else if (m.type === "done" && m.error) reject(deserializeError(m.error, signal?.reason));
        });
        this.post({ type: "embed", id, ids });
      });
    } finally {
      signal?.removeEventListener("abort", abort);
      this.listeners.delete(id);
      this.idle();
      this.busy = false;
    }
  }

  reset(): void {
    if (!this.gone) this.post({ type: "reset" });
  }

  /** Stops what runs, frees the model and ends its thread. */
  async dispose(): Promise<void> {
    if (!this.gone) {
      for (const id of this.listeners.keys()) this.post({ type: "abort", id });
      this.worker.ref(); // until it has exited
      this.post({ type: "dispose" });
      this.gone = "the model was disposed of";
    }
    await this.exited;
  }

  private usable(): void {
    if (this.gone) throw new UserError(this.gone, 400, "ERR_MODEL_DISPOSED");
  }

  private post(m: ModelThreadRequest): void {
    this.worker.postMessage(m);
  }

  /** Routes the worker's messages about `id` to `listener`; the worker keeps the process alive meanwhile. */
  private listen(id: number, listener: Listener): void {
    this.listeners.set(id, listener);
    this.worker.ref();
  }

  private idle(): void {
    if (this.listeners.size === 0) this.worker.unref();
  }

  /** The thread is gone: whatever waits on it ends with an error. */
  private stop(why: string): void {
    this.gone ??= why;
    const error: SerializedError = {
      name: "UserError",
      message: why,
      code: "ERR_MODEL_DISPOSED",
      user: true,
    };
    for (const [id, listener] of [...this.listeners]) listener({ type: "done", id, error });
  }
}
