// f32 kernels: matrix products with float weights, norms, rope, attention, activations.
//
// Every kernel follows the ABI in ../README.md: byte-offset pointers into the imported memory,
// i32 sizes, f32 scalars, then the half-open output row range [r0, r1) this thread owns (and
// `tid` where the kernel needs per-thread scratch). A kernel writes only its own output rows.
//
// Plain SIMD128 only (no relaxed SIMD, so no FMA): a product-sum is an f32x4.mul then an
// f32x4.add, two roundings. Pointers need no alignment beyond 4 bytes (v128 loads and stores
// are unaligned-safe), although 16-byte aligned rows are faster.

import { f32ToHalf, halfToF32 } from "./quant-common";

// ---------------------------------------------------------------------------------------------
// Small vector helpers
// ---------------------------------------------------------------------------------------------

/** The four horizontal sums of a, b, c, d as one vector [Σa, Σb, Σc, Σd]. */
// @ts-ignore: decorator
@inline function hsum4(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = f32x4.add(v128.shuffle<f32>(a, b, 0, 4, 1, 5), v128.shuffle<f32>(a, b, 2, 6, 3, 7));
  const cd = f32x4.add(v128.shuffle<f32>(c, d, 0, 4, 1, 5), v128.shuffle<f32>(c, d, 2, 6, 3, 7));
  return f32x4.add(v128.shuffle<f32>(ab, cd, 0, 1, 4, 5), v128.shuffle<f32>(ab, cd, 2, 3, 6, 7));
}

/** The horizontal sum of one vector. */
// @ts-ignore: decorator
@inline function hsum(a: v128): f32 {
  const b = f32x4.add(a, v128.shuffle<f32>(a, a, 2, 3, 0, 1));
  return f32x4.extract_lane(b, 0) + f32x4.extract_lane(b, 1);
}

/** The horizontal maximum of one vector. */
// @ts-ignore: decorator
@inline function hmax(a: v128): f32 {
  const b = f32x4.max(a, v128.shuffle<f32>(a, a, 2, 3, 0, 1));
  return max(f32x4.extract_lane(b, 0), f32x4.extract_lane(b, 1));
}

/** Stores v at p, or adds it to what is there when acc != 0. */
// @ts-ignore: decorator
@inline function storeAcc(p: usize, v: v128, acc: i32): void {
  if (acc) v = f32x4.add(v, v128.load(p));
  v128.store(p, v);
}

/** Stores s at p, or adds it to what is there when acc != 0. */
// @ts-ignore: decorator
@inline function storeAcc1(p: usize, s: f32, acc: i32): void {
  if (acc) s += load<f32>(p);
  store<f32>(p, s);
}

// ---------------------------------------------------------------------------------------------
// Vectorised exp
// ---------------------------------------------------------------------------------------------
//
// exp(x) = 2^n · e^r with n = round(x / ln 2), r = x - n·ln 2 (Cody–Waite, two-part ln 2) so
// |r| <= ln(2)/2, and e^r = 1 + r + r²·P(r) with the degree-5 Cephes expf polynomial. n is
// rounded with the 1.5·2^23 trick, whose low mantissa bits then are n itself, so 2^n is built
// with one shift and one add. Measured max relative error against exp of the f32 input:
// 8e-8 over [-87, 88]. Inputs are clamped to [-87.34, 88] (88 gives e^88, not inf); inputs
// below -87.34 give 0 (e^x would be subnormal).

const EXP_HI: f32 = 88.0;
const EXP_LO: f32 = -87.3365478515625;
const LOG2E: f32 = 1.44269504088896341;
const ROUND_MAGIC: f32 = 12582912.0; // 1.5 * 2^23
const LN2_HI: f32 = 0.693359375;
const LN2_LO: f32 = -2.12194440e-4;
const EXP_P0: f32 = 1.9875691500e-4;
const EXP_P1: f32 = 1.3981999507e-3;
const EXP_P2: f32 = 8.3334519073e-3;
const EXP_P3: f32 = 4.1665795894e-2;
const EXP_P4: f32 = 1.6666665459e-1;
const EXP_P5: f32 = 5.0000001201e-1;

/** exp of four lanes (see above for range and accuracy). */
// @ts-ignore: decorator
@inline function expV(x0: v128): v128 {
  const x = f32x4.max(f32x4.min(x0, f32x4.splat(EXP_HI)), f32x4.splat(EXP_LO));
  const t = f32x4.add(f32x4.mul(x, f32x4.splat(LOG2E)), f32x4.splat(ROUND_MAGIC));
  const n = f32x4.sub(t, f32x4.splat(ROUND_MAGIC));
  let r = f32x4.sub(x, f32x4.mul(n, f32x4.splat(LN2_HI)));
  r = f32x4.sub(r, f32x4.mul(n, f32x4.splat(LN2_LO)));
  let p = f32x4.add(f32x4.mul(f32x4.splat(EXP_P0), r), f32x4.splat(EXP_P1));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(EXP_P2));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(EXP_P3));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(EXP_P4));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(EXP_P5));
  const y = f32x4.add(f32x4.add(f32x4.mul(p, f32x4.mul(r, r)), r), f32x4.splat(1.0));
  const scale = i32x4.add(i32x4.shl(t, 23), i32x4.splat(0x3f800000));
  const e = f32x4.mul(y, scale);
  return v128.andnot(e, f32x4.lt(x0, f32x4.splat(EXP_LO)));
}

