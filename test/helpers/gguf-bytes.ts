// Hand-built GGUF bytes, including files no writer would produce: counts and lengths that lie,
// unknown types, arrays nested past any limit, and metadata shapes that cost far more memory
// decoded than they take on disk. Used by the reader's validation, fuzz and memory tests.
import { closeSync, openSync, writeSync } from "node:fs";
import { GGMLType } from "../../src/formats/ggml-types.js";
import { GgufValueType } from "../../src/formats/gguf.js";
import type { Rng } from "../../src/util/random.js";

/** A little-endian byte builder that grows in chunks (fast enough for files of tens of MB). */
export class GgufBytes {
  private readonly chunks: Buffer[] = [];
  private cur = Buffer.allocUnsafe(1 << 16);
  private pos = 0;
  private flushed = 0;

  get length(): number {
    return this.flushed + this.pos;
  }

  private room(n: number): void {
    if (this.pos + n <= this.cur.length) return;
    this.chunks.push(this.cur.subarray(0, this.pos));
    this.flushed += this.pos;
    this.cur = Buffer.allocUnsafe(Math.max(1 << 16, n));
    this.pos = 0;
  }

  u8(v: number): this {
    this.room(1);
    this.cur[this.pos++] = v & 0xff;
    return this;
  }
  u32(v: number): this {
    this.room(4);
    this.pos = this.cur.writeUInt32LE(v >>> 0, this.pos);
    return this;
  }
  u64(v: number | bigint): this {
    this.room(8);
    this.pos = this.cur.writeBigUInt64LE(BigInt.asUintN(64, BigInt(v)), this.pos);
    return this;
  }
  f32(v: number): this {
    this.room(4);
    this.pos = this.cur.writeFloatLE(v, this.pos);
    return this;
  }
  raw(bytes: Uint8Array): this {
    this.room(bytes.length);
    this.cur.set(bytes, this.pos);
    this.pos += bytes.length;
    return this;
  }
  /** A gguf string: u64 byte length, then the bytes (a JS string is written as UTF-8). */
  str(s: string | Uint8Array): this {
    const b = typeof s === "string" ? Buffer.from(s, "utf8") : s;
    return this.u64(b.length).raw(b);
  }
  header(tensors: number | bigint, kvs: number | bigint, version = 3): this {
    return this.u32(0x46554747).u32(version).u64(tensors).u64(kvs);
  }
  tensorInfo(name: string, dims: (number | bigint)[], type: number, offset: number | bigint): this {
    this.str(name).u32(dims.length);
    for (const d of dims) this.u64(d);
    return this.u32(type).u64(offset);
  }
  zeros(n: number): this {
    this.room(n);
    this.cur.fill(0, this.pos, this.pos + n);
    this.pos += n;
    return this;
  }
  padTo(alignment: number): this {
    return this.zeros((alignment - (this.length % alignment)) % alignment);
  }
  bytes(): Buffer {
    return Buffer.concat([...this.chunks, this.cur.subarray(0, this.pos)]);
  }
  writeTo(path: string): number {
    const fd = openSync(path, "w");
    try {
      for (const c of [...this.chunks, this.cur.subarray(0, this.pos)]) writeSync(fd, c);
    } finally {
      closeSync(fd);
    }
    return this.length;
  }
}

// ---------------------------------------------------------------------------------------------
// Metadata shapes that decode to much more memory than they take in the file

/** Shapes of one large metadata value (or of many keys or tensors), each a few bytes an element. */
export const MEMORY_SHAPES = [
  "empty-u8-arrays",
  "one-byte-arrays",
  "empty-string-arrays",
  "arrays-of-one-empty-array",
  "two-char-strings",
  "one-char-strings",
  "short-non-ascii-strings",
  "bools",
  "u64-above-2^53",
  "small-i64",
  "f32",
  "one-long-string",
  "tiny-keys",
  "tiny-tensors",
] as const;
export type MemoryShape = (typeof MEMORY_SHAPES)[number];

