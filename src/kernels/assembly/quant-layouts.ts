// Weight layouts and repacking: interleaveRows4 (x4) and the row-lane layouts r4 of Q4_0, Q2_K,
// Q3_K, Q4_K, Q5_K and Q6_K with their products (kernels-relaxed.wasm). Byte maps: src/quant/layout-reference.ts.

import {
  CONST_0F0F,
  CONST_EVEN_PAIRS,
  CONST_HALF_MAGIC,
  CONST_HALF_MASK,
  CONST_ONES,
  CONST_PAIRS,
  TOKEN_CHUNK,
  constant,
  halfHigh,
  storeRows,
} from "./quant-common";

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

const R4_Q2_K: i32 = 4;

const R4_Q3_K: i32 = 5;

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
    const wBytes: usize =
      kind == R4_Q4_0 ? 18 : kind == R4_Q4_K ? 144 : kind == R4_Q5_K ? 176 : kind == R4_Q2_K ? 84 : kind == R4_Q3_K ? 110 : 210;
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
          else if (kind == R4_Q2_K) k23r4Tokens(false, 4, pg, x, xRow, nb, o, step, acc);
          else if (kind == R4_Q3_K) k23r4Tokens(true, 4, pg, x, xRow, nb, o, step, acc);
          else k6r4Tokens(4, pg, x, xRow, nb, o, step, acc);
        }
        for (; t < t1; t++) {
          const x = xq + <usize>t * xRow;
          const o = out + <usize>t * step + (<usize>r << 2);
          if (kind == R4_Q4_0) q4r4Tokens(1, pg, x, xRow, nb, o, step, acc);
          else if (kind == R4_Q4_K) k45r4Tokens(false, 1, pg, x, xRow, nb, o, step, acc);
          else if (kind == R4_Q5_K) k45r4Tokens(true, 1, pg, x, xRow, nb, o, step, acc);
          else if (kind == R4_Q2_K) k23r4Tokens(false, 1, pg, x, xRow, nb, o, step, acc);
          else if (kind == R4_Q3_K) k23r4Tokens(true, 1, pg, x, xRow, nb, o, step, acc);
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
//   72: per sub-block j (16 elements), 48 bytes P0, P1, P2 holding four vectors V0..V3 of 6-bit
//       quants (byte 4r + i of Vg: element 16j + 4g + i of row r): Pg = Vg | (bit pair g of V3)
//       << 6, so that three of the four are one mask away and the fourth is three bit pairs.
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
          if (group < 3) store<u8>(at + 16 * group, load<u8>(at + 16 * group) | <u8>q);
          else {
            for (let g: usize = 0; g < 3; g++) {
              store<u8>(at + 16 * g, load<u8>(at + 16 * g) | <u8>(((q >> (2 * <u32>g)) & 3) << 6));
            }
          }
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

/**
 * Σ_j s_j·bsum_j per row (lanes) for the token's Q8_K block at x, the rows' 16 signed byte factors
 * s_j in the pair layout of s0..s3 (byte 8·(j >> 1) + 2r + (j & 1) of the 64).
 */
// @ts-ignore: decorator
@inline function bsumPairs(x: usize, s0: v128, s1: v128, s2: v128, s3: v128): v128 {
  // the rows' factors as i16 pairs (sub-blocks 2p, 2p + 1) against the bsums' pair p
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
  return i32x4.add(c0, c1);
}

/** acc + (sumi - 32·Σ sc·bsum)·(d·dx), as matmulQ6_K does it, for the token's Q8_K block at x. */
// @ts-ignore: decorator
@inline function k6Term(acc: v128, u: v128, x: usize, s0: v128, s1: v128, s2: v128, s3: v128, dw: v128): v128 {
  const sumi = i32x4.sub(u, i32x4.shl(bsumPairs(x, s0, s1, s2, s3), 5));
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
      const q = p + 72 + 48 * j;
      const p0 = v128.load(q);
      const p1 = v128.load(q, 16);
      const p2 = v128.load(q, 32);
      const m63 = i8x16.splat(63);
      const v0 = v128.and(p0, m63);
      const v1 = v128.and(p1, m63);
      const v2 = v128.and(p2, m63);
      const v3 = v128.or(
        v128.or(v128.and(i16x8.shr_u(p0, 6), i8x16.splat(3)), v128.and(i16x8.shr_u(p1, 4), i8x16.splat(12))),
        v128.and(i16x8.shr_u(p2, 2), i8x16.splat(48)),
      );
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

// ---------------------------------------------------------------------------------------------
// Q2_K and Q3_K in the row-lane layout (kernels-relaxed.wasm)
// ---------------------------------------------------------------------------------------------
//
// Four rows' super-block, still 336 (Q2_K) or 440 (Q3_K) bytes. For sub-block j, e_g (g < 4) is
// the vector whose byte 4r + i is the quant of element 16j + 4g + i of row r (unsigned: Q2_K's
// 0..3, Q3_K's q + 4 = 0..7, the hmask bit as 4).
//   Q2_K: 0: the four rows' d (f16), 8: their dmin (f16), 16: the 64 scale bytes (sc | m << 4),
//         sub-block j of row r at 8·(j >> 1) + 2r + (j & 1) (Q6_K's order), 80 + 16j: sub-block
//         j's quants, e_g in bit pair g.
//   Q3_K: 0: d ×4 (f16), 8: the 64 six-bit scales (0..63, before −32) in that order, i = 8·(j >> 1)
//         + 2r + (j & 1), in three vectors: the low 4 bits of scale i in L0 (8) for i < 32 or L1
//         (24), byte i & 15, nibble (i >> 4) & 1, its high 2 bits in H (40), byte i & 15, bit pair
//         i >> 4; 56 + 16j: e0 | e1 << 3 | (e2 & 3) << 6 of sub-block j; 312 + 16k:
//         (e2 >> 2) | e3 << 1 of sub-block 2k in the low nibbles, of 2k + 1 in the high ones.
// A sub-block's four dots add up in i16 (8 products of 7·128 at most per lane); two sub-blocks'
// sums are packed into each row's i16 pair (a shift, an add and a blend), so one widening dot with
// the scale bytes in their pair order, sign-extended, gives sc·Σq·x of both per row (no swizzle).
// Q3_K's −4 offset leaves through the bsums, as Q6_K's −32 does; Q2_K's mins meet the bsums the
// same way. The integers and the float work are matmulQ2_K's and matmulQ3_K's: the same bits.

/**
 * Rewrites row groups [r0, r1) of a row-major Q2_K matrix in place into the row-lane layout; each
 * thread copies its group to scratch + tid·scratchStride (4 rows' bytes) first. Done once, at load.
 */
export function repackQ2_Kr4(w: usize, cols: i32, scratch: usize, scratchStride: i32, r0: i32, r1: i32, tid: i32): void {
  repackK23r4(false, w, cols, scratch, scratchStride, r0, r1, tid);
}

/** repackQ2_Kr4 for Q3_K (440 bytes per four rows' super-block). */
export function repackQ3_Kr4(w: usize, cols: i32, scratch: usize, scratchStride: i32, r0: i32, r1: i32, tid: i32): void {
  repackK23r4(true, w, cols, scratch, scratchStride, r0, r1, tid);
}

// @ts-ignore: decorator
@inline function repackK23r4(
  three: bool, w: usize, cols: i32, scratch: usize, scratchStride: i32, r0: i32, r1: i32, tid: i32,
): void {
  const bytes: usize = three ? 110 : 84;
  const nb = <usize>(cols >> 8);
  const rb = nb * bytes;
  const tmp = scratch + <usize>tid * <usize>scratchStride;
  for (let g = r0; g < r1; g++) {
    const p = w + <usize>g * 4 * rb;
    memory.copy(tmp, p, 4 * rb);
    for (let b: usize = 0; b < nb; b++) {
      const dst = p + b * 4 * bytes;
      memory.fill(dst + 8, 0, 4 * bytes - 8);
      for (let r: usize = 0; r < 4; r++) {
        const src = tmp + r * rb + b * bytes;
        const qs = src + (three ? 32 : 16);
        const quants = dst + (three ? 56 : 80);
        if (three) {
          store<u16>(dst + 2 * r, load<u16>(src, 108));
          for (let j: usize = 0; j < 16; j++) {
            // ggml's 6-bit scale j: the low 4 bits in scales[0..7], the high 2 in scales[8..11]
            const sc = src + 96;
            const low: u32 = j < 8 ? load<u8>(sc + j) & 15 : load<u8>(sc + j - 8) >> 4;
            const v = low | (((<u32>load<u8>(sc + 8 + (j & 3)) >> (2 * <u32>(j >> 2))) & 3) << 4);
            const i: usize = 8 * (j >> 1) + 2 * r + (j & 1);
            const l = dst + 8 + 16 * (i >> 5) + (i & 15);
            const h = dst + 40 + (i & 15);
            store<u8>(l, load<u8>(l) | <u8>((v & 15) << (4 * <u32>((i >> 4) & 1))));
            store<u8>(h, load<u8>(h) | <u8>((v >> 4) << (2 * <u32>(i >> 4))));
          }
        } else {
          store<u16>(dst + 2 * r, load<u16>(src, 80));
          store<u16>(dst + 8 + 2 * r, load<u16>(src, 82));
          for (let j: usize = 0; j < 16; j++) store<u8>(dst + 16 + 8 * (j >> 1) + 2 * r + (j & 1), load<u8>(src + j));
        }
        // element e = 128h + 32s + l: bits 2s of qs[32h + l], Q3_K's hmask bit 4h + s of hmask[l]
        for (let e: usize = 0; e < 256; e++) {
          const j = e >> 4;
          const gi = (e >> 2) & 3;
          const at: usize = 4 * r + (e & 3);
          let q = (<u32>load<u8>(qs + 32 * (e >> 7) + (e & 31)) >> (2 * <u32>((e >> 5) & 3))) & 3;
          if (!three) {
            store<u8>(quants + 16 * j + at, load<u8>(quants + 16 * j + at) | <u8>(q << (2 * <u32>gi)));
            continue;
          }
          q |= ((<u32>load<u8>(src + (e & 31)) >> <u32>(e >> 5)) & 1) << 2;
          const a = quants + 16 * j + at;
          const hb = dst + 312 + 16 * (j >> 1) + at;
          const nibble = 4 * <u32>(j & 1);
          if (gi < 2) store<u8>(a, load<u8>(a) | <u8>(q << (3 * <u32>gi)));
          else if (gi == 2) {
            store<u8>(a, load<u8>(a) | <u8>((q & 3) << 6));
            store<u8>(hb, load<u8>(hb) | <u8>((q >> 2) << nibble));
          } else store<u8>(hb, load<u8>(hb) | <u8>(q << (nibble + 1)));
        }
      }
    }
  }
}

/** matmulQ2_K on weights in the row-lane layout (repackQ2_Kr4), Q8_K activations; rows % 4 == 0. */
export function matmulQ2_Kr4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulR4(R4_Q2_K, w, xq, out, rows, cols, n, acc, r0, r1);
}

/** matmulQ3_K on weights in the row-lane layout (repackQ3_Kr4), Q8_K activations; rows % 4 == 0. */
export function matmulQ3_Kr4(w: usize, xq: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32): void {
  matmulR4(R4_Q3_K, w, xq, out, rows, cols, n, acc, r0, r1);
}

/** Σq·x of one token's sub-block at x as i16 pairs per row (V0..V3 its quant vectors, 0..7). */
// @ts-ignore: decorator
@inline function k23Dots(x: usize, v0: v128, v1: v128, v2: v128, v3: v128): v128 {
  return i16x8.add(
    i16x8.add(
      i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x), v0),
      i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x, 4), v1),
    ),
    i16x8.add(
      i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x, 8), v2),
      i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x, 12), v3),
    ),
  );
}

