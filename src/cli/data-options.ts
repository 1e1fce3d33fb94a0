import type { Command } from "commander";
import { readTokenizerFile, type TemplateChoice, type TokenizerFile } from "../data/chat-tokens.js";
import { type DatasetFormat, parseFormatName, RecordReader } from "../data/records.js";
import { chooseTemplate } from "../model/templates.js";

/** Flags every dataset command reading records has. */
export interface DatasetFlags {
  format?: string;
  skipInvalid?: boolean;
}

export function addDatasetOptions(cmd: Command): Command {
  return cmd
    .option("--format <format>", "dataset format: alpaca, sharegpt, messages, completion (default: detected)")
    .option(
      "--skip-invalid",
      "skip invalid records and count them by reason instead of stopping at the first",
    );
}

export function addTokenOptions(cmd: Command, tokenizerRequired: boolean): Command {
  const tokenizer = "GGUF file (a model or vocabulary only) whose tokenizer and chat template are used";
  return (
    tokenizerRequired
      ? cmd.requiredOption("--tokenizer <model>", tokenizer)
      : cmd.option("--tokenizer <model>", tokenizer)
  )
    .option(
      "--template <name>",
      "chat template: alpaca, vicuna_v1.1, llama-2, chatml (default: the file's own)",
    )
    .option("--train-on-prompt", "train on the prompt tokens too, not only on the assistant replies");
}

export async function openDataset(file: string, flags: DatasetFlags): Promise<RecordReader> {
  const format: DatasetFormat | undefined =
    flags.format === undefined ? undefined : parseFormatName(flags.format);
  return RecordReader.open(file, { format, skipInvalid: flags.skipInvalid });
}

/**
 * The tokenizer file and, for chat records, the template: --template, else the file's own
 * (a UserError suggesting --template when it has none).
 */
export function openTokenizer(
  path: string,
  format: DatasetFormat,
  template: string | undefined,
): { file: TokenizerFile; template?: TemplateChoice } {
  const file = readTokenizerFile(path);
  if (format === "completion") return { file };
  return { file, template: chooseTemplate(file.chatTemplate, template) };
}

/** `invalid JSON 1, missing field 2` */
export function describeSkipped(skipped: ReadonlyMap<string, number>): string {
  return [...skipped]
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([reason, n]) => `${reason} ${n}`)
    .join(", ");
}
