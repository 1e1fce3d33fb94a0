import { type Command, Option } from "commander";
import { UserError } from "../errors.js";
import { chatTemplateProblem } from "../model/model.js";
import { isLoopbackHost } from "../serve/guard.js";
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from "../serve/log.js";
import { startServer } from "../serve/server.js";
import { addModelOptions, intArg, type ModelFlags, modelOptions, numArg } from "./options.js";

interface ServeFlags extends ModelFlags {
  host: string;
  port: number;
  apiKey?: string;
  parallel: number;
  queue: number;
  timeout: number;
  bodyLimit: number;
  grace: number;
  cors?: string[];
  logLevel: LogLevel;
  logFormat: LogFormat;
}

/** The longest --timeout and --grace, in seconds: what a Node.js timer holds (2^31 - 1 ms). */
const MAX_SECONDS = 2_147_483;

export function registerServe(program: Command) {
  const cmd = program
    .command("serve")
    .description("serve a model over an OpenAI-compatible HTTP API, with a web chat page at /")
    .option("--host <address>", "address to bind (0.0.0.0 for every interface)", "127.0.0.1")
    .option("--port <n>", "port (0 = any free port)", intArg("--port", 0, 65535), 8080)
    .option("--api-key <key>", "require this key on the API (default: $SMALLHAMMER_API_KEY, else none)")
    .option(
      "--cors <origin>",
      "let web pages from this origin call the API, e.g. http://localhost:3000, or * for any (repeatable, or a comma list)",
      (value: string, previous: string[] = []) => [...previous, value],
    )
    .option(
      "--parallel <n>",
      "sequences decoded together, each with its own context",
      intArg("--parallel", 1, 256),
      4,
    )
    .option(
      "--queue <n>",
      "requests that may wait for a sequence; more get 429",
      intArg("--queue", 0, 65536),
      16,
    )
    .option(
      "--timeout <s>",
      "longest a request may take, queue wait included",
      numArg("--timeout", 1, MAX_SECONDS),
      600,
    )
    .option("--body-limit <bytes>", "largest request body", intArg("--body-limit", 1024, 1 << 30), 1 << 20)
    .option(
      "--grace <s>",
      "on SIGTERM, how long requests in flight may still run",
      numArg("--grace", 0, MAX_SECONDS),
      10,
    )
    .addOption(
      new Option(
        "--log-level <level>",
        "least severe log records written to stderr (info: one line per request)",
      )
        .choices(LOG_LEVELS)
        .default("info"),
    )
    .addOption(
      new Option("--log-format <format>", "json lines, or pretty: one readable line per record")
        .choices(LOG_FORMATS)
        .default("json"),
    );
  addModelOptions(cmd); // -m, -t, --ctx (of each sequence), --template, --lora, --lora-scale
  cmd.action(async (flags: ServeFlags) => {
    const apiKey = flags.apiKey ?? process.env.SMALLHAMMER_API_KEY;
    if (apiKey !== undefined && apiKey.trim() === "") throw new UserError("--api-key is empty");
    const t0 = Date.now();
    const server = await startServer({
      ...modelOptions(flags),
      model: flags.model,
      host: flags.host,
      port: flags.port,
      apiKey,
      parallel: flags.parallel,
      queue: flags.queue,
      timeoutMs: Math.round(flags.timeout * 1000),
      bodyLimit: flags.bodyLimit,
      cors: flags.cors,
      log: { level: flags.logLevel, format: flags.logFormat },
    });
    const err = process.stderr;
    err.write(`smallhammer serve: ${server.modelId} on ${server.url} (chat page at ${server.url}/)\n`);
    const templateProblem = chatTemplateProblem(flags.model, flags.template);
    if (templateProblem !== undefined) {
      err.write(
        `smallhammer serve: ${templateProblem}; /v1/chat/completions will answer 400, /v1/completions works\n`,
      );
    }
    if (!apiKey && !isLoopbackHost(flags.host)) {
      err.write(
        `smallhammer serve: warning: ${flags.host} is reachable from other machines and no --api-key is set\n`,
      );
    }
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      err.write(`smallhammer serve: ${signal}: finishing requests in flight (up to ${flags.grace} s)\n`);
      server.close(flags.grace * 1000).then(
        () => process.exit(0),
        (e) => {
          err.write(`smallhammer serve: ${e instanceof Error ? e.message : e}\n`);
          process.exit(1);
        },
      );
    };
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGINT"));
    try {
      const info = await server.ready;
      const mib = (info.kvCacheBytes / 2 ** 20).toFixed(0);
      err.write(
        `smallhammer serve: loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${info.sequences} sequences of ${info.contextSize} tokens (KV cache ${mib} MiB), ${info.threads} threads\n`,
      );
    } catch (e) {
      if (stopping) return;
      await server.close(0);
      throw e;
    }
  });
}
