/**
 * Trains a SentencePiece-style BPE vocabulary with byte fallback (tokenizer.ggml.model "llama"),
 * the kind Llama, OpenLLaMA and TinyLlama use, and writes it as GGUF tokenizer metadata.
 *
 *   const { description, summary } = await trainTokenizer(documents, { vocabSize: 8000 });
 *   writeTokenizerGguf("tok.gguf", description);
 *
 * Words. Training sees text as the "llama" tokenizer does at run time: user-defined special
 * tokens are cut out first (they are always matched whole), every remaining fragment gets the
 * space prefix, spaces become "▁", and the fragment is cut into words: optional "▁"s followed by
 * other characters up to the next "▁" or newline, a run of "▁" alone, or a run of newlines.
 * Pieces are learned inside words only.
 *
 * Memory. Only word counts are kept, in a table of at most `maxWords` entries: when it grows
 * past that, every word counted at most t times is dropped, t rising until a quarter of the
 * table is free (lossy counting: a word frequent over the whole corpus stays, and its count
 * is low by at most t). Words over 256 characters are not counted.
 *
 * Learning. Characters are kept most frequent first until `characterCoverage` of all character
 * occurrences is covered; the rest are spelled with byte tokens. Then the most frequent pair of
 * neighbouring pieces is merged into a new piece, again and again, until the vocabulary is full
 * or no pair is left. Pair counts are updated only in the words a merge touches (each pair keeps
 * the list of words it occurs in), and a heap gives the most frequent pair.
 *
 * Determinism. The result depends only on the word counts. Ties between equally frequent pairs
 * go to the pair whose left piece came first in the vocabulary (characters first, most frequent
 * first, ties by code point; then merged pieces in the order learned), then to the one whose
 * right piece came first.
 *
 * Layout: <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, the user-defined special tokens,
 * the kept characters, then the merged pieces in the order learned. The k-th merged piece scores
 * -k and characters score below every merged piece, so the run-time tokenizer (which merges the
 * pair forming the highest-scoring piece first) applies merges in the order training learned them.
 */

import { UserError } from "../errors.js";
import { GgufWriter } from "../formats/gguf.js";
import { type TokenizerDescription, TokenType } from "./index.js";

export const DEFAULT_MAX_WORDS = 1_000_000;
const DEFAULT_COVERAGE = 0.9995;
const DEFAULT_MAX_PIECE_LENGTH = 16;
const MAX_WORD_LENGTH = 256;

const FIXED_TOKENS = ["<unk>", "<s>", "</s>"];
const HEX = "0123456789ABCDEF";
const BYTE_TOKENS = Array.from({ length: 256 }, (_, b) => `<0x${HEX[b >> 4]}${HEX[b & 15]}>`);

export interface WordCounterOptions {
  /** Most distinct words held (default 1,000,000); rarer ones are dropped past it. */
  maxWords?: number;
  /** User-defined tokens, cut out of the text before counting (they are never split). */
  specialTokens?: readonly string[];
}

export interface TokenizerTrainOptions extends WordCounterOptions {
  /** Total tokens in the vocabulary, special and byte tokens included. */
  vocabSize: number;
  /** Share of character occurrences the kept characters cover; the rest fall back to bytes. Default 0.9995. */
  characterCoverage?: number;
  /** Longest merged piece, in characters (default 16). */
  maxPieceLength?: number;
  /**
   * Keep every digit a piece of its own (sentencepiece's split_digits): numbers are then spelled
   * the same way wherever they occur, which arithmetic needs. Default false.
   */
  splitDigits?: boolean;
  /**
   * Characters kept pieces of their own, never merged with a neighbour: with the quote isolated,
   * a quoted word or letter is spelled by the same pieces as where it starts a line (where an
   * answer starts), not glued to the quote and the period after it. Default none.
   */
  isolate?: string;
  /** Called as merges are learned (for progress). */
  onMerge?: (done: number, wanted: number) => void;
}

