/**
 * The HTTP server: an OpenAI-compatible API (chat completions, completions, embeddings, models)
 * with server-sent event streaming, a health check, metrics and a web chat page, over one model
 * whose generations are batched together by the inference thread (engine.ts, scheduler.ts).
 *
 * Request path: shutting-down state, Host and Origin, then for the API's routes the key and the
 * model's loading state (http.ts) — decided on the route the request was matched to, so that
 * every spelling of a URL that reaches a handler is checked alike — then the JSON body (only as
 * application/json, size limit), zod validation, model name, prompt rendering and token count
 * against the context, queue room (routes-*.ts), then the generation, streamed or answered whole
 * (respond.ts). Every error is answered in OpenAI's shape with its status; a client that
 * disconnects has its generation cancelled at the next step.
 *
 * This file starts the server, and stops it (see close) without cutting off a request it took.
 */
import { statSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { Server as NetServer } from "node:net";
import { basename } from "node:path";
import { setImmediate } from "node:timers/promises";
import Fastify, { LogController } from "fastify";
import { isUserError, UserError } from "../errors.js";
import { readGgufHeader } from "../formats/gguf.js";
import { metadataGetter } from "../model/config.js";
import { poolingTypeOf } from "../model/embedding.js";
import type { LlamaLoadOptions } from "../model/llama.js";
import { type ChosenTemplate, chooseTemplate } from "../model/templates.js";
import { Tokenizer } from "../tokenizer/index.js";
import type { Cancellable, ServerContext } from "./context.js";
import { Engine, type EngineInfo } from "./engine.js";
import { allowedHostNames, CorsPolicy } from "./guard.js";
import {
  acceptJsonBodies,
  answerClientError,
  answerErrors,
  guardRequests,
  logRequests,
  oneLine,
} from "./http.js";
import { type LogOptions, loggerOptions } from "./log.js";
import { ServerMetrics } from "./metrics.js";
import { pageFiles, registerPages } from "./pages.js";
import { registerEmbeddingRoutes } from "./routes-embeddings.js";
import { registerGenerationRoutes } from "./routes-generation.js";
import { registerInfoRoutes } from "./routes-info.js";

export interface ServerOptions {
  /** GGUF model file. */
  model: string;
  /** Address to bind; default 127.0.0.1 (loopback only). */
  host?: string;
  /** Port; default 8080, 0 for any free port. */
  port?: number;
  /**
   * When set, every route but the chat page and /health (the API: /v1/*, /props, /tokenize) needs
   * `Authorization: Bearer <apiKey>`.
   */
  apiKey?: string;
  /**
   * Web origins (scheme://host[:port], or "*" for any) whose pages may call the API from a
   * browser. Without them, a request that carries another site's Origin is refused (403).
   */
  cors?: string | readonly string[];
  /** Sequences decoded together in each step (each has its own KV cache); default 4. */
  parallel?: number;
  /** Requests that may wait for a free sequence; more are answered 429. Default 16. */
  queue?: number;
  /** Context size of each sequence, in tokens; default the model's, at most 4096. */
  contextSize?: number;
  /** Built-in chat template used instead of the file's (alpaca, vicuna_v1.1, llama-2, chatml). */
  template?: string;
  /** Compute threads; default all cores. */
  threads?: number;
  /** LoRA adapters applied at run time (GGUF adapter paths or adapters read already). */
  lora?: LlamaLoadOptions["lora"];
  /** Largest request body in bytes; default 1 MiB. */
  bodyLimit?: number;
  /** Longest a generation request may take, queue wait included, in ms (at most 2^31 - 1); default 10 minutes. */
  timeoutMs?: number;
  /** The model starts loading once this settles (until then, and while loading, /v1 answers 503). */
  loadAfter?: Promise<unknown>;
  /**
   * The request log through fastify's logger: one line per request (method, route, status,
   * tokens, ms), JSON or pretty. Default: none.
   */
  log?: LogOptions;
}

export interface RunningServer {
  /** Base URL, e.g. http://127.0.0.1:8080 */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** The model name clients send (the file name without .gguf). */
  readonly modelId: string;
  /** Resolves once the model is loaded; rejects when it cannot be. */
  readonly ready: Promise<EngineInfo>;
  /** Live counters, as /health reports them. */
  stats(): { busy: number; waiting: number; requests: number };
  /**
   * Stops accepting requests, lets the ones in flight finish for up to `graceMs` (default 10 s),
   * cancels what is left, frees the model and returns.
   */
  close(graceMs?: number): Promise<void>;
}

const DEFAULTS = {
  host: "127.0.0.1",
  port: 8080,
  parallel: 4,
  queue: 16,
  bodyLimit: 1 << 20,
  timeoutMs: 600_000,
  /** Tokens of one forward pass: decoding tokens plus prompt chunks. */
  batchSize: 128,
  /** Context size when neither the caller nor the file gives one; the largest taken from a file. */
  contextSize: 2048,
  maxContextSize: 4096,
};

/** The longest delay a Node.js timer takes; longer ones fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** After the grace period: how long answers to cancelled requests may take to be written. */
const FINAL_WRITE_MS = 5_000;

/** Starts the server: binds, answers 503 on the API while the model loads, then serves. */
export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const host = options.host ?? DEFAULTS.host;
  const listenPort = integerIn("port", options.port ?? DEFAULTS.port, 0, 65535);
  const parallel = integerIn("parallel", options.parallel ?? DEFAULTS.parallel, 1);
  const queueLimit = integerIn("queue", options.queue ?? DEFAULTS.queue, 0);
  const bodyLimit = integerIn("bodyLimit", options.bodyLimit ?? DEFAULTS.bodyLimit, 1);
  const timeoutMs = integerIn("timeoutMs", options.timeoutMs ?? DEFAULTS.timeoutMs, 1, MAX_TIMER_MS);
  if (options.contextSize !== undefined) integerIn("contextSize", options.contextSize, 1);
  const apiKey = options.apiKey ? Buffer.from(options.apiKey) : undefined;
  const cors = new CorsPolicy(typeof options.cors === "string" ? [options.cors] : (options.cors ?? []));
  const hostNames = allowedHostNames(host);

  // The tokenizer and the chat template come from the file's header, read now: a bad file fails
  // here, before anything binds. The weights load in the inference thread.
  const header = readGgufHeader(options.model);
  const meta = metadataGetter(header);
  const tokenizer = Tokenizer.fromGgufMetadata(meta);
  const fileTemplate = meta("tokenizer.chat_template");
  let template: ChosenTemplate | undefined;
  let templateProblem = "";
  try {
    template = chooseTemplate(typeof fileTemplate === "string" ? fileTemplate : undefined, options.template);
  } catch (e) {
    if (options.template !== undefined || !isUserError(e)) throw e;
    templateProblem = e.message;
  }
  const contextSize = options.contextSize ?? fileContextSize(meta, options.model);
  const fromFile = options.contextSize === undefined ? ` (${options.model}: context_length)` : "";
  if (contextSize < 2) {
    throw new UserError(
      `a context of ${contextSize} token${fromFile} leaves no room for a prompt and a reply: raise the context (--ctx)`,
    );
  }
  // A decoding step takes one token of every sequence, and a step holds at most one context.
  if (contextSize < parallel) {
    throw new UserError(
      `a context of ${contextSize} tokens${fromFile} is too small for ${parallel} parallel sequences (each step decodes one token of each, and holds at most one context of tokens): raise the context (--ctx) or lower --parallel`,
    );
  }
  // Embeddings: the file's pooling, and its width (what `dimensions` may ask for).
  const pooling = poolingTypeOf(meta, options.model);
  const embeddingWidth = Number(meta(`${String(meta("general.architecture"))}.embedding_length`));
  const modelId = basename(options.model).replace(/\.gguf$/i, "");
  const created = Math.floor(statSync(options.model).mtimeMs / 1000);
  const pages = pageFiles();

  let engine: Engine | undefined;
  let closing = false;
  /** Set once the grace period is over: work that would start now is refused. */
  let cancelling = false;
  const active = new Set<Cancellable>();

  const app = Fastify({
    bodyLimit,
    requestTimeout: 60_000, // to receive a whole request (slow senders are cut off)
    return503OnClosing: false,
    logger: loggerOptions(options.log),
    logController: new LogController({ disableRequestLogging: true }), // one line per request, see logRequests
    clientErrorHandler: answerClientError,
  });
  const metrics = new ServerMetrics(() => ({
    busy: engine?.busy ?? 0,
    waiting: engine?.waiting ?? 0,
    slots: parallel,
  }));
  /** Token counts of the requests that generate or embed, for their log line. */
  const tokensOf = new WeakMap<IncomingMessage, { prompt: number; completion: number }>();
  const ctx: ServerContext = {
    modelId,
    modelFile: options.model,
    created,
    tokenizer,
    template,
    templateProblem,
    pooling,
    embeddingWidth,
    parallel,
    queueLimit,
    timeoutMs,
    get engine() {
      return engine;
    },
    get cancelling() {
      return cancelling;
    },
    active,
    generations: { finished: 0, cancelled: 0 },
    metrics,
    started: new WeakMap(),
    countTokens(req, prompt, completion) {
      tokensOf.set(req, { prompt, completion });
      metrics.promptTokens.inc(prompt);
      metrics.completionTokens.inc(completion);
    },
  };

  /** Responses not yet written whole: shutdown closes connections only once they are. */
  const unanswered = new Set<ServerResponse>();
  let answered: (() => void) | undefined;
  app.server.on("request", (_req, res: ServerResponse) => {
    unanswered.add(res);
    const done = () => {
      unanswered.delete(res);
      if (unanswered.size === 0) answered?.();
    };
    res.once("finish", done);
    res.once("close", done);
  });
  let accepted = 0;
  app.server.on("connection", () => accepted++);
  /**
   * Takes the connections the system has completed but the server has not yet accepted (one is
   * accepted per turn of the event loop): closing the listener would reset them.
   */
  const acceptBacklog = async () => {
    for (let turn = 0; turn < 1000; turn++) {
      const before = accepted;
      await nextLoopTurn();
      if (accepted === before) return;
    }
  };
  /** Resolves true once every response is written, false after `ms`. */
  const allAnswered = (ms: number) =>
    new Promise<boolean>((resolve) => {
      if (unanswered.size === 0) return resolve(true);
      const timer = setTimeout(() => resolve(false), ms);
      answered = () => {
        clearTimeout(timer);
        resolve(true);
      };
    });

  acceptJsonBodies(app);
  answerErrors(app, bodyLimit);
  // The log's hook first: a request the guard refuses is logged too.
  logRequests(app, metrics, ctx.started, tokensOf);
  guardRequests(app, { host, hostNames, cors, apiKey, closing: () => closing, engine: () => engine });
  registerPages(app, pages);
  registerInfoRoutes(app, ctx);
  registerEmbeddingRoutes(app, ctx);
  registerGenerationRoutes(app, ctx);

  try {
    await app.listen({ host, port: listenPort });
  } catch (e) {
    await app.close();
    const why = (e as NodeJS.ErrnoException).code === "EADDRINUSE" ? "the port is in use" : oneLine(e);
    throw new UserError(`cannot listen on ${host} port ${listenPort}: ${why}`);
  }
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : listenPort;

  const ready = (async () => {
    await options.loadAfter;
    if (closing) throw new Error("the server closed before the model loaded");
    engine = new Engine({
      path: options.model,
      threads: options.threads,
      contextSize,
      lora: options.lora,
      sequences: parallel,
      batchSize: Math.max(DEFAULTS.batchSize, parallel),
    });
    return engine.loaded;
  })();
  ready.catch(() => {});

  let closed: Promise<void> | undefined;
  const close = (graceMs = 10_000): Promise<void> => {
    if (!(graceMs >= 0)) {
      return Promise.reject(new UserError(`the grace period must be a number of ms >= 0, got ${graceMs}`));
    }
    closed ??= (async () => {
      // Order matters. Stop accepting connections (those the system has completed are taken
      // first: closing the listener would reset them), but keep the open ones: a request already
      // on its way is answered (503) rather than cut off. Let requests finish for the grace
      // period; then cancel the rest, which answers each (503, or an error event ending its
      // stream); wait until those answers are written; only then close the connections, and
      // last the model. (http.Server.close would also drop idle connections, whose request may
      // sit unread in the socket, so the listener is closed at the net level.)
      closing = true;
      await acceptBacklog();
      const stopped = new Promise<void>((resolve) =>
        NetServer.prototype.close.call(app.server, () => resolve()),
      );
      await nextLoopTurn(); // reads the requests that came with them
      if (!(await allAnswered(Math.min(graceMs, MAX_TIMER_MS)))) {
        cancelling = true;
        for (const a of [...active]) a.cancel("shutdown");
        await allAnswered(FINAL_WRITE_MS);
      }
      app.server.closeIdleConnections();
      const late = setTimeout(() => app.server.closeAllConnections(), FINAL_WRITE_MS);
      await stopped; // once every connection is closed
      clearTimeout(late);
      await app.close();
      await engine?.close(); // a model still waiting for loadAfter never starts loading (see ready)
    })();
    return closed;
  };

  return {
    url: `http://${host.includes(":") ? `[${host}]` : host}:${port}`,
    host,
    port,
    modelId,
    ready,
    stats: () => ({ busy: engine?.busy ?? 0, waiting: engine?.waiting ?? 0, requests: active.size }),
    close,
  };
}

/** The context size a model file asks for, at most DEFAULTS.maxContextSize. */
function fileContextSize(meta: (key: string) => unknown, file: string): number {
  const value = meta(`${meta("general.architecture")}.context_length`);
  if (value === undefined) return DEFAULTS.contextSize;
  const n = typeof value === "bigint" ? Number(value) : value;
  if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 1) {
    throw new UserError(
      `${file}: context_length ${String(value)} is not a positive integer; give a context size with --ctx`,
    );
  }
  return Math.min(n, DEFAULTS.maxContextSize);
}

/** Resolves after the event loop has polled for I/O at least once more. */
async function nextLoopTurn(): Promise<void> {
  // An immediate set during the poll phase runs right after it; the second runs after the next poll.
  await setImmediate();
  await setImmediate();
}

function integerIn(name: string, v: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new UserError(`${name} must be an integer from ${min} to ${max}, got ${v}`);
  }
  return v;
}