/**
 * u + sc_j·Σ_j + sc_j'·Σ_j' per row for one token's sub-blocks j = 2k (quants V) and j' = 2k + 1 (W)
 * at x: each row's two i16 partial sums of j go to its low i16 lane, those of j' to its high one
 * (14336 at most), so one widening dot with the scale pairs sc finishes both.
 */
// @ts-ignore: decorator
@inline function k23Pair(
  u: v128, x: usize, v0: v128, v1: v128, v2: v128, v3: v128, w0: v128, w1: v128, w2: v128, w3: v128, sc: v128,
): v128 {
  const a = k23Dots(x, v0, v1, v2, v3);
  const b = k23Dots(x + 16, w0, w1, w2, w3);
  const ab = v128.bitselect(i32x4.add(a, i32x4.shr_u(a, 16)), i32x4.add(b, i32x4.shl(b, 16)), i32x4.splat(0xffff));
  return i32x4.add(u, i32x4.dot_i16x8_s(ab, sc));
}

/** acc + sumi·(d·dx) - summ·(dmin·dx), as matmulQ2_K does it (Q3_K: no second term), for dx at x. */
// @ts-ignore: decorator
@inline function k23Term(three: bool, acc: v128, sumi: v128, summ: v128, x: usize, dw: v128, dmin: v128): v128 {
  const dx = f32x4.splat(load<f32>(x));
  const a = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(sumi), f32x4.mul(dw, dx)));
  return three ? a : f32x4.sub(a, f32x4.mul(f32x4.convert_i32x4_s(summ), f32x4.mul(dmin, dx)));
}

