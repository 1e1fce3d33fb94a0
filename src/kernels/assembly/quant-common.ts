// Quantized kernels: activation quantizers, block-format matrix products, dequantizers.
//
// ABI (../README.md): byte-offset pointers into the imported memory, i32 sizes, then the
// half-open row range [r0, r1) this thread owns. Block layouts are ggml's (ggml-common.h):
//
//   Q4_0 {d: f16, qs[16]}              18 B    Q8_0 {d: f16, qs[32] i8}               34 B
//   Q4_1 {d, m: f16, qs[16]}           20 B    Q8_1 {d, s: f16, qs[32] i8}             36 B
//   Q5_0 {d, qh: u32, qs[16]}          22 B    Q8_K {d: f32, qs[256] i8, bsums[16] i16} 292 B
//   Q5_1 {d, m, qh, qs[16]}            24 B
//   Q4_K {d, dmin: f16, scales[12], qs[128]}            144 B
//   Q5_K {d, dmin: f16, scales[12], qh[32], qs[128]}    176 B
//   Q6_K {ql[128], qh[64], scales[16] i8, d: f16}       210 B
//
// The pure TypeScript twin of every kernel is src/quant/reference.ts.
//
// How the matrix products work. Weights are unpacked into 16-bit lanes without widening: 16
// packed bytes are viewed as eight i16 lanes (even byte low, odd byte high), and each 4-bit field
// is isolated in place by one `and` (0x000f, 0x0f00, 0x00f0) or `shr_u 12`. The int8 activations
// are prepared to match, once per block for four weight rows: 256·x for the even bytes (`shl 8`),
// x for the odd ones (`shr_s 8`), 16·x (`shl 8; shr_s 4`) and 256·x (`and 0xff00`), so that every
// product comes out as exactly 256·q·x. `i32x4.dot_i16x8_s` multiplies and adds lane pairs; the
// 1/256 is folded into the activation scale (or a shift, for the K-quants' integer sub-block
// scales). Q8_0, Q5_0 and Q5_1 use plain sign-extended even/odd halves instead. Offsets (-8 of
// Q4_0, -32 of Q6_K) are removed through the activation sums, mins (Q4_K, Q5_K) through bsums.
//
// Four weight rows are processed together: their i32x4 partial sums are reduced by a
// transpose-add (pairAdd, quadAdd) to one vector holding the four rows' block sums, converted to
// f32 once, scaled by the four rows' block scales (f16 converted four at a time) and added to one
// f32x4 accumulator. For prefill, four tokens (Q8_0; see dotRows32x4) or pairs of tokens share
// each unpacked weight block, and tokens are processed in chunks so that the four rows' weights
// stay in cache while the chunk uses them.
// See the note at the top of the matrix-product section on how the code is shaped for V8.

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/** Tokens computed per pass over a group of four weight rows (keeps the x chunk in L2). */
export const TOKEN_CHUNK: i32 = 16;

/** 2^112: scales an f16 bit pattern placed in f32 bits 27..13 to its value. */
// @ts-ignore: decorator
@inline export const F16_MAGIC: f32 = reinterpret<f32>(0x77800000);

/**
 * f16 values held in the high half of each i32 lane (the low halves are ignored) to f32.
 * Exact for zero, subnormal and normal halves; infinities and NaNs (never scales) come out finite.
 */
// @ts-ignore: decorator
@inline export function halfHighToF32(v: v128): v128 {
  const bits = v128.and(i32x4.shr_s(v, 3), i32x4.splat(0x8fffe000));
  return f32x4.mul(bits, f32x4.splat(F16_MAGIC));
}

/** One f16 (low 16 bits of `h`) to f32, exact except for infinities and NaNs. */
// @ts-ignore: decorator
@inline export function halfToF32(h: u32): f32 {
  const bits = ((<i32>(h << 16)) >> 3) & 0x8fffe000;
  return reinterpret<f32>(bits) * F16_MAGIC;
}

