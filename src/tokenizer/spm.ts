/**
 * SentencePiece-style BPE with byte fallback, as llama.cpp's llm_tokenizer_spm: the text (spaces
 * already escaped to U+2581) starts as one symbol per code point; adjacent symbols whose
 * concatenation is in the vocabulary merge, highest score first; symbols left that are not
 * tokens are spelled as <0xXX> byte tokens.
 *
 * Speed: a merge can only join two code points that sit next to each other inside some vocabulary
 * token. Wherever the text has a neighbouring pair that no token contains, the two sides are
 * tokenized independently, so the text is cut there into chunks and each chunk's ids are cached.
 * The result is identical to running the merge loop over the whole text.
 */

import { mergeSymbols } from "./merge.js";

const MAX_CACHED_CHUNK = 64;
const MAX_CACHE_ENTRIES = 100_000;

function pairKey(a: number, b: number): number {
  return a * 0x110000 + b;
}

/** Code points 0-254 and U+2581 (the escaped space) get a bit matrix; the rest use a Set. */
function smallIndex(cp: number): number {
  return cp < 255 ? cp : cp === 0x2581 ? 255 : -1;
}

export class SpmEncoder {
  /** Pairs of neighbouring code points found inside some token. */
  private readonly pairs = new Set<number>();
  private readonly smallPairs = new Uint8Array(8192);
  private readonly cache = new Map<string, number[]>();
  private readonly byteIds = new Int32Array(256).fill(-1);
  private readonly utf8 = new TextEncoder();

  constructor(
    private readonly pieceToId: ReadonlyMap<string, number>,
    private readonly scores: ArrayLike<number> | undefined,
    private readonly unkId: number | undefined,
  ) {
    for (const piece of pieceToId.keys()) {
      let prev = -1;
      for (const ch of piece) {
        const cp = ch.codePointAt(0)!;
        if (prev >= 0) this.addPair(prev, cp);
        prev = cp;
      }
    }
    const hex = "0123456789ABCDEF";
    for (let b = 0; b < 256; b++) {
      // llama_vocab::byte_to_token: "<0xXX>", else the byte itself as a one-character token.
      const id =
        pieceToId.get(`<0x${hex[b >> 4]}${hex[b & 15]}>`) ??
        (b < 0x80 ? pieceToId.get(String.fromCharCode(b)) : undefined);
      if (id !== undefined) this.byteIds[b] = id;
    }
  }

  private addPair(a: number, b: number): void {
    const ia = smallIndex(a);
    const ib = smallIndex(b);
    if (ia >= 0 && ib >= 0) {
      const k = (ia << 8) | ib;
      this.smallPairs[k >> 3] |= 1 << (k & 7);
    } else {
      this.pairs.add(pairKey(a, b));
    }
  }

  private hasPair(a: number, b: number): boolean {
    const ia = smallIndex(a);
    const ib = smallIndex(b);
    if (ia >= 0 && ib >= 0) {
      const k = (ia << 8) | ib;
      return (this.smallPairs[k >> 3]! & (1 << (k & 7))) !== 0;
    }
    return this.pairs.has(pairKey(a, b));
  }

  /** Tokenize already-escaped text (spaces as U+2581, any space prefix already added). */
  encode(text: string, out: number[]): void {
    let chunkStart = 0;
    let prev = -1;
    for (let i = 0; i < text.length; ) {
      const cp = text.codePointAt(i)!;
      if (prev >= 0 && !this.hasPair(prev, cp)) {
        this.encodeChunk(text.slice(chunkStart, i), out);
        chunkStart = i;
      }
      prev = cp;
      i += cp > 0xffff ? 2 : 1;
    }
    if (chunkStart < text.length) this.encodeChunk(chunkStart === 0 ? text : text.slice(chunkStart), out);
  }

  private encodeChunk(chunk: string, out: number[]): void {
    const cacheable = chunk.length <= MAX_CACHED_CHUNK;
    if (cacheable) {
      const hit = this.cache.get(chunk);
      if (hit) {
        for (const id of hit) out.push(id);
        return;
      }
    }
    const ids: number[] = [];
    const symbols = mergeSymbols(Array.from(chunk), (left, right) => {
      const id = this.pieceToId.get(left + right);
      // llama.cpp pops the highest score first; the merge loop pops the lowest priority.
      return id === undefined ? undefined : -(this.scores?.[id] ?? 0);
    });
    for (const symbol of symbols) this.resegment(symbol, ids);
    if (cacheable) {
      if (this.cache.size >= MAX_CACHE_ENTRIES) this.cache.clear();
      this.cache.set(chunk, ids);
    }
    for (const id of ids) out.push(id);
  }

  private resegment(symbol: string, out: number[]): void {
    const id = this.pieceToId.get(symbol);
    if (id !== undefined) {
      out.push(id);
      return;
    }
    const bytes = this.utf8.encode(symbol);
    for (const b of bytes) {
      if (this.byteIds[b]! < 0) {
        // No byte token for this byte: llama.cpp aborts here; we emit <unk> for the whole symbol.
        if (this.unkId === undefined) {
          throw new Error(
            `tokenizer: "${symbol}" is not in the vocabulary, which has no byte tokens and no <unk>`,
          );
        }
        out.push(this.unkId);
        return;
      }
    }
    for (const b of bytes) out.push(this.byteIds[b]!);
  }
}
