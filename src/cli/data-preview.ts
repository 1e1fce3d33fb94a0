import type { Command } from "commander";
import { type TokenizedExample, tokenizeRecord } from "../data/chat-tokens.js";
import { describeSource, InvalidRecordError, type RecordReader } from "../data/records.js";
import type { Tokenizer } from "../tokenizer/index.js";
import {
  addDatasetOptions,
  addTokenOptions,
  type DatasetFlags,
  describeSkipped,
  openDataset,
  openTokenizer,
} from "./data-options.js";
import { intArg } from "./options.js";

interface PreviewFlags extends DatasetFlags {
  tokenizer: string;
  template?: string;
  trainOnPrompt?: boolean;
  n: number;
}

/** Between two tokens. */
const BOUNDARY = "·";
/** Around runs of trained-on tokens, without color. */
const OPEN = "⟦";
const CLOSE = "⟧";

const fatalUtf8 = new TextDecoder("utf-8", { fatal: true });

function hex(b: number): string {
  return b.toString(16).toUpperCase().padStart(2, "0");
}

/**
 * How one token shows: its text (special tokens as their text, SentencePiece's ▁ as a space), a
 * newline as ↵ followed by a real line break, a tab as ⇥, other control characters escaped, and
 * bytes that are not whole UTF-8 characters as <0xNN>.
 */
export function tokenLabel(tok: Tokenizer, id: number): string {
  const bytes = tok.tokenToPiece(id);
  let text: string;
  try {
    text = fatalUtf8.decode(bytes);
  } catch {
    return Array.from(bytes, (b) => `<0x${hex(b)}>`).join("");
  }
  if (text === "") return "∅";
  return text.replace(/[\u0000-\u001f\u007f]/g, (c) => {
    if (c === "\n") return "↵\n";
    if (c === "\t") return "⇥";
    return `\\x${hex(c.charCodeAt(0))}`;
  });
}

/**
 * An example as the model sees it, token by token: boundaries as ·, trained-on tokens in green
 * (color) or inside ⟦ ⟧ (no color). Linear in the example's length: pieces are joined once at the
 * end, and whether the text so far ends a line is tracked, not looked up in it.
 */
export function renderExample(tok: Tokenizer, example: TokenizedExample, color: boolean): string {
  const green = (s: string) => `\u001b[1;32m${s}\u001b[0m`;
  const dim = (s: string) => `\u001b[2m${s}\u001b[0m`;
  const pieces: string[] = [];
  let atLineStart = true; // the text so far is empty or ends with "\n"
  const add = (s: string) => {
    if (s === "") return;
    pieces.push(s);
    atLineStart = s.endsWith("\n");
  };
  let open = false;
  for (let i = 0; i < example.ids.length; i++) {
    const trained = example.lossMask[i] === 1;
    if (open && !trained) {
      add(CLOSE);
      open = false;
    }
    if (i > 0 && !atLineStart) add(color ? dim(BOUNDARY) : BOUNDARY);
    if (!color && trained && !open) {
      add(OPEN);
      open = true;
    }
    const label = tokenLabel(tok, example.ids[i]!);
    add(
      color && trained
        ? label
            .split("\n")
            .map((s) => (s ? green(s) : s))
            .join("\n")
        : label,
    );
  }
  if (open) add(CLOSE);
  if (!atLineStart || pieces.length === 0) pieces.push("\n");
  return pieces.join("");
}

export function registerDataPreview(data: Command): void {
  const cmd = data
    .command("preview")
    .description(
      "print the first records as the model will see them, token by token, with the trained-on tokens marked",
    )
    .argument("<file>", "JSONL or JSON array of alpaca, sharegpt, messages or completion records")
    .option("-n <count>", "records to show", intArg("-n", 1), 3);
  addDatasetOptions(cmd);
  addTokenOptions(cmd, true).action(async (file: string, flags: PreviewFlags) => {
    const reader = await openDataset(file, flags);
    try {
      await preview(reader, flags);
    } finally {
      await reader.close();
    }
  });
}

async function preview(reader: RecordReader, flags: PreviewFlags): Promise<void> {
  const { file: tokenizerFile, template } = openTokenizer(flags.tokenizer, reader.format, flags.template);
  const tok = tokenizerFile.tokenizer;
  const color = process.stdout.isTTY === true && !process.env["NO_COLOR"];
  const write = (s: string) => process.stdout.write(s);
  const legend = color ? "trained-on tokens in green" : `${OPEN}trained-on tokens${CLOSE}`;
  write(
    `${reader.path}: ${reader.format}${reader.detected ? " (detected)" : ""}; tokenizer ${flags.tokenizer} ` +
      `(${tok.model}, ${tok.vocabSize} tokens); template ${template?.label ?? "none (plain text)"}\n`,
  );
  write(`${legend}, ${BOUNDARY} between tokens, ↵ newline\n`);
  let shown = 0;
  for await (const record of reader) {
    let example: TokenizedExample;
    try {
      example = tokenizeRecord(record, { tokenizer: tok, template, trainOnPrompt: flags.trainOnPrompt });
    } catch (e) {
      if (!(e instanceof InvalidRecordError)) throw e;
      reader.reject(e.issue);
      continue;
    }
    let trained = 0;
    for (const m of example.lossMask) trained += m;
    write(`\n── ${describeSource(record.source)}: ${example.ids.length} tokens, ${trained} trained on ──\n`);
    write(renderExample(tok, example, color));
    if (++shown === flags.n) break;
  }
  if (reader.skippedCount > 0)
    write(`\nskipped ${reader.skippedCount}: ${describeSkipped(reader.skipped)}\n`);
}
