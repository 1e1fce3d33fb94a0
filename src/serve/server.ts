/**
 * The HTTP server: an OpenAI-compatible API (chat completions, completions, models) with
 * server-sent event streaming, a health check, and a web chat page, over one model whose
 * generations are batched together by the inference thread (engine.ts, scheduler.ts).
 *
 * Request path: API key (for /v1/*), loading or shutting-down state, JSON body (size limit),
 * zod validation, model name, prompt rendering and token count against the context, queue room,
 * then the generation, streamed or answered whole. Every error is answered in OpenAI's shape
 * with its status; a client that disconnects has its generation cancelled at the next step.
 */
import { randomBytes, timingSafeEqual } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import type { ServerResponse } from "node:http";
import { basename } from "node:path";
import type { Duplex } from "node:stream";
import Fastify, { type FastifyReply } from "fastify";
import { isUserError, UserError } from "../errors.js";
import { readGgufHeader } from "../formats/gguf.js";
import { metadataGetter } from "../model/config.js";
import type { LlamaLoadOptions } from "../model/llama.js";
import { chatPromptTokens, type GenerationInfo } from "../model/model.js";
import { Sampler, type SamplerOptions } from "../model/sampler.js";
import { type ChosenTemplate, chooseTemplate } from "../model/templates.js";
import { Tokenizer } from "../tokenizer/index.js";
import { Engine, type EngineInfo, type Generation } from "./engine.js";
import {
  ApiError,
  type ChatRequest,
  type CompletionRequest,
  chatChunk,
  chatCompletion,
  chatMessages,
  chatRequestSchema,
  completion,
  completionChunk,
  completionRequestSchema,
  errorType,
  type FinishReason,
  parseRequest,
  type ResponseIds,
  samplerOptionsOf,
  stopStringsOf,
  usage,
  usageChunk,
} from "./openai.js";

export interface ServerOptions {
  /** GGUF model file. */
  model: string;
  /** Address to bind; default 127.0.0.1 (loopback only). */
  host?: string;
  /** Port; default 8080, 0 for any free port. */
  port?: number;
  /** When set, /v1/* needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
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
  /** Longest a generation request may take, queue wait included, in ms; default 10 minutes. */
  timeoutMs?: number;
  /** The model starts loading once this settles (until then, and while loading, /v1 answers 503). */
  loadAfter?: Promise<unknown>;
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
  /** Default max_tokens of /v1/completions, as OpenAI's. */
  completionMaxTokens: 16,
};

const PUBLIC_DIR = new URL("../../src/serve/public/", import.meta.url);
const PAGES: Record<string, [file: string, type: string]> = {
  "/": ["index.html", "text/html; charset=utf-8"],
  "/chat.js": ["chat.js", "text/javascript; charset=utf-8"],
  "/chat.css": ["chat.css", "text/css; charset=utf-8"],
  "/favicon.svg": ["favicon.svg", "image/svg+xml"],
};
const PAGE_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "cache-control": "no-cache",
};

/** How a generation request ends besides finishing: why it was cancelled. */
type CancelReason = "client" | "timeout" | "shutdown";