/** The same exp for one lane, bit-identical to expV, for loop tails. */
// @ts-ignore: decorator
@inline function exp1(x0: f32): f32 {
  return f32x4.extract_lane(expV(f32x4.splat(x0)), 0);
}

// ---------------------------------------------------------------------------------------------
// Matrix products: out[t*rows + r] (+)= Σ_k W[r, k] · x[t, k]
// ---------------------------------------------------------------------------------------------
//
// The weight element type is a type parameter, resolved at compile time:
//   f32 = f32 weights, u16 = IEEE half (f16) bits, i16 = bfloat16 bits.
// Requires cols % 4 == 0 (the caller checks; every Llama-family width is a multiple of 32).
// Rows are processed in tiles of 4 weight rows: k vectorised by 4, one f32x4 accumulator per
// (row, token), horizontal sums at the end, the 4 contiguous outputs of a token stored as one
// vector. The token width of a tile follows what V8 (Node 20, x64) does with it: V8 gives
// SIMD code 15 xmm registers, so 4 rows × 4 tokens (16 accumulators) spills 7 of them every
// iteration. With f32 weights 4 rows × 2 tokens (8 accumulators, no spills) is about 1.5×
// faster; with f16/bf16 weights 4 × 4 still wins, since each converted weight vector then
// serves 4 tokens. Leftover tokens use the 4-row matrix–vector tile, leftover rows 1-row
// tiles. With n == 1 (decode) every row goes through the 4-row matrix–vector tile.
//
// Every tile sums a (row, token) product the same way: one f32x4 chain over the 4-column
// groups in order, then the lanes as (l0 + l2) + (l1 + l3). So a token's outputs are the same
// bits whatever tile computed them, and a call with n tokens gives each token what a call with
// that token alone gives. Batched decoding of independent sequences relies on this: a sequence's
// text does not depend on which others share its step. (One chain per row costs the decode tile
// nothing measurable: decode waits on memory, not on the adds.)

/** Four weights at p (4·sizeof<T>() bytes) as f32x4. */
// @ts-ignore: decorator
@inline function loadW4<T>(p: usize): v128 {
  if (isFloat<T>()) return v128.load(p);
  // bfloat16 is the top half of an f32: interleave 16 zero bits below each half (one
  // punpcklwd; measured faster in decode than a zero-extending load and a shift).
  if (isSigned<T>()) return v128.shuffle<i16>(v128.splat<i32>(0), v128.load64_zero(p), 0, 8, 1, 9, 2, 10, 3, 11);
  return f16x4ToF32(p);
}

/**
 * Four IEEE halves at p to f32. Each half h is sign-extended to 32 bits and shifted left by
 * 13: the magnitude lands in f32 position (m << 13) and the sign fills bits 28..31; and-ing
 * with 0x8fffffff keeps the sign bit and the magnitude. Read as a float and multiplied by
 * 2^112 this rebiases the exponent of normals and scales subnormals exactly (4 instructions
 * for 4 weights, load included). Exponent-31 halves (inf, NaN) are not special-cased: they
 * read as ±2^16·(1 + mantissa/1024). Checking for them costs 20-45% of matmulF16's speed
 * in V8 (the extra vector constants are rematerialised in the loop), and model weights are
 * finite.
 */
// @ts-ignore: decorator
@inline function f16x4ToF32(p: usize): v128 {
  const y = v128.and(i32x4.shl(v128.load16x4_s(p), 13), i32x4.splat(0x8fffffff));
  return f32x4.mul(y, f32x4.splat(5.192296858534828e33)); // 2^112
}

/** 4 weight rows × 2 tokens, the f32 prefill tile. out points at out[t0*rows + r0]; os = rows·4 bytes. */
function tile4x2<T>(w: usize, ws: usize, x: usize, xs: usize, cols: i32, out: usize, os: usize, acc: i32): void {
  const zero = f32x4.splat(0);
  let c00 = zero, c01 = zero, c10 = zero, c11 = zero, c20 = zero, c21 = zero, c30 = zero, c31 = zero;
  let p0 = w, p1 = w + ws, p2 = p1 + ws, p3 = p2 + ws;
  let q0 = x, q1 = x + xs;
  const wStep = <usize>(4 * sizeof<T>());
  const qEnd = x + (<usize>cols << 2);
  while (q0 < qEnd) {
    const b0 = v128.load(q0);
    const b1 = v128.load(q1);
    let a = loadW4<T>(p0);
    c00 = f32x4.add(c00, f32x4.mul(a, b0));
    c01 = f32x4.add(c01, f32x4.mul(a, b1));
    a = loadW4<T>(p1);
    c10 = f32x4.add(c10, f32x4.mul(a, b0));
    c11 = f32x4.add(c11, f32x4.mul(a, b1));
    a = loadW4<T>(p2);
    c20 = f32x4.add(c20, f32x4.mul(a, b0));
    c21 = f32x4.add(c21, f32x4.mul(a, b1));
    a = loadW4<T>(p3);
    c30 = f32x4.add(c30, f32x4.mul(a, b0));
    c31 = f32x4.add(c31, f32x4.mul(a, b1));
    p0 += wStep;
    p1 += wStep;
    p2 += wStep;
    p3 += wStep;
    q0 += 16;
    q1 += 16;
  }
  storeAcc(out, hsum4(c00, c10, c20, c30), acc);
  storeAcc(out + os, hsum4(c01, c11, c21, c31), acc);
}

