/**
 * The HTTP server: an OpenAI-compatible API (chat completions, completions, models) with
 * server-sent event streaming, a health check, and a web chat page, over one model whose
 * generations are batched together by the inference thread (engine.ts, scheduler.ts).
 *
 * Request path: shutting-down state, Host and Origin (guard.ts), then for the API's routes the key
 * and the model's loading state — decided on the route the request was matched to, so that every
 * spelling of a URL that reaches a handler is checked alike — then the JSON body (only as
 * application/json, size limit), zod validation, model name, prompt rendering and token count
 * against the context, queue room, then the generation, streamed or answered whole. Every error
 * is answered in OpenAI's shape with its status; a client that disconnects has its generation
 * cancelled at the next step.
 */
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import { Server as NetServer } from "node:net";
import { basename, extname } from "node:path";
import type { Duplex } from "node:stream";
import { setImmediate } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import Fastify, { type FastifyReply, LogController } from "fastify";
import { isUserError, UserError } from "../errors.js";
import { readGgufHeader } from "../formats/gguf.js";
import { metadataGetter } from "../model/config.js";
import { poolingProblem, poolingTypeOf } from "../model/embedding.js";
import type { LlamaLoadOptions } from "../model/llama.js";
import type { TokenLogprob } from "../model/logprobs.js";
import { chatPromptTokens, type GenerationInfo } from "../model/model.js";
import { Sampler, type SamplerOptions } from "../model/sampler.js";
import { type ChatMessage, type ChosenTemplate, chooseTemplate } from "../model/templates.js";
import { parseToolCalls, ToolCallStream, type ToolEvent, type ToolFormat } from "../model/tool-calls.js";
import { Tokenizer } from "../tokenizer/index.js";
import { Engine, type EngineInfo, type Generation } from "./engine.js";
import { allowedHostNames, CorsPolicy, hostNameOf, isSameOrigin, keyMatches } from "./guard.js";
import { type LogOptions, loggerOptions } from "./log.js";
import { ServerMetrics } from "./metrics.js";
import {
  ApiError,
  type ChatLogprobs,
  type ChatRequest,
  type Choice,
  type CompletionLogprobs,
  type CompletionRequest,
  chatChunk,
  chatCompletionOf,
  chatMessages,
  chatRequestSchema,
  completionChunk,
  completionOf,
  completionRequestSchema,
  concatLogprobs,
  detokenizeRequestSchema,
  type EmbeddingRequest,
  embeddingList,
  embeddingRequestSchema,
  errorType,
  type FinishReason,
  LogprobWriter,
  parseRequest,
  type ResponseIds,
  samplerOptionsOf,
  stopStringsOf,
  tokenizeRequestSchema,
  usage,
  usageChunk,
} from "./openai.js";
import { requestGrammar, toolCallId, toolCallsOf, toolSetup } from "./structured.js";

declare module "fastify" {
  interface FastifyContextConfig {
    /**
     * The route is open: no key, and no loaded model needed (the chat page, the health check, CORS
     * preflight). Every other route, and an unknown URL, needs the key when one is set.
     */
    open?: boolean;
  }
}

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
  /** Default max_tokens of /v1/completions, as OpenAI's. */
  completionMaxTokens: 16,
  /** Context size when neither the caller nor the file gives one; the largest taken from a file. */
  contextSize: 2048,
  maxContextSize: 4096,
};

/** The longest delay a Node.js timer takes; longer ones fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** After the grace period: how long answers to cancelled requests may take to be written. */
const FINAL_WRITE_MS = 5_000;

/** The chat page: index.html at /, the other files at /<name>. */
const PUBLIC_DIR = new URL("../../src/serve/public/", import.meta.url);
/** The page's libraries (markdown, sanitising, highlighting), copied there by `npm run build`, at /vendor/<name>. */
const VENDOR_DIR = new URL("../../build/public/vendor/", import.meta.url);
const PAGE_TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
};
const PAGE_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "cache-control": "no-cache",
};

/**
 * The files of the chat page by route, read once. Without its libraries (a checkout not built
 * with `npm run build`) the page says so at /, and the API works all the same.
 */
