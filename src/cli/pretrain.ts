import type { Command } from "commander";
import { UserError } from "../errors.js";
import type { LlamaConfig } from "../model/config.js";
import type { TrainMemory } from "../train/model.js";
import {
  finishedPretraining,
  type OpenedPretrainData,
  type PretrainEvent,
  type PretrainSettings,
  type PretrainSummary,
  pretrain,
  pretrainPlan,
  readModelShape,
  readRun,
  resumePretraining,
} from "../train/pretrain.js";
import { checkOutputs } from "../util/output-path.js";
import { Interruption } from "./interrupt.js";
import { intArg, numArg, threadsArg } from "./options.js";
import { RunProgress } from "./run-progress.js";

interface PretrainFlags {
  model?: string;
  data?: string;
  out?: string;
  resume?: string;
  steps?: number;
  tokens?: number;
  batch: number;
  seq: number;
  accum: number;
  lr: number;
  minLr?: number;
  warmup?: number;
  weightDecay: number;
  gradClip: number;
  seed: number;
  recompute?: boolean;
  evalEvery: number;
  evalBatches: number;
  sampleEvery: number;
  sampleTokens: number;
  checkpointEvery: number;
  threads?: number;
  json?: boolean;
}

const mib = (b: number) => (b / 1048576).toFixed(1);
const millions = (n: number) => `${(n / 1e6).toFixed(2)}M`;

function describeMemory(m: TrainMemory): string {
  return `${mib(m.total)} MiB (weights ${mib(m.weights)}, gradients ${mib(m.gradients)}, optimizer ${mib(m.optimizer)}, activations ${mib(m.activations)}, scratch ${mib(m.scratch)})`;
}

/** Flags that only a new run takes (a resumed run keeps its own settings; --steps or --tokens extend it). */
const NEW_RUN_FLAGS = [
  "model",
  "out",
  "batch",
  "seq",
  "accum",
  "lr",
  "minLr",
  "warmup",
  "weightDecay",
  "gradClip",
  "seed",
  "recompute",
  "evalEvery",
  "evalBatches",
  "sampleEvery",
  "sampleTokens",
  "checkpointEvery",
];

/**
 * Registers `pretrain`. `openData` opens a --data directory (a token cache: train and validation
 * splits and the tokenizer that made them).
 */
