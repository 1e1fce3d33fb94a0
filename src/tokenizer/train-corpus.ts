/**
 * Tokenizer training and corpus tokenization over files, the work behind `tokenizer train` and
 * `data tokenize`: streaming, bounded memory, progress by bytes.
 */

import { readTokenizerFile } from "../data/chat-tokens.js";
import { corpusFileBytes, type DocumentSplit, readCorpusDocuments } from "../data/corpus.js";
import { type TokenCacheIndex, TokenCacheWriter } from "../data/token-cache.js";
import { Progress } from "../util/progress.js";
import {
  type TokenizerTrainOptions,
  type TokenizerTrainSummary,
  trainTokenizer,
  WordCounter,
  writeTokenizerGguf,
} from "./train.js";

export interface CorpusOptions {
  split?: DocumentSplit;
  skipInvalid?: boolean;
  /** Show a progress bar on stderr (default: when stderr is a TTY). */
  progress?: boolean;
}

function bytesProgress(label: string, files: string[], enabled: boolean) {
  const total = files.reduce((s, f) => s + corpusFileBytes(f), 0);
  const bar = new Progress(label, Math.max(1, Math.ceil(total / 1024)), "KiB", enabled);
  let base = 0;
  let last = 0;
  return {
    total,
    file(bytes: number) {
      const kib = Math.floor((base + bytes) / 1024);
      if (kib > last) {
        bar.tick(kib - last);
        last = kib;
      }
    },
    next(fileBytes: number) {
      base += fileBytes;
    },
    done: () => bar.done(),
  };
}

/** Trains a tokenizer on text files and writes it as a vocabulary-only GGUF. */
export async function trainTokenizerOnFiles(
  files: string[],
  out: string,
  options: TokenizerTrainOptions & CorpusOptions & { maxWords?: number },
): Promise<TokenizerTrainSummary & { documents: number; bytes: number; skipped: Record<string, number> }> {
  const counter = new WordCounter(options.maxWords);
  const skipped: Record<string, number> = {};
  const progress = bytesProgress("count", files, options.progress ?? process.stderr.isTTY === true);
  for (const f of files) {
    for await (const doc of readCorpusDocuments(f, {
      split: options.split,
      skipInvalid: options.skipInvalid,
      skipped,
      onBytes: (b) => progress.file(b),
    })) {
      counter.addDocument(doc);
    }
    progress.next(corpusFileBytes(f));
  }
  progress.done();
  const merging = new Progress(
    "merge",
    options.vocabSize,
    "merges",
    options.progress ?? process.stderr.isTTY === true,
  );
  let shown = 0;
  const { description, summary } = trainTokenizer(counter, options, (done) => {
    if (done - shown >= 64) {
      merging.tick(done - shown);
      shown = done;
    }
  });
  merging.done();
  writeTokenizerGguf(out, description);
  return { ...summary, documents: counter.documents, bytes: progress.total, skipped };
}

/** Tokenizes text files into a token cache directory. */
export async function tokenizeCorpus(
  files: string[],
  tokenizerPath: string,
  out: string,
  options: CorpusOptions & { valFraction?: number; seed?: number },
): Promise<TokenCacheIndex> {
  const { tokenizer } = readTokenizerFile(tokenizerPath);
  const progress = bytesProgress("tokenize", files, options.progress ?? process.stderr.isTTY === true);
  const writer = new TokenCacheWriter(out, {
    vocabSize: tokenizer.vocabSize,
    bos: tokenizer.bosId,
    eos: tokenizer.eosId,
    valFraction: options.valFraction,
    seed: options.seed,
    tokenizerPath,
  });
  try {
    for (const f of files) {
      const skipped: Record<string, number> = {};
      for await (const doc of readCorpusDocuments(f, {
        split: options.split,
        skipInvalid: options.skipInvalid,
        skipped,
        onBytes: (b) => progress.file(b),
      })) {
        // Special-token text inside a corpus is text, not control tokens.
        writer.addDocument(tokenizer.encode(doc, { addSpecial: false, parseSpecial: false }), f);
      }
      writer.addSource(f, corpusFileBytes(f), skipped);
      progress.next(corpusFileBytes(f));
    }
    progress.done();
    return writer.finish();
  } catch (e) {
    progress.done();
    writer.abort();
    throw e;
  }
}
