import type { Command } from "commander";
import { checkpointPath, exportCheckpoint } from "../train/export.js";
import { checkOutputs } from "../util/output-path.js";
import { FORCE_HELP } from "./options.js";

export function registerExport(program: Command) {
  program
    .command("export")
    .description(
      "write the model of a training run (or checkpoint) as a GGUF that generate, chat and llama.cpp load",
    )
    .argument("<run>", "run directory (or its checkpoint.gguf)")
    .requiredOption("-o, --out <file>", "output GGUF model")
    .option("--type <type>", "tensor type: f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1", "f32")
    .option("--json", "print a JSON summary")
    .option("--force", FORCE_HELP)
    .action(async (run: string, flags: { out: string; type: string; json?: boolean; force?: boolean }) => {
      checkOutputs({
        inputs: [{ path: checkpointPath(run), name: "the checkpoint" }],
        outputs: [{ path: flags.out, flag: "--out" }],
        force: flags.force,
      });
      const summary = await exportCheckpoint(run, flags.out, flags.type);
      if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else {
        process.stdout.write(
          `${summary.out}: ${summary.type} model from step ${summary.step} of ${summary.checkpoint} (${(summary.bytes / 1048576).toFixed(1)} MiB)\n`,
        );
      }
    });
}
