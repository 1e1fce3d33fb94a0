/**
 * Who may use the server, over raw HTTP on 127.0.0.1 (requests written byte for byte with
 * node:net, so no client normalises their targets): the API key holds for every spelling of a
 * protected route's URL; request bodies are JSON only as application/json; requests from web pages
 * on other origins are refused unless --cors names them; a server on loopback refuses Host names
 * that are not its own (DNS rebinding).
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeRandomLlama } from "../src/model/random-llama.js";
import { type RunningServer, startServer } from "../src/serve/server.js";
import { Rng } from "../src/util/random.js";
import { CLI, ensureBuilt, ROOT } from "./helpers/cli.js";

const KEY = "s3cret-key";
let dir: string;
let modelPath: string;
let guarded: RunningServer;
const servers: RunningServer[] = [];

beforeAll(async () => {
  ensureBuilt(); // the inference thread runs dist/serve/engine-worker.js
  dir = mkdtempSync(join(tmpdir(), "sh-serve-security-"));
  modelPath = join(dir, "guard.gguf");
  writeRandomLlama(
    modelPath,
    { name: "guard", dim: 32, layers: 1, heads: 2, kvHeads: 2, ffn: 64, vocab: 32000, contextLength: 256 },
    "f32",
  );
  guarded = await serve({ apiKey: KEY });
});

afterAll(async () => {
  for (const s of servers) await s.close(0);
  rmSync(dir, { recursive: true, force: true });
});

async function serve(options: { apiKey?: string; cors?: string[]; host?: string }) {
  const s = await startServer({
    model: modelPath,
    port: 0,
    parallel: 1,
    queue: 64,
    contextSize: 256,
    template: "chatml",
    threads: 1,
    ...options,
  });
  servers.push(s);
  await s.ready;
  return s;
}

interface RawReply {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/**
 * Sends one request exactly as written: `target` goes on the request line untouched. `headers`
 * may override Host; a body gets its Content-Length.
 */