export interface TokenizerTrainSummary {
  /** Tokens in the vocabulary learned (less than asked for when the corpus ran out of pairs). */
  vocabSize: number;
  characters: number;
  merges: number;
  /** Documents and their UTF-16 characters counted. */
  documents: number;
  textCharacters: number;
  /** Distinct words in the table when learning began. */
  words: number;
  /** Words dropped to keep the table bounded, and the count at or below which they were dropped. */
  prunedWords: number;
  pruneThreshold: number;
  /** Words over 256 characters, not counted. */
  longWords: number;
}

export interface TrainedTokenizer {
  description: TokenizerDescription;
  summary: TokenizerTrainSummary;
}

/** Checks user-defined special tokens: non-empty, distinct, not a fixed or byte token's text. */
export function checkSpecialTokens(tokens: readonly string[]): string[] {
  const taken = new Set([...FIXED_TOKENS, ...BYTE_TOKENS]);
  const seen = new Set<string>();
  for (const t of tokens) {
    if (t === "") throw new UserError("special tokens: an empty token");
    if (taken.has(t)) throw new UserError(`special tokens: "${t}" is already a built-in token`);
    if (seen.has(t)) throw new UserError(`special tokens: "${t}" is given twice`);
    seen.add(t);
  }
  return [...seen];
}

const WORD = /▁*[^▁\n]+|▁+|\n+/g;

/** Counts the words of a corpus, document by document, in a table of bounded size. */
export class WordCounter {
  readonly counts = new Map<string, number>();
  readonly maxWords: number;
  readonly specialTokens: readonly string[];
  /** Special tokens longest first, as the tokenizer matches them. */
  private readonly specialsByLength: string[];
  documents = 0;
  characters = 0;
  pruned = 0;
  threshold = 0;
  longWords = 0;

  constructor(options: WordCounterOptions = {}) {
    this.maxWords = options.maxWords ?? DEFAULT_MAX_WORDS;
    if (!Number.isSafeInteger(this.maxWords) || this.maxWords < 1) {
      throw new UserError(`the word table limit must be a positive integer, got ${this.maxWords}`);
    }
    this.specialTokens = checkSpecialTokens(options.specialTokens ?? []);
    this.specialsByLength = [...this.specialTokens].sort((a, b) => b.length - a.length);
  }

  /**
   * Adds one document, or with `continuation` the next part of the document added last (cut
   * after a line end). The space prefix applies at a document's start and after each special token.
   */
  addDocument(text: string, continuation = false): void {
    if (!continuation) this.documents++;
    this.characters += text.length;
    let prefix = !continuation;
    for (const fragment of this.fragments(text)) {
      const escaped = fragment.text.replaceAll(" ", "▁");
      for (const m of (prefix || fragment.afterSpecial ? `▁${escaped}` : escaped).matchAll(WORD)) {
        this.addWord(m[0]);
      }
      prefix = false;
    }
    if (this.counts.size > this.maxWords) this.prune();
  }

  private addWord(word: string): void {
    if (word.length > MAX_WORD_LENGTH) {
      this.longWords++;
      return;
    }
    this.counts.set(word, (this.counts.get(word) ?? 0) + 1);
  }

  /** The text between special tokens, each piece saying whether one comes before it. */
  private fragments(text: string): { text: string; afterSpecial: boolean }[] {
    let fragments = [{ text, afterSpecial: false }];
    for (const special of this.specialsByLength) {
      if (!text.includes(special)) continue;
      fragments = fragments.flatMap((f) =>
        f.text.split(special).map((part, i) => ({ text: part, afterSpecial: i > 0 || f.afterSpecial })),
      );
    }
    return fragments.filter((f) => f.text !== "");
  }

  private prune(): void {
    const target = Math.floor(this.maxWords * 0.75);
    while (this.counts.size > target) {
      this.threshold++;
      for (const [word, n] of this.counts) {
        if (n <= this.threshold) {
          this.counts.delete(word);
          this.pruned++;
        }
      }
    }
  }
}

/** A growable Int32Array. */
class IntVector {
  data: Int32Array;
  length = 0;
  constructor(capacity = 1024) {
    this.data = new Int32Array(capacity);
  }
  push(v: number): number {
    if (this.length === this.data.length) {
      const grown = new Int32Array(this.data.length * 2);
      grown.set(this.data);
      this.data = grown;
    }
    this.data[this.length] = v;
    return this.length++;
  }
}

