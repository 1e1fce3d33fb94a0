// Matrix products of the 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) on rows and
// on the interleaved layout x4, and the relaxed-SIMD Q4_0 tile (kernels-relaxed.wasm). Shared
// row helpers and the driver (matmul32) are in quant-common.ts.

import {
  CONST_00F0,
  CONST_0F,
  CONST_0F00,
  CONST_0F0F,
  CONST_10,
  CONST_2048,
  CONST_8,
  CONST_EVEN_BITS,
  CONST_FF00,
  CONST_HALF_MAGIC,
  CONST_HALF_MAGIC_256,
  CONST_HALF_MASK,
  CONST_NEG16,
  CONST_ODD_BITS,
  CONST_ONES,
  K_Q4_0,
  K_Q4_1,
  K_Q5_0,
  K_Q5_1,
  K_Q8_0,
  TOKEN_CHUNK,
  constant,
  dot4,
  dotNibbles256,
  evenI8,
  half4,
  halfHigh,
  halfSplat,
  loadU32x4,
  oddI8,
  pairAdd,
  quadAdd,
  storeRows,
  storeTokens4,
} from "./quant-common";

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
