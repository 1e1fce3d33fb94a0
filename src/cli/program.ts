import { Command } from "commander";
import { openPretrainData } from "../train/token-data.js";
import { registerChat } from "./chat.js";
import { registerConvert } from "./convert.js";
import { registerData } from "./data.js";
import { registerDemo } from "./demo.js";
import { registerEval } from "./eval.js";
import { addExamples } from "./examples.js";
import { registerExport } from "./export.js";
import { registerFinetune } from "./finetune.js";
import { registerGenerate } from "./generate.js";
import { registerImatrix } from "./imatrix.js";
import { registerInspect } from "./inspect.js";
import { registerMerge } from "./merge.js";
import { registerPerplexity } from "./perplexity.js";
import { registerPretrain } from "./pretrain.js";
import { registerQuantize } from "./quantize.js";
import { registerQuickstart } from "./quickstart.js";
import { registerReport } from "./report.js";
import { registerServe } from "./serve.js";
import { registerTokenizer } from "./tokenizer.js";

/** The `smallhammer` command with every subcommand registered (main.ts parses argv with it). */
export function buildProgram(): Command {
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
  registerImatrix(program);
  registerPerplexity(program);
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
  registerConvert(program);
  registerReport(program);
  addExamples(program);
  return program;
}
