/**
 * The ggml tensor type table (ids from ggml `include/ggml.h`, block sizes and bytes per block from
 * `src/ggml.c` `type_traits` and the block structs in `src/ggml-common.h`).
 */
import { UserError } from "../errors.js";

/** ggml tensor element types with their on-disk ids. Ids 4, 5, 31-33 and 36-38 were removed from ggml. */
export enum GGMLType {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
  NVFP4 = 40,
  Q1_0 = 41,
  Q2_0 = 42,
}

export interface GgmlTypeInfo {
  readonly type: GGMLType;
  /** ggml's `type_name`, e.g. `q4_0`, `q6_K`, `bf16`. */
  readonly name: string;
  /** Elements per block (1 for plain element types). */
  readonly blockSize: number;
  /** Bytes per block. */
  readonly typeSize: number;
  /** Whether smallhammer can run tensors of this type. */
  readonly supported: boolean;
}

const QK_K = 256;

// [type, name, blockSize, typeSize, supported]
const TABLE: [GGMLType, string, number, number, boolean][] = [
  [GGMLType.F32, "f32", 1, 4, true],
  [GGMLType.F16, "f16", 1, 2, true],
  [GGMLType.Q4_0, "q4_0", 32, 18, true],
  [GGMLType.Q4_1, "q4_1", 32, 20, true],
  [GGMLType.Q5_0, "q5_0", 32, 22, true],
  [GGMLType.Q5_1, "q5_1", 32, 24, true],
  [GGMLType.Q8_0, "q8_0", 32, 34, true],
  [GGMLType.Q8_1, "q8_1", 32, 36, false],
  [GGMLType.Q2_K, "q2_K", QK_K, 84, false],
  [GGMLType.Q3_K, "q3_K", QK_K, 110, false],
  [GGMLType.Q4_K, "q4_K", QK_K, 144, true],
  [GGMLType.Q5_K, "q5_K", QK_K, 176, true],
  [GGMLType.Q6_K, "q6_K", QK_K, 210, true],
  [GGMLType.Q8_K, "q8_K", QK_K, 292, false],
  [GGMLType.IQ2_XXS, "iq2_xxs", QK_K, 66, false],
  [GGMLType.IQ2_XS, "iq2_xs", QK_K, 74, false],
  [GGMLType.IQ3_XXS, "iq3_xxs", QK_K, 98, false],
  [GGMLType.IQ1_S, "iq1_s", QK_K, 50, false],
  [GGMLType.IQ4_NL, "iq4_nl", 32, 18, false],
  [GGMLType.IQ3_S, "iq3_s", QK_K, 110, false],
  [GGMLType.IQ2_S, "iq2_s", QK_K, 82, false],
  [GGMLType.IQ4_XS, "iq4_xs", QK_K, 136, false],
  [GGMLType.I8, "i8", 1, 1, false],
  [GGMLType.I16, "i16", 1, 2, false],
  [GGMLType.I32, "i32", 1, 4, false],
  [GGMLType.I64, "i64", 1, 8, false],
  [GGMLType.F64, "f64", 1, 8, false],
  [GGMLType.IQ1_M, "iq1_m", QK_K, 56, false],
  [GGMLType.BF16, "bf16", 1, 2, true],
  [GGMLType.TQ1_0, "tq1_0", QK_K, 54, false],
  [GGMLType.TQ2_0, "tq2_0", QK_K, 66, false],
  [GGMLType.MXFP4, "mxfp4", 32, 17, false],
  [GGMLType.NVFP4, "nvfp4", 64, 36, false],
  [GGMLType.Q1_0, "q1_0", 128, 18, false],
  [GGMLType.Q2_0, "q2_0", 64, 18, false],
];

/** Names of ids ggml has removed; files using them are rejected with this name in the message. */
const REMOVED: Record<number, string> = {
  4: "q4_2 (removed)",
  5: "q4_3 (removed)",
  31: "q4_0_4_4 (removed)",
  32: "q4_0_4_8 (removed)",
  33: "q4_0_8_8 (removed)",
  36: "iq4_nl_4_4 (removed)",
  37: "iq4_nl_4_8 (removed)",
  38: "iq4_nl_8_8 (removed)",
};

const BY_ID: (GgmlTypeInfo | undefined)[] = [];
const BY_NAME = new Map<string, GgmlTypeInfo>();
for (const [type, name, blockSize, typeSize, supported] of TABLE) {
  const info: GgmlTypeInfo = Object.freeze({ type, name, blockSize, typeSize, supported });
  BY_ID[type] = info;
  BY_NAME.set(name.toLowerCase(), info);
}

/** Every known type, in id order. */
export const GGML_TYPES: readonly GgmlTypeInfo[] = Object.freeze(BY_ID.filter((t) => t !== undefined));

/** The table entry for a type id, or undefined for unknown and removed ids. */
export function ggmlTypeInfo(type: number): GgmlTypeInfo | undefined {
  return Number.isInteger(type) && type >= 0 ? BY_ID[type] : undefined;
}

/** ggml's display name (`q4_K`), the removed type's name, or `type <id>` for ids ggml never had. */
export function ggmlTypeName(type: number): string {
  return ggmlTypeInfo(type)?.name ?? REMOVED[type] ?? `type ${type}`;
}

/** Whether smallhammer can run tensors of this type. */
export function isSupportedGgmlType(type: number): boolean {
  return ggmlTypeInfo(type)?.supported ?? false;
}

/**
 * Parses a type name as users type it (`q4_0`, `Q4_K`, `bf16`; case-insensitive).
 * Throws UserError naming the input and the known names.
 */
export function parseGgmlTypeName(name: string): GGMLType {
  const info = BY_NAME.get(name.trim().toLowerCase());
  if (!info) {
    throw new UserError(
      `unknown tensor type ${JSON.stringify(name)}; known types: ${GGML_TYPES.map((t) => t.name).join(", ")}`,
    );
  }
  return info.type;
}

/** Number of elements of a tensor with these dims (ggml order, dims[0] innermost). */
export function elementCount(dims: readonly number[]): number {
  let n = 1;
  for (const d of dims) n *= d;
  return n;
}

/**
 * Bytes a tensor of this type and shape takes: `dims[0] / blockSize * typeSize * dims[1] * ...`.
 * Throws RangeError for an unknown type or a row length that is not a multiple of the block size.
 */
export function tensorBytes(type: number, dims: readonly number[]): number {
  const info = ggmlTypeInfo(type);
  if (!info) throw new RangeError(`tensorBytes: unknown ggml type ${ggmlTypeName(type)}`);
  const ne0 = dims.length > 0 ? dims[0]! : 1;
  if (ne0 % info.blockSize !== 0) {
    throw new RangeError(
      `tensorBytes: row length ${ne0} is not a multiple of the ${info.name} block size ${info.blockSize}`,
    );
  }
  let bytes = (ne0 / info.blockSize) * info.typeSize;
  for (let i = 1; i < dims.length; i++) bytes *= dims[i]!;
  return bytes;
}
