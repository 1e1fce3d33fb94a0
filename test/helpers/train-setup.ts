// What the training tests start from: a tokenizer and a token cache of Shakespeare made with the
// CLI as a user would, and a small Alpaca dataset for quick fine-tunes.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { expectOk, ROOT, runCli } from "./cli.js";

/**
 * Writes the first `chars` characters of tinyshakespeare to `dir/corpus.txt`, trains a tokenizer of
 * `vocabSize` pieces on it and tokenizes it into `dir/cache` with a tenth held out for validation.
 */
export async function makeShakespeareCache(
  dir: string,
  chars: number,
  vocabSize = 400,
): Promise<{ corpus: string; tokenizer: string; cache: string }> {
  const corpus = join(dir, "corpus.txt");
  writeFileSync(
    corpus,
    readFileSync(join(ROOT, "test", "fixtures", "tinyshakespeare.txt"), "utf8").slice(0, chars),
  );
  const tokenizer = join(dir, "tokenizer.gguf");
  const cache = join(dir, "cache");
  expectOk(
    await runCli(["tokenizer", "train", corpus, "--vocab-size", String(vocabSize), "--out", tokenizer]),
  );
  expectOk(
    await runCli([
      "data",
      "tokenize",
      corpus,
      "--tokenizer",
      tokenizer,
      "--out",
      cache,
      "--val-fraction",
      "0.1",
    ]),
  );
  return { corpus, tokenizer, cache };
}

/** Twenty Alpaca records (five, four times) at `path`: enough for a few fine-tuning steps. */
export function writeTinyAlpaca(path: string): string {
  const records = ["say hello", "write the world", "spell a bird", "repeat the sea", "say the wind"].map(
    (instruction, i) => ({
      instruction,
      input: "",
      output: `${instruction.split(" ").slice(1).join(" ")} ${i}`,
    }),
  );
  writeFileSync(
    path,
    records
      .map((r) => `${JSON.stringify(r)}\n`)
      .join("")
      .repeat(4),
  );
  return path;
}
