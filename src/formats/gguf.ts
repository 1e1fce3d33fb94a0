/**
 * GGUF v2/v3 container: a streaming header reader, a chunked tensor reader that copies file bytes
 * straight into a caller's buffer (a view into wasm memory), and (re-exported) the streaming writer.
 * Layout: ggml `docs/gguf.md`, `src/gguf.cpp` (little-endian only; v1 and big-endian files rejected).
 * Reading a header takes memory bounded by the file size (see gguf-metadata.ts).
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { UserError } from "../errors.js";
import { FileReader, readMetadata } from "./gguf-metadata.js";
import { layOutTensors, readTensorInfos } from "./gguf-tensors.js";
import {
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  type GgufArray,
  type GgufKv,
  type GgufTensorInfo,
  GgufValueType,
  ggufValueTypeName,
  isPowerOfTwo,
  quote,
  TYPED_ARRAY_CTORS,
} from "./gguf-types.js";

export { METADATA_MEMORY_BASE, METADATA_MEMORY_PER_FILE_BYTE } from "./gguf-metadata.js";
export {
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_MAX_DIMS,
  GGUF_MAX_TENSOR_NAME_BYTES,
  GGUF_VERSION,
  type GgufArray,
  type GgufArrayElementType,
  type GgufArrayValuesByType,
  type GgufKv,
  type GgufTensorInfo,
  type GgufTypedArrayType,
  type GgufValue,
  GgufValueType,
  ggufValueTypeName,
} from "./gguf-types.js";
export {
  type GgufArrayInputByType,
  type GgufTensorSource,
  type GgufWriteOptions,
  GgufWriter,
} from "./gguf-writer.js";

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

  const metadata = readMetadata(r, kvCount);

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const alignKv = metadata.get("general.alignment");
  if (alignKv) {
    if (alignKv.type !== GgufValueType.UINT32) {
      r.fail(`general.alignment must be a u32, got ${ggufValueTypeName(alignKv.type)}`);
    }
    if (!isPowerOfTwo(alignKv.value)) r.fail(`general.alignment ${alignKv.value} is not a power of two`);
    alignment = alignKv.value;
  }

  const raw = readTensorInfos(r, tensorCount);
  const { dataOffset, tensors } = layOutTensors(r, raw, r.position, alignment);
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
