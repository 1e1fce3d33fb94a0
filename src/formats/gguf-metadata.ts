/**
 * Reading GGUF metadata: a sequential little-endian file reader and the metadata decoder.
 * Every count and length is checked against the bytes left in the file before anything is
 * allocated (as ggml's gguf.cpp does), and the memory the decoded values take is charged to a
 * budget proportional to the file size, so no metadata shape (millions of empty nested arrays,
 * of one-byte strings, of booleans) can make a small file take gigabytes or minutes to read.
 */
import { isAscii } from "node:buffer";
import { readSync } from "node:fs";
import { UserError } from "../errors.js";
import {
  type GgufArray,
  type GgufKv,
  GgufValueType,
  MIN_VALUE_BYTES,
  quote,
  TYPED_ARRAY_CTORS,
} from "./gguf-types.js";

/** Arrays and strings larger than this are rejected before allocating (real files stay far below). */
const MAX_STRING_BYTES = 256 * 1024 * 1024;
const MAX_ARRAY_ELEMENTS = 1 << 27;
const MAX_ARRAY_NESTING = 64;
const TWO_32 = 4294967296;

/**
 * Heap bytes the decoded values take in V8 on a 64-bit machine (measured with Node 20, rounded
 * up). The reader charges these to its budget as it decodes.
 */
export const HEAP_COST = {
  /** One element of a JS array (a pointer). */
  slot: 8,
  /** A small object: a metadata value `{ type, value }` or an array `{ elementType, values }`. */
  object: 40,
  /** An empty JS array; its elements are charged as slots. */
  jsArray: 48,
  /** A typed array with its ArrayBuffer, without the element bytes. */
  typedArray: 192,
  /** A string's header; its characters are charged at one or two bytes each. */
  stringHeader: 16,
  /** A bigint or a heap number (a 64-bit integer outside the small-integer range, a float). */
  boxedNumber: 24,
  /** One entry of a Map or a Set. */
  mapEntry: 32,
  /** A tensor info with its dims array and its entries in the lookup tables, without its name. */
  tensorInfo: 512,
} as const;

/**
 * Decoded metadata and tensor infos may take this many times the file size, plus
 * METADATA_MEMORY_BASE. Real files stay well below (a vocabulary of short tokens takes about
 * 2.5 times its bytes; the weights make a model file far larger than its header).
 */
export const METADATA_MEMORY_PER_FILE_BYTE = 3;
export const METADATA_MEMORY_BASE = 4 << 20;

function mib(bytes: number): string {
  return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
}

/** V8 keeps integers of 32 bits inline; wider ones, fractions and bigints are separate objects. */
function isSmallInteger(v: number | bigint): boolean {
  return typeof v === "number" && Number.isInteger(v) && v >= -0x80000000 && v <= 0x7fffffff;
}

/**
 * Sequential little-endian reader over a file descriptor with a refilling buffer; never holds
 * more of the file than the largest single value it is asked for. It also keeps the memory budget
 * of what has been decoded so far.
 */
export class FileReader {
  private buf: Buffer;
  /** File offset of buf[0]. */
  private bufPos = 0;
  /** Read position within buf. */
  private off = 0;
  /** Number of valid bytes in buf. */
  private end = 0;
  /** Estimated heap bytes of everything decoded so far. */
  private charged = 0;
  readonly memoryLimit: number;

  constructor(
    private readonly fd: number,
    readonly fileSize: number,
    readonly path: string,
    capacity = 1 << 20,
  ) {
    this.buf = Buffer.allocUnsafe(Math.max(64, Math.min(capacity, fileSize)));
    this.memoryLimit = METADATA_MEMORY_PER_FILE_BYTE * fileSize + METADATA_MEMORY_BASE;
  }

  get position(): number {
    return this.bufPos + this.off;
  }

  get remaining(): number {
    return this.fileSize - this.position;
  }

  /** Estimated heap bytes of the values decoded so far. */
  get memoryCharged(): number {
    return this.charged;
  }

  fail(message: string): never {
    throw new UserError(`${this.path}: ${message}`);
  }

  /** Records `bytes` of decoded values, failing before the total passes the file's limit. */
  charge(bytes: number, what: string): void {
    this.charged += bytes;
    if (this.charged > this.memoryLimit) {
      this.fail(
        `${what}: the header would take over ${mib(this.memoryLimit)} of memory to hold, more than ${METADATA_MEMORY_PER_FILE_BYTE} times the file's ${mib(this.fileSize)} + ${mib(METADATA_MEMORY_BASE)} (a malformed or hostile file)`,
      );
    }
  }