/** Bytes of one element of an array-valued shape, and the array's element type. */
function elementOf(shape: MemoryShape): { type: GgufValueType; bytes: Buffer } | undefined {
  const b = new GgufBytes();
  switch (shape) {
    case "empty-u8-arrays":
      return { type: GgufValueType.ARRAY, bytes: b.u32(GgufValueType.UINT8).u64(0).bytes() };
    case "one-byte-arrays":
      return { type: GgufValueType.ARRAY, bytes: b.u32(GgufValueType.UINT8).u64(1).u8(7).bytes() };
    case "empty-string-arrays":
      return { type: GgufValueType.ARRAY, bytes: b.u32(GgufValueType.STRING).u64(0).bytes() };
    case "arrays-of-one-empty-array":
      return {
        type: GgufValueType.ARRAY,
        bytes: b.u32(GgufValueType.ARRAY).u64(1).u32(GgufValueType.BOOL).u64(0).bytes(),
      };
    case "two-char-strings":
      return { type: GgufValueType.STRING, bytes: b.str("ab").bytes() };
    case "one-char-strings":
      return { type: GgufValueType.STRING, bytes: b.str("a").bytes() };
    case "short-non-ascii-strings":
      return { type: GgufValueType.STRING, bytes: b.str("▁é").bytes() };
    case "bools":
      return { type: GgufValueType.BOOL, bytes: b.u8(1).bytes() };
    case "u64-above-2^53":
      return { type: GgufValueType.UINT64, bytes: b.u64(2n ** 60n + 3n).bytes() };
    case "small-i64":
      return { type: GgufValueType.INT64, bytes: b.u64(-7).bytes() };
    case "f32":
      return { type: GgufValueType.FLOAT32, bytes: b.f32(0.5).bytes() };
    default:
      return undefined;
  }
}

/**
 * Writes a GGUF file of about `targetBytes` made of one metadata shape: one key whose array holds
 * as many elements as fit, one long string, a flood of tiny keys, or a flood of tiny tensors.
 * Returns the file's size.
 */
export function writeMemoryShape(path: string, shape: MemoryShape, targetBytes: number): number {
  const b = new GgufBytes();
  const element = elementOf(shape);
  if (element) {
    const count = Math.floor((targetBytes - 64) / element.bytes.length);
    b.header(0, 1).str("shape").u32(GgufValueType.ARRAY).u32(element.type).u64(count);
    // Buffer.fill repeats its argument: the whole body in one step.
    b.raw(Buffer.alloc(count * element.bytes.length).fill(element.bytes));
  } else if (shape === "one-long-string") {
    b.header(0, 1)
      .str("shape")
      .u32(GgufValueType.STRING)
      .str("x".repeat(targetBytes - 64));
  } else if (shape === "tiny-keys") {
    const keyed = (i: number) => `k${i.toString(36)}`;
    let count = 0;
    for (let size = 24; size + keyed(count).length + 13 <= targetBytes; count++) {
      size += keyed(count).length + 13;
    }
    b.header(0, count);
    for (let i = 0; i < count; i++) b.str(keyed(i)).u32(GgufValueType.UINT8).u8(i);
  } else {
    // Tensors of one f32 each, packed at the default alignment of 32.
    const named = (i: number) => `t${i.toString(36)}`;
    let count = 0;
    for (let size = 56; size + named(count).length + 36 + 32 <= targetBytes; count++) {
      size += named(count).length + 36 + 32;
    }
    b.header(count, 0);
    for (let i = 0; i < count; i++) b.tensorInfo(named(i), [1], GGMLType.F32, i * 32);
    b.padTo(32).zeros(count * 32);
  }
  return b.writeTo(path);
}

// ---------------------------------------------------------------------------------------------
// Random metadata shapes for the fuzz tests

const BOUNDARY_U64 = [0n, 1n, 2n ** 32n, 2n ** 53n + 1n, 2n ** 62n, 2n ** 63n, 2n ** 64n - 1n];
const NASTY_TEXT = ["", "a", "é", "\u202egnp.exe", "\u001b[31m", "\u0000", "\u2066x\u2069", "日本", "🎉"];

function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[rng.nextInt(items.length)]!;
}

function randomText(rng: Rng): Uint8Array {
  switch (rng.nextInt(4)) {
    case 0: {
      // arbitrary bytes, often invalid UTF-8
      const out = new Uint8Array(rng.nextInt(12));
      for (let i = 0; i < out.length; i++) out[i] = rng.nextU32() & 0xff;
      return out;
    }
    case 1:
      return Buffer.from(pick(rng, NASTY_TEXT).repeat(1 + rng.nextInt(3)));
    default:
      return Buffer.from(`k.${rng.nextU32().toString(36)}`);
  }
}

/** A count for an array or string: usually true, sometimes one that lies (small or absurd). */
function randomCount(rng: Rng, honest: number): { declared: number | bigint; actual: number } {
  const r = rng.nextInt(10);
  if (r === 0) return { declared: pick(rng, BOUNDARY_U64), actual: honest };
  if (r === 1) return { declared: honest + 1 + rng.nextInt(1000), actual: honest };
  return { declared: honest, actual: honest };
}

