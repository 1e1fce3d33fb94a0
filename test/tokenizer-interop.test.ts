/**
 * Token-for-token agreement with llama.cpp (through node-llama-cpp): vocabularies learned on
 * tinyshakespeare are written into GGUF files, loaded by llama.cpp with vocabOnly, and both sides
 * tokenize and detokenize the same texts.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, type Llama, LlamaLogLevel, type LlamaModel, type Token } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GGMLType } from "../src/formats/ggml-types.js";
import { GgufValueType, GgufWriter, readGgufHeader } from "../src/formats/gguf.js";
import {
  BYTE_TO_CHAR,
  bytesToBpeText,
  preTokenize,
  preTokenizerFor,
  Tokenizer,
  TokenType,
} from "../src/tokenizer/index.js";

const CORPUS = readFileSync(new URL("./fixtures/tinyshakespeare.txt", import.meta.url), "utf8");
const TRAIN = CORPUS.slice(0, 200_000);

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

/** Greedy BPE on word counts: returns the merges, most frequent pair first. */
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
    let bestN = 0;
    for (const [key, n] of pairs) {
      if (n > bestN || (n === bestN && best !== undefined && key < best)) {
        best = key;
        bestN = n;
      }
    }
    if (!best || bestN < 2) break;
    const [a, b] = best.split("\u0000") as [string, string];
    merges.push([a, b]);
    for (const word of words) {
      const s = word.symbols;
      for (let i = 0; i + 1 < s.length; i++) {
        if (s[i] === a && s[i + 1] === b) s.splice(i, 2, a + b);
      }
    }
  }
  return merges;
}

interface Vocab {
  tokens: string[];
  types?: number[];
  scores?: number[];
  merges?: string[];
}

/** SentencePiece-style: <unk> <s> </s>, 256 bytes, characters, learned pieces, user-defined tokens. */
function learnSpmVocab(): Vocab {
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
  // Leave the digits out so that they fall back to bytes.
  for (const [i, c] of chars.filter((c) => !/[0-9]/.test(c)).entries()) add(c, -1000 - i);
  add("▁", -999);
  for (const [i, [a, b]] of learnMerges(counts, 400).entries()) add(a + b, -i);
  add("▁▁", -50);
  add("▁▁▁▁", -60);
  // Pieces that cross a word boundary: the chunked SentencePiece encoder must still find them.
  add("▁of▁the", -5);
  add("e▁", -300);
  add(",▁", -301);
  add("é", -500);
  add("▁caf", -200);
  add("▁café", -201);
  add("<|im_start|>", 0, TokenType.UserDefined);
  add("<|im_end|>", 0, TokenType.UserDefined);
  add("[TOOL]", 0, TokenType.UserDefined);
  return { tokens, types, scores };
}

/** Byte-level: the 256 byte characters, learned merges, then special tokens. */
function learnBpeVocab(): Vocab {
  const counts = new Map<string, number>();
  const utf8 = new TextEncoder();
  for (const w of preTokenize(TRAIN, preTokenizerFor("gpt-2"))) {
    const e = bytesToBpeText(utf8.encode(w));
    counts.set(e, (counts.get(e) ?? 0) + 1);
  }
  const learned = learnMerges(counts, 400);
  const tokens = [...BYTE_TO_CHAR];
  const seen = new Set(tokens);
  for (const [a, b] of learned) {
    if (!seen.has(a + b)) {
      seen.add(a + b);
      tokens.push(a + b);
    }
  }
  const merges = learned.map(([a, b]) => `${a} ${b}`);
  // A merge whose result is not a token, and a whole word reachable only without merges.
  if (!seen.has("Ġ~")) merges.push("Ġ ~");
  tokens.push("Ġxyzzy");
  const types = tokens.map(() => TokenType.Normal as number);
  for (const [text, type] of [
    ["<|endoftext|>", TokenType.Control],
    ["<|im_start|>", TokenType.UserDefined],
    ["<|im_end|>", TokenType.Control],
  ] as const) {
    tokens.push(text);
    types.push(type);
  }
  return { tokens, types, merges };
}

