/**
 * Pure TypeScript reference of the ggml block formats, written for clarity, not speed: the
 * WebAssembly kernels in src/kernels/assembly/quant.ts are tested against it.
 *
 * - `dequantizeRow` decodes a row of any supported type to f32 (ggml `dequantize_row_*`, with the
 *   same f32 operation order as the kernels, so results are bit-identical).
 * - `quantizeRow` / `quantizeTensor` encode f32 data with ggml's `quantize_row_*_ref` rounding
 *   (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants Q2_K..Q6_K (kquants.ts), and the
 *   activation formats Q8_1 and Q8_K); given importance weights per column, ggml's weighted
 *   quantizers instead (`quantize_row_*_impl`).
 * - `vecDotRef` is the dot product of a weight row with f32 activations computed the way the
 *   quantized kernel does it: activations quantized to `vecDotType(type)`, integer sums per block,
 *   then f32 block scales. `dotDequantizedRef` is the float64 dot of the decoded weights with
 *   the unquantized activations (what the quantized product approximates).
 *
 * Layouts (ggml-common.h), little-endian, `half` = binary16:
 *   Q4_0 {d: half, qs[16]}  Q4_1 {d, m: half, qs[16]}  Q5_0 {d, qh: u32, qs[16]}
 *   Q5_1 {d, m, qh, qs[16]}  Q8_0 {d, qs[32] i8}  Q8_1 {d, s: half, qs[32] i8}
 *   Q2_K {scales[16] (sc | m << 4), qs[64], d, dmin}  Q3_K {hmask[32], qs[64], scales[12], d}
 *   Q4_K {d, dmin, scales[12], qs[128]}  Q5_K {d, dmin, scales[12], qh[32], qs[128]}
 *   Q6_K {ql[128], qh[64], scales[16] i8, d}  Q8_K {d: f32, qs[256] i8, bsums[16] i16}
 * In 32-blocks byte qs[j] holds element j (low nibble) and element j + 16 (high nibble).
 */

import { UserError } from "../errors.js";
import { GGML_TYPE_TABLE } from "../runtime/ggml-type-table.js";
import type { Rng } from "../util/random.js";
import { f16ToF32, f32Bits, f32FromBits, f32ToBf16, f32ToF16 } from "./fp16.js";
import { nearestInt, quantizeRowK, quantizeRowLegacyWeighted, scaleQ3 } from "./kquants.js";
import { blockSize, GGMLType, QK_K, rowBytes, typeName, typeSize, vecDotType } from "./types.js";

const fround = Math.fround;

// ---------------------------------------------------------------------------------------------
// small helpers

function readF16(src: Uint8Array, o: number): number {
  return f16ToF32(src[o]! | (src[o + 1]! << 8));
}

function writeF16(dst: Uint8Array, o: number, x: number): void {
  const h = f32ToF16(x);
  dst[o] = h & 0xff;
  dst[o + 1] = h >>> 8;
}

function readF32(src: Uint8Array, o: number): number {
  return f32FromBits(src[o]! | (src[o + 1]! << 8) | (src[o + 2]! << 16) | (src[o + 3]! << 24));
}

function writeF32(dst: Uint8Array, o: number, x: number): void {
  const u = f32Bits(x);
  dst[o] = u & 0xff;
  dst[o + 1] = (u >>> 8) & 0xff;
  dst[o + 2] = (u >>> 16) & 0xff;
  dst[o + 3] = u >>> 24;
}

function readU32(src: Uint8Array, o: number): number {
  return (src[o]! | (src[o + 1]! << 8) | (src[o + 2]! << 16) | (src[o + 3]! << 24)) >>> 0;
}

function readI8(src: Uint8Array, o: number): number {
  return (src[o]! << 24) >> 24;
}

function readI16(src: Uint8Array, o: number): number {
  return ((src[o]! | (src[o + 1]! << 8)) << 16) >> 16;
}

/** C `roundf`: to nearest, ties away from zero. */
export function roundHalfAway(v: number): number {
  return v < 0 ? -Math.floor(-v + 0.5) : Math.floor(v + 0.5);
}

export { nearestInt };

