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
const TOKEN_CHUNK: i32 = 16;

/** 2^112: scales an f16 bit pattern placed in f32 bits 27..13 to its value. */
// @ts-ignore: decorator
@inline const F16_MAGIC: f32 = reinterpret<f32>(0x77800000);

/**
 * f16 values held in the high half of each i32 lane (the low halves are ignored) to f32.
 * Exact for zero, subnormal and normal halves; infinities and NaNs (never scales) come out finite.
 */
// @ts-ignore: decorator
@inline function halfHighToF32(v: v128): v128 {
  const bits = v128.and(i32x4.shr_s(v, 3), i32x4.splat(0x8fffe000));
  return f32x4.mul(bits, f32x4.splat(F16_MAGIC));
}

/** One f16 (low 16 bits of `h`) to f32, exact except for infinities and NaNs. */
// @ts-ignore: decorator
@inline function halfToF32(h: u32): f32 {
  const bits = ((<i32>(h << 16)) >> 3) & 0x8fffe000;
  return reinterpret<f32>(bits) * F16_MAGIC;
}

/** f32 -> f16 bits, round to nearest even; NaN -> quiet NaN with the sign (ggml). */
function f32ToHalf(x: f32): u32 {
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
@inline function hsumI32(a: v128): i32 {
  const b = i32x4.add(a, i32x4.shuffle(a, a, 2, 3, 0, 1));
  return i32x4.extract_lane(b, 0) + i32x4.extract_lane(b, 1);
}

/** Even bytes of 16 int8 as eight i16 lanes. */
// @ts-ignore: decorator
@inline function evenI8(v: v128): v128 {
  return i16x8.shr_s(i16x8.shl(v, 8), 8);
}

/** Odd bytes of 16 int8 as eight i16 lanes. */
// @ts-ignore: decorator
@inline function oddI8(v: v128): v128 {
  return i16x8.shr_s(v, 8);
}

/** Shift of every i16 lane left by `s` (right by -s when negative); `s` is a constant after inlining. */
// @ts-ignore: decorator
@inline function shiftI16(v: v128, s: i32): v128 {
  if (s > 0) return i16x8.shl(v, s);
  if (s < 0) return i16x8.shr_u(v, -s);
  return v;
}

/** Writes the first `nr` lanes of four row results to dst (adding to what is there when acc != 0). */
// @ts-ignore: decorator
@inline function storeRows(dst: usize, v: v128, nr: i32, acc: i32): void {
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
@inline function storeTokens4(a0: v128, a1: v128, a2: v128, a3: v128, out: usize, rows: i32, nr: i32, accumulate: i32): void {
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
@inline function loadU32x4(p0: usize, p1: usize, p2: usize, p3: usize): v128 {
  let v = v128.load32_zero(p0);
  v = v128.load32_lane(p1, v, 1);
  v = v128.load32_lane(p2, v, 2);
  return v128.load32_lane(p3, v, 3);
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers (rows = tokens). Bit-identical to ggml's quantize_row_q8_*_ref.
// ---------------------------------------------------------------------------------------------

/** C roundf (ties away from zero) of each f32 lane, for |v| < 2^23. */
// @ts-ignore: decorator
@inline function roundHalfAway(v: v128): v128 {
  const t = f32x4.trunc(v);
  const frac = f32x4.abs(f32x4.sub(v, t));
  const step = v128.or(v128.and(v, i32x4.splat(0x80000000)), f32x4.splat(1));
  return f32x4.add(t, v128.and(step, f32x4.ge(frac, f32x4.splat(0.5))));
}

/** Quantizes 32 floats at x to Q8_0 qs at q; returns [d (f32), Σq (i32), -, -]. */
// @ts-ignore: decorator
@inline function quantize32(x: usize, q: usize): v128 {
  const v0 = v128.load(x);
  const v1 = v128.load(x, 16);
  const v2 = v128.load(x, 32);
  const v3 = v128.load(x, 48);
  const v4 = v128.load(x, 64);
  const v5 = v128.load(x, 80);
  const v6 = v128.load(x, 96);
  const v7 = v128.load(x, 112);
  let m = f32x4.max(
    f32x4.max(f32x4.max(f32x4.abs(v0), f32x4.abs(v1)), f32x4.max(f32x4.abs(v2), f32x4.abs(v3))),
    f32x4.max(f32x4.max(f32x4.abs(v4), f32x4.abs(v5)), f32x4.max(f32x4.abs(v6), f32x4.abs(v7))),
  );
  m = f32x4.max(m, v128.shuffle<f32>(m, m, 2, 3, 0, 1));
  const amax = max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1));
  const d: f32 = amax / <f32>127;
  const id: f32 = d != 0 ? <f32>1 / d : 0;
  const idv = f32x4.splat(id);
  const i0 = i32x4.trunc_sat_f32x4_s(roundHalfAway(f32x4.mul(v0, idv)));
  const i1 = i32x4.trunc_sat_f32x4_s(roundHalfAway(f32x4.mul(v1, idv)));
  const i2 = i32x4.trunc_sat_f32x4_s(roundHalfAway(f32x4.mul(v2, idv)));
  const i3 = i32x4.trunc_sat_f32x4_s(roundHalfAway(f32x4.mul(v3, idv)));
  const i4 = i32x4.trunc_sat_f32x4_s(roundHalfAway(f32x4.mul(v4, idv)));
  const i5 = i32x4.trunc_sat_f32x4_s(roundHalfAway(f32x4.mul(v5, idv)));
  const i6 = i32x4.trunc_sat_f32x4_s(roundHalfAway(f32x4.mul(v6, idv)));
  const i7 = i32x4.trunc_sat_f32x4_s(roundHalfAway(f32x4.mul(v7, idv)));
  v128.store(q, i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(i0, i1), i16x8.narrow_i32x4_s(i2, i3)));
  v128.store(q, i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(i4, i5), i16x8.narrow_i32x4_s(i6, i7)), 16);
  const s = i32x4.add(i32x4.add(i32x4.add(i0, i1), i32x4.add(i2, i3)), i32x4.add(i32x4.add(i4, i5), i32x4.add(i6, i7)));
  // lane 0: d, lane 1: Σq
  return i32x4.replace_lane(f32x4.splat(d), 1, hsumI32(s));
}

/** Q8_0 blocks of tokens [r0, r1): x is n × cols f32, xq is n × (cols/32 · 34) bytes. */
export function quantizeQ8_0(x: usize, xq: usize, cols: i32, n: i32, r0: i32, r1: i32): void {
  const nb = cols >> 5;
  for (let t = r0; t < r1; t++) {
    let px = x + <usize>t * <usize>cols * 4;
    let pq = xq + <usize>t * <usize>nb * 34;
    for (let b = 0; b < nb; b++) {
      const r = quantize32(px, pq + 2);
      store<u16>(pq, <u16>f32ToHalf(f32x4.extract_lane(r, 0)));
      px += 128;
      pq += 34;
    }
  }
}

/** Q8_1 blocks (d, s = d·Σq, qs) of tokens [r0, r1). */
export function quantizeQ8_1(x: usize, xq: usize, cols: i32, n: i32, r0: i32, r1: i32): void {
  const nb = cols >> 5;
  for (let t = r0; t < r1; t++) {
    let px = x + <usize>t * <usize>cols * 4;
    let pq = xq + <usize>t * <usize>nb * 36;
    for (let b = 0; b < nb; b++) {
      const r = quantize32(px, pq + 4);
      const d = f32x4.extract_lane(r, 0);
      store<u16>(pq, <u16>f32ToHalf(d));
      store<u16>(pq, <u16>f32ToHalf(<f32>i32x4.extract_lane(r, 1) * d), 2);
      px += 128;
      pq += 36;
    }
  }
}

/** Q8_K blocks of tokens [r0, r1): d = max/-127 (f32), qs = nearest(x·(-127/max)), bsums. */
export function quantizeQ8_K(x: usize, xq: usize, cols: i32, n: i32, r0: i32, r1: i32): void {
  const nb = cols >> 8;
  for (let t = r0; t < r1; t++) {
    let px = x + <usize>t * <usize>cols * 4;
    let pq = xq + <usize>t * <usize>nb * 292;
    for (let b = 0; b < nb; b++) {
      // amax, then the first element with that magnitude (its sign decides the scale's sign)
      let m = f32x4.splat(0);
      for (let j = 0; j < 1024; j += 64) {
        m = f32x4.max(
          m,
          f32x4.max(
            f32x4.max(f32x4.abs(v128.load(px + j)), f32x4.abs(v128.load(px + j, 16))),
            f32x4.max(f32x4.abs(v128.load(px + j, 32)), f32x4.abs(v128.load(px + j, 48))),
          ),
        );
      }
      m = f32x4.max(m, v128.shuffle<f32>(m, m, 2, 3, 0, 1));
      const amax = max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1));
      if (amax == 0) {
        memory.fill(pq, 0, 292);
        px += 1024;
        pq += 292;
        continue;
      }
      // (bounded: with a NaN in the block amax is NaN and nothing matches; the result is then
      // unspecified but the kernel still ends)
      const av = f32x4.splat(amax);
      let first = 0;
      for (let j = 0; j < 256; j += 4) {
        const mask = i32x4.bitmask(f32x4.eq(f32x4.abs(v128.load(px + (<usize>j << 2))), av));
        if (mask != 0) {
          first = j + ctz(mask);
          break;
        }
      }
      const iscale: f32 = <f32>-127 / load<f32>(px + (<usize>first << 2));
      const sv = f32x4.splat(iscale);
      const lim = i32x4.splat(127);
      for (let g = 0; g < 16; g++) {
        const p = px + (<usize>g << 6);
        const i0 = i32x4.min_s(i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), sv))), lim);
        const i1 = i32x4.min_s(i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 16), sv))), lim);
        const i2 = i32x4.min_s(i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 32), sv))), lim);
        const i3 = i32x4.min_s(i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 48), sv))), lim);
        v128.store(pq + 4 + (<usize>g << 4), i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(i0, i1), i16x8.narrow_i32x4_s(i2, i3)));
        store<i16>(pq + 260 + (<usize>g << 1), <i16>hsumI32(i32x4.add(i32x4.add(i0, i1), i32x4.add(i2, i3))));
      }
      store<f32>(pq, <f32>1 / iscale);
      px += 1024;
      pq += 292;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Matrix products: out[t*rows + r] (+)= Σ_k W[r, k] · x[t, k] for weight rows [r0, r1)
// ---------------------------------------------------------------------------------------------
//
// Code shape matters for V8: its scheduler orders the independent work of a basic block breadth
// first (all loads, then all shifts, ...), which for four rows at once needs more than the 16
// vector registers and spills. So each weight row's work is its own basic block, behind a branch
// on `p >= w` (always true, but not provably so), and the rows' partial sums are combined pairwise
// inside those blocks. Vector constants used in the row blocks are loaded once per call from the
// static table below (a constant written inline is rematerialized in every block that uses it).

/** Static vector constants (16 bytes each), offsets CONST_*. */
const CONSTS: usize = memory.data<u16>(
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
const CONST_0F: usize = 0;
const CONST_10: usize = 16;
const CONST_30: usize = 32;
const CONST_8: usize = 48;
const CONST_NEG16: usize = 64;
const CONST_EVEN_BITS: usize = 80;
const CONST_ODD_BITS: usize = 96;
const CONST_HALF_MASK: usize = 112;
const CONST_HALF_MAGIC: usize = 128;
const CONST_HALF_MAGIC_256: usize = 144;
const CONST_0F00: usize = 160;
const CONST_00F0: usize = 176;
const CONST_FF00: usize = 192;
const CONST_2048: usize = 208;
const CONST_1000: usize = 224;
const CONST_0100: usize = 240;
const CONST_3000: usize = 256;
const CONST_0300: usize = 272;
const CONST_0F0F: usize = 288;
const CONST_ONES: usize = 304;
const CONST_PAIRS: usize = 320;
const CONST_EVEN_PAIRS: usize = 336;

/** halfHighToF32 with its two constants passed in (loaded once per call from the table). */
// @ts-ignore: decorator
@inline function halfHigh(v: v128, mask: v128, magic: v128): v128 {
  return f32x4.mul(v128.and(i32x4.shr_s(v, 3), mask), magic);
}

/** Four f16 at p0..p3 (same offset) as an f32x4. */
// @ts-ignore: decorator
@inline function half4(p0: usize, p1: usize, p2: usize, p3: usize, mask: v128, magic: v128): v128 {
  let v = v128.load16_lane(p0, mask, 1);
  v = v128.load16_lane(p1, v, 3);
  v = v128.load16_lane(p2, v, 5);
  v = v128.load16_lane(p3, v, 7);
  return halfHigh(v, mask, magic);
}

/** The f16 at p in all four lanes as f32. */
// @ts-ignore: decorator
@inline function halfSplat(p: usize, mask: v128, magic: v128): v128 {
  return halfHigh(v128.load16_splat(p), mask, magic);
}

/** A vector constant from the static table, loaded (once per call when used outside loops). */
// @ts-ignore: decorator
@inline function constant(offset: usize): v128 {
  return v128.load(CONSTS + offset);
}

/** [a0+a2, b0+b2, a1+a3, b1+b3]: the first half of the transpose-add of four rows. */
// @ts-ignore: decorator
@inline function pairAdd(a: v128, b: v128): v128 {
  return i32x4.add(i32x4.shuffle(a, b, 0, 4, 1, 5), i32x4.shuffle(a, b, 2, 6, 3, 7));
}

/** [Σa, Σb, Σc, Σd] from pairAdd(a, b) and pairAdd(c, d). */
// @ts-ignore: decorator
@inline function quadAdd(ab: v128, cd: v128): v128 {
  return i32x4.add(i32x4.shuffle(ab, cd, 0, 1, 4, 5), i32x4.shuffle(ab, cd, 2, 3, 6, 7));
}

/**
 * 256 × the partial sums of a 32-block with 4-bit weights `b` (qs[16]), with the activations
 * prepared by scaledX: each nibble is isolated by one `and` (or shift) in place, and its
 * activation partner carries the missing power of 16 (products come out ×256, exactly).
 */
// @ts-ignore: decorator
@inline function dotNibbles256(
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

/**
 * Partial sums of a 32-block with 5-bit weights: low nibbles in `b`, bit 4 of element j in bit j of
 * `qh`. `eb`/`ob` select bits 0,2,..,14 / 1,3,..,15 of a lane. `hb` is or-ed into lanes whose high
 * bit is set (Q5_1: 16), or, with `clear`, into lanes whose bit is clear (Q5_0: -16, the offset).
 */
// @ts-ignore: decorator
@inline function dotFiveBit(
  b: v128,
  qh: u32,
  m: v128,
  eb: v128,
  ob: v128,
  hb: v128,
  clear: bool,
  xae: v128,
  xao: v128,
  xbe: v128,
  xbo: v128,
): v128 {
  const zero = i32x4.splat(0);
  const lo16 = i16x8.splat(<i16>qh);
  const hi16 = i16x8.splat(<i16>(qh >> 16));
  let we: v128, wo: v128, whe: v128, who: v128;
  if (clear) {
    we = v128.and(i16x8.eq(v128.and(lo16, eb), zero), hb);
    wo = v128.and(i16x8.eq(v128.and(lo16, ob), zero), hb);
    whe = v128.and(i16x8.eq(v128.and(hi16, eb), zero), hb);
    who = v128.and(i16x8.eq(v128.and(hi16, ob), zero), hb);
  } else {
    we = v128.andnot(hb, i16x8.eq(v128.and(lo16, eb), zero));
    wo = v128.andnot(hb, i16x8.eq(v128.and(lo16, ob), zero));
    whe = v128.andnot(hb, i16x8.eq(v128.and(hi16, eb), zero));
    who = v128.andnot(hb, i16x8.eq(v128.and(hi16, ob), zero));
  }
  we = v128.or(we, v128.and(b, m));
  wo = v128.or(wo, v128.and(i16x8.shr_u(b, 8), m));
  whe = v128.or(whe, v128.and(i16x8.shr_u(b, 4), m));
  who = v128.or(who, i16x8.shr_u(b, 12));
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(we, xae), i32x4.dot_i16x8_s(wo, xao)),
    i32x4.add(i32x4.dot_i16x8_s(whe, xbe), i32x4.dot_i16x8_s(who, xbo)),
  );
}

/** Partial sums of a 32-block of int8 weights at p (32 bytes) with x split e/o. */
// @ts-ignore: decorator
@inline function dotInt8(p: usize, xae: v128, xao: v128, xbe: v128, xbo: v128): v128 {
  const a = v128.load(p);
  const b = v128.load(p, 16);
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(evenI8(a), xae), i32x4.dot_i16x8_s(oddI8(a), xao)),
    i32x4.add(i32x4.dot_i16x8_s(evenI8(b), xbe), i32x4.dot_i16x8_s(oddI8(b), xbo)),
  );
}

// Legacy 32-blocks. `kind` selects the weight format (a constant after inlining).
const K_Q4_0: i32 = 0;
const K_Q4_1: i32 = 1;
const K_Q5_0: i32 = 2;
const K_Q5_1: i32 = 3;
const K_Q8_0: i32 = 4;

/** One row's partial sums (i32x4) for a 32-block at p (Q4_0, Q4_1: ×256). */
// @ts-ignore: decorator
@inline function row32(
  kind: i32,
  p: usize,
  m: v128,
  m0f00: v128,
  mf0: v128,
  eb: v128,
  ob: v128,
  hb: v128,
  corr: v128,
  xae: v128,
  xao: v128,
  xbe: v128,
  xbo: v128,
): v128 {
  if (kind == K_Q4_0) return i32x4.sub(dotNibbles256(v128.load(p, 2), m, m0f00, mf0, xae, xao, xbe, xbo), corr);
  if (kind == K_Q4_1) return dotNibbles256(v128.load(p, 4), m, m0f00, mf0, xae, xao, xbe, xbo);
  if (kind == K_Q5_0) return dotFiveBit(v128.load(p, 6), load<u32>(p, 2), m, eb, ob, hb, true, xae, xao, xbe, xbo);
  if (kind == K_Q5_1) return dotFiveBit(v128.load(p, 8), load<u32>(p, 4), m, eb, ob, hb, false, xae, xao, xbe, xbo);
  return dotInt8(p + 2, xae, xao, xbe, xbo);
}