/** A vocabulary-only Llama GGUF (llama.cpp still wants the tensors, so they are tiny zeros). */
function writeVocabGguf(path: string, vocab: Vocab, keys: (w: GgufWriter) => void): void {
  const dim = 8;
  const ffn = 16;
  const n = vocab.tokens.length;
  const w = new GgufWriter();
  w.setString("general.architecture", "llama");
  w.setString("general.name", "tokenizer-interop");
  w.setU32("llama.context_length", 64);
  w.setU32("llama.embedding_length", dim);
  w.setU32("llama.block_count", 1);
  w.setU32("llama.feed_forward_length", ffn);
  w.setU32("llama.rope.dimension_count", dim / 2);
  w.setU32("llama.attention.head_count", 2);
  w.setU32("llama.attention.head_count_kv", 2);
  w.setF32("llama.attention.layer_norm_rms_epsilon", 1e-5);
  w.setU32("llama.vocab_size", n);
  w.setStringArray("tokenizer.ggml.tokens", vocab.tokens);
  if (vocab.types) w.setI32Array("tokenizer.ggml.token_type", vocab.types);
  if (vocab.scores) w.setF32Array("tokenizer.ggml.scores", vocab.scores);
  if (vocab.merges) w.setStringArray("tokenizer.ggml.merges", vocab.merges);
  keys(w);
  const zeros = (dims: number[]) => new Uint8Array(4 * dims.reduce((a, b) => a * b, 1));
  const tensor = (name: string, dims: number[]) => w.addTensor(name, dims, GGMLType.F32, zeros(dims));
  tensor("token_embd.weight", [dim, n]);
  tensor("blk.0.attn_norm.weight", [dim]);
  tensor("blk.0.attn_q.weight", [dim, dim]);
  tensor("blk.0.attn_k.weight", [dim, dim]);
  tensor("blk.0.attn_v.weight", [dim, dim]);
  tensor("blk.0.attn_output.weight", [dim, dim]);
  tensor("blk.0.ffn_norm.weight", [dim]);
  tensor("blk.0.ffn_gate.weight", [dim, ffn]);
  tensor("blk.0.ffn_up.weight", [dim, ffn]);
  tensor("blk.0.ffn_down.weight", [ffn, dim]);
  tensor("output_norm.weight", [dim]);
  tensor("output.weight", [dim, n]);
  w.write(path);
}

/** Metadata as fromGgufMetadata sees it: scalars as values, arrays as their element values. */
function metadataGetter(path: string): (key: string) => unknown {
  const header = readGgufHeader(path);
  return (key) => {
    const kv = header.get(key);
    if (!kv) return undefined;
    return kv.type === GgufValueType.ARRAY ? kv.value.values : kv.value;
  };
}

const TRICKY = [
  "",
  " ",
  "  ",
  "  leading spaces",
  "trailing   ",
  "Hello world",
  "Hello, world! How are you?",
  "multiple\n\nnewlines\t\ttabs",
  "\n",
  " \n \n\n  x",
  "naïve café résumé Ångström",
  "日本語のテキスト、中文文本。한국어",
  "Привет, мир! Съешь же ещё этих мягких французских булок",
  "emoji 😀 and 👩‍👩‍👧‍👦 family, flags 🇯🇵🇺🇸, skin 👍🏽, keycap 1️⃣",
  "1234567890 3.14159 -42 1,000,000 0x1F",
  "don't I'll we're you've she'd it's DON'T I'LL",
  "mixed: English, Ελληνικά, עברית, العربية, हिन्दी, ไทย",
  "<s>",
  "a<s>b",
  "Hello <s> world </s> again",
  "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
  "<|im_start|><|im_start|> <|im_end|>",
  "<|endoftext|>Once upon a time<|endoftext|>",
  "<unk> and [TOOL] and <0x41>",
  "x xyzzy xyzzy! ~ ~~ a~",
  "tabs\tand\u00a0nbsp\u2003em\u3000ideographic\u0085nel",
  "\u0000null\u0001ctrl",
  "what ?! yes . no , maybe 's 'm 're 've 'll ' ",
  "    four spaces and     more",
  "ROMEO:\nBut, soft! what light through yonder window breaks?",
  "a\r\nb\rc",
  "lone \uD800 surrogate",
];

