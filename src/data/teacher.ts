/**
 * A client for a teacher model behind any OpenAI-compatible chat completions endpoint (a hosted
 * API, Ollama, llama.cpp's server, `smallhammer serve`), with our own policy for what goes wrong
 * at scale: a per-request timeout, a client-side rate limit (requests and tokens per minute), and
 * retries with exponential backoff on 429, 408, 409, 5xx, timeouts and dropped connections (also a
 * reply cut off mid-body: a 200 whose JSON ends early, as a proxy dropping the connection leaves
 * it), waiting as long as the server's Retry-After asks when it sends one.
 *
 *   const teacher = new TeacherClient({ url: "http://127.0.0.1:8080/v1", model: "tiny", rpm: 60 });
 *   const reply = await teacher.complete({ messages: [{ role: "user", content: "Hi" }] });
 *
 * The requests go through the official `openai` SDK with its own retries switched off (maxRetries
 * 0) so that one policy, this one, decides; its errors carry the status and the response headers,
 * which is all Retry-After needs. The body of a successful reply is read and parsed here, not by
 * the SDK, to tell a body cut off (retried) from one that is not a chat completion at all (an
 * error). The timeout is ours too (an AbortSignal around the whole call, body included), because
 * the SDK's timer stops once the response headers arrive.
 */

import OpenAI from "openai";
import { UserError } from "../errors.js";

export interface TeacherMessage {
  role: "system" | "user" | "assistant";
  content: string;
}

export interface TeacherOptions {
  /** API base URL, e.g. http://127.0.0.1:8080/v1; a bare server root gets /v1 added. */
  url: string;
  model: string;
  /** Bearer key; local servers need none. */
  apiKey?: string;
  /** Per-attempt limit in milliseconds (default 120 s). */
  timeoutMs?: number;
  /** Retries after the first attempt (default 6). */
  retries?: number;
  /** First backoff delay in milliseconds, doubled each retry (default 1 s). */
  backoffMs?: number;
  /** Longest backoff delay in milliseconds, also the most a Retry-After is honoured (default 120 s). */
  maxBackoffMs?: number;
  /** Requests per minute (client-side limit; default none). */
  rpm?: number;
  /** Tokens per minute, prompt plus completion (client-side limit; default none). */
  tpm?: number;
  /** Called before each retry, for progress and logs. */
  onRetry?: (retry: RetryInfo) => void;
  /** Clock for the rate limiter and backoff (tests replace it). */
  clock?: Clock;
}

export interface RetryInfo {
  /** The attempt that failed, from 1. */
  attempt: number;
  /** Why: "429", "503", "timeout", "connection", "cut off". */
  reason: string;
  delayMs: number;
  /** True when the delay came from the server's Retry-After. */
  retryAfter: boolean;
}

export interface ChatRequest {
  messages: TeacherMessage[];
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  stop?: string[];
  signal?: AbortSignal;
  /** Called before each retry of this request (besides the client's onRetry). */
  onRetry?: (retry: RetryInfo) => void;
}

export interface ChatReply {
  text: string;
  /** "stop", "length", ... as the server says; null when it does not. */
  finishReason: string | null;
  promptTokens: number;
  completionTokens: number;
  /** False when the server sent no usage and the token counts are estimates (characters / 4). */
  usageReported: boolean;
  /** Attempts it took, from 1. */
  attempts: number;
}

/** A request the teacher refused for good (a 4xx other than 408/409/429) or that failed every retry. */
export class TeacherError extends UserError {
  override name = "TeacherError";
}

/** The stop signal fired; the request was abandoned. */
export class TeacherAbortError extends Error {
  override name = "TeacherAbortError";
}

export interface Clock {
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const SYSTEM_CLOCK: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(new TeacherAbortError("stopped"));
      const onAbort = () => {
        clearTimeout(timer);
        reject(new TeacherAbortError("stopped"));
      };
      const timer = setTimeout(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      }, ms);
      signal?.addEventListener("abort", onAbort, { once: true });
    }),
};