/** f32 -> f16 bits, round to nearest even; NaN -> quiet NaN with the sign (ggml). */
export function f32ToHalf(x: f32): u32 {
  const u = reinterpret<u32>(x);
  const sign = (u >> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a > 0x7f800000) return sign | 0x7e00;
  if (a >= 0x477ff000) return sign | 0x7c00;
  if (a >= 0x38800000) return sign | ((a - 0x38000000 + 0xfff + ((a >> 13) & 1)) >> 13);
  if (a < 0x33000000) return sign;
  const e = a >> 23;
  const m = (a & 0x7fffff) | 0x800000;
  const shift = 126 - e;
  const r = m >> shift;
  const rest = m - (r << shift);
  const half = <u32>1 << (shift - 1);
  return sign | (rest > half || (rest == half && (r & 1) != 0) ? r + 1 : r);
}

/** Σ of the four i32 lanes. */
// @ts-ignore: decorator
@inline export function hsumI32(a: v128): i32 {
  const b = i32x4.add(a, i32x4.shuffle(a, a, 2, 3, 0, 1));
  return i32x4.extract_lane(b, 0) + i32x4.extract_lane(b, 1);
}

/** Even bytes of 16 int8 as eight i16 lanes. */
// @ts-ignore: decorator
@inline export function evenI8(v: v128): v128 {
  return i16x8.shr_s(i16x8.shl(v, 8), 8);
}

/** Odd bytes of 16 int8 as eight i16 lanes. */
// @ts-ignore: decorator
@inline export function oddI8(v: v128): v128 {
  return i16x8.shr_s(v, 8);
}

/** Shift of every i16 lane left by `s` (right by -s when negative); `s` is a constant after inlining. */
// @ts-ignore: decorator
@inline export function shiftI16(v: v128, s: i32): v128 {
  if (s > 0) return i16x8.shl(v, s);
  if (s < 0) return i16x8.shr_u(v, -s);
  return v;
}

/** Writes the first `nr` lanes of four row results to dst (adding to what is there when acc != 0). */
// @ts-ignore: decorator
@inline export function storeRows(dst: usize, v: v128, nr: i32, acc: i32): void {
  if (nr == 4) {
    if (acc != 0) v = f32x4.add(v, v128.load(dst));
    v128.store(dst, v);
    return;
  }
  const a = acc != 0;
  store<f32>(dst, (a ? load<f32>(dst) : 0) + f32x4.extract_lane(v, 0));
  if (nr > 1) store<f32>(dst, (a ? load<f32>(dst, 4) : 0) + f32x4.extract_lane(v, 1), 4);
  if (nr > 2) store<f32>(dst, (a ? load<f32>(dst, 8) : 0) + f32x4.extract_lane(v, 2), 8);
}

/**
 * Stores a 4-row × 4-token tile whose accumulators hold one row each with lanes = tokens: a
 * transpose gives each token its four rows' outputs, written at out + t·rows·4.
 */
// @ts-ignore: decorator
@inline export function storeTokens4(a0: v128, a1: v128, a2: v128, a3: v128, out: usize, rows: i32, nr: i32, accumulate: i32): void {
  const t01l = i32x4.shuffle(a0, a1, 0, 4, 1, 5);
  const t01h = i32x4.shuffle(a0, a1, 2, 6, 3, 7);
  const t23l = i32x4.shuffle(a2, a3, 0, 4, 1, 5);
  const t23h = i32x4.shuffle(a2, a3, 2, 6, 3, 7);
  const step = <usize>rows << 2;
  storeRows(out, i64x2.shuffle(t01l, t23l, 0, 2), nr, accumulate);
  storeRows(out + step, i64x2.shuffle(t01l, t23l, 1, 3), nr, accumulate);
  storeRows(out + 2 * step, i64x2.shuffle(t01h, t23h, 0, 2), nr, accumulate);
  storeRows(out + 3 * step, i64x2.shuffle(t01h, t23h, 1, 3), nr, accumulate);
}

