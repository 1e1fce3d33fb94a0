import type { Command } from "commander";
import { quantizeModel } from "../quant/quantize-model.js";
import { checkOutputs } from "../util/output-path.js";
import { FORCE_HELP } from "./options.js";

interface QuantizeFlags {
  type: string;
  json?: boolean;
  force?: boolean;
}

export function registerQuantize(program: Command) {
  program
    .command("quantize")
    .description("rewrite a GGUF model with its weight matrices in a smaller type (norm weights stay f32)")
    .argument("<in>", "input GGUF model")
    .argument("<out>", "output GGUF model")
    .requiredOption("--type <type>", "target type: f16, q8_0, q4_0, q4_1, q5_0, q5_1")
    .option("--json", "print a JSON summary")
    .option("--force", FORCE_HELP)
    .action(async (input: string, output: string, flags: QuantizeFlags) => {
      checkOutputs({ inputs: [input], outputs: [output], force: flags.force });
      const summary = await quantizeModel(input, output, flags.type, {
        onProgress: process.stderr.isTTY && !flags.json ? "bar" : undefined,
      });
      if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else {
        const mb = (b: number) => (b / 1048576).toFixed(1);
        process.stdout.write(
          `${output}: ${summary.quantized} tensors to ${summary.type}, ${summary.kept} kept; ${mb(summary.inputBytes)} MiB -> ${mb(summary.outputBytes)} MiB\n`,
        );
      }
    });
}
