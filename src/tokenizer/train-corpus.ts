/**
 * Tokenizer training and corpus tokenization over files, the work behind `tokenizer train` and
 * `data tokenize`: documents streamed from the corpus files (data/corpus.ts), progress by bytes.
 */

import { readTokenizerFile } from "../data/chat-tokens.js";
import {
  type CorpusSegment,
  corpusFileBytes,
  corpusKind,
  type DocumentSplit,
  readCorpusSegments,
} from "../data/corpus.js";
import { type TokenCacheIndex, TokenCacheWriter } from "../data/token-cache.js";
import { UserError } from "../errors.js";
import { Progress } from "../util/progress.js";
import {
  learnVocabulary,
  type TokenizerTrainOptions,
  type TokenizerTrainSummary,
  WordCounter,
  writeTokenizerGguf,
} from "./train.js";

export interface CorpusOptions {
  /** How .txt files divide into documents (default "blank-line"). */
  split?: DocumentSplit;
  /** Skip bad JSONL lines (counted by reason) instead of stopping at the first. */
  skipInvalid?: boolean;
  /** Show progress bars on stderr (default: when stderr is a TTY). */
  progress?: boolean;
  /** Longest text read and encoded at once (default 1 Mi characters; see data/corpus.ts). */
  segmentChars?: number;
}

const MB = 1e6;

/** Reads every file's document segments in order, with a progress bar over all their bytes. */
async function* corpusSegments(
  files: readonly string[],
  options: CorpusOptions,
  label: string,
  onFile: (path: string, bytes: number, skipped: Record<string, number>) => void,
  /** Text shown at the end of the bar, refreshed with it. */
  detail?: () => string,
): AsyncGenerator<CorpusSegment & { path: string }> {
  // Every file is checked before the first is read.
  const sizes = files.map((f) => {
    corpusKind(f);
    return corpusFileBytes(f);
  });
  const total = sizes.reduce((s, n) => s + n, 0);
  const units = Math.max(1, Math.ceil(total / MB));
  const bar = new Progress(label, units, "MB", options.progress ?? process.stderr.isTTY === true, !!detail);
  const payload = () => (detail ? { detail: detail() } : {});
  let shown = 0;
  let before = 0;
  const show = (bytes: number) => {
    const mb = Math.floor((before + bytes) / MB);
    bar.tick(mb - shown, payload());
    shown = mb;
  };
  try {
    for (const [i, path] of files.entries()) {
      const skipped: Record<string, number> = {};
      for await (const segment of readCorpusSegments(path, {
        split: options.split,
        skipInvalid: options.skipInvalid,
        skipped,
        onBytes: show,
        segmentChars: options.segmentChars,
      })) {
        yield { ...segment, path };
      }
      before += sizes[i]!;
      onFile(path, sizes[i]!, skipped);
    }
    bar.tick(units - shown, payload());
  } finally {
    bar.done();
  }
}

export interface TokenizerFilesSummary extends TokenizerTrainSummary {
  files: number;
  bytes: number;
  /** Lines left out, by reason, over all files. */
  skipped: Record<string, number>;
}

/** Trains a tokenizer on corpus files and writes it, atomically, as a vocabulary-only GGUF. */
export async function trainTokenizerOnFiles(
  files: readonly string[],
  out: string,
  options: TokenizerTrainOptions & CorpusOptions,
): Promise<TokenizerFilesSummary> {
  const counter = new WordCounter(options);
  const skipped: Record<string, number> = {};
  let bytes = 0;
  const onFile = (_path: string, size: number, fileSkipped: Record<string, number>) => {
    bytes += size;
    for (const [reason, n] of Object.entries(fileSkipped)) skipped[reason] = (skipped[reason] ?? 0) + n;
  };
  for await (const { text, continuation } of corpusSegments(files, options, "count words", onFile)) {
    counter.addDocument(text, continuation);
  }
  const show = options.progress ?? process.stderr.isTTY === true;
  let bar: Progress | undefined;
  let shown = 0;
  try {
    const { description, summary } = learnVocabulary(counter, {
      ...options,
      onMerge: (done, wanted) => {
        bar ??= new Progress("learn pieces", wanted, "pieces", show);
        if (done - shown >= 32 || done === wanted) {
          bar.tick(done - shown);
          shown = done;
        }
        options.onMerge?.(done, wanted);
      },
    });
    bar?.done();
    bar = undefined;
    writeTokenizerGguf(out, description);
    return { ...summary, files: files.length, bytes, skipped };
  } finally {
    bar?.done();
  }
}

export interface TokenizeCorpusOptions extends CorpusOptions {
  /** Share of documents for validation (default 0.01). */
  valFraction?: number;
  /** Seed of the validation split (default 1). */
  seed?: number;
  /**
   * Turn control-token texts in the corpus ("<s>", "</s>", end-of-turn texts such as
   * "<|im_end|>") into those tokens. Default false: they stay text; user-defined tokens are
   * matched either way.
   */
  parseSpecial?: boolean;
  /** Stops the work: nothing is written, and the promise rejects with a UserError. */
  signal?: AbortSignal;
}

/**
 * Tokenizes corpus files into a token cache directory (see data/token-cache.ts): each document
 * is encoded on its own, without BOS/EOS (the cache writes BOS before it); a long one segment by
 * segment (see data/corpus.ts), so memory stays bounded whatever the document sizes.
 */
export async function tokenizeCorpus(
  files: readonly string[],
  tokenizerPath: string,
  out: string,
  options: TokenizeCorpusOptions = {},
): Promise<TokenCacheIndex> {
  const { tokenizer } = readTokenizerFile(tokenizerPath);
  const writer = new TokenCacheWriter(out, {
    vocabSize: tokenizer.vocabSize,
    bos: tokenizer.bosId,
    eos: tokenizer.eosId,
    valFraction: options.valFraction,
    seed: options.seed,
    tokenizerPath,
  });
  const started = performance.now();
  const detail = () => {
    const seconds = (performance.now() - started) / 1000;
    const rate = seconds > 0 ? Math.round(writer.tokens / seconds) : 0;
    return `${writer.tokens.toLocaleString("en-US")} tokens, ${rate.toLocaleString("en-US")} tokens/s`;
  };
  try {
    const segments = corpusSegments(
      files,
      options,
      "tokenize",
      (path, bytes, skipped) => writer.addSource(path, bytes, skipped),
      detail,
    );
    const parseSpecial = options.parseSpecial ?? false;
    for await (const { text, continuation, path } of segments) {
      if (options.signal?.aborted) throw new UserError(`${out}: interrupted; nothing was written`);
      if (!continuation) writer.beginDocument(path);
      writer.appendTokens(tokenizer.encode(text, { addSpecial: false, parseSpecial, continuation }));
    }
    return writer.finish();
  } catch (e) {
    writer.abort();
    throw e;
  }
}
