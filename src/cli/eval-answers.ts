import { basename } from "node:path";
import type { Command } from "commander";
import { TeacherClient } from "../data/teacher.js";
import { UserError } from "../errors.js";
import {
  type Answerer,
  type AnswerProgress,
  type AnswerSummary,
  answerQuestions,
  endpointAnswerer,
  modelAnswerer,
} from "../eval/answers.js";
import { readQuestions } from "../eval/mt-bench-files.js";
import { chatTemplateProblem, loadModel } from "../model/model.js";
import { checkOutputs } from "../util/output-path.js";
import { Progress } from "../util/progress.js";
import { Interruption } from "./interrupt.js";
import { intArg, numArg, threadsArg } from "./options.js";

interface EvalAnswersFlags {
  model: string;
  questions: string;
  out: string;
  endpoint?: string;
  modelName?: string;
  template?: string;
  threads?: number;
  ctx?: number;
  temp?: number;
  maxTokens: number;
  seed?: number;
  apiKeyEnv?: string;
  concurrency?: number;
  timeout?: number;
  retries?: number;
  rpm?: number;
  tpm?: number;
  json?: boolean;
}

/** Flags of the OpenAI-compatible client (`eval answers --endpoint`, `eval judge`). */
export interface ClientFlags {
  apiKeyEnv?: string;
  concurrency?: number;
  timeout?: number;
  retries?: number;
  rpm?: number;
  tpm?: number;
}

/** Adds the client flags; their defaults are applied by `clientOptions`. */
export function addClientOptions(cmd: Command, role: string): Command {
  return cmd
    .option(
      "--api-key-env <var>",
      `environment variable holding the ${role}'s API key (local servers need none)`,
    )
    .option("--concurrency <n>", "requests in flight at once (default: 4)", intArg("--concurrency", 1, 256))
    .option("--timeout <seconds>", "limit per request (default: 120)", numArg("--timeout", 0.001))
    .option(
      "--retries <n>",
      "retries per request on 429, 5xx, timeouts and dropped connections (default: 6)",
      intArg("--retries", 0, 100),
    )
    .option("--rpm <n>", "most requests per minute", numArg("--rpm", 0.001))
    .option("--tpm <n>", "most tokens (prompt + completion) per minute", numArg("--tpm", 1));
}

/** A teacher client for `url` (checked as `flag`) with the client flags' settings. */
export function clientFor(flag: string, url: string, model: string, flags: ClientFlags): TeacherClient {
  let parsed: URL | undefined;
  try {
    parsed = new URL(url);
  } catch {
    // reported below
  }
  if (!parsed || (parsed.protocol !== "http:" && parsed.protocol !== "https:")) {
    throw new UserError(`${flag}: "${url}" is not an http(s) URL (expected e.g. http://127.0.0.1:8080/v1)`);
  }
  let apiKey: string | undefined;
  if (flags.apiKeyEnv !== undefined) {
    apiKey = process.env[flags.apiKeyEnv];
    if (apiKey === undefined || apiKey === "") {
      throw new UserError(`--api-key-env: the environment variable ${flags.apiKeyEnv} is not set`);
    }
  }
  return new TeacherClient({
    url,
    model,
    apiKey,
    timeoutMs: (flags.timeout ?? 120) * 1000,
    retries: flags.retries ?? 6,
    rpm: flags.rpm,
    tpm: flags.tpm,
  });
}

