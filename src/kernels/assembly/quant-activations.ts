// Activation quantizers (rows = tokens): f32 activations to the 8-bit blocks the quantized
// products read (Q8_0, Q8_1, Q8_K, and Q8_0S for the row-lane Q4_0 product). Bit-identical to
// ggml's quantize_row_q8_*_ref (src/quant/reference.ts).

import {
  CONST_HALF_MAGIC,
  CONST_HALF_MASK,
  constant,
  f32ToHalf,
  halfHigh,
  hsumI32,
} from "./quant-common";

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