/** Four weight rows (p0..p3, clamped copies for a short group) · one token's x blocks, as f32x4. */
// @ts-ignore: decorator
@inline function dotRows32(
  kind: i32,
  w: usize,
  p0: usize,
  p1: usize,
  p2: usize,
  p3: usize,
  x: usize,
  xq: usize,
  nb: i32,
  wBytes: usize,
  xBytes: usize,
): v128 {
  const nibbles = kind == K_Q4_0 || kind == K_Q4_1;
  const m = constant(CONST_0F);
  const m0f00 = constant(CONST_0F00);
  const mf0 = constant(CONST_00F0);
  const mff00 = constant(CONST_FF00);
  const eb = constant(CONST_EVEN_BITS);
  const ob = constant(CONST_ODD_BITS);
  const hb = constant(kind == K_Q5_0 ? CONST_NEG16 : CONST_10);
  const c2048 = constant(CONST_2048);
  const hmask = constant(CONST_HALF_MASK);
  const hmagic = constant(CONST_HALF_MAGIC);
  // the ×256 of the nibble sums is folded into the activation scale
  const xmagic = constant(nibbles ? CONST_HALF_MAGIC_256 : CONST_HALF_MAGIC);
  let acc = f32x4.splat(0);
  const xqs: usize = kind == K_Q4_1 || kind == K_Q5_1 ? 4 : 2;
  const z = i32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    // The activation block, prepared in a block of its own so that V8 cannot copy the work into
    // each row's block (it duplicates pure values used only in different branches).
    let xae = z, xao = z, xbe = z, xbo = z, corr = z;
    if (x >= xq) {
      const xa = v128.load(x + xqs);
      const xb = v128.load(x + xqs + 16);
      if (nibbles) {
        // 256·x (even elements 0..14), x (odd 1..15), 16·x (even 16..30), 256·x (odd 17..31)
        xae = i16x8.shl(xa, 8);
        xao = i16x8.shr_s(xa, 8);
        xbe = i16x8.shr_s(i16x8.shl(xb, 8), 4);
        xbo = v128.and(xb, mff00);
        // Q4_0: Σ(q-8)x = Σqx - 8Σx; the lanes of corr add up to 256·8Σx
        if (kind == K_Q4_0) {
          corr = i32x4.dot_i16x8_s(
            i16x8.add(i16x8.extadd_pairwise_i8x16_s(xa), i16x8.extadd_pairwise_i8x16_s(xb)),
            c2048,
          );
        }
      } else {
        xae = evenI8(xa);
        xao = oddI8(xa);
        xbe = evenI8(xb);
        xbo = oddI8(xb);
      }
    }
    let s0 = corr;
    let ab = corr;
    let s2 = corr;
    let cd = corr;
    if (p0 >= w) s0 = row32(kind, p0, m, m0f00, mf0, eb, ob, hb, corr, xae, xao, xbe, xbo);
    if (p1 >= w) ab = pairAdd(s0, row32(kind, p1, m, m0f00, mf0, eb, ob, hb, corr, xae, xao, xbe, xbo));
    if (p2 >= w) s2 = row32(kind, p2, m, m0f00, mf0, eb, ob, hb, corr, xae, xao, xbe, xbo);
    if (p3 >= w) cd = pairAdd(s2, row32(kind, p3, m, m0f00, mf0, eb, ob, hb, corr, xae, xao, xbe, xbo));
    const sumi = f32x4.convert_i32x4_s(quadAdd(ab, cd));
    const dx = halfSplat(x, hmask, xmagic);
    if (kind == K_Q4_1 || kind == K_Q5_1) {
      // d and m are adjacent: one u32 per row
      const dm = loadU32x4(p0, p1, p2, p3);
      const dw = halfHigh(i32x4.shl(dm, 16), hmask, hmagic);
      const mw = halfHigh(dm, hmask, hmagic);
      const sx = halfSplat(x + 2, hmask, hmagic);
      acc = f32x4.add(acc, f32x4.mul(sumi, f32x4.mul(dw, dx)));
      acc = f32x4.add(acc, f32x4.mul(mw, sx));
    } else {
      acc = f32x4.add(acc, f32x4.mul(sumi, f32x4.mul(half4(p0, p1, p2, p3, hmask, hmagic), dx)));
    }
    p0 += wBytes;
    p1 += wBytes;
    p2 += wBytes;
    p3 += wBytes;
    x += xBytes;
  }
  return acc;
}

/** Σ w·x partial sums of a 32-block from unpacked weights and prepared activations. */
// @ts-ignore: decorator
@inline function dot4(
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

/**
 * Four weight rows · two tokens (x0 and x0 + xBytes·nb) for Q4_0, Q4_1 and Q8_0: each row's block
 * is unpacked once and used for both tokens. Writes the two tokens' four outputs.
 */
// @ts-ignore: decorator
@inline function dotRows32x2(
  kind: i32,
  w: usize,
  p0: usize,
  p1: usize,
  p2: usize,
  p3: usize,
  x: usize,
  xq: usize,
  nb: i32,
  wBytes: usize,
  xBytes: usize,
  out0: usize,
  out1: usize,
  nr: i32,
  accumulate: i32,
): void {
  const nibbles = kind == K_Q4_0 || kind == K_Q4_1;
  const m = constant(CONST_0F);
  const m0f00 = constant(CONST_0F00);
  const mf0 = constant(CONST_00F0);
  const mff00 = constant(CONST_FF00);
  const c2048 = constant(CONST_2048);
  const hmask = constant(CONST_HALF_MASK);
  const hmagic = constant(CONST_HALF_MAGIC);
  const xmagic = constant(nibbles ? CONST_HALF_MAGIC_256 : CONST_HALF_MAGIC);
  const xqs: usize = kind == K_Q4_1 ? 4 : 2;
  const xRow = <usize>nb * xBytes;
  const z = i32x4.splat(0);
  let acc0 = f32x4.splat(0);
  let acc1 = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    let xae = z, xao = z, xbe = z, xbo = z, corr = z;
    let yae = z, yao = z, ybe = z, ybo = z, corr1 = z;
    if (x >= xq) {
      const xa = v128.load(x + xqs);
      const xb = v128.load(x + xqs + 16);
      const ya = v128.load(x + xRow + xqs);
      const yb = v128.load(x + xRow + xqs + 16);
      if (nibbles) {
        xae = i16x8.shl(xa, 8);
        xao = i16x8.shr_s(xa, 8);
        xbe = i16x8.shr_s(i16x8.shl(xb, 8), 4);
        xbo = v128.and(xb, mff00);
        yae = i16x8.shl(ya, 8);
        yao = i16x8.shr_s(ya, 8);
        ybe = i16x8.shr_s(i16x8.shl(yb, 8), 4);
        ybo = v128.and(yb, mff00);
        if (kind == K_Q4_0) {
          corr = i32x4.dot_i16x8_s(
            i16x8.add(i16x8.extadd_pairwise_i8x16_s(xa), i16x8.extadd_pairwise_i8x16_s(xb)),
            c2048,
          );
          corr1 = i32x4.dot_i16x8_s(
            i16x8.add(i16x8.extadd_pairwise_i8x16_s(ya), i16x8.extadd_pairwise_i8x16_s(yb)),
            c2048,
          );
        }
      } else {
        xae = evenI8(xa);
        xao = oddI8(xa);
        xbe = evenI8(xb);
        xbo = oddI8(xb);
        yae = evenI8(ya);
        yao = oddI8(ya);
        ybe = evenI8(yb);
        ybo = oddI8(yb);
      }
    }
    let s0 = z, ab = z, s2 = z, cd = z;
    let u0 = z, ab1 = z, u2 = z, cd1 = z;
    if (p0 >= w) {
      let we: v128, wo: v128, whe: v128, who: v128;
      if (nibbles) {
        const q = v128.load(p0 + xqs);
        we = v128.and(q, m);
        wo = v128.and(q, m0f00);
        whe = v128.and(q, mf0);
        who = i16x8.shr_u(q, 12);
      } else {
        const qa = v128.load(p0, 2);
        const qb = v128.load(p0, 18);
        we = evenI8(qa);
        wo = oddI8(qa);
        whe = evenI8(qb);
        who = oddI8(qb);
      }
      s0 = i32x4.sub(dot4(we, wo, whe, who, xae, xao, xbe, xbo), corr);
      u0 = i32x4.sub(dot4(we, wo, whe, who, yae, yao, ybe, ybo), corr1);
    }
    if (p1 >= w) {
      let we: v128, wo: v128, whe: v128, who: v128;
      if (nibbles) {
        const q = v128.load(p1 + xqs);
        we = v128.and(q, m);
        wo = v128.and(q, m0f00);
        whe = v128.and(q, mf0);
        who = i16x8.shr_u(q, 12);
      } else {
        const qa = v128.load(p1, 2);
        const qb = v128.load(p1, 18);
        we = evenI8(qa);
        wo = oddI8(qa);
        whe = evenI8(qb);
        who = oddI8(qb);
      }
      ab = pairAdd(s0, i32x4.sub(dot4(we, wo, whe, who, xae, xao, xbe, xbo), corr));
      ab1 = pairAdd(u0, i32x4.sub(dot4(we, wo, whe, who, yae, yao, ybe, ybo), corr1));
    }
    if (p2 >= w) {
      let we: v128, wo: v128, whe: v128, who: v128;
      if (nibbles) {
        const q = v128.load(p2 + xqs);
        we = v128.and(q, m);
        wo = v128.and(q, m0f00);
        whe = v128.and(q, mf0);
        who = i16x8.shr_u(q, 12);
      } else {
        const qa = v128.load(p2, 2);
        const qb = v128.load(p2, 18);
        we = evenI8(qa);
        wo = oddI8(qa);
        whe = evenI8(qb);
        who = oddI8(qb);
      }
      s2 = i32x4.sub(dot4(we, wo, whe, who, xae, xao, xbe, xbo), corr);
      u2 = i32x4.sub(dot4(we, wo, whe, who, yae, yao, ybe, ybo), corr1);
    }
    if (p3 >= w) {
      let we: v128, wo: v128, whe: v128, who: v128;
      if (nibbles) {
        const q = v128.load(p3 + xqs);
        we = v128.and(q, m);
        wo = v128.and(q, m0f00);
        whe = v128.and(q, mf0);
        who = i16x8.shr_u(q, 12);
      } else {
        const qa = v128.load(p3, 2);
        const qb = v128.load(p3, 18);
        we = evenI8(qa);
        wo = oddI8(qa);
        whe = evenI8(qb);
        who = oddI8(qb);
      }
      cd = pairAdd(s2, i32x4.sub(dot4(we, wo, whe, who, xae, xao, xbe, xbo), corr));
      cd1 = pairAdd(u2, i32x4.sub(dot4(we, wo, whe, who, yae, yao, ybe, ybo), corr1));
    }
    const dx0 = halfSplat(x, hmask, xmagic);
    const dx1 = halfSplat(x + xRow, hmask, xmagic);
    if (kind == K_Q4_1) {
      const dm = loadU32x4(p0, p1, p2, p3);
      const dw = halfHigh(i32x4.shl(dm, 16), hmask, hmagic);
      const mw = halfHigh(dm, hmask, hmagic);
      acc0 = f32x4.add(acc0, f32x4.mul(f32x4.convert_i32x4_s(quadAdd(ab, cd)), f32x4.mul(dw, dx0)));
      acc0 = f32x4.add(acc0, f32x4.mul(mw, halfSplat(x + 2, hmask, hmagic)));
      acc1 = f32x4.add(acc1, f32x4.mul(f32x4.convert_i32x4_s(quadAdd(ab1, cd1)), f32x4.mul(dw, dx1)));
      acc1 = f32x4.add(acc1, f32x4.mul(mw, halfSplat(x + xRow + 2, hmask, hmagic)));
    } else {
      const dw = half4(p0, p1, p2, p3, hmask, hmagic);
      acc0 = f32x4.add(acc0, f32x4.mul(f32x4.convert_i32x4_s(quadAdd(ab, cd)), f32x4.mul(dw, dx0)));
      acc1 = f32x4.add(acc1, f32x4.mul(f32x4.convert_i32x4_s(quadAdd(ab1, cd1)), f32x4.mul(dw, dx1)));
    }
    p0 += wBytes;
    p1 += wBytes;
    p2 += wBytes;
    p3 += wBytes;
    x += xBytes;
  }
  storeRows(out0, acc0, nr, accumulate);
  storeRows(out1, acc1, nr, accumulate);
}

/**
 * Q8_0 prefill tile: four weight rows (p0..p3) · four tokens (x and the next three token rows, xRow
 * bytes apart). Each row's block is unpacked once and used for the four tokens; the four tokens'
 * prepared activations are computed once per block (in a block of their own, see dotRows32) and
 * used by the four rows. Per row, the four tokens' partial sums are reduced by the transpose-add to
 * one vector (lanes = tokens) and scaled by dw(row) · dx(tokens) in one multiply. Weights are
 * 256·w (even bytes by `shl 8`, odd ones by `and 0xff00`), activations sign-extended halves; the
 * 1/256 is in the activation scale. (The f16 scale conversions are left where V8 copies them into
 * each row's block: converting once in the activation block measured slower, as it adds values
 * live across the row blocks. The same tile for Q4_0, with the -8 folded into the weights, measured
 * no faster than the two-token path.)
 */
// @ts-ignore: decorator
@inline function dotRows32x4(
  w: usize,
  p0: usize,
  p1: usize,
  p2: usize,
  p3: usize,
  x: usize,
  xq: usize,
  nb: i32,
  wStep: usize,
  out: usize,
  rows: i32,
  nr: i32,
  accumulate: i32,
): void {
  const cff00 = constant(CONST_FF00);
  const hmask = constant(CONST_HALF_MASK);
  const hmagic = constant(CONST_HALF_MAGIC);
  const xmagic = constant(CONST_HALF_MAGIC_256);
  const xRow = <usize>nb * 34;
  const z = i32x4.splat(0);
  let a0 = f32x4.splat(0);
  let a1 = a0;
  let a2 = a0;
  let a3 = a0;
  for (let b = 0; b < nb; b++) {
    const y1 = x + xRow;
    const y2 = y1 + xRow;
    const y3 = y2 + xRow;
    let x00 = z, x01 = z, x02 = z, x03 = z;
    let x10 = z, x11 = z, x12 = z, x13 = z;
    let x20 = z, x21 = z, x22 = z, x23 = z;
    let x30 = z, x31 = z, x32 = z, x33 = z;
    const dx = half4(x, y1, y2, y3, hmask, xmagic);
    const dw = half4(p0, p1, p2, p3, hmask, hmagic);
    if (x >= xq) {
      let va = v128.load(x, 2);
      let vb = v128.load(x, 18);
      x00 = evenI8(va);
      x01 = oddI8(va);
      x02 = evenI8(vb);
      x03 = oddI8(vb);
      va = v128.load(y1, 2);
      vb = v128.load(y1, 18);
      x10 = evenI8(va);
      x11 = oddI8(va);
      x12 = evenI8(vb);
      x13 = oddI8(vb);
      va = v128.load(y2, 2);
      vb = v128.load(y2, 18);
      x20 = evenI8(va);
      x21 = oddI8(va);
      x22 = evenI8(vb);
      x23 = oddI8(vb);
      va = v128.load(y3, 2);
      vb = v128.load(y3, 18);
      x30 = evenI8(va);
      x31 = oddI8(va);
      x32 = evenI8(vb);
      x33 = oddI8(vb);
    }
    if (p0 >= w) {
      const s = tileRowQ8(p0, cff00, x00, x01, x02, x03, x10, x11, x12, x13, x20, x21, x22, x23, x30, x31, x32, x33);
      a0 = f32x4.add(a0, f32x4.mul(f32x4.convert_i32x4_s(s), f32x4.mul(i32x4.shuffle(dw, dw, 0, 0, 0, 0), dx)));
    }
    if (p1 >= w) {
      const s = tileRowQ8(p1, cff00, x00, x01, x02, x03, x10, x11, x12, x13, x20, x21, x22, x23, x30, x31, x32, x33);
      a1 = f32x4.add(a1, f32x4.mul(f32x4.convert_i32x4_s(s), f32x4.mul(i32x4.shuffle(dw, dw, 1, 1, 1, 1), dx)));
    }
    if (p2 >= w) {
      const s = tileRowQ8(p2, cff00, x00, x01, x02, x03, x10, x11, x12, x13, x20, x21, x22, x23, x30, x31, x32, x33);
      a2 = f32x4.add(a2, f32x4.mul(f32x4.convert_i32x4_s(s), f32x4.mul(i32x4.shuffle(dw, dw, 2, 2, 2, 2), dx)));
    }
    if (p3 >= w) {
      const s = tileRowQ8(p3, cff00, x00, x01, x02, x03, x10, x11, x12, x13, x20, x21, x22, x23, x30, x31, x32, x33);
      a3 = f32x4.add(a3, f32x4.mul(f32x4.convert_i32x4_s(s), f32x4.mul(i32x4.shuffle(dw, dw, 3, 3, 3, 3), dx)));
    }
    p0 += wStep;
    p1 += wStep;
    p2 += wStep;
    p3 += wStep;
    x += 34;
  }
  storeTokens4(a0, a1, a2, a3, out, rows, nr, accumulate);
}

/** One Q8_0 weight row's block at p · four tokens' prepared activations: [t0, t1, t2, t3] sums ×256. */
// @ts-ignore: decorator
@inline function tileRowQ8(
  p: usize,
  cff00: v128,
  x00: v128, x01: v128, x02: v128, x03: v128,
  x10: v128, x11: v128, x12: v128, x13: v128,
  x20: v128, x21: v128, x22: v128, x23: v128,
  x30: v128, x31: v128, x32: v128, x33: v128,
): v128 {
  const qa = v128.load(p, 2);
  const qb = v128.load(p, 18);
  const w0 = i16x8.shl(qa, 8);
  const w1 = v128.and(qa, cff00);
  const w2 = i16x8.shl(qb, 8);
  const w3 = v128.and(qb, cff00);
  return quadAdd(
    pairAdd(dot4(w0, w1, w2, w3, x00, x01, x02, x03), dot4(w0, w1, w2, w3, x10, x11, x12, x13)),
    pairAdd(dot4(w0, w1, w2, w3, x20, x21, x22, x23), dot4(w0, w1, w2, w3, x30, x31, x32, x33)),
  );
}

