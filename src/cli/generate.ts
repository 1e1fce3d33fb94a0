import type { Command } from "commander";
import { AbortError } from "../errors.js";
import { loadModel } from "../model/model.js";
import { addConstraintOptions, type ConstraintFlags, constraintOptions } from "./grammar-options.js";
import {
  addModelOptions,
  addSamplingOptions,
  intArg,
  type ModelFlags,
  modelOptions,
  type SamplingFlags,
  samplerOptions,
} from "./options.js";

interface GenerateFlags extends SamplingFlags, ModelFlags, ConstraintFlags {
  prompt: string;
  n: number;
  json?: boolean;
}

export function registerGenerate(program: Command) {
  const cmd = program
    .command("generate")
    .description("continue a prompt, streaming the text to stdout")
    .requiredOption("-p, --prompt <text>", "prompt text")
    .option("-n, --n-predict <n>", "tokens to generate", intArg("-n", 1), 128)
    .option("--json", "print one JSON object with the text and timings instead of streaming");
  addModelOptions(cmd);
  addSamplingOptions(cmd);
  addConstraintOptions(cmd);
  cmd.action(async (flags: GenerateFlags & { nPredict: number }) => {
    const constraint = constraintOptions(flags); // a bad grammar fails before the model loads
    // --template does not change a plain continuation, but a bad name is still an error.
    const model = await loadModel(flags.model, modelOptions(flags));
    try {
      const controller = new AbortController();
      const onSigint = () => controller.abort();
      process.once("SIGINT", onSigint);
      let info: { promptTokens: number; completionTokens: number; finishReason: string } | undefined;
      const t0 = performance.now();
      let text = "";
      try {
        for await (const piece of model.generate(flags.prompt, {
          ...samplerOptions(flags),
          ...constraint,
          maxTokens: flags.nPredict,
          signal: controller.signal,
          onDone: (i) => {
            info = i;
          },
        })) {
          if (flags.json) text += piece;
          else process.stdout.write(piece);
        }
      } catch (e) {
        if (!(e instanceof AbortError)) throw e; // Ctrl-C: what was generated stays
      }
      process.off("SIGINT", onSigint);
      const seconds = (performance.now() - t0) / 1000;
      if (flags.json) {
        process.stdout.write(`${JSON.stringify({ text, ...info, seconds })}\n`);
      } else {
        process.stdout.write("\n");
        if (info && process.stderr.isTTY) {
          process.stderr.write(
            `[${info.promptTokens} prompt + ${info.completionTokens} generated tokens in ${seconds.toFixed(2)} s, ${info.finishReason}]\n`,
          );
        }
      }
    } finally {
      await model.dispose();
    }
  });
}
