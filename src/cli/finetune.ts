import type { Command } from "commander";
import { UserError } from "../errors.js";
import { type FinetuneMethod, type FinetuneSummary, finetune, resumeFinetune } from "../train/finetune.js";
import type { PretrainEvent } from "../train/pretrain.js";
import { Progress } from "../util/progress.js";
import { intArg, numArg } from "./options.js";

interface FinetuneFlags {
  base?: string;
  data?: string;
  template?: string;
  format?: string;
  method: string;
  rank: number;
  alpha: number;
  dropout: number;
  targets: string;
  baseType?: string;
  epochs?: number;
  steps?: number;
  batch: number;
  seq: number;
  accum: number;
  lr?: number;
  warmup?: number;
  weightDecay?: number;
  gradClip?: number;
  seed: number;
  valFraction: number;
  packing: boolean;
  trainOnPrompt?: boolean;
  skipInvalid?: boolean;
  recompute?: boolean;
  evalEvery: number;
  checkpointEvery: number;
  out?: string;
  resume?: string;
  threads?: number;
  json?: boolean;
}

export function registerFinetune(program: Command) {
  program
    .command("finetune")
    .description("instruction-tune a model: LoRA, QLoRA (quantized frozen base) or full fine-tuning")
    .option("--base <file>", "base model GGUF")
    .option(
      "--data <file>",
      "dataset: Alpaca, ShareGPT, OpenAI messages or prompt/completion (JSON or JSONL)",
    )
    .option(
      "--template <name>",
      "chat template: alpaca, vicuna_v1.1, llama-2, chatml (default: the base's own)",
    )
    .option("--format <name>", "dataset format (default: detected)")
    .option("--method <m>", "lora, qlora or full", "lora")
    .option("--rank <r>", "LoRA rank (a multiple of 4)", intArg("--rank", 4, 4096), 8)
    .option("--alpha <a>", "LoRA alpha (the update is scaled by alpha/rank)", numArg("--alpha", 0), 16)
    .option("--dropout <p>", "LoRA dropout (only 0 is supported)", numArg("--dropout", 0, 1), 0)
    .option("--targets <list>", "projections to adapt: q,k,v,o,gate,up,down or all", "q,k,v,o,gate,up,down")
    .option("--base-type <t>", "QLoRA: how the frozen base is held, q4_0 or q8_0", "q4_0")
    .option("--epochs <n>", "passes over the training examples (default 1)", intArg("--epochs", 1))
    .option("--steps <n>", "optimizer steps (instead of --epochs)", intArg("--steps", 1))
    .option("--batch <n>", "rows per micro-batch", intArg("--batch", 1), 8)
    .option("--seq <n>", "tokens per row (examples are packed into rows)", intArg("--seq", 8), 512)
    .option("--accum <n>", "micro-batches per optimizer step", intArg("--accum", 1), 1)
    .option("--lr <x>", "peak learning rate (default 1e-3 for LoRA, 1e-4 for full)", numArg("--lr", 0))
    .option("--warmup <n>", "warmup steps", intArg("--warmup", 0))
    .option("--weight-decay <x>", "AdamW weight decay (default 0)", numArg("--weight-decay", 0))
    .option("--grad-clip <x>", "global gradient norm limit", numArg("--grad-clip", 0))
    .option(
      "--seed <s>",
      "seed of shuffling, initialization and the validation split",
      intArg("--seed", 0, 2 ** 32 - 1),
      1,
    )
    .option(
      "--val-fraction <f>",
      "share of examples held out for validation",
      numArg("--val-fraction", 0, 0.9),
      0.05,
    )
    .option("--no-packing", "one example per row instead of packing several")
    .option("--train-on-prompt", "train on the prompt tokens too")
    .option("--skip-invalid", "skip bad records (counted by reason) instead of stopping")
    .option("--recompute", "recompute activations in the backward pass (less memory)")
    .option("--eval-every <n>", "steps between validations (0: at the end)", intArg("--eval-every", 0), 0)
    .option(
      "--checkpoint-every <n>",
      "steps between checkpoints (0: at the end)",
      intArg("--checkpoint-every", 0),
      50,
    )
    .option("--out <dir>", "run directory")
    .option("--resume <dir>", "continue the run in this directory")
    .option("-t, --threads <n>", "compute threads (default: all cores)", intArg("--threads", 1, 1024))
    .option("--json", "print a JSON summary")
    .action(async (flags: FinetuneFlags) => {
      const say = (line: string) => {
        if (!flags.json) process.stdout.write(`${line}\n`);
      };
      let progress: Progress | undefined;
      const onEvent = (e: PretrainEvent) => {
        if (e.type === "start") {
          const c = e.config;
          say(
            `model: dim ${c.dim}, ${c.layers} layers, vocab ${c.vocab}; ${(e.parameters / 1e6).toFixed(3)}M trainable parameters; memory ${(e.memory.total / 1048576).toFixed(1)} MiB`,
          );
          say(`training: steps ${e.fromStep + 1} to ${e.steps} on ${e.threads} threads`);
          if (!flags.json && process.stderr.isTTY) {
            progress = new Progress("finetune", e.steps, "steps | loss {loss} | {tokps} tok/s");
            progress.tick(e.fromStep, { loss: "-", tokps: "-" });
          }
        } else if (e.type === "step") {
          progress?.tick(1, {
            loss: e.metrics.loss.toFixed(3),
            tokps: Math.round(e.tokensPerSecond).toString(),
          });
        } else if (e.type === "eval") say(`step ${e.step}: validation loss ${e.valLoss.toFixed(4)}`);
      };
      const controller = new AbortController();
      const onSigint = () => controller.abort();
      process.once("SIGINT", onSigint);
      let summary: FinetuneSummary;
      try {
        if (flags.resume) {
          summary = await resumeFinetune(flags.resume, {
            threads: flags.threads,
            signal: controller.signal,
            onEvent,
          });
        } else {
          if (!flags.base) throw new UserError("--base is required (or --resume)");
          if (!flags.data) throw new UserError("--data is required (or --resume)");
          if (!flags.out) throw new UserError("--out is required (or --resume)");
          summary = await finetune({
            base: flags.base,
            data: flags.data,
            template: flags.template,
            format: flags.format,
            skipInvalid: flags.skipInvalid,
            trainOnPrompt: flags.trainOnPrompt,
            method: flags.method as FinetuneMethod,
            rank: flags.rank,
            alpha: flags.alpha,
            dropout: flags.dropout,
            targets: flags.targets,
            baseType: flags.baseType as "q4_0" | "q8_0",
            epochs: flags.epochs,
            steps: flags.steps,
            batch: flags.batch,
            seq: flags.seq,
            accumulation: flags.accum,
            lr: flags.lr,
            warmupSteps: flags.warmup,
            weightDecay: flags.weightDecay,
            gradClip: flags.gradClip,
            seed: flags.seed,
            valFraction: flags.valFraction,
            packing: flags.packing,
            recompute: flags.recompute,
            evalEvery: flags.evalEvery,
            checkpointEvery: flags.checkpointEvery,
            out: flags.out,
            threads: flags.threads,
            signal: controller.signal,
            onEvent,
          });
        }
      } finally {
        progress?.done();
        process.off("SIGINT", onSigint);
      }
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(summary)}\n`);
        return;
      }
      if (summary.interrupted) {
        say(
          `interrupted at step ${summary.step}; continue with: smallhammer finetune --resume ${summary.run}`,
        );
        return;
      }
      say(
        `done: ${summary.step} steps, loss ${summary.loss.toFixed(4)}${summary.valLoss !== undefined ? `, validation ${summary.valLoss.toFixed(4)}` : ""}`,
      );
      const skipped = Object.entries(summary.examples.skipped).map(([r, n]) => `${n} ${r}`);
      say(
        `examples: ${summary.examples.train} train, ${summary.examples.validation} validation${skipped.length ? `; skipped ${skipped.join(", ")}` : ""}`,
      );
      if (summary.adapter) say(`adapter: ${summary.adapter} (llama.cpp --lora), ${summary.peft} (PEFT)`);
      if (summary.model) say(`model: ${summary.model}`);
    });
}
