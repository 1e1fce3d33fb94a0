#!/usr/bin/env node
import { Command, CommanderError } from "commander";
import { isUserError } from "../errors.js";
import { openPretrainData } from "../train/token-data.js";
import { registerChat } from "./chat.js";
import { registerData } from "./data.js";
import { registerDemo } from "./demo.js";
import { registerEval } from "./eval.js";
import { registerExport } from "./export.js";
import { registerFinetune } from "./finetune.js";
import { registerGenerate } from "./generate.js";
import { registerInspect } from "./inspect.js";
import { registerMerge } from "./merge.js";
import { registerPretrain } from "./pretrain.js";
import { registerQuantize } from "./quantize.js";
import { registerQuickstart } from "./quickstart.js";
import { registerServe } from "./serve.js";
import { registerTokenizer } from "./tokenizer.js";

const program = new Command("smallhammer")
  .description("Build, tune, shrink and run Llama-family language models on CPU")
  .version("0.1.0")
  .exitOverride()
  // Commander's own errors (unknown command or option, bad or missing flag value) are printed by
  // fail() as one line, like every other user error; help and --version still print as usual.
  .configureOutput({ outputError: () => {} });

registerInspect(program);
registerGenerate(program);
registerChat(program);
registerQuantize(program);
registerMerge(program);
registerFinetune(program);
registerTokenizer(program);
registerDemo(program);
registerQuickstart(program);
registerData(program);
registerServe(program);
registerEval(program);
registerPretrain(program, openPretrainData);
registerExport(program);

/** Prints a user error as one line and exits 2; anything else is a bug and keeps its stack. */
function fail(e: unknown): never {
  if (isUserError(e)) {
    process.stderr.write(`smallhammer: ${e.message}\n`);
    process.exit(2);
  }
  if (e instanceof CommanderError) {
    // Help and version output (also the help shown for a bare `smallhammer`) are already printed.
    if (e.exitCode === 0 || e.code === "commander.help" || e.code === "commander.helpDisplayed") {
      process.exit(e.exitCode === 0 ? 0 : 2);
    }
    const message = e.message.replace(/^error: /, "");
    process.stderr.write(`smallhammer: ${message} (see --help)\n`);
    process.exit(2);
  }
  throw e;
}

try {
  await program.parseAsync(process.argv);
} catch (e) {
  fail(e);
}