/** Four u32 at p0..p3 as an i32x4. */
// @ts-ignore: decorator
@inline export function loadU32x4(p0: usize, p1: usize, p2: usize, p3: usize): v128 {
  let v = v128.load32_zero(p0);
  v = v128.load32_lane(p1, v, 1);
  v = v128.load32_lane(p2, v, 2);
  return v128.load32_lane(p3, v, 3);
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers (rows = tokens). Bit-identical to ggml's quantize_row_q8_*_ref.
// ---------------------------------------------------------------------------------------------

/** Static vector constants (16 bytes each), offsets CONST_*. */
export const CONSTS: usize = memory.data<u16>(
  [
    0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, 0x0f, // nibble mask
    0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, // bit 4
    0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, // bits 4..5
    8, 8, 8, 8, 8, 8, 8, 8, // Q4_0 offset
    0xfff0, 0xfff0, 0xfff0, 0xfff0, 0xfff0, 0xfff0, 0xfff0, 0xfff0, // -16: Q5_0 offset
    1, 4, 16, 64, 256, 1024, 4096, 16384, // even bits of a lane
    2, 8, 32, 128, 512, 2048, 8192, 32768, // odd bits of a lane
    0xe000, 0x8fff, 0xe000, 0x8fff, 0xe000, 0x8fff, 0xe000, 0x8fff, // f16 -> f32: sign and magnitude bits
    0, 0x7780, 0, 0x7780, 0, 0x7780, 0, 0x7780, // f16 -> f32: 2^112
    0, 0x7380, 0, 0x7380, 0, 0x7380, 0, 0x7380, // f16 -> f32 / 256: 2^104
    0x0f00, 0x0f00, 0x0f00, 0x0f00, 0x0f00, 0x0f00, 0x0f00, 0x0f00, // low nibble of the odd byte
    0x00f0, 0x00f0, 0x00f0, 0x00f0, 0x00f0, 0x00f0, 0x00f0, 0x00f0, // high nibble of the even byte
    0xff00, 0xff00, 0xff00, 0xff00, 0xff00, 0xff00, 0xff00, 0xff00, // odd byte
    2048, 2048, 2048, 2048, 2048, 2048, 2048, 2048, // 8 · 256
    0x1000, 0x1000, 0x1000, 0x1000, 0x1000, 0x1000, 0x1000, 0x1000, // bit 12
    0x0100, 0x0100, 0x0100, 0x0100, 0x0100, 0x0100, 0x0100, 0x0100, // bit 8
    0x3000, 0x3000, 0x3000, 0x3000, 0x3000, 0x3000, 0x3000, 0x3000, // bits 12..13
    0x0300, 0x0300, 0x0300, 0x0300, 0x0300, 0x0300, 0x0300, 0x0300, // bits 8..9
    0x0f0f, 0x0f0f, 0x0f0f, 0x0f0f, 0x0f0f, 0x0f0f, 0x0f0f, 0x0f0f, // low nibble of every byte
    1, 1, 1, 1, 1, 1, 1, 1, // ones: pairwise i16 -> i32 sums
    0x8000, 0x8000, 0x8001, 0x8001, 0x8002, 0x8002, 0x8003, 0x8003, // bytes 0..3 to i16 pairs (swizzle)
    0x0000, 0x0202, 0x0404, 0x0606, 0, 0, 0, 0, // bytes 0, 0, 2, 2, 4, 4, 6, 6 (swizzle)
  ],
  16,
);

export const CONST_0F: usize = 0;

export const CONST_10: usize = 16;

export const CONST_30: usize = 32;

export const CONST_8: usize = 48;

export const CONST_NEG16: usize = 64;

export const CONST_EVEN_BITS: usize = 80;

export const CONST_ODD_BITS: usize = 96;

export const CONST_HALF_MASK: usize = 112;

export const CONST_HALF_MAGIC: usize = 128;

export const CONST_HALF_MAGIC_256: usize = 144;

export const CONST_0F00: usize = 160;

export const CONST_00F0: usize = 176;

export const CONST_FF00: usize = 192;

export const CONST_2048: usize = 208;

export const CONST_1000: usize = 224;

export const CONST_0100: usize = 240;

export const CONST_3000: usize = 256;

export const CONST_0300: usize = 272;

export const CONST_0F0F: usize = 288;

export const CONST_ONES: usize = 304;

export const CONST_PAIRS: usize = 320;

export const CONST_EVEN_PAIRS: usize = 336;

/** halfHighToF32 with its two constants passed in (loaded once per call from the table). */
// @ts-ignore: decorator
@inline export function halfHigh(v: v128, mask: v128, magic: v128): v128 {
  return f32x4.mul(v128.and(i32x4.shr_s(v, 3), mask), magic);
}

/** Four f16 at p0..p3 (same offset) as an f32x4. */
// @ts-ignore: decorator
@inline export function half4(p0: usize, p1: usize, p2: usize, p3: usize, mask: v128, magic: v128): v128 {
  let v = v128.load16_lane(p0, mask, 1);
  v = v128.load16_lane(p1, v, 3);
  v = v128.load16_lane(p2, v, 5);
  v = v128.load16_lane(p3, v, 7);
  return halfHigh(v, mask, magic);
}

/** The f16 at p in all four lanes as f32. */
// @ts-ignore: decorator
@inline export function halfSplat(p: usize, mask: v128, magic: v128): v128 {
  return halfHigh(v128.load16_splat(p), mask, magic);
}

/** A vector constant from the static table, loaded (once per call when used outside loops). */
// @ts-ignore: decorator
@inline export function constant(offset: usize): v128 {
  return v128.load(CONSTS + offset);
}

/** [a0+a2, b0+b2, a1+a3, b1+b3]: the first half of the transpose-add of four rows. */
// @ts-ignore: decorator
@inline export function pairAdd(a: v128, b: v128): v128 {
  return i32x4.add(i32x4.shuffle(a, b, 0, 4, 1, 5), i32x4.shuffle(a, b, 2, 6, 3, 7));
}

/** [Σa, Σb, Σc, Σd] from pairAdd(a, b) and pairAdd(c, d). */
// @ts-ignore: decorator
@inline export function quadAdd(ab: v128, cd: v128): v128 {
  return i32x4.add(i32x4.shuffle(ab, cd, 0, 1, 4, 5), i32x4.shuffle(ab, cd, 2, 3, 6, 7));
}

/**
 * 256 × the partial sums of a 32-block with 4-bit weights `b` (qs[16]), with the activations
 * prepared by scaledX: each nibble is isolated by one `and` (or shift) in place, and its
 * activation partner carries the missing power of 16 (products come out ×256, exactly).
 */
// @ts-ignore: decorator
@inline export function dotNibbles256(
  b: v128,
  m0f: v128,
  m0f00: v128,
  mf0: v128,
  xe256: v128,
  xo1: v128,
  xe16: v128,
  xo256: v128,
): v128 {
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(v128.and(b, m0f), xe256), i32x4.dot_i16x8_s(v128.and(b, m0f00), xo1)),
    i32x4.add(i32x4.dot_i16x8_s(v128.and(b, mf0), xe16), i32x4.dot_i16x8_s(i16x8.shr_u(b, 12), xo256)),
  );
}