/** Starts the server: binds, answers 503 on /v1 while the model loads, then serves. */
export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const host = options.host ?? DEFAULTS.host;
  const parallel = positive("parallel", options.parallel ?? DEFAULTS.parallel);
  const queueLimit = nonNegative("queue", options.queue ?? DEFAULTS.queue);
  const bodyLimit = positive("bodyLimit", options.bodyLimit ?? DEFAULTS.bodyLimit);
  const timeoutMs = positive("timeoutMs", options.timeoutMs ?? DEFAULTS.timeoutMs);
  const apiKey = options.apiKey ? Buffer.from(options.apiKey) : undefined;

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
  const modelId = basename(options.model).replace(/\.gguf$/i, "");
  const created = Math.floor(statSync(options.model).mtimeMs / 1000);
  const pages = new Map(
    Object.entries(PAGES).map(([route, [file, type]]) => [
      route,
      { body: readFileSync(new URL(file, PUBLIC_DIR)), type },
    ]),
  );

  let engine: Engine | undefined;
  let closing = false;
  /** Generations that ran to their end, and those cancelled (client gone, timeout, shutdown). */
  const generations = { finished: 0, cancelled: 0 };
  const active = new Set<{ cancel(reason: CancelReason): void }>();
  let drained: (() => void) | undefined;
  const untrack = (a: { cancel(reason: CancelReason): void }) => {
    active.delete(a);
    if (active.size === 0) drained?.();
  };

  const app = Fastify({
    bodyLimit,
    requestTimeout: 60_000, // to receive a whole request (slow senders are cut off)
    return503OnClosing: false,
    logger: false,
    clientErrorHandler: answerClientError,
  });

  // A JSON body whatever the content type says (curl -d sends form encoding). Bodies are only
  // read through the zod schemas, which copy the known fields, so keys like __proto__ go nowhere.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("*", { parseAs: "string" }, (_req, body, done) => {
    try {
      done(null, JSON.parse(body as string));
    } catch (e) {
      done(new ApiError(400, `the request body is not valid JSON: ${oneLine(e)}`, "invalid_json"), undefined);
    }
  });

  app.setErrorHandler((err, _req, reply) => {
    const e = toApiError(err, bodyLimit);
    // An error that is neither the client's nor a known state of the server is a bug: keep its stack.
    if (e.status === 500 && !(err instanceof ApiError)) {
      process.stderr.write(`smallhammer serve: ${err instanceof Error ? err.stack : err}\n`);
    }
    if (e.status === 429) reply.header("retry-after", "1");
    reply.code(e.status).send(e.body());
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new ApiError(404, `no route ${req.method} ${req.url.split("?")[0]}`, "not_found");
    reply.code(404).send(e.body());
  });

  app.addHook("onRequest", async (req, reply) => {
    if (closing) {
      reply.header("connection", "close");
      throw new ApiError(503, "the server is shutting down", "shutting_down");
    }
    if (!req.url.startsWith("/v1/") && req.url !== "/v1") return;
    if (apiKey && !keyMatches(req.headers.authorization, apiKey)) {
      throw new ApiError(
        401,
        req.headers.authorization ? "incorrect API key" : "missing API key: send Authorization: Bearer <key>",
        "invalid_api_key",
      );
    }
    if (!engine || engine.state === "loading")
      throw new ApiError(503, "the model is loading", "model_loading");
    if (engine.state !== "ready") throw new ApiError(500, `the model is not available: ${engine.failure}`);
  });

  for (const [route, page] of pages) {
    app.get(route, (_req, reply) => {
      reply.headers(PAGE_HEADERS).type(page.type).send(page.body);
    });
  }

  app.get("/health", (_req, reply) => {
    if (!engine || engine.state === "loading") {
      return reply.code(503).send(new ApiError(503, "the model is loading", "model_loading").body());
    }
    if (engine.state !== "ready") {
      return reply.code(500).send(new ApiError(500, `the model is not available: ${engine.failure}`).body());
    }
    return {
      status: "ok",
      model: modelId,
      slots: { total: parallel, busy: engine.busy },
      queue: { waiting: engine.waiting, limit: queueLimit },
      requests: active.size,
      generations: { ...generations },
    };
  });

  const modelCard = () => ({ id: modelId, object: "model", created, owned_by: "smallhammer" });
  app.get("/v1/models", () => ({ object: "list", data: [modelCard()] }));
  app.get<{ Params: { id: string } }>("/v1/models/:id", (req) => {
    if (req.params.id !== modelId) throw unknownModel(req.params.id, modelId);
    return modelCard();
  });

  /** Checks what every generation request needs and turns it into a job. */
  function prepare(
    req: ChatRequest | CompletionRequest,
    prompt: number[],
    defaultMaxTokens: number | undefined,
    stop: string[],
  ) {
    const ctx = engine!.info!.contextSize;
    const asked = req.max_tokens ?? ("max_completion_tokens" in req ? req.max_completion_tokens : undefined);
    if (prompt.length >= ctx) {
      throw new ApiError(
        400,
        `the prompt is ${prompt.length} tokens; the context of ${ctx} tokens leaves room for a prompt of at most ${ctx - 1}`,
        "context_length_exceeded",
        "messages" in req ? "messages" : "prompt",
      );
    }
    if (asked != null && prompt.length + asked > ctx) {
      throw new ApiError(
        400,
        `the prompt is ${prompt.length} tokens and max_tokens asks for ${asked} more: ${prompt.length + asked} tokens, over the context of ${ctx} tokens`,
        "context_length_exceeded",
        "max_tokens",
      );
    }
    const sampling: SamplerOptions = samplerOptionsOf(req);
    try {
      new Sampler(sampling); // the sampler's own checks, before anything is queued
    } catch (e) {
      if (e instanceof UserError) throw new ApiError(400, e.message, "invalid_value");
      throw e;
    }
    if (engine!.inFlight >= parallel + queueLimit) {
      throw new ApiError(
        429,
        `the server is busy: ${engine!.busy} generations are running and ${engine!.waiting} are waiting (the most the queue holds); retry later`,
        "queue_full",
      );
    }
    const room = ctx - prompt.length;
    return {
      prompt,
      maxTokens: Math.min(asked ?? defaultMaxTokens ?? room, room),
      stop,
      sampling,
    };
  }

  /**
   * Runs a generation for one HTTP request: answered whole, or streamed as server-sent events
   * (one chunk per piece of text, then a chunk with the finish reason, the usage when asked for,
   * and [DONE]).
   */
  function respond(
    reply: FastifyReply,
    job: ReturnType<typeof prepare>,
    kind: "chat" | "completion",
    stream: boolean,
    includeUsage: boolean,
  ): Promise<unknown> | undefined {
    const ids: ResponseIds = {
      id: `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomBytes(12).toString("hex")}`,
      created: Math.floor(Date.now() / 1000),
      model: modelId,
    };
    const object = kind === "chat" ? "chat.completion.chunk" : "text_completion";
    const chunk = (text: string, finish: FinishReason | null, first = false) =>
      kind === "chat"
        ? chatChunk(
            ids,
            first ? { role: "assistant", content: text } : finish ? {} : { content: text },
            finish,
          )
        : completionChunk(ids, text, finish);
    const res: ServerResponse = reply.raw;
    let cancelReason: CancelReason | undefined;
    let generation: Generation | undefined;
    const tracked = {
      cancel(reason: CancelReason) {
        cancelReason ??= reason;
        generation?.cancel();
      },
    };
    active.add(tracked);
    const timer = setTimeout(() => tracked.cancel("timeout"), timeoutMs);
    timer.unref();
    const ended = () => {
      clearTimeout(timer);
      untrack(tracked);
    };
    // A closed connection before the answer was written: the client went away.
    res.on("close", () => {
      if (!res.writableFinished) tracked.cancel("client");
    });
    const cancelledError = (): ApiError => {
      if (cancelReason === "timeout") {
        return new ApiError(
          504,
          `the request took longer than ${timeoutMs / 1000} s and was stopped`,
          "timeout",
        );
      }
      if (cancelReason === "shutdown")
        return new ApiError(503, "the server is shutting down", "shutting_down");
      return new ApiError(400, "the client closed the connection", "client_closed"); // never delivered
    };

    if (!stream) {
      return new Promise((resolve, reject) => {
        let text = "";
        generation = engine!.generate(job, {
          onText: (t) => {
            text += t;
          },
          onDone: (info: GenerationInfo) => {
            ended();
            generations[info.finishReason === "abort" ? "cancelled" : "finished"]++;
            if (info.finishReason === "abort") return reject(cancelledError());
            const u = usage(info.promptTokens, info.completionTokens);
            const finish = info.finishReason;
            resolve(
              kind === "chat" ? chatCompletion(ids, text, finish, u) : completion(ids, text, finish, u),
            );
          },
          onError: (message) => {
            ended();
            reject(new ApiError(500, message));
          },
        });
        if (cancelReason) generation.cancel();
      });
    }

    reply.hijack();
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      connection: "keep-alive",
      "x-accel-buffering": "no",
    });
    const send = (data: unknown) => {
      if (!res.writableEnded && !res.destroyed) res.write(`data: ${JSON.stringify(data)}\n\n`);
    };
    const end = () => {
      if (!res.writableEnded && !res.destroyed) res.end("data: [DONE]\n\n");
    };
    if (kind === "chat") send(chunk("", null, true));
    generation = engine!.generate(job, {
      onText: (t) => send(chunk(t, null)),
      onDone: (info) => {
        ended();
        generations[info.finishReason === "abort" ? "cancelled" : "finished"]++;
        if (info.finishReason === "abort") {
          if (cancelReason !== "client") send(cancelledError().body());
        } else {
          send(chunk("", info.finishReason));
          if (includeUsage) send(usageChunk(ids, object, usage(info.promptTokens, info.completionTokens)));
        }
        end();
      },
      onError: (message) => {
        ended();
        send(new ApiError(500, message).body());
        end();
      },
    });
    if (cancelReason) generation.cancel();
    return undefined;
  }

  app.post("/v1/chat/completions", async (request, reply) => {
    const req = parseRequest(chatRequestSchema, request.body);
    if (!template) throw new ApiError(400, templateProblem, "no_chat_template");
    if (req.model !== modelId) throw unknownModel(req.model, modelId);
    let prompt: number[];
    try {
      prompt = chatPromptTokens(tokenizer, template, chatMessages(req));
    } catch (e) {
      if (e instanceof UserError) throw new ApiError(400, e.message, "invalid_value", "messages");
      throw e;
    }
    const job = prepare(req, prompt, undefined, [...stopStringsOf(req), ...template.stopStrings]);
    return respond(reply, job, "chat", req.stream === true, req.stream_options?.include_usage === true);
  });

  app.post("/v1/completions", async (request, reply) => {
    const req = parseRequest(completionRequestSchema, request.body);
    if (req.model !== modelId) throw unknownModel(req.model, modelId);
    const text = typeof req.prompt === "string" ? req.prompt : req.prompt[0]!;
    const prompt = tokenizer.encode(text, { addSpecial: true, parseSpecial: true });
    if (prompt.length === 0) throw new ApiError(400, "the prompt is empty", "invalid_value", "prompt");
    const job = prepare(req, prompt, DEFAULTS.completionMaxTokens, stopStringsOf(req));
    return respond(reply, job, "completion", req.stream === true, req.stream_options?.include_usage === true);
  });

  try {
    await app.listen({ host, port: options.port ?? DEFAULTS.port });
  } catch (e) {
    await app.close();
    const why = (e as NodeJS.ErrnoException).code === "EADDRINUSE" ? "the port is in use" : oneLine(e);
    throw new UserError(`cannot listen on ${host} port ${options.port ?? DEFAULTS.port}: ${why}`);
  }
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : (options.port ?? DEFAULTS.port);

  const ready = (async () => {
    await options.loadAfter;
    if (closing) throw new Error("the server closed before the model loaded");
    engine = new Engine({
      path: options.model,
      threads: options.threads,
      contextSize: options.contextSize,
      lora: options.lora,
      sequences: parallel,
      batchSize: Math.max(DEFAULTS.batchSize, parallel),
    });
    return engine.loaded;
  })();
  ready.catch(() => {});

  let closed: Promise<void> | undefined;
  const close = (graceMs = 10_000): Promise<void> => {
    closed ??= (async () => {
      closing = true;
      const serverClosed = app.close();
      app.server.closeIdleConnections();
      if (active.size > 0) {
        const allDone = new Promise<void>((resolve) => {
          drained = resolve;
        });
        const grace = setTimeout(() => {
          for (const a of active) a.cancel("shutdown");
        }, graceMs);
        await allDone;
        clearTimeout(grace);
      }
      app.server.closeAllConnections();
      await serverClosed;
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

function unknownModel(asked: string, served: string): ApiError {
  return new ApiError(
    404,
    `the model "${asked}" does not exist; this server serves "${served}"`,
    "model_not_found",
    "model",
  );
}

/** Constant-time comparison of a Bearer token with the key. */
function keyMatches(authorization: string | undefined, key: Buffer): boolean {
  const m = /^Bearer\s+(.+)$/i.exec(authorization?.trim() ?? "");
  if (!m) return false;
  const given = Buffer.from(m[1]!.trim());
  return given.length === key.length && timingSafeEqual(given, key);
}

/** Any error thrown while handling a request, as the ApiError to answer. */
function toApiError(err: unknown, bodyLimit: number): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof UserError) return new ApiError(err.status, err.message);
  const e = err as { code?: string; statusCode?: number; message?: string };
  if (e.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
    return new ApiError(413, `the request body is over the limit of ${bodyLimit} bytes`, "request_too_large");
  }
  if (e.statusCode && e.statusCode >= 400 && e.statusCode < 500) {
    return new ApiError(e.statusCode, oneLine(err), e.code ?? null);
  }
  return new ApiError(500, "internal server error");
}

function oneLine(e: unknown): string {
  const message = e instanceof Error ? e.message : String(e);
  return message.replace(/\s*\n\s*/g, " ").trim();
}

function positive(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 1) throw new UserError(`${name} must be an integer >= 1, got ${v}`);
  return v;
}

function nonNegative(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 0) throw new UserError(`${name} must be an integer >= 0, got ${v}`);
  return v;
}

/**
 * Bytes on a connection that are not a valid HTTP request (or one that took too long to arrive):
 * an OpenAI-shaped error, then the connection closes.
 */
function answerClientError(err: Error & { code?: string }, socket: Duplex): void {
  if (err.code === "ECONNRESET" || socket.destroyed) return;
  const [status, text, message] =
    err.code === "ERR_HTTP_REQUEST_TIMEOUT"
      ? [408, "Request Timeout", "the request took too long to arrive"]
      : err.code === "HPE_HEADER_OVERFLOW"
        ? [431, "Request Header Fields Too Large", "the request headers are too large"]
        : [400, "Bad Request", "malformed HTTP request"];
  const body = JSON.stringify({ error: { message, type: errorType(status), param: null, code: null } });
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${text}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy();
}
