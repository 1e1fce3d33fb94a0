// Dequantizers (embedding lookup, training's input gradients of frozen matrices).

import {
  K_Q4_0,
  K_Q4_1,
  K_Q5_0,
  K_Q5_1,
  K_Q8_0,
  halfHighToF32,
  halfToF32,
  scalesMinsK4,
} from "./quant-common";

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

/** Q2_K (`three` false): y = (d·sc)·q − dmin·m; Q3_K: y = (d·(sc − 32))·q, per 16-element sub-block. */
// @ts-ignore: decorator
@inline function dequantK23(three: bool, src: usize, dst: usize, r0: i32, r1: i32): void {
  const bytes: usize = three ? 110 : 84;
  for (let b = r0; b < r1; b++) {
    const p = src + <usize>b * bytes;
    const o = dst + (<usize>b << 10);
    const d = halfToF32(load<u16>(p + (three ? 108 : 80)));
    const dmin = three ? <f32>0 : halfToF32(load<u16>(p, 82));
    const qs = p + (three ? 32 : 16);
    for (let e = 0; e < 256; e += 16) {
      const h = e >> 7;
      const sh = (e >> 5) & 3;
      const half = (e >> 4) & 1;
      const q = v128.load(qs + (<usize>h << 5) + (<usize>half << 4));
      let w = v128.and(i8x16.shr_u(q, 2 * sh), i8x16.splat(3));
      const j = e >> 4;
      let dl: f32, ml: f32;
      if (three) {
        const hm = v128.load(p + (<usize>half << 4));
        const bit = v128.and(i8x16.shr_u(hm, 4 * h + sh), i8x16.splat(1));
        w = i8x16.sub(v128.or(w, i8x16.shl(bit, 2)), i8x16.splat(4));
        const s = p + 96;
        const low = j < 8 ? load<u8>(s + <usize>j) & 15 : load<u8>(s + <usize>(j - 8)) >> 4;
        const high = (load<u8>(s + 8 + <usize>(j & 3)) >> <u8>(2 * (j >> 2))) & 3;
        dl = d * <f32>(<i32>(low | (high << 4)) - 32);
        ml = 0;
      } else {
        const sc = load<u8>(p + <usize>j);
        dl = d * <f32>(sc & 15);
        ml = dmin * <f32>(sc >> 4);
      }
      const lo = i16x8.extend_low_i8x16_s(w);
      const hi = i16x8.extend_high_i8x16_s(w);
      storeScaled16(o + (<usize>e << 2), lo, hi, f32x4.splat(dl), f32x4.splat(ml), !three, true);
    }
  }
}

export function dequantizeQ2_K(src: usize, dst: usize, nBlocks: i32, r0: i32, r1: i32): void {
  dequantK23(false, src, dst, r0, r1);
}

export function dequantizeQ3_K(src: usize, dst: usize, nBlocks: i32, r0: i32, r1: i32): void {
  dequantK23(true, src, dst, r0, r1);
}
