// Tokenizer training: `smallhammer tokenizer train` on tinyshakespeare as a user runs it, the
// vocabulary loaded by llama.cpp (node-llama-cpp, vocab only) and compared token for token with
// ours; the incremental trainer against a recount-everything reference; the tie rule, the merge
// order the scores give, the bounded word table, special tokens and the one-line errors.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, type Llama, LlamaLogLevel, type LlamaModel, type Token } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readTokenizerFile } from "../src/data/chat-tokens.js";
import { readGgufHeader } from "../src/formats/gguf.js";
import { Tokenizer, TokenType } from "../src/tokenizer/index.js";
import {
  learnVocabulary,
  type TrainedTokenizer,
  trainTokenizer,
  WordCounter,
} from "../src/tokenizer/train.js";
import { ensureBuilt, runCli } from "./helpers/cli.js";

const CORPUS_PATH = new URL("./fixtures/tinyshakespeare.txt", import.meta.url).pathname;
const CORPUS = readFileSync(CORPUS_PATH, "utf8");
const SPEECHES = CORPUS.split(/\n\s*\n/);

const TRICKY = [
  "",
  " ",
  "  ",
  "  leading spaces",
  "trailing spaces  ",
  "tabs\tand\nnewlines\n\n",
  "\n",
  " \n \n\n  x",
  "ÆØÅ naïve café — “quotes” 日本語のテキスト 🤖👍🏽 👩‍👩‍👧‍👦 🇯🇵",
  "Привет, мир! Ελληνικά עברית العربية हिन्दी ไทย",
  "1234567890 3.14159 -42 0x1F",
  "don't I'll we're you've DON'T",
  "ROMEO:\nWhat, ho! apothecary!",
  "x".repeat(300),
  "    four spaces and     more",
  "a\r\nb\rc",
  "\u0000null\u0001ctrl\u00a0nbsp\u3000ideographic",
  "▁already▁escaped ▁▁",
  "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
  "<|im_start|><|im_start|> <|im_end|>",
  "<s> </s> <unk> <0x41> a<s>b",
];

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

/** Random strings from a mix of scripts, odd whitespace, digits, emoji and token texts. */
function randomStrings(count: number, seed: number): string[] {
  const rand = lcg(seed);
  const pieces = [
    "the",
    "king",
    " ",
    "  ",
    "\n",
    "\t",
    "'s",
    ".",
    ",",
    "?!",
    "42",
    "é",
    "e\u0301",
    "ß",
    "ж",
    "中文",
    "😀",
    "👍🏽",
    "\u00a0",
    "\u2028",
    "\u200b",
    "\ufeff",
    "▁",
    "<s>",
    "</s>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<0x41>",
    "~",
    "|",
    "<",
  ];
  return Array.from({ length: count }, () => {
    let text = "";
    const n = 1 + Math.floor(rand() * 10);
    for (let j = 0; j < n; j++) text += pieces[Math.floor(rand() * pieces.length)];
    return text;
  });
}

let dir: string;
let llama: Llama;

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "smallhammer-tokenizer-train-"));
  // node-llama-cpp first tries a full load to size the model; a vocabulary-only file has no
  // tensors, so that try fails (and is logged) before the vocab-only load succeeds.
  llama = await getLlama({
    gpu: false,
    build: "never",
    logLevel: LlamaLogLevel.error,
    logger: (_level, message) => {
      if (!/error loading model|failed to load model|Failed simulating/.test(message)) console.error(message);
    },
  });
});