// ---------------------------------------------------------------------------------------------
// Relaxed SIMD (kernels-relaxed.wasm only): Q4_0 with an 8-bit dot product
// ---------------------------------------------------------------------------------------------
//
// `i16x8.relaxed_dot_i8x16_i7x16_s(a, b)` multiplies signed bytes of a by bytes of b and adds
// adjacent pairs into i16 lanes (x64: one pmaddubsw). Its result is fixed wherever b's bytes are
// in [0, 127]: Q4_0's nibbles are in [0, 15], so they go in as b, unshifted, and the int8
// activations as a. A pair sum is at most 2·15·127, a lane of two added dots at most 7620, so no
// i16 lane saturates, and `i32x4.dot_i16x8_s` with ones widens the lanes to four i32 sums. The
// block sums are the same integers as the plain kernels', and the float work after them (×256,
// the scales, the accumulation order) is the same too, so both modules give the same bits.
// (The fused i32x4.relaxed_dot_i8x16_i7x16_add_s is avoided: V8 11 in Node 20 returns twice the
// dot product on x64.)

/** Partial sums (i32x4) of Σ q·x over a Q4_0 block: qs at p, activation halves xa (0..15) and xb (16..31). */
// @ts-ignore: decorator
@inline function dotQ4Relaxed(p: usize, nib: v128, ones: v128, xa: v128, xb: v128): v128 {
  const q = v128.load(p, 2);
  const lo = v128.and(q, nib);
  const hi = v128.and(i16x8.shr_u(q, 4), nib);
  return i32x4.dot_i16x8_s(
    i16x8.add(i16x8.relaxed_dot_i8x16_i7x16_s(xa, lo), i16x8.relaxed_dot_i8x16_i7x16_s(xb, hi)),
    ones,
  );
}

/** dotRows32 for Q4_0 with the relaxed dot: four weight rows · one token, as f32x4. */
// @ts-ignore: decorator
@inline function dotRowsQ4Relaxed(
  w: usize, p0: usize, p1: usize, p2: usize, p3: usize, x: usize, xq: usize, nb: i32, wStep: usize,
): v128 {
  const nib = constant(CONST_0F0F);
  const ones = constant(CONST_ONES);
  const c8 = constant(CONST_8);
  const hmask = constant(CONST_HALF_MASK);
  const hmagic = constant(CONST_HALF_MAGIC);
  const xmagic = constant(CONST_HALF_MAGIC_256);
  const z = i32x4.splat(0);
  let acc = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    let xa = z, xb = z, corr = z;
    if (x >= xq) {
      xa = v128.load(x, 2);
      xb = v128.load(x, 18);
      // lanes add up to 8·Σx: Σ(q-8)x = Σqx - 8Σx
      corr = i32x4.dot_i16x8_s(i16x8.add(i16x8.extadd_pairwise_i8x16_s(xa), i16x8.extadd_pairwise_i8x16_s(xb)), c8);
    }
    let s0 = z, ab = z, s2 = z, cd = z;
    if (p0 >= w) s0 = i32x4.sub(dotQ4Relaxed(p0, nib, ones, xa, xb), corr);
    if (p1 >= w) ab = pairAdd(s0, i32x4.sub(dotQ4Relaxed(p1, nib, ones, xa, xb), corr));
    if (p2 >= w) s2 = i32x4.sub(dotQ4Relaxed(p2, nib, ones, xa, xb), corr);
    if (p3 >= w) cd = pairAdd(s2, i32x4.sub(dotQ4Relaxed(p3, nib, ones, xa, xb), corr));
    // ×256 as in the plain kernel (exact: |Σ(q-8)x| <= 32·8·127), then the same scaling
    const sumi = f32x4.convert_i32x4_s(i32x4.shl(quadAdd(ab, cd), 8));
    acc = f32x4.add(acc, f32x4.mul(sumi, f32x4.mul(half4(p0, p1, p2, p3, hmask, hmagic), halfSplat(x, hmask, xmagic))));
    p0 += wStep;
    p1 += wStep;
    p2 += wStep;
    p3 += wStep;
    x += 34;
  }
  return acc;
}

/**
 * Four Q4_0 weight rows · four tokens with the relaxed dot (x and the next three token rows).
 * Lanes are tokens until the end, as in dotRows32x4; every lane does the single-token kernel's
 * float operations on the same values, so each token gets dotRowsQ4Relaxed's bits.
 */
// @ts-ignore: decorator
@inline function dotRowsQ4Relaxedx4(
  w: usize, p0: usize, p1: usize, p2: usize, p3: usize, x: usize, xq: usize, nb: i32, wStep: usize,
  out: usize, rows: i32, nr: i32, accumulate: i32,
): void {
  const nib = constant(CONST_0F0F);
  const ones = constant(CONST_ONES);
  const c8 = constant(CONST_8);
  const hmask = constant(CONST_HALF_MASK);
  const hmagic = constant(CONST_HALF_MAGIC);
  const xmagic = constant(CONST_HALF_MAGIC_256);
  const xRow = <usize>nb * 34;
  const z = i32x4.splat(0);
  let a0 = f32x4.splat(0);
  let a1 = a0;
  let a2 = a0;
  let a3 = a0;
  for (let b = 0; b < nb; b++) {
    const y1 = x + xRow;
    const y2 = y1 + xRow;
    const y3 = y2 + xRow;
    let corr = z;
    let dx = z;
    if (x >= xq) {
      // the four tokens' 8·Σx in one vector (lanes = tokens)
      corr = quadAdd(
        pairAdd(sumX8(x, c8), sumX8(y1, c8)),
        pairAdd(sumX8(y2, c8), sumX8(y3, c8)),
      );
      dx = half4(x, y1, y2, y3, hmask, xmagic);
    }
    const dw = half4(p0, p1, p2, p3, hmask, hmagic);
    if (p0 >= w) a0 = f32x4.add(a0, f32x4.mul(tileRowQ4Relaxed(p0, nib, ones, x, y1, y2, y3, corr), f32x4.mul(i32x4.shuffle(dw, dw, 0, 0, 0, 0), dx)));
    if (p1 >= w) a1 = f32x4.add(a1, f32x4.mul(tileRowQ4Relaxed(p1, nib, ones, x, y1, y2, y3, corr), f32x4.mul(i32x4.shuffle(dw, dw, 1, 1, 1, 1), dx)));
    if (p2 >= w) a2 = f32x4.add(a2, f32x4.mul(tileRowQ4Relaxed(p2, nib, ones, x, y1, y2, y3, corr), f32x4.mul(i32x4.shuffle(dw, dw, 2, 2, 2, 2), dx)));
    if (p3 >= w) a3 = f32x4.add(a3, f32x4.mul(tileRowQ4Relaxed(p3, nib, ones, x, y1, y2, y3, corr), f32x4.mul(i32x4.shuffle(dw, dw, 3, 3, 3, 3), dx)));
    p0 += wStep;
    p1 += wStep;
    p2 += wStep;
    p3 += wStep;
    x += 34;
  }
  storeTokens4(a0, a1, a2, a3, out, rows, nr, accumulate);
}

/** i32x4 lanes adding up to 8·Σx over the Q8_0 block at x. */
// @ts-ignore: decorator
@inline function sumX8(x: usize, c8: v128): v128 {
  return i32x4.dot_i16x8_s(
    i16x8.add(i16x8.extadd_pairwise_i8x16_s(v128.load(x, 2)), i16x8.extadd_pairwise_i8x16_s(v128.load(x, 18))),
    c8,
  );
}

/**
 * One Q4_0 row's block at p · four tokens' x blocks: 256·Σ(q-8)x as f32 per token (lanes = tokens).
 * The four tokens' i16 partial sums are added pairwise across tokens while still i16 (each lane
 * then sums at most 16 products of |q·x| <= 15·127, so at most 30480: no overflow), and one
 * widening dot with ones finishes all four sums.
 */
// @ts-ignore: decorator
@inline function tileRowQ4Relaxed(
  p: usize, nib: v128, ones: v128, x0: usize, x1: usize, x2: usize, x3: usize, corr: v128,
): v128 {
  const q = v128.load(p, 2);
  const lo = v128.and(q, nib);
  const hi = v128.and(i16x8.shr_u(q, 4), nib);
  const v0 = i16x8.add(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(x0, 2), lo), i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(x0, 18), hi));
  const v1 = i16x8.add(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(x1, 2), lo), i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(x1, 18), hi));
  const v2 = i16x8.add(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(x2, 2), lo), i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(x2, 18), hi));
  const v3 = i16x8.add(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(x3, 2), lo), i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(x3, 18), hi));
  // [t0 ×4, t1 ×4] and [t2 ×4, t3 ×4], then [t0 ×2, t1 ×2, t2 ×2, t3 ×2]
  const v01 = i16x8.add(i64x2.shuffle(v0, v1, 0, 2), i64x2.shuffle(v0, v1, 1, 3));
  const v23 = i16x8.add(i64x2.shuffle(v2, v3, 0, 2), i64x2.shuffle(v2, v3, 1, 3));
  const v = i16x8.add(i32x4.shuffle(v01, v23, 0, 2, 4, 6), i32x4.shuffle(v01, v23, 1, 3, 5, 7));
  return f32x4.convert_i32x4_s(i32x4.shl(i32x4.sub(i32x4.dot_i16x8_s(v, ones), corr), 8));
}

/**
 * The shared loop of the 32-block matrix products. Rows are stored one after another, or, with
 * `interleaved`, four rows' blocks in turn (row group g holds block 0 of rows 4g..4g+3, then block
 * 1, ...; see interleaveRows4), so that the four rows a tile reads come from memory as one
 * sequential stream, which the hardware prefetcher follows far better than four. The arithmetic is
 * the same either way, and so are the bits.
 */
// @ts-ignore: decorator
@inline function matmul32(
  kind: i32,
  wBytes: usize,
  xBytes: usize,
  w: usize,
  xq: usize,
  out: usize,
  rows: i32,
  cols: i32,
  n: i32,
  acc: i32,
  r0: i32,
  r1: i32,
  interleaved: bool,
): void {
  const nb = cols >> 5;
  const wRow = <usize>nb * wBytes;
  const xRow = <usize>nb * xBytes;
  // distance between a row's consecutive blocks, and between the rows of a group
  const wStep: usize = interleaved ? 4 * wBytes : wBytes;
  const rowStep: usize = interleaved ? wBytes : wRow;
  for (let t0 = 0; t0 < n; t0 += TOKEN_CHUNK) {
    const t1 = min(n, t0 + TOKEN_CHUNK);
    for (let r = r0; r < r1; r += 4) {
      const nr = min(4, r1 - r);
      const p0 = w + <usize>r * wRow;
      const p1 = nr > 1 ? p0 + rowStep : p0;
      const p2 = nr > 2 ? p0 + 2 * rowStep : p0;
      const p3 = nr > 3 ? p0 + 3 * rowStep : p0;
      let t = t0;
      if (ASC_FEATURE_RELAXED_SIMD && kind == K_Q4_0) {
        for (; t + 4 <= t1; t += 4) {
          const o = out + ((<usize>t * <usize>rows + <usize>r) << 2);
          dotRowsQ4Relaxedx4(w, p0, p1, p2, p3, xq + <usize>t * xRow, xq, nb, wStep, o, rows, nr, acc);
        }
        for (; t < t1; t++) {
          const v = dotRowsQ4Relaxed(w, p0, p1, p2, p3, xq + <usize>t * xRow, xq, nb, wStep);
          storeRows(out + ((<usize>t * <usize>rows + <usize>r) << 2), v, nr, acc);
        }
        continue;
      }
      if (kind == K_Q8_0) {
        // four tokens share each unpacked weight block
        for (; t + 4 <= t1; t += 4) {
          const o = out + ((<usize>t * <usize>rows + <usize>r) << 2);
          dotRows32x4(w, p0, p1, p2, p3, xq + <usize>t * xRow, xq, nb, wStep, o, rows, nr, acc);
        }
      }
      if (kind == K_Q4_0 || kind == K_Q4_1 || kind == K_Q8_0) {
        // pairs of tokens share each unpacked weight block
        for (; t + 2 <= t1; t += 2) {
          const o = out + ((<usize>t * <usize>rows + <usize>r) << 2);
          dotRows32x2(kind, w, p0, p1, p2, p3, xq + <usize>t * xRow, xq, nb, wStep, xBytes, o, o + (<usize>rows << 2), nr, acc);
        }
      }
      for (; t < t1; t++) {
        const v = dotRows32(kind, w, p0, p1, p2, p3, xq + <usize>t * xRow, xq, nb, wStep, xBytes);
        storeRows(out + ((<usize>t * <usize>rows + <usize>r) << 2), v, nr, acc);
      }
    }
  }
}

/**
 * Rewrites row groups [r0, r1) (rows = groups of four rows) of a matrix of rowBytes-long rows of
 * blockBytes blocks into the interleaved layout of matmul32: block b of row j of a group goes to
 * (4·b + j)·blockBytes from the group's start. Each thread copies its group to scratch +
 * tid·scratchStride (4·rowBytes bytes) first. Done once, when a model is loaded.
 */
export function interleaveRows4(
  w: usize, rowBytes: i32, blockBytes: i32, scratch: usize, scratchStride: i32, r0: i32, r1: i32, tid: i32,
): void {
  const rb = <usize>rowBytes;
  const bb = <usize>blockBytes;
  const tmp = scratch + <usize>tid * <usize>scratchStride;
  const nb = rb / bb;
  for (let g = r0; g < r1; g++) {
    const p = w + <usize>g * 4 * rb;
    memory.copy(tmp, p, 4 * rb);
    for (let b: usize = 0; b < nb; b++) {
      for (let j: usize = 0; j < 4; j++) copyBlock(p + (4 * b + j) * bb, tmp + j * rb + b * bb, bb);
    }
  }
}

/** Copies n bytes (a weight block) with vector moves: memory.copy costs a runtime call per block in V8. */
// @ts-ignore: decorator
@inline function copyBlock(dst: usize, src: usize, n: usize): void {
  let o: usize = 0;
  for (; o + 16 <= n; o += 16) v128.store(dst + o, v128.load(src + o));
  for (; o + 4 <= n; o += 4) store<u32>(dst + o, load<u32>(src + o));
  for (; o < n; o++) store<u8>(dst + o, load<u8>(src + o));
}

export function matmulQ4_0(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmul32(K_Q4_0, 18, 34, w, xq, out, rows, cols, n, acc, r0, r1, false);
}

/** matmulQ4_0 on weights in the interleaved layout (interleaveRows4); rows % 4 == 0. */
export function matmulQ4_0x4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmul32(K_Q4_0, 18, 34, w, xq, out, rows, cols, n, acc, r0, r1, true);
}

// ---------------------------------------------------------------------------------------------
// Q4_0 in the row-lane layout (kernels-relaxed.wasm): lanes are weight rows, not tokens
// ---------------------------------------------------------------------------------------------
//
// repackQ4_0r4 rewrites each interleaved group of four rows (interleaveRows4) so that block b of
// the group holds the four rows' f16 scales (8 bytes), then four vectors Q0..Q3 where Qj is the
// 4-byte word j of each row's qs in turn (a 4×4 transpose of 32-bit words; 72 bytes, as before).
// The low nibbles of Qj are then elements 4j..4j+3 of rows 0..3, its high nibbles elements
// 16+4j..16+4j+3: one relaxed 8-bit dot of a nibble vector with a token's four activations in
// every 32-bit lane (a 4-byte splat) gives each row's partial sum in its own 32-bit lane pair.
// A token's eight dots add up in i16 (each lane sums 16 products |q·x| <= 15·127: at most 30480),
// one widening dot makes them the four rows' sums, and no reduction across lanes is left. The
// activations come as Q8_0S blocks, whose scale and 8·Σx are stored ready to splat.

/** Q8_0S blocks (40 bytes: f32 scale/256, i32 8·Σq, 32 × i8 q) of tokens [r0, r1); see quantizeQ8_0. */
export function quantizeQ8_0S(x: usize, xq: usize, cols: i32, n: i32, r0: i32, r1: i32): void {
  const nb = cols >> 5;
  const hmask = constant(CONST_HALF_MASK);
  const hmagic = constant(CONST_HALF_MAGIC);
  for (let t = r0; t < r1; t++) {
    let px = x + <usize>t * <usize>cols * 4;
    let pq = xq + <usize>t * <usize>nb * 40;
    for (let b = 0; b < nb; b++) {
      const r = quantize32(px, pq + 8);
      // the f16 Q8_0 stores, as the products read it (halfSplat with the /256 magic)
      const h = <i32>f32ToHalf(f32x4.extract_lane(r, 0));
      store<f32>(pq, f32x4.extract_lane(halfHigh(i32x4.splat(h << 16), hmask, hmagic), 0));
      store<i32>(pq, i32x4.extract_lane(r, 1) << 3, 4);
      px += 128;
      pq += 40;
    }
  }
}

/** Rewrites row groups [r0, r1) of an interleaved Q4_0 matrix (interleaveRows4) in place into the row-lane layout. */
export function repackQ4_0r4(w: usize, cols: i32, r0: i32, r1: i32): void {
  const nb = cols >> 5;
  for (let g = r0; g < r1; g++) {
    let p = w + <usize>g * <usize>nb * 72;
    for (let b = 0; b < nb; b++) {
      const h0 = load<u16>(p);
      const h1 = load<u16>(p, 18);
      const h2 = load<u16>(p, 36);
      const h3 = load<u16>(p, 54);
      const r0q = v128.load(p, 2);
      const r1q = v128.load(p, 20);
      const r2q = v128.load(p, 38);
      const r3q = v128.load(p, 56);
      const t01l = i32x4.shuffle(r0q, r1q, 0, 4, 1, 5);
      const t23l = i32x4.shuffle(r2q, r3q, 0, 4, 1, 5);
      const t01h = i32x4.shuffle(r0q, r1q, 2, 6, 3, 7);
      const t23h = i32x4.shuffle(r2q, r3q, 2, 6, 3, 7);
      store<u16>(p, h0);
      store<u16>(p, h1, 2);
      store<u16>(p, h2, 4);
      store<u16>(p, h3, 6);
      v128.store(p, i64x2.shuffle(t01l, t23l, 0, 2), 8);
      v128.store(p, i64x2.shuffle(t01l, t23l, 1, 3), 24);
      v128.store(p, i64x2.shuffle(t01h, t23h, 0, 2), 40);
      v128.store(p, i64x2.shuffle(t01h, t23h, 1, 3), 56);
      p += 72;
    }
  }
}