/** 4 weight rows × 4 tokens. out points at out[t0*rows + r0]; os = rows·4 bytes. */
function tile4x4<T>(w: usize, ws: usize, x: usize, xs: usize, cols: i32, out: usize, os: usize, acc: i32): void {
  const zero = f32x4.splat(0);
  let c00 = zero, c01 = zero, c02 = zero, c03 = zero;
  let c10 = zero, c11 = zero, c12 = zero, c13 = zero;
  let c20 = zero, c21 = zero, c22 = zero, c23 = zero;
  let c30 = zero, c31 = zero, c32 = zero, c33 = zero;
  const w1 = w + ws, w2 = w1 + ws, w3 = w2 + ws;
  const x1 = x + xs, x2 = x1 + xs, x3 = x2 + xs;
  const wStep = <usize>(4 * sizeof<T>());
  let wo: usize = 0;
  const xEnd = <usize>cols << 2;
  for (let xo: usize = 0; xo < xEnd; xo += 16) {
    const b0 = v128.load(x + xo);
    const b1 = v128.load(x1 + xo);
    const b2 = v128.load(x2 + xo);
    const b3 = v128.load(x3 + xo);
    const a0 = loadW4<T>(w + wo);
    c00 = f32x4.add(c00, f32x4.mul(a0, b0));
    c01 = f32x4.add(c01, f32x4.mul(a0, b1));
    c02 = f32x4.add(c02, f32x4.mul(a0, b2));
    c03 = f32x4.add(c03, f32x4.mul(a0, b3));
    const a1 = loadW4<T>(w1 + wo);
    c10 = f32x4.add(c10, f32x4.mul(a1, b0));
    c11 = f32x4.add(c11, f32x4.mul(a1, b1));
    c12 = f32x4.add(c12, f32x4.mul(a1, b2));
    c13 = f32x4.add(c13, f32x4.mul(a1, b3));
    const a2 = loadW4<T>(w2 + wo);
    c20 = f32x4.add(c20, f32x4.mul(a2, b0));
    c21 = f32x4.add(c21, f32x4.mul(a2, b1));
    c22 = f32x4.add(c22, f32x4.mul(a2, b2));
    c23 = f32x4.add(c23, f32x4.mul(a2, b3));
    const a3 = loadW4<T>(w3 + wo);
    c30 = f32x4.add(c30, f32x4.mul(a3, b0));
    c31 = f32x4.add(c31, f32x4.mul(a3, b1));
    c32 = f32x4.add(c32, f32x4.mul(a3, b2));
    c33 = f32x4.add(c33, f32x4.mul(a3, b3));
    wo += wStep;
  }
  storeAcc(out, hsum4(c00, c10, c20, c30), acc);
  storeAcc(out + os, hsum4(c01, c11, c21, c31), acc);
  storeAcc(out + 2 * os, hsum4(c02, c12, c22, c32), acc);
  storeAcc(out + 3 * os, hsum4(c03, c13, c23, c33), acc);
}

/** 4 weight rows × 1 token (the decode matrix–vector tile). out points at out[t*rows + r0]. */
// @ts-ignore: decorator
@inline function tile4x1<T>(w: usize, ws: usize, x: usize, cols: i32, out: usize, acc: i32): void {
  const zero = f32x4.splat(0);
  let c0 = zero, c1 = zero, c2 = zero, c3 = zero;
  const w1 = w + ws, w2 = w1 + ws, w3 = w2 + ws;
  const wStep = <usize>(4 * sizeof<T>());
  let wo: usize = 0;
  const xEnd = <usize>cols << 2;
  for (let xo: usize = 0; xo < xEnd; xo += 16) {
    const b = v128.load(x + xo);
    c0 = f32x4.add(c0, f32x4.mul(loadW4<T>(w + wo), b));
    c1 = f32x4.add(c1, f32x4.mul(loadW4<T>(w1 + wo), b));
    c2 = f32x4.add(c2, f32x4.mul(loadW4<T>(w2 + wo), b));
    c3 = f32x4.add(c3, f32x4.mul(loadW4<T>(w3 + wo), b));
    wo += wStep;
  }
  storeAcc(out, hsum4(c0, c1, c2, c3), acc);
}

/** 1 weight row × 4 tokens. out points at out[t0*rows + r]; os = rows·4 bytes. */
function tile1x4<T>(w: usize, x: usize, xs: usize, cols: i32, out: usize, os: usize, acc: i32): void {
  const zero = f32x4.splat(0);
  let c0 = zero, c1 = zero, c2 = zero, c3 = zero;
  const x1 = x + xs, x2 = x1 + xs, x3 = x2 + xs;
  const wStep = <usize>(4 * sizeof<T>());
  let wo: usize = 0;
  const xEnd = <usize>cols << 2;
  for (let xo: usize = 0; xo < xEnd; xo += 16) {
    const a = loadW4<T>(w + wo);
    c0 = f32x4.add(c0, f32x4.mul(a, v128.load(x + xo)));
    c1 = f32x4.add(c1, f32x4.mul(a, v128.load(x1 + xo)));
    c2 = f32x4.add(c2, f32x4.mul(a, v128.load(x2 + xo)));
    c3 = f32x4.add(c3, f32x4.mul(a, v128.load(x3 + xo)));
    wo += wStep;
  }
  const s = hsum4(c0, c1, c2, c3);
  storeAcc1(out, f32x4.extract_lane(s, 0), acc);
  storeAcc1(out + os, f32x4.extract_lane(s, 1), acc);
  storeAcc1(out + 2 * os, f32x4.extract_lane(s, 2), acc);
  storeAcc1(out + 3 * os, f32x4.extract_lane(s, 3), acc);
}

