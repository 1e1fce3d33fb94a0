/**
 * The HTTP thread's handle on the inference thread (engine-worker.ts). The model runs in a worker
 * so that a forward pass, which holds its thread for its whole length, never stalls the server:
 * health checks, new connections, 401s and 429s are answered while the model computes.
 */
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { UserError } from "../errors.js";
import type { LlamaLoadOptions } from "../model/llama.js";
import type { TokenLogprob } from "../model/logprobs.js";
import type { GenerationInfo } from "../model/model.js";
import type { EmbeddingJob, GenerationJob, SchedulerEvent } from "./scheduler.js";

export interface EngineWorkerData {
  path: string;
  threads?: number;
  contextSize?: number;
  lora?: LlamaLoadOptions["lora"];
  sequences: number;
  batchSize: number;
}

export interface EngineInfo {
  contextSize: number;
  sequences: number;
  batchSize: number;
  threads: number;
  kvCacheBytes: number;
}

export type EngineRequest =
  | { type: "generate"; job: GenerationJob }
  | { type: "embed"; job: EmbeddingJob }
  | { type: "cancel"; id: number }
  | { type: "close" };

export type EngineResponse =
  | { type: "loaded"; info: EngineInfo }
  | { type: "load-failed"; message: string; user: boolean }
  | { type: "events"; events: SchedulerEvent[] }
  | { type: "failed"; message: string };

export interface GenerationHandlers {
  /** The generation got its sequences (it waited in the queue until then). */
  onStart?(): void;
  /** Text of reply `index`, with its tokens' log-probabilities when the job asked for them. */
  onText(text: string, index: number, logprobs?: TokenLogprob[]): void;
  /** Reply `index` ended (with n > 1, before the others may have). */
  onChoiceDone?(index: number, info: GenerationInfo): void;
  /**
   * Every reply ended: `info` counts the prompt once and the completion tokens of all replies;
   * its finish reason is "abort" when the generation was cancelled. `choices` by index.
   */
  onDone(info: GenerationInfo, choices: GenerationInfo[]): void;
  /** The engine stopped; the generation is over. */
  onError(message: string): void;
}

export interface EmbeddingHandlers {
  onStart?(): void;
  /** One unit vector per input, or none when the job was cancelled. */
  onDone(vectors: Float32Array[], promptTokens: number): void;
  onError(message: string): void;
}

type Entry = { started: boolean; slots: number } & (
  | { kind: "generation"; handlers: GenerationHandlers; choices: (GenerationInfo | undefined)[] }
  | { kind: "embedding"; handlers: EmbeddingHandlers }
);

export interface Generation {
  readonly id: number;
  /** Stops the generation at the next step boundary; onDone follows with finish reason "abort". */
  cancel(): void;
}

// The worker runs compiled JavaScript: dist/serve/engine-worker.js, from dist/ or from src/ alike.
const WORKER_URL = new URL("../../dist/serve/engine-worker.js", import.meta.url);

export class Engine {
  /** Resolves once the model is loaded; rejects (a UserError for a bad file) when loading fails. */
  readonly loaded: Promise<EngineInfo>;
  state: "loading" | "ready" | "failed" | "closed" = "loading";
  /** Why the engine failed, once state is "failed". */
  failure = "";
  info?: EngineInfo;
  private readonly worker: Worker;
  private readonly generations = new Map<number, Entry>();
  private nextId = 1;
  private exited: Promise<void>;

  constructor(data: EngineWorkerData) {
    if (!existsSync(WORKER_URL)) {
      throw new Error(`${fileURLToPath(WORKER_URL)} is missing: run "npm run build"`);
    }
    this.worker = new Worker(WORKER_URL, { workerData: data });
    let resolveLoaded: (info: EngineInfo) => void;
    let rejectLoaded: (e: Error) => void;
    this.loaded = new Promise((resolve, reject) => {
      resolveLoaded = resolve;
      rejectLoaded = reject;
    });
    this.loaded.catch(() => {}); // a caller that never awaits it must not see an unhandled rejection
    this.worker.on("message", (m: EngineResponse) => {
      if (m.type === "events") this.dispatch(m.events);
      else if (m.type === "loaded") {
        this.state = "ready";
        this.info = m.info;
        resolveLoaded(m.info);
      } else if (m.type === "load-failed") {
        this.fail(m.message);
        rejectLoaded(m.user ? new UserError(m.message) : new Error(m.message));
      } else this.fail(m.message);
    });
    this.worker.on("error", (e) => {
      this.fail(e.message);
      rejectLoaded(e);
    });
    this.exited = new Promise((resolve) => {
      this.worker.once("exit", () => {
        if (this.state === "loading" || this.state === "ready") this.fail("the inference thread exited");
        rejectLoaded(new Error(this.failure || "the inference thread exited"));
        resolve();
      });
    });
  }

