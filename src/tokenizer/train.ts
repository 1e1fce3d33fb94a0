/**
 * Trains a SentencePiece-style BPE vocabulary with byte fallback (tokenizer.ggml.model "llama"),
 * the kind Llama, OpenLLaMA and TinyLlama use, and writes it as GGUF tokenizer metadata.
 *
 * How text becomes training words (the same view the "llama" tokenizer has at run time):
 * spaces become "▁", every document gets a leading "▁" (the space prefix), and the text is cut
 * into words: a run of "▁" followed by other characters, a run of "▁" alone, or a run of
 * newlines. Pieces never cross a word, so a learned piece always starts at most once with "▁".
 *
 * Memory stays bounded however large the corpus: only the word counts are kept, and when their
 * table exceeds `maxWords`, the rarest entries are dropped (every count at or below a threshold
 * that rises each time), as a frequent-items summary does. Training is deterministic: the same
 * input in the same order gives the same vocabulary. Ties between equally frequent pairs go to
 * the pair whose merged text sorts first (by UTF-16 code units).
 *
 * Layout of the result: <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, user-defined special
 * tokens, the corpus characters kept by `characterCoverage` (most frequent first), then the merged
 * pieces in the order they were learned. Merged pieces score -rank, so the tokenizer merges them
 * in training order; characters score below every piece.
 */

import { UserError } from "../errors.js";
import { GgufWriter } from "../formats/gguf.js";
import { Tokenizer, type TokenizerDescription, TokenType } from "./index.js";

export interface TokenizerTrainOptions {
  /** Total tokens in the vocabulary, special and byte tokens included. */
  vocabSize: number;
  /** User-defined tokens kept whole in text, e.g. "<|im_start|>". */
  specialTokens?: readonly string[];
  /** Share of character occurrences the kept characters must cover; the rest fall back to bytes. Default 0.9995. */
  characterCoverage?: number;
  /** Longest piece in characters (default 16). */
  maxPieceLength?: number;
  /** Most distinct words held while counting (default 2,000,000); rarer ones are dropped beyond it. */
  maxWords?: number;
}

/** Counts the words of a corpus, document by document, in bounded memory. */
export class WordCounter {
  readonly counts = new Map<string, number>();
  /** Words dropped to keep the table bounded, and the count threshold reached. */
  pruned = 0;
  threshold = 0;
  documents = 0;
  characters = 0;

  constructor(private readonly maxWords = 2_000_000) {}

  /** Adds one document (the space prefix applies at its start). */
  addDocument(text: string): void {
    this.documents++;
    this.characters += text.length;
    const normalized = `▁${text.replaceAll(" ", "▁")}`;
    for (const m of normalized.matchAll(WORD)) {
      const w = m[0];
      if (w.length > 256) continue; // not language: a hash, a base64 blob, a ruler line
      this.counts.set(w, (this.counts.get(w) ?? 0) + 1);
    }
    if (this.counts.size > this.maxWords) this.prune();
  }

  private prune(): void {
    while (this.counts.size > this.maxWords * 0.75) {
      this.threshold++;
      for (const [w, n] of this.counts) {
        if (n <= this.threshold) {
          this.counts.delete(w);
          this.pruned++;
        }
      }
    }
  }
}

const WORD = /▁*[^▁\n]+|▁+|\n+/g;

export interface TokenizerTrainSummary {
  vocabSize: number;
  characters: number;
  merges: number;
  words: number;
  prunedWords: number;
}

