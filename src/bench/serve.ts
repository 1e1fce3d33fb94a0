// `npm run bench -- serve`: the HTTP server under concurrent streaming clients. For each shape and type it
// starts `smallhammer serve` on a random-weight Llama (a child process, on loopback), then, with 1,
// 4 and 16 clients each sending streaming completion requests one after another, measures the
// aggregate generated tokens/s and the time to first token (p50, p99); then, at the most clients,
// the same with n replies per request, and embeddings per second. See serveUsage for flags.
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import { UserError } from "../errors.js";
import { RANDOM_MODEL_TYPES, type RandomModelType, randomLlamaFile, SHAPES } from "../model/random-llama.js";
import { list, parseBenchArgs, positiveInt } from "./args.js";
import { type CpuSample, cpuSample, waitForQuiet } from "./infer.js";

export const serveUsage = `usage: npm run bench -- serve [options]

Aggregate generated tokens/s and time to first token of \`smallhammer serve\` with concurrent
streaming clients on loopback, on random-weight Llama GGUF files (written once into --dir).

  --shapes LIST      15M,110M (default both)
  --types LIST       weight types, each of q8_0, q4_0, q4_k_m, f32 (default q8_0,f32; --type is the same)
  --clients LIST     concurrent clients per level (default 1,4,16)
  --requests N       requests per level: at least N, and 2 per client (default 8)
  --prompt N         prompt tokens per request (default 32)
  --tokens N         tokens generated per request (default 64)
  --threads N        the server's compute threads (default 2)
  --n N              replies per request (n) of one more level at the most clients (default 4; 1: none)
  --embed-inputs N   inputs per /v1/embeddings request, each --prompt tokens long (default 8; 0: no
                     embeddings figure)
  --grammar-requests N  requests of one client, free and then grammar-constrained (JSON), whose
                     decoding tokens/s (after each reply's first token) are compared (default 12;
                     0: none)
  --dir PATH         model cache (default .tmp/bench-models)
  --quiet-wait S     seconds to wait for an idle machine before each level (default 120)
  --json             machine-readable results on stdout
  --save PATH        also write the machine-readable results to PATH
`;

/** Foreign CPU load (in cores) above which a level is marked disturbed. */
const QUIET_CORES = 0.1;
const CONTEXT_SIZE = 512;

interface Level {
  clients: number;
  /** Replies per request (each request's tokens count all its replies). */
  n: number;
  requests: number;
  completionTokens: number;
  seconds: number;
  tokensPerSecond: number;
  /**
   * Tokens/s of decoding alone: tokens after each reply's first, over the time from its first
   * streamed text to its last (requests that end early weigh by their tokens, prompts not at all).
   */
  decodeTokensPerSecond: number;
  ttftP50Ms: number;
  ttftP99Ms: number;
  /** Most CPU (cores) other processes used during the level. */
  foreignCores: number;
  disturbed: boolean;
}

interface ShapeResult {
  shape: string;
  type: RandomModelType;
  path: string;
  levels: Level[];
  /** Aggregate tokens/s at the most clients over one client. */
  scaling?: number;
  embeddings?: EmbeddingLevel;
  /** One client's decoding tokens/s free and with a JSON grammar (the same prompts). */
  grammar?: { free: number; constrained: number; ratio: number; tokens: number; disturbed: boolean };
  note?: string;
}

/**
 * A JSON grammar for the comparison: an array of strings, each at most 40 characters, so that the
 * masks vary. A model may close the array early, so replies are compared by their decoding rate,
 * not by whole requests (a short reply would otherwise weigh its prompt over fewer tokens).
 */
const BENCH_GRAMMAR = String.raw`root ::= "[" ws (str ws ("," ws str ws)*)? "]"
str ::= "\"" ([^"\\\x00-\x1f] | "\\" ["\\/bfnrt]){0,40} "\""
ws ::= | " " | "\n" [ ]{0,4}
`;