/** Sub-block scale and min of Q4_K / Q5_K (ggml `get_scale_min_k4`): 6-bit values packed in 12 bytes. */
export function scaleMinK4(j: number, scales: Uint8Array, o: number): [scale: number, min: number] {
  if (j < 4) return [scales[o + j]! & 63, scales[o + j + 4]! & 63];
  const sc = (scales[o + j + 4]! & 15) | ((scales[o + j - 4]! >> 6) << 4);
  const m = (scales[o + j + 4]! >> 4) | ((scales[o + j]! >> 6) << 4);
  return [sc, m];
}

function checkRow(type: number, src: Uint8Array, k: number): number {
  const bytes = rowBytes(type, k);
  if (src.length < bytes) {
    throw new Error(`${typeName(type)} row of ${k} elements needs ${bytes} bytes, got ${src.length}`);
  }
  return k / blockSize(type);
}

// ---------------------------------------------------------------------------------------------
// integer views of weight blocks: q values and the scale that multiplies each

/** Q4_0/Q4_1/Q5_0/Q5_1 block `b` as 32 unsigned quants (0..15 or 0..31, before any offset). */
function legacyQuants(type: number, src: Uint8Array, o: number, q: Int32Array): void {
  const qsOffset = type === GGMLType.Q4_0 ? 2 : type === GGMLType.Q4_1 ? 4 : type === GGMLType.Q5_0 ? 6 : 8;
  const qh = type === GGMLType.Q5_0 ? readU32(src, o + 2) : type === GGMLType.Q5_1 ? readU32(src, o + 4) : 0;
  for (let j = 0; j < 16; j++) {
    const byte = src[o + qsOffset + j]!;
    q[j] = (byte & 15) | (((qh >>> j) & 1) << 4);
    q[j + 16] = (byte >> 4) | (((qh >>> (j + 16)) & 1) << 4);
  }
}

/** Q4_K / Q5_K super-block as 256 unsigned quants (0..15 / 0..31); sub-block j covers 32j..32j+31. */
function kQuants45(type: number, src: Uint8Array, o: number, q: Int32Array): void {
  const five = type === GGMLType.Q5_K;
  const qsOffset = five ? 48 : 16;
  for (let c = 0; c < 4; c++) {
    for (let l = 0; l < 32; l++) {
      const byte = src[o + qsOffset + 32 * c + l]!;
      let lo = byte & 15;
      let hi = byte >> 4;
      if (five) {
        const h = src[o + 16 + l]!;
        lo |= ((h >> (2 * c)) & 1) << 4;
        hi |= ((h >> (2 * c + 1)) & 1) << 4;
      }
      q[64 * c + l] = lo;
      q[64 * c + 32 + l] = hi;
    }
  }
}

/** Q2_K super-block as 256 unsigned quants (0..3); sub-block j (scale j) covers 16j..16j+15. */
function kQuants2(src: Uint8Array, o: number, q: Int32Array): void {
  for (let e = 0; e < QK_K; e++) {
    const half = e >> 7;
    const l = e & 31;
    const shift = 2 * ((e >> 5) & 3);
    q[e] = (src[o + 16 + 32 * half + l]! >> shift) & 3;
  }
}

/** Q3_K super-block as 256 signed quants (-4..3); sub-block j (scale j − 32) covers 16j..16j+15. */
function kQuants3(src: Uint8Array, o: number, q: Int32Array): void {
  for (let e = 0; e < QK_K; e++) {
    const half = e >> 7;
    const l = e & 31;
    const s = (e >> 5) & 3;
    const low = (src[o + 32 + 32 * half + l]! >> (2 * s)) & 3;
    const high = (src[o + l]! >> (4 * half + s)) & 1;
    q[e] = low - (high ? 0 : 4);
  }
}