/** Learns the vocabulary from counted words. */
export function trainTokenizer(
  counter: WordCounter,
  options: TokenizerTrainOptions,
  onMerge?: (done: number, total: number) => void,
): { description: TokenizerDescription; summary: TokenizerTrainSummary } {
  const specials = [...new Set(options.specialTokens ?? [])];
  const coverage = options.characterCoverage ?? 0.9995;
  const maxLen = options.maxPieceLength ?? 16;
  const fixed = 3 + 256 + specials.length;

  // Characters by frequency (ties: code point order), kept until the coverage is reached.
  const charCounts = new Map<string, number>();
  for (const [w, n] of counter.counts) {
    for (const c of w) charCounts.set(c, (charCounts.get(c) ?? 0) + n);
  }
  const byFreq = [...charCounts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  const totalChars = byFreq.reduce((s, [, n]) => s + n, 0);
  const chars: string[] = [];
  let covered = 0;
  for (const [c, n] of byFreq) {
    if (chars.length > 0 && covered >= coverage * totalChars) break;
    chars.push(c);
    covered += n;
  }
  if (options.vocabSize < fixed + chars.length) {
    throw new UserError(
      `--vocab-size ${options.vocabSize} is too small: the special, byte and ${chars.length} character tokens alone need ${fixed + chars.length}`,
    );
  }
  if (chars.length === 0) throw new UserError("the corpus has no text to learn from");

  // Pieces: id -> text; symbols of words are piece ids (-1: a character left to byte fallback).
  const pieces: string[] = [...chars];
  const pieceId = new Map(pieces.map((p, i) => [p, i]));
  const lengthOf: number[] = pieces.map(() => 1);
  const words: { syms: number[]; n: number }[] = [];
  for (const [w, n] of [...counter.counts].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
    const syms = Array.from(w, (c) => pieceId.get(c) ?? -1);
    if (syms.length > 1) words.push({ syms, n });
  }

  const KEY = 2 ** 21; // piece ids stay below this
  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const heap = new PairHeap((key) => pieces[Math.floor(key / KEY)] + pieces[key % KEY]);
  const addPairWord = (key: number, word: number) => {
    const set = pairWords.get(key);
    if (set) set.add(word);
    else pairWords.set(key, new Set([word]));
  };
  // Count changes of one merge, applied together so each changed pair enters the heap once.
  const delta = new Map<number, number>();
  const touch = (key: number, d: number, word: number) => {
    delta.set(key, (delta.get(key) ?? 0) + d);
    if (d > 0) addPairWord(key, word);
  };
  const applyDelta = () => {
    for (const [key, d] of delta) {
      if (d === 0) continue;
      const n = (pairCount.get(key) ?? 0) + d;
      if (n <= 0) pairCount.delete(key);
      else {
        pairCount.set(key, n);
        heap.push(n, key);
      }
    }
    delta.clear();
  };
  const forPairs = (syms: number[], fn: (key: number) => void) => {
    for (let i = 0; i + 1 < syms.length; i++) {
      const a = syms[i];
      const b = syms[i + 1];
      if (a >= 0 && b >= 0) fn(a * KEY + b);
    }
  };
  for (let w = 0; w < words.length; w++) {
    const { syms, n } = words[w];
    forPairs(syms, (key) => {
      pairCount.set(key, (pairCount.get(key) ?? 0) + n);
      addPairWord(key, w);
    });
  }
  for (const [key, n] of pairCount) heap.push(n, key);

  const wanted = options.vocabSize - fixed - chars.length;
  let merges = 0;
  while (merges < wanted) {
    const top = heap.pop();
    if (!top) break;
    const [n, key] = top;
    if (pairCount.get(key) !== n) continue; // stale entry
    const a = Math.floor(key / KEY);
    const b = key % KEY;
    const text = pieces[a] + pieces[b];
    if (lengthOf[a] + lengthOf[b] > maxLen) {
      pairCount.delete(key); // never merge it; its stale heap entries are skipped
      continue;
    }
    let c = pieceId.get(text);
    if (c === undefined) {
      c = pieces.length;
      if (c >= KEY) break;
      pieces.push(text);
      lengthOf.push(lengthOf[a] + lengthOf[b]);
      pieceId.set(text, c);
      merges++;
      onMerge?.(merges, wanted);
    }
    for (const w of pairWords.get(key) ?? []) {
      const word = words[w];
      const old = word.syms;
      const next: number[] = [];
      for (let i = 0; i < old.length; i++) {
        if (i + 1 < old.length && old[i] === a && old[i + 1] === b) {
          next.push(c);
          i++;
        } else next.push(old[i]);
      }
      if (next.length === old.length) continue;
      forPairs(old, (k) => touch(k, -word.n, w));
      forPairs(next, (k) => touch(k, word.n, w));
      word.syms = next;
    }
    pairWords.delete(key);
    applyDelta();
  }

  const tokens = ["<unk>", "<s>", "</s>"];
  const types: number[] = [TokenType.Unknown, TokenType.Control, TokenType.Control];
  const scores: number[] = [0, 0, 0];
  for (let byte = 0; byte < 256; byte++) {
    tokens.push(`<0x${byte.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(TokenType.Byte);
    scores.push(0);
  }
  for (const s of specials) {
    tokens.push(s);
    types.push(TokenType.UserDefined);
    scores.push(0);
  }
  const taken = new Set(tokens);
  const learned = pieces.length - chars.length;
  for (let i = 0; i < chars.length; i++) {
    if (taken.has(chars[i])) continue;
    tokens.push(chars[i]);
    types.push(TokenType.Normal);
    scores.push(-(learned + i + 1));
  }
  for (let i = chars.length; i < pieces.length; i++) {
    if (taken.has(pieces[i])) continue;
    tokens.push(pieces[i]);
    types.push(TokenType.Normal);
    scores.push(-(i - chars.length));
  }
  return {
    description: {
      model: "llama",
      tokens,
      tokenTypes: types,
      scores,
      unkId: 0,
      bosId: 1,
      eosId: 2,
      addBos: true,
      addEos: false,
      addSpacePrefix: true,
    },
    summary: {
      vocabSize: tokens.length,
      characters: chars.length,
      merges,
      words: counter.counts.size,
      prunedWords: counter.pruned,
    },
  };
}

/** Writes tokenizer metadata into a GGUF under construction. */
export function setTokenizerMetadata(w: GgufWriter, d: TokenizerDescription): void {
  w.setString("tokenizer.ggml.model", d.model);
  if (d.pre !== undefined) w.setString("tokenizer.ggml.pre", d.pre);
  w.setStringArray("tokenizer.ggml.tokens", [...d.tokens]);
  if (d.scores) w.setF32Array("tokenizer.ggml.scores", Float32Array.from(d.scores));
  if (d.tokenTypes) w.setI32Array("tokenizer.ggml.token_type", Int32Array.from(d.tokenTypes));
  if (d.merges) w.setStringArray("tokenizer.ggml.merges", [...d.merges]);
  if (d.bosId !== undefined) w.setU32("tokenizer.ggml.bos_token_id", d.bosId);
  if (d.eosId !== undefined) w.setU32("tokenizer.ggml.eos_token_id", d.eosId);
  if (d.unkId !== undefined) w.setU32("tokenizer.ggml.unknown_token_id", d.unkId);
  if (d.padId !== undefined) w.setU32("tokenizer.ggml.padding_token_id", d.padId);
  w.setBool("tokenizer.ggml.add_bos_token", d.addBos);
  w.setBool("tokenizer.ggml.add_eos_token", d.addEos);
  if (d.model === "llama") w.setBool("tokenizer.ggml.add_space_prefix", d.addSpacePrefix ?? true);
}

/**
 * Writes a vocabulary-only GGUF: general.architecture "llama", a context length, and the
 * tokenizer metadata, no tensors. llama.cpp loads it with vocab_only; smallhammer reads the
 * tokenizer from it wherever a tokenizer is asked for.
 */
export function writeTokenizerGguf(
  path: string,
  d: TokenizerDescription,
  name = "smallhammer tokenizer",
): void {
  const w = new GgufWriter();
  w.setString("general.architecture", "llama");
  w.setString("general.type", "vocab");
  w.setString("general.name", name);
  setTokenizerMetadata(w, d);
  w.write(path);
}

/** Checks a learned vocabulary by building the run-time tokenizer from it. */
export function tokenizerOf(d: TokenizerDescription): Tokenizer {
  return new Tokenizer(d);
}

/** A max-heap of (count, pair) with ties to the pair whose merged text sorts first. */
class PairHeap {
  private readonly counts: number[] = [];
  private readonly keys: number[] = [];
  private readonly texts: string[] = [];

  constructor(private readonly textOf: (key: number) => string) {}

  private before(i: number, j: number): boolean {
    const c = this.counts[i] - this.counts[j];
    return c > 0 || (c === 0 && this.texts[i] < this.texts[j]);
  }

  private swap(i: number, j: number): void {
    [this.counts[i], this.counts[j]] = [this.counts[j], this.counts[i]];
    [this.keys[i], this.keys[j]] = [this.keys[j], this.keys[i]];
    [this.texts[i], this.texts[j]] = [this.texts[j], this.texts[i]];
  }

  push(count: number, key: number): void {
    let i = this.counts.length;
    this.counts.push(count);
    this.keys.push(key);
    this.texts.push(this.textOf(key));
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }

  pop(): [count: number, key: number] | undefined {
    const n = this.counts.length;
    if (n === 0) return undefined;
    const top: [number, number] = [this.counts[0], this.keys[0]];
    this.swap(0, n - 1);
    this.counts.pop();
    this.keys.pop();
    this.texts.pop();
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let best = i;
      if (l < n - 1 && this.before(l, best)) best = l;
      if (r < n - 1 && this.before(r, best)) best = r;
      if (best === i) break;
      this.swap(i, best);
      i = best;
    }
    return top;
  }
}