export async function runServeBench(argv: string[]): Promise<void> {
  const args = parseBenchArgs(
    argv,
    {
      shapes: { type: "string" },
      type: { type: "string" },
      types: { type: "string" },
      clients: { type: "string" },
      requests: { type: "string" },
      prompt: { type: "string" },
      tokens: { type: "string" },
      threads: { type: "string" },
      n: { type: "string" },
      "embed-inputs": { type: "string" },
      "grammar-requests": { type: "string" },
      dir: { type: "string" },
      "quiet-wait": { type: "string" },
      json: { type: "boolean" },
      save: { type: "string" },
    },
    serveUsage,
  );
  if (!args) return;
  const { values, str } = args;
  const shapes = list(str("shapes"), "15M,110M");
  for (const s of shapes) {
    if (!SHAPES[s])
      throw new UserError(`--shapes: unknown shape "${s}" (known: ${Object.keys(SHAPES).join(", ")})`);
  }
  const types = list(str("types") ?? str("type"), "q8_0,f32") as RandomModelType[];
  for (const t of types) {
    if (!RANDOM_MODEL_TYPES.includes(t)) {
      throw new UserError(`--types: unknown type "${t}" (known: ${RANDOM_MODEL_TYPES.join(", ")})`);
    }
  }
  const clientLevels = list(str("clients"), "1,4,16").map((c) => positiveInt("clients", c, 1));
  const minRequests = positiveInt("requests", str("requests"), 8);
  const promptTokens = positiveInt("prompt", str("prompt"), 32);
  const tokens = positiveInt("tokens", str("tokens"), 64);
  const threads = positiveInt("threads", str("threads"), 2);
  const replies = positiveInt("n", str("n"), 4);
  const embedInputs = str("embed-inputs") === "0" ? 0 : positiveInt("embed-inputs", str("embed-inputs"), 8);
  const grammarRequests =
    str("grammar-requests") === "0" ? 0 : positiveInt("grammar-requests", str("grammar-requests"), 12);
  const quietWait = Number(str("quiet-wait") ?? 120);
  if (!(quietWait >= 0)) throw new UserError(`--quiet-wait: expected seconds, got "${str("quiet-wait")}"`);
  if (promptTokens + tokens + 2 > CONTEXT_SIZE) {
    throw new UserError(`--prompt + --tokens must stay under the ${CONTEXT_SIZE}-token context`);
  }
  const dir = str("dir") ?? ".tmp/bench-models";
  const json = values.json === true;
  const parallel = Math.max(...clientLevels);
  if (replies > parallel) throw new UserError(`--n ${replies} is above the ${parallel} parallel sequences`);
  const tty = process.stderr.isTTY === true;
  const say = (s: string) => {
    if (tty) process.stderr.write(`${s}\n`);
  };

  const load0 = loadavg();
  if (!json) {
    process.stdout.write(
      `bench serve: ${types.join(", ")}, server with ${threads} threads and ${parallel} parallel sequences of ${CONTEXT_SIZE} tokens; ` +
        `each request: ${promptTokens} prompt tokens, ${tokens} generated, streamed; ` +
        `load average ${load0.map((l) => l.toFixed(2)).join(" ")}\n\n` +
        `| shape | type | clients | requests | tokens | seconds | tok/s (all clients) | tok/s per client | TTFT p50 ms | TTFT p99 ms |\n` +
        `| ----: | ---: | ------: | -------: | -----: | ------: | ------------------: | ---------------: | ----------: | ----------: |\n`,
    );
  }
  const results: ShapeResult[] = [];
  for (const name of shapes)
    for (const type of types) {
      const shape = SHAPES[name]!;
      const path = randomLlamaFile(dir, shape, type, (p, bytes) =>
        say(`writing ${p} (${(bytes / 1e9).toFixed(2)} GB)`),
      );
      const result: ShapeResult = { shape: name, type, path, levels: [] };
      results.push(result);
      say(`${name}: starting the server`);
      const server = await startServer(path, threads, parallel);
      try {
        // Warm-up: the first request pays for page faults and compilation. It also checks that a
        // prompt is the stated number of tokens (plus the BOS token).
        const warm = await streamCompletion(server, prompt(0, promptTokens), 4);
        if (warm.promptTokens !== promptTokens + 1) {
          throw new Error(
            `a ${promptTokens}-word prompt came to ${warm.promptTokens} tokens, not ${promptTokens + 1}`,
          );
        }
        for (const clients of clientLevels) {
          const requests = Math.max(minRequests, 2 * clients);
          const waited = await waitForQuiet(QUIET_CORES, quietWait, say);
          say(`${name}: ${clients} clients, ${requests} requests`);
          const level = await runLevel(server, clients, requests, promptTokens, tokens);
          level.foreignCores = Math.max(level.foreignCores, waited);
          level.disturbed = level.foreignCores > QUIET_CORES;
          result.levels.push(level);
          if (!json) process.stdout.write(`${levelRow(name, type, level)}\n`);
        }
        const one = result.levels.find((l) => l.clients === 1 && l.n === 1);
        const most = result.levels.at(-1)!;
        if (one && most.clients > 1) result.scaling = most.tokensPerSecond / one.tokensPerSecond;
        if (replies > 1) {
          // The most clients again, each request asking for n replies to one prompt.
          const requests = Math.max(minRequests, 2 * parallel);
          const waited = await waitForQuiet(QUIET_CORES, quietWait, say);
          say(`${name}: ${parallel} clients, ${requests} requests with n = ${replies}`);
          const level = await runLevel(server, parallel, requests, promptTokens, tokens, replies);
          level.foreignCores = Math.max(level.foreignCores, waited);
          level.disturbed = level.foreignCores > QUIET_CORES;
          result.levels.push(level);
          if (!json) process.stdout.write(`${levelRow(name, type, level)}\n`);
        }
        if (embedInputs > 0) {
          const requests = Math.max(minRequests, 2 * parallel);
          const waited = await waitForQuiet(QUIET_CORES, quietWait, say);
          say(`${name}: ${parallel} clients, ${requests} embedding requests`);
          const e = await runEmbeddings(server, parallel, requests, embedInputs, promptTokens);
          e.foreignCores = Math.max(e.foreignCores, waited);
          e.disturbed = e.foreignCores > QUIET_CORES;
          result.embeddings = e;
        }
        if (grammarRequests > 0) {
          // The same requests from one client, free and then constrained by a JSON grammar.
          const waited = await waitForQuiet(QUIET_CORES, quietWait, say);
          say(`${name}: 1 client, ${grammarRequests} requests, free and grammar-constrained`);
          const free = await runLevel(server, 1, grammarRequests, promptTokens, tokens);
          // Warm-up, as a server answering one schema again and again is: the first uses compile
          // the grammar and meet its states (their allowed tokens are cached for the requests
          // after them). Other prompts than the measured ones.
          for (let i = 0; i < grammarRequests; i++) {
            await streamCompletion(server, prompt(1000 + i, promptTokens), tokens, 1, {
              grammar: BENCH_GRAMMAR,
            });
          }
          const constrained = await runLevel(server, 1, grammarRequests, promptTokens, tokens, 1, {
            grammar: BENCH_GRAMMAR,
          });
          result.grammar = {
            free: free.decodeTokensPerSecond,
            constrained: constrained.decodeTokensPerSecond,
            ratio: constrained.decodeTokensPerSecond / free.decodeTokensPerSecond,
            tokens: constrained.completionTokens,
            disturbed: Math.max(waited, free.foreignCores, constrained.foreignCores) > QUIET_CORES,
          };
        }
      } catch (e) {
        result.note = (e as Error).message.split("\n")[0];
        if (!json) process.stdout.write(`| ${name} | ${type} | failed: ${result.note} |\n`);
      } finally {
        await server.stop();
      }
    }
  if (!json) {
    process.stdout.write("\n");
    for (const r of results) {
      if (r.scaling === undefined) continue;
      const most = r.levels.filter((l) => l.n === 1).at(-1)!.clients;
      process.stdout.write(
        `${r.shape} ${r.type}: ${most} clients give ${r.scaling.toFixed(2)}× the aggregate tokens/s of one client\n`,
      );
    }
    for (const r of results) {
      const e = r.embeddings;
      if (!e) continue;
      process.stdout.write(
        `${r.shape} ${r.type}: embeddings: ${e.clients} clients, ${e.requests} requests of ${e.inputsPerRequest} inputs × ${promptTokens + 1} tokens: ` +
          `${e.embeddingsPerSecond.toFixed(1)} embeddings/s (${e.tokensPerSecond.toFixed(0)} input tokens/s), p50 ${e.p50Ms.toFixed(0)} ms per request` +
          `${e.disturbed ? ` disturbed (${e.foreignCores.toFixed(2)} foreign cores)` : ""}\n`,
      );
    }
    for (const r of results) {
      const g = r.grammar;
      if (!g) continue;
      process.stdout.write(
        `${r.shape} ${r.type}: decoding grammar-constrained (JSON, ${g.tokens} tokens) ${g.constrained.toFixed(1)} tok/s against free ${g.free.toFixed(1)} tok/s, one client: ` +
          `${g.ratio.toFixed(2)}×${g.disturbed ? " disturbed" : ""}\n`,
      );
    }
    process.stdout.write(
      `TTFT = time from sending a request to its first streamed text. "disturbed": other processes used more than ` +
        `${QUIET_CORES} cores during the level (from /proc/stat, the server's own CPU excluded).\n`,
    );
  }
  const save = str("save");
  if (json || save !== undefined) {
    const out = {
      started: new Date().toISOString(),
      types,
      threads,
      parallel,
      contextSize: CONTEXT_SIZE,
      promptTokens,
      tokens,
      replies,
      embedInputs,
      quietCores: QUIET_CORES,
      loadAverage: load0,
      results,
    };
    const text = `${JSON.stringify(out, null, 2)}\n`;
    if (json) process.stdout.write(text);
    if (save !== undefined) writeFileSync(save, text);
  }
}

