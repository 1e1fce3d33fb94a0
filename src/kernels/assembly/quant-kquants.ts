// K-quant matrix products (256-element super-blocks, Q8_K activations): Q2_K, Q3_K, Q4_K, Q5_K,
// Q6_K, on rows and on the interleaved layout x4.

import {
  CONST_00F0,
  CONST_0100,
  CONST_0300,
  CONST_0F,
  CONST_0F00,
  CONST_0F0F,
  CONST_10,
  CONST_1000,
  CONST_30,
  CONST_3000,
  CONST_FF00,
  CONST_HALF_MAGIC,
  CONST_HALF_MASK,
  TOKEN_CHUNK,
  constant,
  dot4,
  half4,
  halfHigh,
  loadU32x4,
  pairAdd,
  quadAdd,
  scalesMinsK4,
  shiftI16,
  storeRows,
} from "./quant-common";

// ---------------------------------------------------------------------------------------------
// K-quants (256-element super-blocks, Q8_K activations)
// ---------------------------------------------------------------------------------------------

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

/** Σ_j sc_j·bsum_j of one row (lanes add up to it), sc its 16 sub-block factors as signed bytes: the offsets of Q6_K and Q3_K, the mins of Q2_K. */
// @ts-ignore: decorator
@inline function bsumDot(sc: v128, bs0: v128, bs1: v128): v128 {
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
        pairAdd(bsumDot(r0, bs0, bs1), bsumDot(r1, bs0, bs1)),
        pairAdd(bsumDot(r2, bs0, bs1), bsumDot(r3, bs0, bs1)),
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
      pairAdd(bsumDot(r0, bs0, bs1), bsumDot(r1, bs0, bs1)),
      pairAdd(bsumDot(r2, bs0, bs1), bsumDot(r3, bs0, bs1)),
    );
    bs0 = v128.load(y, 260);
    bs1 = v128.load(y, 276);
    const corr1 = quadAdd(
      pairAdd(bsumDot(r0, bs0, bs1), bsumDot(r1, bs0, bs1)),
      pairAdd(bsumDot(r2, bs0, bs1), bsumDot(r3, bs0, bs1)),
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

// ---- Q2_K and Q3_K: four rows (lanes) · one token, 16-element sub-blocks ----
//
// Q2_K {scales[16] (sc | m << 4), qs[64], d, dmin: f16} 84 B: element 128h + 32s + l is bits 2s..2s+1
// of qs[32h + l], sub-block j = element / 16 has scale sc_j and min m_j: w = d·sc_j·q − dmin·m_j.
// Q3_K {hmask[32], qs[64], scales[12], d: f16} 110 B: the same 2-bit layout, plus bit 4h + s of
// hmask[l] (0 subtracts 4), and 6-bit scales stored +32: w = d·(sc_j − 32)·q, q in −4..3.
// Q3_K's quants are taken unsigned (q + 4 = the two bits | the hmask bit << 2) and the offset
// leaves through the bsums, as Q6_K's does. A sub-block's quants are masked in place in their i16
// lanes (4^s·q in the even byte, 256·4^s·q in the odd one; for s = 3, which would not fit, the odd
// bytes are shifted down), against activations prepared to match (256·x even, x or 256·x odd), so
// each row's sum comes out as 256·4^s·Σq·x, exactly; the four rows' sums are transposed into lanes
// and scaled down before the sub-block scales multiply. The integers are those of ggml's
// ggml_vec_dot_q2_K_q8_K / q3_K, and the float work after them is one row's at a time, per lane.

/** Bytes 4q..4q+3 of four rows transposed: byte 4j + r of the result is row r's byte 4q + j. */
// @ts-ignore: decorator
@inline function transposeQuarter(a: v128, b: v128, c: v128, d: v128, q: i32): v128 {
  if (q < 2) {
    const ab = i8x16.shuffle(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const cd = i8x16.shuffle(c, d, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    return q == 0 ? i16x8.shuffle(ab, cd, 0, 8, 1, 9, 2, 10, 3, 11) : i16x8.shuffle(ab, cd, 4, 12, 5, 13, 6, 14, 7, 15);
  }
  const ab = i8x16.shuffle(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const cd = i8x16.shuffle(c, d, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  return q == 2 ? i16x8.shuffle(ab, cd, 0, 8, 1, 9, 2, 10, 3, 11) : i16x8.shuffle(ab, cd, 4, 12, 5, 13, 6, 14, 7, 15);
}

/** The 16 six-bit scales of the Q3_K block at p (0..63, before −32) as bytes 0..15, as ggml unpacks them. */
// @ts-ignore: decorator
@inline function scalesQ3(p: usize): v128 {
  const a01 = v128.load64_zero(p, 96);
  const a2 = v128.load32_splat(p, 104);
  const low = v128.and(i32x4.shuffle(a01, i32x4.shr_u(a01, 4), 0, 1, 4, 5), i8x16.splat(15));
  // a2 >> 0, 2, 4, 6 in lanes 0..3: their low bit pairs are the high bits of scales 4·lane + 0..3
  const a2s = i32x4.shuffle(a2, i32x4.shr_u(a2, 2), 0, 4, 0, 4);
  const high = i32x4.shuffle(a2s, i32x4.shr_u(a2s, 4), 0, 1, 6, 7);
  return v128.or(low, i32x4.shl(v128.and(high, i8x16.splat(3)), 4));
}

/**
 * 256·4^s × one row's Σq·x for sub-block j = 8h + 2s + t of the Q2_K/Q3_K block at p, with the
 * activations of the sub-block as 256·x (even bytes, `xe`) and, for s < 3, x (odd bytes, `xo`:
 * their quants stay in the high byte, 256·4^s·q < 2^15) or, for s = 3, 256·x (the odd quants are
 * shifted down).
 */
// @ts-ignore: decorator
@inline function rowK23(three: bool, h: i32, t: i32, s: i32, p: usize, xe: v128, xo: v128): v128 {
  const q = v128.load(p + (three ? 32 : 16) + 32 * h + 16 * t);
  const two: i32 = 3 << (2 * s);
  const m = i16x8.splat(<i16>two);
  const mo = i16x8.splat(<i16>(two << 8));
  let we = v128.and(q, m);
  let wo = s < 3 ? v128.and(q, mo) : v128.and(i16x8.shr_u(q, 8), m);
  if (three) {
    // bit 4h + s of hmask[16t + l] to bit 2s + 2, above the quant's two bits
    const hm = shiftI16(v128.load(p + 16 * t), s + 2 - 4 * h);
    const high: i32 = 4 << (2 * s);
    const bit = i16x8.splat(<i16>high);
    we = v128.or(we, v128.and(hm, bit));
    if (s < 3) wo = v128.or(wo, v128.and(hm, i16x8.splat(<i16>(high << 8))));
    else wo = v128.or(wo, v128.and(shiftI16(i16x8.shr_u(v128.load(p + 16 * t), 8), s + 2 - 4 * h), bit));
  }
  return i32x4.add(i32x4.dot_i16x8_s(we, xe), i32x4.dot_i16x8_s(wo, xo));
}

/** sumi + sc_j·Σq·x (lanes = the four rows) for sub-block j = 8h + 2s + t; `sc` the rows' scales j. */
// @ts-ignore: decorator
@inline function subK23(
  three: bool, h: i32, t: i32, s: i32, p0: usize, p1: usize, p2: usize, p3: usize, x: usize, sc: v128, sumi: v128,
): v128 {
  const xv = v128.load(x + 4 + 128 * h + 32 * s + 16 * t);
  const xe = i16x8.shl(xv, 8);
  const xo = s < 3 ? i16x8.shr_s(xv, 8) : v128.and(xv, constant(CONST_FF00));
  const s01 = pairAdd(rowK23(three, h, t, s, p0, xe, xo), rowK23(three, h, t, s, p1, xe, xo));
  const s23 = pairAdd(rowK23(three, h, t, s, p2, xe, xo), rowK23(three, h, t, s, p3, xe, xo));
  return i32x4.add(sumi, i32x4.mul(i32x4.shr_s(quadAdd(s01, s23), 8 + 2 * s), sc));
}

/** The rows' scales of sub-block j (lanes = rows), from the transposed scale quarters t0..t3. */
// @ts-ignore: decorator
@inline function scaleK23(three: bool, j: i32, t0: v128, t1: v128, t2: v128, t3: v128): v128 {
  const tq = j >> 2 == 0 ? t0 : j >> 2 == 1 ? t1 : j >> 2 == 2 ? t2 : t3;
  return three ? i8Quad(tq, j & 3) : u8Quad(tq, j & 3);
}

/** The sub-blocks 8h + t, 8h + t + 2, .. + 6 (s = 0..3) of four rows (all arguments but the rows constant). */
// @ts-ignore: decorator
@inline function quarterK23(
  three: bool, h: i32, t: i32, p0: usize, p1: usize, p2: usize, p3: usize, x: usize,
  t0: v128, t1: v128, t2: v128, t3: v128, sumi: v128,
): v128 {
  const j = 8 * h + t;
  sumi = subK23(three, h, t, 0, p0, p1, p2, p3, x, scaleK23(three, j, t0, t1, t2, t3), sumi);
  sumi = subK23(three, h, t, 1, p0, p1, p2, p3, x, scaleK23(three, j + 2, t0, t1, t2, t3), sumi);
  sumi = subK23(three, h, t, 2, p0, p1, p2, p3, x, scaleK23(three, j + 4, t0, t1, t2, t3), sumi);
  return subK23(three, h, t, 3, p0, p1, p2, p3, x, scaleK23(three, j + 6, t0, t1, t2, t3), sumi);
}

/** Four Q2_K (`three` false) or Q3_K rows · one token's Q8_K blocks, as f32x4. */
// @ts-ignore: decorator
@inline function dotRowsK23(
  three: bool, p0: usize, p1: usize, p2: usize, p3: usize, x: usize, nb: i32, wStep: usize,
): v128 {
  const hmask = constant(CONST_HALF_MASK);
  const hmagic = constant(CONST_HALF_MAGIC);
  let acc = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    const bs0 = v128.load(x, 260);
    const bs1 = v128.load(x, 276);
    let r0: v128, r1: v128, r2: v128, r3: v128;
    let sumi: v128, summ = i32x4.splat(0);
    if (three) {
      // scales − 32; Σ(q + 4)·x − 4·Σ sc·bsum gives Σq·x
      const m32 = i8x16.splat(32);
      r0 = i8x16.sub(scalesQ3(p0), m32);
      r1 = i8x16.sub(scalesQ3(p1), m32);
      r2 = i8x16.sub(scalesQ3(p2), m32);
      r3 = i8x16.sub(scalesQ3(p3), m32);
      const corr = quadAdd(
        pairAdd(bsumDot(r0, bs0, bs1), bsumDot(r1, bs0, bs1)),
        pairAdd(bsumDot(r2, bs0, bs1), bsumDot(r3, bs0, bs1)),
      );
      sumi = i32x4.mul(corr, i32x4.splat(-4));
    } else {
      // scales in the low nibbles, mins in the high ones (the mins meet the bsums)
      const s0 = v128.load(p0);
      const s1 = v128.load(p1);
      const s2 = v128.load(p2);
      const s3 = v128.load(p3);
      summ = quadAdd(
        pairAdd(bsumDot(i8x16.shr_u(s0, 4), bs0, bs1), bsumDot(i8x16.shr_u(s1, 4), bs0, bs1)),
        pairAdd(bsumDot(i8x16.shr_u(s2, 4), bs0, bs1), bsumDot(i8x16.shr_u(s3, 4), bs0, bs1)),
      );
      const low = constant(CONST_0F0F);
      r0 = v128.and(s0, low);
      r1 = v128.and(s1, low);
      r2 = v128.and(s2, low);
      r3 = v128.and(s3, low);
      sumi = i32x4.splat(0);
    }
    const t0 = transposeQuarter(r0, r1, r2, r3, 0);
    const t1 = transposeQuarter(r0, r1, r2, r3, 1);
    const t2 = transposeQuarter(r0, r1, r2, r3, 2);
    const t3 = transposeQuarter(r0, r1, r2, r3, 3);
    sumi = quarterK23(three, 0, 0, p0, p1, p2, p3, x, t0, t1, t2, t3, sumi);
    sumi = quarterK23(three, 0, 1, p0, p1, p2, p3, x, t0, t1, t2, t3, sumi);
    sumi = quarterK23(three, 1, 0, p0, p1, p2, p3, x, t0, t1, t2, t3, sumi);
    sumi = quarterK23(three, 1, 1, p0, p1, p2, p3, x, t0, t1, t2, t3, sumi);
    const dx = f32x4.splat(load<f32>(x));
    if (three) {
      acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(sumi), f32x4.mul(half4(p0 + 108, p1 + 108, p2 + 108, p3 + 108, hmask, hmagic), dx)));
    } else {
      const dm = loadU32x4(p0 + 80, p1 + 80, p2 + 80, p3 + 80);
      acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(sumi), f32x4.mul(halfHigh(i32x4.shl(dm, 16), hmask, hmagic), dx)));
      acc = f32x4.sub(acc, f32x4.mul(f32x4.convert_i32x4_s(summ), f32x4.mul(halfHigh(dm, hmask, hmagic), dx)));
    }
    p0 += wStep;
    p1 += wStep;
    p2 += wStep;
    p3 += wStep;
    x += 292;
  }
  return acc;
}

