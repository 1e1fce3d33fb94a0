/**
 * Block geometry and dot-product pairing of the ggml types quant/ implements, on top of the
 * type table in formats/ggml-types.ts.
 */
import { GGMLType, ggmlTypeInfo, ggmlTypeName } from "../formats/ggml-types.js";

export { GGMLType };

/** Elements per super-block of the K-quants. */
export const QK_K = 256;

/** Types whose blocks quant/ can decode (dequantizeRow) and, for weights, multiply. */
export const QUANT_TYPES: readonly GGMLType[] = [
  GGMLType.F32,
  GGMLType.F16,
  GGMLType.BF16,
  GGMLType.Q4_0,
  GGMLType.Q4_1,
  GGMLType.Q5_0,
  GGMLType.Q5_1,
  GGMLType.Q8_0,
  GGMLType.Q8_1,
  GGMLType.Q4_K,
  GGMLType.Q5_K,
  GGMLType.Q6_K,
  GGMLType.Q8_K,
];

/** Weight types with a quantized matrix-product kernel (activations quantized to vecDotType). */
export const QUANTIZED_WEIGHT_TYPES: readonly GGMLType[] = [
  GGMLType.Q4_0,
  GGMLType.Q4_1,
  GGMLType.Q5_0,
  GGMLType.Q5_1,
  GGMLType.Q8_0,
  GGMLType.Q4_K,
  GGMLType.Q5_K,
  GGMLType.Q6_K,
];

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
  switch (type) {
    case GGMLType.F32:
    case GGMLType.F16:
    case GGMLType.BF16:
      return GGMLType.F32;
    case GGMLType.Q4_0:
    case GGMLType.Q5_0:
    case GGMLType.Q8_0:
      return GGMLType.Q8_0;
    case GGMLType.Q4_1:
    case GGMLType.Q5_1:
      return GGMLType.Q8_1;
    case GGMLType.Q4_K:
    case GGMLType.Q5_K:
    case GGMLType.Q6_K:
      return GGMLType.Q8_K;
    default:
      throw new RangeError(`quant: ${ggmlTypeName(type)} has no matrix product`);
  }
}