/** A growable Float64Array. */
class FloatVector {
  data: Float64Array;
  length = 0;
  constructor(capacity = 1024) {
    this.data = new Float64Array(capacity);
  }
  push(v: number): number {
    if (this.length === this.data.length) {
      const grown = new Float64Array(this.data.length * 2);
      grown.set(this.data);
      this.data = grown;
    }
    this.data[this.length] = v;
    return this.length++;
  }
}

/** Characters by count (ties by code point), kept until `coverage` of all occurrences is covered. */
function keptCharacters(counts: ReadonlyMap<string, number>, coverage: number): string[] {
  const charCounts = new Map<number, number>();
  for (const [word, n] of counts) {
    for (let i = 0; i < word.length; i++) {
      const cp = word.codePointAt(i)!;
      if (cp > 0xffff) i++;
      charCounts.set(cp, (charCounts.get(cp) ?? 0) + n);
    }
  }
  const byCount = [...charCounts].sort((a, b) => b[1] - a[1] || a[0] - b[0]);
  const total = byCount.reduce((s, [, n]) => s + n, 0);
  const kept: string[] = [];
  let covered = 0;
  for (const [cp, n] of byCount) {
    if (kept.length > 0 && covered >= coverage * total) break;
    kept.push(String.fromCodePoint(cp));
    covered += n;
  }
  return kept;
}

/**
 * Learns the vocabulary from counted words (see the file comment). Throws UserError when the
 * vocabulary is too small for its fixed tokens and characters.
 */
