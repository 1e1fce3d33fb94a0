import { statSync } from "node:fs";
import { availableParallelism } from "node:os";
import { type Command, InvalidArgumentError } from "commander";
import { readPeftAdapterFor } from "../convert/peft.js";
import { DEFAULT_SAMPLER_OPTIONS } from "../model/sampler.js";

/** Commander parser for an integer flag within [min, max]. */
export function intArg(name: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^-?\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}, got "${value}"`);
    }
    return n;
  };
}

/** Commander parser for a number flag within [min, max]. */
export function numArg(name: string, min: number, max = Number.POSITIVE_INFINITY) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === "" || !Number.isFinite(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${name} must be a number from ${min} to ${max}, got "${value}"`);
    }
    return n;
  };
}

/** Compute threads per core a command accepts: more only adds memory and contention. */
export const THREADS_PER_CORE = 4;

/**
 * Commander parser for --threads: 1 to THREADS_PER_CORE times the cores (each thread holds its own
 * scratch memory, so a thousand threads on two cores fill the memory before they compute).
 */
export function threadsArg(value: string): number {
  const n = intArg("--threads", 1)(value);
  const cores = availableParallelism();
  const most = THREADS_PER_CORE * cores;
  if (n > most) {
    throw new InvalidArgumentError(
      `--threads ${n} is more than this machine's ${cores} core${cores === 1 ? "" : "s"} can use (at most ${most}, ${THREADS_PER_CORE} per core)`,
    );
  }
  return n;
}

/** The -t, --threads option, parsed the same way for every command. */
export function addThreadsOption(cmd: Command): Command {
  return cmd.option("-t, --threads <n>", "compute threads (default: all cores)", threadsArg);
}

/** Help of --force, for the commands that replace an existing output file only when asked. */
export const FORCE_HELP = "replace an output file that exists already (never one of the inputs)";

export interface SamplingFlags {
  temp?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repeatPenalty?: number;
  seed?: number;
}

/** Sampling flags shared by generate and chat. */
export function addSamplingOptions(cmd: Command): Command {
  const d = DEFAULT_SAMPLER_OPTIONS;
  return cmd
    .option("--temp <t>", `temperature, 0 = greedy (default: ${d.temperature})`, numArg("--temp", 0, 100))
    .option(
      "--top-k <k>",
      `keep the k most likely tokens, 0 = off (default: ${d.topK})`,
      intArg("--top-k", 0),
    )
    .option("--top-p <p>", `nucleus sampling mass, 1 = off (default: ${d.topP})`, numArg("--top-p", 0, 1))
    .option(
      "--min-p <p>",
      `drop tokens below p times the top probability, 0 = off (default: ${d.minP})`,
      numArg("--min-p", 0, 1),
    )
    .option(
      "--repeat-penalty <r>",
      `penalty for recently used tokens, 1 = off (default: ${d.repeatPenalty})`,
      numArg("--repeat-penalty", 0),
    )
    .option("--seed <s>", "random seed (same seed, same text)", intArg("--seed", 0, 2 ** 32 - 1));
}

export function samplerOptions(f: SamplingFlags) {
  return {
    temperature: f.temp,
    topK: f.topK,
    topP: f.topP,
    minP: f.minP,
    repeatPenalty: f.repeatPenalty,
    seed: f.seed,
  };
}

/** Model loading flags shared by generate, chat and serve. */
export function addModelOptions(cmd: Command): Command {
  return addThreadsOption(cmd.requiredOption("-m, --model <file>", "GGUF model file"))
    .option(
      "-c, --ctx <n>",
      "context size in tokens (default: the model's, at most 4096)",
      intArg("--ctx", 1),
    )
    .option("--template <name>", "chat template: alpaca, vicuna_v1.1, llama-2, chatml (default: the file's)")
    .option(
      "--lora <file>",
      "apply a LoRA adapter at run time: a GGUF adapter or a PEFT directory (repeatable)",
      (value: string, previous: string[] = []) => [...previous, value],
    )
    .option("--lora-scale <s>", "scale of the LoRA adapters (default: 1)", numArg("--lora-scale", 0));
}

export interface ModelFlags {
  model: string;
  threads?: number;
  ctx?: number;
  template?: string;
  lora?: string[];
  loraScale?: number;
}

/** loadModel options from the shared model flags (the model on the calling thread). */
export function modelOptions(f: ModelFlags) {
  return {
    worker: false as const,
    threads: f.threads,
    contextSize: f.ctx,
    template: f.template,
    // A PEFT directory is read against the model it adapts (its q/k row order, its shapes).
    lora: f.lora?.map((path) => ({
      adapter: statSync(path, { throwIfNoEntry: false })?.isDirectory()
        ? readPeftAdapterFor(path, f.model)
        : path,
      scale: f.loraScale,
    })),
  };
}