export function registerEvalAnswers(evalCmd: Command): void {
  const cmd = evalCmd
    .command("answers")
    .description(
      "answer a question file in MT-bench's layout (each turn after the answers to the earlier ones) with a model or an OpenAI-compatible endpoint, for `eval judge`; run it again with the same --out to resume",
    )
    .requiredOption(
      "-m, --model <file|name>",
      "GGUF model file; with --endpoint, the name of the model the endpoint serves",
    )
    .requiredOption("--questions <file>", "questions: JSONL of question_id, category, turns")
    .requiredOption(
      "--out <file>",
      "answers JSONL in FastChat's layout (appended to; a rerun answers only what is missing)",
    )
    .option("--endpoint <url>", "answer with an OpenAI-compatible API instead, e.g. http://127.0.0.1:8080/v1")
    .option(
      "--model-name <name>",
      "the model's name in the answers (default: the file name without .gguf, or -m with --endpoint)",
    )
    .option("--template <name>", "chat template of a local model (default: the file's)")
    .option("-t, --threads <n>", "compute threads of a local model (default: all cores)", threadsArg)
    .option(
      "-c, --ctx <n>",
      "context size of a local model in tokens (default: the model's, at most 4096)",
      intArg("--ctx", 1),
    )
    .option(
      "--temp <t>",
      "temperature for every question (default: by category as MT-bench: 0.7 writing and roleplay, 0 math, coding, reasoning and extraction, 0.1 stem and humanities, else 0.7)",
      numArg("--temp", 0, 2),
    )
    .option("--max-tokens <n>", "most tokens per answer", intArg("--max-tokens", 1, 65536), 1024)
    .option("--seed <s>", "sampling seed of a local model (default: 0)", intArg("--seed", 0, 2 ** 32 - 1));
  addClientOptions(cmd, "endpoint").option("--json", "print a JSON summary");
  cmd.action(async (flags: EvalAnswersFlags) => {
    const local = flags.endpoint === undefined;
    const misplaced = local
      ? (["apiKeyEnv", "concurrency", "timeout", "retries", "rpm", "tpm"] as const).filter(
          (k) => flags[k] !== undefined,
        )
      : (["template", "threads", "ctx", "seed"] as const).filter((k) => flags[k] !== undefined);
    if (misplaced.length > 0) {
      const names = misplaced.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(", ");
      throw new UserError(
        local ? `${names}: only with --endpoint` : `${names}: only for a local model (without --endpoint)`,
      );
    }
    checkOutputs({
      inputs: [
        { path: flags.questions, name: "--questions" },
        ...(local ? [{ path: flags.model, name: "the model" }] : []),
      ],
      outputs: [{ path: flags.out, flag: "--out", existing: "caller" }],
    });
    const questions = await readQuestions(flags.questions);
    const name = flags.modelName ?? (local ? basename(flags.model).replace(/\.gguf$/i, "") : flags.model);
    let answerer: Answerer;
    let model: Awaited<ReturnType<typeof loadModel>> | undefined;
    if (local) {
      const problem = chatTemplateProblem(flags.model, flags.template);
      if (problem) throw new UserError(`${problem} (--template NAME chooses a built-in one)`);
      model = await loadModel(flags.model, {
        threads: flags.threads,
        contextSize: flags.ctx,
        template: flags.template,
      });
      answerer = modelAnswerer(model);
    } else {
      answerer = endpointAnswerer(
        clientFor("--endpoint", flags.endpoint!, flags.model, flags),
        flags.concurrency ?? 4,
      );
    }
    const progress = new Progress("answers", questions.length, "questions", {
      enabled: process.stderr.isTTY === true && !flags.json,
      detail: true,
    });
    let shown: number | undefined;
    const interruption = new Interruption();
    let summary: AnswerSummary;
    try {
      summary = await answerQuestions({
        questions,
        answerer,
        model: name,
        out: flags.out,
        temperature: flags.temp,
        maxTokens: flags.maxTokens,
        seed: flags.seed,
        signal: interruption.signal,
        onProgress: (p: AnswerProgress) => {
          // The first call gives the resumed count: shown, but not part of the rate and ETA.
          if (shown === undefined) progress.startAt(p.done);
          progress.tick(p.done - (shown ?? p.done), {
            detail: `${p.promptTokens + p.completionTokens} tokens`,
          });
          shown = p.done;
        },
      });
    } finally {
      interruption.dispose();
      progress.done();
      await model?.dispose();
    }
    if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
    else {
      process.stdout.write(
        `${flags.out}: ${summary.done}/${summary.total} questions answered by ${summary.model} ` +
          `(${summary.answeredNow} now${summary.resumed ? `, ${summary.resumed} by an earlier run` : ""}); ` +
          `${summary.promptTokens} prompt + ${summary.completionTokens} completion tokens\n`,
      );
    }
    if (summary.stopped) {
      process.stderr.write("smallhammer: stopped; run the same command again to resume\n");
      interruption.setExitStatus();
    }
  });
}