export function learnVocabulary(counter: WordCounter, options: TokenizerTrainOptions): TrainedTokenizer {
  const { vocabSize } = options;
  const coverage = options.characterCoverage ?? DEFAULT_COVERAGE;
  const maxPieceLength = options.maxPieceLength ?? DEFAULT_MAX_PIECE_LENGTH;
  if (!Number.isSafeInteger(vocabSize) || vocabSize < 1) {
    throw new UserError(`the vocabulary size must be a positive integer, got ${vocabSize}`);
  }
  if (!(coverage > 0 && coverage <= 1))
    throw new UserError(`character coverage ${coverage} is not in (0, 1]`);
  if (!Number.isSafeInteger(maxPieceLength) || maxPieceLength < 2) {
    throw new UserError(`the longest piece must be at least 2 characters, got ${maxPieceLength}`);
  }
  const specials = counter.specialTokens;
  const fixed = FIXED_TOKENS.length + BYTE_TOKENS.length + specials.length;
  const specialSet = new Set(specials);
  // A one-character special token is matched before merging, so it is no character token.
  const chars = keptCharacters(counter.counts, coverage).filter((c) => !specialSet.has(c));
  if (chars.length === 0) throw new UserError("the corpus has no text to learn from");
  if (vocabSize < fixed + chars.length) {
    throw new UserError(
      `vocabulary size ${vocabSize} is too small: the ${fixed} special and byte tokens and ${chars.length} characters need ${fixed + chars.length} (raise it, or lower the character coverage)`,
    );
  }
  const wanted = vocabSize - fixed - chars.length;

  // Pieces by id: characters first, merged pieces appended as learned.
  const pieces: string[] = [...chars];
  const pieceLength: number[] = chars.map(() => 1);
  // Pieces never merged with another (merged pieces never hold a solitary character, so only
  // characters can be).
  const isolated = new Set(options.isolate ?? "");
  const solitary: boolean[] = chars.map(
    (c) => (options.splitDigits === true && /\p{Nd}/u.test(c)) || isolated.has(c),
  );
  const pieceId = new Map<string, number>(chars.map((c, i) => [c, i]));

  // Words as runs of piece ids in one pool (-1: a character left to byte fallback).
  let totalSymbols = 0;
  for (const word of counter.counts.keys()) totalSymbols += word.length;
  const symbols = new Int32Array(totalSymbols);
  const wordStart = new Int32Array(counter.counts.size);
  const wordLength = new Int32Array(counter.counts.size);
  const wordCount = new Float64Array(counter.counts.size);
  let words = 0;
  let used = 0;
  for (const [word, n] of counter.counts) {
    const start = used;
    for (const ch of word) symbols[used++] = pieceId.get(ch) ?? -1;
    if (used - start < 2) {
      used = start; // a single character has no pairs
      continue;
    }
    wordStart[words] = start;
    wordLength[words] = used - start;
    wordCount[words] = n;
    words++;
  }

  // Pairs: id by key, both sides, count, and a linked list of the words they occur in (a word
  // may be listed more than once, and may have lost the pair since: merges check).
  const keyBase = vocabSize;
  const pairOf = new Map<number, number>();
  const pairLeft = new IntVector();
  const pairRight = new IntVector();
  const pairCount = new FloatVector();
  const pairHead = new IntVector();
  const pairTouched = new IntVector(); // the merge that last raised the count
  const nodeWord = new IntVector(Math.max(1024, totalSymbols));
  const nodeNext = new IntVector(Math.max(1024, totalSymbols));
  const heap = new PairHeap(pairCount, pairLeft, pairRight);
  let merge = 0;
  const raised: number[] = [];

  /** Changes the count of (a, b) by delta; a rise lists `word` under the pair. */
  const changePair = (a: number, b: number, delta: number, word: number): void => {
    if (a < 0 || b < 0 || pieceLength[a]! + pieceLength[b]! > maxPieceLength) return;
    if (solitary[a] || solitary[b]) return;
    const key = a * keyBase + b;
    let p = pairOf.get(key);
    if (p === undefined) {
      p = pairLeft.push(a);
      pairRight.push(b);
      pairCount.push(0);
      pairHead.push(-1);
      pairTouched.push(-1);
      pairOf.set(key, p);
    }
    pairCount.data[p]! += delta;
    if (delta <= 0) return;
    const head = pairHead.data[p]!;
    if (head < 0 || nodeWord.data[head] !== word) {
      nodeWord.push(word);
      pairHead.data[p] = nodeNext.push(head);
    }
    if (pairTouched.data[p] !== merge) {
      pairTouched.data[p] = merge;
      raised.push(p);
    }
  };

  for (let w = 0; w < words; w++) {
    const s = wordStart[w]!;
    const end = s + wordLength[w]!;
    for (let i = s; i + 1 < end; i++) changePair(symbols[i]!, symbols[i + 1]!, wordCount[w]!, w);
  }
  for (const p of raised) heap.push(p);
  raised.length = 0;

  const wordSeen = new Int32Array(words).fill(-1);
  let merges = 0;
  while (merges < wanted) {
    const p = heap.pop();
    if (p === undefined) break;
    const a = pairLeft.data[p]!;
    const b = pairRight.data[p]!;
    const text = pieces[a]! + pieces[b]!;
    let c = pieceId.get(text);
    if (c === undefined) {
      c = pieces.length;
      pieces.push(text);
      pieceLength.push(pieceLength[a]! + pieceLength[b]!);
      solitary.push(false);
      pieceId.set(text, c);
      merges++;
      options.onMerge?.(merges, wanted);
    }
    merge++;
    for (let node = pairHead.data[p]!; node >= 0; node = nodeNext.data[node]!) {
      const w = nodeWord.data[node]!;
      if (wordSeen[w] === merge) continue;
      wordSeen[w] = merge;
      const s = wordStart[w]!;
      const end = s + wordLength[w]!;
      const n = wordCount[w]!;
      let out = s;
      for (let i = s; i < end; ) {
        if (i + 1 < end && symbols[i] === a && symbols[i + 1] === b) {
          if (out > s) {
            changePair(symbols[out - 1]!, a, -n, w);
            changePair(symbols[out - 1]!, c, n, w);
          }
          if (i + 2 < end) {
            changePair(b, symbols[i + 2]!, -n, w);
            changePair(c, symbols[i + 2]!, n, w);
          }
          changePair(a, b, -n, w);
          symbols[out++] = c;
          i += 2;
        } else {
          symbols[out++] = symbols[i++]!;
        }
      }
      wordLength[w] = out - s;
    }
    pairCount.data[p] = 0;
    pairHead.data[p] = -1;
    for (const q of raised) heap.push(q);
    raised.length = 0;
  }

  const tokens = [...FIXED_TOKENS, ...BYTE_TOKENS, ...specials];
  const types: number[] = [
    TokenType.Unknown,
    TokenType.Control,
    TokenType.Control,
    ...BYTE_TOKENS.map(() => TokenType.Byte),
    ...specials.map(() => TokenType.UserDefined),
  ];
  const scores: number[] = tokens.map(() => 0);
  const taken = new Set(tokens);
  for (let id = 0; id < pieces.length; id++) {
    const piece = pieces[id]!;
    if (taken.has(piece)) continue; // a special token's text learned as a piece
    taken.add(piece);
    tokens.push(piece);
    types.push(TokenType.Normal);
    scores.push(id < chars.length ? -(merges + id + 1) : -(id - chars.length));
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
      documents: counter.documents,
      textCharacters: counter.characters,
      words: counter.counts.size,
      prunedWords: counter.pruned,
      pruneThreshold: counter.threshold,
      longWords: counter.longWords,
    },
  };
}

