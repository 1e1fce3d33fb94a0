/**
 * IEEE-754 binary16 ("half", ggml's F16) and bfloat16 (ggml's BF16) conversions.
 *
 * Inputs of the f32 -> 16-bit conversions are taken as f32 values (a JS number is first rounded to
 * f32, as when it comes from a Float32Array), then rounded to nearest, ties to even, as ggml's
 * `ggml_compute_fp32_to_fp16` and `ggml_compute_fp32_to_bf16` do. NaN becomes a quiet NaN that
 * keeps its sign (f16: 0x7e00; bf16: the top 16 bits with the quiet bit set, as ggml).
 * 16-bit -> f32 is exact; f16 uses a 64K-entry table built on first use.
 */

const scratch = new DataView(new ArrayBuffer(4));

/** The bits of `x` rounded to f32. */
export function f32Bits(x: number): number {
  scratch.setFloat32(0, x, true);
  return scratch.getUint32(0, true);
}

/** The f32 value with bits `u`. */
export function f32FromBits(u: number): number {
  scratch.setUint32(0, u >>> 0, true);
  return scratch.getFloat32(0, true);
}

/** binary16 bits of the f32 with bits `u`, rounded to nearest even. */
export function f32BitsToF16(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const abs = u & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00; // NaN
  if (abs >= 0x477ff000) return sign | 0x7c00; // >= 65520 rounds to infinity (and infinity)
  if (abs >= 0x38800000) {
    // normal half: rebias the exponent (127 -> 15) and drop 13 mantissa bits, ties to even;
    // a mantissa carry moves into the exponent, which is the right result.
    const r = (abs - 0x38000000) >>> 13;
    const rest = abs & 0x1fff;
    return sign | (rest > 0x1000 || (rest === 0x1000 && (r & 1) === 1) ? r + 1 : r);
  }
  if (abs < 0x33000000) return sign; // below 2^-25 (ties at 2^-25 go to even = 0)
  // subnormal half: value / 2^-24 rounded to an integer, ties to even
  const e = abs >>> 23;
  const m = (abs & 0x7fffff) | 0x800000;
  const shift = 126 - e; // 14..24
  const r = m >>> shift;
  const rest = m - (r << shift);
  const half = 1 << (shift - 1);
  return sign | (rest > half || (rest === half && (r & 1) === 1) ? r + 1 : r);
}

/** binary16 bits of `x` (taken as f32), rounded to nearest even. */
export function f32ToF16(x: number): number {
  return f32BitsToF16(f32Bits(x));
}

let f16Table: Float32Array | undefined;

function buildF16Table(): Float32Array {
  const bits = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) bits[h] = f16BitsToF32Bits(h);
  return new Float32Array(bits.buffer);
}

/** The f32 bits of the binary16 value `h` (exact; NaN payloads are kept). */
export function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const e = (h >>> 10) & 0x1f;
  let m = h & 0x3ff;
  if (e === 0x1f) return (sign | 0x7f800000 | (m << 13)) >>> 0;
  if (e !== 0) return (sign | ((e + 112) << 23) | (m << 13)) >>> 0;
  if (m === 0) return sign >>> 0;
  // subnormal: normalise
  let exp = 113;
  while ((m & 0x400) === 0) {
    m <<= 1;
    exp--;
  }
  return (sign | (exp << 23) | ((m & 0x3ff) << 13)) >>> 0;
}

/** The value of the binary16 bits `h`. */
export function f16ToF32(h: number): number {
  f16Table ??= buildF16Table();
  return f16Table[h & 0xffff]!;
}

/** The table of all 65536 binary16 values as f32 (index = bits). */
export function f16Table32(): Float32Array {
  f16Table ??= buildF16Table();
  return f16Table;
}

/** `x` rounded to binary16 and back (like Math.f16round, for f32 inputs). */
export function f16Round(x: number): number {
  return f16ToF32(f32ToF16(x));
}

/** bfloat16 bits of the f32 with bits `u`: ties to even, NaN kept quiet (ggml_compute_fp32_to_bf16). */
export function f32BitsToBf16(u: number): number {
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 64) & 0xffff;
  return ((u + (0x7fff + ((u >>> 16) & 1))) >>> 16) & 0xffff;
}

/** bfloat16 bits of `x` (taken as f32), rounded to nearest even. */
export function f32ToBf16(x: number): number {
  return f32BitsToBf16(f32Bits(x));
}

/** The value of the bfloat16 bits `b`. */
export function bf16ToF32(b: number): number {
  return f32FromBits((b & 0xffff) << 16);
}

/** Converts f32 values to binary16 bits. */
export function f32ToF16Array(src: Float32Array, dst = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) dst[i] = f32BitsToF16(bits[i]!);
  return dst;
}

/** Converts binary16 bits to f32 values. */
export function f16ToF32Array(src: Uint16Array, dst = new Float32Array(src.length)): Float32Array {
  f16Table ??= buildF16Table();
  const t = f16Table;
  for (let i = 0; i < src.length; i++) dst[i] = t[src[i]!]!;
  return dst;
}

/** Converts f32 values to bfloat16 bits. */
export function f32ToBf16Array(src: Float32Array, dst = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) dst[i] = f32BitsToBf16(bits[i]!);
  return dst;
}

/** Converts bfloat16 bits to f32 values. */
export function bf16ToF32Array(src: Uint16Array, dst = new Float32Array(src.length)): Float32Array {
  const out = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) out[i] = src[i]! << 16;
  return dst;
}
