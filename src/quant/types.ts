/**
 * Block geometry and dot-product pairing of the ggml types quant/ implements, derived from the
 * type table (src/runtime/ggml-type-table.ts).
 */
import { GGMLType, ggmlTypeInfo, ggmlTypeName } from "../formats/ggml-types.js";
import { GGML_TYPE_TABLE, ggmlTypeRow, RUNNABLE_TYPES, VEC_DOT_TYPE } from "../runtime/ggml-type-table.js";

export { GGMLType };

/** Elements per super-block of the K-quants. */
export const QK_K = 256;

/** Types whose blocks quant/ can decode (dequantizeRow) and, for weights, multiply. */
export const QUANT_TYPES: readonly GGMLType[] = GGML_TYPE_TABLE.filter((r) => "decode" in r).map(
  (r) => r.type,
);

/** Weight types with a quantized matrix-product kernel (activations quantized to vecDotType). */
export const QUANTIZED_WEIGHT_TYPES: readonly GGMLType[] = RUNNABLE_TYPES.filter((r) => r.activation).map(
  (r) => r.type,
);

function info(type: number) {
  const i = ggmlTypeInfo(type);
  if (!i || !QUANT_TYPES.includes(type))
    throw new RangeError(`quant: ${ggmlTypeName(type)} is not supported`);
  return i;
}

/** ggml's name of the type (`q4_K`). */
export function typeName(type: number): string {
  return ggmlTypeName(type);
}

/** Elements per block (1 for float types). */
export function blockSize(type: number): number {
  return info(type).blockSize;
}

/** Bytes per block. */
export function typeSize(type: number): number {
  return info(type).typeSize;
}

/** Bytes of one row of `cols` elements; throws RangeError unless `cols` is a whole number of blocks. */
export function rowBytes(type: number, cols: number): number {
  const i = info(type);
  if (cols % i.blockSize !== 0) {
    throw new RangeError(
      `a row of ${cols} elements is not a whole number of ${i.name} blocks of ${i.blockSize}`,
    );
  }
  return (cols / i.blockSize) * i.typeSize;
}

/**
 * The format activations are converted to for a product with weights of `type` (the kernel ABI in
 * src/kernels/README.md: float weights take f32 activations, ggml's pairing for the rest).
 */
export function vecDotType(type: number): GGMLType {
  const row = ggmlTypeRow(type);
  if (!row || !("activation" in row) || row.activation === undefined)
    throw new RangeError(`quant: ${ggmlTypeName(type)} has no matrix product`);
  if (row.activation === null) return GGMLType.F32;
  return VEC_DOT_TYPE[row.activation];
}