/**
 * matmulQ4_0 on weights in the row-lane layout (repackQ4_0r4), activations as Q8_0S; rows % 4 == 0.
 * Each token gets matmulQ4_0's bits: the same integer sums, then the same float operations.
 */
export function matmulQ4_0r4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulR4(R4_Q4_0, w, xq, out, rows, cols, n, acc, r0, r1);
}

const R4_Q4_0: i32 = 0;
const R4_Q4_K: i32 = 1;
const R4_Q6_K: i32 = 2;
const R4_Q5_K: i32 = 3;

/**
 * The shared loop of the row-lane products: for each chunk of tokens, each group of four rows
 * runs its tile over four tokens at a time, then one at a time.
 */
// @ts-ignore: decorator
@inline function matmulR4(kind: i32, w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  // (the plain module has no 8-bit dot: the backend uses these layouts only with the relaxed one)
  if (!ASC_FEATURE_RELAXED_SIMD) unreachable();
  else {
    const nb = kind == R4_Q4_0 ? cols >> 5 : cols >> 8;
    const wBytes: usize = kind == R4_Q4_0 ? 18 : kind == R4_Q4_K ? 144 : kind == R4_Q5_K ? 176 : 210;
    const xRow = <usize>nb * (kind == R4_Q4_0 ? 40 : 292);
    const step = <usize>rows << 2;
    for (let t0 = 0; t0 < n; t0 += TOKEN_CHUNK) {
      const t1 = min(n, t0 + TOKEN_CHUNK);
      for (let r = r0; r < r1; r += 4) {
        const pg = w + <usize>r * <usize>nb * wBytes;
        let t = t0;
        for (; t + 4 <= t1; t += 4) {
          const x = xq + <usize>t * xRow;
          const o = out + <usize>t * step + (<usize>r << 2);
          if (kind == R4_Q4_0) q4r4Tokens(4, pg, x, xRow, nb, o, step, acc);
          else if (kind == R4_Q4_K) k45r4Tokens(false, 4, pg, x, xRow, nb, o, step, acc);
          else if (kind == R4_Q5_K) k45r4Tokens(true, 4, pg, x, xRow, nb, o, step, acc);
          else k6r4Tokens(4, pg, x, xRow, nb, o, step, acc);
        }
        for (; t < t1; t++) {
          const x = xq + <usize>t * xRow;
          const o = out + <usize>t * step + (<usize>r << 2);
          if (kind == R4_Q4_0) q4r4Tokens(1, pg, x, xRow, nb, o, step, acc);
          else if (kind == R4_Q4_K) k45r4Tokens(false, 1, pg, x, xRow, nb, o, step, acc);
          else if (kind == R4_Q5_K) k45r4Tokens(true, 1, pg, x, xRow, nb, o, step, acc);
          else k6r4Tokens(1, pg, x, xRow, nb, o, step, acc);
        }
      }
    }
  }
}

/** Four rows' f16 scales, consecutive at p, as f32 lanes. */
// @ts-ignore: decorator
@inline function rowScales4(p: usize, hmask: v128, hmagic: v128): v128 {
  const d = v128.load64_zero(p);
  return halfHigh(i8x16.shuffle(d, d, 0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7), hmask, hmagic);
}

/** i16 partial sums of q·x for word j's low (elements 4j..) and high (16+4j..) nibbles `lo`, `hi` and the token at x. */
// @ts-ignore: decorator
@inline function q4r4Word(x: usize, j: usize, lo: v128, hi: v128): v128 {
  return i16x8.add(
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x + 4 * j, 8), lo),
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x + 4 * j, 24), hi),
  );
}

/** The float term of one block for one token: 256·(Σqx - 8Σx) · (dw · dx), from the i16 sums s. */
// @ts-ignore: decorator
@inline function q4r4Term(s: v128, x: usize, ones: v128, dw: v128): v128 {
  const sumi = f32x4.convert_i32x4_s(i32x4.sub(i32x4.dot_i16x8_s(s, ones), v128.load32_splat(x, 4)));
  return f32x4.mul(sumi, f32x4.mul(dw, v128.load32_splat(x)));
}

/** Four row-lane Q4_0 rows · nt tokens (1 or 4; Q8_0S rows xRow apart): out rows step apart. */
// @ts-ignore: decorator
@inline function q4r4Tokens(nt: i32, p: usize, x: usize, xRow: usize, nb: i32, out: usize, step: usize, acc: i32): void {
  const hmask = constant(CONST_HALF_MASK);
  const hmagic = constant(CONST_HALF_MAGIC);
  const z = i32x4.splat(0);
  let a0 = f32x4.splat(0);
  let a1 = a0;
  let a2 = a0;
  let a3 = a0;
  for (let b = 0; b < nb; b++) {
    const x1 = x + xRow;
    const x2 = x1 + xRow;
    const x3 = x2 + xRow;
    const nib = constant(CONST_0F0F);
    let q = v128.load(p, 8);
    let lo = v128.and(q, nib);
    let hi = v128.and(i16x8.shr_u(q, 4), nib);
    let s0 = q4r4Word(x, 0, lo, hi);
    let s1 = z, s2 = z, s3 = z;
    if (nt > 1) {
      s1 = q4r4Word(x1, 0, lo, hi);
      s2 = q4r4Word(x2, 0, lo, hi);
      s3 = q4r4Word(x3, 0, lo, hi);
    }
    for (let j: usize = 1; j < 4; j++) {
      q = v128.load(p + 16 * j, 8);
      lo = v128.and(q, nib);
      hi = v128.and(i16x8.shr_u(q, 4), nib);
      s0 = i16x8.add(s0, q4r4Word(x, j, lo, hi));
      if (nt > 1) {
        s1 = i16x8.add(s1, q4r4Word(x1, j, lo, hi));
        s2 = i16x8.add(s2, q4r4Word(x2, j, lo, hi));
        s3 = i16x8.add(s3, q4r4Word(x3, j, lo, hi));
      }
    }
    const ones = constant(CONST_ONES);
    const dw = rowScales4(p, hmask, hmagic);
    a0 = f32x4.add(a0, q4r4Term(s0, x, ones, dw));
    if (nt > 1) {
      a1 = f32x4.add(a1, q4r4Term(s1, x1, ones, dw));
      a2 = f32x4.add(a2, q4r4Term(s2, x2, ones, dw));
      a3 = f32x4.add(a3, q4r4Term(s3, x3, ones, dw));
    }
    p += 72;
    x += 40;
  }
  storeTile(nt, out, step, a0, a1, a2, a3, acc);
}

/** A row-lane tile's results: token t's four rows (a0..a3) at out + t·step, for the first nt tokens. */
// @ts-ignore: decorator
@inline function storeTile(nt: i32, out: usize, step: usize, a0: v128, a1: v128, a2: v128, a3: v128, acc: i32): void {
  storeRows(out, a0, 4, acc);
  if (nt > 1) {
    storeRows(out + step, a1, 4, acc);
    storeRows(out + 2 * step, a2, 4, acc);
    storeRows(out + 3 * step, a3, 4, acc);
  }
}

// ---------------------------------------------------------------------------------------------
// Q4_K and Q5_K in the row-lane layout (kernels-relaxed.wasm)
// ---------------------------------------------------------------------------------------------
//
// The same idea as Q4_0's r4 for the super-blocks of Q4_K, still 576 bytes per four rows:
//   0: the four rows' d (f16), 8: their dmin (f16),
//   16: A, 32: B — the low 4 bits of the 6-bit scales and mins: scale j of row r is index 4j + r
//       of A, min j of row r index 8(j >> 1) + 2r + (j & 1) of B; index i < 16 is the low
//       nibble of byte i, index 16 + i its high nibble,
//   48: C — their high 2 bits: byte i holds (scale i, scale 16+i, min i, min 16+i) in bit pairs,
//   64: 32 nibble vectors, (chunk c, word w) at 64 + 16·(8c + w): byte 4r + i is byte
//       32c + 4w + i of row r's qs (low nibbles: elements 64c + 4w + i, high: 64c + 32 + 4w + i),
//   and for Q5_K (704 bytes) 576: 8 vectors of fifth bits, bit w of byte 4r + i of vector j
//       belonging to element 32j + 4w + i of row r (a lane then holds 8 products of 31·127 at most,
//       so Q5_K widens every four dots).
// Sub-block j's eight relaxed dots add up in i16 (16 products of 15·127 at most per lane), and a
// widening dot with the row's scale in both lanes of its pair gives sc·Σq·x per row. The mins
// dot the activations' 32-sums (from Q8_K's bsums) two sub-blocks at a time. The integers are
// matmulQ4_K's, and so is the float work after them: the same bits.

/**
 * Rewrites row groups [r0, r1) of a row-major Q4_K matrix in place into the row-lane layout; each
 * thread copies its group to scratch + tid·scratchStride (4 rows' bytes) first. Done once, at load.
 */
export function repackQ4_Kr4(w: usize, cols: i32, scratch: usize, scratchStride: i32, r0: i32, r1: i32, tid: i32): void {
  repackK45r4(false, w, cols, scratch, scratchStride, r0, r1, tid);
}

/** repackQ4_Kr4 for Q5_K, whose row-lane super-block adds the high bits (704 bytes per four rows). */
export function repackQ5_Kr4(w: usize, cols: i32, scratch: usize, scratchStride: i32, r0: i32, r1: i32, tid: i32): void {
  repackK45r4(true, w, cols, scratch, scratchStride, r0, r1, tid);
}

// @ts-ignore: decorator
@inline function repackK45r4(
  five: bool, w: usize, cols: i32, scratch: usize, scratchStride: i32, r0: i32, r1: i32, tid: i32,
): void {
  const bytes: usize = five ? 176 : 144;
  const qs: usize = five ? 48 : 16;
  const nb = <usize>(cols >> 8);
  const rb = nb * bytes;
  const tmp = scratch + <usize>tid * <usize>scratchStride;
  for (let g = r0; g < r1; g++) {
    const p = w + <usize>g * 4 * rb;
    memory.copy(tmp, p, 4 * rb);
    for (let b: usize = 0; b < nb; b++) {
      const dst = p + b * 4 * bytes;
      for (let r: usize = 0; r < 4; r++) {
        const src = tmp + r * rb + b * bytes;
        store<u16>(dst + 2 * r, load<u16>(src));
        store<u16>(dst + 8 + 2 * r, load<u16>(src, 2));
      }
      // the 64 six-bit values: scales at index 4j + r, mins at 8(j >> 1) + 2r + (j & 1)
      memory.fill(dst + 16, 0, 48);
      for (let r: usize = 0; r < 4; r++) {
        const sc = tmp + r * rb + b * bytes + 4;
        for (let j: usize = 0; j < 8; j++) {
          let scale: u32, min: u32;
          if (j < 4) {
            scale = load<u8>(sc + j) & 63;
            min = load<u8>(sc + j + 4) & 63;
          } else {
            scale = (load<u8>(sc + j + 4) & 0xf) | ((load<u8>(sc + j - 4) >> 6) << 4);
            min = (load<u8>(sc + j + 4) >> 4) | ((load<u8>(sc + j) >> 6) << 4);
          }
          k4Put(dst, 16, 0, 4 * j + r, scale);
          k4Put(dst, 32, 4, 8 * (j >> 1) + 2 * r + (j & 1), min);
        }
      }
      for (let c: usize = 0; c < 4; c++) {
        for (let wd: usize = 0; wd < 8; wd++) {
          for (let r: usize = 0; r < 4; r++) {
            store<u32>(dst + 64 + 16 * (8 * c + wd) + 4 * r, load<u32>(tmp + r * rb + b * bytes + qs + 32 * c + 4 * wd));
          }
        }
      }
      if (five) {
        // sub-block j's high bits: bit wd of byte 4r + i is the one of element 32j + 4wd + i of row r
        // (in Q5_K, bit j of qh[l] belongs to element 64·(j >> 1) + 32·(j & 1) + l)
        memory.fill(dst + 576, 0, 128);
        for (let r: usize = 0; r < 4; r++) {
          const qh = tmp + r * rb + b * bytes + 16;
          for (let j: usize = 0; j < 8; j++) {
            for (let l: usize = 0; l < 32; l++) {
              const bit = (<u32>load<u8>(qh + l) >> <u32>j) & 1;
              const at = dst + 576 + 16 * j + 4 * r + (l & 3);
              store<u8>(at, load<u8>(at) | <u8>(bit << <u32>(l >> 2)));
            }
          }
        }
      }
    }
  }
}

/** Stores six-bit value v at index i of the nibble vector at dst + lowAt, its high bits in C (bit pair base). */
// @ts-ignore: decorator
@inline function k4Put(dst: usize, lowAt: usize, pairBase: u32, i: usize, v: u32): void {
  const byte = i & 15;
  const high: u32 = i >= 16 ? 1 : 0;
  store<u8>(dst + lowAt + byte, load<u8>(dst + lowAt + byte) | <u8>((v & 15) << (4 * high)));
  store<u8>(dst + 48 + byte, load<u8>(dst + 48 + byte) | <u8>((v >> 4) << (pairBase + 2 * high)));
}

/** matmulQ4_K on weights in the row-lane layout (repackQ4_Kr4), Q8_K activations; rows % 4 == 0. */
export function matmulQ4_Kr4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulR4(R4_Q4_K, w, xq, out, rows, cols, n, acc, r0, r1);
}

/** matmulQ5_K on weights in the row-lane layout (repackQ5_Kr4), Q8_K activations; rows % 4 == 0. */
export function matmulQ5_Kr4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulR4(R4_Q5_K, w, xq, out, rows, cols, n, acc, r0, r1);
}

/** Four row-lane Q4_K (Q5_K with `five`) rows · nt tokens (1 or 4; Q8_K rows xRow apart): out rows step apart. */
// @ts-ignore: decorator
@inline function k45r4Tokens(
  five: bool, nt: i32, p: usize, x: usize, xRow: usize, nb: i32, out: usize, step: usize, acc: i32,
): void {
  const hmask = constant(CONST_HALF_MASK);
  const hmagic = constant(CONST_HALF_MAGIC);
  const z = i32x4.splat(0);
  let a0 = f32x4.splat(0);
  let a1 = a0;
  let a2 = a0;
  let a3 = a0;
  for (let b = 0; b < nb; b++) {
    const x1 = x + xRow;
    const x2 = x1 + xRow;
    const x3 = x2 + xRow;
    const lowBits = constant(CONST_0F0F);
    // the scales: low nibbles of A, then its high nibbles, each with its bit pair from C
    const sa = v128.load(p, 16);
    const sc = v128.load(p, 48);
    const mask3 = i8x16.splat(3);
    const sLo = v128.or(v128.and(sa, lowBits), i8x16.shl(v128.and(sc, mask3), 4));
    const sHi = v128.or(v128.and(i16x8.shr_u(sa, 4), lowBits), i8x16.shl(v128.and(i8x16.shr_u(sc, 2), mask3), 4));
    let u0 = z, u1 = z, u2 = z, u3 = z;
    // chunk c: sub-blocks 2c (its vectors' low nibbles) and 2c + 1 (high nibbles), whose scales
    // are bytes 4(2c & 3).. and 4((2c + 1) & 3).. of sLo (c < 2) or sHi, as i16 pairs
    let idx = constant(CONST_PAIRS);
    for (let c: usize = 0; c < 4; c++) {
      const q = p + 64 + 128 * c;
      const xo: usize = 4 + 64 * c;
      const src = c < 2 ? sLo : sHi;
      const scLo = i8x16.swizzle(src, idx);
      const scHi = i8x16.swizzle(src, i8x16.add(idx, i8x16.splat(4)));
      idx = c == 1 ? constant(CONST_PAIRS) : i8x16.add(idx, i8x16.splat(8));
      if (five && nt == 1) {
        // Q5_K, one token: both sub-blocks of the chunk in one pass over its vectors (see below)
        let hbLo = v128.load(p + 576 + 32 * c);
        let hbHi = v128.load(p + 592 + 32 * c);
        const bit4 = i8x16.splat(0x10);
        for (let half: usize = 0; half < 2; half++) {
          let sl = z, sh = z;
          for (let k: usize = 0; k < 4; k++) {
            const wd: usize = 4 * half + k;
            const v = v128.load(q + 16 * wd);
            const lo = v128.or(v128.and(v, lowBits), v128.and(i16x8.shl(hbLo, 4), bit4));
            const hi = v128.or(v128.and(i16x8.shr_u(v, 4), lowBits), v128.and(i16x8.shl(hbHi, 4), bit4));
            hbLo = i16x8.shr_u(hbLo, 1);
            hbHi = i16x8.shr_u(hbHi, 1);
            sl = i16x8.add(sl, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x + xo + 4 * wd), lo));
            sh = i16x8.add(sh, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x + xo + 32 + 4 * wd), hi));
          }
          u0 = i32x4.add(u0, i32x4.add(i32x4.dot_i16x8_s(sl, scLo), i32x4.dot_i16x8_s(sh, scHi)));
        }
      } else if (five) {
        // Q5_K: sub-block j = 2c + h takes bit wd of its high-bit vector's bytes as bit 4 of word
        // wd's quants (0..31); an i16 lane holds eight products of 31·127, so four words at a time
        for (let h = 0; h < 2; h++) {
          const scales = h == 0 ? scLo : scHi;
          let hb = v128.load(p + 576 + 16 * (2 * c + <usize>h));
          for (let half: usize = 0; half < 2; half++) {
            let s0 = z, s1 = z, s2 = z, s3 = z;
            for (let k: usize = 0; k < 4; k++) {
              const wd: usize = 4 * half + k;
              const v = v128.or(
                v128.and(i16x8.shr_u(v128.load(q + 16 * wd), 4 * h), lowBits),
                v128.and(i16x8.shl(hb, 4), i8x16.splat(0x10)),
              );
              hb = i16x8.shr_u(hb, 1);
              const o = xo + 32 * <usize>h + 4 * wd;
              s0 = i16x8.add(s0, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x + o), v));
              if (nt > 1) {
                s1 = i16x8.add(s1, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x1 + o), v));
                s2 = i16x8.add(s2, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x2 + o), v));
                s3 = i16x8.add(s3, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x3 + o), v));
              }
            }
            u0 = i32x4.add(u0, i32x4.dot_i16x8_s(s0, scales));
            if (nt > 1) {
              u1 = i32x4.add(u1, i32x4.dot_i16x8_s(s1, scales));
              u2 = i32x4.add(u2, i32x4.dot_i16x8_s(s2, scales));
              u3 = i32x4.add(u3, i32x4.dot_i16x8_s(s3, scales));
            }
          }
        }
      } else if (nt == 1) {
        let sl = z, sh = z;
        for (let wd: usize = 0; wd < 8; wd++) {
          const v = v128.load(q + 16 * wd);
          sl = i16x8.add(sl, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x + xo + 4 * wd), v128.and(v, lowBits)));
          sh = i16x8.add(sh, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x + xo + 32 + 4 * wd), v128.and(i16x8.shr_u(v, 4), lowBits)));
        }
        u0 = i32x4.add(u0, i32x4.add(i32x4.dot_i16x8_s(sl, scLo), i32x4.dot_i16x8_s(sh, scHi)));
      } else {
        // four tokens share each unpacked vector; low nibbles first, then high
        let s0 = z, s1 = z, s2 = z, s3 = z;
        for (let wd: usize = 0; wd < 8; wd++) {
          const v = v128.and(v128.load(q + 16 * wd), lowBits);
          const o = xo + 4 * wd;
          s0 = i16x8.add(s0, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x + o), v));
          s1 = i16x8.add(s1, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x1 + o), v));
          s2 = i16x8.add(s2, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x2 + o), v));
          s3 = i16x8.add(s3, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x3 + o), v));
        }
        u0 = i32x4.add(u0, i32x4.dot_i16x8_s(s0, scLo));
        u1 = i32x4.add(u1, i32x4.dot_i16x8_s(s1, scLo));
        u2 = i32x4.add(u2, i32x4.dot_i16x8_s(s2, scLo));
        u3 = i32x4.add(u3, i32x4.dot_i16x8_s(s3, scLo));
        s0 = z;
        s1 = z;
        s2 = z;
        s3 = z;
        for (let wd: usize = 0; wd < 8; wd++) {
          const v = v128.and(i16x8.shr_u(v128.load(q + 16 * wd), 4), lowBits);
          const o = xo + 32 + 4 * wd;
          s0 = i16x8.add(s0, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x + o), v));
          s1 = i16x8.add(s1, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x1 + o), v));
          s2 = i16x8.add(s2, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x2 + o), v));
          s3 = i16x8.add(s3, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x3 + o), v));
        }
        u0 = i32x4.add(u0, i32x4.dot_i16x8_s(s0, scHi));
        u1 = i32x4.add(u1, i32x4.dot_i16x8_s(s1, scHi));
        u2 = i32x4.add(u2, i32x4.dot_i16x8_s(s2, scHi));
        u3 = i32x4.add(u3, i32x4.dot_i16x8_s(s3, scHi));
      }
    }
    // the mins as i16 pairs (two sub-blocks per row), from B's nibbles and C's bits 4..7
    const sb = v128.load(p, 32);
    const mLo = v128.or(v128.and(sb, lowBits), v128.and(sc, i8x16.splat(0x30)));
    const mHi = v128.or(v128.and(i16x8.shr_u(sb, 4), lowBits), v128.and(i8x16.shr_u(sc, 2), i8x16.splat(0x30)));
    const m0 = i16x8.extend_low_i8x16_u(mLo);
    const m1 = i16x8.extend_high_i8x16_u(mLo);
    const m2 = i16x8.extend_low_i8x16_u(mHi);
    const m3 = i16x8.extend_high_i8x16_u(mHi);
    const dw = rowScales4(p, hmask, hmagic);
    const dmin = rowScales4(p + 8, hmask, hmagic);
    a0 = k4Term(a0, u0, x, m0, m1, m2, m3, dw, dmin);
    if (nt > 1) {
      a1 = k4Term(a1, u1, x1, m0, m1, m2, m3, dw, dmin);
      a2 = k4Term(a2, u2, x2, m0, m1, m2, m3, dw, dmin);
      a3 = k4Term(a3, u3, x3, m0, m1, m2, m3, dw, dmin);
    }
    p += five ? 704 : 576;
    x += 292;
  }
  storeTile(nt, out, step, a0, a1, a2, a3, acc);
}