/**
 * Quant vector e_g (g constant) of the sub-block whose quants are at q: Q2_K's bit pair g, Q3_K's
 * three bits from q and the hmask-bit vector hb (its nibble for this sub-block in the low bits).
 */
// @ts-ignore: decorator
@inline function k23Quants(three: bool, g: i32, q: usize, hb: v128): v128 {
  const v = v128.load(q);
  if (!three) return v128.and(g == 0 ? v : i16x8.shr_u(v, 2 * g), i8x16.splat(3));
  const seven = i8x16.splat(7);
  if (g == 0) return v128.and(v, seven);
  if (g == 1) return v128.and(i16x8.shr_u(v, 3), seven);
  if (g == 2) return v128.or(v128.and(i16x8.shr_u(v, 6), i8x16.splat(3)), v128.and(i16x8.shl(hb, 2), i8x16.splat(4)));
  return v128.and(i16x8.shr_u(hb, 1), seven);
}

/** Four row-lane Q2_K (Q3_K with `three`) rows · nt tokens (1 or 4; Q8_K rows xRow apart): out rows step apart. */
// @ts-ignore: decorator
@inline function k23r4Tokens(
  three: bool, nt: i32, p: usize, x: usize, xRow: usize, nb: i32, out: usize, step: usize, acc: i32,
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
    // the rows' 64 sub-block bytes in pair order, sub-blocks 4v..4v+3 in s<v>: Q2_K's sc | m << 4,
    // Q3_K's scales − 32
    let s0: v128, s1: v128, s2: v128, s3: v128;
    if (three) {
      const l0 = v128.load(p, 8);
      const l1 = v128.load(p, 24);
      const hh = v128.load(p, 40);
      const m30 = i8x16.splat(0x30);
      const m32 = i8x16.splat(32);
      s0 = i8x16.sub(v128.or(v128.and(l0, lowBits), v128.and(i16x8.shl(hh, 4), m30)), m32);
      s1 = i8x16.sub(v128.or(v128.and(i16x8.shr_u(l0, 4), lowBits), v128.and(i16x8.shl(hh, 2), m30)), m32);
      s2 = i8x16.sub(v128.or(v128.and(l1, lowBits), v128.and(hh, m30)), m32);
      s3 = i8x16.sub(v128.or(v128.and(i16x8.shr_u(l1, 4), lowBits), v128.and(i16x8.shr_u(hh, 2), m30)), m32);
    } else {
      s0 = v128.load(p, 16);
      s1 = v128.load(p, 32);
      s2 = v128.load(p, 48);
      s3 = v128.load(p, 64);
    }
    let u0 = z, u1 = z, u2 = z, u3 = z;
    for (let k: usize = 0; k < 8; k++) {
      // sub-blocks 2k and 2k + 1: their quants (Q3_K's hmask-bit vector serves both) and scales
      const q = p + (three ? 56 : 80) + 32 * k;
      const hb = three ? v128.load(p + 312 + 16 * k) : z;
      const v0 = k23Quants(three, 0, q, hb);
      const v1 = k23Quants(three, 1, q, hb);
      const v2 = k23Quants(three, 2, q, hb);
      const v3 = k23Quants(three, 3, q, hb);
      const hb1 = three ? i16x8.shr_u(hb, 4) : z;
      const w0 = k23Quants(three, 0, q + 16, hb1);
      const w1 = k23Quants(three, 1, q + 16, hb1);
      const w2 = k23Quants(three, 2, q + 16, hb1);
      const w3 = k23Quants(three, 3, q + 16, hb1);
      // the pair's scales, rows' i16 pairs: bytes 8(k & 1) .. + 7 of s<k >> 1>, sign-extended
      let sv = k < 4 ? (k < 2 ? s0 : s1) : k < 6 ? s2 : s3;
      if (!three) sv = v128.and(sv, lowBits);
      const sc = k & 1 ? i16x8.extend_high_i8x16_s(sv) : i16x8.extend_low_i8x16_s(sv);
      const xo: usize = 4 + 32 * k;
      u0 = k23Pair(u0, x + xo, v0, v1, v2, v3, w0, w1, w2, w3, sc);
      if (nt > 1) {
        u1 = k23Pair(u1, x1 + xo, v0, v1, v2, v3, w0, w1, w2, w3, sc);
        u2 = k23Pair(u2, x2 + xo, v0, v1, v2, v3, w0, w1, w2, w3, sc);
        u3 = k23Pair(u3, x3 + xo, v0, v1, v2, v3, w0, w1, w2, w3, sc);
      }
    }
    const dw = rowScales4(p, hmask, hmagic);
    if (three) {
      // Σ(q + 4)·x − 4·Σ sc·bsum
      u0 = i32x4.sub(u0, i32x4.shl(bsumPairs(x, s0, s1, s2, s3), 2));
      a0 = k23Term(true, a0, u0, z, x, dw, dw);
      if (nt > 1) {
        a1 = k23Term(true, a1, i32x4.sub(u1, i32x4.shl(bsumPairs(x1, s0, s1, s2, s3), 2)), z, x1, dw, dw);
        a2 = k23Term(true, a2, i32x4.sub(u2, i32x4.shl(bsumPairs(x2, s0, s1, s2, s3), 2)), z, x2, dw, dw);
        a3 = k23Term(true, a3, i32x4.sub(u3, i32x4.shl(bsumPairs(x3, s0, s1, s2, s3), 2)), z, x3, dw, dw);
      }
    } else {
      const dmin = rowScales4(p + 8, hmask, hmagic);
      const m0 = i8x16.shr_u(s0, 4);
      const m1 = i8x16.shr_u(s1, 4);
      const m2 = i8x16.shr_u(s2, 4);
      const m3 = i8x16.shr_u(s3, 4);
      a0 = k23Term(false, a0, u0, bsumPairs(x, m0, m1, m2, m3), x, dw, dmin);
      if (nt > 1) {
        a1 = k23Term(false, a1, u1, bsumPairs(x1, m0, m1, m2, m3), x1, dw, dmin);
        a2 = k23Term(false, a2, u2, bsumPairs(x2, m0, m1, m2, m3), x2, dw, dmin);
        a3 = k23Term(false, a3, u3, bsumPairs(x3, m0, m1, m2, m3), x3, dw, dmin);
      }
    }
    p += three ? 440 : 336;
    x += 292;
  }
  storeTile(nt, out, step, a0, a1, a2, a3, acc);
}