interface BenchServer {
  url: string;
  modelId: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** Starts `smallhammer serve` on a free loopback port; resolves once the model is loaded. */
function startServer(path: string, threads: number, parallel: number): Promise<BenchServer> {
  const cli = fileURLToPath(new URL("../cli/main.js", import.meta.url));
  const args = [
    cli,
    "serve",
    "-m",
    path,
    "--port",
    "0",
    "-t",
    String(threads),
    "--parallel",
    String(parallel),
  ];
  args.push("--queue", String(4 * parallel), "--ctx", String(CONTEXT_SIZE), "--template", "chatml");
  const child = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"] });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return new Promise((resolve, reject) => {
    let err = "";
    child.stderr!.setEncoding("utf8").on("data", (d: string) => {
      err += d;
      const url = /on (http:\/\/[^\s]+) /.exec(err)?.[1];
      if (url && /loaded in/.test(err)) {
        const stop = async () => {
          child.kill("SIGTERM");
          await exited;
        };
        fetch(`${url}/v1/models`)
          .then((r) => r.json() as Promise<{ data: { id: string }[] }>)
          .then((list) => resolve({ url, modelId: list.data[0]!.id, child, stop }), reject);
      }
    });
    child.once("exit", (code) => reject(new Error(`smallhammer serve exited (${code}): ${err.trim()}`)));
  });
}

