/**
 * Tokenizers built from GGUF tokenizer metadata, matching llama.cpp (llama-vocab.cpp) token for
 * token: "llama" is SentencePiece-style BPE with byte fallback, "gpt2" is byte-level BPE.
 *
 *   const tok = Tokenizer.fromGgufMetadata((key) => metadata.get(key));
 *   const ids = tok.encode("Hello world");           // [bos, ...] when the vocab adds BOS
 *   const text = tok.decode(ids, { skipSpecial: true });
 */

import { UserError } from "../errors.js";
import { BpeEncoder, CHAR_TO_BYTE } from "./bpe.js";
import { type PreTokenizer, preTokenizerFor } from "./pretokenize.js";
import { SpmEncoder } from "./spm.js";

export { BYTE_TO_CHAR, bytesToBpeText, CHAR_TO_BYTE } from "./bpe.js";
export { type PreTokenizer, preTokenize, preTokenizerFor, supportedPreTokenizers } from "./pretokenize.js";

/** `tokenizer.ggml.token_type` values. */
export const TokenType = {
  Undefined: 0,
  Normal: 1,
  Unknown: 2,
  Control: 3,
  UserDefined: 4,
  Unused: 5,
  Byte: 6,
} as const;
export type TokenType = (typeof TokenType)[keyof typeof TokenType];

export type TokenizerModel = "llama" | "gpt2";

/** Everything a tokenizer is built from; mirrors the `tokenizer.ggml.*` GGUF keys. */
export interface TokenizerDescription {
  model: TokenizerModel;
  /** Pre-tokenizer name for "gpt2" (`tokenizer.ggml.pre`); absent means "default". */
  pre?: string;
  tokens: readonly string[];
  scores?: ArrayLike<number>;
  /** Per-token TokenType; absent means every token is Normal. */
  tokenTypes?: ArrayLike<number>;
  /** "left right" pairs in the byte alphabet, best first; required for "gpt2". */
  merges?: readonly string[];
  bosId?: number;
  eosId?: number;
  unkId?: number;
  padId?: number;
  /** End of turn (`<|eot_id|>`, `<|im_end|>`...); found by its text when absent, as llama.cpp does. */
  eotId?: number;
  /** End of message (`<|eom_id|>`); found by its text when absent. */
  eomId?: number;
  addBos: boolean;
  addEos: boolean;
  /** Prepend a space to the text ("llama" only for encoding); default true for "llama". */
  addSpacePrefix?: boolean;
}

export interface EncodeOptions {
  /** Add BOS / EOS as the vocabulary asks (addBos, addEos). Default true. */
  addSpecial?: boolean;
  /** Turn the text of control and unknown tokens (e.g. "<s>") into those tokens. Default true. */
  parseSpecial?: boolean;
  /**
   * The text continues earlier text that did not end in a special token: no space prefix before its
   * start ("llama" with addSpacePrefix; special tokens inside the text are still followed by one).
   * Encoding a text in pieces this way gives the ids of the whole text wherever no token would
   * span a cut. Default false.
   */
  continuation?: boolean;
}

export interface DecodeOptions {
  /** Leave out control and unknown tokens (BOS, EOS, ...) instead of writing their text. Default false. */
  skipSpecial?: boolean;
  /** The text continues earlier text (a prompt): keep the leading space of the first piece. */
  continuation?: boolean;
}

/** Looks a GGUF metadata key up; undefined when absent. */
export type MetadataGetter = (key: string) => unknown;

// llama_token_attr bits (llama.h).
const ATTR_UNKNOWN = 1 << 0;
const ATTR_UNUSED = 1 << 1;
const ATTR_NORMAL = 1 << 2;
const ATTR_CONTROL = 1 << 3;
const ATTR_USER_DEFINED = 1 << 4;
const ATTR_BYTE = 1 << 5;

const TYPE_TO_ATTR: Record<number, number> = {
  [TokenType.Normal]: ATTR_NORMAL,
  [TokenType.Unknown]: ATTR_UNKNOWN,
  [TokenType.Control]: ATTR_CONTROL,
  [TokenType.UserDefined]: ATTR_USER_DEFINED,
  [TokenType.Unused]: ATTR_UNUSED,
  [TokenType.Byte]: ATTR_BYTE,
};

