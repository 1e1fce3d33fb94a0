/**
 * Byte-level BPE (GPT-2 style), as llama.cpp's llm_tokenizer_bpe: split text into pre-tokens,
 * spell each pre-token's UTF-8 bytes in the GPT-2 byte-to-unicode alphabet, then apply merges by
 * rank (earlier in `tokenizer.ggml.merges` first). Results are cached per pre-token.
 */

import { mergeSymbols } from "./merge.js";
import { type PreTokenizer, preTokenize } from "./pretokenize.js";

const MAX_CACHED_WORD = 64;
const MAX_CACHE_ENTRIES = 100_000;

/** GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map to U+0100 and up. */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const table: string[] = new Array(256);
  const printable = (b: number) =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let n = 0;
  for (let b = 0; b < 256; b++) table[b] = String.fromCharCode(printable(b) ? b : 256 + n++);
  return table;
})();

/** Inverse of BYTE_TO_CHAR, by code point. */
export const CHAR_TO_BYTE: ReadonlyMap<number, number> = new Map(
  BYTE_TO_CHAR.map((ch, b) => [ch.charCodeAt(0), b] as const),
);

/** Spell UTF-8 bytes in the GPT-2 byte alphabet. */
export function bytesToBpeText(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += BYTE_TO_CHAR[b];
  return s;
}

export class BpeEncoder {
  /** "left right" -> rank; the first occurrence of a merge wins, as in llama.cpp. */
  private readonly ranks = new Map<string, number>();
  private readonly cache = new Map<string, number[]>();
  private readonly utf8 = new TextEncoder();

  constructor(
    private readonly pieceToId: ReadonlyMap<string, number>,
    merges: readonly string[],
    private readonly pre: PreTokenizer,
  ) {
    merges.forEach((merge, rank) => {
      // llama.cpp splits at the first space after the first character.
      if (merge.indexOf(" ", 1) < 0) return;
      if (!this.ranks.has(merge)) this.ranks.set(merge, rank);
    });
  }

  encode(text: string, out: number[]): void {
    for (const word of preTokenize(text, this.pre)) this.encodeWord(word, out);
  }

  private encodeWord(word: string, out: number[]): void {
    const cacheable = word.length <= MAX_CACHED_WORD;
    if (cacheable) {
      const hit = this.cache.get(word);
      if (hit) {
        for (const id of hit) out.push(id);
        return;
      }
    }
    const ids: number[] = [];
    const encoded = bytesToBpeText(this.utf8.encode(word));
    const whole = this.pre.ignoreMerges ? this.pieceToId.get(encoded) : undefined;
    if (whole !== undefined) {
      ids.push(whole);
    } else {
      const symbols = mergeSymbols(Array.from(encoded), (left, right) => this.ranks.get(`${left} ${right}`));
      for (const symbol of symbols) {
        const id = this.pieceToId.get(symbol);
        if (id !== undefined) {
          ids.push(id);
          continue;
        }
        // Not a token (a merge whose result is missing from the vocabulary, or a byte the
        // vocabulary lacks): llama.cpp looks up each UTF-8 byte of the symbol as a one-byte
        // token and silently drops the bytes that aren't; only ASCII bytes can be such tokens.
        for (const ch of symbol) {
          if (ch.charCodeAt(0) < 0x80) {
            const byteId = this.pieceToId.get(ch);
            if (byteId !== undefined) ids.push(byteId);
          }
        }
      }
    }
    if (cacheable) {
      if (this.cache.size >= MAX_CACHE_ENTRIES) this.cache.clear();
      this.cache.set(word, ids);
    }
    for (const id of ids) out.push(id);
  }
}