function randomScalar(b: GgufBytes, rng: Rng, type: number): void {
  switch (type) {
    case GgufValueType.UINT8:
    case GgufValueType.INT8:
    case GgufValueType.BOOL:
      b.u8(rng.nextU32());
      return;
    case GgufValueType.UINT16:
    case GgufValueType.INT16:
      b.u8(rng.nextU32()).u8(rng.nextU32());
      return;
    case GgufValueType.UINT32:
    case GgufValueType.INT32:
      b.u32(rng.nextU32());
      return;
    case GgufValueType.FLOAT32:
      b.f32(pick(rng, [0, -1.5, Number.NaN, Number.POSITIVE_INFINITY, 1e-45, 3.4e38]));
      return;
    case GgufValueType.FLOAT64:
    case GgufValueType.UINT64:
    case GgufValueType.INT64:
      b.u64(rng.nextInt(2) ? pick(rng, BOUNDARY_U64) : rng.nextU32());
      return;
    case GgufValueType.STRING: {
      const text = randomText(rng);
      const { declared } = randomCount(rng, text.length);
      b.u64(declared).raw(text);
      return;
    }
    default:
      b.u32(rng.nextU32()); // junk after an unknown type
  }
}

function randomArray(b: GgufBytes, rng: Rng, depth: number): void {
  // Now and then a chain of single-element arrays deep enough to cross the nesting limit (64).
  if (depth === 1 && rng.nextInt(25) === 0) {
    const levels = 55 + rng.nextInt(20);
    for (let i = 0; i < levels; i++) b.u32(GgufValueType.ARRAY).u64(1);
    randomArray(b, rng, levels + 1);
    return;
  }
  if (depth < 70 && rng.nextInt(depth < 4 ? 3 : 12) === 0) {
    b.u32(GgufValueType.ARRAY).u64(1);
    randomArray(b, rng, depth + 1);
    return;
  }
  const elementType = rng.nextInt(40) === 0 ? 13 + rng.nextInt(5) : rng.nextInt(13);
  const { declared, actual } = randomCount(rng, rng.nextInt(7));
  b.u32(elementType).u64(declared);
  for (let i = 0; i < actual; i++) {
    if (elementType === GgufValueType.ARRAY) randomArray(b, rng, depth + 1);
    else randomScalar(b, rng, elementType);
  }
}

/**
 * A random small GGUF file: random keys (odd bytes, duplicates, empty), every value type with
 * nested arrays, lying counts and lengths, unknown types, some tensors (overlapping now and then),
 * and sometimes cut short or with a few bytes changed. Deterministic for a given generator state.
 */
export function randomMetadataGguf(rng: Rng): Buffer {
  const b = new GgufBytes();
  const kvs = rng.nextInt(8);
  const tensors = rng.nextInt(4);
  const kvCount = rng.nextInt(12) === 0 ? pick(rng, BOUNDARY_U64) : kvs;
  b.header(tensors, kvCount, rng.nextInt(20) === 0 ? 2 : 3);
  const keys: Uint8Array[] = [];
  for (let i = 0; i < kvs; i++) {
    const key = keys.length > 0 && rng.nextInt(15) === 0 ? pick(rng, keys) : randomText(rng);
    keys.push(key);
    b.str(key);
    const type = rng.nextInt(30) === 0 ? 13 + rng.nextInt(100) : rng.nextInt(13);
    b.u32(type);
    if (type === GgufValueType.ARRAY) randomArray(b, rng, 1);
    else randomScalar(b, rng, type);
  }
  let offset = 0;
  for (let i = 0; i < tensors; i++) {
    const n = 1 + rng.nextInt(16);
    b.tensorInfo(`t${i}`, [n], GGMLType.F32, offset);
    // Usually packed in order; sometimes the next starts inside this one or at the same offset.
    const r = rng.nextInt(6);
    offset =
      r === 0 ? offset : r === 1 ? offset + 32 * rng.nextInt(2) : offset + Math.ceil((4 * n) / 32) * 32;
  }
  b.padTo(32).zeros(offset + 64);
  let bytes = b.bytes();
  if (rng.nextInt(5) === 0) bytes = bytes.subarray(0, rng.nextInt(bytes.length + 1));
  if (rng.nextInt(5) === 0) {
    for (let i = 0, n = 1 + rng.nextInt(3); i < n && bytes.length > 0; i++) {
      bytes[rng.nextInt(bytes.length)] = rng.nextU32() & 0xff;
    }
  }
  return bytes;
}