// Token texts llama.cpp recognises and promotes to control tokens (llama_vocab::impl::load).
const EOT_TEXTS = [
  "<|eot_id|>",
  "<|im_end|>",
  "<|end|>",
  "<end_of_turn>",
  "<|endoftext|>",
  "<|end_of_text|>",
  "<EOT>",
  "_<EOT>",
  "[EOT]",
  "<｜end▁of▁sentence｜>",
  "<end_of_utterance>",
];
const EOM_TEXTS = ["<|eom_id|>"];
const FIM_TEXTS = [
  // prefix, suffix, middle
  [
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
  ],
  [
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
  ],
  [
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
  ],
];
// pad, repo, file separator: these also end generation.
const FIM_EOG_TEXTS = [
  ["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
  ["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"],
  ["<|file_sep|>"],
];
const EOG_TEXTS = new Set([
  "<|eot_id|>",
  "<|im_end|>",
  "<|end|>",
  "<|return|>",
  "<|call|>",
  "<|flush|>",
  "<|calls|>",
  "<end_of_turn>",
  "<|endoftext|>",
  "</s>",
  "<|eom_id|>",
  "<EOT>",
  "_<EOT>",
  "[EOT]",
  "[EOS]",
  "<|end_of_text|>",
  "<end_of_utterance>",
  "<eos>",
  "<turn|>",
  "<|tool_response>",
  "<｜end▁of▁sentence｜>",
  "[e~[",
]);
const ALWAYS_USER_DEFINED = new Set(["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"]);

const utf8Encoder = new TextEncoder();
const EMPTY = new Uint8Array(0);

function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/** Replace lone UTF-16 surrogates with U+FFFD, as converting the text to UTF-8 does. */
function wellFormed(text: string): string {
  if (!/[\uD800-\uDFFF]/.test(text)) return text;
  return text.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD");
}

/** llama.cpp's clean_spaces detokenizer passes: " ?" -> "?", " ' " -> "'", " 's" -> "'s"... */
function cleanSpaces(text: string): string {
  return text
    .replace(/ ([?!.,])/g, "$1")
    .replace(/ ' /g, "'")
    .replace(/ '(s|m|re|ve)/g, "'$1");
}

/**
 * Where `text` can be cut so that cleanSpaces(head) + cleanSpaces(tail + later text) equals
 * cleanSpaces(text + later text): every pattern above starts with a space and is built from
 * spaces, apostrophes and the letters after them, so a cut after any other character is safe,
 * except inside "re"/"ve" (and before a possible "e" at the very end).
 */
function safeCleanCut(text: string): number {
  for (let p = text.length; p > 0; p--) {
    const a = text[p - 1];
    if (a === " " || a === "'") continue;
    if (a === "r" || a === "v") {
      const b = p < text.length ? text[p] : undefined;
      if (b === undefined || b === "e") continue;
    }
    return p;
  }
  return 0;
}

function fail(message: string): never {
  throw new UserError(message);
}

export class Tokenizer {
  readonly model: TokenizerModel;
  /** Pre-tokenizer name ("gpt2" only). */
  readonly pre: string | undefined;
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  readonly unkId: number | undefined;
  readonly padId: number | undefined;
  readonly eotId: number | undefined;
  readonly eomId: number | undefined;
  readonly addBos: boolean;
  readonly addEos: boolean;
  readonly addSpacePrefix: boolean;

  private readonly tokens: string[];
  private readonly attrs: Uint16Array;
  private readonly pieceToId = new Map<string, number>();
  /** Control, user-defined and unknown tokens, longest (in UTF-8 bytes) first. */
  private readonly specialIds: number[];
  private readonly eogIds = new Set<number>();
  private readonly pieces: (Uint8Array | undefined)[];
  private readonly preTokenizer: PreTokenizer | undefined;
  private readonly spm: SpmEncoder | undefined;
  private readonly bpe: BpeEncoder | undefined;
  /** Detokenized text gets llama.cpp's clean_spaces passes. */
  readonly cleansSpaces: boolean;

  constructor(desc: TokenizerDescription) {
    const n = desc.tokens.length;
    if (desc.model !== "llama" && desc.model !== "gpt2") {
      fail(`tokenizer: unsupported model "${String(desc.model)}" (supported: llama, gpt2)`);
    }
    if (n === 0) fail("tokenizer: the vocabulary has no tokens");
    if (desc.scores && desc.scores.length < n) {
      fail(`tokenizer: ${desc.scores.length} scores for ${n} tokens`);
    }
    if (desc.tokenTypes && desc.tokenTypes.length < n) {
      fail(`tokenizer: ${desc.tokenTypes.length} token types for ${n} tokens`);
    }
    if (desc.model === "gpt2" && !desc.merges) fail('tokenizer: model "gpt2" needs merges');

    this.model = desc.model;
    this.pre = desc.model === "gpt2" ? (desc.pre ?? "default") : desc.pre;
    this.preTokenizer = desc.model === "gpt2" ? preTokenizerFor(desc.pre) : undefined;
    this.vocabSize = n;
    this.addBos = desc.addBos;
    this.addEos = desc.addEos;
    this.addSpacePrefix = desc.addSpacePrefix ?? desc.model === "llama";
    this.cleansSpaces = this.preTokenizer?.cleanSpaces ?? false;

    const checkId = (name: string, id: number | undefined): number | undefined => {
      if (id === undefined) return undefined;
      if (!Number.isInteger(id) || id < 0 || id >= n) {
        fail(`tokenizer: ${name} ${id} is out of range (the vocabulary has ${n} tokens)`);
      }
      return id;
    };
    this.bosId = checkId("bosId", desc.bosId);
    this.eosId = checkId("eosId", desc.eosId);
    this.unkId = checkId("unkId", desc.unkId);
    this.padId = checkId("padId", desc.padId);

    this.tokens = new Array(n);
    this.attrs = new Uint16Array(n);
    for (let i = 0; i < n; i++) {
      // llama.cpp renames empty tokens so that every text maps to one id.
      const text = desc.tokens[i] || `[EMPTY_${i}]`;
      this.tokens[i] = text;
      this.pieceToId.set(text, i); // a repeated text maps to its last id, as in llama.cpp
      this.attrs[i] = desc.tokenTypes ? (TYPE_TO_ATTR[desc.tokenTypes[i]!] ?? 0) : ATTR_NORMAL;
    }

    // Find end-of-turn, FIM and end-of-generation tokens by their text, promoting each one found
    // to a control token, as llama.cpp does (ids from the description win).
    const promote = (id: number) => {
      this.attrs[id] = this.attrs[id]! | ATTR_CONTROL;
    };
    const findByText = (texts: readonly string[]): number | undefined => {
      for (const text of texts) {
        const id = this.pieceToId.get(text);
        if (id !== undefined) return id;
      }
      return undefined;
    };
    let eotId = checkId("eotId", desc.eotId);
    if (eotId === undefined) {
      eotId = findByText(EOT_TEXTS);
      if (eotId !== undefined) promote(eotId);
    }
    let eomId = checkId("eomId", desc.eomId);
    if (eomId === undefined) {
      eomId = findByText(EOM_TEXTS);
      if (eomId !== undefined) promote(eomId);
    }
    this.eotId = eotId;
    this.eomId = eomId;
    for (const texts of FIM_TEXTS) {
      const id = findByText(texts);
      if (id !== undefined) promote(id);
    }
    for (const texts of FIM_EOG_TEXTS) {
      const id = findByText(texts);
      if (id !== undefined) {
        promote(id);
        this.eogIds.add(id);
      }
    }
    for (let id = 0; id < n; id++) {
      const text = this.tokens[id]!;
      if (EOG_TEXTS.has(text) && this.pieceToId.get(text) === id) {
        this.eogIds.add(id);
        promote(id);
      }
    }
    for (const text of ALWAYS_USER_DEFINED) {
      const id = this.pieceToId.get(text);
      if (id !== undefined) this.attrs[id] = ATTR_USER_DEFINED;
    }
    for (const id of [this.eosId, eotId, eomId]) if (id !== undefined) this.eogIds.add(id);
    const eogId = (text: string) => {
      for (const id of this.eogIds) if (this.tokens[id] === text) return id;
      return undefined;
    };
    // "<|end|>" ends a turn but not generation in tokenizers that also have "<|return|>" and
    // "<|call|>" (or "<|calls|>" and "<|flush|>").
    const end = eogId("<|end|>");
    const call = eogId("<|call|>") ?? eogId("<|calls|>");
    if (
      end !== undefined &&
      call !== undefined &&
      (eogId("<|return|>") ?? eogId("<|flush|>")) !== undefined
    ) {
      this.eogIds.delete(end);
      this.attrs[end] = ATTR_USER_DEFINED;
    }
    const eosText = eogId("</s>");
    if (eosText !== undefined && eogId("<|tool_response>") !== undefined) {
      this.eogIds.delete(eosText);
      this.attrs[eosText] = ATTR_NORMAL;
    }

    const specials: number[] = [];
    for (let id = 0; id < n; id++) {
      if (this.attrs[id]! & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) specials.push(id);
    }
    const byteLength = specials.map((id) => utf8Length(this.tokens[id]!));
    const order = specials.map((_, i) => i).sort((a, b) => byteLength[b]! - byteLength[a]! || a - b);
    this.specialIds = order.map((i) => specials[i]!);
    this.pieces = new Array(n);

    if (desc.model === "llama") {
      this.spm = new SpmEncoder(this.pieceToId, desc.scores, this.unkId);
    } else {
      this.bpe = new BpeEncoder(this.pieceToId, desc.merges!, this.preTokenizer!);
    }
  }

  /**
   * Build from GGUF metadata (`tokenizer.ggml.*`), with llama.cpp's defaults for absent keys.
   * Throws UserError naming the key for an unsupported or malformed value.
   */
  static fromGgufMetadata(get: MetadataGetter): Tokenizer {
    const model = get("tokenizer.ggml.model");
    if (model === undefined) fail("tokenizer.ggml.model: missing; the file has no tokenizer");
    if (model !== "llama" && model !== "gpt2") {
      fail(`tokenizer.ggml.model: unsupported tokenizer "${String(model)}" (supported: llama, gpt2)`);
    }
    const str = (key: string): string | undefined => {
      const v = get(key);
      if (v === undefined || typeof v === "string") return v;
      return fail(`${key}: expected a string, got ${typeof v}`);
    };
    const int = (key: string): number | undefined => {
      const v = get(key);
      if (v === undefined) return undefined;
      if (typeof v === "bigint") return Number(v);
      if (typeof v === "number" && Number.isInteger(v)) return v;
      return fail(`${key}: expected an integer, got ${typeof v}`);
    };
    const bool = (key: string): boolean | undefined => {
      const v = get(key);
      if (v === undefined || typeof v === "boolean") return v;
      return fail(`${key}: expected a boolean, got ${typeof v}`);
    };
    const strings = (key: string): string[] | undefined => {
      const v = get(key);
      if (v === undefined) return undefined;
      if (Array.isArray(v) && v.every((s) => typeof s === "string")) return v;
      return fail(`${key}: expected an array of strings`);
    };
    const numbers = (key: string): ArrayLike<number> | undefined => {
      const v = get(key);
      if (v === undefined) return undefined;
      if (
        ArrayBuffer.isView(v) &&
        !(v instanceof DataView) &&
        !(v instanceof BigInt64Array || v instanceof BigUint64Array)
      ) {
        return v as unknown as ArrayLike<number>;
      }
      if (Array.isArray(v) && v.every((x) => typeof x === "number")) return v;
      return fail(`${key}: expected an array of numbers`);
    };

    const pre = str("tokenizer.ggml.pre");
    const tokens = strings("tokenizer.ggml.tokens") ?? fail("tokenizer.ggml.tokens: missing");
    const n = tokens.length;
    const merges = strings("tokenizer.ggml.merges");
    if (model === "gpt2" && !merges) fail("tokenizer.ggml.merges: missing (needed by a gpt2 tokenizer)");
    const preTokenizer = model === "gpt2" ? preTokenizerFor(pre) : undefined;
    const scores = numbers("tokenizer.ggml.scores");
    if (scores && scores.length < n) fail(`tokenizer.ggml.scores: ${scores.length} scores for ${n} tokens`);
    const tokenTypes = numbers("tokenizer.ggml.token_type");
    if (tokenTypes && tokenTypes.length < n) {
      fail(`tokenizer.ggml.token_type: ${tokenTypes.length} types for ${n} tokens`);
    }

    // llama.cpp's defaults: a default out of range is dropped; a key out of range is ignored.
    const special = (key: string, fallback: number | undefined): number | undefined => {
      const dflt = fallback !== undefined && fallback < n ? fallback : undefined;
      const v = int(`tokenizer.ggml.${key}`);
      return v !== undefined && v >= 0 && v < n ? v : dflt;
    };
    const llama = model === "llama";
    return new Tokenizer({
      model,
      pre,
      tokens,
      scores,
      tokenTypes,
      merges,
      bosId: special("bos_token_id", llama ? 1 : 11),
      eosId: special("eos_token_id", llama ? 2 : 11),
      unkId: special("unknown_token_id", llama ? 0 : undefined),
      padId: special("padding_token_id", undefined),
      eotId: special("eot_token_id", undefined),
      eomId: special("eom_token_id", undefined),
      addBos: bool("tokenizer.ggml.add_bos_token") ?? (llama || (preTokenizer?.addBosDefault ?? false)),
      addEos: bool("tokenizer.ggml.add_eos_token") ?? false,
      addSpacePrefix: bool("tokenizer.ggml.add_space_prefix") ?? llama,
    });
  }

  /** Text to token ids. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const addSpecial = options.addSpecial ?? true;
    const parseSpecial = options.parseSpecial ?? true;
    const out: number[] = [];
    const fragments = text === "" ? [] : this.partition(wellFormed(text), parseSpecial);
    if (addSpecial && this.addBos && this.bosId !== undefined) out.push(this.bosId);
    if (this.spm) {
      // The space prefix goes before the text and after every special token.
      let afterSpecial = !(options.continuation ?? false);
      for (const fragment of fragments) {
        if (typeof fragment === "number") {
          out.push(fragment);
          afterSpecial = true;
          continue;
        }
        const spaced = this.addSpacePrefix && afterSpecial ? ` ${fragment}` : fragment;
        this.spm.encode(spaced.replaceAll(" ", "\u2581"), out);
        afterSpecial = false;
      }
    } else {
      for (const fragment of fragments) {
        if (typeof fragment === "number") out.push(fragment);
        else this.bpe!.encode(fragment, out);
      }
    }
    if (addSpecial && this.addEos && this.eosId !== undefined) out.push(this.eosId);
    return out;
  }

  /**
   * Token ids to text, as llama.cpp's llama_detokenize (no special-token removal): invalid UTF-8
   * becomes U+FFFD, and with a space prefix the first token's leading space is dropped.
   */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    const special = !(options.skipSpecial ?? false);
    const parts: Uint8Array[] = [];
    let total = 0;
    for (let i = 0; i < ids.length; i++) {
      let piece = this.piece(ids[i]!, special);
      if (i === 0 && this.addSpacePrefix && piece[0] === 0x20) piece = piece.subarray(1);
      parts.push(piece);
      total += piece.length;
    }
    const bytes = new Uint8Array(total);
    let offset = 0;
    for (const part of parts) {
      bytes.set(part, offset);
      offset += part.length;
    }
    const text = new TextDecoder("utf-8", { ignoreBOM: true }).decode(bytes);
    return this.cleansSpaces ? cleanSpaces(text) : text;
  }

  /** The bytes a token stands for (control tokens: their text, unless skipSpecial). */
  tokenToPiece(id: number, options: DecodeOptions = {}): Uint8Array {
    return this.piece(id, !(options.skipSpecial ?? false)).slice();
  }

  /** The token's text as stored in the vocabulary. */
  tokenText(id: number): string {
    this.checkTokenId(id);
    return this.tokens[id]!;
  }

  /** The id of the token whose vocabulary text is exactly `text`. */
  tokenId(text: string): number | undefined {
    return this.pieceToId.get(text);
  }

  /** The token's type as stored (Normal when the vocabulary has no types). */
  tokenType(id: number): TokenType {
    this.checkTokenId(id);
    const attr = this.attrs[id]!;
    if (attr & ATTR_CONTROL) return TokenType.Control;
    if (attr & ATTR_USER_DEFINED) return TokenType.UserDefined;
    if (attr & ATTR_UNKNOWN) return TokenType.Unknown;
    if (attr & ATTR_BYTE) return TokenType.Byte;
    if (attr & ATTR_UNUSED) return TokenType.Unused;
    if (attr & ATTR_NORMAL) return TokenType.Normal;
    return TokenType.Undefined;
  }

  /** Control or unknown token: written only when decoding without skipSpecial. */
  isSpecial(id: number): boolean {
    this.checkTokenId(id);
    return (this.attrs[id]! & (ATTR_CONTROL | ATTR_UNKNOWN)) !== 0;
  }

  /** Token that ends generation: EOS, end of turn, end of message and llama.cpp's other EOG texts. */
  isEog(id: number): boolean {
    return this.eogIds.has(id);
  }

  /** End-of-generation ids, ascending. */
  get eogTokenIds(): number[] {
    return [...this.eogIds].sort((a, b) => a - b);
  }

  /** A decoder that turns ids into text one at a time. */
  streamDecoder(options: DecodeOptions = {}): StreamDecoder {
    return new StreamDecoder(this, options);
  }

  /** @internal Cached piece bytes; callers must not modify them. */
  piece(id: number, special: boolean): Uint8Array {
    this.checkTokenId(id);
    const attr = this.attrs[id]!;
    if (!special && attr & (ATTR_CONTROL | ATTR_UNKNOWN)) return EMPTY;
    let piece = this.pieces[id];
    if (!piece) {
      piece = this.makePiece(id, attr);
      this.pieces[id] = piece;
    }
    return piece;
  }

  private makePiece(id: number, attr: number): Uint8Array {
    const text = this.tokens[id]!;
    if (attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED)) return utf8Encoder.encode(text);
    if (attr & ATTR_NORMAL) {
      if (this.model === "llama") return utf8Encoder.encode(text.replaceAll("\u2581", " "));
      return decodeByteLevel(text);
    }
    if (attr & ATTR_BYTE) {
      // llama.cpp reads the two characters after "<0x" as hex.
      const value = Number.parseInt(text.slice(3, 5), 16);
      return Uint8Array.of(Number.isNaN(value) ? 0 : value & 0xff);
    }
    return EMPTY; // unused and undefined tokens have no text
  }

  private checkTokenId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      fail(`token id ${id} is out of range (the vocabulary has ${this.vocabSize} tokens)`);
    }
  }

  /** Split text around special tokens, longest first (llama.cpp tokenizer_st_partition). */
  private partition(text: string, parseSpecial: boolean): (string | number)[] {
    let fragments: (string | number)[] = [text];
    for (const id of this.specialIds) {
      // User-defined tokens are always matched; control and unknown ones only when parsing specials.
      if (!parseSpecial && this.attrs[id]! & (ATTR_CONTROL | ATTR_UNKNOWN)) continue;
      const token = this.tokens[id]!;
      if (!text.includes(token)) continue;
      const next: (string | number)[] = [];
      for (const fragment of fragments) {
        if (typeof fragment === "number") {
          next.push(fragment);
          continue;
        }
        let start = 0;
        for (let at = fragment.indexOf(token); at >= 0; at = fragment.indexOf(token, start)) {
          if (at > start) next.push(fragment.slice(start, at));
          next.push(id);
          start = at + token.length;
        }
        if (start < fragment.length) next.push(start === 0 ? fragment : fragment.slice(start));
      }
      fragments = next;
    }
    return fragments;
  }
}