/** 1 weight row × 1 token. */
// @ts-ignore: decorator
@inline function tile1x1<T>(w: usize, x: usize, cols: i32, out: usize, acc: i32): void {
  let c = f32x4.splat(0);
  const wStep = <usize>(4 * sizeof<T>());
  let wo: usize = 0;
  const xEnd = <usize>cols << 2;
  for (let xo: usize = 0; xo < xEnd; xo += 16) {
    c = f32x4.add(c, f32x4.mul(loadW4<T>(w + wo), v128.load(x + xo)));
    wo += wStep;
  }
  storeAcc1(out, hsum(c), acc);
}

// @ts-ignore: decorator
@inline function matmulAny<T>(
  w: usize, x: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32,
): void {
  const ws = <usize>cols * sizeof<T>();
  const xs = <usize>cols << 2;
  const os = <usize>rows << 2;
  let r = r0;
  for (; r + 4 <= r1; r += 4) {
    const wr = w + <usize>r * ws;
    let t = 0;
    if (isFloat<T>()) {
      for (; t + 2 <= n; t += 2) {
        tile4x2<T>(wr, ws, x + <usize>t * xs, xs, cols, out + <usize>t * os + (<usize>r << 2), os, acc);
      }
    } else {
      for (; t + 4 <= n; t += 4) {
        tile4x4<T>(wr, ws, x + <usize>t * xs, xs, cols, out + <usize>t * os + (<usize>r << 2), os, acc);
      }
    }
    for (; t < n; t++) tile4x1<T>(wr, ws, x + <usize>t * xs, cols, out + <usize>t * os + (<usize>r << 2), acc);
  }
  for (; r < r1; r++) {
    const wr = w + <usize>r * ws;
    let t = 0;
    for (; t + 4 <= n; t += 4) {
      tile1x4<T>(wr, x + <usize>t * xs, xs, cols, out + <usize>t * os + (<usize>r << 2), os, acc);
    }
    for (; t < n; t++) tile1x1<T>(wr, x + <usize>t * xs, cols, out + <usize>t * os + (<usize>r << 2), acc);
  }
}

/** out[t*rows + r] (+)= Σ_k W[r,k]·x[t,k] for r in [r0, r1), t < n; W f32 rows × cols; cols % 4 == 0. */
export function matmulF32(
  w: usize, x: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32,
): void {
  matmulAny<f32>(w, x, out, rows, cols, n, acc, r0, r1);
}

/** As matmulF32 with W stored as IEEE half (f16) bits; cols % 4 == 0. */
export function matmulF16(
  w: usize, x: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32,
): void {
  matmulAny<u16>(w, x, out, rows, cols, n, acc, r0, r1);
}

/** As matmulF32 with W stored as bfloat16 bits; cols % 4 == 0. */
export function matmulBF16(
  w: usize, x: usize, out: usize, rows: i32, cols: i32, n: i32, acc: i32, r0: i32, r1: i32,
): void {
  matmulAny<i16>(w, x, out, rows, cols, n, acc, r0, r1);
}

// ---------------------------------------------------------------------------------------------
// RMS norm: out[t, i] = x[t, i] · w[i] / sqrt(mean_i(x[t, i]²) + eps); rows = tokens
// ---------------------------------------------------------------------------------------------

/** rows = tokens of dim floats; out may equal x. Any dim. */
export function rmsNorm(x: usize, weight: usize, out: usize, dim: i32, eps: f32, r0: i32, r1: i32): void {
  const rb = <usize>dim << 2;
  const vEnd = <usize>(dim & ~3) << 2;
  const v16End = <usize>(dim & ~15) << 2;
  for (let t = r0; t < r1; t++) {
    const xp = x + <usize>t * rb;
    const op = out + <usize>t * rb;
    let s0 = f32x4.splat(0), s1 = s0, s2 = s0, s3 = s0;
    let o: usize = 0;
    for (; o < v16End; o += 64) {
      const a = v128.load(xp + o), b = v128.load(xp + o, 16);
      const c = v128.load(xp + o, 32), d = v128.load(xp + o, 48);
      s0 = f32x4.add(s0, f32x4.mul(a, a));
      s1 = f32x4.add(s1, f32x4.mul(b, b));
      s2 = f32x4.add(s2, f32x4.mul(c, c));
      s3 = f32x4.add(s3, f32x4.mul(d, d));
    }
    for (; o < vEnd; o += 16) {
      const a = v128.load(xp + o);
      s0 = f32x4.add(s0, f32x4.mul(a, a));
    }
    let ss = hsum(f32x4.add(f32x4.add(s0, s1), f32x4.add(s2, s3)));
    for (; o < rb; o += 4) {
      const a = load<f32>(xp + o);
      ss += a * a;
    }
    const scale = <f32>(1.0 / Math.sqrt(<f64>ss / <f64>dim + <f64>eps));
    const sv = f32x4.splat(scale);
    for (o = 0; o < vEnd; o += 16) {
      v128.store(op + o, f32x4.mul(f32x4.mul(v128.load(xp + o), sv), v128.load(weight + o)));
    }
    for (; o < rb; o += 4) store<f32>(op + o, load<f32>(xp + o) * scale * load<f32>(weight + o));
  }
}