function rawRequest(
  port: number,
  method: string,
  target: string,
  headers: Record<string, string> = {},
  body?: string,
): Promise<RawReply> {
  return new Promise((resolve, reject) => {
    const all: Record<string, string> = { host: `127.0.0.1:${port}`, connection: "close", ...headers };
    if (body !== undefined) all["content-length"] = String(Buffer.byteLength(body));
    const head = Object.entries(all)
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join("");
    const sock = connect(port, "127.0.0.1", () =>
      sock.write(`${method} ${target} HTTP/1.1\r\n${head}\r\n${body ?? ""}`),
    );
    const chunks: Buffer[] = [];
    sock.on("data", (d) => chunks.push(d));
    sock.on("error", reject);
    sock.on("close", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      const split = text.indexOf("\r\n\r\n");
      const m = /^HTTP\/1\.1 (\d{3}) /.exec(text);
      if (!m || split < 0)
        return reject(new Error(`no HTTP reply to ${method} ${target}: ${JSON.stringify(text)}`));
      const headerLines = text.slice(0, split).split("\r\n").slice(1);
      const replyHeaders: Record<string, string> = {};
      for (const line of headerLines) {
        const i = line.indexOf(":");
        replyHeaders[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      let replyBody = text.slice(split + 4);
      if (replyHeaders["transfer-encoding"] === "chunked") replyBody = unchunk(replyBody);
      resolve({ status: Number(m[1]), headers: replyHeaders, body: replyBody });
    });
  });
}

function unchunk(s: string): string {
  let out = "";
  let rest = s;
  for (;;) {
    const line = rest.indexOf("\r\n");
    const size = Number.parseInt(rest.slice(0, line), 16);
    if (!size) return out;
    out += rest.slice(line + 2, line + 2 + size);
    rest = rest.slice(line + 2 + size + 2);
  }
}

function errorOf(r: RawReply): { message: string; type: string; param: unknown; code: string | null } {
  const body = JSON.parse(r.body);
  expect(Object.keys(body)).toEqual(["error"]);
  expect(Object.keys(body.error).sort()).toEqual(["code", "message", "param", "type"]);
  expect(body.error.message).not.toMatch(/\n|\s+at\s+\S+\s+\(|node:internal/);
  return body.error;
}

const bearer = { authorization: `Bearer ${KEY}` };
const json = { "content-type": "application/json" };
const chatBody = () =>
  JSON.stringify({ model: "guard", messages: [{ role: "user", content: "hi" }], max_tokens: 1 });
const completionBody = () => JSON.stringify({ model: "guard", prompt: "hi", max_tokens: 1 });

/** The routes behind the key, with a method and body that their handler answers 200. */
const PROTECTED: { method: string; path: string; body?: () => string }[] = [
  { method: "GET", path: "/v1/models" },
  { method: "GET", path: "/v1/models/guard" },
  { method: "GET", path: "/props" },
  { method: "POST", path: "/v1/chat/completions", body: chatBody },
  { method: "POST", path: "/v1/completions", body: completionBody },
  { method: "POST", path: "/tokenize", body: () => JSON.stringify({ prompt: "hi" }) },
];

describe("API key on every spelling of a route", () => {
  it("the reported bypasses are 401 without the key and 200 with it", async () => {
    const port = guarded.port;
    const cases: [string, string, string | undefined][] = [
      ["GET", "/%761/models", undefined],
      ["GET", "/v%31/models", undefined],
      ["POST", "/%761/chat/completions", chatBody()],
      ["POST", "http://x/v1/completions", completionBody()],
      ["GET", "/v1/models", undefined],
      ["HEAD", "/v1/models", undefined],
    ];
    for (const [method, target, body] of cases) {
      const headers = body === undefined ? {} : json;
      const without = await rawRequest(port, method, target, headers, body);
      expect(without.status, `${method} ${target}`).toBe(401);
      if (method !== "HEAD") expect(errorOf(without).code).toBe("invalid_api_key");
      const wrong = await rawRequest(
        port,
        method,
        target,
        { ...headers, authorization: "Bearer nope" },
        body,
      );
      expect(wrong.status, `${method} ${target} with a wrong key`).toBe(401);
      const withKey = await rawRequest(port, method, target, { ...headers, ...bearer }, body);
      expect(withKey.status, `${method} ${target} with the key: ${withKey.body}`).toBe(200);
    }
  });

  it("no spelling of a protected URL is answered 200 without the key (fuzz)", async () => {
    const rng = new Rng(7);
    const hex = (c: string) =>
      [...Buffer.from(c, "utf8")].map((b) => `%${b.toString(16).padStart(2, "0")}`).join("");
    const upperHex = (c: string) => hex(c).toUpperCase();
    const encodeAt = (p: string, i: number, enc: (c: string) => string) =>
      p.slice(0, i) + enc(p[i]!) + p.slice(i + 1);
    const randomCase = (p: string) =>
      [...p].map((c) => (rng.nextFloat() < 0.5 ? c.toUpperCase() : c.toLowerCase())).join("");

    function spellings(path: string): string[] {
      const out = new Set<string>();
      for (let i = 0; i < path.length; i++) {
        out.add(encodeAt(path, i, hex));
        out.add(encodeAt(path, i, upperHex));
        out.add(encodeAt(path, i, (c) => `%25${hex(c).slice(1)}`)); // encoded twice
      }
      out.add([...path].map(hex).join(""));
      out.add([...path].map((c) => (c === "/" ? c : upperHex(c))).join(""));
      const [, first, ...rest] = path.split("/");
      const tail = rest.join("/");
      for (const variant of [
        `/${first}/../${first}/${tail}`,
        `/./${first}/${tail}`,
        `/${first}/./${tail}`,
        `${path}/.`,
        `${path}/..`,
        `/${first}/%2e%2e/${first}/${tail}`,
        `/%2e/${first}/${tail}`,
        `/x/..${path}`,
        `//${first}/${tail}`,
        `/${first}//${tail}`,
        `${path}/`,
        `${path}//`,
        `${path}%2f`,
        `${path}%2F`,
        path.replace(/\//g, "%2f"),
        path.toUpperCase(),
        path.replace(/^\/./, (s) => s.toUpperCase()),
        randomCase(path),
        randomCase(path),
        `${path}?`,
        `${path}?a=1&b=%zz`,
        `${path}#fragment`,
        `${path}?x#y`,
        `${path};x`,
        `${path}%3F`,
        `${path}%23`,
        `${path}%00`,
        `${path}%20`,
        `${path} `,
        `${path}\t`,
        path.replace(/\//g, "\\"),
        `http://x${path}`,
        `HTTP://X${path}`,
        `http://127.0.0.1${path}`,
        `https://x${path}`,
        `http://x//${path}`,
        `http://x${path}?q`,
        `http://user:pass@x${path}`,
        path.slice(1),
      ]) {
        out.add(variant);
      }
      return [...out];
    }

    let reachedRoute = 0;
    let noRoute = 0;
    for (const route of PROTECTED) {
      for (const target of spellings(route.path)) {
        const body = route.body?.();
        const headers = body === undefined ? {} : json;
        const what = `${route.method} ${JSON.stringify(target)}`;
        const r = await rawRequest(guarded.port, route.method, target, headers, body);
        // 401 before any handler runs (an unknown URL too); 400: not a valid HTTP request.
        expect([400, 401], `${what} answered ${r.status}: ${r.body}`).toContain(r.status);
        const e = errorOf(r);
        if (r.status === 400) continue;
        expect(e.code, what).toBe("invalid_api_key");
        // With the key, the same spelling gets past the check: to a handler, or to "no route".
        const withKey = await rawRequest(guarded.port, route.method, target, { ...headers, ...bearer }, body);
        expect(withKey.status, `${what} with the key: ${withKey.body}`).not.toBe(401);
        if (withKey.status === 404 && errorOf(withKey).code === "not_found") noRoute++;
        else reachedRoute++;
      }
    }
    // Many spellings do reach a protected route (percent-encoding, queries, absolute form), and
    // many reach none (dot segments, double slashes, case): the rule is tested on both.
    expect(reachedRoute).toBeGreaterThan(100);
    expect(noRoute).toBeGreaterThan(50);
  });

  it("the chat page and the health check stay open", async () => {
    for (const path of ["/", "/chat.js", "/chat.css", "/favicon.svg", "/health"]) {
      expect((await rawRequest(guarded.port, "GET", path)).status, path).toBe(200);
    }
  });
});

describe("request bodies", () => {
  it("are JSON only as application/json: other types get 415", async () => {
    const body = chatBody();
    for (const type of [
      "text/plain",
      "text/plain;charset=UTF-8",
      "application/x-www-form-urlencoded",
      "multipart/form-data; boundary=x",
      "application/jsonp",
      "application/json; charset=latin1",
    ]) {
      const r = await rawRequest(
        guarded.port,
        "POST",
        "/v1/chat/completions",
        { ...bearer, "content-type": type },
        body,
      );
      expect(r.status, type).toBe(415);
      const e = errorOf(r);
      expect(e.code).toBe("unsupported_media_type");
      expect(e.type).toBe("invalid_request_error");
    }
    const untyped = await rawRequest(guarded.port, "POST", "/v1/chat/completions", bearer, body);
    expect(untyped.status).toBe(415);
    for (const type of ["application/json", "application/json; charset=utf-8", "Application/JSON"]) {
      const r = await rawRequest(
        guarded.port,
        "POST",
        "/v1/chat/completions",
        { ...bearer, "content-type": type },
        body,
      );
      expect(r.status, type).toBe(200);
    }
  });
});

describe("web pages on other origins", () => {
  it("a cross-origin text/plain POST is refused, with or without the key", async () => {
    const open = await serve({});
    for (const s of [open, guarded]) {
      for (const origin of ["http://evil.example", "http://127.0.0.1:1", "null", "https://localhost"]) {
        const r = await rawRequest(
          s.port,
          "POST",
          "/v1/chat/completions",
          { ...bearer, origin, "content-type": "text/plain" },
          chatBody(),
        );
        expect(r.status, origin).toBe(403);
        expect(errorOf(r).code).toBe("origin_not_allowed");
        expect(r.headers["access-control-allow-origin"]).toBeUndefined();
        const asJson = await rawRequest(
          s.port,
          "POST",
          "/v1/completions",
          { ...bearer, ...json, origin },
          completionBody(),
        );
        expect(asJson.status, origin).toBe(403);
        const preflight = await rawRequest(s.port, "OPTIONS", "/v1/completions", {
          origin,
          "access-control-request-method": "POST",
          "access-control-request-headers": "content-type",
        });
        expect(preflight.status).toBe(403);
        expect(preflight.headers["access-control-allow-origin"]).toBeUndefined();
      }
      // The page's own origin (what the browser sends with the chat page's requests) is fine.
      const same = await rawRequest(
        s.port,
        "POST",
        "/v1/completions",
        { ...bearer, ...json, origin: `http://127.0.0.1:${s.port}` },
        completionBody(),
      );
      expect(same.status).toBe(200);
      const sameByName = await rawRequest(
        s.port,
        "POST",
        "/v1/completions",
        { ...bearer, ...json, host: `localhost:${s.port}`, origin: `http://localhost:${s.port}` },
        completionBody(),
      );
      expect(sameByName.status).toBe(200);
    }
  });

  it("--cors lets the named origins in: preflight, plain and streamed replies", async () => {
    const s = await serve({
      apiKey: KEY,
      cors: ["http://app.example:3000,http://other.example", "https://x.example"],
    });
    for (const origin of [
      "http://app.example:3000",
      "http://other.example",
      "https://x.example",
      "HTTP://APP.EXAMPLE:3000",
    ]) {
      const preflight = await rawRequest(s.port, "OPTIONS", "/v1/chat/completions", {
        origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type,x-stainless-os",
      });
      expect(preflight.status, origin).toBe(204);
      expect(preflight.headers["access-control-allow-origin"]).toBe(origin);
      expect(preflight.headers["access-control-allow-methods"]).toMatch(/POST/);
      expect(preflight.headers["access-control-allow-headers"]).toBe(
        "authorization,content-type,x-stainless-os",
      );
      expect(preflight.headers.vary).toMatch(/origin/i);

      const plain = await rawRequest(
        s.port,
        "POST",
        "/v1/chat/completions",
        { ...bearer, ...json, origin },
        chatBody(),
      );
      expect(plain.status).toBe(200);
      expect(plain.headers["access-control-allow-origin"]).toBe(origin);
      const stream = JSON.stringify({ ...JSON.parse(chatBody()), stream: true });
      const streamed = await rawRequest(
        s.port,
        "POST",
        "/v1/chat/completions",
        { ...bearer, ...json, origin },
        stream,
      );
      expect(streamed.status).toBe(200);
      expect(streamed.headers["content-type"]).toMatch(/text\/event-stream/);
      expect(streamed.headers["access-control-allow-origin"]).toBe(origin);
      expect(streamed.body).toMatch(/data: \[DONE\]/);
      // Errors carry the header too, so that the page can read them; the key is still needed.
      const noKey = await rawRequest(s.port, "GET", "/v1/models", { origin });
      expect(noKey.status).toBe(401);
      expect(noKey.headers["access-control-allow-origin"]).toBe(origin);
    }
    const other = await rawRequest(
      s.port,
      "POST",
      "/v1/completions",
      { ...bearer, ...json, origin: "http://app.example:3001" },
      completionBody(),
    );
    expect(other.status).toBe(403);

    const any = await serve({ cors: ["*"] });
    const r = await rawRequest(any.port, "GET", "/v1/models", { origin: "http://anywhere.example" });
    expect(r.status).toBe(200);
    expect(r.headers["access-control-allow-origin"]).toBe("*");
  });

  it("smallhammer serve --cors takes repeated flags and comma lists", async () => {
    const child = spawn(
      process.execPath,
      [
        CLI,
        ...["serve", "-m", modelPath, "--port", "0", "-t", "1", "--template", "chatml", "--parallel", "1"],
        ...["--cors", "http://a.example,http://b.example", "--cors", "http://c.example:8000"],
      ],
      { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
    );
    try {
      let stderr = "";
      const port = await new Promise<number>((resolve, reject) => {
        child.stderr.on("data", (d: Buffer) => {
          stderr += d;
          const m = /on http:\/\/127\.0\.0\.1:(\d+)/.exec(stderr);
          if (m && /loaded in/.test(stderr)) resolve(Number(m[1]));
        });
        child.on("exit", () => reject(new Error(`serve exited: ${stderr}`)));
      });
      for (const origin of ["http://a.example", "http://b.example", "http://c.example:8000"]) {
        const r = await rawRequest(port, "GET", "/v1/models", { origin });
        expect(r.status, origin).toBe(200);
        expect(r.headers["access-control-allow-origin"]).toBe(origin);
      }
      for (const origin of ["http://c.example", "http://d.example"]) {
        expect((await rawRequest(port, "GET", "/v1/models", { origin })).status, origin).toBe(403);
      }
    } finally {
      child.kill("SIGTERM");
    }
  });

  it("an origin that is not one is refused at start", async () => {
    for (const bad of ["app.example", "ftp://x.example", "http://x.example/path", "http://x.example?q"]) {
      await expect(startServer({ model: modelPath, port: 0, cors: [bad] })).rejects.toThrow(
        /--cors: .* is not an origin/,
      );
    }
  });
});

describe("Host names (DNS rebinding)", () => {
  it("on loopback, only the loopback names are answered", async () => {
    const port = guarded.port;
    for (const host of [
      "evil.example",
      `evil.example:${port}`,
      "127.0.0.1.evil.example",
      "localhost.evil.example",
      "[::2]",
      "10.0.0.1",
      "",
      "a b",
      "localhost:x",
    ]) {
      for (const path of ["/", "/health", "/v1/models"]) {
        const r = await rawRequest(port, "GET", path, { ...bearer, host });
        // An empty or malformed Host is refused by the HTTP parser (400) or by the server (403).
        expect([400, 403], `Host ${JSON.stringify(host)} ${path}`).toContain(r.status);
        if (r.status === 403) expect(errorOf(r).code).toBe("host_not_allowed");
      }
    }
    const absolute = await rawRequest(port, "GET", `http://127.0.0.1:${port}/health`, {
      host: "evil.example",
    });
    expect(absolute.status).toBe(403);
    for (const host of [
      "127.0.0.1",
      `127.0.0.1:${port}`,
      "localhost",
      `localhost:${port}`,
      "LOCALHOST",
      "[::1]",
      `[::1]:${port}`,
      `localhost:${port + 1}`,
    ]) {
      const r = await rawRequest(port, "GET", "/v1/models", { ...bearer, host });
      expect(r.status, `Host ${host}`).toBe(200);
    }
  });

  it("bound to every interface, any name or address reaches it", async () => {
    const s = await serve({ apiKey: KEY, host: "0.0.0.0" });
    for (const host of ["192.0.2.7", `192.0.2.7:${s.port}`, "myhost.lan", `[2001:db8::1]:${s.port}`]) {
      const r = await rawRequest(s.port, "GET", "/v1/models", { ...bearer, host });
      expect(r.status, `Host ${host}`).toBe(200);
      // Its own page's origin is same-origin, whatever the name.
      const post = await rawRequest(
        s.port,
        "POST",
        "/v1/completions",
        { ...bearer, ...json, host, origin: `http://${host}` },
        completionBody(),
      );
      expect(post.status, `Origin http://${host}`).toBe(200);
    }
  });
});
