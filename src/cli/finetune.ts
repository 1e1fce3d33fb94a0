import type { Command } from "commander";
import { UserError } from "../errors.js";
import {
  type FinetuneEvent,
  type FinetuneMethod,
  type FinetuneSettings,
  type FinetuneSummary,
  finetune,
  finetunePlan,
  resumeFinetune,
} from "../train/finetune.js";
import type { TrainMemory } from "../train/model.js";
import { checkOutputs } from "../util/output-path.js";
import { describeSkipped } from "./data-options.js";
import { Interruption } from "./interrupt.js";
import { intArg, numArg, threadsArg } from "./options.js";
import { RunProgress } from "./run-progress.js";

interface FinetuneFlags {
  base?: string;
  data?: string;
  out?: string;
  resume?: string;
  template?: string;
  format?: string;
  skipInvalid?: boolean;
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
  minLr?: number;
  warmup?: number;
  weightDecay: number;
  gradClip: number;
  seed: number;
  valFraction: number;
  packing: boolean;
  trainOnPrompt?: boolean;
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

/** Flags that only a new run takes (a resumed run keeps its own settings; --epochs or --steps extend it). */
const NEW_RUN_FLAGS = [
  "base",
  "data",
  "out",
  "template",
  "format",
  "skipInvalid",
  "method",
  "rank",
  "alpha",
  "dropout",
  "targets",
  "baseType",
  "batch",
  "seq",
  "accum",
  "lr",
  "minLr",
  "warmup",
  "weightDecay",
  "gradClip",
  "seed",
  "valFraction",
  "packing",
  "trainOnPrompt",
  "recompute",
  "evalEvery",
  "evalBatches",
  "sampleEvery",
  "sampleTokens",
  "checkpointEvery",
];

export function registerFinetune(program: Command) {
  const cmd = program
    .command("finetune")
    .description("fine-tune a Llama GGUF on instructions or conversations: LoRA, QLoRA or every weight")
    .option("--base <model.gguf>", "the base model")
    .option(
      "--data <file>",
      "dataset: Alpaca, ShareGPT, chat messages or prompt/completion (JSONL or JSON array)",
    )
    .option("--out <dir>", "run directory: checkpoint, metrics, and at the end the adapter or model")
    .option("--resume <dir>", "continue the run in this directory from its checkpoint")
    .option(
      "--template <name>",
      "chat template: alpaca, vicuna_v1.1, llama-2, chatml (default: the base's own)",
    )
    .option("--format <format>", "dataset format: alpaca, sharegpt, messages, completion (default: detected)")
    .option("--skip-invalid", "skip invalid records and count them instead of stopping at the first")
    .option("--method <m>", "lora, qlora (frozen base quantized in memory) or full", "lora")
    .option("--rank <r>", "LoRA rank (a multiple of 4)", intArg("--rank", 4, 4096), 8)
    .option(
      "--alpha <a>",
      "LoRA alpha; updates are scaled by alpha/rank",
      numArg("--alpha", Number.MIN_VALUE),
      16,
    )
    .option("--dropout <p>", "dropout on the LoRA input path", numArg("--dropout", 0, 0.99), 0.05)
    .option("--targets <list>", "projections to adapt: q,k,v,o,gate,up,down or all", "q,k,v,o,gate,up,down")
    .option("--base-type <type>", "QLoRA: q4_0 or q8_0 (default: the base's own quantization, else q4_0)")
    .option(
      "--epochs <n>",
      "passes over the training examples (default: 1; with --resume: a new total, to extend the run)",
      intArg("--epochs", 1),
    )
    .option("--steps <n>", "optimizer steps (instead of --epochs; with --resume too)", intArg("--steps", 1))
    .option("--batch <n>", "sequences per micro-batch", intArg("--batch", 1), 4)
    .option("--seq <n>", "tokens per sequence (longer examples are cut)", intArg("--seq", 2), 512)
    .option("--accum <n>", "micro-batches per optimizer step", intArg("--accum", 1), 1)
    .option("--lr <x>", "peak learning rate (default: 2e-4 for LoRA/QLoRA, 2e-5 for full)", numArg("--lr", 0))
    .option("--min-lr <x>", "learning rate at the end of the cosine (default: lr/10)", numArg("--min-lr", 0))
    .option(
      "--warmup <n>",
      "warmup steps (default: a tenth of the steps, at most 100)",
      intArg("--warmup", 0),
    )
    .option("--weight-decay <x>", "AdamW weight decay", numArg("--weight-decay", 0), 0)
    .option("--grad-clip <x>", "largest global gradient norm (0 = off)", numArg("--grad-clip", 0), 1)
    .option(
      "--seed <n>",
      "seed of the data order, split, LoRA init and dropout",
      intArg("--seed", 0, 2 ** 32 - 1),
      1337,
    )
    .option(
      "--val-fraction <x>",
      "share of the examples held out for validation",
      numArg("--val-fraction", 0, 0.99),
      0.05,
    )
    .option("--no-packing", "one example per sequence, padded, instead of packing several")
    .option("--train-on-prompt", "train on the prompt tokens too, not only on the assistant replies")
    .option("--recompute", "recompute each layer's activations in the backward pass (less memory)")
    .option(
      "--eval-every <n>",
      "steps between validation losses (0 = at the end only)",
      intArg("--eval-every", 0),
      50,
    )
    .option("--eval-batches <n>", "most micro-batches per validation", intArg("--eval-batches", 1), 20)
    .option(
      "--sample-every <n>",
      "steps between sample replies to the first validation prompt (0 = none)",
      intArg("--sample-every", 0),
      0,
    )
    .option("--sample-tokens <n>", "tokens per sample reply", intArg("--sample-tokens", 1), 64)
    .option(
      "--checkpoint-every <n>",
      "steps between checkpoints (0 = at the end only)",
      intArg("--checkpoint-every", 0),
      100,
    )
    .option("-t, --threads <n>", "compute threads (default: all cores)", threadsArg)
    .option("--json", "print a JSON summary instead of text");
  cmd.action(async (flags: FinetuneFlags) => {
    const progress = new RunProgress("finetune", Boolean(flags.json), flags.resume ?? flags.out);
    const out = progress.print;
    const onEvent = (e: FinetuneEvent) => {
      switch (e.type) {
        case "data": {
          const skipped = Object.values(e.skipped).reduce((a, b) => a + b, 0);
          const skipText =
            skipped > 0
              ? `; skipped ${skipped} (${describeSkipped(new Map(Object.entries(e.skipped)))})`
              : "";
          out(
            `data: ${e.train} training examples (${e.trainedTokens} trained tokens), ${e.validation} for validation${skipText}; ${e.steps} steps`,
          );
          break;
        }
        default:
          progress.onEvent(e);
      }
    };
    const interruption = new Interruption();
    let summary: FinetuneSummary;
    try {
      if (flags.resume) {
        const given = NEW_RUN_FLAGS.filter((k) => cmd.getOptionValueSource(k) === "cli");
        if (given.length > 0) {
          const flag = given[0]!.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
          throw new UserError(
            `--resume continues a run with its own settings; drop --${flag === "packing" ? "no-packing" : flag}`,
          );
        }
        summary = await resumeFinetune(flags.resume, {
          steps: flags.steps,
          epochs: flags.epochs,
          threads: flags.threads,
          signal: interruption.signal,
          onEvent,
        });
      } else {
        if (!flags.base) throw new UserError("--base is required (or --resume)");
        if (!flags.data) throw new UserError("--data is required (or --resume)");
        if (!flags.out) throw new UserError("--out is required (or --resume)");
        checkOutputs({
          inputs: [
            { path: flags.base, name: "--base" },
            { path: flags.data, name: "--data" },
          ],
          // An existing run directory is the trainer's to check (it refuses one holding a run).
          outputs: [{ path: flags.out, flag: "--out", kind: "directory", existing: "caller" }],
        });
        const settings: FinetuneSettings = {
          base: flags.base,
          data: flags.data,
          template: flags.template,
          format: flags.format,
          skipInvalid: flags.skipInvalid,
          method: flags.method as FinetuneMethod,
          rank: flags.rank,
          alpha: flags.alpha,
          dropout: flags.dropout,
          targets: flags.targets,
          baseType: flags.baseType,
          epochs: flags.epochs,
          steps: flags.steps,
          batch: flags.batch,
          seq: flags.seq,
          accumulation: flags.accum,
          lr: flags.lr,
          minLr: flags.minLr,
          warmupSteps: flags.warmup,
          weightDecay: flags.weightDecay,
          gradClip: flags.gradClip,
          seed: flags.seed,
          valFraction: flags.valFraction,
          packing: flags.packing,
          trainOnPrompt: flags.trainOnPrompt,
          recompute: flags.recompute,
          evalEvery: flags.evalEvery,
          evalBatches: flags.evalBatches,
          sampleEvery: flags.sampleEvery,
          sampleTokens: flags.sampleTokens,
          checkpointEvery: flags.checkpointEvery,
        };
        // The estimate first; loading the model then refuses one that does not fit, naming it.
        const plan = finetunePlan(settings, flags.threads);
        const c = plan.config;
        out(
          `base: ${millions(plan.parameters)} parameters (dim ${c.dim}, ${c.layers} layers, ${c.heads} heads, ${c.kvHeads} kv heads, ffn ${c.ffn}, vocab ${c.vocab}, context ${c.contextLength})`,
        );
        out(
          `${settings.method}: ${plan.trainable.toLocaleString("en-US")} trainable parameters (${((100 * plan.trainable) / plan.parameters).toFixed(2)}%)`,
        );
        out(`memory: ${describeMemory(plan.memory)}`);
        summary = await finetune({
          ...settings,
          out: flags.out,
          threads: flags.threads,
          signal: interruption.signal,
          onEvent,
        });
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
        `${summary.run} is finished: ${summary.step} of ${summary.steps} steps; pass --steps N above ${summary.step} (or more --epochs) to extend it`,
      );
      return;
    }
    if (summary.interrupted) {
      out(`interrupted after step ${summary.step} of ${summary.steps}: saved ${summary.checkpoint}`);
      if (reportLine) out(reportLine);
      out(`continue with: smallhammer finetune --resume ${summary.run}`);
      return;
    }
    const val = summary.valLoss !== undefined ? `, validation loss ${summary.valLoss.toFixed(4)}` : "";
    out(`done: ${summary.steps} steps, loss ${summary.loss.toFixed(4)}${val}`);
    if (summary.adapter) out(`wrote ${summary.adapter} (llama.cpp LoRA) and ${summary.peft}/ (PEFT)`);
    if (summary.model) out(`wrote ${summary.model}`);
    if (reportLine) out(reportLine);
  });
}