/** A prompt of `n` distinct word tokens, different for each request (no shared prefix to reuse). */
function prompt(request: number, n: number): string {
  const words: string[] = [];
  for (let j = 0; j < n; j++) words.push(`w${300 + ((request * 7919 + j * 104729) % 31000)}`);
  return words.join(" ");
}

/**
 * One streaming completion with `n` replies; returns the time to its first text (of any reply)
 * and the tokens it generated (all replies).
 */
async function streamCompletion(
  server: BenchServer,
  text: string,
  maxTokens: number,
  n = 1,
  extra: Record<string, unknown> = {},
) {
  const t0 = performance.now();
  const res = await fetch(`${server.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: server.modelId,
      prompt: text,
      max_tokens: maxTokens,
      temperature: 0.8,
      ...(n > 1 ? { n } : {}),
      stream: true,
      stream_options: { include_usage: true },
      ...extra,
    }),
  });
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let ttft: number | undefined;
  let last = 0;
  let completionTokens = 0;
  let promptTokens = 0;
  let buffer = "";
  const decoder = new TextDecoder();
  for await (const bytes of res.body) {
    buffer += decoder.decode(bytes as Uint8Array, { stream: true });
    let cut = buffer.indexOf("\n\n");
    while (cut >= 0) {
      const data = buffer.slice(6, cut); // "data: ..."
      buffer = buffer.slice(cut + 2);
      cut = buffer.indexOf("\n\n");
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.choices?.[0]?.text) {
        last = performance.now() - t0;
        ttft ??= last;
      }
      if (chunk.usage) {
        completionTokens = chunk.usage.completion_tokens;
        promptTokens = chunk.usage.prompt_tokens;
      }
    }
  }
  return { ttftMs: ttft ?? performance.now() - t0, lastTextMs: last, completionTokens, promptTokens };
}

/** `clients` clients share `requests` requests, each client sending its next when one ends. */
async function runLevel(
  server: BenchServer,
  clients: number,
  requests: number,
  promptTokens: number,
  tokens: number,
  n = 1,
  extra: Record<string, unknown> = {},
): Promise<Level> {
  const ttfts: number[] = [];
  let completionTokens = 0;
  let decodeTokens = 0;
  let decodeMs = 0;
  let next = 0;
  const cpu0 = cpuSample();
  const server0 = processTicks(server.child.pid!);
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (next < requests) {
        const i = next++;
        const r = await streamCompletion(server, prompt(i + 1, promptTokens), tokens, n, extra);
        ttfts.push(r.ttftMs);
        completionTokens += r.completionTokens;
        if (n === 1 && r.completionTokens > 1) {
          decodeTokens += r.completionTokens - 1;
          decodeMs += r.lastTextMs - r.ttftMs;
        }
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const foreign = foreignCoresBut(cpu0, cpuSample(), processTicks(server.child.pid!) - server0);
  ttfts.sort((a, b) => a - b);
  return {
    clients,
    n,
    requests,
    completionTokens,
    seconds,
    tokensPerSecond: completionTokens / seconds,
    decodeTokensPerSecond: decodeMs > 0 ? (1000 * decodeTokens) / decodeMs : 0,
    ttftP50Ms: quantile(ttfts, 0.5),
    ttftP99Ms: quantile(ttfts, 0.99),
    foreignCores: foreign,
    disturbed: false,
  };
}

interface EmbeddingLevel {
  clients: number;
  requests: number;
  inputsPerRequest: number;
  seconds: number;
  embeddingsPerSecond: number;
  tokensPerSecond: number;
  p50Ms: number;
  foreignCores: number;
  disturbed: boolean;
}

/** `clients` clients share `requests` /v1/embeddings requests of `inputs` inputs each. */
async function runEmbeddings(
  server: BenchServer,
  clients: number,
  requests: number,
  inputs: number,
  promptTokens: number,
): Promise<EmbeddingLevel> {
  let next = 0;
  let tokens = 0;
  const times: number[] = [];
  const cpu0 = cpuSample();
  const server0 = processTicks(server.child.pid!);
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (next < requests) {
        const i = next++;
        const r0 = performance.now();
        const res = await fetch(`${server.url}/v1/embeddings`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({
            model: server.modelId,
            input: Array.from({ length: inputs }, (_, j) => prompt(1000 + i * inputs + j, promptTokens)),
          }),
        });
        const body = (await res.json()) as {
          data?: unknown[];
          usage?: { prompt_tokens: number };
          error?: { message: string };
        };
        if (!res.ok || body.data?.length !== inputs)
          throw new Error(`HTTP ${res.status}: ${body.error?.message}`);
        tokens += body.usage!.prompt_tokens;
        times.push(performance.now() - r0);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const foreign = foreignCoresBut(cpu0, cpuSample(), processTicks(server.child.pid!) - server0);
  times.sort((a, b) => a - b);
  return {
    clients,
    requests,
    inputsPerRequest: inputs,
    seconds,
    embeddingsPerSecond: (requests * inputs) / seconds,
    tokensPerSecond: tokens / seconds,
    p50Ms: quantile(times, 0.5),
    foreignCores: foreign,
    disturbed: false,
  };
}

/** CPU ticks (user + system, all threads) of process `pid`. */
function processTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(rest[11]) + Number(rest[12]);
}

/** Cores used by processes other than this one and the server (whose ticks are `serverTicks`). */
function foreignCoresBut(a: CpuSample, b: CpuSample, serverTicks: number): number {
  const wallTicks = (b.total - a.total) / b.cpus;
  if (wallTicks <= 0) return 0;
  const foreign = b.busy - a.busy - (b.own - a.own) - serverTicks + (b.steal - a.steal);
  return Math.max(0, foreign / wallTicks);
}

/** The q-quantile of sorted values (nearest rank). */
function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}

function levelRow(shape: string, type: string, l: Level): string {
  const f = (x: number, d = 1) => (x >= 100 ? x.toFixed(0) : x.toFixed(d));
  const cells = [
    shape,
    type,
    l.n > 1 ? `${l.clients} (n = ${l.n})` : String(l.clients),
    String(l.requests),
    String(l.completionTokens),
    l.seconds.toFixed(1),
    f(l.tokensPerSecond),
    f(l.tokensPerSecond / l.clients),
    f(l.ttftP50Ms, 0),
    f(l.ttftP99Ms, 0),
  ];
  return `| ${cells.join(" | ")} |${l.disturbed ? ` disturbed (${l.foreignCores.toFixed(2)} foreign cores)` : ""}`;
}
