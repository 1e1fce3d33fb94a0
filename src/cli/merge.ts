import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Command } from "commander";
import { readGgufHeader } from "../formats/gguf.js";
import { llamaConfigFromMetadata, metadataGetter } from "../model/config.js";
import { type LoraAdapter, mergeLora, readLoraGguf, readPeftAdapter } from "../model/lora.js";
import { checkOutputs } from "../util/output-path.js";
import { FORCE_HELP, numArg } from "./options.js";

/** Reads an adapter given as a GGUF LoRA file or a PEFT directory (which needs the base's heads). */
export function readAdapter(path: string, basePath: string): LoraAdapter {
  if (statSync(path, { throwIfNoEntry: false })?.isDirectory()) {
    const header = readGgufHeader(basePath);
    const config = llamaConfigFromMetadata(metadataGetter(header), basePath, 0);
    return readPeftAdapter(path, config.heads, config.kvHeads);
  }
  return readLoraGguf(path);
}

interface MergeFlags {
  base: string;
  adapter: string;
  out: string;
  scale: number;
  json?: boolean;
  force?: boolean;
}

export function registerMerge(program: Command) {
  program
    .command("merge")
    .description("write base + LoRA adapter as one model GGUF")
    .requiredOption("--base <file>", "base model GGUF")
    .requiredOption("--adapter <path>", "LoRA adapter: a GGUF adapter file or a PEFT directory")
    .requiredOption("--out <file>", "output model GGUF")
    .option("--scale <s>", "multiplies the adapter's alpha/rank", numArg("--scale", 0), 1)
    .option("--json", "print a JSON summary")
    .option("--force", FORCE_HELP)
    .action((flags: MergeFlags) => {
      checkOutputs({
        inputs: [
          { path: flags.base, name: "--base" },
          { path: flags.adapter, name: "--adapter" },
          // A PEFT adapter is a directory: none of its files may be the output either.
          ...adapterFiles(flags.adapter).map((path) => ({ path, name: "the adapter file" })),
        ],
        outputs: [{ path: flags.out, flag: "--out" }],
        force: flags.force,
      });
      const adapter = readAdapter(flags.adapter, flags.base);
      const summary = mergeLora(flags.base, adapter, flags.out, {
        scale: flags.scale,
        progress: process.stderr.isTTY && !flags.json,
      });
      if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else {
        const widened = summary.widened.length ? `; written as f32: ${summary.widened.join(", ")}` : "";
        const template =
          summary.chatTemplate === "none"
            ? "no chat template"
            : `chat template from the ${summary.chatTemplate}`;
        process.stdout.write(
          `${flags.out}: merged ${summary.merged} adapted tensors, ${template}${widened}\n`,
        );
      }
    });
}

/** The files of an adapter directory (none for an adapter file). */
function adapterFiles(path: string): string[] {
  if (!statSync(path, { throwIfNoEntry: false })?.isDirectory()) return [];
  return readdirSync(path).map((name) => join(path, name));
}
