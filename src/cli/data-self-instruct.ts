import type { Command } from "commander";
import {
  describeRejected,
  loadSeedTasks,
  type SelfInstructState,
  selfInstruct,
  statePath,
} from "../data/self-instruct.js";
import { TeacherClient } from "../data/teacher.js";
import { UserError } from "../errors.js";
import { checkOutputs } from "../util/output-path.js";
import { Progress } from "../util/progress.js";
import { describeCounts } from "./data-transform.js";
import { Interruption } from "./interrupt.js";
import { intArg, numArg } from "./options.js";

interface SelfInstructFlags {
  teacher: string;
  model: string;
  apiKeyEnv?: string;
  seeds?: string;
  num: number;
  out: string;
  concurrency: number;
  timeout: number;
  retries: number;
  rpm?: number;
  tpm?: number;
  priceIn: number;
  priceOut: number;
  maxTokens: number;
  temperature: number;
  topP: number;
  examples: number;
  listLength: number;
  similarity: number;
  seed: number;
  json?: boolean;
}

export function registerDataSelfInstruct(data: Command): void {
  data
    .command("self-instruct")
    .description(
      "generate Alpaca instruction data with a teacher model behind an OpenAI-compatible API; run it again with the same --out to resume",
    )
    .requiredOption(
      "--teacher <url>",
      "API base URL, e.g. http://127.0.0.1:8080/v1 (Ollama: http://localhost:11434/v1)",
    )
    .requiredOption("--model <name>", "the teacher's model name")
    .option("--api-key-env <var>", "environment variable holding the API key (local servers need none)")
    .option(
      "--seeds <file>",
      "seed tasks: Alpaca's seed format or Alpaca records (default: the project's own)",
    )
    .requiredOption("--num <n>", "kept tasks wanted in --out", intArg("--num", 1))
    .requiredOption("--out <file>", "Alpaca JSONL output (appended to; <out>.state.json holds the counters)")
    .option("--concurrency <n>", "requests in flight at once", intArg("--concurrency", 1, 256), 4)
    .option("--timeout <seconds>", "limit per request", numArg("--timeout", 0.001), 120)
    .option(
      "--retries <n>",
      "retries per request on 429, 5xx, timeouts, dropped connections and replies cut off",
      intArg("--retries", 0, 100),
      6,
    )
    .option("--rpm <n>", "most requests per minute", numArg("--rpm", 0.001))
    .option("--tpm <n>", "most tokens (prompt + completion) per minute", numArg("--tpm", 1))
    .option(
      "--price-in <price>",
      "price per million prompt tokens, for the cost estimate",
      numArg("--price-in", 0),
      0,
    )
    .option(
      "--price-out <price>",
      "price per million completion tokens, for the cost estimate",
      numArg("--price-out", 0),
      0,
    )
    .option("--max-tokens <n>", "most tokens per reply", intArg("--max-tokens", 16), 3072)
    .option("--temperature <t>", "sampling temperature", numArg("--temperature", 0, 2), 1)
    .option("--top-p <p>", "nucleus sampling mass", numArg("--top-p", 0, 1), 1)
    .option("--examples <n>", "example tasks shown per request", intArg("--examples", 1, 50), 3)
    .option(
      "--list-length <n>",
      "tasks per requested list, examples included",
      intArg("--list-length", 2, 200),
      20,
    )
    .option(
      "--similarity <f>",
      "ROUGE-L at or above which a task is a near copy of a kept one",
      numArg("--similarity", 0.01, 1),
      0.7,
    )
    .option("--seed <n>", "seed of the example choice", intArg("--seed", 0, 2 ** 32 - 1), 0)
    .option("--json", "print a JSON summary")
    .action(async (flags: SelfInstructFlags) => {
      // The output is appended to and resumed from (the run checks that it is its own).
      checkOutputs({
        inputs: flags.seeds === undefined ? [] : [{ path: flags.seeds, name: "--seeds" }],
        outputs: [
          { path: flags.out, flag: "--out", existing: "caller" },
          { path: statePath(flags.out), flag: "its state file", existing: "caller" },
        ],
      });
      let apiKey: string | undefined;
      if (flags.apiKeyEnv !== undefined) {
        apiKey = process.env[flags.apiKeyEnv];
        if (apiKey === undefined || apiKey === "") {
          throw new UserError(`--api-key-env: the environment variable ${flags.apiKeyEnv} is not set`);
        }
      }
      if (flags.listLength <= flags.examples) {
        throw new UserError(
          `--list-length (${flags.listLength}) must be larger than --examples (${flags.examples})`,
        );
      }
      const teacher = new TeacherClient({
        url: flags.teacher,
        model: flags.model,
        apiKey,
        timeoutMs: flags.timeout * 1000,
        retries: flags.retries,
        rpm: flags.rpm,
        tpm: flags.tpm,
      });
      const seeds = await loadSeedTasks(flags.seeds);
      const progress = new Progress(
        "self-instruct",
        flags.num,
        "kept",
        process.stderr.isTTY === true && !flags.json,
        true,
      );
      let shown: number | undefined;
      const interruption = new Interruption();
      let summary: Awaited<ReturnType<typeof selfInstruct>>;
      try {
        summary = await selfInstruct({
          teacher,
          seeds,
          num: flags.num,
          out: flags.out,
          concurrency: flags.concurrency,
          examplesPerPrompt: flags.examples,
          listLength: flags.listLength,
          maxTokens: flags.maxTokens,
          temperature: flags.temperature,
          topP: flags.topP,
          rougeThreshold: flags.similarity,
          seed: flags.seed,
          priceIn: flags.priceIn,
          priceOut: flags.priceOut,
          signal: interruption.signal,
          onProgress: (state) => {
            const kept = Math.min(state.kept, flags.num);
            // The first call gives the resumed counts: shown, but not part of the rate and ETA.
            if (shown === undefined) progress.startAt(kept);
            progress.tick(kept - (shown ?? kept), { detail: detail(state, flags) });
            shown = kept;
          },
        });
      } finally {
        interruption.dispose();
        progress.done();
      }
      if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else {
        const tokens = `${summary.promptTokens} prompt + ${summary.completionTokens} completion tokens${summary.tokensEstimated ? " (some estimated)" : ""}`;
        process.stdout.write(
          `${flags.out}: ${summary.kept}/${summary.target} tasks (${summary.keptNow} new${summary.resumed ? ", resumed" : ""}); ` +
            `${summary.replies} replies, ${summary.candidates} candidates, rejected: ${describeRejected(summary)}; ` +
            `${tokens}, cost ${summary.cost.toFixed(4)}${summary.retries ? `; ${summary.retries} retries (${describeCounts(summary.retriesByReason)})` : ""}\n`,
        );
      }
      if (summary.stopped) {
        process.stderr.write(`smallhammer: stopped; run the same command again to resume\n`);
        interruption.setExitStatus();
      }
    });
}

function detail(state: SelfInstructState, flags: SelfInstructFlags): string {
  const tokens = state.promptTokens + state.completionTokens;
  const cost = (state.promptTokens * flags.priceIn + state.completionTokens * flags.priceOut) / 1e6;
  const rejected = Object.values(state.rejected).reduce((a, b) => a + (b ?? 0), 0);
  const retries = state.retries > 0 ? ` | ${state.retries} retries` : "";
  return `rejected ${rejected} (${describeRejected(state)}) | ${tokens} tokens | cost ${cost.toFixed(4)}${retries}`;
}
