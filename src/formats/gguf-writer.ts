/**
 * GGUF v3 writer: metadata in insertion order, then tensors each at an aligned offset, streamed to
 * a temporary file that is renamed into place.
 */
import { closeSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { UserError } from "../errors.js";
import { elementCount, type GGMLType, ggmlTypeInfo, ggmlTypeName, tensorBytes } from "./ggml-types.js";
import {
  alignUp,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_MAX_DIMS,
  GGUF_MAX_TENSOR_NAME_BYTES,
  GGUF_VERSION,
  type GgufArray,
  type GgufArrayElementType,
  type GgufKv,
  type GgufTypedArrayType,
  GgufValueType,
  ggufValueTypeName,
  isPowerOfTwo,
  MIN_VALUE_BYTES,
  quote,
  TYPED_ARRAY_CTORS,
} from "./gguf-types.js";

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
  copyMetadataFrom(
    header: { readonly metadata: ReadonlyMap<string, GgufKv> },
    skip?: (key: string) => boolean,
  ): this {
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