  /** Makes `n` bytes available at `this.off`. */
  private need(n: number, what: string): void {
    if (this.end - this.off >= n) return;
    if (n > this.remaining) {
      this.fail(
        `truncated GGUF file: ${what} needs ${n} bytes at offset ${this.position}, the file has ${this.fileSize} bytes`,
      );
    }
    const kept = this.end - this.off;
    if (n > this.buf.length) {
      const bigger = Buffer.allocUnsafe(Math.max(n, Math.min(this.buf.length * 2, this.fileSize)));
      this.buf.copy(bigger, 0, this.off, this.end);
      this.buf = bigger;
    } else if (kept > 0) {
      this.buf.copyWithin(0, this.off, this.end);
    }
    this.bufPos += this.off;
    this.off = 0;
    this.end = kept;
    const want = Math.min(this.buf.length, this.fileSize - this.bufPos);
    while (this.end < n) {
      const got = readSync(this.fd, this.buf, this.end, want - this.end, this.bufPos + this.end);
      if (got === 0) this.fail(`file ended early (at ${this.bufPos + this.end} of ${this.fileSize} bytes)`);
      this.end += got;
    }
  }

  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.off++]!;
  }

  i8(what: string): number {
    this.need(1, what);
    return this.buf.readInt8(this.off++);
  }

  u16(what: string): number {
    this.need(2, what);
    const v = this.buf.readUInt16LE(this.off);
    this.off += 2;
    return v;
  }

  i16(what: string): number {
    this.need(2, what);
    const v = this.buf.readInt16LE(this.off);
    this.off += 2;
    return v;
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.buf.readUInt32LE(this.off);
    this.off += 4;
    return v;
  }

  i32(what: string): number {
    this.need(4, what);
    const v = this.buf.readInt32LE(this.off);
    this.off += 4;
    return v;
  }

  f32(what: string): number {
    this.need(4, what);
    const v = this.buf.readFloatLE(this.off);
    this.off += 4;
    return v;
  }

  f64(what: string): number {
    this.need(8, what);
    const v = this.buf.readDoubleLE(this.off);
    this.off += 8;
    return v;
  }

  /** A u64 as a plain number: exact below 2^53, approximate above (callers range-check it). */
  u64Approx(what: string): number {
    this.need(8, what);
    const lo = this.buf.readUInt32LE(this.off);
    const hi = this.buf.readUInt32LE(this.off + 4);
    this.off += 8;
    return hi * TWO_32 + lo;
  }

  u64(what: string): number | bigint {
    this.need(8, what);
    const v = this.buf.readBigUInt64LE(this.off);
    this.off += 8;
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }

  i64(what: string): number | bigint {
    this.need(8, what);
    const v = this.buf.readBigInt64LE(this.off);
    this.off += 8;
    return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v;
  }

  /** Reads a string and charges its heap cost (one byte a character when ASCII, two otherwise). */
  string(what: string): string {
    const len = this.u64Approx(what);
    if (len > this.remaining) {
      this.fail(`${what}: string length ${len} runs past the end of the file (${this.remaining} bytes left)`);
    }
    if (len > MAX_STRING_BYTES) this.fail(`${what}: string length ${len} is too large`);
    this.need(len, what);
    const start = this.off;
    const end = start + len;
    if (len > 0) {
      // V8 keeps ASCII at one byte a character; other text takes at most two a UTF-8 byte
      // (each two-byte UTF-16 unit stands for at least one). Heap objects are 8-byte aligned.
      const perChar = isAscii(this.buf.subarray(start, end)) ? 1 : 2;
      this.charge(Math.ceil((HEAP_COST.stringHeader + len * perChar) / 8) * 8, what);
    }
    this.off = end;
    return this.buf.toString("utf8", start, end);
  }

  /** Copies the next `target.length` bytes into target: buffered bytes first, the rest straight from the file. */
  bytesInto(target: Uint8Array, what: string): void {
    const n = target.length;
    if (n > this.remaining) this.fail(`${what}: ${n} bytes run past the end of the file`);
    const fromBuf = Math.min(n, this.end - this.off);
    target.set(this.buf.subarray(this.off, this.off + fromBuf));
    this.off += fromBuf;
    let done = fromBuf;
    if (done === n) return;
    // buffer is drained: read the rest directly and restart buffering after it
    const start = this.position;
    while (done < n) {
      const got = readSync(this.fd, target, done, n - done, start + done - fromBuf);
      if (got === 0) this.fail(`${what}: file ended early`);
      done += got;
    }
    this.bufPos = start + (n - fromBuf);
    this.off = 0;
    this.end = 0;
  }
}

/** The least any decoded array takes: its `{ elementType, values }` object and an empty JS array. */
const MIN_ARRAY_COST = HEAP_COST.object + HEAP_COST.jsArray;

/**
 * Reads an array value. `prepaid` is what the caller has already charged for this array (a
 * nested array's parent charges MIN_ARRAY_COST for every element before reading the first, so
 * that millions of empty arrays are refused before any is built).
 */
