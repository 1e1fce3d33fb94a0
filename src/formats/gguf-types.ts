/**
 * GGUF v2/v3 definitions shared by the reader and the writer: constants, metadata value types and
 * how each is held in memory, tensor infos.
 * Layout: ggml `docs/gguf.md`, `src/gguf.cpp` (little-endian only; v1 and big-endian files rejected).
 */
import { quoteText } from "./escape.js";
import type { GGMLType } from "./ggml-types.js";

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

/** The typed array that holds an array of each fixed-size number type. */
export const TYPED_ARRAY_CTORS = {
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
export const MIN_VALUE_BYTES = [1, 1, 2, 2, 4, 4, 4, 1, 8, 12, 8, 8, 8];

/** Shortens and escapes a name read from a file so that messages stay one readable, safe line. */
export function quote(s: string): string {
  return quoteText(s, 80);
}

export function alignUp(n: number, alignment: number): number {
  const rem = n % alignment;
  return rem === 0 ? n : n + alignment - rem;
}

export function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}