/** Q6_K super-block as 256 signed quants (-32..31); sub-block j (scale j) covers 16j..16j+15. */
function kQuants6(src: Uint8Array, o: number, q: Int32Array): void {
  for (let half = 0; half < 2; half++) {
    const ql = o + 64 * half;
    const qh = o + 128 + 32 * half;
    const y = 128 * half;
    for (let l = 0; l < 32; l++) {
      const h = src[qh + l]!;
      q[y + l] = ((src[ql + l]! & 15) | ((h & 3) << 4)) - 32;
      q[y + l + 32] = ((src[ql + l + 32]! & 15) | (((h >> 2) & 3) << 4)) - 32;
      q[y + l + 64] = ((src[ql + l]! >> 4) | (((h >> 4) & 3) << 4)) - 32;
      q[y + l + 96] = ((src[ql + l + 32]! >> 4) | (((h >> 6) & 3) << 4)) - 32;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dequantization

/**
 * Decodes one row of `k` elements of `type` to f32 (into `dst` when given).
 * The f32 operations are those of ggml's `dequantize_row_*`, unfused, in the same order.
 */
export function dequantizeRow(
  type: number,
  src: Uint8Array,
  k: number,
  dst = new Float32Array(k),
): Float32Array {
  const nb = checkRow(type, src, k);
  const bs = typeSize(type);
  const q = new Int32Array(QK_K);
  for (let b = 0; b < nb; b++) {
    const o = b * bs;
    switch (type) {
      case GGMLType.F32:
        dst[b] = readF32(src, o);
        break;
      case GGMLType.F16:
        dst[b] = readF16(src, o);
        break;
      case GGMLType.BF16:
        dst[b] = f32FromBits((src[o]! | (src[o + 1]! << 8)) << 16);
        break;
      case GGMLType.Q4_0:
      case GGMLType.Q5_0: {
        const d = readF16(src, o);
        const offset = type === GGMLType.Q4_0 ? 8 : 16;
        legacyQuants(type, src, o, q);
        for (let j = 0; j < 32; j++) dst[32 * b + j] = fround((q[j]! - offset) * d);
        break;
      }
      case GGMLType.Q4_1:
      case GGMLType.Q5_1: {
        const d = readF16(src, o);
        const m = readF16(src, o + 2);
        legacyQuants(type, src, o, q);
        for (let j = 0; j < 32; j++) dst[32 * b + j] = fround(fround(q[j]! * d) + m);
        break;
      }
      case GGMLType.Q8_0:
      case GGMLType.Q8_1: {
        const d = readF16(src, o);
        const qs = type === GGMLType.Q8_0 ? o + 2 : o + 4;
        for (let j = 0; j < 32; j++) dst[32 * b + j] = fround(readI8(src, qs + j) * d);
        break;
      }
      case GGMLType.Q8_K: {
        const d = readF32(src, o);
        for (let j = 0; j < QK_K; j++) dst[QK_K * b + j] = fround(readI8(src, o + 4 + j) * d);
        break;
      }
      case GGMLType.Q2_K: {
        const d = readF16(src, o + 80);
        const dmin = readF16(src, o + 82);
        kQuants2(src, o, q);
        for (let j = 0; j < 16; j++) {
          const sc = src[o + j]!;
          const dl = fround(d * (sc & 15));
          const ml = fround(dmin * (sc >> 4));
          for (let l = 0; l < 16; l++) dst[QK_K * b + 16 * j + l] = fround(fround(dl * q[16 * j + l]!) - ml);
        }
        break;
      }
      case GGMLType.Q3_K: {
        const d = readF16(src, o + 108);
        kQuants3(src, o, q);
        for (let j = 0; j < 16; j++) {
          const dl = fround(d * (scaleQ3(src, o + 96, j) - 32));
          for (let l = 0; l < 16; l++) dst[QK_K * b + 16 * j + l] = fround(dl * q[16 * j + l]!);
        }
        break;
      }
      case GGMLType.Q4_K:
      case GGMLType.Q5_K: {
        const d = readF16(src, o);
        const dmin = readF16(src, o + 2);
        kQuants45(type, src, o, q);
        for (let j = 0; j < 8; j++) {
          const [sc, m] = scaleMinK4(j, src, o + 4);
          const d1 = fround(d * sc);
          const m1 = fround(dmin * m);
          for (let l = 0; l < 32; l++) dst[QK_K * b + 32 * j + l] = fround(fround(d1 * q[32 * j + l]!) - m1);
        }
        break;
      }
      case GGMLType.Q6_K: {
        const d = readF16(src, o + 208);
        kQuants6(src, o, q);
        for (let j = 0; j < 16; j++) {
          const ds = fround(d * readI8(src, o + 192 + j));
          for (let l = 0; l < 16; l++) dst[QK_K * b + 16 * j + l] = fround(ds * q[16 * j + l]!);
        }
        break;
      }
      default:
        throw new Error(`dequantizeRow: ${typeName(type)} is not supported`);
    }
  }
  return dst;
}

// ---------------------------------------------------------------------------------------------
// quantization (ggml quantize_row_*_ref)

/** Element with the largest |x| in x[o..o+n), keeping its sign (first one on ties), and that |x|. */
function signedMax(x: Float32Array, o: number, n: number): [max: number, amax: number] {
  let amax = 0;
  let max = 0;
  for (let j = 0; j < n; j++) {
    const v = x[o + j]!;
    if (amax < Math.abs(v)) {
      amax = Math.abs(v);
      max = v;
    }
  }
  return [max, amax];
}

function quantizeQ4_0Block(x: Float32Array, xo: number, dst: Uint8Array, o: number): void {
  const [max] = signedMax(x, xo, 32);
  const d = fround(max / -8);
  const id = d ? fround(1 / d) : 0;
  writeF16(dst, o, d);
  for (let j = 0; j < 16; j++) {
    const x0 = fround(x[xo + j]! * id);
    const x1 = fround(x[xo + 16 + j]! * id);
    const q0 = Math.min(15, Math.trunc(fround(x0 + 8.5)));
    const q1 = Math.min(15, Math.trunc(fround(x1 + 8.5)));
    dst[o + 2 + j] = q0 | (q1 << 4);
  }
}

function minMax(x: Float32Array, o: number, n: number): [min: number, max: number] {
  let min = Number.POSITIVE_INFINITY;
  let max = Number.NEGATIVE_INFINITY;
  for (let j = 0; j < n; j++) {
    const v = x[o + j]!;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return [min, max];
}

function quantizeQ4_1Block(x: Float32Array, xo: number, dst: Uint8Array, o: number): void {
  const [min, max] = minMax(x, xo, 32);
  const d = fround(fround(max - min) / 15);
  const id = d ? fround(1 / d) : 0;
  writeF16(dst, o, d);
  writeF16(dst, o + 2, min);
  for (let j = 0; j < 16; j++) {
    const x0 = fround(fround(x[xo + j]! - min) * id);
    const x1 = fround(fround(x[xo + 16 + j]! - min) * id);
    const q0 = Math.min(15, Math.trunc(fround(x0 + 0.5)));
    const q1 = Math.min(15, Math.trunc(fround(x1 + 0.5)));
    dst[o + 4 + j] = q0 | (q1 << 4);
  }
}

function writeU32(dst: Uint8Array, o: number, u: number): void {
  dst[o] = u & 0xff;
  dst[o + 1] = (u >>> 8) & 0xff;
  dst[o + 2] = (u >>> 16) & 0xff;
  dst[o + 3] = u >>> 24;
}

function quantizeQ5_0Block(x: Float32Array, xo: number, dst: Uint8Array, o: number): void {
  const [max] = signedMax(x, xo, 32);
  const d = fround(max / -16);
  const id = d ? fround(1 / d) : 0;
  writeF16(dst, o, d);
  let qh = 0;
  for (let j = 0; j < 16; j++) {
    const x0 = fround(x[xo + j]! * id);
    const x1 = fround(x[xo + 16 + j]! * id);
    const q0 = Math.min(31, Math.trunc(fround(x0 + 16.5)));
    const q1 = Math.min(31, Math.trunc(fround(x1 + 16.5)));
    dst[o + 6 + j] = (q0 & 15) | ((q1 & 15) << 4);
    qh |= ((q0 >> 4) << j) | ((q1 >> 4) << (j + 16));
  }
  writeU32(dst, o + 2, qh >>> 0);
}

function quantizeQ5_1Block(x: Float32Array, xo: number, dst: Uint8Array, o: number): void {
  const [min, max] = minMax(x, xo, 32);
  const d = fround(fround(max - min) / 31);
  const id = d ? fround(1 / d) : 0;
  writeF16(dst, o, d);
  writeF16(dst, o + 2, min);
  let qh = 0;
  for (let j = 0; j < 16; j++) {
    const x0 = fround(fround(x[xo + j]! - min) * id);
    const x1 = fround(fround(x[xo + 16 + j]! - min) * id);
    // ggml casts to uint8_t here without clamping to 31
    const q0 = Math.trunc(fround(x0 + 0.5)) & 0xff;
    const q1 = Math.trunc(fround(x1 + 0.5)) & 0xff;
    dst[o + 8 + j] = (q0 & 15) | ((q1 & 15) << 4);
    qh |= (((q0 & 0x10) >> 4) << j) | (((q1 & 0x10) >> 4) << (j + 16));
  }
  writeU32(dst, o + 4, qh >>> 0);
}

/** Q8_0 (and the d, qs part of Q8_1): d = amax/127, q = roundf(x/d). Returns Σq. */
function quantizeQ8Block(x: Float32Array, xo: number, dst: Uint8Array, o: number, qsOffset: number): number {
  let amax = 0;
  for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[xo + j]!));
  const d = fround(amax / 127);
  const id = d ? fround(1 / d) : 0;
  writeF16(dst, o, d);
  let sum = 0;
  for (let j = 0; j < 32; j++) {
    const v = roundHalfAway(fround(x[xo + j]! * id));
    dst[o + qsOffset + j] = v & 0xff;
    sum += v;
  }
  return fround(sum * d);
}

function quantizeQ8_KBlock(x: Float32Array, xo: number, dst: Uint8Array, o: number): void {
  const [max, amax] = signedMax(x, xo, QK_K);
  dst.fill(0, o, o + 292);
  if (!amax) return; // d = 0, qs = 0, bsums = 0
  const iscale = fround(-127 / max);
  for (let j = 0; j < QK_K; j++) {
    const v = Math.min(127, nearestInt(fround(iscale * x[xo + j]!)));
    dst[o + 4 + j] = v & 0xff;
  }
  for (let g = 0; g < 16; g++) {
    let sum = 0;
    for (let l = 0; l < 16; l++) sum += readI8(dst, o + 4 + 16 * g + l);
    dst[o + 260 + 2 * g] = sum & 0xff;
    dst[o + 261 + 2 * g] = (sum >> 8) & 0xff;
  }
  writeF32(dst, o, fround(1 / iscale));
}

/** Types `quantizeRow` can encode (the `encode` column of the type table). */
export const QUANTIZABLE_TYPES: readonly number[] = GGML_TYPE_TABLE.filter((r) => "encode" in r).map(
  (r) => r.type,
);

const K_QUANT_NAMES = {
  [GGMLType.Q2_K]: "q2_K",
  [GGMLType.Q3_K]: "q3_K",
  [GGMLType.Q4_K]: "q4_K",
  [GGMLType.Q5_K]: "q5_K",
  [GGMLType.Q6_K]: "q6_K",
} as const;

const WEIGHTED_LEGACY = {
  [GGMLType.Q4_0]: "q4_0",
  [GGMLType.Q4_1]: "q4_1",
  [GGMLType.Q5_0]: "q5_0",
  [GGMLType.Q5_1]: "q5_1",
} as const;

/**
 * Encodes one row of f32 values with ggml's reference rounding (into `dst` when given). With
 * `quantWeights` (an importance per column, as ggml's quantize_* functions take an imatrix row),
 * Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants use ggml's importance-weighted quantizers; the other
 * types ignore it, as ggml does.
 */
export function quantizeRow(
  type: number,
  x: Float32Array,
  dst?: Uint8Array,
  quantWeights?: Float32Array,
): Uint8Array {
  const k = x.length;
  const out = dst ?? new Uint8Array(rowBytes(type, k));
  const kName = K_QUANT_NAMES[type as keyof typeof K_QUANT_NAMES];
  if (kName) {
    rowBytes(type, k);
    quantizeRowK(kName, x, out, quantWeights);
    return out;
  }
  const legacy = WEIGHTED_LEGACY[type as keyof typeof WEIGHTED_LEGACY];
  if (legacy && quantWeights) {
    rowBytes(type, k);
    quantizeRowLegacyWeighted(legacy, x, out, quantWeights);
    return out;
  }
  const nb = k / blockSize(type);
  const bs = typeSize(type);
  for (let b = 0; b < nb; b++) {
    const o = b * bs;
    const xo = b * blockSize(type);
    switch (type) {
      case GGMLType.F32:
        writeF32(out, o, x[b]!);
        break;
      case GGMLType.F16: {
        const h = f32ToF16(x[b]!);
        out[o] = h & 0xff;
        out[o + 1] = h >>> 8;
        break;
      }
      case GGMLType.BF16: {
        const h = f32ToBf16(x[b]!);
        out[o] = h & 0xff;
        out[o + 1] = h >>> 8;
        break;
      }
      case GGMLType.Q4_0:
        quantizeQ4_0Block(x, xo, out, o);
        break;
      case GGMLType.Q4_1:
        quantizeQ4_1Block(x, xo, out, o);
        break;
      case GGMLType.Q5_0:
        quantizeQ5_0Block(x, xo, out, o);
        break;
      case GGMLType.Q5_1:
        quantizeQ5_1Block(x, xo, out, o);
        break;
      case GGMLType.Q8_0:
        quantizeQ8Block(x, xo, out, o, 2);
        break;
      case GGMLType.Q8_1:
        writeF16(out, o + 2, quantizeQ8Block(x, xo, out, o, 4));
        break;
      case GGMLType.Q8_K:
        quantizeQ8_KBlock(x, xo, out, o);
        break;
      default:
        throw new UserError(
          `quantizing to ${typeName(type)} is not supported (supported: ${QUANTIZABLE_TYPES.map(typeName).join(", ")})`,
        );
    }
  }
  return out;
}

/** Encodes a row-major `rows × cols` f32 matrix row by row (`quantWeights`: one per column). */
export function quantizeTensor(
  type: number,
  data: Float32Array,
  rows: number,
  cols: number,
  quantWeights?: Float32Array,
): Uint8Array {
  if (data.length < rows * cols)
    throw new Error(`quantizeTensor: ${rows}×${cols} needs ${rows * cols} values`);
  const rb = rowBytes(type, cols);
  const out = new Uint8Array(rows * rb);
  for (let r = 0; r < rows; r++) {
    quantizeRow(
      type,
      data.subarray(r * cols, (r + 1) * cols),
      out.subarray(r * rb, (r + 1) * rb),
      quantWeights,
    );
  }
  return out;
}

/** Decodes a row-major `rows × cols` matrix of `type` to f32. */
export function dequantizeTensor(type: number, src: Uint8Array, rows: number, cols: number): Float32Array {
  const rb = rowBytes(type, cols);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    dequantizeRow(type, src.subarray(r * rb, (r + 1) * rb), cols, out.subarray(r * cols, (r + 1) * cols));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// dot products

/** Filled by the dot references: Σ|term| over the f32 terms the kernel adds (a scale for error bounds). */
export interface DotStats {
  magnitude: number;
}

/**
 * Dot product of a weight row of `type` with activations already quantized to `vecDotType(type)`,
 * computed as the kernel does: exact integer sums per block, multiplied by the f32 product of the
 * block scales, summed (here in float64; the kernel sums in f32).
 *   Q4_0, Q5_0, Q8_0 × Q8_0:  Σ_b fround(dw·dx) · Σ (qw − offset)·qx
 *   Q4_1, Q5_1 × Q8_1:        Σ_b fround(dw·dx) · Σ qw·qx + fround(mw·sx)
 *   Q2_K × Q8_K:              Σ_b fround(dw·dx) · Σ_j sc_j Σ qw·qx − fround(dminw·dx) · Σ_j m_j·bsum_j
 *   Q3_K × Q8_K:              Σ_b fround(dw·dx) · Σ_j (sc_j − 32) Σ qw·qx
 *   Q4_K, Q5_K × Q8_K:        Σ_b fround(dw·dx) · Σ_j sc_j Σ qw·qx − fround(dminw·dx) · Σ_j m_j·bsum_j
 *   Q6_K × Q8_K:              Σ_b fround(dw·dx) · Σ_j sc_j Σ qw·qx
 */
export function vecDotQuantizedRef(
  type: number,
  wRow: Uint8Array,
  xq: Uint8Array,
  k: number,
  stats?: DotStats,
): number {
  const nb = checkRow(type, wRow, k);
  const xType = vecDotType(type);
  checkRow(xType, xq, k);
  const wbs = typeSize(type);
  const xbs = typeSize(xType);
  const q = new Int32Array(QK_K);
  let sum = 0;
  let magnitude = 0;
  for (let b = 0; b < nb; b++) {
    const o = b * wbs;
    const xo = b * xbs;
    switch (type) {
      case GGMLType.Q4_0:
      case GGMLType.Q5_0:
      case GGMLType.Q8_0: {
        if (type === GGMLType.Q8_0) {
          for (let j = 0; j < 32; j++) q[j] = readI8(wRow, o + 2 + j);
        } else {
          legacyQuants(type, wRow, o, q);
          const offset = type === GGMLType.Q4_0 ? 8 : 16;
          for (let j = 0; j < 32; j++) q[j] = q[j]! - offset;
        }
        let sumi = 0;
        for (let j = 0; j < 32; j++) sumi += q[j]! * readI8(xq, xo + 2 + j);
        const term = sumi * fround(readF16(wRow, o) * readF16(xq, xo));
        sum += term;
        magnitude += Math.abs(term);
        break;
      }
      case GGMLType.Q4_1:
      case GGMLType.Q5_1: {
        legacyQuants(type, wRow, o, q);
        let sumi = 0;
        for (let j = 0; j < 32; j++) sumi += q[j]! * readI8(xq, xo + 4 + j);
        const t1 = sumi * fround(readF16(wRow, o) * readF16(xq, xo));
        const t2 = fround(readF16(wRow, o + 2) * readF16(xq, xo + 2));
        sum += t1 + t2;
        magnitude += Math.abs(t1) + Math.abs(t2);
        break;
      }
      case GGMLType.Q4_K:
      case GGMLType.Q5_K: {
        kQuants45(type, wRow, o, q);
        const dx = readF32(xq, xo);
        let sumi = 0;
        let summ = 0;
        for (let j = 0; j < 8; j++) {
          const [sc, m] = scaleMinK4(j, wRow, o + 4);
          let s = 0;
          for (let l = 0; l < 32; l++) s += q[32 * j + l]! * readI8(xq, xo + 4 + 32 * j + l);
          sumi += sc * s;
          summ += m * (readI16(xq, xo + 260 + 4 * j) + readI16(xq, xo + 262 + 4 * j));
        }
        const t1 = sumi * fround(readF16(wRow, o) * dx);
        const t2 = summ * fround(readF16(wRow, o + 2) * dx);
        sum += t1 - t2;
        magnitude += Math.abs(t1) + Math.abs(t2);
        break;
      }
      case GGMLType.Q2_K: {
        kQuants2(wRow, o, q);
        const dx = readF32(xq, xo);
        let sumi = 0;
        let summ = 0;
        for (let j = 0; j < 16; j++) {
          const sc = wRow[o + j]!;
          let s = 0;
          for (let l = 0; l < 16; l++) s += q[16 * j + l]! * readI8(xq, xo + 4 + 16 * j + l);
          sumi += (sc & 15) * s;
          summ += (sc >> 4) * readI16(xq, xo + 260 + 2 * j);
        }
        const t1 = sumi * fround(readF16(wRow, o + 80) * dx);
        const t2 = summ * fround(readF16(wRow, o + 82) * dx);
        sum += t1 - t2;
        magnitude += Math.abs(t1) + Math.abs(t2);
        break;
      }
      case GGMLType.Q3_K: {
        kQuants3(wRow, o, q);
        let sumi = 0;
        for (let j = 0; j < 16; j++) {
          let s = 0;
          for (let l = 0; l < 16; l++) s += q[16 * j + l]! * readI8(xq, xo + 4 + 16 * j + l);
          sumi += (scaleQ3(wRow, o + 96, j) - 32) * s;
        }
        const term = sumi * fround(readF16(wRow, o + 108) * readF32(xq, xo));
        sum += term;
        magnitude += Math.abs(term);
        break;
      }
      case GGMLType.Q6_K: {
        kQuants6(wRow, o, q);
        let sumi = 0;
        for (let j = 0; j < 16; j++) {
          let s = 0;
          for (let l = 0; l < 16; l++) s += q[16 * j + l]! * readI8(xq, xo + 4 + 16 * j + l);
          sumi += readI8(wRow, o + 192 + j) * s;
        }
        const term = sumi * fround(readF16(wRow, o + 208) * readF32(xq, xo));
        sum += term;
        magnitude += Math.abs(term);
        break;
      }
      default:
        throw new Error(`vecDotQuantizedRef: ${typeName(type)} has no quantized dot product`);
    }
  }
  if (stats) stats.magnitude = magnitude;
  return sum;
}

/**
 * Dot product of a weight row of `type` with f32 activations, computed the way the kernel does
 * (activations quantized to `vecDotType(type)` first). Float weight types take the activations
 * as they are (float64 sum of f32 products).
 */
export function vecDotRef(type: number, wRow: Uint8Array, xRow: Float32Array, stats?: DotStats): number {
  const xType = vecDotType(type);
  if (xType === GGMLType.F32) {
    const w = dequantizeRow(type, wRow, xRow.length);
    let sum = 0;
    let magnitude = 0;
    for (let i = 0; i < w.length; i++) {
      const t = fround(w[i]! * xRow[i]!);
      sum += t;
      magnitude += Math.abs(t);
    }
    if (stats) stats.magnitude = magnitude;
    return sum;
  }
  return vecDotQuantizedRef(type, wRow, quantizeRow(xType, xRow), xRow.length, stats);
}

/** Float64 dot product of the decoded weight row with the (unquantized) f32 activations. */
export function dotDequantizedRef(type: number, wRow: Uint8Array, xRow: Float32Array): number {
  const w = dequantizeRow(type, wRow, xRow.length);
  let sum = 0;
  for (let i = 0; i < w.length; i++) sum += w[i]! * xRow[i]!;
  return sum;
}

// ---------------------------------------------------------------------------------------------
// test and benchmark data

/**
 * `nBlocks` K-quant blocks (Q2_K ... Q6_K) with random quants and scales: every bit pattern of
 * the packed quants and 4-bit / 6-bit / int8 scales is valid, and the super-block scales are set to
 * plausible positive f16 values (d ≈ 2^-10..2^-7, dmin ≈ 2^-11..2^-8). Kernel tests use them
 * because they reach bit patterns (extreme scales, every quant) that quantized weights seldom do.
 */
export function randomKQuantBlocks(type: number, nBlocks: number, rng: Rng): Uint8Array {
  const bs = typeSize(type);
  const out = new Uint8Array(nBlocks * bs);
  for (let i = 0; i < out.length; i++) out[i] = rng.nextInt(256);
  const randomScale = (lo: number) => lo * 2 ** (3 * rng.nextFloat());
  for (let b = 0; b < nBlocks; b++) {
    const o = b * bs;
    if (type === GGMLType.Q4_K || type === GGMLType.Q5_K) {
      writeF16(out, o, randomScale(2 ** -10));
      writeF16(out, o + 2, randomScale(2 ** -11));
    } else if (type === GGMLType.Q2_K) {
      writeF16(out, o + 80, randomScale(2 ** -10));
      writeF16(out, o + 82, randomScale(2 ** -11));
    } else if (type === GGMLType.Q3_K) {
      writeF16(out, o + 108, randomScale(2 ** -10));
    } else if (type === GGMLType.Q6_K) {
      writeF16(out, o + 208, randomScale(2 ** -10));
    } else {
      throw new Error(`randomKQuantBlocks: ${typeName(type)} is not a K-quant`);
    }
  }
  return out;
}

/**
 * A random `rows × cols` weight matrix of `type`: normal values (σ = 0.02, typical of LLM weights)
 * quantized with the reference quantizer, or random K-quant blocks for the K types.
 */
export function randomWeights(type: number, rows: number, cols: number, rng: Rng): Uint8Array {
  if (blockSize(type) === QK_K) {
    return randomKQuantBlocks(type, (rows * cols) / QK_K, rng);
  }
  return quantizeTensor(type, rng.fillNormal(new Float32Array(rows * cols), 0.02), rows, cols);
}
