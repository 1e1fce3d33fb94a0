/**
 * GGUF v2/v3 container: a streaming header reader, a chunked tensor reader that copies file bytes
 * straight into a caller's buffer (a view into wasm memory), and a streaming writer.
 * Layout: ggml `docs/gguf.md`, `src/gguf.cpp` (little-endian only; v1 and big-endian files rejected).
 */
import {
  closeSync,
  fstatSync,
  fsyncSync,
  openSync,
  readSync,
  renameSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { UserError } from "../errors.js";
import { elementCount, type GGMLType, ggmlTypeInfo, ggmlTypeName, tensorBytes } from "./ggml-types.js";

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as u32 LE
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** ggml's GGML_MAX_DIMS. */
export const GGUF_MAX_DIMS = 4;
/** ggml's GGML_MAX_NAME is 64 including the terminating NUL. */
export const GGUF_MAX_TENSOR_NAME_BYTES = 63;

/** Metadata value types (`gguf_metadata_value_type`). */
export enum GgufValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

const VALUE_TYPE_NAMES = [
  "u8",
  "i8",
  "u16",
  "i16",
  "u32",
  "i32",
  "f32",
  "bool",
  "string",
  "array",
  "u64",
  "i64",
  "f64",
];

export function ggufValueTypeName(type: number): string {
  return VALUE_TYPE_NAMES[type] ?? `type ${type}`;
}

/** Element types whose arrays are kept as typed arrays. */
export type GgufTypedArrayType =
  | GgufValueType.UINT8
  | GgufValueType.INT8
  | GgufValueType.UINT16
  | GgufValueType.INT16
  | GgufValueType.UINT32
  | GgufValueType.INT32
  | GgufValueType.FLOAT32
  | GgufValueType.FLOAT64;

/** How each element type's array is held in memory. */
export interface GgufArrayValuesByType {
  [GgufValueType.UINT8]: Uint8Array;
  [GgufValueType.INT8]: Int8Array;
  [GgufValueType.UINT16]: Uint16Array;
  [GgufValueType.INT16]: Int16Array;
  [GgufValueType.UINT32]: Uint32Array;
  [GgufValueType.INT32]: Int32Array;
  [GgufValueType.FLOAT32]: Float32Array;
  [GgufValueType.FLOAT64]: Float64Array;
  /** A 64-bit integer is a number when it is a safe integer, a bigint otherwise. */
  [GgufValueType.UINT64]: (number | bigint)[];
  [GgufValueType.INT64]: (number | bigint)[];
  [GgufValueType.BOOL]: boolean[];
  [GgufValueType.STRING]: string[];
  [GgufValueType.ARRAY]: GgufArray[];
}

export type GgufArrayElementType = keyof GgufArrayValuesByType;

/** A metadata array: its element type and its values (typed arrays for fixed-size numbers). */
export type GgufArray = {
  [T in GgufArrayElementType]: { elementType: T; values: GgufArrayValuesByType[T] };
}[GgufArrayElementType];

/** One metadata value with its on-disk type. */
export type GgufKv =
  | { type: GgufTypedArrayType; value: number }
  | { type: GgufValueType.UINT64 | GgufValueType.INT64; value: number | bigint }
  | { type: GgufValueType.BOOL; value: boolean }
  | { type: GgufValueType.STRING; value: string }
  | { type: GgufValueType.ARRAY; value: GgufArray };

export type GgufValue = GgufKv["value"];

export interface GgufTensorInfo {
  readonly name: string;
  /** ggml order: dims[0] is the contiguous row length. */
  readonly dims: readonly number[];
  readonly type: GGMLType;
  readonly elementCount: number;
  /** Offset relative to the start of the data section, as stored in the file. */
  readonly offset: number;
  /** Absolute offset of the tensor's first byte in the file. */
  readonly fileOffset: number;
  readonly byteSize: number;
}

// ---------------------------------------------------------------------------------------------
// Reader

/** Arrays and strings larger than this are rejected before allocating (real files stay far below). */
const MAX_STRING_BYTES = 256 * 1024 * 1024;
const MAX_ARRAY_ELEMENTS = 1 << 27;
const MAX_ARRAY_NESTING = 64;
const TWO_32 = 4294967296;

const TYPED_ARRAY_CTORS = {
  [GgufValueType.UINT8]: Uint8Array,
  [GgufValueType.INT8]: Int8Array,
  [GgufValueType.UINT16]: Uint16Array,
  [GgufValueType.INT16]: Int16Array,
  [GgufValueType.UINT32]: Uint32Array,
  [GgufValueType.INT32]: Int32Array,
  [GgufValueType.FLOAT32]: Float32Array,
  [GgufValueType.FLOAT64]: Float64Array,
} as const;

/** Smallest encoded size of one value of each type; used to reject counts that cannot fit. */
const MIN_VALUE_BYTES = [1, 1, 2, 2, 4, 4, 4, 1, 8, 12, 8, 8, 8];

/** Shortens and escapes a name read from a file so that messages stay one readable line. */
function quote(s: string): string {
  const short = s.length > 80 ? `${s.slice(0, 77)}...` : s;
  return JSON.stringify(short);
}

/**
 * Sequential little-endian reader over a file descriptor with a refilling buffer; never holds
 * more of the file than the largest single value it is asked for.
 */
class FileReader {
  private buf: Buffer;
  /** File offset of buf[0]. */
  private bufPos = 0;
  /** Read position within buf. */
  private off = 0;
  /** Number of valid bytes in buf. */
  private end = 0;

  constructor(
    private readonly fd: number,
    readonly fileSize: number,
    readonly path: string,
    capacity = 1 << 20,
  ) {
    this.buf = Buffer.allocUnsafe(Math.max(64, Math.min(capacity, fileSize)));
  }

  get position(): number {
    return this.bufPos + this.off;
  }

  get remaining(): number {
    return this.fileSize - this.position;
  }

  fail(message: string): never {
    throw new UserError(`${this.path}: ${message}`);
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

  string(what: string): string {
    const len = this.u64Approx(what);
    if (len > this.remaining) {
      this.fail(`${what}: string length ${len} runs past the end of the file (${this.remaining} bytes left)`);
    }
    if (len > MAX_STRING_BYTES) this.fail(`${what}: string length ${len} is too large`);
    this.need(len, what);
    const start = this.off;
    const end = start + len;
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

/** A parsed GGUF header: metadata, tensor infos with absolute offsets, and typed metadata getters. */
export class GgufHeader {
  private readonly byName: Map<string, GgufTensorInfo>;

  constructor(
    readonly path: string,
    readonly version: number,
    readonly fileSize: number,
    readonly alignment: number,
    /** Absolute offset of the data section. */
    readonly dataOffset: number,
    readonly metadata: Map<string, GgufKv>,
    readonly tensors: readonly GgufTensorInfo[],
  ) {
    this.byName = new Map(tensors.map((t) => [t.name, t]));
  }

  tensor(name: string): GgufTensorInfo | undefined {
    return this.byName.get(name);
  }

  has(key: string): boolean {
    return this.metadata.has(key);
  }

  get(key: string): GgufKv | undefined {
    return this.metadata.get(key);
  }

  private lookup(key: string, hasFallback: boolean): GgufKv | undefined {
    const kv = this.metadata.get(key);
    if (!kv && !hasFallback) throw new UserError(`${this.path}: missing metadata key ${quote(key)}`);
    return kv;
  }

  private wrongType(key: string, kv: GgufKv, expected: string): never {
    const got =
      kv.type === GgufValueType.ARRAY
        ? `an array of ${ggufValueTypeName(kv.value.elementType)}`
        : ggufValueTypeName(kv.type);
    throw new UserError(`${this.path}: metadata key ${quote(key)} is ${got}, expected ${expected}`);
  }

  getString(key: string, fallback?: string): string {
    const kv = this.lookup(key, fallback !== undefined);
    if (!kv) return fallback!;
    if (kv.type !== GgufValueType.STRING) this.wrongType(key, kv, "a string");
    return kv.value;
  }

  /** Any integer or float type; a 64-bit integer beyond 2^53 is an error. */
  getNumber(key: string, fallback?: number): number {
    const kv = this.lookup(key, fallback !== undefined);
    if (!kv) return fallback!;
    if (typeof kv.value === "number") return kv.value;
    if (typeof kv.value === "bigint") {
      throw new UserError(`${this.path}: metadata key ${quote(key)} = ${kv.value} is too large`);
    }
    return this.wrongType(key, kv, "a number");
  }

  getBool(key: string, fallback?: boolean): boolean {
    const kv = this.lookup(key, fallback !== undefined);
    if (!kv) return fallback!;
    if (kv.type !== GgufValueType.BOOL) this.wrongType(key, kv, "a bool");
    return kv.value;
  }

  getArray(key: string, fallback?: GgufArray): GgufArray {
    const kv = this.lookup(key, fallback !== undefined);
    if (!kv) return fallback!;
    if (kv.type !== GgufValueType.ARRAY) this.wrongType(key, kv, "an array");
    return kv.value;
  }

  getStringArray(key: string, fallback?: string[]): string[] {
    const kv = this.lookup(key, fallback !== undefined);
    if (!kv) return fallback!;
    if (kv.type !== GgufValueType.ARRAY || kv.value.elementType !== GgufValueType.STRING) {
      this.wrongType(key, kv, "an array of string");
    }
    return kv.value.values as string[];
  }

  /** An array of any number type, as stored (typed arrays stay typed arrays). */
  getNumberArray(key: string, fallback?: ArrayLike<number>): ArrayLike<number> {
    const kv = this.lookup(key, fallback !== undefined);
    if (!kv) return fallback!;
    if (kv.type !== GgufValueType.ARRAY) return this.wrongType(key, kv, "an array of numbers");
    const arr = kv.value;
    if (arr.elementType === GgufValueType.UINT64 || arr.elementType === GgufValueType.INT64) {
      if (arr.values.some((v) => typeof v === "bigint")) {
        throw new UserError(`${this.path}: metadata key ${quote(key)} holds integers too large for a number`);
      }
      return arr.values as number[];
    }
    if (!(arr.elementType in TYPED_ARRAY_CTORS)) this.wrongType(key, kv, "an array of numbers");
    return arr.values as ArrayLike<number>;
  }
}

function readArray(r: FileReader, key: string, depth: number): GgufArray {
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
      for (let i = 0; i < count; i++)
        values[i] = elementType === GgufValueType.UINT64 ? r.u64(what) : r.i64(what);
      return { elementType, values };
    }
    case GgufValueType.STRING: {
      const values: string[] = new Array(count);
      for (let i = 0; i < count; i++) values[i] = r.string(what);
      return { elementType, values };
    }
    default: {
      const values: GgufArray[] = new Array(count);
      for (let i = 0; i < count; i++) values[i] = readArray(r, key, depth + 1);
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
      return { type, value: readArray(r, key, 1) };
    default:
      return r.fail(`${what} has unknown value type ${type}`);
  }
}

function alignUp(n: number, alignment: number): number {
  const rem = n % alignment;
  return rem === 0 ? n : n + alignment - rem;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

function parseHeader(r: FileReader): GgufHeader {
  if (r.fileSize < 24) r.fail(`too short to be a GGUF file (${r.fileSize} bytes)`);
  const magic = r.u32("magic");
  if (magic !== GGUF_MAGIC) {
    const text = Buffer.alloc(4);
    text.writeUInt32LE(magic);
    const shown = [...text].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : "?")).join("");
    r.fail(`not a GGUF file (magic "${shown}", expected "GGUF")`);
  }
  const version = r.u32("version");
  if (version !== 0 && (version & 0xffff) === 0) {
    r.fail(`big-endian GGUF files are not supported (version field reads ${version})`);
  }
  if (version === 1)
    r.fail("GGUF version 1 is not supported (convert it to version 3 with a current llama.cpp)");
  if (version !== 2 && version !== 3) r.fail(`unknown GGUF version ${version} (supported: 2, 3)`);

  const tensorCount = r.u64Approx("tensor count");
  const kvCount = r.u64Approx("metadata count");
  // every KV takes >= 13 bytes (key length, type, one byte), every tensor info >= 24
  if (kvCount * 13 > r.remaining) r.fail(`metadata count ${kvCount} cannot fit in the file`);
  if (tensorCount * 24 > r.remaining) r.fail(`tensor count ${tensorCount} cannot fit in the file`);
  if (kvCount * 13 + tensorCount * 24 > r.remaining) {
    r.fail(`metadata count ${kvCount} and tensor count ${tensorCount} cannot fit in the file`);
  }

  const metadata = new Map<string, GgufKv>();
  for (let i = 0; i < kvCount; i++) {
    const key = r.string(`metadata key ${i}`);
    if (key.length === 0) r.fail(`metadata key ${i} is empty`);
    if (metadata.has(key)) r.fail(`duplicate metadata key ${quote(key)}`);
    const type = r.u32(`metadata key ${quote(key)} type`);
    metadata.set(key, readValue(r, key, type));
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const alignKv = metadata.get("general.alignment");
  if (alignKv) {
    if (alignKv.type !== GgufValueType.UINT32) {
      r.fail(`general.alignment must be a u32, got ${ggufValueTypeName(alignKv.type)}`);
    }
    if (!isPowerOfTwo(alignKv.value)) r.fail(`general.alignment ${alignKv.value} is not a power of two`);
    alignment = alignKv.value;
  }

  interface RawInfo {
    name: string;
    dims: number[];
    type: GGMLType;
    count: number;
    offset: number;
    byteSize: number;
  }
  const raw: RawInfo[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const name = r.string(`tensor ${i} name`);
    const what = `tensor ${quote(name)}`;
    if (names.has(name)) r.fail(`duplicate tensor name ${quote(name)}`);
    names.add(name);
    const nDims = r.u32(`${what} dimension count`);
    if (nDims > GGUF_MAX_DIMS) r.fail(`${what} has ${nDims} dimensions (at most ${GGUF_MAX_DIMS})`);
    const dims: number[] = [];
    let count = 1;
    for (let d = 0; d < nDims; d++) {
      const ne = r.u64Approx(`${what} dimension ${d}`);
      if (ne >= 2 ** 63) r.fail(`${what} dimension ${d} is negative`);
      if (ne === 0) r.fail(`${what} dimension ${d} is 0`);
      count *= ne;
      if (!Number.isSafeInteger(count))
        r.fail(`${what} element count overflows (dims ${[...dims, ne].join(" x ")})`);
      dims.push(ne);
    }
    const type = r.u32(`${what} type`);
    const info = ggmlTypeInfo(type);
    if (!info) r.fail(`${what} has unknown tensor type ${ggmlTypeName(type)}`);
    const ne0 = dims[0] ?? 1;
    if (ne0 % info.blockSize !== 0) {
      r.fail(`${what}: row length ${ne0} is not a multiple of the ${info.name} block size ${info.blockSize}`);
    }
    const offset = r.u64Approx(`${what} offset`);
    raw.push({ name, dims, type, count, offset, byteSize: tensorBytes(type, dims) });
  }

  const dataOffset = alignUp(r.position, alignment);
  const tensors: GgufTensorInfo[] = raw.map((t) => {
    const what = `tensor ${quote(t.name)}`;
    if (t.offset % alignment !== 0)
      r.fail(`${what} offset ${t.offset} is not a multiple of the alignment ${alignment}`);
    const fileOffset = dataOffset + t.offset;
    if (fileOffset + t.byteSize > r.fileSize) {
      r.fail(
        `${what} data (${t.byteSize} bytes at offset ${fileOffset}) lies outside the file (${r.fileSize} bytes; truncated?)`,
      );
    }
    return Object.freeze({
      name: t.name,
      dims: Object.freeze(t.dims),
      type: t.type,
      elementCount: t.count,
      offset: t.offset,
      fileOffset,
      byteSize: t.byteSize,
    });
  });

  return new GgufHeader(r.path, version, r.fileSize, alignment, dataOffset, metadata, tensors);
}

function openForReading(path: string): { fd: number; size: number } {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw new UserError(`${path}: cannot open (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new UserError(`${path}: not a regular file`);
    return { fd, size: st.size };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/** Parses the header of an already open GGUF file. */
export function readGgufHeaderFromFd(fd: number, path: string): GgufHeader {
  const size = fstatSync(fd).size;
  return parseHeader(new FileReader(fd, size, path));
}

/**
 * Reads and validates a GGUF file's header (metadata and tensor infos) through a small buffer;
 * tensor data is not read. Throws UserError naming the file for anything malformed.
 */
export function readGgufHeader(path: string): GgufHeader {
  const { fd, size } = openForReading(path);
  try {
    return parseHeader(new FileReader(fd, size, path));
  } finally {
    closeSync(fd);
  }
}

const READ_CHUNK = 4 << 20;

/**
 * Streams one tensor's bytes from an open file into `target` (length must equal `tensor.byteSize`),
 * in chunks of a few MB with no intermediate copy. `target` may be a view into WebAssembly memory.
 */
export function readTensorInto(
  fd: number,
  tensor: GgufTensorInfo,
  target: Uint8Array,
  path = "GGUF file",
): void {
  if (target.length !== tensor.byteSize) {
    throw new RangeError(
      `readTensorInto: tensor ${tensor.name} has ${tensor.byteSize} bytes, target has ${target.length}`,
    );
  }
  let done = 0;
  while (done < target.length) {
    const len = Math.min(READ_CHUNK, target.length - done);
    const got = readSync(fd, target, done, len, tensor.fileOffset + done);
    if (got === 0) throw new UserError(`${path}: file ends inside tensor ${quote(tensor.name)} (truncated?)`);
    done += got;
  }
}

/** An open GGUF file: its header and a descriptor to read tensors through. Call close() when done. */
export class GgufFile {
  private constructor(
    readonly header: GgufHeader,
    private fdOrClosed: number | undefined,
  ) {}

  static open(path: string): GgufFile {
    const { fd, size } = openForReading(path);
    try {
      return new GgufFile(parseHeader(new FileReader(fd, size, path)), fd);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  get fd(): number {
    if (this.fdOrClosed === undefined) throw new Error(`GgufFile ${this.header.path} is closed`);
    return this.fdOrClosed;
  }

  /** Copies a tensor's bytes into target (length = byteSize). */
  readTensorInto(tensor: GgufTensorInfo | string, target: Uint8Array): void {
    const info = typeof tensor === "string" ? this.header.tensor(tensor) : tensor;
    if (!info) throw new UserError(`${this.header.path}: no tensor named ${quote(tensor as string)}`);
    readTensorInto(this.fd, info, target, this.header.path);
  }

  /** Reads a tensor into a new Uint8Array (for small tensors and tests). */
  readTensor(tensor: GgufTensorInfo | string): Uint8Array {
    const info = typeof tensor === "string" ? this.header.tensor(tensor) : tensor;
    if (!info) throw new UserError(`${this.header.path}: no tensor named ${quote(tensor as string)}`);
    const out = new Uint8Array(info.byteSize);
    readTensorInto(this.fd, info, out, this.header.path);
    return out;
  }

  close(): void {
    if (this.fdOrClosed !== undefined) closeSync(this.fdOrClosed);
    this.fdOrClosed = undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Writer

/** Accepted input for `setArray`, per element type. */
export interface GgufArrayInputByType {
  [GgufValueType.UINT8]: ArrayLike<number>;
  [GgufValueType.INT8]: ArrayLike<number>;
  [GgufValueType.UINT16]: ArrayLike<number>;
  [GgufValueType.INT16]: ArrayLike<number>;
  [GgufValueType.UINT32]: ArrayLike<number>;
  [GgufValueType.INT32]: ArrayLike<number>;
  [GgufValueType.FLOAT32]: ArrayLike<number>;
  [GgufValueType.FLOAT64]: ArrayLike<number>;
  [GgufValueType.UINT64]: ArrayLike<number | bigint>;
  [GgufValueType.INT64]: ArrayLike<number | bigint>;
  [GgufValueType.BOOL]: ArrayLike<boolean>;
  [GgufValueType.STRING]: ArrayLike<string>;
  [GgufValueType.ARRAY]: ArrayLike<GgufArray>;
}

/** Tensor bytes, or a function that fills a zeroed buffer of the tensor's size when the file is written. */
export type GgufTensorSource = Uint8Array | ((target: Uint8Array) => void);

interface PendingTensor {
  name: string;
  dims: number[];
  type: GGMLType;
  byteSize: number;
  source: GgufTensorSource;
}

const INT_RANGES: Partial<Record<GgufValueType, [number, number]>> = {
  [GgufValueType.UINT8]: [0, 0xff],
  [GgufValueType.INT8]: [-0x80, 0x7f],
  [GgufValueType.UINT16]: [0, 0xffff],
  [GgufValueType.INT16]: [-0x8000, 0x7fff],
  [GgufValueType.UINT32]: [0, 0xffffffff],
  [GgufValueType.INT32]: [-0x80000000, 0x7fffffff],
};

const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;

function checkScalar(key: string, type: GgufValueType, value: unknown): void {
  const bad = (): never => {
    throw new RangeError(`GGUF metadata ${key}: ${String(value)} is not a valid ${ggufValueTypeName(type)}`);
  };
  const range = INT_RANGES[type];
  if (range) {
    if (typeof value !== "number" || !Number.isInteger(value) || value < range[0] || value > range[1]) bad();
  } else if (type === GgufValueType.FLOAT32 || type === GgufValueType.FLOAT64) {
    if (typeof value !== "number") bad();
  } else if (type === GgufValueType.UINT64 || type === GgufValueType.INT64) {
    if (typeof value === "number" && !Number.isSafeInteger(value)) bad();
    if (typeof value !== "number" && typeof value !== "bigint") bad();
    const b = BigInt(value as number | bigint);
    if (type === GgufValueType.UINT64 ? b < 0n || b > U64_MAX : b < I64_MIN || b > I64_MAX) bad();
  } else if (type === GgufValueType.BOOL) {
    if (typeof value !== "boolean") bad();
  } else if (type === GgufValueType.STRING) {
    if (typeof value !== "string") bad();
  } else {
    bad();
  }
}

/** Converts setArray input to the stored representation, validating every element. */
function toGgufArray(key: string, elementType: GgufArrayElementType, values: ArrayLike<unknown>): GgufArray {
  if (MIN_VALUE_BYTES[elementType] === undefined) {
    throw new RangeError(`GGUF metadata ${key}: unknown array element type ${elementType}`);
  }
  if (elementType in TYPED_ARRAY_CTORS) {
    const t = elementType as GgufTypedArrayType;
    if (INT_RANGES[t]) for (let i = 0; i < values.length; i++) checkScalar(key, t, values[i]);
    return { elementType: t, values: TYPED_ARRAY_CTORS[t].from(values as ArrayLike<number>) } as GgufArray;
  }
  if (elementType === GgufValueType.ARRAY) {
    const out: GgufArray[] = [];
    for (let i = 0; i < values.length; i++) {
      const inner = values[i] as GgufArray;
      if (!inner || typeof inner !== "object" || !("elementType" in inner)) {
        throw new RangeError(`GGUF metadata ${key}: nested array element ${i} is not a GgufArray`);
      }
      out.push(toGgufArray(key, inner.elementType, inner.values as ArrayLike<unknown>));
    }
    return { elementType, values: out };
  }
  const is64 = elementType === GgufValueType.UINT64 || elementType === GgufValueType.INT64;
  const out: unknown[] = new Array(values.length);
  for (let i = 0; i < values.length; i++) {
    checkScalar(key, elementType, values[i]);
    out[i] = is64 ? normalizeInt64(values[i] as number | bigint) : values[i];
  }
  return { elementType, values: out } as GgufArray;
}

/** Growable little-endian byte buffer for the header. */
class ByteSink {
  buf = Buffer.allocUnsafe(1 << 16);
  len = 0;

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.len + n, this.buf.length * 2));
    this.buf.copy(bigger, 0, 0, this.len);
    this.buf = bigger;
  }

  u8(v: number): void {
    this.reserve(1);
    this.buf[this.len++] = v;
  }
  u32(v: number): void {
    this.reserve(4);
    this.len = this.buf.writeUInt32LE(v, this.len);
  }
  u64(v: number | bigint): void {
    this.reserve(8);
    this.len = this.buf.writeBigUInt64LE(BigInt(v), this.len);
  }
  i64(v: number | bigint): void {
    this.reserve(8);
    this.len = this.buf.writeBigInt64LE(BigInt(v), this.len);
  }
  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  string(s: string): void {
    const n = Buffer.byteLength(s, "utf8");
    this.u64(n);
    this.reserve(n);
    this.len += this.buf.write(s, this.len, n, "utf8");
  }
  zeros(n: number): void {
    this.reserve(n);
    this.buf.fill(0, this.len, this.len + n);
    this.len += n;
  }
}

function writeScalar(sink: ByteSink, type: GgufValueType, value: unknown): void {
  switch (type) {
    case GgufValueType.UINT8:
    case GgufValueType.INT8:
      sink.u8((value as number) & 0xff);
      return;
    case GgufValueType.UINT16:
    case GgufValueType.INT16: {
      sink.u8((value as number) & 0xff);
      sink.u8(((value as number) >> 8) & 0xff);
      return;
    }
    case GgufValueType.UINT32:
    case GgufValueType.INT32:
      sink.u32((value as number) >>> 0);
      return;
    case GgufValueType.FLOAT32: {
      const b = Buffer.allocUnsafe(4);
      b.writeFloatLE(value as number);
      sink.bytes(b);
      return;
    }
    case GgufValueType.FLOAT64: {
      const b = Buffer.allocUnsafe(8);
      b.writeDoubleLE(value as number);
      sink.bytes(b);
      return;
    }
    case GgufValueType.BOOL:
      sink.u8(value ? 1 : 0);
      return;
    case GgufValueType.STRING:
      sink.string(value as string);
      return;
    case GgufValueType.UINT64:
      sink.u64(value as number | bigint);
      return;
    case GgufValueType.INT64:
      sink.i64(value as number | bigint);
      return;
    case GgufValueType.ARRAY:
      writeArray(sink, value as GgufArray);
      return;
  }
}

function writeArray(sink: ByteSink, arr: GgufArray): void {
  sink.u32(arr.elementType);
  sink.u64(arr.values.length);
  if (ArrayBuffer.isView(arr.values)) {
    const v = arr.values;
    sink.bytes(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
    return;
  }
  for (const v of arr.values as unknown[]) writeScalar(sink, arr.elementType, v);
}

function fsFail(path: string, action: string, e: unknown): never {
  if (e instanceof UserError) throw e;
  const code = (e as NodeJS.ErrnoException).code;
  throw new UserError(`${path}: cannot ${action} (${code ?? (e as Error).message})`);
}

const WRITE_CHUNK = 64 << 20;

function writeAll(fd: number, data: Uint8Array, path: string): void {
  let done = 0;
  while (done < data.length) {
    let n: number;
    try {
      n = writeSync(fd, data, done, Math.min(WRITE_CHUNK, data.length - done));
    } catch (e) {
      fsFail(path, "write", e);
    }
    done += n;
  }
}

export interface GgufWriteOptions {
  /** Called before each tensor is written (for progress display). */
  onTensor?: (index: number, count: number, name: string) => void;
}

/**
 * Builds a GGUF v3 file: metadata in insertion order, then tensors in the order added, each at an
 * offset aligned to `general.alignment` (default 32) with zero padding. `write` streams to a temporary
 * file next to the target and renames it into place, so a failure never leaves a partial output.
 */
export class GgufWriter {
  readonly metadata = new Map<string, GgufKv>();
  private readonly tensorList: PendingTensor[] = [];
  private readonly tensorNames = new Set<string>();

  /** Sets a value with an explicit type (replacing an existing key keeps its position). */
  set(key: string, kv: GgufKv): this {
    if (key.length === 0 || Buffer.byteLength(key, "utf8") > 65535) {
      throw new RangeError(`GGUF metadata key ${quote(key)} must be 1 to 65535 bytes`);
    }
    if (kv.type === GgufValueType.ARRAY) {
      this.metadata.set(key, {
        type: kv.type,
        value: toGgufArray(key, kv.value.elementType, kv.value.values),
      });
    } else {
      checkScalar(key, kv.type, kv.value);
      this.metadata.set(key, { ...kv } as GgufKv);
    }
    return this;
  }

  setU8(key: string, value: number): this {
    return this.set(key, { type: GgufValueType.UINT8, value });
  }
  setI8(key: string, value: number): this {
    return this.set(key, { type: GgufValueType.INT8, value });
  }
  setU16(key: string, value: number): this {
    return this.set(key, { type: GgufValueType.UINT16, value });
  }
  setI16(key: string, value: number): this {
    return this.set(key, { type: GgufValueType.INT16, value });
  }
  setU32(key: string, value: number): this {
    return this.set(key, { type: GgufValueType.UINT32, value });
  }
  setI32(key: string, value: number): this {
    return this.set(key, { type: GgufValueType.INT32, value });
  }
  setF32(key: string, value: number): this {
    return this.set(key, { type: GgufValueType.FLOAT32, value });
  }
  setF64(key: string, value: number): this {
    return this.set(key, { type: GgufValueType.FLOAT64, value });
  }
  setU64(key: string, value: number | bigint): this {
    return this.set(key, { type: GgufValueType.UINT64, value: normalizeInt64(value) });
  }
  setI64(key: string, value: number | bigint): this {
    return this.set(key, { type: GgufValueType.INT64, value: normalizeInt64(value) });
  }
  setBool(key: string, value: boolean): this {
    return this.set(key, { type: GgufValueType.BOOL, value });
  }
  setString(key: string, value: string): this {
    return this.set(key, { type: GgufValueType.STRING, value });
  }

  /** An array of any element type; nested arrays are given as GgufArray values. */
  setArray<T extends GgufArrayElementType>(
    key: string,
    elementType: T,
    values: GgufArrayInputByType[T],
  ): this {
    return this.set(key, {
      type: GgufValueType.ARRAY,
      value: { elementType, values } as unknown as GgufArray,
    });
  }
  setStringArray(key: string, values: ArrayLike<string>): this {
    return this.setArray(key, GgufValueType.STRING, values);
  }
  setF32Array(key: string, values: ArrayLike<number>): this {
    return this.setArray(key, GgufValueType.FLOAT32, values);
  }
  setI32Array(key: string, values: ArrayLike<number>): this {
    return this.setArray(key, GgufValueType.INT32, values);
  }
  setU32Array(key: string, values: ArrayLike<number>): this {
    return this.setArray(key, GgufValueType.UINT32, values);
  }

  delete(key: string): boolean {
    return this.metadata.delete(key);
  }

  /** Copies every metadata value (in file order) from a parsed header, except keys `skip` rejects. */
  copyMetadataFrom(header: Pick<GgufHeader, "metadata">, skip?: (key: string) => boolean): this {
    for (const [key, kv] of header.metadata) {
      if (!skip?.(key)) this.set(key, kv);
    }
    return this;
  }

  /**
   * Adds a tensor. `dims` are in ggml order (dims[0] = row length). `data` is its bytes, or a
   * function that fills a buffer of the tensor's size when `write` reaches it.
   */
  addTensor(name: string, dims: readonly number[], type: GGMLType, data: GgufTensorSource): this {
    const what = `GGUF tensor ${quote(name)}`;
    if (Buffer.byteLength(name, "utf8") > GGUF_MAX_TENSOR_NAME_BYTES) {
      throw new UserError(`${what}: name is longer than ${GGUF_MAX_TENSOR_NAME_BYTES} bytes`);
    }
    if (this.tensorNames.has(name)) throw new UserError(`${what}: added twice`);
    if (dims.length < 1 || dims.length > GGUF_MAX_DIMS) {
      throw new UserError(`${what}: ${dims.length} dimensions (1 to ${GGUF_MAX_DIMS} allowed)`);
    }
    for (const d of dims) {
      if (!Number.isSafeInteger(d) || d < 1) throw new UserError(`${what}: bad dimension ${d}`);
    }
    if (!Number.isSafeInteger(elementCount(dims))) throw new UserError(`${what}: element count overflows`);
    const info = ggmlTypeInfo(type);
    if (!info) throw new UserError(`${what}: unknown tensor type ${ggmlTypeName(type)}`);
    if (dims[0]! % info.blockSize !== 0) {
      throw new UserError(
        `${what}: row length ${dims[0]} is not a multiple of the ${info.name} block size ${info.blockSize}`,
      );
    }
    const byteSize = tensorBytes(type, dims);
    if (typeof data !== "function" && data.length !== byteSize) {
      throw new RangeError(
        `${what}: ${info.name} ${dims.join("x")} takes ${byteSize} bytes, got ${data.length}`,
      );
    }
    this.tensorNames.add(name);
    this.tensorList.push({ name, dims: [...dims], type, byteSize, source: data });
    return this;
  }

  get tensorCount(): number {
    return this.tensorList.length;
  }

  /** The alignment `write` will use: general.alignment when set, else 32. */
  get alignment(): number {
    const kv = this.metadata.get("general.alignment");
    if (!kv) return GGUF_DEFAULT_ALIGNMENT;
    if (kv.type !== GgufValueType.UINT32 || !isPowerOfTwo(kv.value)) {
      throw new RangeError(
        `general.alignment must be a u32 power of two, got ${ggufValueTypeName(kv.type)} ${kv.value}`,
      );
    }
    return kv.value;
  }

  /** Encodes everything before the data section, padded to the alignment. */
  private encodeHeader(alignment: number): ByteSink {
    const sink = new ByteSink();
    sink.u32(GGUF_MAGIC);
    sink.u32(GGUF_VERSION);
    sink.u64(this.tensorList.length);
    sink.u64(this.metadata.size);
    for (const [key, kv] of this.metadata) {
      sink.string(key);
      sink.u32(kv.type);
      writeScalar(sink, kv.type, kv.value);
    }
    let offset = 0;
    for (const t of this.tensorList) {
      sink.string(t.name);
      sink.u32(t.dims.length);
      for (const d of t.dims) sink.u64(d);
      sink.u32(t.type);
      sink.u64(offset);
      offset = alignUp(offset + t.byteSize, alignment);
    }
    sink.zeros(alignUp(sink.len, alignment) - sink.len);
    return sink;
  }

  /** Writes the file to `path` through `path.tmp-<pid>` and a rename. */
  write(path: string, options: GgufWriteOptions = {}): void {
    const alignment = this.alignment;
    const header = this.encodeHeader(alignment);
    const tmp = `${path}.tmp-${process.pid}`;
    let fd: number | undefined;
    try {
      try {
        fd = openSync(tmp, "w");
      } catch (e) {
        fsFail(path, "create the output file", e);
      }
      writeAll(fd, header.buf.subarray(0, header.len), path);
      const padding = new Uint8Array(alignment);
      let scratch: Uint8Array | undefined;
      for (let i = 0; i < this.tensorList.length; i++) {
        const t = this.tensorList[i]!;
        options.onTensor?.(i, this.tensorList.length, t.name);
        let data: Uint8Array;
        if (typeof t.source === "function") {
          if (!scratch || scratch.length < t.byteSize) {
            scratch = new Uint8Array(Math.max(t.byteSize, this.largestLazyTensor()));
          }
          data = scratch.subarray(0, t.byteSize);
          data.fill(0);
          t.source(data);
        } else {
          data = t.source;
        }
        writeAll(fd, data, path);
        const pad = alignUp(t.byteSize, alignment) - t.byteSize;
        if (pad > 0) writeAll(fd, padding.subarray(0, pad), path);
      }
      try {
        fsyncSync(fd);
        closeSync(fd);
        fd = undefined;
        renameSync(tmp, path);
      } catch (e) {
        fsFail(path, "finish writing", e);
      }
    } catch (e) {
      if (fd !== undefined) {
        try {
          closeSync(fd);
        } catch {}
      }
      try {
        unlinkSync(tmp);
      } catch {}
      throw e;
    }
  }

  private largestLazyTensor(): number {
    let max = 0;
    for (const t of this.tensorList) if (typeof t.source === "function") max = Math.max(max, t.byteSize);
    return max;
  }
}

function normalizeInt64(value: number | bigint): number | bigint {
  if (
    typeof value === "bigint" &&
    value <= BigInt(Number.MAX_SAFE_INTEGER) &&
    value >= BigInt(Number.MIN_SAFE_INTEGER)
  ) {
    return Number(value);
  }
  return value;
}