afterAll(async () => {
  await llama?.dispose();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function train(args: string[]) {
  return await runCli(["tokenizer", "train", ...args]);
}

describe.each([512, 2048])("tokenizer train --vocab-size %i on tinyshakespeare", (vocab) => {
  let path: string;
  let model: LlamaModel;
  let tokenizer: Tokenizer;
  let summary: Record<string, unknown>;

  beforeAll(async () => {
    path = join(dir, `tok${vocab}.gguf`);
    const r = await train([
      CORPUS_PATH,
      "--vocab-size",
      String(vocab),
      "--out",
      path,
      "--special",
      "<|im_start|>,<|im_end|>",
      "--json",
    ]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    summary = JSON.parse(r.stdout);
    tokenizer = readTokenizerFile(path).tokenizer;
    model = await llama.loadModel({ modelPath: path, vocabOnly: true });
  });

  afterAll(async () => {
    await model?.dispose();
  });

  it("writes a vocabulary-only llama GGUF with the layout and keys llama.cpp expects", () => {
    expect(summary).toMatchObject({
      out: path,
      requestedVocabSize: vocab,
      vocabSize: vocab,
      files: 1,
      bytes: CORPUS.length,
      documents: SPEECHES.length,
      prunedWords: 0,
      skipped: {},
    });
    const header = readGgufHeader(path);
    expect(header.tensors).toHaveLength(0);
    expect(header.getString("general.architecture")).toBe("llama");
    expect(header.getString("tokenizer.ggml.model")).toBe("llama");
    expect(header.getNumber("tokenizer.ggml.unknown_token_id")).toBe(0);
    expect(header.getNumber("tokenizer.ggml.bos_token_id")).toBe(1);
    expect(header.getNumber("tokenizer.ggml.eos_token_id")).toBe(2);
    expect(header.getBool("tokenizer.ggml.add_bos_token")).toBe(true);
    expect(header.getBool("tokenizer.ggml.add_eos_token")).toBe(false);
    expect(header.getBool("tokenizer.ggml.add_space_prefix")).toBe(true);
    const tokens = header.getStringArray("tokenizer.ggml.tokens");
    const types = Array.from(header.getNumberArray("tokenizer.ggml.token_type"));
    const scores = Array.from(header.getNumberArray("tokenizer.ggml.scores"));
    expect(tokens).toHaveLength(vocab);
    expect(new Set(tokens).size).toBe(vocab);
    expect(tokens.slice(0, 3)).toEqual(["<unk>", "<s>", "</s>"]);
    expect(types.slice(0, 3)).toEqual([TokenType.Unknown, TokenType.Control, TokenType.Control]);
    for (let b = 0; b < 256; b++) {
      expect(tokens[3 + b]).toBe(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
      expect(types[3 + b]).toBe(TokenType.Byte);
    }
    expect(tokens.slice(259, 261)).toEqual(["<|im_start|>", "<|im_end|>"]);
    expect(types.slice(259, 261)).toEqual([TokenType.UserDefined, TokenType.UserDefined]);
    // Characters, then merged pieces with falling scores: every merged piece outranks every character.
    const normal = types.map((t, id) => (t === TokenType.Normal ? id : -1)).filter((id) => id >= 0);
    expect(normal).toHaveLength(vocab - 261);
    const merged = normal.filter((id) => Array.from(tokens[id]!).length > 1);
    const chars = normal.filter((id) => Array.from(tokens[id]!).length === 1);
    expect(merged.length).toBe(summary.merges);
    expect(Math.max(...chars)).toBeLessThan(Math.min(...merged));
    for (let i = 1; i < merged.length; i++) expect(scores[merged[i]!]).toBeLessThan(scores[merged[i - 1]!]!);
    expect(Math.max(...chars.map((id) => scores[id]!))).toBeLessThan(scores[merged.at(-1)!]!);
  });

  it("tokenizes exactly as llama.cpp does: corpus lines, tricky and random strings", () => {
    expect(tokenizer.vocabSize).toBe(vocab);
    expect(model.tokens.bos).toBe(1);
    expect(model.tokens.eos).toBe(2);
    const lines = CORPUS.split("\n").filter((_, i) => i % 7 === 0);
    const texts = [...TRICKY, ...lines, ...randomStrings(400, vocab), CORPUS.slice(500_000, 560_000)];
    for (const text of texts) {
      for (const special of [true, false]) {
        const ours = tokenizer.encode(text, { addSpecial: false, parseSpecial: special });
        expect(ours, JSON.stringify(text)).toEqual(Array.from(model.tokenize(text, special)));
      }
      const ids = tokenizer.encode(text, { addSpecial: false });
      for (const special of [true, false]) {
        expect(tokenizer.decode(ids, { skipSpecial: !special }), JSON.stringify(text)).toBe(
          model.detokenize(ids as Token[], special),
        );
      }
    }
    // The merges do their job: a word is one or two tokens, text shrinks well below its bytes.
    expect(tokenizer.encode("the king", { addSpecial: false }).length).toBeLessThanOrEqual(
      vocab > 1000 ? 2 : 4,
    );
    const sample = CORPUS.slice(0, 200_000);
    expect(tokenizer.encode(sample, { addSpecial: false }).length).toBeLessThan(
      sample.length * (vocab > 1000 ? 0.4 : 0.6),
    );
  });

  it("decodes back to the exact text", () => {
    // "▁" in text is the escaped space and decodes as " ", in SentencePiece as in llama.cpp.
    const plain = (t: string) => !t.includes("<|im_") && !t.includes("▁");
    const texts = [
      ...TRICKY.filter(plain),
      ...SPEECHES.filter((_, i) => i % 5 === 0),
      ...randomStrings(300, 99).filter(plain),
      CORPUS,
    ];
    for (const text of texts) {
      // Without special parsing, "<s>" in text is text; only user-defined tokens are matched,
      // and after one of those llama.cpp starts a new space-prefixed fragment.
      const ids = tokenizer.encode(text, { addSpecial: false, parseSpecial: false });
      expect(tokenizer.decode(ids), JSON.stringify(text.slice(0, 80))).toBe(text);
    }
    // Characters outside the vocabulary come back through byte tokens.
    const rare = "日本語 🤖 Ω";
    const ids = tokenizer.encode(rare, { addSpecial: false });
    expect(ids.some((id) => tokenizer.tokenType(id) === TokenType.Byte)).toBe(true);
    expect(tokenizer.decode(ids)).toBe(rare);
  });

  it("keeps special tokens whole", () => {
    const text = "<|im_start|>user\nhello<|im_end|>";
    const parsed = tokenizer.encode(text, { addSpecial: false }).map((id) => tokenizer.tokenText(id));
    expect(parsed[0]).toBe("<|im_start|>");
    expect(parsed.at(-1)).toBe("<|im_end|>");
    // Without special parsing a user-defined token is still matched; "<|im_end|>" is one of the
    // end-of-turn texts llama.cpp makes a control token, so it is then text, as in llama.cpp.
    const plain = tokenizer.encode(text, { addSpecial: false, parseSpecial: false });
    expect(tokenizer.tokenText(plain[0]!)).toBe("<|im_start|>");
    expect(plain).toEqual(Array.from(model.tokenize(text, false)));
    expect(tokenizer.eotId).toBe(260);
  });
});

/** A straightforward BPE trainer that recounts every pair before each merge (the reference). */
function referenceMerges(
  counts: Map<string, number>,
  chars: string[],
  merges: number,
  maxLength = 16,
): string[] {
  const id = new Map(chars.map((c, i) => [c, i]));
  const pieces = [...chars];
  const words = [...counts].map(([w, n]) => ({ syms: Array.from(w, (c) => id.get(c) ?? -1), n }));
  const lengths = chars.map(() => 1);
  const learned: string[] = [];
  const length = (p: number) => lengths[p]!;
  while (learned.length < merges) {
    const pairs = new Map<number, number>();
    for (const { syms, n } of words) {
      for (let i = 0; i + 1 < syms.length; i++) {
        const [a, b] = [syms[i]!, syms[i + 1]!];
        if (a < 0 || b < 0 || length(a) + length(b) > maxLength) continue;
        pairs.set(a * 1e6 + b, (pairs.get(a * 1e6 + b) ?? 0) + n);
      }
    }
    let best = -1;
    let bestN = 0;
    for (const [key, n] of pairs) if (n > bestN || (n === bestN && key < best)) [best, bestN] = [key, n];
    if (best < 0) break;
    const [a, b] = [Math.floor(best / 1e6), best % 1e6];
    const text = pieces[a]! + pieces[b]!;
    let c = pieces.indexOf(text);
    if (c < 0) {
      c = pieces.push(text) - 1;
      lengths.push(length(a) + length(b));
      learned.push(text);
    }
    for (const word of words) {
      const out: number[] = [];
      for (let i = 0; i < word.syms.length; i++) {
        if (word.syms[i] === a && word.syms[i + 1] === b) {
          out.push(c);
          i++;
        } else out.push(word.syms[i]!);
      }
      word.syms = out;
    }
  }
  return learned;
}

/** The merged pieces of a learned vocabulary, in the order learned (highest score first). */
function mergedPieces(result: TrainedTokenizer): string[] {
  const { tokens, tokenTypes, scores } = result.description;
  return tokens
    .map((t, id) => ({ t, id }))
    .filter(({ t, id }) => tokenTypes![id] === TokenType.Normal && Array.from(t).length > 1)
    .sort((x, y) => scores![y.id]! - scores![x.id]!)
    .map(({ t }) => t);
}

describe("learnVocabulary", () => {
  const counter = new WordCounter();
  for (const speech of SPEECHES.slice(0, 2500)) counter.addDocument(speech);

  it("learns the same pieces in the same order as recounting every pair before each merge", () => {
    const small = new WordCounter();
    for (const speech of SPEECHES.slice(0, 1000)) small.addDocument(speech);
    const result = learnVocabulary(small, { vocabSize: 259 + 70 + 300, maxPieceLength: 6 });
    const chars = result.description.tokens.slice(259, 259 + result.summary.characters);
    const merged = mergedPieces(result);
    expect(merged.length).toBe(result.summary.merges);
    expect(merged).toEqual(referenceMerges(small.counts, chars, merged.length, 6));
    expect(Math.max(...merged.map((p) => Array.from(p).length))).toBe(6);
  });

  it("breaks ties by the earlier left piece, then the earlier right piece", () => {
    const c = new WordCounter();
    c.counts.set("▁ab", 5);
    c.counts.set("▁cd", 5);
    c.counts.set("xy", 7);
    const result = learnVocabulary(c, { vocabSize: 259 + 7 + 5 });
    // Characters by count (▁ 10, x 7, y 7, then a b c d at 5, by code point).
    expect(result.description.tokens.slice(259, 266)).toEqual(["▁", "x", "y", "a", "b", "c", "d"]);
    expect(mergedPieces(result)).toEqual(["xy", "▁a", "▁c", "▁ab", "▁cd"]);
  });

  it("never merges digits (splitDigits) or isolated characters with a neighbour", async () => {
    const c = new WordCounter();
    c.counts.set('▁"b".', 50);
    c.counts.set('▁"bread"', 40);
    c.counts.set("▁2024.", 30);
    c.counts.set("b", 20);
    const plain = learnVocabulary(c, { vocabSize: 300 });
    expect(mergedPieces(plain)).toEqual(expect.arrayContaining(['▁"b".', "▁2024."]));
    const kept = learnVocabulary(c, { vocabSize: 300, splitDigits: true, isolate: '"' });
    const merged = mergedPieces(kept);
    expect(merged.length).toBeGreaterThan(0);
    for (const p of merged) expect(p, p).not.toMatch(/["0-9]/);
    // The letter after an isolated quote is the piece a line-initial letter is.
    const { description } = await trainTokenizer(['The word "bread" starts with "b".\nb\n'.repeat(50)], {
      vocabSize: 300,
      isolate: '"',
    });
    const tok = new Tokenizer(description);
    const pieces = (text: string) =>
      tok.encode(text, { addSpecial: false }).map((id) => tok.piece(id, false));
    const quoted = pieces('starts with "b".').map((p) => new TextDecoder().decode(p));
    const alone = pieces("x\nb").map((p) => new TextDecoder().decode(p));
    expect(quoted).toContain("b");
    expect(alone.at(-1)).toBe("b");
  });

  it("depends only on the word counts, not on the order they were counted in", () => {
    const reversed = new WordCounter();
    for (const [w, n] of [...counter.counts].reverse()) reversed.counts.set(w, n);
    const a = learnVocabulary(counter, { vocabSize: 1000 });
    const b = learnVocabulary(reversed, { vocabSize: 1000 });
    expect(b.description).toEqual(a.description);
  });

  it("scores pieces so the run-time tokenizer merges in the order training learned", async () => {
    const { description } = await trainTokenizer(SPEECHES.slice(0, 2500), { vocabSize: 1200 });
    const known = new Set(description.tokens);
    const words = [...counter.counts].filter(([w]) => Array.from(w).every((c) => known.has(c)));
    // Words through the run-time tokenizer (no space prefix: a word carries its own "▁").
    const runtime = (scores: number[]) => {
      const tok = new Tokenizer({ ...description, scores, addSpacePrefix: false });
      return (word: string) =>
        tok.encode(word.replaceAll("▁", " "), { addSpecial: false }).map((id) => tok.tokenText(id));
    };
    // The order training learned: repeatedly merge the neighbours forming the earliest-learned
    // piece (the leftmost of equals).
    const rank = new Map(mergedPieces({ description } as TrainedTokenizer).map((p, i) => [p, i]));
    const inTrainingOrder = (word: string) => {
      let syms = Array.from(word);
      for (;;) {
        let best = -1;
        let bestRank = Number.POSITIVE_INFINITY;
        for (let i = 0; i + 1 < syms.length; i++) {
          const r = rank.get(syms[i]! + syms[i + 1]!);
          if (r !== undefined && r < bestRank) [best, bestRank] = [i, r];
        }
        if (best < 0) return syms;
        syms = [...syms.slice(0, best), syms[best]! + syms[best + 1]!, ...syms.slice(best + 2)];
      }
    };
    const agreement = (scores: number[]) => {
      const segment = runtime(scores);
      let same = 0;
      let total = 0;
      for (const [word, n] of words) {
        total += n;
        if (JSON.stringify(segment(word)) === JSON.stringify(inTrainingOrder(word))) same += n;
      }
      return same / total;
    };
    const scores = Array.from(description.scores!);
    expect(agreement(scores)).toBe(1);
    // With the merge priorities reversed the segmentations differ: the check can fail.
    const reversed = scores.map((s, id) => (description.tokenTypes![id] === TokenType.Normal ? -s : s));
    expect(agreement(reversed)).toBeLessThan(0.9);
  });
});

describe("WordCounter", () => {
  it("keeps the word table within its limit by dropping rare words, keeping frequent ones", () => {
    const counter = new WordCounter({ maxWords: 2000 });
    for (const speech of SPEECHES) {
      counter.addDocument(speech);
      expect(counter.counts.size).toBeLessThanOrEqual(2000);
    }
    expect(counter.pruned).toBeGreaterThan(10_000);
    expect(counter.threshold).toBeGreaterThan(0);
    const full = new WordCounter();
    for (const speech of SPEECHES) full.addDocument(speech);
    // The 200 most frequent words survive, with counts low by at most the threshold.
    const top = [...full.counts].sort((a, b) => b[1] - a[1]).slice(0, 200);
    for (const [word, n] of top) {
      const kept = counter.counts.get(word);
      expect(kept, word).toBeDefined();
      expect(kept!).toBeLessThanOrEqual(n);
      expect(kept!).toBeGreaterThanOrEqual(n - counter.threshold * 20);
    }
  });

  it("splits words at spaces with the ▁ prefix, keeps newline runs, and cuts out special tokens", () => {
    const counter = new WordCounter({ specialTokens: ["<|im_end|>"] });
    counter.addDocument("Hello  world\n\nfoo<|im_end|>bar baz   ");
    expect(Object.fromEntries(counter.counts)).toEqual({
      "▁Hello": 1,
      "▁▁world": 1,
      "\n\n": 1,
      foo: 1,
      "▁bar": 1,
      "▁baz": 1,
      "▁▁▁": 1,
    });
    // A continuation (the next part of the same document) gets no space prefix.
    counter.addDocument("tail end", true);
    expect(counter.counts.get("tail")).toBe(1);
    expect(counter.counts.get("▁end")).toBe(1);
    expect(counter.documents).toBe(1);
  });
});

describe("tokenizer train (command line)", () => {
  it("is deterministic: the same corpus gives the same file", async () => {
    const a = join(dir, "det-a.gguf");
    const b = join(dir, "det-b.gguf");
    for (const out of [a, b]) {
      const r = await train([CORPUS_PATH, "--vocab-size", "800", "--out", out]);
      expect(r.stderr).toBe("");
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(
        /^.*det-.\.gguf: 800 tokens: <unk> <s> <\/s>, 256 bytes, 0 special, \d+ characters, \d+ merged pieces\n/,
      );
    }
    expect(readFileSync(a).equals(readFileSync(b))).toBe(true);
  });

  it("bounds the word table with --max-words and says what it dropped", async () => {
    const r = await train([
      CORPUS_PATH,
      "--vocab-size",
      "600",
      "--out",
      join(dir, "bounded.gguf"),
      "--max-words",
      "1000",
      "--json",
    ]);
    expect(r.status).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s.vocabSize).toBe(600);
    expect(s.words).toBeLessThanOrEqual(1000);
    expect(s.prunedWords).toBeGreaterThan(0);
    const text = await train([
      CORPUS_PATH,
      "--vocab-size",
      "600",
      "--out",
      join(dir, "bounded.gguf"),
      "--max-words",
      "1000",
      "--force",
    ]);
    expect(text.stdout).toMatch(/rare words dropped to keep the table under 1,000 \(counts up to \d+\)/);
  });

  it("never learns pieces across or inside special tokens, from JSONL", async () => {
    const jsonl = join(dir, "chat.jsonl");
    const rand = lcg(5);
    const lines = Array.from({ length: 400 }, () => {
      const speech = SPEECHES[Math.floor(rand() * SPEECHES.length)]!;
      return JSON.stringify({
        text: `<|im_start|>user\n${speech}<|im_end|>\n<|im_start|>assistant\nYes.<|im_end|>`,
      });
    });
    writeFileSync(jsonl, `${lines.join("\n")}\n`);
    const out = join(dir, "chat.gguf");
    expect(
      (
        await train([
          jsonl,
          "--vocab-size",
          "700",
          "--out",
          out,
          "--special",
          "<|im_start|>",
          "--special",
          "<|im_end|>",
        ])
      ).status,
    ).toBe(0);
    const tok = readTokenizerFile(out).tokenizer;
    for (let id = 0; id < tok.vocabSize; id++) {
      if (tok.tokenType(id) === TokenType.Normal) expect(tok.tokenText(id)).not.toMatch(/<\||\|>|im_/);
    }
    // Without --special the markup is learned as pieces.
    const plain = join(dir, "chat-plain.gguf");
    expect((await train([jsonl, "--vocab-size", "700", "--out", plain])).status).toBe(0);
    const learned = readTokenizerFile(plain).tokenizer;
    const texts = Array.from({ length: learned.vocabSize }, (_, id) => learned.tokenText(id));
    expect(texts.some((t) => t.includes("im_"))).toBe(true);
  });

  it("refuses bad requests in one line", async () => {
    const expectError = async (args: string[], message: string | RegExp) => {
      const r = await train(args);
      expect(r.status).toBe(2);
      expect(r.stdout).toBe("");
      expect(r.stderr.split("\n")).toHaveLength(2);
      if (typeof message === "string") expect(r.stderr).toBe(`smallhammer: ${message}\n`);
      else expect(r.stderr).toMatch(message);
    };
    const out = join(dir, "refused.gguf");
    await expectError(
      [CORPUS_PATH, "--vocab-size", "300", "--out", out],
      /^smallhammer: vocabulary size 300 is too small: the 259 special and byte tokens and 60 characters need 319 \(raise it, or lower the character coverage\)\n$/,
    );
    await expectError(
      [join(dir, "nope.txt"), "--vocab-size", "600", "--out", out],
      `${join(dir, "nope.txt")}: no such file`,
    );
    await expectError(
      [CORPUS_PATH, "--vocab-size", "600", "--out", out, "--special", "<s>"],
      'special tokens: "<s>" is already a built-in token',
    );
    await expectError(
      [CORPUS_PATH, "--vocab-size", "600", "--out", out, "--special", "A,A"],
      'special tokens: "A" is given twice',
    );
    await expectError(
      [CORPUS_PATH, "--vocab-size", "600", "--out", out, "--split", "para"],
      /^smallhammer: .*--split must be one of blank-line, line, file, got "para" \(see --help\)\n$/,
    );
    await expectError(
      [CORPUS_PATH, "--vocab-size", "10", "--out", out],
      /--vocab-size must be an integer from 260/,
    );
    const empty = join(dir, "empty.txt");
    writeFileSync(empty, "\n \n");
    await expectError([empty, "--vocab-size", "600", "--out", out], "the corpus has no text to learn from");
    expect(() => readFileSync(out)).toThrow();
  });
});