/** acc + sumi·(d·dx) - Σ min·bsum · (dmin·dx), as matmulQ4_K does it, for the token's Q8_K block at x. */
// @ts-ignore: decorator
@inline function k4Term(acc: v128, sumi: v128, x: usize, m0: v128, m1: v128, m2: v128, m3: v128, dw: v128, dmin: v128): v128 {
  // the 32-element sums of the activations, as i16 pairs [b2p, b2p+1] in every lane
  const bs = i16x8.narrow_i32x4_s(
    i32x4.extadd_pairwise_i16x8_s(v128.load(x, 260)),
    i32x4.extadd_pairwise_i16x8_s(v128.load(x, 276)),
  );
  const summ = i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(m0, i32x4.shuffle(bs, bs, 0, 0, 0, 0)), i32x4.dot_i16x8_s(m1, i32x4.shuffle(bs, bs, 1, 1, 1, 1))),
    i32x4.add(i32x4.dot_i16x8_s(m2, i32x4.shuffle(bs, bs, 2, 2, 2, 2)), i32x4.dot_i16x8_s(m3, i32x4.shuffle(bs, bs, 3, 3, 3, 3))),
  );
  const dx = f32x4.splat(load<f32>(x));
  const a = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(sumi), f32x4.mul(dw, dx)));
  return f32x4.sub(a, f32x4.mul(f32x4.convert_i32x4_s(summ), f32x4.mul(dmin, dx)));
}

// ---------------------------------------------------------------------------------------------
// Q6_K in the row-lane layout (kernels-relaxed.wasm)
// ---------------------------------------------------------------------------------------------
//
// Four rows' super-block, still 840 bytes:
//   0: the four rows' d (f16),
//   8: 64 scale bytes, scale j of row r at 8·(j >> 1) + 2r + (j & 1): for two sub-blocks at a
//      time, the four rows' scales as i16 pairs after one sign extension,
//   72: per sub-block j (16 elements), 48 bytes L0, L1, H holding four vectors V0..V3 of 6-bit
//       quants (byte 4r + i of Vg: element 16j + 4g + i of row r): the low 4 bits of V0 | V1 << 4
//       in L0, of V2 | V3 << 4 in L1, and the high 2 bits of V0..V3 in bit pairs 0..7 of H.
// The quants are unsigned (0..63), so they go into the relaxed dot unshifted; two dots fill an i16
// lane (4 products of 63·127 at most: 32004), so each pair is widened with the rows' scales. The
// +32 offset leaves through the bsums, as in matmulQ6_K, whose integers and float work these are.

/** Element e (0..255) of the Q6_K block at src as its unsigned 6-bit quant. */
// @ts-ignore: decorator
@inline function q6At(src: usize, e: usize): u32 {
  const n = e >> 7;
  const l = e & 127;
  const quarter = l >> 5;
  const ll = l & 31;
  const low = (<u32>load<u8>(src + 64 * n + ll + 32 * (quarter & 1)) >> (4 * <u32>(quarter >> 1))) & 15;
  const high = (<u32>load<u8>(src + 128 + 32 * n + ll) >> (2 * <u32>quarter)) & 3;
  return low | (high << 4);
}

/**
 * Rewrites row groups [r0, r1) of a row-major Q6_K matrix in place into the row-lane layout; each
 * thread copies its group to scratch + tid·scratchStride (4 rows' bytes) first. Done once, at load.
 */
export function repackQ6_Kr4(w: usize, cols: i32, scratch: usize, scratchStride: i32, r0: i32, r1: i32, tid: i32): void {
  const nb = <usize>(cols >> 8);
  const rb = nb * 210;
  const tmp = scratch + <usize>tid * <usize>scratchStride;
  for (let g = r0; g < r1; g++) {
    const p = w + <usize>g * 4 * rb;
    memory.copy(tmp, p, 4 * rb);
    for (let b: usize = 0; b < nb; b++) {
      const dst = p + b * 840;
      memory.fill(dst + 72, 0, 768);
      for (let r: usize = 0; r < 4; r++) {
        const src = tmp + r * rb + b * 210;
        store<u16>(dst + 2 * r, load<u16>(src, 208));
        for (let j: usize = 0; j < 16; j++) store<u8>(dst + 8 + 8 * (j >> 1) + 2 * r + (j & 1), load<u8>(src + 192 + j));
        for (let e: usize = 0; e < 256; e++) {
          const q = q6At(src, e);
          const group = (e >> 2) & 3;
          const at = dst + 72 + 48 * (e >> 4) + 4 * r + (e & 3);
          const l = at + 16 * (group >> 1);
          store<u8>(l, load<u8>(l) | <u8>((q & 15) << (4 * <u32>(group & 1))));
          store<u8>(at + 32, load<u8>(at + 32) | <u8>((q >> 4) << (2 * <u32>group)));
        }
      }
    }
  }
}

/** matmulQ6_K on weights in the row-lane layout (repackQ6_Kr4), Q8_K activations; rows % 4 == 0. */
export function matmulQ6_Kr4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulR4(R4_Q6_K, w, xq, out, rows, cols, n, acc, r0, r1);
}

/** u + sc·Σq·x per row for one token's sub-block at x (V0..V3 the sub-block's quant vectors). */
// @ts-ignore: decorator
@inline function k6Sub(u: v128, x: usize, v0: v128, v1: v128, v2: v128, v3: v128, sc: v128): v128 {
  const a = i16x8.add(
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x), v0),
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x, 4), v1),
  );
  const b = i16x8.add(
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x, 8), v2),
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x, 12), v3),
  );
  return i32x4.add(u, i32x4.add(i32x4.dot_i16x8_s(a, sc), i32x4.dot_i16x8_s(b, sc)));
}

/** acc + (sumi - 32·Σ sc·bsum)·(d·dx), as matmulQ6_K does it, for the token's Q8_K block at x. */
// @ts-ignore: decorator
@inline function k6Term(acc: v128, u: v128, x: usize, s0: v128, s1: v128, s2: v128, s3: v128, dw: v128): v128 {
  // the rows' scales as i16 pairs (sub-blocks 2p, 2p + 1) against the bsums' pair p
  const b0 = v128.load(x, 260);
  const b1 = v128.load(x, 276);
  const c0 = i32x4.add(
    i32x4.add(
      i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_s(s0), i32x4.shuffle(b0, b0, 0, 0, 0, 0)),
      i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_s(s0), i32x4.shuffle(b0, b0, 1, 1, 1, 1)),
    ),
    i32x4.add(
      i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_s(s1), i32x4.shuffle(b0, b0, 2, 2, 2, 2)),
      i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_s(s1), i32x4.shuffle(b0, b0, 3, 3, 3, 3)),
    ),
  );
  const c1 = i32x4.add(
    i32x4.add(
      i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_s(s2), i32x4.shuffle(b1, b1, 0, 0, 0, 0)),
      i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_s(s2), i32x4.shuffle(b1, b1, 1, 1, 1, 1)),
    ),
    i32x4.add(
      i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_s(s3), i32x4.shuffle(b1, b1, 2, 2, 2, 2)),
      i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_s(s3), i32x4.shuffle(b1, b1, 3, 3, 3, 3)),
    ),
  );
  const sumi = i32x4.sub(u, i32x4.shl(i32x4.add(c0, c1), 5));
  return f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(sumi), f32x4.mul(dw, f32x4.splat(load<f32>(x)))));
}

/** Four row-lane Q6_K rows · nt tokens (1 or 4; Q8_K rows xRow apart): out rows step apart. */
// @ts-ignore: decorator
@inline function k6r4Tokens(nt: i32, p: usize, x: usize, xRow: usize, nb: i32, out: usize, step: usize, acc: i32): void {
  const hmask = constant(CONST_HALF_MASK);
  const hmagic = constant(CONST_HALF_MAGIC);
  const z = i32x4.splat(0);
  let a0 = f32x4.splat(0);
  let a1 = a0;
  let a2 = a0;
  let a3 = a0;
  for (let b = 0; b < nb; b++) {
    const x1 = x + xRow;
    const x2 = x1 + xRow;
    const x3 = x2 + xRow;
    let u0 = z, u1 = z, u2 = z, u3 = z;
    for (let j: usize = 0; j < 16; j++) {
      const lowBits = constant(CONST_0F0F);
      const q = p + 72 + 48 * j;
      const l0 = v128.load(q);
      const l1 = v128.load(q, 16);
      const h = v128.load(q, 32);
      const m30 = i8x16.splat(0x30);
      const v0 = v128.or(v128.and(l0, lowBits), i16x8.shl(v128.and(h, i8x16.splat(3)), 4));
      const v1 = v128.or(v128.and(i16x8.shr_u(l0, 4), lowBits), v128.and(i16x8.shl(h, 2), m30));
      const v2 = v128.or(v128.and(l1, lowBits), v128.and(h, m30));
      const v3 = v128.or(v128.and(i16x8.shr_u(l1, 4), lowBits), v128.and(i16x8.shr_u(h, 2), m30));
      // sub-block j's scales as i16 pairs: bytes 8(j >> 1) + 2r + (j & 1), sign-extended
      const sv = v128.load(p + 8 + 16 * (j >> 2));
      const at = i8x16.splat(<i8>(8 * ((j >> 1) & 1) + (j & 1)));
      const sc = i16x8.extend_low_i8x16_s(i8x16.swizzle(sv, i8x16.add(constant(CONST_EVEN_PAIRS), at)));
      const xo: usize = 4 + 16 * j;
      u0 = k6Sub(u0, x + xo, v0, v1, v2, v3, sc);
      if (nt > 1) {
        u1 = k6Sub(u1, x1 + xo, v0, v1, v2, v3, sc);
        u2 = k6Sub(u2, x2 + xo, v0, v1, v2, v3, sc);
        u3 = k6Sub(u3, x3 + xo, v0, v1, v2, v3, sc);
      }
    }
    const s0 = v128.load(p, 8);
    const s1 = v128.load(p, 24);
    const s2 = v128.load(p, 40);
    const s3 = v128.load(p, 56);
    const dw = rowScales4(p, hmask, hmagic);
    a0 = k6Term(a0, u0, x, s0, s1, s2, s3, dw);
    if (nt > 1) {
      a1 = k6Term(a1, u1, x1, s0, s1, s2, s3, dw);
      a2 = k6Term(a2, u2, x2, s0, s1, s2, s3, dw);
      a3 = k6Term(a3, u3, x3, s0, s1, s2, s3, dw);
    }
    p += 840;
    x += 292;
  }
  storeTile(nt, out, step, a0, a1, a2, a3, acc);
}

export function matmulQ4_1(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmul32(K_Q4_1, 20, 36, w, xq, out, rows, cols, n, acc, r0, r1, false);
}

/** matmulQ4_1 on weights in the interleaved layout (interleaveRows4); rows % 4 == 0. */
export function matmulQ4_1x4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmul32(K_Q4_1, 20, 36, w, xq, out, rows, cols, n, acc, r0, r1, true);
}

export function matmulQ5_0(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmul32(K_Q5_0, 22, 34, w, xq, out, rows, cols, n, acc, r0, r1, false);
}

/** matmulQ5_0 on weights in the interleaved layout (interleaveRows4); rows % 4 == 0. */
export function matmulQ5_0x4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmul32(K_Q5_0, 22, 34, w, xq, out, rows, cols, n, acc, r0, r1, true);
}

export function matmulQ5_1(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmul32(K_Q5_1, 24, 36, w, xq, out, rows, cols, n, acc, r0, r1, false);
}

/** matmulQ5_1 on weights in the interleaved layout (interleaveRows4); rows % 4 == 0. */
export function matmulQ5_1x4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmul32(K_Q5_1, 24, 36, w, xq, out, rows, cols, n, acc, r0, r1, true);
}

export function matmulQ8_0(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmul32(K_Q8_0, 34, 34, w, xq, out, rows, cols, n, acc, r0, r1, false);
}

/** matmulQ8_0 on weights in the interleaved layout (interleaveRows4); rows % 4 == 0. */
export function matmulQ8_0x4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmul32(K_Q8_0, 34, 34, w, xq, out, rows, cols, n, acc, r0, r1, true);
}

// ---------------------------------------------------------------------------------------------
// K-quants (256-element super-blocks, Q8_K activations)
// ---------------------------------------------------------------------------------------------

/** Q4_K/Q5_K 6-bit scales and mins of the block at p as bytes [sc0..sc7, m0..m7]. */
// @ts-ignore: decorator
@inline function scalesMinsK4(p: usize): v128 {
  const u0 = load<u32>(p, 4);
  const u1 = load<u32>(p, 8);
  const u2 = load<u32>(p, 12);
  let v = i32x4.splat(u0 & 0x3f3f3f3f);
  v = i32x4.replace_lane(v, 1, (u2 & 0x0f0f0f0f) | (((u0 >> 6) & 0x03030303) << 4));
  v = i32x4.replace_lane(v, 2, u1 & 0x3f3f3f3f);
  return i32x4.replace_lane(v, 3, ((u2 >> 4) & 0x0f0f0f0f) | (((u1 >> 6) & 0x03030303) << 4));
}

