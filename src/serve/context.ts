/**
 * What the routes of the server share (server.ts makes it): the model's fixed facts read from
 * its file, the engine once it loads, the queue's limits, the requests in flight, the metrics;
 * and how a request that runs work on the engine is cancelled (client gone, timeout, shutdown).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { PoolingType } from "../model/embedding.js";
import type { ChosenTemplate } from "../model/templates.js";
import type { Tokenizer } from "../tokenizer/index.js";
import type { Engine } from "./engine.js";
import type { ServerMetrics } from "./metrics.js";
import { ApiError } from "./openai.js";

/** How a request with work on the engine ends besides finishing: why it was cancelled. */
export type CancelReason = "client" | "timeout" | "shutdown";

export interface Cancellable {
  cancel(reason: CancelReason): void;
}

export interface ServerContext {
  /** The model name clients send (the file name without .gguf). */
  readonly modelId: string;
  /** The model file's path. */
  readonly modelFile: string;
  /** The file's modification time, in seconds (the model card's `created`). */
  readonly created: number;
  readonly tokenizer: Tokenizer;
  /** The chat template; undefined when there is none, and `templateProblem` says why. */
  readonly template: ChosenTemplate | undefined;
  readonly templateProblem: string;
  /** The file's pooling of embeddings, and their width. */
  readonly pooling: PoolingType;
  readonly embeddingWidth: number;
  /** Sequences decoded together, and requests that may wait for one. */
  readonly parallel: number;
  readonly queueLimit: number;
  /** Longest a request with work on the engine may take, queue wait included, in ms. */
  readonly timeoutMs: number;
  /**
   * The engine, once loading started. Every route but the open ones runs only once it is ready
   * (the guard hook answers 503 or 500 before), so they may take it as set.
   */
  readonly engine: Engine | undefined;
  /** Set once shutdown's grace period is over: new work is refused. */
  readonly cancelling: boolean;
  /** Requests with work on the engine (running or queued), to cancel on shutdown. */
  readonly active: Set<Cancellable>;
  /** Generations that ran to their end, and those cancelled (client gone, timeout, shutdown). */
  readonly generations: { finished: number; cancelled: number };
  readonly metrics: ServerMetrics;
  /** When each request arrived (performance.now()), for the time to the first token. */
  readonly started: WeakMap<IncomingMessage, number>;
  /** Counts a finished request's tokens for /metrics and its log line. */
  countTokens(req: IncomingMessage, prompt: number, completion: number): void;
}

export function unknownModel(asked: string, served: string): ApiError {
  return new ApiError(
    404,
    `the model "${asked}" does not exist; this server serves "${served}"`,
    "model_not_found",
    "model",
  );
}

export function shuttingDown(): ApiError {
  return new ApiError(503, "the server is shutting down", "shutting_down");
}

/** A 429 when the engine holds as many requests as it runs and queues. */
export function checkQueueRoom(ctx: ServerContext): void {
  const engine = ctx.engine!;
  if (engine.inFlight >= ctx.parallel + ctx.queueLimit) {
    throw new ApiError(
      429,
      `the server is busy: ${engine.busy} sequences are in use and ${engine.waiting} requests are waiting (the most the queue holds); retry later`,
      "queue_full",
    );
  }
}

/** One request's work on the engine, as cancellation sees it. */
export interface Watch {
  /** Why the request was cancelled, once it was. */
  readonly reason: CancelReason | undefined;
  /** The answer to the request once cancelled: 504 after a timeout, 503 on shutdown. */
  error(): ApiError;
  /** The work ended: neither the timeout nor shutdown cancels it any more. */
  ended(): void;
}

/**
 * Watches a request that runs work on the engine: it is cancelled once, for the first of its
 * client going away (the connection closes before the answer is written), its timeout, or
 * shutdown; `cancel` then stops the work and answers, at once rather than at the engine's next
 * step boundary (a long prompt chunk may take seconds), so that the answer is written before
 * shutdown closes the connections.
 */
export function watchRequest(
  ctx: ServerContext,
  res: ServerResponse,
  cancel: (reason: CancelReason) => void,
): Watch {
  let reason: CancelReason | undefined;
  const tracked: Cancellable = {
    cancel(why) {
      if (reason) return;
      reason = why;
      watch.ended();
      cancel(why);
    },
  };
  ctx.active.add(tracked);
  const timer = setTimeout(() => tracked.cancel("timeout"), ctx.timeoutMs);
  timer.unref();
  res.on("close", () => {
    if (!res.writableFinished) tracked.cancel("client");
  });
  const watch: Watch = {
    get reason() {
      return reason;
    },
    error() {
      if (reason === "timeout") {
        return new ApiError(
          504,
          `the request took longer than ${ctx.timeoutMs / 1000} s and was stopped`,
          "timeout",
        );
      }
      if (reason === "shutdown") return shuttingDown();
      return new ApiError(400, "the client closed the connection", "client_closed"); // never delivered
    },
    ended() {
      clearTimeout(timer);
      ctx.active.delete(tracked);
    },
  };
  return watch;
}
