import type { Command } from "commander";
import { loadModel } from "../model/model.js";
import { runQuickstart } from "../quickstart.js";
import type { PretrainEvent } from "../train/pretrain.js";
import { Progress } from "../util/progress.js";
import { runChat } from "./chat.js";
import { formatTaskScores } from "./eval.js";
import { intArg, threadsArg } from "./options.js";

export function registerQuickstart(program: Command) {
  program
    .command("quickstart")
    .description(
      "the whole recipe on the built-in synthetic world: tokenizer, pretraining, fine-tuning, q4_0, accuracy table, then chat",
    )
    .option(
      "--dir <dir>",
      "where every file goes (an earlier quickstart's files there are replaced)",
      "smallhammer-quickstart",
    )
    .option("--resume", "reuse the stages an earlier run in --dir finished with the same settings")
    .option("-t, --threads <n>", "compute threads (default: all cores)", threadsArg)
    .option("--pretrain-steps <n>", "pretraining steps", intArg("--pretrain-steps", 1), 1400)
    .option("--finetune-steps <n>", "fine-tuning steps", intArg("--finetune-steps", 1), 300)
    .option("--eval-per-family <n>", "held-out tasks per family", intArg("--eval-per-family", 1, 1000), 12)
    .option("--no-chat", "do not open a chat on the result")
    .option("--json", "print a JSON summary instead of text")
    .action(
      async (flags: {
        dir: string;
        threads?: number;
        pretrainSteps: number;
        finetuneSteps: number;
        evalPerFamily: number;
        chat: boolean;
        resume?: boolean;
        json?: boolean;
      }) => {
        const say = (line: string) => {
          if (!flags.json) process.stdout.write(`${line}\n`);
        };
        say(`smallhammer quickstart: the small-model recipe end to end, files in ${flags.dir}/`);
        let bar: Progress | undefined;
        let barSteps = 0;
        const result = await runQuickstart({
          dir: flags.dir,
          threads: flags.threads,
          pretrainSteps: flags.pretrainSteps,
          finetuneSteps: flags.finetuneSteps,
          evalPerFamily: flags.evalPerFamily,
          resume: flags.resume,
          onStage: (s) => {
            if (s.seconds === undefined) {
              if (!flags.json && !process.stdout.isTTY) return;
              if (!flags.json) process.stdout.write(`${s.index}. ${s.name} ...\n`);
              return;
            }
            const took = s.reused ? "reused from the earlier run" : `${s.seconds.toFixed(1)} s`;
            if (s.reused && process.stdout.isTTY) say(`${s.index}. ${s.name}:`);
            say(`${process.stdout.isTTY ? "   " : `${s.index}. ${s.name}: `}${s.result} (${took})`);
          },
          onTrainEvent: (phase: "pretrain" | "finetune", e: PretrainEvent) => {
            if (flags.json || !process.stderr.isTTY) return;
            if (e.type === "start") {
              bar = new Progress(phase, e.steps, "steps | loss {loss} | {tokps} tok/s");
              barSteps = e.steps;
            } else if (e.type === "step") {
              bar?.tick(1, {
                loss: e.metrics.loss.toFixed(3),
                tokps: Math.round(e.tokensPerSecond).toString(),
              });
              if (e.metrics.step === barSteps) {
                bar?.done();
                bar = undefined;
              }
            }
          },
        });
        bar?.done();
        if (flags.json) {
          const score = (r: typeof result.scores.base) => ({
            accuracy: r.accuracy,
            byFamily: Object.fromEntries(Object.entries(r.byFamily).map(([f, v]) => [f, v.accuracy])),
          });
          process.stdout.write(
            `${JSON.stringify({
              files: result.files,
              pretrainLoss: result.pretrainLoss,
              pretrainValLoss: result.pretrainValLoss,
              finetuneLoss: result.finetuneLoss,
              scores: {
                base: score(result.scores.base),
                tuned: score(result.scores.tuned),
                tunedQ4: score(result.scores.tunedQ4),
              },
              seconds: result.seconds,
            })}\n`,
          );
          return;
        }
        say("\nexact-match accuracy on held-out tasks (greedy):");
        say(
          formatTaskScores([
            { label: "base f32", result: result.scores.base },
            { label: "tuned f32", result: result.scores.tuned },
            { label: "tuned q4_0", result: result.scores.tunedQ4 },
          ]).trimEnd(),
        );
        say(`\ndone in ${result.seconds.toFixed(0)} s. Try: npx smallhammer chat -m ${result.files.tunedQ4}`);
        say(
          `training reports (open them in a browser): ${result.files.pretrainReport} and ${result.files.finetuneReport}`,
        );
        say(`evaluation report of the three models: ${result.files.evalReport}`);
        if (!flags.chat || !process.stdin.isTTY) return;
        say('opening a chat on the tuned q4_0 model (ask it, e.g., "What is 7 + 5?")');
        const model = await loadModel(result.files.tunedQ4, { threads: flags.threads, worker: false });
        try {
          await runChat(model, { nPredict: 32, temp: 0 });
        } finally {
          await model.dispose();
        }
      },
    );
}