/** Random strings from a mix of scripts, marks, odd whitespace, digits, emoji and token texts. */
function randomStrings(count: number, seed: number): string[] {
  const rand = lcg(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const pieces = [
    "the",
    "and",
    " ",
    "  ",
    "\n",
    "\t",
    "\r\n",
    "'s",
    "'T",
    "'re",
    "ll",
    "don't",
    ".",
    ",",
    "?!",
    "...",
    "0",
    "42",
    "12345",
    "3.14",
    "é",
    "e\u0301",
    "ß",
    "Ω",
    "ж",
    "中",
    "文字",
    "한",
    "ا",
    "ह",
    "ि",
    "ไ",
    "😀",
    "👍🏽",
    "👩‍💻",
    "🇫🇷",
    "\u00a0",
    "\u0085",
    "\u2028",
    "\u3000",
    "\u200b",
    "\ufeff",
    "\u00ad",
    "\u0000",
    "\u001f",
    "\ue000",
    "\u{10ffff}",
    "\u2581",
    "▁▁",
    "<s>",
    "</s>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "[TOOL]",
    "<0x41>",
    "$",
    "+",
    "<",
    "=",
    "^",
    "`",
    "|",
    "~",
    "Ⅻ",
    "½",
    "٣",
  ];
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    let text = "";
    const len = 1 + Math.floor(rand() * 12);
    for (let j = 0; j < len; j++) text += pick(pieces);
    out.push(text);
  }
  return out;
}

function shakespeareLines(count: number, seed: number): string[] {
  const lines = CORPUS.split("\n");
  const rand = lcg(seed);
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    const start = Math.floor(rand() * (lines.length - 3));
    const take = 1 + Math.floor(rand() * 3);
    out.push(lines.slice(start, start + take).join("\n"));
  }
  return out;
}

interface Case {
  name: string;
  vocab: () => Vocab;
  keys: (w: GgufWriter, vocab: Vocab) => void;
}

const idOf = (vocab: Vocab, text: string) => vocab.tokens.indexOf(text);

const SPM_KEYS = (w: GgufWriter) => {
  w.setString("tokenizer.ggml.model", "llama");
  w.setU32("tokenizer.ggml.bos_token_id", 1);
  w.setU32("tokenizer.ggml.eos_token_id", 2);
  w.setU32("tokenizer.ggml.unknown_token_id", 0);
  w.setBool("tokenizer.ggml.add_bos_token", true);
  w.setBool("tokenizer.ggml.add_eos_token", false);
};

const bpeKeys = (pre: string | undefined) => (w: GgufWriter, vocab: Vocab) => {
  w.setString("tokenizer.ggml.model", "gpt2");
  if (pre !== undefined) w.setString("tokenizer.ggml.pre", pre);
  w.setU32("tokenizer.ggml.bos_token_id", idOf(vocab, "<|endoftext|>"));
  w.setU32("tokenizer.ggml.eos_token_id", idOf(vocab, "<|endoftext|>"));
};

const CASES: Case[] = [
  { name: "llama (SentencePiece)", vocab: learnSpmVocab, keys: SPM_KEYS },
  {
    name: "llama without space prefix, with EOS",
    vocab: learnSpmVocab,
    keys: (w) => {
      SPM_KEYS(w);
      w.setBool("tokenizer.ggml.add_space_prefix", false);
      w.setBool("tokenizer.ggml.add_eos_token", true);
    },
  },
  {
    name: "llama without token types or scores",
    vocab: () => ({ tokens: learnSpmVocab().tokens }),
    keys: SPM_KEYS,
  },
  { name: "gpt2 pre=gpt-2", vocab: learnBpeVocab, keys: bpeKeys("gpt-2") },
  { name: "gpt2 pre=llama-bpe", vocab: learnBpeVocab, keys: bpeKeys("llama-bpe") },
  { name: "gpt2 pre=default", vocab: learnBpeVocab, keys: bpeKeys("default") },
  { name: "gpt2 pre absent", vocab: learnBpeVocab, keys: bpeKeys(undefined) },
  { name: "gpt2 pre=qwen2", vocab: learnBpeVocab, keys: bpeKeys("qwen2") },
  { name: "gpt2 pre=starcoder", vocab: learnBpeVocab, keys: bpeKeys("starcoder") },
];

/**
 * llama.cpp's own add_bos / add_eos flags. node-llama-cpp's public getters also require a
 * control-type BOS, so read the native addon's (llama_vocab_get_add_bos / _eos).
 */
function rawFlags(model: LlamaModel): { addBos: boolean; addEos: boolean } {
  const addon = (
    model as unknown as { _model: { shouldPrependBosToken(): boolean; shouldAppendEosToken(): boolean } }
  )._model;
  return { addBos: addon.shouldPrependBosToken(), addEos: addon.shouldAppendEosToken() };
}

let llama: Llama;
let dir: string;

