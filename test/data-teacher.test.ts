import { afterEach, describe, expect, it } from "vitest";
import {
  type Clock,
  normalizeTeacherUrl,
  RateLimiter,
  type RetryInfo,
  retryAfterMs,
  TeacherAbortError,
  TeacherClient,
  TeacherError,
} from "../src/data/teacher.js";
import { ScriptedTeacher, type TeacherStep } from "./helpers/scripted-teacher.js";

const servers: ScriptedTeacher[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop();
});

async function teacherWith(script: (n: number) => TeacherStep): Promise<ScriptedTeacher> {
  const server = await new ScriptedTeacher(script).start();
  servers.push(server);
  return server;
}

function client(
  server: ScriptedTeacher,
  retries: RetryInfo[],
  extra: Partial<ConstructorParameters<typeof TeacherClient>[0]> = {},
) {
  return new TeacherClient({
    url: server.url,
    model: "scripted",
    backoffMs: 5,
    maxBackoffMs: 2000,
    timeoutMs: 5000,
    onRetry: (r) => retries.push(r),
    ...extra,
  });
}

const ask = { messages: [{ role: "user" as const, content: "Write tasks." }], maxTokens: 64 };

describe("teacher client retry policy", () => {
  it("waits as long as a 429's Retry-After asks, then succeeds", async () => {
    const server = await teacherWith(
      (n): TeacherStep =>
        n === 0
          ? { status: 429, headers: { "retry-after": "0.2" } }
          : n === 1
            ? { status: 429, headers: { "retry-after-ms": "30" } }
            : { text: "done" },
    );
    const retries: RetryInfo[] = [];
    const reply = await client(server, retries).complete(ask);
    expect(reply.text).toBe("done");
    expect(reply.attempts).toBe(3);
    expect(retries).toEqual([
      { attempt: 1, reason: "429", delayMs: 200, retryAfter: true },
      { attempt: 2, reason: "429", delayMs: 30, retryAfter: true },
    ]);
    expect(server.requests).toHaveLength(3);
  });

  it("backs off exponentially on 5xx without Retry-After", async () => {
    const server = await teacherWith((n) => (n < 3 ? { status: [500, 502, 503][n]! } : { text: "ok" }));
    const retries: RetryInfo[] = [];
    const reply = await client(server, retries, { backoffMs: 8 }).complete(ask);
    expect(reply.text).toBe("ok");
    expect(retries.map((r) => r.reason)).toEqual(["500", "502", "503"]);
    expect(retries.every((r) => !r.retryAfter)).toBe(true);
    // First retry waits the base delay, then each waits half to all of a doubled delay.
    expect(retries[0]!.delayMs).toBe(8);
    expect(retries[1]!.delayMs).toBeGreaterThanOrEqual(8);
    expect(retries[1]!.delayMs).toBeLessThanOrEqual(16);
    expect(retries[2]!.delayMs).toBeGreaterThanOrEqual(16);
    expect(retries[2]!.delayMs).toBeLessThanOrEqual(32);
  });

  it("a Retry-After longer than the longest backoff is capped", async () => {
    const server = await teacherWith((n) =>
      n === 0 ? { status: 503, headers: { "retry-after": "3600" } } : { text: "ok" },
    );
    const retries: RetryInfo[] = [];
    await client(server, retries, { maxBackoffMs: 20 }).complete(ask);
    expect(retries).toEqual([{ attempt: 1, reason: "503", delayMs: 20, retryAfter: true }]);
  });

  it("abandons a request that outlives its timeout and retries it", async () => {
    const server = await teacherWith((n) =>
      n === 0 ? { delayMs: 3000, text: "late" } : { text: "in time" },
    );
    const retries: RetryInfo[] = [];
    const reply = await client(server, retries, { timeoutMs: 150 }).complete(ask);
    expect(reply.text).toBe("in time");
    expect(retries.map((r) => r.reason)).toEqual(["timeout"]);
  });

  it("a reply whose body stalls after the headers also times out", async () => {
    const server = await teacherWith((n) =>
      n === 0 ? { stallBody: '{"id":"x","object":"chat.completion","choices":[' } : { text: "whole" },
    );
    const retries: RetryInfo[] = [];
    const reply = await client(server, retries, { timeoutMs: 200 }).complete(ask);
    expect(reply.text).toBe("whole");
    expect(retries.map((r) => r.reason)).toEqual(["timeout"]);
  });

  it("a 200 reply cut off mid-JSON is retried like a dropped connection", async () => {
    // Twice a complete response whose JSON body ends early (a proxy that closed it), then once a
    // connection dropped in the middle of the body, then the whole reply.
    const server = await teacherWith((n) =>
      n < 2
        ? { text: "whole", cutAt: 40 + n * 17 }
        : n === 2
          ? { text: "whole", dropAfter: 50 }
          : { text: "whole" },
    );
    const retries: RetryInfo[] = [];
    const reply = await client(server, retries).complete(ask);
    expect(reply.text).toBe("whole");
    expect(reply.attempts).toBe(4);
    expect(retries.map((r) => r.reason)).toEqual(["cut off", "cut off", "connection"]);
    expect(server.requests).toHaveLength(4);
  });

  it("a reply cut off every time gives up after the retries, naming the cut", async () => {
    const server = await teacherWith(() => ({ text: "never whole", cutAt: 60 }));
    const retries: RetryInfo[] = [];
    const error = await client(server, retries, { retries: 2 })
      .complete(ask)
      .catch((e) => e);
    expect(error).toBeInstanceOf(TeacherError);
    expect(error.message).toMatch(
      /^teacher http:\/\/127\.0\.0\.1:\d+\/v1: gave up after 3 attempts; last: the reply was cut off after 60 characters \(SyntaxError: .*\)$/,
    );
    expect(retries.map((r) => r.reason)).toEqual(["cut off", "cut off"]);
  });

  it("a reply that is not a chat completion is an error, not retried", async () => {
    const html = await teacherWith(() => ({ body: "<html><body>Welcome to nginx!</body></html>" }));
    const retries: RetryInfo[] = [];
    await expect(client(html, retries).complete(ask)).rejects.toThrow(
      /^teacher http:\/\/127\.0\.0\.1:\d+\/v1: unusable reply: not JSON \("<html><body>Welcome to nginx!/,
    );
    const shape = await teacherWith(() => ({ body: '{"object":"list","data":[]}' }));
    await expect(client(shape, retries).complete(ask)).rejects.toThrow(
      /unusable reply: not a chat completion \(no "choices" list in \{"object":"list","data":\[\]\}\)$/,
    );
    expect(retries).toHaveLength(0);
    expect(html.requests).toHaveLength(1);
    expect(shape.requests).toHaveLength(1);
  });

  it("gives up after the retries with one line naming the teacher and the last failure", async () => {
    const server = await teacherWith(() => ({ status: 503 }));
    const retries: RetryInfo[] = [];
    const error = await client(server, retries, { retries: 2 })
      .complete(ask)
      .catch((e) => e);
    expect(error).toBeInstanceOf(TeacherError);
    expect(error.message).toMatch(
      /^teacher http:\/\/127\.0\.0\.1:\d+\/v1: gave up after 3 attempts; last: 503/,
    );
    expect(error.message).not.toContain("\n");
    expect(server.requests).toHaveLength(3);
  });

  it("does not retry a 400 or 401; the 401 says how to pass a key", async () => {
    const bad = await teacherWith(() => ({ status: 400 }));
    const retries: RetryInfo[] = [];
    await expect(client(bad, retries).complete(ask)).rejects.toThrow(/teacher .*: 400/);
    expect(bad.requests).toHaveLength(1);
    const denied = await teacherWith(() => ({ status: 401 }));
    await expect(client(denied, retries).complete(ask)).rejects.toThrow(/--api-key-env/);
    expect(denied.requests).toHaveLength(1);
    expect(retries).toHaveLength(0);
  });

  it("a wrong path is a 404 that names the URL and the model", async () => {
    const server = await teacherWith(() => ({ text: "never" }));
    const wrong = new TeacherClient({ url: server.url.replace("/v1", "/api"), model: "m", retries: 0 });
    await expect(wrong.complete(ask)).rejects.toThrow(/ending in \/v1, and "m" a model it serves/);
  });

  it("retries a refused connection", async () => {
    const server = await teacherWith(() => ({ text: "x" }));
    const url = server.url;
    await server.stop();
    const retries: RetryInfo[] = [];
    const error = await new TeacherClient({
      url,
      model: "m",
      retries: 1,
      backoffMs: 5,
      onRetry: (r) => retries.push(r),
    })
      .complete(ask)
      .catch((e) => e);
    expect(error).toBeInstanceOf(TeacherError);
    expect(error.message).toMatch(/gave up after 2 attempts; last: connection failed/);
    expect(retries.map((r) => r.reason)).toEqual(["connection"]);
  });

  it("sends the model, the messages, max_tokens and the key; reads usage or estimates it", async () => {
    const server = await teacherWith((n) =>
      n === 0 ? { text: "with usage" } : { text: "12345678", noUsage: true },
    );
    const c = new TeacherClient({ url: server.url, model: "teacher-model", apiKey: "sk-test" });
    const first = await c.complete({ ...ask, temperature: 0.5 });
    expect(first.usageReported).toBe(true);
    expect(first.promptTokens).toBe(Math.ceil("Write tasks.".length / 4));
    const second = await c.complete(ask);
    expect(second.usageReported).toBe(false);
    expect(second.completionTokens).toBe(2);
    const sent = server.requests[0]!;
    expect(sent.body.model).toBe("teacher-model");
    expect(sent.body.messages).toEqual(ask.messages);
    expect(sent.body.max_tokens).toBe(64);
    expect(sent.body.temperature).toBe(0.5);
    expect(sent.authorization).toBe("Bearer sk-test");
  });

  it("stops waiting when the signal fires", async () => {
    const server = await teacherWith(() => ({ delayMs: 5000, text: "late" }));
    const stop = new AbortController();
    setTimeout(() => stop.abort(), 100);
    await expect(client(server, []).complete({ ...ask, signal: stop.signal })).rejects.toBeInstanceOf(
      TeacherAbortError,
    );
  });
});

describe("teacher helpers", () => {
  it("reads Retry-After as seconds, milliseconds or an HTTP date", () => {
    const now = Date.parse("2024-05-01T12:00:00Z");
    expect(retryAfterMs(new Headers({ "retry-after": "2" }), now)).toBe(2000);
    expect(retryAfterMs(new Headers({ "retry-after": "1.5" }), now)).toBe(1500);
    expect(retryAfterMs(new Headers({ "retry-after-ms": "250", "retry-after": "9" }), now)).toBe(250);
    expect(retryAfterMs(new Headers({ "retry-after": "Wed, 01 May 2024 12:00:07 GMT" }), now)).toBe(7000);
    expect(retryAfterMs(new Headers({ "retry-after": "Wed, 01 May 2024 11:00:00 GMT" }), now)).toBe(0);
    expect(retryAfterMs(new Headers({ "retry-after": "soon" }), now)).toBeUndefined();
    expect(retryAfterMs(new Headers(), now)).toBeUndefined();
  });

  it("adds /v1 to a bare server root and rejects what is not an http URL", () => {
    expect(normalizeTeacherUrl("http://localhost:11434")).toBe("http://localhost:11434/v1");
    expect(normalizeTeacherUrl("http://localhost:8080/v1/")).toBe("http://localhost:8080/v1");
    expect(normalizeTeacherUrl("https://example.test/openai/v1")).toBe("https://example.test/openai/v1");
    expect(() => normalizeTeacherUrl("localhost:8080")).toThrow(/not an http\(s\) URL|not a URL/);
    expect(() => normalizeTeacherUrl("not a url")).toThrow(/--teacher: "not a url" is not a URL/);
  });
});

/** A clock that only moves when something sleeps on it. */
function fakeClock(): Clock & { sleeps: number[]; time: number } {
  const clock = {
    time: 0,
    sleeps: [] as number[],
    now: () => clock.time,
    sleep: async (ms: number) => {
      clock.sleeps.push(ms);
      clock.time += ms;
    },
  };
  return clock;
}

describe("client-side rate limit", () => {
  it("spaces requests 60/rpm seconds apart", async () => {
    const clock = fakeClock();
    const limiter = new RateLimiter({ rpm: 120 }, clock);
    const starts: number[] = [];
    for (let i = 0; i < 5; i++) {
      await limiter.acquire(0);
      starts.push(clock.time);
    }
    expect(starts).toEqual([0, 500, 1000, 1500, 2000]);
  });

  it("lets tokens burst to one minute's worth, then waits for the refill; settles to real usage", async () => {
    const clock = fakeClock();
    const limiter = new RateLimiter({ tpm: 6000 }, clock);
    await limiter.acquire(4000);
    await limiter.acquire(2000);
    expect(clock.time).toBe(0);
    await limiter.acquire(1000); // 1000 tokens refill in 10 s
    expect(clock.time).toBe(10_000);
    // The request reserved 1000 but used 4000: the next one waits for 3000 more.
    limiter.settle(1000, 4000);
    await limiter.acquire(100);
    expect(clock.time).toBe(10_000 + 31_000);
    // More than a minute's worth waits for a full bucket instead of forever.
    await limiter.acquire(100_000);
    expect(clock.time).toBeGreaterThan(41_000);
  });

  it("serves waiters in order of arrival", async () => {
    const clock = fakeClock();
    const limiter = new RateLimiter({ rpm: 60 }, clock);
    const order: number[] = [];
    await Promise.all([0, 1, 2, 3].map((i) => limiter.acquire(0).then(() => order.push(i))));
    expect(order).toEqual([0, 1, 2, 3]);
    expect(clock.time).toBe(3000);
  });
});