/** Rough token count of a text, for rate limiting before the server has counted: 4 characters a token. */
export function estimateTokens(text: string): number {
  return Math.ceil(text.length / 4);
}

/**
 * A token bucket: holds up to `capacity` units, refilled at `perMinute` units a minute. `take` waits
 * (in order of arrival) until the bucket holds what is asked, or the bucket is full when more than
 * its capacity is asked. The level may go below zero when a request turns out to cost more than
 * reserved (`give` with a negative amount), which delays the next ones.
 */
export class TokenBucket {
  private level: number;
  private last: number;
  private queue: Promise<void> = Promise.resolve();

  constructor(
    readonly perMinute: number,
    readonly capacity: number,
    private readonly clock: Clock = SYSTEM_CLOCK,
  ) {
    if (!(perMinute > 0) || !(capacity > 0)) throw new RangeError("TokenBucket: rates must be positive");
    this.level = capacity;
    this.last = clock.now();
  }

  private refill(): void {
    const now = this.clock.now();
    this.level = Math.min(this.capacity, this.level + ((now - this.last) * this.perMinute) / 60_000);
    this.last = now;
  }

  take(amount: number, signal?: AbortSignal): Promise<void> {
    const turn = this.queue.then(async () => {
      const wanted = Math.min(amount, this.capacity);
      for (;;) {
        if (signal?.aborted) throw new TeacherAbortError("stopped");
        this.refill();
        if (this.level >= wanted) {
          this.level -= amount;
          return;
        }
        const waitMs = Math.ceil(((wanted - this.level) * 60_000) / this.perMinute);
        await this.clock.sleep(Math.max(1, waitMs), signal);
      }
    });
    // A waiter that was stopped must not block the ones behind it.
    this.queue = turn.catch(() => {});
    return turn;
  }

  /** Returns units (or takes more, when negative) after the real cost is known. */
  give(amount: number): void {
    this.refill();
    this.level = Math.min(this.capacity, this.level + amount);
  }
}

/**
 * Requests per minute and tokens per minute. Requests are spaced evenly (60 s / rpm apart, no
 * bursts); tokens may burst up to one minute's worth. A request reserves its prompt estimate plus
 * its max_tokens, then settles to the real usage.
 */
export class RateLimiter {
  private readonly requests?: TokenBucket;
  private readonly tokens?: TokenBucket;

  constructor(limits: { rpm?: number; tpm?: number }, clock: Clock = SYSTEM_CLOCK) {
    if (limits.rpm !== undefined) this.requests = new TokenBucket(limits.rpm, 1, clock);
    if (limits.tpm !== undefined) this.tokens = new TokenBucket(limits.tpm, limits.tpm, clock);
  }

  async acquire(estimatedTokens: number, signal?: AbortSignal): Promise<void> {
    await this.requests?.take(1, signal);
    await this.tokens?.take(estimatedTokens, signal);
  }

  settle(estimatedTokens: number, usedTokens: number): void {
    this.tokens?.give(estimatedTokens - usedTokens);
  }
}

/**
 * Milliseconds a response asks to wait: `retry-after-ms`, or `retry-after` in seconds or as an
 * HTTP date; undefined when neither is there or readable.
 */
export function retryAfterMs(headers: Headers | undefined, now = Date.now()): number | undefined {
  if (!headers) return undefined;
  const ms = headers.get("retry-after-ms");
  if (ms !== null && ms.trim() !== "" && Number.isFinite(Number(ms)) && Number(ms) >= 0) return Number(ms);
  const value = headers.get("retry-after");
  if (value === null || value.trim() === "") return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return seconds >= 0 ? seconds * 1000 : undefined;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** A base URL the SDK can append `/chat/completions` to. */
export function normalizeTeacherUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UserError(`--teacher: "${url}" is not a URL (expected e.g. http://127.0.0.1:8080/v1)`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new UserError(`--teacher: "${url}" is not an http(s) URL`);
  }
  if (parsed.pathname === "/" || parsed.pathname === "") parsed.pathname = "/v1";
  return parsed.toString().replace(/\/+$/, "");
}

