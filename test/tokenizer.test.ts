import { describe, expect, it } from "vitest";
import { UserError } from "../src/errors.js";
import {
  BYTE_TO_CHAR,
  bytesToBpeText,
  preTokenize,
  preTokenizerFor,
  StreamDecoder,
  Tokenizer,
  type TokenizerDescription,
  TokenType,
} from "../src/tokenizer/index.js";

const hex = (b: number) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`;

/** A SentencePiece-style vocabulary: <unk>, <s>, </s>, 256 byte tokens, then scored pieces. */
function spmVocab(
  pieces: [string, number][],
  extra: { text: string; type: number }[] = [],
  opts: Partial<TokenizerDescription> = {},
): Tokenizer {
  const tokens = ["<unk>", "<s>", "</s>"];
  const types: number[] = [TokenType.Unknown, TokenType.Control, TokenType.Control];
  const scores: number[] = [0, 0, 0];
  for (let b = 0; b < 256; b++) {
    tokens.push(hex(b));
    types.push(TokenType.Byte);
    scores.push(0);
  }
  for (const [piece, score] of pieces) {
    tokens.push(piece);
    types.push(TokenType.Normal);
    scores.push(score);
  }
  for (const { text, type } of extra) {
    tokens.push(text);
    types.push(type);
    scores.push(0);
  }
  return new Tokenizer({
    model: "llama",
    tokens,
    scores: Float32Array.from(scores),
    tokenTypes: Int32Array.from(types),
    bosId: 1,
    eosId: 2,
    unkId: 0,
    addBos: true,
    addEos: false,
    ...opts,
  });
}

const HELLO_PIECES: [string, number][] = [
  ["▁", -1],
  ["h", -2],
  ["e", -2],
  ["l", -2],
  ["o", -2],
  ["w", -2],
  ["r", -2],
  ["d", -2],
  ["▁h", -3],
  ["ll", -4],
  ["▁he", -5],
  ["llo", -6],
  ["▁hello", -7],
  ["▁w", -8],
  ["or", -9],
  ["▁wor", -10],
  ["ld", -11],
  ["▁world", -12],
  ["▁▁", -13],
];

function names(tok: Tokenizer, ids: number[]): string[] {
  return ids.map((id) => tok.tokenText(id));
}

describe("llama (SentencePiece BPE) tokenizer", () => {
  const tok = spmVocab(HELLO_PIECES, [{ text: "<|im_start|>", type: TokenType.UserDefined }]);

  it("merges pieces, adds BOS and a space prefix", () => {
    expect(names(tok, tok.encode("hello world"))).toEqual(["<s>", "▁hello", "▁world"]);
    expect(names(tok, tok.encode("hello world", { addSpecial: false }))).toEqual(["▁hello", "▁world"]);
    expect(tok.encode("")).toEqual([1]);
    expect(tok.encode("", { addSpecial: false })).toEqual([]);
  });

  it("merges the highest-scoring pair first, leftmost on ties", () => {
    const base: [string, number][] = [
      ["a", -1],
      ["b", -1],
      ["c", -1],
    ];
    const bcFirst = spmVocab([...base, ["ab", -3], ["bc", -2]], [], { addSpacePrefix: false });
    expect(names(bcFirst, bcFirst.encode("abc", { addSpecial: false }))).toEqual(["a", "bc"]);
    const abFirst = spmVocab([...base, ["ab", -2], ["bc", -3]], [], { addSpacePrefix: false });
    expect(names(abFirst, abFirst.encode("abc", { addSpecial: false }))).toEqual(["ab", "c"]);
    const tie = spmVocab([...base, ["ab", -2], ["bc", -2]], [], { addSpacePrefix: false });
    expect(names(tie, tie.encode("abc", { addSpecial: false }))).toEqual(["ab", "c"]);
  });

  it("falls back to byte tokens, or <unk> without them", () => {
    expect(names(tok, tok.encode("hé", { addSpecial: false }))).toEqual(["▁h", "<0xC3>", "<0xA9>"]);
    expect(names(tok, tok.encode("😀", { addSpecial: false }))).toEqual([
      "▁",
      "<0xF0>",
      "<0x9F>",
      "<0x98>",
      "<0x80>",
    ]);
    const noBytes = new Tokenizer({
      model: "llama",
      tokens: ["<unk>", "<s>", "</s>", "▁", "a"],
      tokenTypes: [2, 3, 3, 1, 1],
      scores: [0, 0, 0, -1, -1],
      bosId: 1,
      eosId: 2,
      unkId: 0,
      addBos: false,
      addEos: false,
    });
    expect(noBytes.encode("aé a")).toEqual([3, 4, 0, 3, 4]);
  });

  it("escapes every space and keeps runs of spaces", () => {
    expect(names(tok, tok.encode("  hello", { addSpecial: false }))).toEqual(["▁▁", "▁hello"]);
    expect(names(tok, tok.encode("hello ", { addSpecial: false }))).toEqual(["▁hello", "▁"]);
  });

  it("adds the space prefix at the start and after each special token", () => {
    expect(names(tok, tok.encode("hello<s>world", { addSpecial: false }))).toEqual([
      "▁hello",
      "<s>",
      "▁world",
    ]);
    const noPrefix = spmVocab(HELLO_PIECES, [], { addSpacePrefix: false });
    expect(names(noPrefix, noPrefix.encode("hello world", { addSpecial: false }))).toEqual([
      "h",
      "e",
      "llo",
      "▁world",
    ]);
  });

  it("parses control tokens only with parseSpecial, user-defined tokens always", () => {
    expect(names(tok, tok.encode("<s>hello", { addSpecial: false }))).toEqual(["<s>", "▁hello"]);
    const plain = names(tok, tok.encode("<s>hello", { addSpecial: false, parseSpecial: false }));
    expect(plain).toEqual(["▁", "<0x3C>", "<0x73>", "<0x3E>", "h", "e", "llo"]);
    expect(names(tok, tok.encode("<|im_start|>hello", { addSpecial: false, parseSpecial: false }))).toEqual([
      "<|im_start|>",
      "▁hello",
    ]);
  });

  it("matches the longest special token first", () => {
    const t = spmVocab(HELLO_PIECES, [
      { text: "<|a|>", type: TokenType.Control },
      { text: "<|a|><|a|>", type: TokenType.Control },
    ]);
    expect(names(t, t.encode("<|a|><|a|><|a|>", { addSpecial: false }))).toEqual(["<|a|><|a|>", "<|a|>"]);
  });

  it("decodes pieces, bytes and special tokens", () => {
    const ids = tok.encode("hello wörld");
    expect(tok.decode(ids)).toBe("<s> hello wörld");
    expect(tok.decode(ids, { skipSpecial: true })).toBe(" hello wörld");
    expect(tok.decode(ids.slice(1))).toBe("hello wörld");
    expect(tok.decode([tok.tokenId("<0xF0>")!, tok.tokenId("<0x9F>")!])).toBe("\uFFFD");
    expect(tok.decode(tok.encode("\uFEFFhello", { addSpecial: false }))).toBe("\uFEFFhello");
    expect(Array.from(tok.tokenToPiece(tok.tokenId("▁hello")!))).toEqual(Array.from(Buffer.from(" hello")));
    expect(Array.from(tok.tokenToPiece(1, { skipSpecial: true }))).toEqual([]);
  });

  it("knows its special ids", () => {
    expect(tok.bosId).toBe(1);
    expect(tok.eosId).toBe(2);
    expect(tok.isEog(2)).toBe(true);
    expect(tok.isEog(1)).toBe(false);
    expect(tok.tokenType(0)).toBe(TokenType.Unknown);
    expect(tok.tokenType(3)).toBe(TokenType.Byte);
    expect(tok.vocabSize).toBe(3 + 256 + HELLO_PIECES.length + 1);
    expect(() => tok.decode([tok.vocabSize])).toThrow(UserError);
  });

  it("finds end-of-turn tokens by their text and makes them control tokens", () => {
    const t = spmVocab(HELLO_PIECES, [
      { text: "<|im_end|>", type: TokenType.UserDefined },
      { text: "<|im_start|>", type: TokenType.UserDefined },
    ]);
    const imEnd = t.tokenId("<|im_end|>")!;
    expect(t.eotId).toBe(imEnd);
    expect(t.isEog(imEnd)).toBe(true);
    expect(t.tokenType(imEnd)).toBe(TokenType.Control);
    expect(t.encode("<|im_end|>", { addSpecial: false, parseSpecial: false })).not.toContain(imEnd);
    expect(t.decode([imEnd], { skipSpecial: true })).toBe("");
  });

  it("agrees with a plain merge loop over the whole text", () => {
    const words = ["hello", "world", "wold", "helloworld", "  ", "héllo", "😀", "\n", "lol", "ollo"];
    let seed = 7;
    for (let round = 0; round < 20; round++) {
      let text = "";
      for (let i = 0; i < 40; i++) {
        seed = (seed * 1103515245 + 12345) % 2147483648;
        text += words[seed % words.length] + (seed % 3 ? " " : "");
      }
      expect(tok.encode(text, { addSpecial: false })).toEqual(naiveSpm(tok, `▁${text.replaceAll(" ", "▁")}`));
      expect(tok.decode(tok.encode(text))).toBe(`<s> ${text}`);
    }
  });
});

/** The SentencePiece merge loop written the slow, obvious way: best score, leftmost first. */
function naiveSpm(tok: Tokenizer, text: string): number[] {
  const symbols = Array.from(text);
  const score = (id: number) => {
    const pieces = HELLO_PIECES.find(([p]) => p === tok.tokenText(id));
    return pieces ? pieces[1] : 0;
  };
  for (;;) {
    let best = -1;
    let bestScore = -Infinity;
    for (let i = 0; i + 1 < symbols.length; i++) {
      const id = tok.tokenId(symbols[i]! + symbols[i + 1]!);
      if (id !== undefined && score(id) > bestScore) {
        best = i;
        bestScore = score(id);
      }
    }
    if (best < 0) break;
    symbols.splice(best, 2, symbols[best]! + symbols[best + 1]!);
  }
  return symbols.flatMap((sym) => {
    const id = tok.tokenId(sym);
    if (id !== undefined) return [id];
    return Array.from(new TextEncoder().encode(sym), (b) => tok.tokenId(hex(b))!);
  });
}

/** A byte-level vocabulary: the 256 byte characters, merge results, then specials. */
function bpeVocab(merges: string[], pre: string, specials: { text: string; type: number }[] = []): Tokenizer {
  const tokens = [...BYTE_TO_CHAR];
  for (const m of merges) {
    const merged = m.replace(" ", "");
    if (!tokens.includes(merged)) tokens.push(merged);
  }
  const types = tokens.map(() => TokenType.Normal as number);
  for (const s of specials) {
    tokens.push(s.text);
    types.push(s.type);
  }
  return new Tokenizer({
    model: "gpt2",
    pre,
    tokens,
    tokenTypes: types,
    merges,
    addBos: false,
    addEos: false,
  });
}

describe("gpt2 (byte-level BPE) tokenizer", () => {
  it("uses GPT-2's byte alphabet", () => {
    expect(BYTE_TO_CHAR[0x20]).toBe("Ġ");
    expect(BYTE_TO_CHAR[0x0a]).toBe("Ċ");
    expect(BYTE_TO_CHAR[0x21]).toBe("!");
    expect(BYTE_TO_CHAR[0xad]).toBe("Ń");
    expect(new Set(BYTE_TO_CHAR).size).toBe(256);
    expect(bytesToBpeText(new TextEncoder().encode(" é"))).toBe("ĠÃ©");
  });

  it("merges by rank", () => {
    const tok = bpeVocab(["Ġ t", "h e", "Ġt he", "l l", "e ll", "h ell", "hell o"], "gpt-2");
    expect(names(tok, tok.encode(" the hello"))).toEqual(["Ġthe", "Ġ", "he", "ll", "o"]);
    expect(names(tok, tok.encode("hello"))).toEqual(["he", "ll", "o"]);
    // rank decides between overlapping pairs: "h e" (rank 1) beats "e ll" (rank 4)
    expect(names(tok, tok.encode("hell"))).toEqual(["he", "ll"]);
  });

  it("drops the bytes of a merge result missing from the vocabulary, except ASCII ones", () => {
    const tok = new Tokenizer({
      model: "gpt2",
      pre: "gpt-2",
      tokens: [...BYTE_TO_CHAR],
      merges: ["Ġ q"],
      addBos: false,
      addEos: false,
    });
    expect(names(tok, tok.encode("a q"))).toEqual(["a", "q"]);
  });

  it("splits text like llama.cpp's pre-tokenizers", () => {
    const gpt2 = preTokenizerFor("gpt-2");
    expect(preTokenize("don't I'll  go 12345!!", gpt2)).toEqual([
      "don",
      "'t",
      " I",
      "'ll",
      " ",
      " go",
      " 12345",
      "!!",
    ]);
    expect(preTokenize("a  \n\tb   ", gpt2)).toEqual(["a", "  \n", "\t", "b", "   "]);
    expect(preTokenize("a  \n\tb   ", preTokenizerFor("llama-bpe"))).toEqual(["a", "  \n", "\tb", "   "]);
    const llama3 = preTokenizerFor("llama-bpe");
    expect(preTokenize("I'LL pay 1234567 $ now\n\n ok", llama3)).toEqual([
      "I",
      "'LL",
      " pay",
      " ",
      "123",
      "456",
      "7",
      " $",
      " now",
      "\n\n",
      " ok",
    ]);
    const dflt = preTokenizerFor(undefined);
    expect(dflt.name).toBe("default");
    expect(preTokenize("x=12345...ok", dflt)).toEqual(["x", "=", "123", "45", "...", "ok"]);
    // U+0085 is whitespace to llama.cpp, U+FEFF is not
    expect(preTokenize("a\u0085b", gpt2)).toEqual(["a", "\u0085", "b"]);
    expect(preTokenize("a\uFEFFb", gpt2)).toEqual(["a", "\uFEFF", "b"]);
  });

  it("rejects an unknown pre-tokenizer, naming it", () => {
    expect(() => bpeVocab([], "no-such-pre")).toThrow(UserError);
    expect(() => bpeVocab([], "no-such-pre")).toThrow(/no-such-pre/);
  });

  it("decodes bytes and cleans spaces before punctuation", () => {
    const tok = bpeVocab(["Ġ t", "h e"], "gpt-2", [{ text: "<|endoftext|>", type: TokenType.Control }]);
    const text = "héllo , world . don 't 😀";
    const ids = tok.encode(text);
    expect(tok.decode(ids)).toBe("héllo, world. don 't 😀");
    const eot = tok.tokenId("<|endoftext|>")!;
    expect(tok.encode("a<|endoftext|>b")).toEqual([...tok.encode("a"), eot, ...tok.encode("b")]);
    expect(tok.encode("a<|endoftext|>", { parseSpecial: false })).not.toContain(eot);
    expect(tok.isEog(eot)).toBe(true);
    expect(tok.decode([eot], { skipSpecial: true })).toBe("");
  });
});

describe("StreamDecoder", () => {
  const spm = spmVocab(HELLO_PIECES);

  it("holds back a character split across byte tokens", () => {
    const ids = spm.encode("hello 😀 wörld", { addSpecial: false });
    const dec = new StreamDecoder(spm);
    const outs = ids.map((id) => dec.push(id));
    expect(outs.join("") + dec.flush()).toBe("hello 😀 wörld");
    const f0 = ids.indexOf(spm.tokenId("<0xF0>")!);
    expect(outs.slice(f0, f0 + 3)).toEqual(["", "", ""]);
    expect(outs[f0 + 3]).toBe("😀");
    for (const out of outs) expect(out).not.toContain("\uFFFD");
  });

  it("keeps ZWJ sequences and flags intact across tokens", () => {
    const text = "👩‍👩‍👧 🇯🇵!";
    const ids = spm.encode(text, { addSpecial: false });
    const dec = spm.streamDecoder();
    let out = "";
    for (const id of ids) {
      const piece = dec.push(id);
      expect(piece).not.toContain("\uFFFD");
      out += piece;
    }
    expect(out + dec.flush()).toBe(text);
  });

  it("turns a dangling partial character into U+FFFD at the end", () => {
    const dec = spm.streamDecoder();
    expect(dec.push(spm.tokenId("<0xE2>")!)).toBe("");
    expect(dec.flush()).toBe("\uFFFD");
  });

  it("equals decode() for random token sequences, with and without space cleaning", () => {
    const bpe = bpeVocab(["Ġ t", "h e", "' s", "r e"], "gpt-2", [
      { text: "<|endoftext|>", type: TokenType.Control },
    ]);
    const vocabPick = (tok: Tokenizer, seed: number) => {
      const alphabet = [
        " ",
        "'",
        "s",
        "r",
        "e",
        "v",
        "m",
        ".",
        ",",
        "?",
        "a",
        "é",
        "😀",
        "<|endoftext|>",
        "<s>",
      ];
      let s = seed;
      const ids: number[] = [];
      for (let i = 0; i < 40; i++) {
        s = (s * 1103515245 + 12345) % 2147483648;
        ids.push(...tok.encode(alphabet[s % alphabet.length]!, { addSpecial: false }));
      }
      return ids;
    };
    for (const tok of [spm, bpe]) {
      for (let seed = 1; seed < 60; seed++) {
        const ids = vocabPick(tok, seed);
        for (const skipSpecial of [false, true]) {
          const dec = new StreamDecoder(tok, { skipSpecial });
          const streamed = ids.map((id) => dec.push(id)).join("") + dec.flush();
          expect(streamed).toBe(tok.decode(ids, { skipSpecial }));
        }
      }
    }
  });
});

describe("Tokenizer.fromGgufMetadata", () => {
  const base = {
    "tokenizer.ggml.model": "llama",
    "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "▁a", "a", "▁"],
    "tokenizer.ggml.scores": new Float32Array([0, 0, 0, -1, -2, -3]),
    "tokenizer.ggml.token_type": new Int32Array([2, 3, 3, 1, 1, 1]),
  } as Record<string, unknown>;
  const from = (extra: Record<string, unknown>) =>
    Tokenizer.fromGgufMetadata((key) => ({ ...base, ...extra })[key]);

  it("applies llama.cpp's defaults", () => {
    const tok = from({});
    expect(tok.model).toBe("llama");
    expect([tok.unkId, tok.bosId, tok.eosId]).toEqual([0, 1, 2]);
    expect(tok.addBos).toBe(true);
    expect(tok.addEos).toBe(false);
    expect(tok.addSpacePrefix).toBe(true);
    expect(tok.encode("a")).toEqual([1, 3]);
  });

  it("reads flags and ids", () => {
    const tok = from({
      "tokenizer.ggml.add_bos_token": false,
      "tokenizer.ggml.add_eos_token": true,
      "tokenizer.ggml.add_space_prefix": false,
      "tokenizer.ggml.eos_token_id": 1n,
      "tokenizer.ggml.bos_token_id": 99,
    });
    expect(tok.eosId).toBe(1);
    expect(tok.bosId).toBe(1); // out of range in the file: llama.cpp keeps the default
    expect(tok.encode("a")).toEqual([4, 1]);
  });

  it("names the key that is wrong", () => {
    expect(() => from({ "tokenizer.ggml.model": "t5" })).toThrow(/tokenizer\.ggml\.model.*t5/);
    expect(() => from({ "tokenizer.ggml.tokens": undefined })).toThrow(/tokenizer\.ggml\.tokens/);
    expect(() => from({ "tokenizer.ggml.scores": new Float32Array(2) })).toThrow(/tokenizer\.ggml\.scores/);
    expect(() => from({ "tokenizer.ggml.add_bos_token": "yes" })).toThrow(/add_bos_token/);
    expect(() =>
      from({ "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.merges": [], "tokenizer.ggml.pre": "klingon" }),
    ).toThrow(/klingon/);
    expect(() => from({ "tokenizer.ggml.model": "gpt2" })).toThrow(/merges/);
    expect(() => from({})).not.toThrow();
  });

  it("defaults gpt2 vocabularies like llama.cpp", () => {
    const tokens = [...BYTE_TO_CHAR, "<|begin_of_text|>", "<|eot_id|>"];
    const get = (pre: string) => (key: string) =>
      ({
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": [],
        "tokenizer.ggml.bos_token_id": 256,
        "tokenizer.ggml.eos_token_id": 257,
      })[key];
    expect(Tokenizer.fromGgufMetadata(get("llama-bpe")).addBos).toBe(true);
    const gpt2 = Tokenizer.fromGgufMetadata(get("gpt-2"));
    expect(gpt2.addBos).toBe(false);
    expect(gpt2.addSpacePrefix).toBe(false);
    expect(gpt2.isEog(257)).toBe(true);
    expect(gpt2.eotId).toBe(257);
  });
});
