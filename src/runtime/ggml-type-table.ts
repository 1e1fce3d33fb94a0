/**
 * The one table of ggml tensor types, in the spirit of ggml's `type_traits`: ids from ggml
 * `include/ggml.h`, names, block sizes and bytes per block from `src/ggml.c` and the block structs
 * of `src/ggml-common.h`, and what smallhammer has for each type. Every list of types in
 * formats/, quant/, runtime/backend.ts, model/ and train/ derives from it; a new type is one row
 * here plus its kernels (`matmul<format>`, `dequantize<format>`, the layouts it lists) and its
 * references in src/quant/reference.ts.
 *
 * It lives in runtime/, the lowest layer that needs it (the backend picks kernels by it); formats/
 * re-exports the file-format half (src/formats/ggml-types.ts).
 */

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

/** The 8-bit formats activations are quantized to for a product with quantized weights. */
export type VecDotFormat = "Q8_0" | "Q8_1" | "Q8_K";

/** The ggml type of each activation format. */
export const VEC_DOT_TYPE: Record<VecDotFormat, GGMLType> = {
  Q8_0: GGMLType.Q8_0,
  Q8_1: GGMLType.Q8_1,
  Q8_K: GGMLType.Q8_K,
};

export interface GgmlTypeRow {
  readonly type: GGMLType;
  /** ggml's `type_name`, e.g. `q4_0`, `q6_K`, `bf16`. */
  readonly name: string;
  /** Elements per block (1 for plain element types). */
  readonly blockSize: number;
  /** Bytes per block. */
  readonly typeSize: number;
  /**
   * Kernel suffix when smallhammer runs matrices of this type (`matmul<format>`,
   * `dequantize<format>`); absent for types it cannot run.
   */
  readonly format?: string;
  /** What the product quantizes activations to (`quantize<activation>`); null: f32 activations. */
  readonly activation?: VecDotFormat | null;
  /** Has the interleaved layout x4 (`interleaveRows4`, `matmul<format>x4`). */
  readonly x4?: true;
  /**
   * Has the row-lane layout r4 of the relaxed module (`matmul<format>r4`): repacked from the rows
   * (`repack<format>r4`, with scratch) or in place from x4 (`repack<format>r4` after
   * interleaveRows4), and the activation format its product reads.
   */
  readonly r4?: { readonly from: "rows" | "x4"; readonly activation: string };
  /** src/quant/reference.ts decodes it (dequantizeRow). */
  readonly decode?: true;
  /** src/quant/reference.ts encodes it with ggml's reference rounding (quantizeRow). */
  readonly encode?: true;
}

const K = 256;