/** llama_decode_text: byte-alphabet characters back to bytes; others become a marker. */
function decodeByteLevel(text: string): Uint8Array {
  const out: number[] = [];
  for (const ch of text) {
    const b = CHAR_TO_BYTE.get(ch.codePointAt(0)!);
    if (b !== undefined) {
      out.push(b);
      continue;
    }
    let marker = "[UNK_BYTE_0x";
    for (const x of utf8Encoder.encode(ch)) marker += x.toString(16).padStart(2, "0");
    marker += `${text}]`;
    for (const x of utf8Encoder.encode(marker)) out.push(x);
  }
  return Uint8Array.from(out);
}

/**
 * Turns token ids into text one at a time, emitting only complete UTF-8 characters: a character
 * whose bytes are split across byte tokens (an emoji as four <0xXX> tokens) comes out whole once
 * its last byte arrives. The concatenation of everything `push` and `flush` return equals
 * `tokenizer.decode(allIds, options)`.
 */
export class StreamDecoder {
  private readonly special: boolean;
  private readonly utf8 = new TextDecoder("utf-8", { ignoreBOM: true });
  private first = true;
  /** Decoded text held back because a later token may still change how its spaces clean up. */
  private held = "";

  constructor(
    private readonly tokenizer: Tokenizer,
    options: DecodeOptions = {},
  ) {
    this.special = !(options.skipSpecial ?? false);
    this.first = !(options.continuation ?? false);
  }

  /** Add one token; returns the text that became complete (possibly ""). */
  push(id: number): string {
    let piece = this.tokenizer.piece(id, this.special);
    if (this.first) {
      this.first = false;
      if (this.tokenizer.addSpacePrefix && piece[0] === 0x20) piece = piece.subarray(1);
    }
    const text = this.utf8.decode(piece, { stream: true });
    if (!this.tokenizer.cleansSpaces) return text;
    const pending = this.held + text;
    const cut = safeCleanCut(pending);
    this.held = pending.slice(cut);
    return cleanSpaces(pending.slice(0, cut));
  }

  /** End of the stream: returns what was held back (an incomplete character becomes U+FFFD). */
  flush(): string {
    const text = this.held + this.utf8.decode();
    this.held = "";
    return this.tokenizer.cleansSpaces ? cleanSpaces(text) : text;
  }
}