/** A failed attempt worth another try. */
interface RetriableFailure {
  reason: string;
  headers?: Headers;
  detail: string;
}

/** A chat completions client with our timeout, rate limit and retry policy. */
export class TeacherClient {
  readonly url: string;
  readonly model: string;
  private readonly sdk: OpenAI;
  private readonly limiter: RateLimiter;
  private readonly clock: Clock;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;

  constructor(private readonly options: TeacherOptions) {
    this.url = normalizeTeacherUrl(options.url);
    this.model = options.model;
    this.clock = options.clock ?? SYSTEM_CLOCK;
    this.timeoutMs = options.timeoutMs ?? 120_000;
    this.retries = options.retries ?? 6;
    this.backoffMs = options.backoffMs ?? 1000;
    this.maxBackoffMs = options.maxBackoffMs ?? 120_000;
    this.limiter = new RateLimiter({ rpm: options.rpm, tpm: options.tpm }, this.clock);
    this.sdk = new OpenAI({
      baseURL: this.url,
      // Local servers take any key; the SDK insists on one.
      apiKey: options.apiKey ?? "no-key",
      maxRetries: 0,
      // Our AbortSignal enforces the limit; the SDK's own timer is only a backstop.
      timeout: this.timeoutMs + 5000,
    });
  }

  /** One chat completion, retried as the policy says. */
  async complete(request: ChatRequest): Promise<ChatReply> {
    const promptChars = request.messages.reduce((n, m) => n + m.content.length, 0);
    const estimate = Math.ceil(promptChars / 4) + (request.maxTokens ?? 1024);
    for (let attempt = 1; ; attempt++) {
      if (request.signal?.aborted) throw new TeacherAbortError("stopped");
      await this.limiter.acquire(estimate, request.signal);
      const timeout = new AbortController();
      const timer = setTimeout(() => timeout.abort(), this.timeoutMs);
      const signal = request.signal ? AbortSignal.any([request.signal, timeout.signal]) : timeout.signal;
      let failure: RetriableFailure;
      try {
        const response = await this.sdk.chat.completions
          .create(
            {
              model: this.model,
              messages: request.messages,
              max_tokens: request.maxTokens,
              temperature: request.temperature,
              top_p: request.topP,
              stop: request.stop,
            },
            { signal },
          )
          .asResponse();
        const completion = await this.readCompletion(response);
        const choice = completion.choices?.[0];
        const text = typeof choice?.message?.content === "string" ? choice.message.content : "";
        const usage = completion.usage;
        const usageReported =
          usage !== undefined && usage !== null && Number.isFinite(usage.prompt_tokens ?? Number.NaN);
        const promptTokens = usageReported ? usage!.prompt_tokens : Math.ceil(promptChars / 4);
        const completionTokens = usageReported ? (usage!.completion_tokens ?? 0) : estimateTokens(text);
        this.limiter.settle(estimate, promptTokens + completionTokens);
        return {
          text,
          finishReason: choice?.finish_reason ?? null,
          promptTokens,
          completionTokens,
          usageReported,
          attempts: attempt,
        };
      } catch (e) {
        if (request.signal?.aborted) throw new TeacherAbortError("stopped");
        failure = timeout.signal.aborted
          ? { reason: "timeout", detail: `no reply within ${this.timeoutMs / 1000} s` }
          : e instanceof RetriableReply
            ? e.failure
            : this.classify(e);
      } finally {
        clearTimeout(timer);
      }
      if (attempt > this.retries) {
        throw new TeacherError(
          `teacher ${this.url}: gave up after ${attempt} attempts; last: ${failure.detail}`,
          502,
        );
      }
      const asked = retryAfterMs(failure.headers, this.clock.now());
      const backoff = this.backoffMs * 2 ** (attempt - 1);
      // Full backoff for the first retry, then half to full (jitter spreads parallel retries).
      const jittered = attempt === 1 ? backoff : backoff * (0.5 + Math.random() / 2);
      const delayMs = Math.min(asked ?? jittered, this.maxBackoffMs);
      const retry = { attempt, reason: failure.reason, delayMs, retryAfter: asked !== undefined };
      this.options.onRetry?.(retry);
      request.onRetry?.(retry);
      await this.clock.sleep(delayMs, request.signal);
    }
  }

