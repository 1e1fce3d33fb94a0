/**
 * SentencePiece's tokenizer.model (a protobuf ModelProto, sentencepiece_model.proto) read into a
 * TokenizerDescription: the pieces with their scores and types (SentencePiece's type numbers are
 * GGUF's token types), the special ids of the trainer spec and the normalizer's dummy prefix.
 * Only BPE models are Llama's kind; a unigram model (T5 and others) is refused by name.
 */
import { UserError } from "../errors.js";
import type { TokenizerDescription } from "./index.js";
import { TokenType } from "./index.js";

/** A bounded protobuf reader: every length is checked against the bytes that remain. */
class Reader {
  pos: number;
  constructor(
    private readonly buf: Uint8Array,
    private readonly file: string,
    start = 0,
    readonly end = buf.length,
  ) {
    this.pos = start;
  }

  fail(what: string): never {
    throw new UserError(`${this.file}: not a SentencePiece model (${what})`);
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  varint(): bigint {
    let v = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (this.pos >= this.end) this.fail("truncated varint");
      const b = this.buf[this.pos++]!;
      v |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return v;
    }
    return this.fail("varint longer than 10 bytes");
  }

  /** An int32 varint (negative values take 10 bytes). */
  int32(): number {
    return Number(BigInt.asIntN(32, this.varint()));
  }

  bytes(): [number, number] {
    const n = Number(this.varint());
    if (n > this.end - this.pos) this.fail("a field runs past the end");
    const start = this.pos;
    this.pos += n;
    return [start, this.pos];
  }

  float(): number {
    if (this.end - this.pos < 4) this.fail("truncated float");
    const v = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, 4).getFloat32(0, true);
    this.pos += 4;
    return v;
  }

  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.bytes();
    else if (wire === 5) this.pos += 4;
    else this.fail(`wire type ${wire}`);
    if (this.pos > this.end) this.fail("a field runs past the end");
  }

  sub(range: [number, number]): Reader {
    return new Reader(this.buf, this.file, range[0], range[1]);
  }

  text(range: [number, number]): string {
    return new TextDecoder("utf-8", { fatal: false }).decode(this.buf.subarray(range[0], range[1]));
  }
}

const SP_TYPES = new Set<number>([
  TokenType.Normal,
  TokenType.Unknown,
  TokenType.Control,
  TokenType.UserDefined,
  TokenType.Unused,
  TokenType.Byte,
]);

/** Reads a tokenizer.model's bytes. */
export function readSentencePieceModel(bytes: Uint8Array, file: string): TokenizerDescription {
  const r = new Reader(bytes, file);
  const tokens: string[] = [];
  const scores: number[] = [];
  const types: number[] = [];
  let modelType = 1; // UNIGRAM is the proto's default
  let unkId = 0;
  let bosId = 1;
  let eosId = 2;
  let padId = -1;
  let addDummyPrefix = true;
  while (!r.done) {
    const key = Number(r.varint());
    const field = key >>> 3;
    const wire = key & 7;
    if (field === 1 && wire === 2) {
      const p = r.sub(r.bytes());
      let piece = "";
      let score = 0;
      let type: number = TokenType.Normal;
      while (!p.done) {
        const k = Number(p.varint());
        if (k === (1 << 3) + 2) piece = p.text(p.bytes());
        else if (k === (2 << 3) + 5) score = p.float();
        else if (k === (3 << 3) + 0) type = Number(p.varint());
        else p.skip(k & 7);
      }
      if (!SP_TYPES.has(type)) r.fail(`piece ${tokens.length} has type ${type}`);
      tokens.push(piece);
      scores.push(score);
      types.push(type);
      if (tokens.length > 1 << 24) r.fail("more than 16M pieces");
    } else if (field === 2 && wire === 2) {
      const t = r.sub(r.bytes());
      while (!t.done) {
        const k = Number(t.varint());
        const f = k >>> 3;
        if ((k & 7) !== 0) t.skip(k & 7);
        else if (f === 3) modelType = t.int32();
        else if (f === 40) unkId = t.int32();
        else if (f === 41) bosId = t.int32();
        else if (f === 42) eosId = t.int32();
        else if (f === 43) padId = t.int32();
        else t.varint();
      }
    } else if (field === 3 && wire === 2) {
      const n = r.sub(r.bytes());
      while (!n.done) {
        const k = Number(n.varint());
        if (k === (3 << 3) + 0) addDummyPrefix = n.varint() !== 0n;
        else n.skip(k & 7);
      }
    } else {
      r.skip(wire);
    }
  }
  if (tokens.length === 0) r.fail("no pieces");
  if (modelType !== 2) {
    const name = { 1: "unigram", 3: "word", 4: "char" }[modelType] ?? `type ${modelType}`;
    throw new UserError(`${file}: SentencePiece ${name} models are not supported yet (supported: bpe)`);
  }
  const id = (v: number) => (v >= 0 && v < tokens.length ? v : undefined);
  return {
    model: "llama",
    tokens,
    scores: Float32Array.from(scores),
    tokenTypes: Int32Array.from(types),
    unkId: id(unkId),
    bosId: id(bosId),
    eosId: id(eosId),
    padId: id(padId),
    addBos: true,
    addEos: false,
    addSpacePrefix: addDummyPrefix,
  };
}