// Legacy 32-blocks. `kind` selects the weight format (a constant after inlining).
export const K_Q4_0: i32 = 0;

export const K_Q4_1: i32 = 1;

export const K_Q5_0: i32 = 2;

export const K_Q5_1: i32 = 3;

export const K_Q8_0: i32 = 4;

/** Σ w·x partial sums of a 32-block from unpacked weights and prepared activations. */
// @ts-ignore: decorator
@inline export function dot4(
  we: v128,
  wo: v128,
  whe: v128,
  who: v128,
  xae: v128,
  xao: v128,
  xbe: v128,
  xbo: v128,
): v128 {
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(we, xae), i32x4.dot_i16x8_s(wo, xao)),
    i32x4.add(i32x4.dot_i16x8_s(whe, xbe), i32x4.dot_i16x8_s(who, xbo)),
  );
}

/** Q4_K/Q5_K 6-bit scales and mins of the block at p as bytes [sc0..sc7, m0..m7]. */
// @ts-ignore: decorator
@inline export function scalesMinsK4(p: usize): v128 {
  const u0 = load<u32>(p, 4);
  const u1 = load<u32>(p, 8);
  const u2 = load<u32>(p, 12);
  let v = i32x4.splat(u0 & 0x3f3f3f3f);
  v = i32x4.replace_lane(v, 1, (u2 & 0x0f0f0f0f) | (((u0 >> 6) & 0x03030303) << 4));
  v = i32x4.replace_lane(v, 2, u1 & 0x3f3f3f3f);
  return i32x4.replace_lane(v, 3, ((u2 >> 4) & 0x0f0f0f0f) | (((u1 >> 6) & 0x03030303) << 4));
}
