/**
 * Small vocabularies learned on tinyshakespeare (greedy BPE on word counts), as a SentencePiece
 * ('llama') and a byte-level ('gpt2') tokenizer, with the ChatML tokens; and vocabulary-only GGUF
 * files holding them, as `--tokenizer` takes.
 */
import { readFileSync } from "node:fs";
import { GgufWriter } from "../../src/formats/gguf.js";
import {
  BYTE_TO_CHAR,
  bytesToBpeText,
  preTokenize,
  preTokenizerFor,
  Tokenizer,
  type TokenizerDescription,
  TokenType,
} from "../../src/tokenizer/index.js";

const CORPUS = readFileSync(new URL("../fixtures/tinyshakespeare.txt", import.meta.url), "utf8");
const TRAIN = CORPUS.slice(0, 150_000);

/** Greedy BPE: the most frequent adjacent pair merges first. */
function learnMerges(wordCounts: Map<string, number>, count: number): [string, string][] {
  const words = [...wordCounts].map(([w, n]) => ({ symbols: Array.from(w), n }));
  const merges: [string, string][] = [];
  for (let m = 0; m < count; m++) {
    const pairs = new Map<string, number>();
    for (const { symbols, n } of words) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const key = `${symbols[i]}\u0000${symbols[i + 1]}`;
        pairs.set(key, (pairs.get(key) ?? 0) + n);
      }
    }
    let best: string | undefined;
    let bestN = 1;
    for (const [key, n] of pairs) {
      if (n > bestN || (n === bestN && best !== undefined && key < best)) {
        best = key;
        bestN = n;
      }
    }
    if (best === undefined) break;
    const [a, b] = best.split("\u0000") as [string, string];
    merges.push([a, b]);
    for (const { symbols } of words) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        if (symbols[i] === a && symbols[i + 1] === b) symbols.splice(i, 2, a + b);
      }
    }
  }
  return merges;
}

/**
 * SentencePiece style: <unk> <s> </s>, 256 byte tokens, the corpus's characters, learned pieces,
 * pieces across word boundaries ("▁▁", "e▁", ",▁", as real vocabularies have), and the ChatML
 * tokens as user-defined tokens.
 */
export function spmDescription(): TokenizerDescription {
  return remember("spm description", learnSpm);
}

function learnSpm(): TokenizerDescription {
  const counts = new Map<string, number>();
  for (const w of TRAIN.split(/\s+/)) if (w) counts.set(`▁${w}`, (counts.get(`▁${w}`) ?? 0) + 1);
  const tokens = ["<unk>", "<s>", "</s>"];
  const types: number[] = [TokenType.Unknown, TokenType.Control, TokenType.Control];
  const scores = [0, 0, 0];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(TokenType.Byte);
    scores.push(0);
  }
  const seen = new Set(tokens);
  const add = (piece: string, score: number, type: number = TokenType.Normal) => {
    if (seen.has(piece)) return;
    seen.add(piece);
    tokens.push(piece);
    types.push(type);
    scores.push(score);
  };
  const chars = [...new Set(Array.from(TRAIN.replace(/\s/g, "")))].sort();
  for (const [i, c] of chars.entries()) add(c, -1000 - i);
  add("▁", -999);
  for (const [i, [a, b]] of learnMerges(counts, 300).entries()) add(a + b, -i);
  add("▁▁", -50);
  add("e▁", -300);
  add(",▁", -301);
  add("<|im_start|>", 0, TokenType.UserDefined);
  add("<|im_end|>", 0, TokenType.UserDefined);
  return {
    model: "llama",
    tokens,
    tokenTypes: types,
    scores,
    bosId: 1,
    eosId: 2,
    unkId: 0,
    addBos: true,
    addEos: false,
  };
}

/** Byte-level BPE with the given pre-tokenizer: byte characters, learned merges, special tokens. */
export function bpeDescription(pre = "llama-bpe"): TokenizerDescription {
  return remember(`bpe description ${pre}`, () => learnBpe(pre));
}

function learnBpe(pre: string): TokenizerDescription {
  const counts = new Map<string, number>();
  const utf8 = new TextEncoder();
  for (const w of preTokenize(TRAIN, preTokenizerFor(pre))) {
    const e = bytesToBpeText(utf8.encode(w));
    counts.set(e, (counts.get(e) ?? 0) + 1);
  }
  const learned = learnMerges(counts, 300);
  const tokens = [...BYTE_TO_CHAR];
  const seen = new Set(tokens);
  for (const [a, b] of learned) {
    if (!seen.has(a + b)) {
      seen.add(a + b);
      tokens.push(a + b);
    }
  }
  const types = tokens.map(() => TokenType.Normal as number);
  const special = (text: string, type: number) => {
    tokens.push(text);
    types.push(type);
    return tokens.length - 1;
  };
  const eos = special("<|endoftext|>", TokenType.Control);
  special("<|im_start|>", TokenType.Control);
  special("<|im_end|>", TokenType.Control);
  return {
    model: "gpt2",
    pre,
    tokens,
    tokenTypes: types,
    merges: learned.map(([a, b]) => `${a} ${b}`),
    bosId: eos,
    eosId: eos,
    addBos: false,
    addEos: false,
  };
}

const cache = new Map<string, unknown>();

/** Vocabularies are learned once per test file. */
function remember<T>(key: string, make: () => T): T {
  if (!cache.has(key)) cache.set(key, make());
  return cache.get(key) as T;
}

/** The SentencePiece tokenizer. */
export function spmTokenizer(): Tokenizer {
  return remember("spm", () => new Tokenizer(spmDescription()));
}

/** The byte-level tokenizer with the given pre-tokenizer. */
export function bpeTokenizer(pre = "llama-bpe"): Tokenizer {
  return remember(`bpe ${pre}`, () => new Tokenizer(bpeDescription(pre)));
}

/** Writes a vocabulary-only GGUF (metadata, no tensors), optionally with a chat template. */
export function writeVocabGguf(
  path: string,
  desc: TokenizerDescription,
  extra: { chatTemplate?: string; contextLength?: number } = {},
): void {
  const w = new GgufWriter();
  w.setString("general.architecture", "llama");
  w.setString("general.name", "shakespeare-vocab");
  w.setU32("llama.context_length", extra.contextLength ?? 256);
  w.setString("tokenizer.ggml.model", desc.model);
  if (desc.pre !== undefined) w.setString("tokenizer.ggml.pre", desc.pre);
  w.setStringArray("tokenizer.ggml.tokens", [...desc.tokens]);
  if (desc.tokenTypes) w.setI32Array("tokenizer.ggml.token_type", Int32Array.from(desc.tokenTypes));
  if (desc.scores) w.setF32Array("tokenizer.ggml.scores", Float32Array.from(desc.scores));
  if (desc.merges) w.setStringArray("tokenizer.ggml.merges", [...desc.merges]);
  if (desc.bosId !== undefined) w.setU32("tokenizer.ggml.bos_token_id", desc.bosId);
  if (desc.eosId !== undefined) w.setU32("tokenizer.ggml.eos_token_id", desc.eosId);
  if (desc.unkId !== undefined) w.setU32("tokenizer.ggml.unknown_token_id", desc.unkId);
  w.setBool("tokenizer.ggml.add_bos_token", desc.addBos);
  w.setBool("tokenizer.ggml.add_eos_token", desc.addEos);
  if (extra.chatTemplate !== undefined) w.setString("tokenizer.chat_template", extra.chatTemplate);
  w.write(path);
}
