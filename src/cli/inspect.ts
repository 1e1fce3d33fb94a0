import type { Command } from "commander";
import { escapeJsonForDisplay } from "../formats/escape.js";
import { inspectGguf } from "../model/inspect.js";
import { intArg } from "./options.js";

export function registerInspect(program: Command) {
  program
    .command("inspect")
    .description("show a GGUF file's architecture, metadata, tensors and the memory needed to run it")
    .argument("<file>", "GGUF file")
    .option("--json", "print the report as JSON")
    .option(
      "-c, --ctx <n>",
      "context size for the memory estimate (default: the model's, at most 4096)",
      intArg("--ctx", 1),
    )
    .action((file: string, flags: { json?: boolean; ctx?: number }) => {
      const report = inspectGguf(file, { contextSize: flags.ctx });
      if (flags.json) process.stdout.write(`${escapeJsonForDisplay(JSON.stringify(report.json, null, 2))}\n`);
      else process.stdout.write(report.text);
      // A file with impossible hyper-parameters is shown, then refused like every other command does.
      if (report.problem) throw report.problem;
    });
}