/** Every ggml type, in id order. */
// biome-ignore format: one row per type reads as a table
export const GGML_TYPE_TABLE = [
  { type: GGMLType.F32, name: "f32", blockSize: 1, typeSize: 4, format: "F32", activation: null, decode: true, encode: true },
  { type: GGMLType.F16, name: "f16", blockSize: 1, typeSize: 2, format: "F16", activation: null, decode: true, encode: true },
  { type: GGMLType.Q4_0, name: "q4_0", blockSize: 32, typeSize: 18, format: "Q4_0", activation: "Q8_0", x4: true, r4: { from: "x4", activation: "Q8_0S" }, decode: true, encode: true },
  { type: GGMLType.Q4_1, name: "q4_1", blockSize: 32, typeSize: 20, format: "Q4_1", activation: "Q8_1", x4: true, decode: true, encode: true },
  { type: GGMLType.Q5_0, name: "q5_0", blockSize: 32, typeSize: 22, format: "Q5_0", activation: "Q8_0", x4: true, decode: true, encode: true },
  { type: GGMLType.Q5_1, name: "q5_1", blockSize: 32, typeSize: 24, format: "Q5_1", activation: "Q8_1", x4: true, decode: true, encode: true },
  { type: GGMLType.Q8_0, name: "q8_0", blockSize: 32, typeSize: 34, format: "Q8_0", activation: "Q8_0", x4: true, decode: true, encode: true },
  { type: GGMLType.Q8_1, name: "q8_1", blockSize: 32, typeSize: 36, decode: true, encode: true },
  { type: GGMLType.Q2_K, name: "q2_K", blockSize: K, typeSize: 84, format: "Q2_K", activation: "Q8_K", x4: true, r4: { from: "rows", activation: "Q8_K" }, decode: true, encode: true },
  { type: GGMLType.Q3_K, name: "q3_K", blockSize: K, typeSize: 110, format: "Q3_K", activation: "Q8_K", x4: true, r4: { from: "rows", activation: "Q8_K" }, decode: true, encode: true },
  { type: GGMLType.Q4_K, name: "q4_K", blockSize: K, typeSize: 144, format: "Q4_K", activation: "Q8_K", x4: true, r4: { from: "rows", activation: "Q8_K" }, decode: true, encode: true },
  { type: GGMLType.Q5_K, name: "q5_K", blockSize: K, typeSize: 176, format: "Q5_K", activation: "Q8_K", x4: true, r4: { from: "rows", activation: "Q8_K" }, decode: true, encode: true },
  { type: GGMLType.Q6_K, name: "q6_K", blockSize: K, typeSize: 210, format: "Q6_K", activation: "Q8_K", x4: true, r4: { from: "rows", activation: "Q8_K" }, decode: true, encode: true },
  { type: GGMLType.Q8_K, name: "q8_K", blockSize: K, typeSize: 292, decode: true, encode: true },
  { type: GGMLType.IQ2_XXS, name: "iq2_xxs", blockSize: K, typeSize: 66 },
  { type: GGMLType.IQ2_XS, name: "iq2_xs", blockSize: K, typeSize: 74 },
  { type: GGMLType.IQ3_XXS, name: "iq3_xxs", blockSize: K, typeSize: 98 },
  { type: GGMLType.IQ1_S, name: "iq1_s", blockSize: K, typeSize: 50 },
  { type: GGMLType.IQ4_NL, name: "iq4_nl", blockSize: 32, typeSize: 18 },
  { type: GGMLType.IQ3_S, name: "iq3_s", blockSize: K, typeSize: 110 },
  { type: GGMLType.IQ2_S, name: "iq2_s", blockSize: K, typeSize: 82 },
  { type: GGMLType.IQ4_XS, name: "iq4_xs", blockSize: K, typeSize: 136 },
  { type: GGMLType.I8, name: "i8", blockSize: 1, typeSize: 1 },
  { type: GGMLType.I16, name: "i16", blockSize: 1, typeSize: 2 },
  { type: GGMLType.I32, name: "i32", blockSize: 1, typeSize: 4 },
  { type: GGMLType.I64, name: "i64", blockSize: 1, typeSize: 8 },
  { type: GGMLType.F64, name: "f64", blockSize: 1, typeSize: 8 },
  { type: GGMLType.IQ1_M, name: "iq1_m", blockSize: K, typeSize: 56 },
  { type: GGMLType.BF16, name: "bf16", blockSize: 1, typeSize: 2, format: "BF16", activation: null, decode: true, encode: true },
  { type: GGMLType.TQ1_0, name: "tq1_0", blockSize: K, typeSize: 54 },
  { type: GGMLType.TQ2_0, name: "tq2_0", blockSize: K, typeSize: 66 },
  { type: GGMLType.MXFP4, name: "mxfp4", blockSize: 32, typeSize: 17 },
  { type: GGMLType.NVFP4, name: "nvfp4", blockSize: 64, typeSize: 36 },
  { type: GGMLType.Q1_0, name: "q1_0", blockSize: 128, typeSize: 18 },
  { type: GGMLType.Q2_0, name: "q2_0", blockSize: 64, typeSize: 18 },
] as const satisfies readonly GgmlTypeRow[];

type Row = (typeof GGML_TYPE_TABLE)[number];
type RunnableRow = Extract<Row, { format: string }>;

/** Kernel suffix of a weight format smallhammer runs: F32, F16, BF16, Q4_0 ... Q6_K. */
export type WeightFormat = RunnableRow["format"];

/** The rows of the types smallhammer runs, in id order. */
export const RUNNABLE_TYPES: readonly RunnableRow[] = GGML_TYPE_TABLE.filter(
  (r): r is RunnableRow => "format" in r,
);

const BY_ID: (GgmlTypeRow | undefined)[] = [];
for (const r of GGML_TYPE_TABLE) BY_ID[r.type] = r;
const BY_FORMAT = new Map<string, RunnableRow>(RUNNABLE_TYPES.map((r) => [r.format, r]));

/** The table row of a type id, or undefined for unknown and removed ids. */
export function ggmlTypeRow(type: number): GgmlTypeRow | undefined {
  return Number.isInteger(type) && type >= 0 ? BY_ID[type] : undefined;
}

/** The weight format of a ggml type (undefined for a type smallhammer cannot run). */
export function formatOfGgmlType(type: number): WeightFormat | undefined {
  const r = ggmlTypeRow(type);
  return r && "format" in r ? (r.format as WeightFormat) : undefined;
}

/** The ggml type of a weight format. */
export function ggmlTypeOfFormat(format: WeightFormat): GGMLType {
  return BY_FORMAT.get(format)!.type;
}

/** The table row of a weight format. */
export function formatRow(format: WeightFormat): GgmlTypeRow {
  return BY_FORMAT.get(format)!;
}