  /**
   * The chat completion in a successful reply's body. Throws a RetriableReply when the body is cut
   * off (the connection dropped while it came, or JSON that starts as an object and ends early),
   * a TeacherError when it is not a chat completion at all (not JSON, or no `choices` list).
   */
  private async readCompletion(response: Response): Promise<ChatCompletionBody> {
    let body: string;
    try {
      body = await response.text();
    } catch (e) {
      // An abort (the timeout or the stop signal) is reported by the caller, which checks both.
      const code = (e as { cause?: { code?: string } }).cause?.code;
      throw new RetriableReply({
        reason: "connection",
        detail: `the connection dropped during the reply${code ? ` (${code})` : ""}`,
      });
    }
    let value: unknown;
    try {
      value = JSON.parse(body);
    } catch (e) {
      if (body.trimStart().startsWith("{")) {
        throw new RetriableReply({
          reason: "cut off",
          detail: `the reply was cut off after ${body.length} characters (${oneLine(String(e))})`,
        });
      }
      throw new TeacherError(
        `teacher ${this.url}: unusable reply: not JSON (${JSON.stringify(body.slice(0, 60))}${body.length > 60 ? "..." : ""})`,
        502,
      );
    }
    if (
      value === null ||
      typeof value !== "object" ||
      !Array.isArray((value as ChatCompletionBody).choices)
    ) {
      throw new TeacherError(
        `teacher ${this.url}: unusable reply: not a chat completion (no "choices" list in ${oneLine(body).slice(0, 80)})`,
        502,
      );
    }
    return value as ChatCompletionBody;
  }

  /** A retriable failure is returned; the others become a TeacherError (or are rethrown when a bug). */
  private classify(e: unknown): RetriableFailure {
    if (e instanceof OpenAI.APIConnectionTimeoutError) {
      return { reason: "timeout", detail: "timed out" };
    }
    if (e instanceof OpenAI.APIConnectionError) {
      const cause = (e as { cause?: { cause?: { code?: string }; code?: string } }).cause;
      const code = cause?.cause?.code ?? cause?.code;
      return { reason: "connection", detail: `connection failed${code ? ` (${code})` : ""}` };
    }
    if (e instanceof OpenAI.APIError && typeof e.status === "number") {
      const status = e.status;
      const message = oneLine(e.message);
      if (status === 408 || status === 409 || status === 429 || status >= 500) {
        return { reason: String(status), headers: e.headers, detail: message };
      }
      const hint =
        status === 401 || status === 403
          ? " (pass the key's environment variable with --api-key-env)"
          : status === 404
            ? ` (is ${this.url} the API base, ending in /v1, and "${this.model}" a model it serves?)`
            : "";
      throw new TeacherError(`teacher ${this.url}: ${message}${hint}`, 502);
    }
    if (e instanceof OpenAI.OpenAIError || e instanceof SyntaxError) {
      // A reply that is not a chat completion (bad JSON, wrong shape): the server is not what we expect.
      throw new TeacherError(`teacher ${this.url}: unusable reply: ${oneLine(String(e))}`, 502);
    }
    throw e;
  }
}

/** The parts of a chat completion body this client reads. */
interface ChatCompletionBody {
  choices: { message?: { content?: unknown }; finish_reason?: string | null }[];
  usage?: { prompt_tokens: number; completion_tokens?: number } | null;
}

/** Carries a retriable failure found in a reply's body out of the request's try block. */
class RetriableReply extends Error {
  constructor(readonly failure: RetriableFailure) {
    super(failure.detail);
  }
}

function oneLine(s: string): string {
  const line = s.replace(/\s+/g, " ").trim();
  return line.length > 300 ? `${line.slice(0, 300)}...` : line;
}