  /** Generations submitted and not yet done. */
  get inFlight(): number {
    return this.generations.size;
  }

  /** Sequences held by running jobs. */
  get busy(): number {
    let n = 0;
    for (const g of this.generations.values()) if (g.started) n += g.slots;
    return n;
  }

  /** Jobs waiting for sequences. */
  get waiting(): number {
    let n = 0;
    for (const g of this.generations.values()) if (!g.started) n++;
    return n;
  }

  generate(job: Omit<GenerationJob, "id">, handlers: GenerationHandlers): Generation {
    const n = job.n ?? 1;
    return this.submit(
      { kind: "generation", handlers, started: false, slots: n, choices: Array(n).fill(undefined) },
      (id) => ({
        type: "generate",
        job: { ...job, id },
      }),
    );
  }

  /** Embeds the inputs (token ids) on one sequence, queued as generations are. */
  embed(job: Omit<EmbeddingJob, "id">, handlers: EmbeddingHandlers): Generation {
    return this.submit({ kind: "embedding", handlers, started: false, slots: 1 }, (id) => ({
      type: "embed",
      job: { ...job, id },
    }));
  }

  private submit(entry: Entry, request: (id: number) => EngineRequest): Generation {
    if (this.state !== "ready") throw new Error(`the engine is ${this.state}`);
    const id = this.nextId++;
    this.generations.set(id, entry);
    this.post(request(id));
    return {
      id,
      cancel: () => {
        if (this.generations.has(id) && this.state === "ready") this.post({ type: "cancel", id });
      },
    };
  }

  /** Cancels every generation in flight. */
  cancelAll(): void {
    for (const id of this.generations.keys()) this.post({ type: "cancel", id });
  }

  /** Stops the inference thread (generations in flight end with an error) and frees the model. */
  async close(): Promise<void> {
    if (this.state === "ready") this.post({ type: "close" });
    else if (this.state === "loading") await this.worker.terminate();
    this.state = this.state === "failed" ? "failed" : "closed";
    await this.exited;
    this.failAll("the server is shutting down");
  }

  private post(m: EngineRequest): void {
    this.worker.postMessage(m);
  }

  private dispatch(events: SchedulerEvent[]): void {
    for (const e of events) {
      const g = this.generations.get(e.id);
      if (!g) continue;
      if (e.type === "started") {
        g.started = true;
        g.handlers.onStart?.();
      } else if (e.type === "error") {
        this.generations.delete(e.id);
        g.handlers.onError(e.message);
      } else if (e.type === "embeddings") {
        this.generations.delete(e.id);
        if (g.kind === "embedding") g.handlers.onDone(e.vectors, e.promptTokens);
      } else if (g.kind !== "generation") continue;
      else if (e.type === "text") g.handlers.onText(e.text, e.index, e.logprobs);
      else {
        g.choices[e.index] = e.info;
        g.handlers.onChoiceDone?.(e.index, e.info);
        if (g.choices.some((c) => c === undefined)) continue;
        this.generations.delete(e.id);
        const choices = g.choices as GenerationInfo[];
        const first = choices[0]!;
        g.handlers.onDone(
          {
            promptTokens: first.promptTokens,
            evaluatedPromptTokens: first.evaluatedPromptTokens,
            completionTokens: choices.reduce((sum, c) => sum + c.completionTokens, 0),
            finishReason: choices.some((c) => c.finishReason === "abort") ? "abort" : first.finishReason,
          },
          choices,
        );
      }
    }
  }

  private fail(message: string): void {
    if (this.state === "failed" || this.state === "closed") return;
    this.state = "failed";
    this.failure = message;
    this.failAll(`the inference engine stopped: ${message}`);
  }

  private failAll(message: string): void {
    const all = [...this.generations.values()];
    this.generations.clear();
    for (const g of all) g.handlers.onError(message);
  }
}