// @ts-ignore: decorator
@inline function matmulK23(
  three: bool, w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32, interleaved: bool,
): void {
  const wBytes: usize = three ? 110 : 84;
  const nb = cols >> 8;
  const wRow = <usize>nb * wBytes;
  const xRow = <usize>nb * 292;
  // as in matmulK: the interleaved layout puts a group's four rows' blocks in turn
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
      for (let t = t0; t < t1; t++) {
        const v = dotRowsK23(three, p0, p1, p2, p3, xq + <usize>t * xRow, nb, wStep);
        storeRows(out + ((<usize>t * <usize>rows + <usize>r) << 2), v, nr, acc);
      }
    }
  }
}

export function matmulQ2_K(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulK23(false, w, xq, out, rows, cols, n, acc, r0, r1, false);
}

/** matmulQ2_K on weights in the interleaved layout (interleaveRows4); rows % 4 == 0. */
export function matmulQ2_Kx4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulK23(false, w, xq, out, rows, cols, n, acc, r0, r1, true);
}

export function matmulQ3_K(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulK23(true, w, xq, out, rows, cols, n, acc, r0, r1, false);
}

/** matmulQ3_K on weights in the interleaved layout (interleaveRows4); rows % 4 == 0. */
export function matmulQ3_Kx4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulK23(true, w, xq, out, rows, cols, n, acc, r0, r1, true);
}