/** Counts the documents' words, then learns the vocabulary from them. */
export async function trainTokenizer(
  documents: Iterable<string> | AsyncIterable<string>,
  options: TokenizerTrainOptions,
): Promise<TrainedTokenizer> {
  const counter = new WordCounter(options);
  for await (const document of documents) counter.addDocument(document);
  return learnVocabulary(counter, options);
}

/** Writes tokenizer metadata (`tokenizer.ggml.*`) into a GGUF under construction. */
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
 * Writes a vocabulary-only GGUF (general.architecture "llama", the tokenizer metadata, no
 * tensors), atomically. llama.cpp loads it with vocab_only (node-llama-cpp: `vocabOnly: true`);
 * smallhammer reads the tokenizer from it wherever a tokenizer file is asked for.
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

/**
 * A max-heap of pair ids by count, ties to the lower left id, then the lower right id. Entries
 * go stale as counts change: a rise pushes the pair again, and a pop whose count has dropped
 * since it was pushed puts the pair back with its current count, so the pair popped is always
 * the most frequent one.
 */
class PairHeap {
  private ids = new Int32Array(1024);
  private keys = new Float64Array(1024);
  private size = 0;

  constructor(
    private readonly count: FloatVector,
    private readonly left: IntVector,
    private readonly right: IntVector,
  ) {}

  private before(i: number, j: number): boolean {
    const ki = this.keys[i]!;
    const kj = this.keys[j]!;
    if (ki !== kj) return ki > kj;
    const pi = this.ids[i]!;
    const pj = this.ids[j]!;
    const li = this.left.data[pi]!;
    const lj = this.left.data[pj]!;
    if (li !== lj) return li < lj;
    return this.right.data[pi]! < this.right.data[pj]!;
  }

  private swap(i: number, j: number): void {
    const id = this.ids[i]!;
    this.ids[i] = this.ids[j]!;
    this.ids[j] = id;
    const key = this.keys[i]!;
    this.keys[i] = this.keys[j]!;
    this.keys[j] = key;
  }

  /** Queues pair `p` with its current count. */
  push(p: number): void {
    const key = this.count.data[p]!;
    if (key <= 0) return;
    if (this.size === this.ids.length) {
      const ids = new Int32Array(this.size * 2);
      ids.set(this.ids);
      this.ids = ids;
      const keys = new Float64Array(this.size * 2);
      keys.set(this.keys);
      this.keys = keys;
    }
    let i = this.size++;
    this.ids[i] = p;
    this.keys[i] = key;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  private popTop(): void {
    this.size--;
    if (this.size === 0) return;
    this.swap(0, this.size);
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let best = i;
      if (l < this.size && this.before(l, best)) best = l;
      if (r < this.size && this.before(r, best)) best = r;
      if (best === i) return;
      this.swap(i, best);
      i = best;
    }
  }

  /** The most frequent pair, or undefined when no pair is left. */
  pop(): number | undefined {
    while (this.size > 0) {
      const p = this.ids[0]!;
      const queued = this.keys[0]!;
      this.popTop();
      const current = this.count.data[p]!;
      if (current === queued) return p;
      // Counts only rise by pushing again, so a higher count has its own, newer entry.
      if (current > 0 && current < queued) this.push(p);
    }
    return undefined;
  }
}