beforeAll(async () => {
  llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  dir = mkdtempSync(join(tmpdir(), "smallhammer-tokenizer-"));
});

afterAll(async () => {
  await llama?.dispose();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const vocabCache = new Map<Case["vocab"], Vocab>();

describe.each(CASES)("$name matches llama.cpp", (c) => {
  let model: LlamaModel;
  let tok: Tokenizer;
  let vocab: Vocab;

  beforeAll(async () => {
    vocab = vocabCache.get(c.vocab) ?? c.vocab();
    vocabCache.set(c.vocab, vocab);
    const path = join(dir, `${c.name.replace(/[^a-z0-9]+/gi, "-")}.gguf`);
    writeVocabGguf(path, vocab, (w) => c.keys(w, vocab));
    tok = Tokenizer.fromGgufMetadata(metadataGetter(path));
    model = await llama.loadModel({ modelPath: path, vocabOnly: true });
  });

  afterAll(async () => {
    await model?.dispose();
  });

  it("has the same special tokens and flags", () => {
    expect(tok.vocabSize).toBe(vocab.tokens.length);
    // node-llama-cpp reports BOS and EOS only when they are control tokens.
    const control = (id: number | undefined) =>
      id !== undefined && tok.tokenType(id) === TokenType.Control ? id : null;
    expect(control(tok.bosId)).toBe(model.tokens.bos);
    expect(control(tok.eosId)).toBe(model.tokens.eos);
    expect(tok.eotId ?? null).toBe(model.tokens.eot);
    expect(tok.addBos).toBe(rawFlags(model).addBos);
    expect(tok.addEos).toBe(rawFlags(model).addEos);
    const eog = [];
    for (let id = 0; id < vocab.tokens.length; id++) if (model.isEogToken(id as Token)) eog.push(id);
    expect(tok.eogTokenIds).toEqual(eog);
    // The learned merges do get used.
    expect(tok.encode("the king and the queen", { addSpecial: false }).length).toBeLessThan(12);
  });

  const texts = [
    ...TRICKY,
    ...shakespeareLines(300, 1),
    ...randomStrings(300, 7),
    CORPUS.slice(300_000, 400_000),
    shakespeareLines(40, 3).join("<|im_end|>\n<|im_start|>"),
  ];

  it.each([true, false])("tokenizes tricky strings and shakespeare the same (parseSpecial %s)", (special) => {
    for (const text of texts) {
      const expected = Array.from(model.tokenize(text, special));
      const actual = tok.encode(text, { addSpecial: false, parseSpecial: special });
      expect(actual, JSON.stringify(text)).toEqual(expected);
    }
  });

  it("detokenizes the same", () => {
    for (const text of texts) {
      const ids = Array.from(model.tokenize(text, true));
      for (const special of [true, false]) {
        expect(tok.decode(ids, { skipSpecial: !special }), JSON.stringify(text)).toBe(
          model.detokenize(ids as Token[], special),
        );
      }
    }
  });

  it("streams the same text llama.cpp detokenizes", () => {
    for (const text of texts) {
      const ids = Array.from(model.tokenize(text, true));
      const stream = tok.streamDecoder({ skipSpecial: true });
      const streamed = ids.map((id) => stream.push(id)).join("") + stream.flush();
      expect(streamed, JSON.stringify(text)).toBe(model.detokenize(ids, false));
    }
  });

  it("detokenizes random token sequences the same", () => {
    const rand = lcg(42);
    const n = vocab.tokens.length;
    for (let i = 0; i < 300; i++) {
      const len = 1 + Math.floor(rand() * 12);
      const ids = Array.from({ length: len }, () => Math.floor(rand() * n));
      for (const special of [true, false]) {
        expect(tok.decode(ids, { skipSpecial: !special }), JSON.stringify(ids)).toBe(
          model.detokenize(ids as Token[], special),
        );
      }
    }
  });

  it("adds BOS and EOS as llama.cpp's vocabulary says", () => {
    const ids = tok.encode("Hello world");
    const body = Array.from(model.tokenize("Hello world", true));
    const bos = rawFlags(model).addBos ? [tok.bosId!] : [];
    const eos = rawFlags(model).addEos ? [tok.eosId!] : [];
    expect(ids).toEqual([...bos, ...body, ...eos]);
    for (const special of [true, false]) {
      expect(tok.decode(ids, { skipSpecial: !special })).toBe(model.detokenize(ids as Token[], special));
    }
  });
});