export function registerPretrain(program: Command, openData: (dir: string) => Promise<OpenedPretrainData>) {
  const cmd = program
    .command("pretrain")
    .description("train a Llama model from scratch on a token cache")
    .option("--model <preset|file>", "model shape: tiny, small, 15m, 42m, 110m, or a config.json")
    .option("--data <dir>", "token cache directory, made by `data tokenize`")
    .option("--out <dir>", "run directory for checkpoint.gguf, metrics.jsonl, samples.jsonl, config.json")
    .option("--resume <dir>", "continue the run in this directory from its checkpoint")
    .option(
      "--steps <n>",
      "optimizer steps (with --resume: a new total, to extend the run)",
      intArg("--steps", 1),
    )
    .option("--tokens <n>", "tokens to train on (sets the steps; with --resume too)", intArg("--tokens", 1))
    .option("--batch <n>", "sequences per micro-batch", intArg("--batch", 1), 8)
    .option("--seq <n>", "tokens per sequence", intArg("--seq", 1), 256)
    .option("--accum <n>", "micro-batches per optimizer step", intArg("--accum", 1), 1)
    .option("--lr <x>", "peak learning rate", numArg("--lr", 0), 1e-3)
    .option("--min-lr <x>", "learning rate at the end of the cosine (default: lr/10)", numArg("--min-lr", 0))
    .option(
      "--warmup <n>",
      "warmup steps (default: a tenth of the steps, at most 100)",
      intArg("--warmup", 0),
    )
    .option("--weight-decay <x>", "AdamW weight decay of the matrices", numArg("--weight-decay", 0), 0.1)
    .option("--grad-clip <x>", "largest global gradient norm (0 = off)", numArg("--grad-clip", 0), 1)
    .option(
      "--seed <n>",
      "seed of the initial weights and the data order",
      intArg("--seed", 0, 2 ** 32 - 1),
      1337,
    )
    .option(
      "--recompute",
      "recompute each layer's activations in the backward pass (less memory, ~30% slower)",
    )
    .option(
      "--eval-every <n>",
      "steps between validation losses (0 = at the end only)",
      intArg("--eval-every", 0),
      100,
    )
    .option("--eval-batches <n>", "micro-batches per validation", intArg("--eval-batches", 1), 8)
    .option(
      "--sample-every <n>",
      "steps between sample generations (0 = none)",
      intArg("--sample-every", 0),
      0,
    )
    .option("--sample-tokens <n>", "tokens per sample", intArg("--sample-tokens", 1), 64)
    .option(
      "--checkpoint-every <n>",
      "steps between checkpoints (0 = at the end only)",
      intArg("--checkpoint-every", 0),
      100,
    )
    .option("-t, --threads <n>", "compute threads (default: all cores)", threadsArg)
    .option("--json", "print a JSON summary instead of text");
  cmd.action(async (flags: PretrainFlags) => {
    const progress = new RunProgress("pretrain", Boolean(flags.json), flags.resume ?? flags.out);
    const out = progress.print;
    let described = false;
    const describe = (c: LlamaConfig, parameters: number, memory: TrainMemory) => {
      out(
        `model: ${millions(parameters)} parameters (dim ${c.dim}, ${c.layers} layers, ${c.heads} heads, ${c.kvHeads} kv heads, ffn ${c.ffn}, vocab ${c.vocab}, context ${c.contextLength})`,
      );
      out(`memory: ${describeMemory(memory)}`);
      described = true;
    };
    const onEvent = (e: PretrainEvent) => {
      if (e.type === "start" && !described) describe(e.config, e.parameters, e.memory);
      progress.onEvent(e);
    };
    const interruption = new Interruption();
    let summary: PretrainSummary;
    try {
      if (flags.resume) {
        const given = NEW_RUN_FLAGS.filter((k) => cmd.getOptionValueSource(k) === "cli");
        if (given.length > 0) {
          throw new UserError(
            `--resume continues a run with its own settings; drop --${given[0]!.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`,
          );
        }
        const change = { steps: flags.steps, tokens: flags.tokens };
        // A finished run says so without opening its data (which may be gone by now).
        const finished = finishedPretraining(flags.resume, change);
        if (finished) {
          summary = finished;
        } else {
          const data = await openData(flags.data ?? readRun(flags.resume).data);
          try {
            summary = await resumePretraining(flags.resume, data, {
              ...change,
              threads: flags.threads,
              signal: interruption.signal,
              onEvent,
            });
          } finally {
            data.close();
          }
        }
      } else {
        if (!flags.model) throw new UserError("--model is required (or --resume)");
        if (!flags.data) throw new UserError("--data is required (or --resume)");
        if (!flags.out) throw new UserError("--out is required (or --resume)");
        checkOutputs({
          inputs: [
            { path: flags.data, name: "--data" },
            { path: flags.model, name: "--model" },
          ],
          // An existing run directory is the trainer's to check (it refuses one holding a run).
          outputs: [{ path: flags.out, flag: "--out", kind: "directory", existing: "caller" }],
        });
        if (flags.steps === undefined && flags.tokens === undefined)
          throw new UserError("give --steps or --tokens");
        if (flags.steps !== undefined && flags.tokens !== undefined)
          throw new UserError("give --steps or --tokens, not both");
        const settings: PretrainSettings = {
          shape: readModelShape(flags.model),
          steps: flags.steps,
          tokens: flags.tokens,
          batch: flags.batch,
          seq: flags.seq,
          accumulation: flags.accum,
          lr: flags.lr,
          minLr: flags.minLr,
          warmupSteps: flags.warmup,
          weightDecay: flags.weightDecay,
          gradClip: flags.gradClip,
          seed: flags.seed,
          recompute: flags.recompute,
          evalEvery: flags.evalEvery,
          evalBatches: flags.evalBatches,
          sampleEvery: flags.sampleEvery,
          sampleTokens: flags.sampleTokens,
          checkpointEvery: flags.checkpointEvery,
        };
        const data = await openData(flags.data);
        try {
          // The estimate first; creating the model then refuses one that does not fit, naming it.
          const plan = pretrainPlan(settings, data.vocab, flags.threads);
          describe(plan.config, plan.parameters, plan.memory);
          summary = await pretrain(settings, data, flags.out, {
            threads: flags.threads,
            signal: interruption.signal,
            onEvent,
          });
        } finally {
          data.close();
        }
      }
    } finally {
      interruption.dispose();
      progress.done();
    }
    if (summary.interrupted) interruption.setExitStatus();
    if (flags.json) {
      const report = progress.reportPath === undefined ? {} : { report: progress.reportPath };
      process.stdout.write(`${JSON.stringify({ ...summary, ...report })}\n`);
      return;
    }
    const reportLine = progress.reportLine();
    if (summary.alreadyDone) {
      out(
        `${summary.run} is finished: ${summary.step} of ${summary.steps} steps; pass --steps N above ${summary.step} to extend it`,
      );
    } else if (summary.interrupted) {
      out(`interrupted after step ${summary.step} of ${summary.steps}: saved ${summary.checkpoint}`);
      if (reportLine) out(reportLine);
      out(`continue with: smallhammer pretrain --resume ${summary.run}`);
    } else {
      const val = summary.valLoss !== undefined ? `, validation loss ${summary.valLoss.toFixed(4)}` : "";
      out(`done: ${summary.steps} steps, loss ${summary.loss.toFixed(4)}${val}; saved ${summary.checkpoint}`);
      if (reportLine) out(reportLine);
    }
  });
}
