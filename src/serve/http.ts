/**
 * The HTTP handling every route shares: JSON bodies, errors in OpenAI's shape, the request log,
 * and the guard that runs before any handler (shutting-down state, Host, Origin, then for the
 * API's routes the key and the model's loading state), with the CORS preflight it answers.
 */
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { FastifyInstance } from "fastify";
import { UserError } from "../errors.js";
import type { Engine } from "./engine.js";
import { type CorsPolicy, hostNameOf, isSameOrigin, keyMatches } from "./guard.js";
import type { ServerMetrics } from "./metrics.js";
import { ApiError, errorType } from "./openai.js";

declare module "fastify" {
  interface FastifyContextConfig {
    /**
     * The route is open: no key, and no loaded model needed (the chat page, the health check, CORS
     * preflight). Every other route, and an unknown URL, needs the key when one is set.
     */
    open?: boolean;
  }
}

/**
 * JSON bodies only as application/json: other types are what a web page on another site can
 * send without asking the browser first (text/plain, forms). Bodies are only read through the
 * zod schemas, which copy the known fields, so keys like __proto__ go nowhere.
 */
export function acceptJsonBodies(app: FastifyInstance): void {
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
}

/** Every error, and an unknown route, answered in OpenAI's shape with its status. */
export function answerErrors(app: FastifyInstance, bodyLimit: number): void {
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
}

/**
 * Every request, answered or not, is counted and logged once its connection is done with it
 * (also a stream the handler writes itself, and a request refused by the guard).
 */
export function logRequests(
  app: FastifyInstance,
  metrics: ServerMetrics,
  started: WeakMap<IncomingMessage, number>,
  tokensOf: WeakMap<IncomingMessage, { prompt: number; completion: number }>,
): void {
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
}

export interface GuardOptions {
  /** The address the server binds, for the message of a refused Host. */
  host: string;
  /** Host names the server answers to, or undefined for any (see allowedHostNames). */
  hostNames: Set<string> | undefined;
  cors: CorsPolicy;
  apiKey: Buffer | undefined;
  closing(): boolean;
  engine(): Engine | undefined;
}

/**
 * The guard: runs after routing, so req.routeOptions is the route whose handler will answer
 * (none for a 404), whatever spelling of its path the request used (percent-encoding, absolute
 * form, query); and the CORS preflight, an open route for any path.
 */
export function guardRequests(app: FastifyInstance, o: GuardOptions): void {
  app.addHook("onRequest", async (req, reply) => {
    if (o.closing()) {
      reply.header("connection", "close");
      throw new ApiError(503, "the server is shutting down", "shutting_down");
    }
    const hostHeader = req.headers.host;
    if (o.hostNames && hostHeader !== undefined) {
      const name = hostNameOf(hostHeader);
      if (name === undefined || !o.hostNames.has(name)) {
        throw new ApiError(
          403,
          `the Host header "${clip(hostHeader)}" is not a name of this server: on ${o.host} it answers to localhost, 127.0.0.1 and [::1] only`,
          "host_not_allowed",
        );
      }
    }
    const origin = req.headers.origin;
    if (origin !== undefined) {
      if (o.cors.allows(origin)) {
        reply.header("access-control-allow-origin", o.cors.any ? "*" : origin);
        if (!o.cors.any) reply.header("vary", "Origin");
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
    if (o.apiKey && !keyMatches(req.headers.authorization, o.apiKey)) {
      throw new ApiError(
        401,
        req.headers.authorization ? "incorrect API key" : "missing API key: send Authorization: Bearer <key>",
        "invalid_api_key",
      );
    }
    if (req.routeOptions.url === undefined) return; // no route: the not-found handler answers
    const engine = o.engine();
    if (!engine || engine.state === "loading")
      throw new ApiError(503, "the model is loading", "model_loading");
    if (engine.state !== "ready") throw new ApiError(500, `the model is not available: ${engine.failure}`);
  });
  app.addHook("onSend", async (_req, reply) => {
    if (o.closing()) reply.header("connection", "close");
  });

  // CORS preflight: the browser asks before a cross-origin POST with JSON or a key. The Origin
  // was checked above; the headers the page wants to send are allowed as asked.
  app.options("*", { config: { open: true } }, (req, reply) => {
    reply.code(204).header("allow", "GET, POST, OPTIONS");
    if (req.headers.origin !== undefined) {
      reply.header("access-control-allow-methods", "GET, POST, OPTIONS");
      reply.header("access-control-max-age", "600");
      const asked = req.headers["access-control-request-headers"];
      if (asked !== undefined) reply.header("access-control-allow-headers", asked);
    }
    reply.send();
  });
}

/**
 * Bytes on a connection that are not a valid HTTP request (or one that took too long to arrive):
 * an OpenAI-shaped error, then the connection closes.
 */
export function answerClientError(err: Error & { code?: string }, socket: Duplex): void {
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

/** A header value cut to a length fit for an error message. */
function clip(s: string): string {
  return s.length > 100 ? `${s.slice(0, 100)}…` : s;
}

/** An error's message on one line. */
export function oneLine(e: unknown): string {
  const message = e instanceof Error ? e.message : String(e);
  return message.replace(/\s*\n\s*/g, " ").trim();
}