function pageFiles(): Map<string, { body: Buffer; type: string; status: number }> {
  const pages = new Map<string, { body: Buffer; type: string; status: number }>();
  const add = (dir: URL, name: string, route: string) => {
    const type = PAGE_TYPES[extname(name)];
    if (type) pages.set(route, { body: readFileSync(new URL(name, dir)), type, status: 200 });
  };
  for (const name of readdirSync(PUBLIC_DIR)) add(PUBLIC_DIR, name, name === "index.html" ? "/" : `/${name}`);
  if (existsSync(VENDOR_DIR)) {
    for (const name of readdirSync(VENDOR_DIR)) add(VENDOR_DIR, name, `/vendor/${name}`);
  } else {
    const text = `The chat page's libraries are missing from ${fileURLToPath(VENDOR_DIR)}: run npm run build.\n`;
    pages.set("/", { body: Buffer.from(text), type: "text/plain; charset=utf-8", status: 500 });
  }
  return pages;
}

/** How a generation request ends besides finishing: why it was cancelled. */
type CancelReason = "client" | "timeout" | "shutdown";

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
  /** Set once the grace period is over: a generation that would start now is refused. */
  let cancelling = false;
  /** Generations that ran to their end, and those cancelled (client gone, timeout, shutdown). */
  const generations = { finished: 0, cancelled: 0 };
  /** Requests with a generation (running or queued), to cancel on shutdown. */
  const active = new Set<{ cancel(reason: CancelReason): void }>();

  const app = Fastify({
    bodyLimit,
    requestTimeout: 60_000, // to receive a whole request (slow senders are cut off)
    return503OnClosing: false,
    logger: loggerOptions(options.log),
    logController: new LogController({ disableRequestLogging: true }), // one line per request, written below
    clientErrorHandler: answerClientError,
  });
  const metrics = new ServerMetrics(() => ({
    busy: engine?.busy ?? 0,
    waiting: engine?.waiting ?? 0,
    slots: parallel,
  }));
  /** Token counts of the requests that generate or embed, for their log line. */
  const tokensOf = new WeakMap<IncomingMessage, { prompt: number; completion: number }>();
  const started = new WeakMap<IncomingMessage, number>();

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

  // JSON bodies only as application/json: other types are what a web page on another site can
  // send without asking the browser first (text/plain, forms). Bodies are only read through the
  // zod schemas, which copy the known fields, so keys like __proto__ go nowhere.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("application/json", { parseAs: "string" }, (req, body, done) => {
    const charset = /;\s*charset\s*=\s*"?([^";\s]*)/i.exec(req.headers["content-type"] ?? "")?.[1];
    if (charset !== undefined && !/^utf-?8$/i.test(charset)) {
      const e = new ApiError(
        415,
        `JSON must be UTF-8, not ${charset.slice(0, 40)}`,
        "unsupported_media_type",
      );
      return done(e, undefined);
    }
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
    const e = new ApiError(404, `no route ${req.method} ${clip(req.url.split("?")[0]!)}`, "not_found");
    reply.code(404).send(e.body());
  });

  // Every request, answered or not, is counted and logged once its connection is done with it
  // (also a stream the handler writes itself, and a request refused by the guard below).
  app.addHook("onRequest", async (req, reply) => {
    const t0 = performance.now();
    started.set(req.raw, t0);
    reply.raw.once("close", () => {
      const res = reply.raw;
      // 499 as nginx logs it: the client closed the connection before the answer was written.
      const status = res.writableFinished ? res.statusCode : 499;
      const route = req.routeOptions.url ?? "(no route)";
      metrics.requests.inc({ method: req.method, route, status: String(status) });
      const tokens = tokensOf.get(req.raw);
      req.log.info(
        {
          method: req.method,
          route,
          status,
          ...(tokens ? { prompt_tokens: tokens.prompt, completion_tokens: tokens.completion } : {}),
          ms: Math.round(performance.now() - t0),
        },
        `${req.method} ${route} ${status}`,
      );
    });
  });

  // Runs after routing: req.routeOptions is the route whose handler will answer (none for a 404),
  // whatever spelling of its path the request used (percent-encoding, absolute form, query).
  app.addHook("onRequest", async (req, reply) => {
    if (closing) {
      reply.header("connection", "close");
      throw new ApiError(503, "the server is shutting down", "shutting_down");
    }
    const hostHeader = req.headers.host;
    if (hostNames && hostHeader !== undefined) {
      const name = hostNameOf(hostHeader);
      if (name === undefined || !hostNames.has(name)) {
        throw new ApiError(
          403,
          `the Host header "${clip(hostHeader)}" is not a name of this server: on ${host} it answers to localhost, 127.0.0.1 and [::1] only`,
          "host_not_allowed",
        );
      }
    }
    const origin = req.headers.origin;
    if (origin !== undefined) {
      if (cors.allows(origin)) {
        reply.header("access-control-allow-origin", cors.any ? "*" : origin);
        if (!cors.any) reply.header("vary", "Origin");
      } else if (!isSameOrigin(origin, hostHeader)) {
        throw new ApiError(
          403,
          `requests from the web origin ${clip(origin)} are refused; start the server with --cors ${clip(origin)} to allow them`,
          "origin_not_allowed",
        );
      }
    }
    // Closed unless the matched route says it is open: a route added later cannot be left
    // unguarded by mistake, and an unknown URL tells nothing without the key.
    if (req.routeOptions.config?.open) return;
    if (apiKey && !keyMatches(req.headers.authorization, apiKey)) {
      throw new ApiError(
        401,
        req.headers.authorization ? "incorrect API key" : "missing API key: send Authorization: Bearer <key>",
        "invalid_api_key",
      );
    }
    if (req.routeOptions.url === undefined) return; // no route: the not-found handler answers
    if (!engine || engine.state === "loading")
      throw new ApiError(503, "the model is loading", "model_loading");
    if (engine.state !== "ready") throw new ApiError(500, `the model is not available: ${engine.failure}`);
  });
  app.addHook("onSend", async (_req, reply) => {
    if (closing) reply.header("connection", "close");
  });

  // CORS preflight: the browser asks before a cross-origin POST with JSON or a key. The Origin
  // was checked above; the headers the page wants to send are allowed as asked.
  const open = { config: { open: true } };
  app.options("*", open, (req, reply) => {
    reply.code(204).header("allow", "GET, POST, OPTIONS");
    if (req.headers.origin !== undefined) {
      reply.header("access-control-allow-methods", "GET, POST, OPTIONS");
      reply.header("access-control-max-age", "600");
      const asked = req.headers["access-control-request-headers"];
      if (asked !== undefined) reply.header("access-control-allow-headers", asked);
    }
    reply.send();
  });

  for (const [route, page] of pages) {
    app.get(route, open, (_req, reply) => {
      reply.code(page.status).headers(PAGE_HEADERS).type(page.type).send(page.body);
    });
  }

  app.get("/health", open, (_req, reply) => {
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

  // What a client needs to fit a conversation to the context (the chat page reads it).
  app.get("/props", () => ({
    model: modelId,
    n_ctx: engine!.info!.contextSize,
    slots: parallel,
    chat_template: template?.label ?? null,
  }));

  // Counts the tokens of a chat (as the chat template renders it) or of a prompt, as vLLM's
  // /tokenize does, so that a client can drop old turns before the context overflows.
  app.post("/tokenize", (request) => {
    const req = parseRequest(tokenizeRequestSchema, request.body);
    if (req.model != null && req.model !== modelId) throw unknownModel(req.model, modelId);
    let tokens: number[];
    if (req.messages) {
      if (!template) throw new ApiError(400, templateProblem, "no_chat_template");
      tokens = renderChatTokens(req.messages);
    } else {
      tokens = tokenizer.encode(req.prompt!, { addSpecial: true, parseSpecial: true });
    }
    return { count: tokens.length, max_model_len: engine!.info!.contextSize, tokens };
  });

  // llama.cpp server's /detokenize: token ids back to text, as the library's detokenize gives it.
  app.post("/detokenize", (request) => {
    const req = parseRequest(detokenizeRequestSchema, request.body);
    const bad = req.tokens.findIndex((t) => t < 0 || t >= tokenizer.vocabSize);
    if (bad >= 0) {
      throw new ApiError(
        400,
        `tokens[${bad}]: token id ${req.tokens[bad]} is outside the vocabulary of ${tokenizer.vocabSize} tokens`,
        "invalid_value",
        `tokens[${bad}]`,
      );
    }
    return { content: tokenizer.decode(req.tokens) };
  });

  app.get("/metrics", async (_req, reply) => {
    reply.type(metrics.contentType);
    return metrics.text();
  });

  app.post("/v1/embeddings", async (request, reply) => {
    const req = parseRequest(embeddingRequestSchema, request.body);
    if (req.model !== modelId) throw unknownModel(req.model, modelId);
    const problem = poolingProblem(pooling);
    if (problem) throw new ApiError(400, `${basename(options.model)}: ${problem}`, "unsupported_pooling");
    if (req.dimensions != null && req.dimensions !== embeddingWidth) {
      throw new ApiError(
        400,
        `dimensions: this model's embeddings have ${embeddingWidth} dimensions, not ${req.dimensions}`,
        "invalid_value",
        "dimensions",
      );
    }
    const inputs = embeddingInputs(req.input);
    if (cancelling) throw new ApiError(503, "the server is shutting down", "shutting_down");
    checkQueueRoom();
    return embed(reply, inputs, req.encoding_format === "base64");
  });

  /** The inputs of an embedding request as token ids, each checked against the vocabulary and the context. */
  function embeddingInputs(input: EmbeddingRequest["input"]): number[][] {
    const list: (string | number[])[] =
      typeof input === "string"
        ? [input]
        : typeof input[0] === "number"
          ? [input as number[]]
          : (input as (string | number[])[]);
    const ctx = engine!.info!.contextSize;
    const at = (i: number) => (typeof input === "string" ? "input" : `input[${i}]`);
    return list.map((x, i) => {
      if (x === "") throw new ApiError(400, `${at(i)}: an input must not be empty`, "invalid_value", at(i));
      const ids = typeof x === "string" ? tokenizer.encode(x, { addSpecial: true, parseSpecial: true }) : x;
      const bad = ids.find((t) => t >= tokenizer.vocabSize);
      if (bad !== undefined) {
        throw new ApiError(
          400,
          `${at(i)}: token id ${bad} is outside the vocabulary`,
          "invalid_value",
          at(i),
        );
      }
      if (ids.length > ctx) {
        throw new ApiError(
          400,
          `${at(i)} is ${ids.length} tokens, more than the context of ${ctx} tokens`,
          "context_length_exceeded",
          at(i),
        );
      }
      return ids;
    });
  }

  /** Runs an embedding job for one request, cancelled like a generation (client gone, timeout, shutdown). */
  function embed(reply: FastifyReply, inputs: number[][], base64: boolean): Promise<unknown> {
    const req = reply.request.raw;
    return new Promise((resolve, reject) => {
      let job: Generation | undefined;
      let cancelReason: CancelReason | undefined;
      const tracked = {
        cancel(reason: CancelReason) {
          if (cancelReason) return;
          cancelReason = reason;
          job?.cancel();
          ended();
          if (reason === "timeout") {
            reject(
              new ApiError(
                504,
                `the request took longer than ${timeoutMs / 1000} s and was stopped`,
                "timeout",
              ),
            );
          } else if (reason === "shutdown")
            reject(new ApiError(503, "the server is shutting down", "shutting_down"));
        },
      };
      active.add(tracked);
      const timer = setTimeout(() => tracked.cancel("timeout"), timeoutMs);
      timer.unref();
      const ended = () => {
        clearTimeout(timer);
        active.delete(tracked);
      };
      reply.raw.on("close", () => {
        if (!reply.raw.writableFinished) tracked.cancel("client");
      });
      job = engine!.embed(
        { inputs, pooling },
        {
          onDone: (vectors, promptTokens) => {
            ended();
            if (cancelReason) return;
            if (vectors.length === 0) return reject(new ApiError(500, "the embedding was stopped"));
            countTokens(req, promptTokens, 0);
            resolve(embeddingList(modelId, vectors, base64, promptTokens));
          },
          onError: (message) => {
            ended();
            reject(new ApiError(500, message));
          },
        },
      );
    });
  }

  /** A conversation with tool calls and results, and the tools a template that takes them renders. */
  function renderToolChat(messages: ChatMessage[], tools: unknown[] | undefined): number[] {
    try {
      return chatPromptTokens(tokenizer, template!, messages, { tools });
    } catch (e) {
      if (e instanceof UserError) throw new ApiError(400, e.message, "invalid_value", "messages");
      throw e;
    }
  }

  function renderChatTokens(messages: ChatRequest["messages"]): number[] {
    try {
      return chatPromptTokens(tokenizer, template!, chatMessages({ messages }));
    } catch (e) {
      if (e instanceof UserError) throw new ApiError(400, e.message, "invalid_value", "messages");
      throw e;
    }
  }

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
    if (cancelling) throw new ApiError(503, "the server is shutting down", "shutting_down");
    const sampling: SamplerOptions = samplerOptionsOf(req);
    try {
      new Sampler(sampling); // the sampler's own checks, before anything is queued
    } catch (e) {
      if (e instanceof UserError) throw new ApiError(400, e.message, "invalid_value");
      throw e;
    }
    const n = req.n ?? 1;
    if (n > parallel) {
      throw new ApiError(
        400,
        `n = ${n} replies need ${n} sequences at once; this server decodes at most ${parallel} (--parallel)`,
        "invalid_value",
        "n",
      );
    }
    let logprobs: number | undefined;
    if ("messages" in req) {
      if (req.top_logprobs != null && req.logprobs !== true) {
        throw new ApiError(400, "top_logprobs needs logprobs: true", "invalid_value", "top_logprobs");
      }
      if (req.logprobs === true) logprobs = req.top_logprobs ?? 0;
    } else if (req.logprobs != null) logprobs = req.logprobs;
    checkQueueRoom();
    const room = ctx - prompt.length;
    return {
      prompt,
      maxTokens: Math.min(asked ?? defaultMaxTokens ?? room, room),
      stop,
      sampling,
      n,
      logprobs,
    };
  }

  function checkQueueRoom(): void {
    if (engine!.inFlight >= parallel + queueLimit) {
      throw new ApiError(
        429,
        `the server is busy: ${engine!.busy} sequences are in use and ${engine!.waiting} requests are waiting (the most the queue holds); retry later`,
        "queue_full",
      );
    }
  }

  /** Counts a finished generation's tokens for /metrics and its log line. */
  function countTokens(req: IncomingMessage, prompt: number, completion: number): void {
    tokensOf.set(req, { prompt, completion });
    metrics.promptTokens.inc(prompt);
    metrics.completionTokens.inc(completion);
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
    /** Read the replies for tool calls written in this format (chat with tools). */
    toolFormat?: ToolFormat,
  ): Promise<unknown> | undefined {
    const ids: ResponseIds = {
      id: `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomBytes(12).toString("hex")}`,
      created: Math.floor(Date.now() / 1000),
      model: modelId,
    };
    const object = kind === "chat" ? "chat.completion.chunk" : "text_completion";
    const n = job.n;
    // Log-probabilities in the endpoint's shape, one writer per reply (the legacy shape keeps
    // text offsets across chunks).
    const writers = Array.from({ length: n }, () => new LogprobWriter((id) => tokenizer.tokenToPiece(id)));
    const shaped = (index: number, entries: TokenLogprob[] | undefined) => {
      if (job.logprobs === undefined) return null;
      const w = writers[index]!;
      return kind === "chat" ? w.chat(entries ?? []) : w.completion(entries ?? []);
    };
    const chunk = (
      text: string,
      finish: FinishReason | null,
      index: number,
      logprobs: ChatLogprobs | CompletionLogprobs | null = null,
      first = false,
    ) =>
      kind === "chat"
        ? chatChunk(
            ids,
            first ? { role: "assistant", content: text } : finish ? {} : { content: text },
            finish,
            index,
            logprobs as ChatLogprobs | null,
          )
        : completionChunk(ids, text, finish, index, logprobs as CompletionLogprobs | null);
    const res: ServerResponse = reply.raw;
    const req = reply.request.raw;
    const t0 = started.get(req) ?? performance.now();
    /** When each reply's first text came, for the time-per-token histogram. */
    const firstText: (number | undefined)[] = Array(n).fill(undefined);
    const timeText = (index: number) => {
      if (firstText[index] !== undefined) return;
      const now = performance.now();
      if (firstText.every((t) => t === undefined)) metrics.timeToFirstToken.observe((now - t0) / 1000);
      firstText[index] = now;
    };
    const timeDone = (index: number, info: GenerationInfo) => {
      const first = firstText[index];
      if (first !== undefined && info.completionTokens > 1 && info.finishReason !== "abort") {
        metrics.timePerToken.observe((performance.now() - first) / 1000 / (info.completionTokens - 1));
      }
    };
    let cancelReason: CancelReason | undefined;
    let generation: Generation | undefined;
    /** Writes the answer to a cancelled request (set below, streamed or not). */
    let answerCancelled: (e: ApiError) => void = () => {};
    // A cancelled request is answered at once, not when the inference thread reaches its next step
    // boundary (a long prompt chunk may take seconds): its 503 or 504 is written before shutdown
    // closes the connections.
    const tracked = {
      cancel(reason: CancelReason) {
        if (cancelReason) return;
        cancelReason = reason;
        generation?.cancel();
        ended();
        if (reason !== "client") answerCancelled(cancelledError());
      },
    };
    active.add(tracked);
    const timer = setTimeout(() => tracked.cancel("timeout"), timeoutMs);
    timer.unref();
    const ended = () => {
      clearTimeout(timer);
      active.delete(tracked);
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
        const texts: string[] = Array(n).fill("");
        const logprobs: (ChatLogprobs | CompletionLogprobs)[][] = Array.from({ length: n }, () => []);
        answerCancelled = reject;
        generation = engine!.generate(job, {
          onText: (t, index, entries) => {
            timeText(index);
            texts[index] += t;
            const l = shaped(index, entries);
            if (l) logprobs[index]!.push(l);
          },
          onChoiceDone: timeDone,
          onDone: (info: GenerationInfo, choices: GenerationInfo[]) => {
            ended();
            generations[info.finishReason === "abort" ? "cancelled" : "finished"]++;
            countTokens(req, info.promptTokens, info.completionTokens);
            if (cancelReason) return reject(cancelledError()); // answered already, unless by the client
            if (info.finishReason === "abort") return reject(new ApiError(500, "the generation was stopped"));
            const u = usage(info.promptTokens, info.completionTokens);
            const replies = choices.map((c, i) => {
              const reply: Choice<unknown> = {
                text: texts[i]!,
                finish: c.finishReason as FinishReason,
                logprobs: job.logprobs === undefined ? null : (concatLogprobs(logprobs[i]!) ?? shaped(i, [])),
              };
              if (toolFormat) {
                const { content, calls } = parseToolCalls(toolFormat, reply.text, toolCallId);
                reply.text = content;
                if (calls.length > 0) {
                  reply.toolCalls = toolCallsOf(calls);
                  if (reply.finish === "stop") reply.finish = "tool_calls";
                }
              }
              return reply;
            });
            resolve(
              kind === "chat"
                ? chatCompletionOf(ids, replies as Choice<ChatLogprobs>[], u)
                : completionOf(ids, replies as Choice<CompletionLogprobs>[], u),
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
      ...(reply.getHeaders() as OutgoingHttpHeaders), // CORS headers set by the onRequest hook
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "x-accel-buffering": "no",
    });
    const send = (data: unknown) => {
      if (!res.writableEnded && !res.destroyed) res.write(`data: ${JSON.stringify(data)}\n\n`);
    };
    const end = () => {
      if (!res.writableEnded && !res.destroyed) res.end("data: [DONE]\n\n");
    };
    answerCancelled = (e) => {
      send(e.body());
      end();
    };
    if (kind === "chat") for (let i = 0; i < n; i++) send(chunk("", null, i, null, true));
    // With tools, each reply's text is read for calls, sent as tool_calls deltas.
    const toolStreams = toolFormat
      ? Array.from({ length: n }, () => new ToolCallStream(toolFormat, toolCallId))
      : undefined;
    const sendToolEvents = (index: number, events: ToolEvent[]) => {
      for (const e of events) {
        if (e.type === "content") send(chunk(e.text, null, index));
        else {
          const call =
            e.type === "call"
              ? {
                  index: e.index,
                  id: e.id,
                  type: "function" as const,
                  function: { name: e.name, arguments: "" },
                }
              : { index: e.index, function: { arguments: e.text } };
          send(chatChunk(ids, { tool_calls: [call] }, null, index));
        }
      }
    };
    generation = engine!.generate(job, {
      onText: (t, index, entries) => {
        timeText(index);
        if (toolStreams) sendToolEvents(index, toolStreams[index]!.push(t));
        else send(chunk(t, null, index, shaped(index, entries)));
      },
      onChoiceDone: (index, info) => {
        timeDone(index, info);
        if (cancelReason || info.finishReason === "abort") return;
        let finish: FinishReason = info.finishReason;
        if (toolStreams) {
          const { events, calls } = toolStreams[index]!.end();
          sendToolEvents(index, events);
          if (calls.length > 0 && finish === "stop") finish = "tool_calls";
        }
        send(chunk("", finish, index));
      },
      onDone: (info) => {
        ended();
        generations[info.finishReason === "abort" ? "cancelled" : "finished"]++;
        countTokens(req, info.promptTokens, info.completionTokens);
        if (cancelReason) return; // answered already, or the client is gone
        if (info.finishReason === "abort") send(new ApiError(500, "the generation was stopped").body());
        else if (includeUsage) send(usageChunk(ids, object, usage(info.promptTokens, info.completionTokens)));
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
    // Tools and structured output: the conversation the template renders, and the grammar.
    const tools = toolSetup(req, chatMessages(req), template.source);
    const structured = requestGrammar(req);
    if (structured && tools.grammar) {
      throw new ApiError(
        400,
        'response_format (or grammar) together with tools is not supported; give tool_choice "none" or leave one out',
        "invalid_value",
        "response_format",
      );
    }
    if (tools.format && req.logprobs === true) {
      throw new ApiError(400, "logprobs together with tools is not supported", "invalid_value", "logprobs");
    }
    const prompt = renderToolChat(tools.messages, tools.tools);
    const job = {
      ...prepare(req, prompt, undefined, [...stopStringsOf(req), ...template.stopStrings]),
      ...(structured ?? tools.grammar),
    };
    return respond(
      reply,
      job,
      "chat",
      req.stream === true,
      req.stream_options?.include_usage === true,
      tools.format,
    );
  });

  app.post("/v1/completions", async (request, reply) => {
    const req = parseRequest(completionRequestSchema, request.body);
    if (req.model !== modelId) throw unknownModel(req.model, modelId);
    const text = typeof req.prompt === "string" ? req.prompt : req.prompt[0]!;
    const prompt = tokenizer.encode(text, { addSpecial: true, parseSpecial: true });
    if (prompt.length === 0) throw new ApiError(400, "the prompt is empty", "invalid_value", "prompt");
    const job = {
      ...prepare(req, prompt, DEFAULTS.completionMaxTokens, stopStringsOf(req)),
      ...requestGrammar(req),
    };
    return respond(reply, job, "completion", req.stream === true, req.stream_options?.include_usage === true);
  });

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

function unknownModel(asked: string, served: string): ApiError {
  return new ApiError(
    404,
    `the model "${asked}" does not exist; this server serves "${served}"`,
    "model_not_found",
    "model",
  );
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

/** A header value cut to a length fit for an error message. */
function clip(s: string): string {
  return s.length > 100 ? `${s.slice(0, 100)}…` : s;
}

/** Any error thrown while handling a request, as the ApiError to answer. */
function toApiError(err: unknown, bodyLimit: number): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof UserError) return new ApiError(err.status, err.message);
  const e = err as { code?: string; statusCode?: number; message?: string };
  if (e.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
    return new ApiError(413, `the request body is over the limit of ${bodyLimit} bytes`, "request_too_large");
  }
  if (e.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") {
    return new ApiError(
      415,
      "the request body must be JSON sent as Content-Type: application/json",
      "unsupported_media_type",
    );
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

function integerIn(name: string, v: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new UserError(`${name} must be an integer from ${min} to ${max}, got ${v}`);
  }
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