/** Bytes 0..7 of four rows interleaved by 16-bit pairs: byte 4j + r of the result is row r's byte j, j < 4. */
// @ts-ignore: decorator
@inline function transpose4Low(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = i8x16.shuffle(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const cd = i8x16.shuffle(c, d, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  return i16x8.shuffle(ab, cd, 0, 8, 1, 9, 2, 10, 3, 11);
}

/** As transpose4Low for bytes 4..7: byte 4(j-4) + r is row r's byte j. */
// @ts-ignore: decorator
@inline function transpose4High(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = i8x16.shuffle(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const cd = i8x16.shuffle(c, d, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  return i16x8.shuffle(ab, cd, 4, 12, 5, 13, 6, 14, 7, 15);
}

/** Unsigned bytes 4q..4q+3 of v as an i32x4 (q constant after inlining). */
// @ts-ignore: decorator
@inline function u8Quad(v: v128, q: i32): v128 {
  if (q == 0) return i32x4.extend_low_i16x8_u(i16x8.extend_low_i8x16_u(v));
  if (q == 1) return i32x4.extend_high_i16x8_u(i16x8.extend_low_i8x16_u(v));
  if (q == 2) return i32x4.extend_low_i16x8_u(i16x8.extend_high_i8x16_u(v));
  return i32x4.extend_high_i16x8_u(i16x8.extend_high_i8x16_u(v));
}

/** Signed bytes 4q..4q+3 of v as an i32x4 (q constant after inlining). */
// @ts-ignore: decorator
@inline function i8Quad(v: v128, q: i32): v128 {
  if (q == 0) return i32x4.extend_low_i16x8_s(i16x8.extend_low_i8x16_s(v));
  if (q == 1) return i32x4.extend_high_i16x8_s(i16x8.extend_low_i8x16_s(v));
  if (q == 2) return i32x4.extend_low_i16x8_s(i16x8.extend_high_i8x16_s(v));
  return i32x4.extend_high_i16x8_s(i16x8.extend_high_i8x16_s(v));
}

/**
 * 256 × one row's partial sums for chunk c (64 elements) of a Q4_K/Q5_K block at p: `hi` false
 * gives sub-block 2c (low nibbles, activations prepared as 256·x even / x odd), true sub-block 2c+1
 * (high nibbles, 16·x even / 256·x odd). Q5_K adds bit 2c (2c+1) of qh[l] as 16, at the same scale
 * as the nibble it completes. (Constants are loaded where used: loads do not compete with the
 * vector arithmetic, which bounds these loops.)
 */
// @ts-ignore: decorator
@inline function rowK45(five: bool, hi: bool, c: i32, p: usize, xe0: v128, xo0: v128, xe1: v128, xo1: v128): v128 {
  const q = p + (five ? 48 : 16) + 32 * c;
  const b0 = v128.load(q);
  const b1 = v128.load(q, 16);
  let w0e: v128, w0o: v128, w1e: v128, w1o: v128;
  if (!hi) {
    w0e = v128.and(b0, constant(CONST_0F));
    w0o = v128.and(b0, constant(CONST_0F00));
    w1e = v128.and(b1, constant(CONST_0F));
    w1o = v128.and(b1, constant(CONST_0F00));
  } else {
    w0e = v128.and(b0, constant(CONST_00F0));
    w0o = i16x8.shr_u(b0, 12);
    w1e = v128.and(b1, constant(CONST_00F0));
    w1o = i16x8.shr_u(b1, 12);
  }
  if (five) {
    const h0 = v128.load(p, 16);
    const h1 = v128.load(p, 32);
    if (!hi) {
      // bit 2c of the even byte of a lane -> bit 4, of the odd byte (lane bit 8 + 2c) -> bit 12
      const s0 = shiftI16(h0, 4 - 2 * c);
      const s1 = shiftI16(h1, 4 - 2 * c);
      w0e = v128.or(w0e, v128.and(s0, constant(CONST_10)));
      w0o = v128.or(w0o, v128.and(s0, constant(CONST_1000)));
      w1e = v128.or(w1e, v128.and(s1, constant(CONST_10)));
      w1o = v128.or(w1o, v128.and(s1, constant(CONST_1000)));
    } else {
      // bit 2c+1 of the even byte -> bit 8 (16 × 16), of the odd byte -> bit 4
      w0e = v128.or(w0e, v128.and(shiftI16(h0, 7 - 2 * c), constant(CONST_0100)));
      w0o = v128.or(w0o, v128.and(i16x8.shr_u(h0, 5 + 2 * c), constant(CONST_10)));
      w1e = v128.or(w1e, v128.and(shiftI16(h1, 7 - 2 * c), constant(CONST_0100)));
      w1o = v128.or(w1o, v128.and(i16x8.shr_u(h1, 5 + 2 * c), constant(CONST_10)));
    }
  }
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(w0e, xe0), i32x4.dot_i16x8_s(w0o, xo0)),
    i32x4.add(i32x4.dot_i16x8_s(w1e, xe1), i32x4.dot_i16x8_s(w1o, xo1)),
  );
}

/** Σ over chunk c of sc_j·Σ q·x for four rows (lanes), sub-block scales sLo (2c) and sHi (2c+1). */
// @ts-ignore: decorator
@inline function chunkK45(
  five: bool,
  c: i32,
  w: usize,
  p0: usize,
  p1: usize,
  p2: usize,
  p3: usize,
  x: usize,
  xq: usize,
  sLo: v128,
  sHi: v128,
  sumi: v128,
): v128 {
  const z = i32x4.splat(0);
  // activations of sub-block 2c as 256·x even / x odd, of 2c+1 as 16·x even / 256·x odd,
  // prepared in a block of their own (see the note at the top of this section)
  let x0e = z, x0o = z, x1e = z, x1o = z, x2e = z, x2o = z, x3e = z, x3o = z;
  if (x >= xq) {
    const xp = x + 4 + 64 * c;
    const xa = v128.load(xp);
    const xb = v128.load(xp, 16);
    const xc = v128.load(xp, 32);
    const xd = v128.load(xp, 48);
    const mff00 = constant(CONST_FF00);
    x0e = i16x8.shl(xa, 8);
    x0o = i16x8.shr_s(xa, 8);
    x1e = i16x8.shl(xb, 8);
    x1o = i16x8.shr_s(xb, 8);
    x2e = i16x8.shr_s(i16x8.shl(xc, 8), 4);
    x2o = v128.and(xc, mff00);
    x3e = i16x8.shr_s(i16x8.shl(xd, 8), 4);
    x3o = v128.and(xd, mff00);
  }
  let lo0 = z, hi0 = z, lo01 = z, hi01 = z, lo2 = z, hi2 = z, lo23 = z, hi23 = z;
  if (p0 >= w) {
    lo0 = rowK45(five, false, c, p0, x0e, x0o, x1e, x1o);
    hi0 = rowK45(five, true, c, p0, x2e, x2o, x3e, x3o);
  }
  if (p1 >= w) {
    lo01 = pairAdd(lo0, rowK45(five, false, c, p1, x0e, x0o, x1e, x1o));
    hi01 = pairAdd(hi0, rowK45(five, true, c, p1, x2e, x2o, x3e, x3o));
  }
  if (p2 >= w) {
    lo2 = rowK45(five, false, c, p2, x0e, x0o, x1e, x1o);
    hi2 = rowK45(five, true, c, p2, x2e, x2o, x3e, x3o);
  }
  if (p3 >= w) {
    lo23 = pairAdd(lo2, rowK45(five, false, c, p3, x0e, x0o, x1e, x1o));
    hi23 = pairAdd(hi2, rowK45(five, true, c, p3, x2e, x2o, x3e, x3o));
    // (inside the block, so that V8 does not defer it and keep every chunk's sums alive) the sums
    // are exact multiples of 256; scale them down before the 6-bit scales multiply
    const lo = i32x4.shr_s(quadAdd(lo01, lo23), 8);
    const hi = i32x4.shr_s(quadAdd(hi01, hi23), 8);
    sumi = i32x4.add(sumi, i32x4.add(i32x4.mul(lo, sLo), i32x4.mul(hi, sHi)));
  }
  return sumi;
}

/** Four Q4_K/Q5_K weight rows · one token's Q8_K blocks, as f32x4. */
// @ts-ignore: decorator
@inline function dotRowsK45(
  five: bool,
  w: usize,
  p0: usize,
  p1: usize,
  p2: usize,
  p3: usize,
  x: usize,
  xq: usize,
  nb: i32,
  wBytes: usize,
): v128 {
  const hmask = constant(CONST_HALF_MASK);
  const hmagic = constant(CONST_HALF_MAGIC);
  const z = i32x4.splat(0);
  let acc = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    const r0 = scalesMinsK4(p0);
    const r1 = scalesMinsK4(p1);
    const r2 = scalesMinsK4(p2);
    const r3 = scalesMinsK4(p3);
    // (in a block of its own, so that V8 computes it here instead of keeping r0..r3 alive)
    let summ = z, t0 = z, t1 = z;
    if (x >= xq) {
      // mins · bsums: pair the 16-sums into 32-sums, dot with each row's mins, reduce
      const bs = i16x8.narrow_i32x4_s(
        i32x4.extadd_pairwise_i16x8_s(v128.load(x, 260)),
        i32x4.extadd_pairwise_i16x8_s(v128.load(x, 276)),
      );
      summ = quadAdd(
        pairAdd(
          i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_u(r0), bs),
          i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_u(r1), bs),
        ),
        pairAdd(
          i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_u(r2), bs),
          i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_u(r3), bs),
        ),
      );
      // scales: byte 4j + r of t0 (j < 4) / t1 (j >= 4) is row r's scale j
      t0 = transpose4Low(r0, r1, r2, r3);
      t1 = transpose4High(r0, r1, r2, r3);
    }
    let sumi = chunkK45(five, 0, w, p0, p1, p2, p3, x, xq, u8Quad(t0, 0), u8Quad(t0, 1), z);
    sumi = chunkK45(five, 1, w, p0, p1, p2, p3, x, xq, u8Quad(t0, 2), u8Quad(t0, 3), sumi);
    sumi = chunkK45(five, 2, w, p0, p1, p2, p3, x, xq, u8Quad(t1, 0), u8Quad(t1, 1), sumi);
    sumi = chunkK45(five, 3, w, p0, p1, p2, p3, x, xq, u8Quad(t1, 2), u8Quad(t1, 3), sumi);
    const dm = loadU32x4(p0, p1, p2, p3);
    const dx = f32x4.splat(load<f32>(x));
    const dw = f32x4.mul(halfHigh(i32x4.shl(dm, 16), hmask, hmagic), dx);
    const dmin = f32x4.mul(halfHigh(dm, hmask, hmagic), dx);
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(sumi), dw));
    acc = f32x4.sub(acc, f32x4.mul(f32x4.convert_i32x4_s(summ), dmin));
    p0 += wBytes;
    p1 += wBytes;
    p2 += wBytes;
    p3 += wBytes;
    x += 292;
  }
  return acc;
}

/**
 * 256 × one row's Q6_K partial sums for sub-block k (`hi` false: low nibbles of ql, qh bits
 * sh..sh+1, activations 256·x even / x odd) or k + 4 (`hi` true: high nibbles, qh bits sh+4..sh+5,
 * activations 16·x even / 256·x odd) of half h, weights as unsigned 6-bit values.
 */
// @ts-ignore: decorator
@inline function rowQ6(hi: bool, h: i32, k: i32, p: usize, xe: v128, xo: v128): v128 {
  const l = v128.load(p + 64 * h + 16 * k);
  const hq = v128.load(p + 128 + 32 * h + 16 * (k & 1));
  const sh = 2 * (k >> 1);
  let we: v128, wo: v128;
  if (!hi) {
    // bits sh..sh+1 of the even byte -> bits 4..5, of the odd byte (lane bits 8+sh..) -> 12..13
    const s = shiftI16(hq, 4 - sh);
    we = v128.or(v128.and(l, constant(CONST_0F)), v128.and(s, constant(CONST_30)));
    wo = v128.or(v128.and(l, constant(CONST_0F00)), v128.and(s, constant(CONST_3000)));
  } else {
    // bits sh+4..sh+5 of the even byte -> bits 8..9 (16 × 16), of the odd byte -> bits 4..5
    we = v128.or(v128.and(l, constant(CONST_00F0)), v128.and(shiftI16(hq, 4 - sh), constant(CONST_0300)));
    wo = v128.or(i16x8.shr_u(l, 12), v128.and(i16x8.shr_u(hq, 8 + sh), constant(CONST_30)));
  }
  return i32x4.add(i32x4.dot_i16x8_s(we, xe), i32x4.dot_i16x8_s(wo, xo));
}

/** Q6_K sub-blocks k and k+4 of half h for four rows, times their scales sA and sB (i32x4 per row). */
// @ts-ignore: decorator
@inline function quarterQ6(
  h: i32,
  k: i32,
  w: usize,
  p0: usize,
  p1: usize,
  p2: usize,
  p3: usize,
  x: usize,
  xq: usize,
  sA: v128,
  sB: v128,
  sumi: v128,
): v128 {
  const z = i32x4.splat(0);
  let xae = z, xao = z, xbe = z, xbo = z;
  if (x >= xq) {
    const xp = x + 4 + 128 * h + 16 * k;
    const xa = v128.load(xp);
    const xb = v128.load(xp, 64);
    xae = i16x8.shl(xa, 8);
    xao = i16x8.shr_s(xa, 8);
    xbe = i16x8.shr_s(i16x8.shl(xb, 8), 4);
    xbo = v128.and(xb, constant(CONST_FF00));
  }
  let a0 = z, b0 = z, a01 = z, b01 = z, a2 = z, b2 = z, a23 = z, b23 = z;
  if (p0 >= w) {
    a0 = rowQ6(false, h, k, p0, xae, xao);
    b0 = rowQ6(true, h, k, p0, xbe, xbo);
  }
  if (p1 >= w) {
    a01 = pairAdd(a0, rowQ6(false, h, k, p1, xae, xao));
    b01 = pairAdd(b0, rowQ6(true, h, k, p1, xbe, xbo));
  }
  if (p2 >= w) {
    a2 = rowQ6(false, h, k, p2, xae, xao);
    b2 = rowQ6(true, h, k, p2, xbe, xbo);
  }
  if (p3 >= w) {
    a23 = pairAdd(a2, rowQ6(false, h, k, p3, xae, xao));
    b23 = pairAdd(b2, rowQ6(true, h, k, p3, xbe, xbo));
    const a = i32x4.shr_s(quadAdd(a01, a23), 8);
    const b = i32x4.shr_s(quadAdd(b01, b23), 8);
    sumi = i32x4.add(sumi, i32x4.add(i32x4.mul(a, sA), i32x4.mul(b, sB)));
  }
  return sumi;
}

/** 32·Σ_j sc_j·bsum_j of one row (lanes add up to it): removes the +32 offset of the 6-bit weights. */
// @ts-ignore: decorator
@inline function offsetQ6(sc: v128, bs0: v128, bs1: v128): v128 {
  return i32x4.add(
    i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_s(sc), bs0),
    i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_s(sc), bs1),
  );
}