function readArray(r: FileReader, key: string, depth: number, prepaid: number): GgufArray {
  const what = `metadata key ${quote(key)}`;
  if (depth > MAX_ARRAY_NESTING) r.fail(`${what}: arrays nested deeper than ${MAX_ARRAY_NESTING} levels`);
  const elementType = r.u32(`${what} array type`);
  const count = r.u64Approx(`${what} array count`);
  const minBytes = MIN_VALUE_BYTES[elementType];
  if (minBytes === undefined) r.fail(`${what}: unknown array element type ${elementType}`);
  if (count * minBytes > r.remaining) {
    r.fail(`${what}: array count ${count} runs past the end of the file (${r.remaining} bytes left)`);
  }
  if (count > MAX_ARRAY_ELEMENTS) r.fail(`${what}: array count ${count} is too large`);
  const typed = elementType in TYPED_ARRAY_CTORS;
  // A JS array holds a pointer a value (one file byte of a bool array becomes eight bytes).
  const container = typed
    ? HEAP_COST.typedArray + count * minBytes
    : HEAP_COST.jsArray + count * HEAP_COST.slot;
  r.charge(HEAP_COST.object + container - prepaid, what);
  switch (elementType) {
    case GgufValueType.UINT8:
    case GgufValueType.INT8:
    case GgufValueType.UINT16:
    case GgufValueType.INT16:
    case GgufValueType.UINT32:
    case GgufValueType.INT32:
    case GgufValueType.FLOAT32:
    case GgufValueType.FLOAT64: {
      const values = new TYPED_ARRAY_CTORS[elementType](count);
      r.bytesInto(new Uint8Array(values.buffer, values.byteOffset, values.byteLength), what);
      return { elementType, values } as GgufArray;
    }
    case GgufValueType.BOOL: {
      const bytes = new Uint8Array(count);
      r.bytesInto(bytes, what);
      const values: boolean[] = new Array(count);
      for (let i = 0; i < count; i++) values[i] = bytes[i] !== 0;
      return { elementType, values };
    }
    case GgufValueType.UINT64:
    case GgufValueType.INT64: {
      const values: (number | bigint)[] = new Array(count);
      for (let i = 0; i < count; i++) {
        const v = elementType === GgufValueType.UINT64 ? r.u64(what) : r.i64(what);
        if (!isSmallInteger(v)) r.charge(HEAP_COST.boxedNumber, what);
        values[i] = v;
      }
      return { elementType, values };
    }
    case GgufValueType.STRING: {
      const values: string[] = new Array(count);
      for (let i = 0; i < count; i++) values[i] = r.string(what);
      return { elementType, values };
    }
    default: {
      r.charge(count * MIN_ARRAY_COST, what);
      const values: GgufArray[] = new Array(count);
      for (let i = 0; i < count; i++) values[i] = readArray(r, key, depth + 1, MIN_ARRAY_COST);
      return { elementType: GgufValueType.ARRAY, values };
    }
  }
}

function readValue(r: FileReader, key: string, type: number): GgufKv {
  const what = `metadata key ${quote(key)}`;
  switch (type) {
    case GgufValueType.UINT8:
      return { type, value: r.u8(what) };
    case GgufValueType.INT8:
      return { type, value: r.i8(what) };
    case GgufValueType.UINT16:
      return { type, value: r.u16(what) };
    case GgufValueType.INT16:
      return { type, value: r.i16(what) };
    case GgufValueType.UINT32:
      return { type, value: r.u32(what) };
    case GgufValueType.INT32:
      return { type, value: r.i32(what) };
    case GgufValueType.FLOAT32:
      return { type, value: r.f32(what) };
    case GgufValueType.FLOAT64:
      return { type, value: r.f64(what) };
    case GgufValueType.BOOL:
      return { type, value: r.u8(what) !== 0 };
    case GgufValueType.STRING:
      return { type, value: r.string(what) };
    case GgufValueType.UINT64:
      return { type, value: r.u64(what) };
    case GgufValueType.INT64:
      return { type, value: r.i64(what) };
    case GgufValueType.ARRAY:
      return { type, value: readArray(r, key, 1, 0) };
    default:
      return r.fail(`${what} has unknown value type ${type}`);
  }
}

const KV_COST = HEAP_COST.mapEntry + HEAP_COST.object;

/** Reads `count` key-value pairs into a map in file order; keys must be non-empty and unique. */
export function readMetadata(r: FileReader, count: number): Map<string, GgufKv> {
  // Each pair takes a map entry and a `{ type, value }` object at least: charged for all of them
  // first, so an absurd count of tiny pairs is refused before any is read.
  r.charge(count * KV_COST, `metadata count ${count}`);
  const metadata = new Map<string, GgufKv>();
  for (let i = 0; i < count; i++) {
    const key = r.string(`metadata key ${i}`);
    if (key.length === 0) r.fail(`metadata key ${i} is empty`);
    if (metadata.has(key)) r.fail(`duplicate metadata key ${quote(key)}`);
    const type = r.u32(`metadata key ${quote(key)} type`);
    const kv = readValue(r, key, type);
    if ((typeof kv.value === "number" || typeof kv.value === "bigint") && !isSmallInteger(kv.value)) {
      r.charge(HEAP_COST.boxedNumber, `metadata key ${quote(key)}`);
    }
    metadata.set(key, kv);
  }
  return metadata;
}