// ---------------------------------------------------------------------------------------------
// Layer norm (GPT-2, MPT): out = (x - mean) / sqrt(var + eps) · w (+ b); rows = tokens
// ---------------------------------------------------------------------------------------------
//
// As ggml computes it: the mean in f32, the centred values y = x - mean, var = Σy²/dim, then
// y · (1/sqrt(var + eps)), times w, plus b, each rounded to f32. bias == 0: no bias.

/** rows = tokens of dim floats; out may equal x. Any dim. */
export function layerNorm(
  x: usize, weight: usize, bias: usize, out: usize, dim: i32, eps: f32, r0: i32, r1: i32,
): void {
  const rb = <usize>dim << 2;
  for (let t = r0; t < r1; t++) {
    const xp = x + <usize>t * rb;
    const op = out + <usize>t * rb;
    let sum: f64 = 0;
    for (let o: usize = 0; o < rb; o += 4) sum += <f64>load<f32>(xp + o);
    const mean = <f32>sum / <f32>dim;
    let squares: f64 = 0;
    for (let o: usize = 0; o < rb; o += 4) {
      const y = load<f32>(xp + o) - mean;
      squares += <f64>y * <f64>y;
    }
    const scale = <f32>1.0 / <f32>Math.sqrt(<f64>(<f32>(squares / <f64>dim) + eps));
    for (let o: usize = 0; o < rb; o += 4) {
      let y = (load<f32>(xp + o) - mean) * scale * load<f32>(weight + o);
      if (bias) y += load<f32>(bias + o);
      store<f32>(op + o, y);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Rotary position embedding, in place
// ---------------------------------------------------------------------------------------------
//
// x is n × (nHeads·headDim); rows = n·nHeads, row = t·nHeads + h, token t at position pos0 + t.
// Pair i (0 <= i < ropeDim/2) is rotated by theta = pos · freqScale · freqBase^(-2i/ropeDim):
//   neox == 0 (llama, GGUF order):  (x[2i], x[2i+1])
//   neox != 0 (GPT-NeoX / HF order): (x[i], x[i + ropeDim/2])
// Dimensions from ropeDim to headDim are left as they are. ropeDim is even and <= headDim.
// factors != 0: ropeDim/2 f32 divisors of the pair angles (Llama 3.1's rope_freqs), as ggml's
// rope applies freq_factors: theta_i / factors[i].
// Angles, cos/sin and the rotation are computed in f64; each (token, pair) angle is computed
// once and applied to all of the token's heads within [r0, r1).

export function rope(
  x: usize, nHeads: i32, headDim: i32, ropeDim: i32, pos0: i32, freqBase: f32, freqScale: f32, neox: i32,
  factors: usize, r0: i32, r1: i32,
): void {
  ropeRows(x, nHeads, headDim, ropeDim, pos0, 0, freqBase, freqScale, neox, factors, r0, r1);
}

/**
 * rope with each token's position read from a token table (see "Token tables" below): token t is
 * at position table[t].pos. A token gets the bits `rope` gives it at that position.
 */
export function ropeAt(
  x: usize, nHeads: i32, headDim: i32, ropeDim: i32, table: usize, freqBase: f32, freqScale: f32, neox: i32,
  factors: usize, r0: i32, r1: i32,
): void {
  ropeRows(x, nHeads, headDim, ropeDim, 0, table, freqBase, freqScale, neox, factors, r0, r1);
}

/** The rope loop: token t at position pos0 + t, or table[t].pos when table != 0. */
// @ts-ignore: decorator
@inline function ropeRows(
  x: usize, nHeads: i32, headDim: i32, ropeDim: i32, pos0: i32, table: usize, freqBase: f32, freqScale: f32,
  neox: i32, factors: usize, r0: i32, r1: i32,
): void {
  const half = ropeDim >> 1;
  const step = Math.pow(<f64>freqBase, -2.0 / <f64>ropeDim);
  const hb = <usize>headDim << 2;
  // byte offsets of the pair members relative to pair i
  const aStep: usize = neox ? 4 : 8;
  const bOff: usize = neox ? <usize>half << 2 : 4;
  let row = r0;
  while (row < r1) {
    const t = row / nHeads;
    const h0 = row - t * nHeads;
    const h1 = min(nHeads, h0 + (r1 - row));
    const base = x + <usize>(t * nHeads) * hb;
    const pos = table ? load<i32>(table + <usize>t * TOKEN_ENTRY) : pos0 + t;
    let theta = <f64>pos * <f64>freqScale;
    let a: usize = 0;
    for (let i = 0; i < half; i++) {
      const angle = factors ? theta / <f64>load<f32>(factors + (<usize>i << 2)) : theta;
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      for (let h = h0; h < h1; h++) {
        const p = base + <usize>h * hb + a;
        const x0 = <f64>load<f32>(p);
        const x1 = <f64>load<f32>(p + bOff);
        store<f32>(p, <f32>(x0 * c - x1 * s));
        store<f32>(p + bOff, <f32>(x0 * s + x1 * c));
      }
      theta *= step;
      a += aStep;
    }
    row += h1 - h0;
  }
}

// ---------------------------------------------------------------------------------------------
// Causal attention with grouped-query heads
// ---------------------------------------------------------------------------------------------
//
// q and out are n × (nHeads·headDim); rows = n·nHeads, row = t·nHeads + h. k and v are the
// layer's cache, one position per row of nKvHeads·headDim floats; head h reads kv head
// h / (nHeads / nKvHeads). Token t sees cache positions 0 .. pos0 + t (its own included), so
// the cache must already hold positions up to pos0 + n - 1. Two passes per row:
// scores s_p = (q·k_p)/sqrt(headDim) into scratch, then softmax (max, exp, sum) in place,
// then out = Σ_p s_p·v_p / Σ_p s_p. headDim % 4 == 0. Scratch: this thread's scores live at
// scratch + tid·scratchStride (bytes); they need 4·(pos0 + n) bytes (no alignment needed).
// maxBias > 0 adds ALiBi (MPT): the score of position p for a query at position i gains
// slope_h · -(i - p), slope_h as ggml_soft_max_ext computes it (alibiSlope below).

export function attention(
  q: usize, k: usize, v: usize, out: usize, n: i32, pos0: i32, nHeads: i32, nKvHeads: i32, headDim: i32,
  scratch: usize, scratchStride: i32, maxBias: f32, r0: i32, r1: i32, tid: i32,
): void {
  const sc = scratch + <usize>tid * <usize>scratchStride;
  const group = nHeads / nKvHeads;
  const hb = <usize>headDim << 2;
  const kvRow = <usize>nKvHeads * hb;
  const scale = <f32>(1.0 / Math.sqrt(<f64>headDim));
  if (r0 >= r1) return;
  // Head-major order over the rows in [r0, r1): consecutive rows then read the same kv head,
  // whose keys and values stay in cache (token-major order cycles through every head's cache).
  const t0 = r0 / nHeads;
  const t1 = (r1 - 1) / nHeads;
  for (let h = 0; h < nHeads; h++) {
    const kp = k + <usize>(h / group) * hb;
    const vp = v + <usize>(h / group) * hb;
    const slope = maxBias > 0 ? alibiSlope(h, nHeads, maxBias) : <f32>0;
    for (let t = t0; t <= t1; t++) {
      const row = t * nHeads + h;
      if (row < r0 || row >= r1) continue;
      const len = pos0 + t + 1;
      attentionScores(q + <usize>row * hb, kp, kvRow, hb, len, scale, sc);
      if (slope != 0) alibiBias(sc, len, slope);
      const inv = softmaxScores(sc, len);
      attentionValues(vp, kvRow, hb, len, inv, sc, out + <usize>row * hb);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Token tables: one forward pass over tokens of several sequences
// ---------------------------------------------------------------------------------------------
//
// When one pass carries tokens of several sequences, each with its own KV cache, the model writes
// a table with one entry of TOKEN_ENTRY bytes per token (i32/u32 fields):
//   pos    the token's position in its sequence (it attends to cache positions 0..pos)
//   kRow   byte offset of the cache row its key goes to (the layer's K cache + pos · row bytes)
//   vRow   the same for its value
//   k, v   byte offsets of the layer's K and V caches of its sequence
// Each kernel below gives a token the bits the one-sequence kernel gives it alone.

/** Bytes per token table entry: pos, kRow, vRow, k, v. */
const TOKEN_ENTRY: usize = 20;

/**
 * attention for the tokens of a table: q and out are n × (nHeads·headDim), rows = n·nHeads,
 * row = t·nHeads + h; token t attends to positions 0..table[t].pos of the caches table[t].k and
 * table[t].v. Scratch as in `attention`, 4·(longest pos + 1) bytes per thread.
 */
export function attentionAt(
  q: usize, table: usize, out: usize, nHeads: i32, nKvHeads: i32, headDim: i32,
  scratch: usize, scratchStride: i32, maxBias: f32, r0: i32, r1: i32, tid: i32,
): void {
  const sc = scratch + <usize>tid * <usize>scratchStride;
  const group = nHeads / nKvHeads;
  const hb = <usize>headDim << 2;
  const kvRow = <usize>nKvHeads * hb;
  const scale = <f32>(1.0 / Math.sqrt(<f64>headDim));
  for (let row = r0; row < r1; row++) {
    const t = row / nHeads;
    const h = row - t * nHeads;
    const e = table + <usize>t * TOKEN_ENTRY;
    const len = load<i32>(e) + 1;
    const kv = <usize>(h / group) * hb;
    attentionScores(q + <usize>row * hb, <usize>load<u32>(e, 12) + kv, kvRow, hb, len, scale, sc);
    if (maxBias > 0) alibiBias(sc, len, alibiSlope(h, nHeads, maxBias));
    const inv = softmaxScores(sc, len);
    attentionValues(<usize>load<u32>(e, 16) + kv, kvRow, hb, len, inv, sc, out + <usize>row * hb);
  }
}

/** Copies the new key and value rows of each token (k, v: n rows of rowBytes) to table[t].kRow and .vRow; rows = tokens. */
export function storeKvAt(k: usize, v: usize, table: usize, rowBytes: i32, r0: i32, r1: i32): void {
  const rb = <usize>rowBytes;
  for (let t = r0; t < r1; t++) {
    const e = table + <usize>t * TOKEN_ENTRY;
    memory.copy(<usize>load<u32>(e, 4), k + <usize>t * rb, rb);
    memory.copy(<usize>load<u32>(e, 8), v + <usize>t * rb, rb);
  }
}

/** sc[p] = scale · q·k_p for p < len; four positions at a time, one vector of 4 scores each. */
function attentionScores(qp: usize, kp: usize, kvRow: usize, hb: usize, len: i32, scale: f32, sc: usize): void {
  const sv = f32x4.splat(scale);
  const zero = f32x4.splat(0);
  let p = 0;
  for (; p + 4 <= len; p += 4) {
    const k0 = kp + <usize>p * kvRow;
    const k1 = k0 + kvRow, k2 = k1 + kvRow, k3 = k2 + kvRow;
    let c0 = zero, c1 = zero, c2 = zero, c3 = zero;
    for (let o: usize = 0; o < hb; o += 16) {
      const a = v128.load(qp + o);
      c0 = f32x4.add(c0, f32x4.mul(a, v128.load(k0 + o)));
      c1 = f32x4.add(c1, f32x4.mul(a, v128.load(k1 + o)));
      c2 = f32x4.add(c2, f32x4.mul(a, v128.load(k2 + o)));
      c3 = f32x4.add(c3, f32x4.mul(a, v128.load(k3 + o)));
    }
    v128.store(sc + (<usize>p << 2), f32x4.mul(hsum4(c0, c1, c2, c3), sv));
  }
  for (; p < len; p++) {
    const k0 = kp + <usize>p * kvRow;
    let c0 = zero;
    for (let o: usize = 0; o < hb; o += 16) c0 = f32x4.add(c0, f32x4.mul(v128.load(qp + o), v128.load(k0 + o)));
    store<f32>(sc + (<usize>p << 2), hsum(c0) * scale);
  }
}

/**
 * ALiBi slope of head h (ggml_soft_max_ext): with n the largest power of 2 <= nHeads, heads below
 * n get m0^(h+1), m0 = 2^(-maxBias/n); the rest m1^(2(h-n)+1), m1 = 2^(-maxBias/2/n).
 */
function alibiSlope(h: i32, nHeads: i32, maxBias: f32): f32 {
  const n = 1 << (31 - clz<i32>(nHeads));
  const m0 = <f32>Math.pow(2.0, <f64>(-maxBias / <f32>n));
  const m1 = <f32>Math.pow(2.0, <f64>(-(maxBias / <f32>2.0) / <f32>n));
  return h < n ? <f32>Math.pow(<f64>m0, <f64>(h + 1)) : <f32>Math.pow(<f64>m1, <f64>(2 * (h - n) + 1));
}

/** sc[p] += slope · -(len - 1 - p) for p < len: the query is at position len - 1. */
function alibiBias(sc: usize, len: i32, slope: f32): void {
  for (let p = 0; p < len; p++) {
    const at = sc + (<usize>p << 2);
    store<f32>(at, load<f32>(at) + slope * <f32>(p - (len - 1)));
  }
}

/** sc[p] = exp(sc[p] - max) for p < len; returns 1 / Σ. */
function softmaxScores(sc: usize, len: i32): f32 {
  const bytes = <usize>len << 2;
  const vEnd = <usize>(len & ~3) << 2;
  let mv = f32x4.splat(<f32>-Infinity);
  let o: usize = 0;
  for (; o < vEnd; o += 16) mv = f32x4.max(mv, v128.load(sc + o));
  let m = hmax(mv);
  for (; o < bytes; o += 4) m = max(m, load<f32>(sc + o));
  const mm = f32x4.splat(m);
  let sv = f32x4.splat(0);
  for (o = 0; o < vEnd; o += 16) {
    const e = expV(f32x4.sub(v128.load(sc + o), mm));
    v128.store(sc + o, e);
    sv = f32x4.add(sv, e);
  }
  let s = hsum(sv);
  for (; o < bytes; o += 4) {
    const e = exp1(load<f32>(sc + o) - m);
    store<f32>(sc + o, e);
    s += e;
  }
  return <f32>1.0 / s;
}

/** out = inv · Σ_p sc[p]·v_p, 32 floats of headDim at a time held in 8 accumulators. */
function attentionValues(vp: usize, kvRow: usize, hb: usize, len: i32, inv: f32, sc: usize, out: usize): void {
  const zero = f32x4.splat(0);
  const iv = f32x4.splat(inv);
  let d: usize = 0;
  for (; d + 128 <= hb; d += 128) {
    let a0 = zero, a1 = zero, a2 = zero, a3 = zero, a4 = zero, a5 = zero, a6 = zero, a7 = zero;
    let vr = vp + d;
    for (let p = 0; p < len; p++) {
      const s = v128.load32_splat(sc + (<usize>p << 2));
      a0 = f32x4.add(a0, f32x4.mul(s, v128.load(vr)));
      a1 = f32x4.add(a1, f32x4.mul(s, v128.load(vr, 16)));
      a2 = f32x4.add(a2, f32x4.mul(s, v128.load(vr, 32)));
      a3 = f32x4.add(a3, f32x4.mul(s, v128.load(vr, 48)));
      a4 = f32x4.add(a4, f32x4.mul(s, v128.load(vr, 64)));
      a5 = f32x4.add(a5, f32x4.mul(s, v128.load(vr, 80)));
      a6 = f32x4.add(a6, f32x4.mul(s, v128.load(vr, 96)));
      a7 = f32x4.add(a7, f32x4.mul(s, v128.load(vr, 112)));
      vr += kvRow;
    }
    const op = out + d;
    v128.store(op, f32x4.mul(a0, iv));
    v128.store(op, f32x4.mul(a1, iv), 16);
    v128.store(op, f32x4.mul(a2, iv), 32);
    v128.store(op, f32x4.mul(a3, iv), 48);
    v128.store(op, f32x4.mul(a4, iv), 64);
    v128.store(op, f32x4.mul(a5, iv), 80);
    v128.store(op, f32x4.mul(a6, iv), 96);
    v128.store(op, f32x4.mul(a7, iv), 112);
  }
  for (; d < hb; d += 16) {
    let a0 = zero;
    let vr = vp + d;
    for (let p = 0; p < len; p++) {
      a0 = f32x4.add(a0, f32x4.mul(v128.load32_splat(sc + (<usize>p << 2)), v128.load(vr)));
      vr += kvRow;
    }
    v128.store(out + d, f32x4.mul(a0, iv));
  }
}

// ---------------------------------------------------------------------------------------------
// Elementwise
// ---------------------------------------------------------------------------------------------

/** out[i] = silu(gate[i]) · up[i] = gate[i] · up[i] / (1 + exp(-gate[i])); rows = elements. */
export function siluMul(gate: usize, up: usize, out: usize, r0: i32, r1: i32): void {
  let o = <usize>r0 << 2;
  const end = <usize>r1 << 2;
  const one = f32x4.splat(1.0);
  for (; o + 16 <= end; o += 16) {
    const g = v128.load(gate + o);
    const e = expV(f32x4.neg(g));
    v128.store(out + o, f32x4.div(f32x4.mul(g, v128.load(up + o)), f32x4.add(one, e)));
  }
  for (; o < end; o += 4) {
    const g = load<f32>(gate + o);
    store<f32>(out + o, (g * load<f32>(up + o)) / (<f32>1.0 + exp1(-g)));
  }
}

// GELU as ggml's CPU backend computes it (GGML_GELU_FP16): x <= -10 gives 0, x >= 10 gives x,
// anything between is rounded to f16 and looked up in a 65536-entry table of f16 results
// (table[h] = f16(gelu_tanh(f32(h)))), which the caller fills (runtime/reference.ts, geluTableRef).

// @ts-ignore: decorator
@inline function geluOf(x: f32, table: usize): f32 {
  if (x <= <f32>-10.0) return 0;
  if (x >= <f32>10.0) return x;
  return halfToF32(<u32>load<u16>(table + (<usize>f32ToHalf(x) << 1)));
}

/** out[i] = gelu(x[i]); rows = elements; out may equal x. */
export function gelu(x: usize, out: usize, table: usize, r0: i32, r1: i32): void {
  for (let o = <usize>r0 << 2; o < <usize>r1 << 2; o += 4) store<f32>(out + o, geluOf(load<f32>(x + o), table));
}

/** out[i] = gelu(gate[i]) · up[i] (GeGLU); rows = elements; out may equal gate or up. */
export function geluMul(gate: usize, up: usize, out: usize, table: usize, r0: i32, r1: i32): void {
  for (let o = <usize>r0 << 2; o < <usize>r1 << 2; o += 4) {
    const g = load<f32>(gate + o);
    // (ggml's x >= 10 branch multiplies x itself, the same as gelu(x) = x times up)
    store<f32>(out + o, geluOf(g, table) * load<f32>(up + o));
  }
}

/** out[i] = x[i] · s; rows = elements; out may equal x. */
export function scale(x: usize, out: usize, s: f32, r0: i32, r1: i32): void {
  for (let o = <usize>r0 << 2; o < <usize>r1 << 2; o += 4) store<f32>(out + o, load<f32>(x + o) * s);
}

/** x[i] = min(max(x[i], -limit), limit) in place; rows = elements. */
export function clamp(x: usize, limit: f32, r0: i32, r1: i32): void {
  for (let o = <usize>r0 << 2; o < <usize>r1 << 2; o += 4) store<f32>(x + o, min(max(load<f32>(x + o), -limit), limit));
}

/** out[i] = a[i] + b[i]; rows = elements; out may equal a or b. */
export function add(a: usize, b: usize, out: usize, r0: i32, r1: i32): void {
  let o = <usize>r0 << 2;
  const end = <usize>r1 << 2;
  for (; o + 64 <= end; o += 64) {
    v128.store(out + o, f32x4.add(v128.load(a + o), v128.load(b + o)));
    v128.store(out + o, f32x4.add(v128.load(a + o, 16), v128.load(b + o, 16)), 16);
    v128.store(out + o, f32x4.add(v128.load(a + o, 32), v128.load(b + o, 32)), 32);
    v128.store(out + o, f32x4.add(v128.load(a + o, 48), v128.load(b + o, 48)), 48);
  }
  for (; o + 16 <= end; o += 16) v128.store(out + o, f32x4.add(v128.load(a + o), v128.load(b + o)));
  for (; o < end; o += 4) store<f32>(out + o, load<f32>(a + o) + load<f32>(b + o));
}

/** Softmax of each row of cols floats, in place; rows in [r0, r1). */
export function softmax(x: usize, cols: i32, r0: i32, r1: i32): void {
  const rb = <usize>cols << 2;
  for (let r = r0; r < r1; r++) {
    const p = x + <usize>r * rb;
    const inv = softmaxScores(p, cols);
    const iv = f32x4.splat(inv);
    const vEnd = <usize>(cols & ~3) << 2;
    let o: usize = 0;
    for (; o < vEnd; o += 16) v128.store(p + o, f32x4.mul(v128.load(p + o), iv));
    for (; o < rb; o += 4) store<f32>(p + o, load<f32>(p + o) * inv);
  }
}