/** Four Q6_K weight rows · one token's Q8_K blocks, as f32x4. */
// @ts-ignore: decorator
@inline function dotRowsQ6(
  w: usize, p0: usize, p1: usize, p2: usize, p3: usize, x: usize, xq: usize, nb: i32, wStep: usize,
): v128 {
  const hmask = constant(CONST_HALF_MASK);
  const hmagic = constant(CONST_HALF_MAGIC);
  const z = i32x4.splat(0);
  let acc = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    // scale setup in a block of its own (see dotRowsK45)
    let corr = z, t0 = z, t1 = z, t2 = z, t3 = z;
    if (x >= xq) {
      const r0 = v128.load(p0, 192);
      const r1 = v128.load(p1, 192);
      const r2 = v128.load(p2, 192);
      const r3 = v128.load(p3, 192);
      const bs0 = v128.load(x, 260);
      const bs1 = v128.load(x, 276);
      corr = quadAdd(
        pairAdd(offsetQ6(r0, bs0, bs1), offsetQ6(r1, bs0, bs1)),
        pairAdd(offsetQ6(r2, bs0, bs1), offsetQ6(r3, bs0, bs1)),
      );
      // byte 4j + r of tq: row r's scale 4q + j
      const ab = i8x16.shuffle(r0, r1, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
      const cd = i8x16.shuffle(r2, r3, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
      const abH = i8x16.shuffle(r0, r1, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
      const cdH = i8x16.shuffle(r2, r3, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
      t0 = i16x8.shuffle(ab, cd, 0, 8, 1, 9, 2, 10, 3, 11);
      t1 = i16x8.shuffle(ab, cd, 4, 12, 5, 13, 6, 14, 7, 15);
      t2 = i16x8.shuffle(abH, cdH, 0, 8, 1, 9, 2, 10, 3, 11);
      t3 = i16x8.shuffle(abH, cdH, 4, 12, 5, 13, 6, 14, 7, 15);
    }
    // half 0: sub-blocks 0..7, half 1: 8..15; quarter k pairs sub-blocks k and k + 4
    let sumi = i32x4.mul(corr, i32x4.splat(-32));
    sumi = quarterQ6(0, 0, w, p0, p1, p2, p3, x, xq, i8Quad(t0, 0), i8Quad(t1, 0), sumi);
    sumi = quarterQ6(0, 1, w, p0, p1, p2, p3, x, xq, i8Quad(t0, 1), i8Quad(t1, 1), sumi);
    sumi = quarterQ6(0, 2, w, p0, p1, p2, p3, x, xq, i8Quad(t0, 2), i8Quad(t1, 2), sumi);
    sumi = quarterQ6(0, 3, w, p0, p1, p2, p3, x, xq, i8Quad(t0, 3), i8Quad(t1, 3), sumi);
    sumi = quarterQ6(1, 0, w, p0, p1, p2, p3, x, xq, i8Quad(t2, 0), i8Quad(t3, 0), sumi);
    sumi = quarterQ6(1, 1, w, p0, p1, p2, p3, x, xq, i8Quad(t2, 1), i8Quad(t3, 1), sumi);
    sumi = quarterQ6(1, 2, w, p0, p1, p2, p3, x, xq, i8Quad(t2, 2), i8Quad(t3, 2), sumi);
    sumi = quarterQ6(1, 3, w, p0, p1, p2, p3, x, xq, i8Quad(t2, 3), i8Quad(t3, 3), sumi);
    const dw = f32x4.mul(half4(p0 + 208, p1 + 208, p2 + 208, p3 + 208, hmask, hmagic), f32x4.splat(load<f32>(x)));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(sumi), dw));
    p0 += wStep;
    p1 += wStep;
    p2 += wStep;
    p3 += wStep;
    x += 292;
  }
  return acc;
}

// ---- two tokens at a time (prefill): each unpacked weight block serves both tokens ----

/** The second token's result of the x2 row helpers (a module global: one per instance and thread). */
let second: v128 = i32x4.splat(0);

/** rowK45 for two tokens' activations (x..: token 0, y..: token 1); token 1's sums go to `second`. */
// @ts-ignore: decorator
@inline function rowK45x2(
  five: bool,
  hi: bool,
  c: i32,
  p: usize,
  xe0: v128,
  xo0: v128,
  xe1: v128,
  xo1: v128,
  ye0: v128,
  yo0: v128,
  ye1: v128,
  yo1: v128,
): v128 {
  const q = p + (five ? 48 : 16) + 32 * c;
  const b0 = v128.load(q);
  const b1 = v128.load(q, 16);
  let w0e: v128, w0o: v128, w1e: v128, w1o: v128;
  if (!hi) {
    w0e = v128.and(b0, constant(CONST_0F));
    w0o = v128.and(b0, constant(CONST_0F00));
    w1e = v128.and(b1, constant(CONST_0F));
    w1o = v128.and(b1, constant(CONST_0F00));
  } else {
    w0e = v128.and(b0, constant(CONST_00F0));
    w0o = i16x8.shr_u(b0, 12);
    w1e = v128.and(b1, constant(CONST_00F0));
    w1o = i16x8.shr_u(b1, 12);
  }
  if (five) {
    const h0 = v128.load(p, 16);
    const h1 = v128.load(p, 32);
    if (!hi) {
      const s0 = shiftI16(h0, 4 - 2 * c);
      const s1 = shiftI16(h1, 4 - 2 * c);
      w0e = v128.or(w0e, v128.and(s0, constant(CONST_10)));
      w0o = v128.or(w0o, v128.and(s0, constant(CONST_1000)));
      w1e = v128.or(w1e, v128.and(s1, constant(CONST_10)));
      w1o = v128.or(w1o, v128.and(s1, constant(CONST_1000)));
    } else {
      w0e = v128.or(w0e, v128.and(shiftI16(h0, 7 - 2 * c), constant(CONST_0100)));
      w0o = v128.or(w0o, v128.and(i16x8.shr_u(h0, 5 + 2 * c), constant(CONST_10)));
      w1e = v128.or(w1e, v128.and(shiftI16(h1, 7 - 2 * c), constant(CONST_0100)));
      w1o = v128.or(w1o, v128.and(i16x8.shr_u(h1, 5 + 2 * c), constant(CONST_10)));
    }
  }
  second = dot4(w0e, w0o, w1e, w1o, ye0, yo0, ye1, yo1);
  return dot4(w0e, w0o, w1e, w1o, xe0, xo0, xe1, xo1);
}

/** chunkK45 for two tokens (x and x + 292·nb); token 1's result goes to `second`. */
// @ts-ignore: decorator
@inline function chunkK45x2(
  five: bool,
  c: i32,
  w: usize,
  p0: usize,
  p1: usize,
  p2: usize,
  p3: usize,
  x: usize,
  y: usize,
  xq: usize,
  sLo: v128,
  sHi: v128,
  sumi0: v128,
  sumi1: v128,
): v128 {
  const z = i32x4.splat(0);
  let x0e = z, x0o = z, x1e = z, x1o = z, x2e = z, x2o = z, x3e = z, x3o = z;
  let y0e = z, y0o = z, y1e = z, y1o = z, y2e = z, y2o = z, y3e = z, y3o = z;
  if (x >= xq) {
    const mff00 = constant(CONST_FF00);
    const xp = x + 4 + 64 * c;
    let a = v128.load(xp);
    x0e = i16x8.shl(a, 8);
    x0o = i16x8.shr_s(a, 8);
    a = v128.load(xp, 16);
    x1e = i16x8.shl(a, 8);
    x1o = i16x8.shr_s(a, 8);
    a = v128.load(xp, 32);
    x2e = i16x8.shr_s(i16x8.shl(a, 8), 4);
    x2o = v128.and(a, mff00);
    a = v128.load(xp, 48);
    x3e = i16x8.shr_s(i16x8.shl(a, 8), 4);
    x3o = v128.and(a, mff00);
    const yp = y + 4 + 64 * c;
    a = v128.load(yp);
    y0e = i16x8.shl(a, 8);
    y0o = i16x8.shr_s(a, 8);
    a = v128.load(yp, 16);
    y1e = i16x8.shl(a, 8);
    y1o = i16x8.shr_s(a, 8);
    a = v128.load(yp, 32);
    y2e = i16x8.shr_s(i16x8.shl(a, 8), 4);
    y2o = v128.and(a, mff00);
    a = v128.load(yp, 48);
    y3e = i16x8.shr_s(i16x8.shl(a, 8), 4);
    y3o = v128.and(a, mff00);
  }
  let lo0 = z, hi0 = z, lo01 = z, hi01 = z, lo2 = z, hi2 = z, lo23 = z, hi23 = z;
  let ml0 = z, mh0 = z, ml01 = z, mh01 = z, ml2 = z, mh2 = z, ml23 = z, mh23 = z;
  if (p0 >= w) {
    lo0 = rowK45x2(five, false, c, p0, x0e, x0o, x1e, x1o, y0e, y0o, y1e, y1o);
    ml0 = second;
    hi0 = rowK45x2(five, true, c, p0, x2e, x2o, x3e, x3o, y2e, y2o, y3e, y3o);
    mh0 = second;
  }
  if (p1 >= w) {
    lo01 = pairAdd(lo0, rowK45x2(five, false, c, p1, x0e, x0o, x1e, x1o, y0e, y0o, y1e, y1o));
    ml01 = pairAdd(ml0, second);
    hi01 = pairAdd(hi0, rowK45x2(five, true, c, p1, x2e, x2o, x3e, x3o, y2e, y2o, y3e, y3o));
    mh01 = pairAdd(mh0, second);
  }
  if (p2 >= w) {
    lo2 = rowK45x2(five, false, c, p2, x0e, x0o, x1e, x1o, y0e, y0o, y1e, y1o);
    ml2 = second;
    hi2 = rowK45x2(five, true, c, p2, x2e, x2o, x3e, x3o, y2e, y2o, y3e, y3o);
    mh2 = second;
  }
  if (p3 >= w) {
    lo23 = pairAdd(lo2, rowK45x2(five, false, c, p3, x0e, x0o, x1e, x1o, y0e, y0o, y1e, y1o));
    ml23 = pairAdd(ml2, second);
    hi23 = pairAdd(hi2, rowK45x2(five, true, c, p3, x2e, x2o, x3e, x3o, y2e, y2o, y3e, y3o));
    mh23 = pairAdd(mh2, second);
    sumi1 = i32x4.add(
      sumi1,
      i32x4.add(
        i32x4.mul(i32x4.shr_s(quadAdd(ml01, ml23), 8), sLo),
        i32x4.mul(i32x4.shr_s(quadAdd(mh01, mh23), 8), sHi),
      ),
    );
    sumi0 = i32x4.add(
      sumi0,
      i32x4.add(
        i32x4.mul(i32x4.shr_s(quadAdd(lo01, lo23), 8), sLo),
        i32x4.mul(i32x4.shr_s(quadAdd(hi01, hi23), 8), sHi),
      ),
    );
  }
  second = sumi1;
  return sumi0;
}

/** Four Q4_K/Q5_K rows · two tokens; writes both tokens' four outputs. */
// @ts-ignore: decorator
@inline function dotRowsK45x2(
  five: bool,
  w: usize,
  p0: usize,
  p1: usize,
  p2: usize,
  p3: usize,
  x: usize,
  xq: usize,
  nb: i32,
  wBytes: usize,
  out0: usize,
  out1: usize,
  nr: i32,
  accumulate: i32,
): void {
  const hmask = constant(CONST_HALF_MASK);
  const hmagic = constant(CONST_HALF_MAGIC);
  const xRow = <usize>nb * 292;
  let acc0 = f32x4.splat(0);
  let acc1 = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    const y = x + xRow;
    const r0 = scalesMinsK4(p0);
    const r1 = scalesMinsK4(p1);
    const r2 = scalesMinsK4(p2);
    const r3 = scalesMinsK4(p3);
    const m0 = i16x8.extend_high_i8x16_u(r0);
    const m1 = i16x8.extend_high_i8x16_u(r1);
    const m2 = i16x8.extend_high_i8x16_u(r2);
    const m3 = i16x8.extend_high_i8x16_u(r3);
    const bx = i16x8.narrow_i32x4_s(
      i32x4.extadd_pairwise_i16x8_s(v128.load(x, 260)),
      i32x4.extadd_pairwise_i16x8_s(v128.load(x, 276)),
    );
    const by = i16x8.narrow_i32x4_s(
      i32x4.extadd_pairwise_i16x8_s(v128.load(y, 260)),
      i32x4.extadd_pairwise_i16x8_s(v128.load(y, 276)),
    );
    const summ0 = quadAdd(
      pairAdd(i32x4.dot_i16x8_s(m0, bx), i32x4.dot_i16x8_s(m1, bx)),
      pairAdd(i32x4.dot_i16x8_s(m2, bx), i32x4.dot_i16x8_s(m3, bx)),
    );
    const summ1 = quadAdd(
      pairAdd(i32x4.dot_i16x8_s(m0, by), i32x4.dot_i16x8_s(m1, by)),
      pairAdd(i32x4.dot_i16x8_s(m2, by), i32x4.dot_i16x8_s(m3, by)),
    );
    const t0 = transpose4Low(r0, r1, r2, r3);
    const t1 = transpose4High(r0, r1, r2, r3);
    const z = i32x4.splat(0);
    let sumi0 = chunkK45x2(five, 0, w, p0, p1, p2, p3, x, y, xq, u8Quad(t0, 0), u8Quad(t0, 1), z, z);
    let sumi1 = second;
    sumi0 = chunkK45x2(five, 1, w, p0, p1, p2, p3, x, y, xq, u8Quad(t0, 2), u8Quad(t0, 3), sumi0, sumi1);
    sumi1 = second;
    sumi0 = chunkK45x2(five, 2, w, p0, p1, p2, p3, x, y, xq, u8Quad(t1, 0), u8Quad(t1, 1), sumi0, sumi1);
    sumi1 = second;
    sumi0 = chunkK45x2(five, 3, w, p0, p1, p2, p3, x, y, xq, u8Quad(t1, 2), u8Quad(t1, 3), sumi0, sumi1);
    sumi1 = second;
    const dm = loadU32x4(p0, p1, p2, p3);
    const dw = halfHigh(i32x4.shl(dm, 16), hmask, hmagic);
    const dmin = halfHigh(dm, hmask, hmagic);
    const dx = f32x4.splat(load<f32>(x));
    const dy = f32x4.splat(load<f32>(y));
    acc0 = f32x4.add(acc0, f32x4.mul(f32x4.convert_i32x4_s(sumi0), f32x4.mul(dw, dx)));
    acc0 = f32x4.sub(acc0, f32x4.mul(f32x4.convert_i32x4_s(summ0), f32x4.mul(dmin, dx)));
    acc1 = f32x4.add(acc1, f32x4.mul(f32x4.convert_i32x4_s(sumi1), f32x4.mul(dw, dy)));
    acc1 = f32x4.sub(acc1, f32x4.mul(f32x4.convert_i32x4_s(summ1), f32x4.mul(dmin, dy)));
    p0 += wBytes;
    p1 += wBytes;
    p2 += wBytes;
    p3 += wBytes;
    x += 292;
  }
  storeRows(out0, acc0, nr, accumulate);
  storeRows(out1, acc1, nr, accumulate);
}

/** rowQ6 for two tokens' activations; token 1's sums go to `second`. */
// @ts-ignore: decorator
@inline function rowQ6x2(hi: bool, h: i32, k: i32, p: usize, xe: v128, xo: v128, ye: v128, yo: v128): v128 {
  const l = v128.load(p + 64 * h + 16 * k);
  const hq = v128.load(p + 128 + 32 * h + 16 * (k & 1));
  const sh = 2 * (k >> 1);
  let we: v128, wo: v128;
  if (!hi) {
    const s = shiftI16(hq, 4 - sh);
    we = v128.or(v128.and(l, constant(CONST_0F)), v128.and(s, constant(CONST_30)));
    wo = v128.or(v128.and(l, constant(CONST_0F00)), v128.and(s, constant(CONST_3000)));
  } else {
    we = v128.or(v128.and(l, constant(CONST_00F0)), v128.and(shiftI16(hq, 4 - sh), constant(CONST_0300)));
    wo = v128.or(i16x8.shr_u(l, 12), v128.and(i16x8.shr_u(hq, 8 + sh), constant(CONST_30)));
  }
  second = i32x4.add(i32x4.dot_i16x8_s(we, ye), i32x4.dot_i16x8_s(wo, yo));
  return i32x4.add(i32x4.dot_i16x8_s(we, xe), i32x4.dot_i16x8_s(wo, xo));
}

/** quarterQ6 for two tokens (x, y); token 1's result goes to `second`. */
// @ts-ignore: decorator
@inline function quarterQ6x2(
  h: i32,
  k: i32,
  w: usize,
  p0: usize,
  p1: usize,
  p2: usize,
  p3: usize,
  x: usize,
  y: usize,
  xq: usize,
  sA: v128,
  sB: v128,
  sumi0: v128,
  sumi1: v128,
): v128 {
  const z = i32x4.splat(0);
  let xae = z, xao = z, xbe = z, xbo = z, yae = z, yao = z, ybe = z, ybo = z;
  if (x >= xq) {
    const mff00 = constant(CONST_FF00);
    const o: usize = 4 + 128 * h + 16 * k;
    let a = v128.load(x + o);
    xae = i16x8.shl(a, 8);
    xao = i16x8.shr_s(a, 8);
    a = v128.load(x + o, 64);
    xbe = i16x8.shr_s(i16x8.shl(a, 8), 4);
    xbo = v128.and(a, mff00);
    a = v128.load(y + o);
    yae = i16x8.shl(a, 8);
    yao = i16x8.shr_s(a, 8);
    a = v128.load(y + o, 64);
    ybe = i16x8.shr_s(i16x8.shl(a, 8), 4);
    ybo = v128.and(a, mff00);
  }
  let a0 = z, b0 = z, a01 = z, b01 = z, a2 = z, b2 = z, a23 = z, b23 = z;
  let c0 = z, d0 = z, c01 = z, d01 = z, c2 = z, d2 = z, c23 = z, d23 = z;
  if (p0 >= w) {
    a0 = rowQ6x2(false, h, k, p0, xae, xao, yae, yao);
    c0 = second;
    b0 = rowQ6x2(true, h, k, p0, xbe, xbo, ybe, ybo);
    d0 = second;
  }
  if (p1 >= w) {
    a01 = pairAdd(a0, rowQ6x2(false, h, k, p1, xae, xao, yae, yao));
    c01 = pairAdd(c0, second);
    b01 = pairAdd(b0, rowQ6x2(true, h, k, p1, xbe, xbo, ybe, ybo));
    d01 = pairAdd(d0, second);
  }
  if (p2 >= w) {
    a2 = rowQ6x2(false, h, k, p2, xae, xao, yae, yao);
    c2 = second;
    b2 = rowQ6x2(true, h, k, p2, xbe, xbo, ybe, ybo);
    d2 = second;
  }
  if (p3 >= w) {
    a23 = pairAdd(a2, rowQ6x2(false, h, k, p3, xae, xao, yae, yao));
    c23 = pairAdd(c2, second);
    b23 = pairAdd(b2, rowQ6x2(true, h, k, p3, xbe, xbo, ybe, ybo));
    d23 = pairAdd(d2, second);
    sumi1 = i32x4.add(
      sumi1,
      i32x4.add(
        i32x4.mul(i32x4.shr_s(quadAdd(c01, c23), 8), sA),
        i32x4.mul(i32x4.shr_s(quadAdd(d01, d23), 8), sB),
      ),
    );
    sumi0 = i32x4.add(
      sumi0,
      i32x4.add(
        i32x4.mul(i32x4.shr_s(quadAdd(a01, a23), 8), sA),
        i32x4.mul(i32x4.shr_s(quadAdd(b01, b23), 8), sB),
      ),
    );
  }
  second = sumi1;
  return sumi0;
}

