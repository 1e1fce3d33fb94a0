import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Command } from "commander";
import { convertGgufToHf, type HfDtype } from "../convert/gguf-to-hf.js";
import { convertHfToGguf } from "../convert/hf-to-gguf.js";
import { convertLlama2cToGguf, isGgufFile } from "../convert/llama2c.js";
import { convertPeftToGguf } from "../convert/peft.js";
import { UserError } from "../errors.js";
import { FILE_TYPES } from "../quant/mixes.js";
import { checkOutputs } from "../util/output-path.js";
import { FORCE_HELP } from "./options.js";

interface ConvertFlags {
  out: string;
  type?: string;
  base?: string;
  tokenizer?: string;
  name?: string;
  json?: boolean;
  force?: boolean;
}

const HF_DTYPES: Record<string, HfDtype> = { f32: "F32", f16: "F16", bf16: "BF16" };

export function registerConvert(program: Command) {
  program
    .command("convert")
    .description(
      "convert between Hugging Face and GGUF: a model directory to a GGUF file, a GGUF model to a directory transformers loads, a PEFT LoRA adapter to a GGUF adapter (with --base), a llama2.c model.bin to GGUF (with --tokenizer)",
    )
    .argument(
      "<input>",
      "Hugging Face model directory, PEFT adapter directory, GGUF model, or llama2.c model.bin",
    )
    .requiredOption("-o, --out <path>", "output: a GGUF file, or a directory for a GGUF input")
    .option(
      "--type <type>",
      `to GGUF: ${FILE_TYPES.map((t) => t.name.toLowerCase()).join(", ")}; to Hugging Face: f32, f16, bf16 (default: f32)`,
    )
    .option("--base <model.gguf>", "the GGUF model a PEFT adapter was trained on")
    .option("--tokenizer <tokenizer.bin>", "the tokenizer.bin of a llama2.c checkpoint")
    .option("--name <name>", "general.name of the GGUF written (default: the directory's name)")
    .option("--json", "print a JSON summary")
    .option("--force", FORCE_HELP)
    .action(async (input: string, flags: ConvertFlags) => {
      const st = statSync(input, { throwIfNoEntry: false });
      if (!st) throw new UserError(`${input}: no such file or directory`);
      const progress = process.stderr.isTTY === true && !flags.json;
      let summary: object;
      let line: string;
      if (st.isDirectory() && existsSync(join(input, "adapter_config.json"))) {
        if (!flags.base)
          throw new UserError(`${input}: a PEFT adapter needs --base, the GGUF model it adapts`);
        if (flags.type !== undefined) throw new UserError("--type: a LoRA adapter is written in f32");
        checkOutputs({
          inputs: [input, { path: flags.base, name: "--base" }],
          outputs: [{ path: flags.out, flag: "--out" }],
          force: flags.force,
        });
        const s = convertPeftToGguf(input, flags.base, flags.out);
        summary = s;
        line = `${s.output}: LoRA adapter, ${s.tensors} tensors, rank ${s.rank}, alpha ${s.alpha}`;
      } else if (st.isDirectory()) {
        if (flags.base) throw new UserError("--base is for PEFT adapters; this is a model directory");
        checkOutputs({ inputs: [input], outputs: [{ path: flags.out, flag: "--out" }], force: flags.force });
        const s = await convertHfToGguf(input, flags.out, { type: flags.type, name: flags.name, progress });
        summary = s;
        line = `${s.output}: ${s.architecture} ${s.type}, ${s.tensors} tensors, tokenizer ${s.tokenizer}${s.chatTemplate ? ", chat template" : ""}`;
      } else if (!isGgufFile(input)) {
        if (!flags.tokenizer) {
          throw new UserError(
            `${input}: not a GGUF file; a llama2.c checkpoint needs --tokenizer tokenizer.bin`,
          );
        }
        if (flags.base) throw new UserError("--base is for PEFT adapters; this is a model file");
        checkOutputs({
          inputs: [input, { path: flags.tokenizer, name: "--tokenizer" }],
          outputs: [{ path: flags.out, flag: "--out" }],
          force: flags.force,
        });
        const s = await convertLlama2cToGguf(input, flags.tokenizer, flags.out, {
          type: flags.type,
          name: flags.name,
          progress,
        });
        summary = s;
        line = `${s.output}: llama ${s.type} from llama2.c, ${s.tensors} tensors`;
      } else {
        if (flags.base || flags.name || flags.tokenizer)
          throw new UserError("--base, --name and --tokenizer are for conversions to GGUF");
        const dtype = HF_DTYPES[(flags.type ?? "f32").toLowerCase()];
        if (!dtype)
          throw new UserError(
            `--type ${flags.type}: a Hugging Face directory is written as f32, f16 or bf16`,
          );
        checkOutputs({
          inputs: [input],
          outputs: [{ path: flags.out, flag: "--out", kind: "directory", existing: "caller" }],
          force: flags.force,
        });
        if (!flags.force && existsSync(join(flags.out, "config.json"))) {
          throw new UserError(
            `${flags.out}: holds a model already (config.json); --force replaces its files`,
          );
        }
        const s = convertGgufToHf(input, flags.out, { dtype, progress });
        summary = s;
        line = `${s.output}: ${s.architecture} for transformers, ${s.dtype}, ${s.tensors} tensors in ${s.files.filter((f) => f.endsWith(".safetensors")).length} safetensors file(s)`;
      }
      process.stdout.write(flags.json ? `${JSON.stringify(summary)}\n` : `${line}\n`);
    });
}
