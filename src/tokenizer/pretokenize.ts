/**
 * Pre-tokenizers for byte-level BPE, keyed by the GGUF `tokenizer.ggml.pre` value.
 *
 * llama.cpp applies a list of regexes in order; each one splits every current segment into its
 * matches and the unmatched gaps between them (unicode.cpp `unicode_regex_split`). We do the same
 * with JavaScript unicode regexes. llama.cpp's `\s` is its own whitespace table (it has U+0085,
 * lacks U+FEFF), so the regexes below spell that class out instead of using JS `\s`.
 */

import { UserError } from "../errors.js";

/** llama.cpp's whitespace set (unicode-data.cpp `unicode_set_whitespace`), as a class body. */
const WS = "\\t\\n\\v\\f\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000";

/** Compile with `\s` / `\S` (only ever written inside [...] classes here) as llama.cpp's set. */
function re(source: string): RegExp {
  return new RegExp(source.replaceAll("\\s", WS).replaceAll("\\S", `^${WS}`), "gu");
}

/** GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
const GPT2 = re("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|[\\s]+(?![\\S])|[\\s]+");

/** Llama 3 (tokenizer.json regex with the case-insensitive group spelled out, as llama.cpp does). */
const LLAMA3 = re(
  "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|" +
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|[\\s]*[\\r\\n]+|[\\s]+(?![\\S])|[\\s]+",
);

/** Qwen 2: like Llama 3 but digits one at a time. */
const QWEN2 = re(
  "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|" +
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|[\\s]*[\\r\\n]+|[\\s]+(?![\\S])|[\\s]+",
);

const DIGIT = re("\\p{N}");
const DIGITS = re("\\p{N}+");
const THREE_ASCII_DIGITS = re("[0-9][0-9][0-9]");
/** llama.cpp's collapsed `\p{P}` is Unicode punctuation; the class adds ASCII symbols $+<=>^~| . */
const PUNCT_RUN = re("[\\p{P}$+<=>^~|]+");

/** How a BPE vocabulary family splits text and cleans decoded text (llama-vocab.cpp load()). */
export interface PreTokenizer {
  /** Canonical family name. */
  readonly name: string;
  readonly regexes: readonly RegExp[];
  /** Detokenizer removes spaces before punctuation and some contractions (clean_spaces). */
  readonly cleanSpaces: boolean;
  /** A whole pre-token found in the vocabulary is emitted as one token without merging. */
  readonly ignoreMerges: boolean;
  /** Default for add_bos when the GGUF does not say. */
  readonly addBosDefault: boolean;
}

function family(
  name: string,
  regexes: RegExp[],
  cleanSpaces: boolean,
  ignoreMerges = false,
  addBosDefault = false,
): PreTokenizer {
  return { name, regexes, cleanSpaces, ignoreMerges, addBosDefault };
}

const DEFAULT = family("default", [PUNCT_RUN, GPT2, DIGITS, THREE_ASCII_DIGITS], true);
const GPT2_FAMILY = family("gpt-2", [GPT2], true);
const LLAMA3_FAMILY = family("llama-bpe", [LLAMA3], true, true, true);
const STARCODER = family("starcoder", [DIGIT, GPT2], true);

/** `tokenizer.ggml.pre` values we implement, with llama.cpp's per-name flags. */
const PRE_TOKENIZERS: Record<string, PreTokenizer> = {
  default: DEFAULT,
  "gpt-2": GPT2_FAMILY,
  gpt2: GPT2_FAMILY,
  "phi-2": GPT2_FAMILY,
  mpt: GPT2_FAMILY,
  olmo: GPT2_FAMILY,
  jais: GPT2_FAMILY,
  exaone4: GPT2_FAMILY,
  llama3: LLAMA3_FAMILY,
  "llama-v3": LLAMA3_FAMILY,
  "llama-bpe": LLAMA3_FAMILY,
  falcon3: LLAMA3_FAMILY,
  pixtral: LLAMA3_FAMILY,
  dbrx: family("dbrx", [LLAMA3], true),
  "smaug-bpe": family("smaug-bpe", [LLAMA3], true),
  qwen2: family("qwen2", [QWEN2], false),
  "deepseek-r1-qwen": family("qwen2", [QWEN2], false),
  stablelm2: family("stablelm2", [QWEN2], true),
  megrez: family("megrez", [QWEN2], true),
  starcoder: STARCODER,
  refact: STARCODER,
  codeshell: STARCODER,
  exaone: STARCODER,
  "minerva-7b": STARCODER,
  smollm: family("smollm", [DIGIT, GPT2], false),
  "command-r": family("command-r", [DIGIT, GPT2], false),
};

/** The pre-tokenizer for a `tokenizer.ggml.pre` value; absent or empty means "default". */
export function preTokenizerFor(pre: string | undefined): PreTokenizer {
  const key = pre === undefined || pre === "" ? "default" : pre;
  const found = Object.hasOwn(PRE_TOKENIZERS, key) ? PRE_TOKENIZERS[key] : undefined;
  if (!found) {
    throw new UserError(
      `tokenizer.ggml.pre: unsupported pre-tokenizer "${key}" (supported: ${Object.keys(PRE_TOKENIZERS).join(", ")})`,
    );
  }
  return found;
}

export function supportedPreTokenizers(): string[] {
  return Object.keys(PRE_TOKENIZERS);
}

/** Regexes that match at every position, so that their matches alone partition the text. */
const COVERING = new Set([GPT2, LLAMA3, QWEN2]);

/** Split one segment by `regex`: matches and the gaps between them, in order, none empty. */
function splitSegment(segment: string, regex: RegExp, out: string[]): void {
  if (COVERING.has(regex)) {
    const matches = segment.match(regex);
    if (matches) for (const m of matches) out.push(m);
    return;
  }
  regex.lastIndex = 0;
  let last = 0;
  for (let m = regex.exec(segment); m !== null; m = regex.exec(segment)) {
    const start = m.index;
    const text = m[0];
    if (text.length === 0) {
      regex.lastIndex++;
      continue;
    }
    if (start > last) out.push(segment.slice(last, start));
    out.push(text);
    last = start + text.length;
  }
  if (last < segment.length) out.push(last === 0 ? segment : segment.slice(last));
}

/** Split text into pre-tokens (not yet byte-encoded). */
export function preTokenize(text: string, pre: PreTokenizer): string[] {
  let segments = [text];
  for (const regex of pre.regexes) {
    const next: string[] = [];
    for (const segment of segments) splitSegment(segment, regex, next);
    segments = next;
  }
  return segments;
}