/** Four Q6_K rows · two tokens; writes both tokens' four outputs. */
// @ts-ignore: decorator
@inline function dotRowsQ6x2(
  w: usize,
  p0: usize,
  p1: usize,
  p2: usize,
  p3: usize,
  x: usize,
  xq: usize,
  nb: i32,
  wStep: usize,
  out0: usize,
  out1: usize,
  nr: i32,
  accumulate: i32,
): void {
  const hmask = constant(CONST_HALF_MASK);
  const hmagic = constant(CONST_HALF_MAGIC);
  const xRow = <usize>nb * 292;
  let acc0 = f32x4.splat(0);
  let acc1 = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    const y = x + xRow;
    const r0 = v128.load(p0, 192);
    const r1 = v128.load(p1, 192);
    const r2 = v128.load(p2, 192);
    const r3 = v128.load(p3, 192);
    let bs0 = v128.load(x, 260);
    let bs1 = v128.load(x, 276);
    const corr0 = quadAdd(
      pairAdd(offsetQ6(r0, bs0, bs1), offsetQ6(r1, bs0, bs1)),
      pairAdd(offsetQ6(r2, bs0, bs1), offsetQ6(r3, bs0, bs1)),
    );
    bs0 = v128.load(y, 260);
    bs1 = v128.load(y, 276);
    const corr1 = quadAdd(
      pairAdd(offsetQ6(r0, bs0, bs1), offsetQ6(r1, bs0, bs1)),
      pairAdd(offsetQ6(r2, bs0, bs1), offsetQ6(r3, bs0, bs1)),
    );
    const ab = i8x16.shuffle(r0, r1, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const cd = i8x16.shuffle(r2, r3, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const abH = i8x16.shuffle(r0, r1, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const cdH = i8x16.shuffle(r2, r3, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const t0 = i16x8.shuffle(ab, cd, 0, 8, 1, 9, 2, 10, 3, 11);
    const t1 = i16x8.shuffle(ab, cd, 4, 12, 5, 13, 6, 14, 7, 15);
    const t2 = i16x8.shuffle(abH, cdH, 0, 8, 1, 9, 2, 10, 3, 11);
    const t3 = i16x8.shuffle(abH, cdH, 4, 12, 5, 13, 6, 14, 7, 15);
    let s0 = i32x4.mul(corr0, i32x4.splat(-32));
    let s1 = i32x4.mul(corr1, i32x4.splat(-32));
    s0 = quarterQ6x2(0, 0, w, p0, p1, p2, p3, x, y, xq, i8Quad(t0, 0), i8Quad(t1, 0), s0, s1);
    s1 = second;
    s0 = quarterQ6x2(0, 1, w, p0, p1, p2, p3, x, y, xq, i8Quad(t0, 1), i8Quad(t1, 1), s0, s1);
    s1 = second;
    s0 = quarterQ6x2(0, 2, w, p0, p1, p2, p3, x, y, xq, i8Quad(t0, 2), i8Quad(t1, 2), s0, s1);
    s1 = second;
    s0 = quarterQ6x2(0, 3, w, p0, p1, p2, p3, x, y, xq, i8Quad(t0, 3), i8Quad(t1, 3), s0, s1);
    s1 = second;
    s0 = quarterQ6x2(1, 0, w, p0, p1, p2, p3, x, y, xq, i8Quad(t2, 0), i8Quad(t3, 0), s0, s1);
    s1 = second;
    s0 = quarterQ6x2(1, 1, w, p0, p1, p2, p3, x, y, xq, i8Quad(t2, 1), i8Quad(t3, 1), s0, s1);
    s1 = second;
    s0 = quarterQ6x2(1, 2, w, p0, p1, p2, p3, x, y, xq, i8Quad(t2, 2), i8Quad(t3, 2), s0, s1);
    s1 = second;
    s0 = quarterQ6x2(1, 3, w, p0, p1, p2, p3, x, y, xq, i8Quad(t2, 3), i8Quad(t3, 3), s0, s1);
    s1 = second;
    const dw = half4(p0 + 208, p1 + 208, p2 + 208, p3 + 208, hmask, hmagic);
    acc0 = f32x4.add(acc0, f32x4.mul(f32x4.convert_i32x4_s(s0), f32x4.mul(dw, f32x4.splat(load<f32>(x)))));
    acc1 = f32x4.add(acc1, f32x4.mul(f32x4.convert_i32x4_s(s1), f32x4.mul(dw, f32x4.splat(load<f32>(y)))));
    p0 += wStep;
    p1 += wStep;
    p2 += wStep;
    p3 += wStep;
    x += 292;
  }
  storeRows(out0, acc0, nr, accumulate);
  storeRows(out1, acc1, nr, accumulate);
}

const K_Q4_K: i32 = 0;
const K_Q5_K: i32 = 1;
const K_Q6_K: i32 = 2;

// @ts-ignore: decorator
@inline function matmulK(
  kind: i32,
  wBytes: usize,
  w: usize,
  xq: usize,
  out: usize,
  rows: i32,
  cols: i32,
  n: i32,
  acc: i32,
  r0: i32,
  r1: i32,
  interleaved: bool,
): void {
  const nb = cols >> 8;
  const wRow = <usize>nb * wBytes;
  const xRow = <usize>nb * 292;
  // as in matmul32: the interleaved layout puts a group's four rows' blocks in turn
  const wStep: usize = interleaved ? 4 * wBytes : wBytes;
  const rowStep: usize = interleaved ? wBytes : wRow;
  for (let t0 = 0; t0 < n; t0 += TOKEN_CHUNK) {
    const t1 = min(n, t0 + TOKEN_CHUNK);
    for (let r = r0; r < r1; r += 4) {
      const nr = min(4, r1 - r);
      const p0 = w + <usize>r * wRow;
      const p1 = nr > 1 ? p0 + rowStep : p0;
      const p2 = nr > 2 ? p0 + 2 * rowStep : p0;
      const p3 = nr > 3 ? p0 + 3 * rowStep : p0;
      let t = t0;
      for (; t + 2 <= t1; t += 2) {
        const x = xq + <usize>t * xRow;
        const o = out + ((<usize>t * <usize>rows + <usize>r) << 2);
        const o1 = o + (<usize>rows << 2);
        if (kind == K_Q6_K) dotRowsQ6x2(w, p0, p1, p2, p3, x, xq, nb, wStep, o, o1, nr, acc);
        else dotRowsK45x2(kind == K_Q5_K, w, p0, p1, p2, p3, x, xq, nb, wStep, o, o1, nr, acc);
      }
      for (; t < t1; t++) {
        const x = xq + <usize>t * xRow;
        let v: v128;
        if (kind == K_Q6_K) v = dotRowsQ6(w, p0, p1, p2, p3, x, xq, nb, wStep);
        else v = dotRowsK45(kind == K_Q5_K, w, p0, p1, p2, p3, x, xq, nb, wStep);
        storeRows(out + ((<usize>t * <usize>rows + <usize>r) << 2), v, nr, acc);
      }
    }
  }
}

export function matmulQ4_K(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulK(K_Q4_K, 144, w, xq, out, rows, cols, n, acc, r0, r1, false);
}

/** matmulQ4_K on weights in the interleaved layout (interleaveRows4); rows % 4 == 0. */
export function matmulQ4_Kx4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulK(K_Q4_K, 144, w, xq, out, rows, cols, n, acc, r0, r1, true);
}

export function matmulQ5_K(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulK(K_Q5_K, 176, w, xq, out, rows, cols, n, acc, r0, r1, false);
}

/** matmulQ5_K on weights in the interleaved layout (interleaveRows4); rows % 4 == 0. */
export function matmulQ5_Kx4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulK(K_Q5_K, 176, w, xq, out, rows, cols, n, acc, r0, r1, true);
}

export function matmulQ6_K(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulK(K_Q6_K, 210, w, xq, out, rows, cols, n, acc, r0, r1, false);
}

/** matmulQ6_K on weights in the interleaved layout (interleaveRows4); rows % 4 == 0. */
export function matmulQ6_Kx4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulK(K_Q6_K, 210, w, xq, out, rows, cols, n, acc, r0, r1, true);
}
// ---------------------------------------------------------------------------------------------
// Dequantizers (rows = blocks; F16/BF16 blocks are single elements): dst gets nBlocks·blockSize
// f32, block b at dst + b·blockSize·4. Bit-identical to src/quant/reference.ts dequantizeRow.
// ---------------------------------------------------------------------------------------------

/** Exact f16 -> f32 of the low halves of four i32 lanes (infinities and NaNs included). */
// @ts-ignore: decorator
@inline function halfToF32x4Exact(h: v128): v128 {
  const finite = halfHighToF32(i32x4.shl(h, 16));
  const special = v128.or(
    v128.or(i32x4.shl(v128.and(h, i32x4.splat(0x8000)), 16), i32x4.splat(0x7f800000)),
    i32x4.shl(v128.and(h, i32x4.splat(0x3ff)), 13),
  );
  const isSpecial = i32x4.eq(v128.and(h, i32x4.splat(0x7c00)), i32x4.splat(0x7c00));
  return v128.bitselect(special, finite, isSpecial);
}

export function dequantizeF16(src: usize, dst: usize, nBlocks: i32, r0: i32, r1: i32): void {
  let i = r0;
  for (; i + 8 <= r1; i += 8) {
    const h = v128.load(src + (<usize>i << 1));
    const d = dst + (<usize>i << 2);
    v128.store(d, halfToF32x4Exact(i32x4.extend_low_i16x8_u(h)));
    v128.store(d, halfToF32x4Exact(i32x4.extend_high_i16x8_u(h)), 16);
  }
  for (; i < r1; i++) {
    const h = i32x4.splat(<i32>load<u16>(src + (<usize>i << 1)));
    store<f32>(dst + (<usize>i << 2), f32x4.extract_lane(halfToF32x4Exact(h), 0));
  }
}

export function dequantizeBF16(src: usize, dst: usize, nBlocks: i32, r0: i32, r1: i32): void {
  let i = r0;
  const zero = i32x4.splat(0);
  for (; i + 8 <= r1; i += 8) {
    const h = v128.load(src + (<usize>i << 1));
    const d = dst + (<usize>i << 2);
    v128.store(d, i16x8.shuffle(zero, h, 0, 8, 0, 9, 0, 10, 0, 11));
    v128.store(d, i16x8.shuffle(zero, h, 0, 12, 0, 13, 0, 14, 0, 15), 16);
  }
  for (; i < r1; i++) store<u32>(dst + (<usize>i << 2), <u32>load<u16>(src + (<usize>i << 1)) << 16);
}

/** Stores 16 i16 values (a: elements 0..7, b: 8..15) as f32 times d, plus m when given. */
// @ts-ignore: decorator
@inline function storeScaled16(dst: usize, a: v128, b: v128, d: v128, m: v128, withMin: bool, subMin: bool): void {
  let v0 = f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(a)), d);
  let v1 = f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(a)), d);
  let v2 = f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(b)), d);
  let v3 = f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(b)), d);
  if (withMin) {
    if (subMin) {
      v0 = f32x4.sub(v0, m);
      v1 = f32x4.sub(v1, m);
      v2 = f32x4.sub(v2, m);
      v3 = f32x4.sub(v3, m);
    } else {
      v0 = f32x4.add(v0, m);
      v1 = f32x4.add(v1, m);
      v2 = f32x4.add(v2, m);
      v3 = f32x4.add(v3, m);
    }
  }
  v128.store(dst, v0);
  v128.store(dst, v1, 16);
  v128.store(dst, v2, 32);
  v128.store(dst, v3, 48);
}

/** 16 packed nibble bytes to the low (0..15) and high (16..31) element groups as bytes. */
// @ts-ignore: decorator
@inline function nibblesLow(q: v128): v128 {
  return v128.and(q, i8x16.splat(0x0f));
}

// @ts-ignore: decorator
@inline function nibblesHigh(q: v128): v128 {
  return i8x16.shr_u(q, 4);
}

/** Bit j of qh (j < 16 from `bits`) as byte j = 0x10 or 0, for the 16 bytes of one half. */
// @ts-ignore: decorator
@inline function highBits16(bits: u32): v128 {
  const v = i16x8.splat(<i16>bits);
  // byte j takes bit j: spread the 16 bits over bytes (low byte to bytes 0..7, high to 8..15)
  const spread = i8x16.swizzle(v, i8x16(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
  const sel = v128.and(spread, i8x16(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128));
  return v128.andnot(i8x16.splat(0x10), i8x16.eq(sel, i8x16.splat(0)));
}

// @ts-ignore: decorator
@inline function dequant32(kind: i32, src: usize, dst: usize, nBlocks: i32, r0: i32, r1: i32, bytes: usize): void {
  for (let b = r0; b < r1; b++) {
    const p = src + <usize>b * bytes;
    const o = dst + (<usize>b << 7);
    const d = f32x4.splat(halfToF32(load<u16>(p)));
    let lo: v128, hi: v128;
    let m = f32x4.splat(0);
    if (kind == K_Q8_0) {
      lo = v128.load(p, 2);
      hi = v128.load(p, 18);
    } else {
      const qo: usize = kind == K_Q4_0 ? 2 : kind == K_Q4_1 ? 4 : kind == K_Q5_0 ? 6 : 8;
      const q = v128.load(p + qo);
      lo = nibblesLow(q);
      hi = nibblesHigh(q);
      if (kind == K_Q5_0 || kind == K_Q5_1) {
        const qh = load<u32>(p + (kind == K_Q5_0 ? 2 : 4));
        lo = v128.or(lo, highBits16(qh));
        hi = v128.or(hi, highBits16(qh >> 16));
      }
      if (kind == K_Q4_0) {
        lo = i8x16.sub(lo, i8x16.splat(8));
        hi = i8x16.sub(hi, i8x16.splat(8));
      } else if (kind == K_Q5_0) {
        lo = i8x16.sub(lo, i8x16.splat(16));
        hi = i8x16.sub(hi, i8x16.splat(16));
      } else {
        m = f32x4.splat(halfToF32(load<u16>(p, 2)));
      }
    }
    const withMin = kind == K_Q4_1 || kind == K_Q5_1;
    storeScaled16(o, i16x8.extend_low_i8x16_s(lo), i16x8.extend_high_i8x16_s(lo), d, m, withMin, false);
    storeScaled16(o + 64, i16x8.extend_low_i8x16_s(hi), i16x8.extend_high_i8x16_s(hi), d, m, withMin, false);
  }
}

export function dequantizeQ4_0(src: usize, dst: usize, nBlocks: i32, r0: i32, r1: i32): void {
  dequant32(K_Q4_0, src, dst, nBlocks, r0, r1, 18);
}

export function dequantizeQ4_1(src: usize, dst: usize, nBlocks: i32, r0: i32, r1: i32): void {
  dequant32(K_Q4_1, src, dst, nBlocks, r0, r1, 20);
}

export function dequantizeQ5_0(src: usize, dst: usize, nBlocks: i32, r0: i32, r1: i32): void {
  dequant32(K_Q5_0, src, dst, nBlocks, r0, r1, 22);
}

export function dequantizeQ5_1(src: usize, dst: usize, nBlocks: i32, r0: i32, r1: i32): void {
  dequant32(K_Q5_1, src, dst, nBlocks, r0, r1, 24);
}

export function dequantizeQ8_0(src: usize, dst: usize, nBlocks: i32, r0: i32, r1: i32): void {
  dequant32(K_Q8_0, src, dst, nBlocks, r0, r1, 34);
}

/** Q4_K / Q5_K: y = (d·sc)·q − dmin·m per 32-element sub-block. */
// @ts-ignore: decorator
@inline function dequantK45(five: bool, src: usize, dst: usize, r0: i32, r1: i32, bytes: usize): void {
  for (let b = r0; b < r1; b++) {
    const p = src + <usize>b * bytes;
    const o = dst + (<usize>b << 10);
    const d = halfToF32(load<u16>(p));
    const dmin = halfToF32(load<u16>(p, 2));
    const sm = scalesMinsK4(p);
    const qs = p + (five ? 48 : 16);
    const h0 = v128.load(p, 16);
    const h1 = v128.load(p, 32);
    for (let c = 0; c < 4; c++) {
      const q0 = v128.load(qs + (<usize>c << 5));
      const q1 = v128.load(qs + (<usize>c << 5), 16);
      let lo0 = nibblesLow(q0);
      let lo1 = nibblesLow(q1);
      let hi0 = nibblesHigh(q0);
      let hi1 = nibblesHigh(q1);
      if (five) {
        const bl: i32 = 1 << (2 * c);
        const bitLo = i8x16.splat(<i8>bl);
        const bitHi = i8x16.splat(<i8>(bl << 1));
        const s16 = i8x16.splat(0x10);
        const zero = i8x16.splat(0);
        lo0 = v128.or(lo0, v128.andnot(s16, i8x16.eq(v128.and(h0, bitLo), zero)));
        lo1 = v128.or(lo1, v128.andnot(s16, i8x16.eq(v128.and(h1, bitLo), zero)));
        hi0 = v128.or(hi0, v128.andnot(s16, i8x16.eq(v128.and(h0, bitHi), zero)));
        hi1 = v128.or(hi1, v128.andnot(s16, i8x16.eq(v128.and(h1, bitHi), zero)));
      }
      const j = 2 * c;
      const scLo = <f32>i8x16.extract_lane_u(i8x16.swizzle(sm, i8x16.splat(<i8>j)), 0);
      const scHi = <f32>i8x16.extract_lane_u(i8x16.swizzle(sm, i8x16.splat(<i8>(j + 1))), 0);
      const mLo = <f32>i8x16.extract_lane_u(i8x16.swizzle(sm, i8x16.splat(<i8>(j + 8))), 0);
      const mHi = <f32>i8x16.extract_lane_u(i8x16.swizzle(sm, i8x16.splat(<i8>(j + 9))), 0);
      const oc = o + (<usize>c << 8);
      const dLo = f32x4.splat(d * scLo);
      const mLoV = f32x4.splat(dmin * mLo);
      const dHi = f32x4.splat(d * scHi);
      const mHiV = f32x4.splat(dmin * mHi);
      storeScaled16(oc, i16x8.extend_low_i8x16_u(lo0), i16x8.extend_high_i8x16_u(lo0), dLo, mLoV, true, true);
      storeScaled16(oc + 64, i16x8.extend_low_i8x16_u(lo1), i16x8.extend_high_i8x16_u(lo1), dLo, mLoV, true, true);
      storeScaled16(oc + 128, i16x8.extend_low_i8x16_u(hi0), i16x8.extend_high_i8x16_u(hi0), dHi, mHiV, true, true);
      storeScaled16(oc + 192, i16x8.extend_low_i8x16_u(hi1), i16x8.extend_high_i8x16_u(hi1), dHi, mHiV, true, true);
    }
  }
}

export function dequantizeQ4_K(src: usize, dst: usize, nBlocks: i32, r0: i32, r1: i32): void {
  dequantK45(false, src, dst, r0, r1, 144);
}

export function dequantizeQ5_K(src: usize, dst: usize, nBlocks: i32, r0: i32, r1: i32): void {
  dequantK45(true, src, dst, r0, r1, 176);
}

/** Q6_K: y = (d·sc)·(q − 32) per 16-element sub-block. */
export function dequantizeQ6_K(src: usize, dst: usize, nBlocks: i32, r0: i32, r1: i32): void {
  const m4 = i8x16.splat(0x0f);
  const m2 = i8x16.splat(0x30);
  const off = i8x16.splat(32);
  for (let b = r0; b < r1; b++) {
    const p = src + <usize>b * 210;
    const o = dst + (<usize>b << 10);
    const d = halfToF32(load<u16>(p, 208));
    for (let h = 0; h < 2; h++) {
      const ql = p + (<usize>h << 6);
      const qh = p + 128 + (<usize>h << 5);
      const sc = p + 192 + (<usize>h << 3);
      const oh = o + (<usize>h << 9);
      for (let k = 0; k < 4; k++) {
        // sub-block k: low nibbles of ql[16k..] with qh bits sh..sh+1; sub-block k+4: high nibbles, bits sh+4..
        const l = v128.load(ql + (<usize>k << 4));
        const hq = v128.load(qh + (<usize>(k & 1) << 4));
        const sh = 2 * (k >> 1);
        const qa = i8x16.sub(v128.or(v128.and(l, m4), v128.and(i8x16.shl(i8x16.shr_u(hq, sh), 4), m2)), off);
        const qb = i8x16.sub(v128.or(i8x16.shr_u(l, 4), v128.and(i8x16.shl(i8x16.shr_u(hq, sh + 4), 4), m2)), off);
        const da = f32x4.splat(d * <f32>load<i8>(sc + k));
        const db = f32x4.splat(d * <f32>load<i8>(sc + k + 4));
        storeScaled16(oh + (<usize>k << 6), i16x8.extend_low_i8x16_s(qa), i16x8.extend_high_i8x16_s(qa), da, da, false, false);
        storeScaled16(oh + 256 + (<usize>k << 6), i16x8.extend_low_i8x16_s(qb), i16x8.extend_high_i8x16_s(qb), db, db, false, false);
      }
    }
  }
}
