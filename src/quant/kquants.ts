/**
 * ggml's quantizers for the K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and the importance-weighted
 * quantizers of the 32-element types, ported from ggml-quants.c so that every block comes out
 * byte for byte as ggml writes it:
 *
 * - without importance weights, `quantize_row_q*_K_ref` (what `llama-quantize` runs without an
 *   imatrix);
 * - with them (one weight per column of the row, as `quantize_q*_K(..., quant_weights)` takes),
 *   `quantize_row_q*_impl`, which weighs each element's squared error by its column's importance.
 *
 * Every f32 operation is written out in C's order with Math.fround after each one, so double
 * rounding never creeps in (one IEEE operation on f32 inputs computed in f64 and rounded to f32
 * is exact); `nearestInt` is ggml's `nearest_int` bit trick itself, so it agrees for any input.
 * Integer stores into C's uint8_t / int8_t arrays wrap as C's do. The scale searches, most of the
 * work, run in WebAssembly (src/kernels/assembly/quant-search.ts: f32 arithmetic needs no rounding
 * step there), the TypeScript ones here being their reference (`useSearchKernels`).
 *
 * Layouts (ggml-common.h): Q2_K {scales[16] (sc | m << 4), qs[64], d, dmin: half}  84 B;
 * Q3_K {hmask[32], qs[64], scales[12] (6-bit, +32), d: half}  110 B; Q4_K, Q5_K, Q6_K as in
 * reference.ts.
 */

import { f16ToF32, f32ToF16 } from "./fp16.js";
import { type SearchKernels, searchKernels } from "./search-kernels.js";

const f = Math.fround;
const QK_K = 256;
/** ggml's GROUP_MAX_EPS: a group whose largest |x| is below it quantizes to zeros. */
const GROUP_MAX_EPS = f(1e-15);

const nearestScratch = new Float32Array(1);
const nearestBits = new Int32Array(nearestScratch.buffer);

/**
 * ggml `nearest_int`: adds 1.5·2^23 in f32 and reads the low mantissa bits (ties to even; outside
 * ±4194303 and for NaN the same garbage C gets). `v` must already be an f32 value.
 */
export function nearestInt(v: number): number {
  nearestScratch[0] = v + 12582912;
  return (nearestBits[0]! & 0x007fffff) - 0x00400000;
}

function writeHalf(dst: Uint8Array, o: number, x: number): number {
  const h = f32ToF16(x);
  dst[o] = h & 0xff;
  dst[o + 1] = h >>> 8;
  return f16ToF32(h);
}

// ---------------------------------------------------------------------------------------------
// scale searches (ggml-quants.c make_*_quants), on x[xo..xo+n), writing L[lo..lo+n)

/**
 * make_qx_quants with rmse_type 1: symmetric quants in [0, 2·nmax), weights `qw` (or x² when
 * null), the scale that minimises the weighted squared error over 19 trial scales.
 */
function makeQxQuants(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  L: Int8Array,
  lo: number,
  qw: Float32Array | null,
  qo: number,
): number {
  let max = 0;
  let amax = 0;
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[xo + i]!);
    if (ax > amax) {
      amax = ax;
      max = x[xo + i]!;
    }
  }
  if (amax < GROUP_MAX_EPS) {
    L.fill(0, lo, lo + n);
    return 0;
  }
  let iscale = f(-nmax / max);
  let sumlx = 0;
  let suml2 = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!;
    const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * xi))));
    L[lo + i] = l + nmax;
    const w = qw ? qw[qo + i]! : f(xi * xi);
    sumlx = f(sumlx + f(f(w * xi) * l));
    suml2 = f(suml2 + f(f(w * l) * l));
  }
  let scale = suml2 !== 0 ? f(sumlx / suml2) : 0;
  let best = f(scale * sumlx);
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    iscale = f(-f(nmax + f(f(0.1) * is)) / max);
    sumlx = 0;
    suml2 = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i]!;
      const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * xi))));
      const w = qw ? qw[qo + i]! : f(xi * xi);
      sumlx = f(sumlx + f(f(w * xi) * l));
      suml2 = f(suml2 + f(f(w * l) * l));
    }
    if (suml2 > 0 && f(sumlx * sumlx) > f(best * suml2)) {
      for (let i = 0; i < n; i++) {
        L[lo + i] = nmax + Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * x[xo + i]!))));
      }
      scale = f(sumlx / suml2);
      best = f(scale * sumlx);
    }
  }
  return scale;
}

/** make_q3_quants with do_rmse: x²-weighted, then up to 5 passes moving single quants. */
function makeQ3Quants(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  L: Int8Array,
  lo: number,
): number {
  let max = 0;
  let amax = 0;
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[xo + i]!);
    if (ax > amax) {
      amax = ax;
      max = x[xo + i]!;
    }
  }
  if (amax < GROUP_MAX_EPS) {
    L.fill(0, lo, lo + n);
    return 0;
  }
  const iscale = f(-nmax / max);
  let sumlx = 0;
  let suml2 = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!;
    const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * xi))));
    L[lo + i] = l;
    const w = f(xi * xi);
    sumlx = f(sumlx + f(f(w * xi) * l));
    suml2 = f(suml2 + f(f(w * l) * l));
  }
  for (let itry = 0; itry < 5; itry++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i]!;
      const w = f(xi * xi);
      const li = L[lo + i]!;
      let slx = f(sumlx - f(f(w * xi) * li));
      if (slx > 0) {
        let sl2 = f(suml2 - f(f(w * li) * li));
        const nl = Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(f(xi * sl2) / slx))));
        if (nl !== li) {
          slx = f(slx + f(f(w * xi) * nl));
          sl2 = f(sl2 + f(f(w * nl) * nl));
          if (sl2 > 0 && f(f(slx * slx) * suml2) > f(f(sumlx * sumlx) * sl2)) {
            L[lo + i] = nl;
            sumlx = slx;
            suml2 = sl2;
            changed++;
          }
        }
      }
    }
    if (!changed) break;
  }
  for (let i = 0; i < n; i++) L[lo + i] = L[lo + i]! + nmax;
  return suml2 > 0 ? f(sumlx / suml2) : 0;
}

/** Result of the min-and-scale searches: the scale is returned, the (positive) min put here. */
let theMin = 0;

/**
 * make_qkx2_quants (ref quantizers) and make_qkx3_quants (`three`, weighted quantizers): quants
 * in [0, nmax] with scale and min, searched over nstep + 1 trial scales by weighted least squares;
 * `mad` measures the error as |diff| instead of diff².
 */
function makeQkxQuants(
  three: boolean,
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  weights: Float32Array,
  L: Uint8Array,
  lo: number,
  Laux: Uint8Array,
  rmin: number,
  rdelta: number,
  nstep: number,
  mad: boolean,
): number {
  let min = x[xo]!;
  let max = x[xo]!;
  let sumW = weights[0]!;
  let sumX = f(sumW * x[xo]!);
  for (let i = 1; i < n; i++) {
    const xi = x[xo + i]!;
    if (xi < min) min = xi;
    if (xi > max) max = xi;
    const w = weights[i]!;
    sumW = f(sumW + w);
    sumX = f(sumX + f(w * xi));
  }
  if (min > 0) min = 0;
  if (three ? max <= min : max === min) {
    L.fill(0, lo, lo + n);
    theMin = -min;
    return 0;
  }
  let iscale = f(nmax / f(max - min));
  let scale = f(1 / iscale);
  let bestError = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!;
    const l = Math.max(0, Math.min(nmax, nearestInt(f(iscale * f(xi - min)))));
    L[lo + i] = l;
    let diff = f(f(f(scale * l) + min) - xi);
    diff = mad ? Math.abs(diff) : f(diff * diff);
    bestError = f(bestError + f(weights[i]! * diff));
  }
  if (nstep < 1) {
    theMin = -min;
    return scale;
  }
  for (let is = 0; is <= nstep; is++) {
    // (as in ggml, min is the best one so far: later trials shift with it)
    iscale = f(f(f(rmin + f(rdelta * is)) + nmax) / f(max - min));
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i]!;
      const l = Math.max(0, Math.min(nmax, nearestInt(f(iscale * f(xi - min)))));
      Laux[i] = l;
      const w = weights[i]!;
      const wl = f(w * l);
      sumL = f(sumL + wl);
      sumL2 = f(sumL2 + f(wl * l));
      sumXL = f(sumXL + f(wl * xi));
    }
    const D = f(f(sumW * sumL2) - f(sumL * sumL));
    if (D > 0) {
      let thisScale = f(f(f(sumW * sumXL) - f(sumX * sumL)) / D);
      let thisMin = f(f(f(sumL2 * sumX) - f(sumL * sumXL)) / D);
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = f(sumXL / sumL2);
      }
      let error = 0;
      for (let i = 0; i < n; i++) {
        let diff = f(f(f(thisScale * Laux[i]!) + thisMin) - x[xo + i]!);
        diff = mad ? Math.abs(diff) : f(diff * diff);
        error = f(error + f(weights[i]! * diff));
      }
      if (error < bestError) {
        for (let i = 0; i < n; i++) L[lo + i] = Laux[i]!;
        bestError = error;
        scale = thisScale;
        min = thisMin;
      }
    }
  }
  theMin = -min;
  return scale;
}

/** make_qp_quants: non-negative x (sub-block scales or mins) to [0, nmax], importance-weighted. */
function makeQpQuants(n: number, nmax: number, x: Float32Array, L: Uint8Array, qw: Float32Array): number {
  let max = 0;
  for (let i = 0; i < n; i++) max = Math.max(max, x[i]!);
  if (max < GROUP_MAX_EPS) {
    L.fill(0, 0, n);
    return 0;
  }
  let iscale = f(nmax / max);
  for (let i = 0; i < n; i++) L[i] = nearestInt(f(iscale * x[i]!));
  const scale = f(1 / iscale);
  let bestMse = 0;
  for (let i = 0; i < n; i++) {
    const diff = f(x[i]! - f(scale * L[i]!));
    bestMse = f(bestMse + f(f(qw[i]! * diff) * diff));
  }
  for (let is = -4; is <= 4; is++) {
    if (is === 0) continue;
    const iscaleIs = f(f(f(f(0.1) * is) + nmax) / max);
    const scaleIs = f(1 / iscaleIs);
    let mse = 0;
    for (let i = 0; i < n; i++) {
      const l = Math.min(nmax, nearestInt(f(iscaleIs * x[i]!)));
      const diff = f(x[i]! - f(scaleIs * l));
      mse = f(mse + f(f(qw[i]! * diff) * diff));
    }
    if (mse < bestMse) {
      bestMse = mse;
      iscale = iscaleIs;
    }
  }
  let sumlx = 0;
  let suml2 = 0;
  for (let i = 0; i < n; i++) {
    const l = Math.min(nmax, nearestInt(f(iscale * x[i]!)));
    L[i] = l;
    const w = qw[i]!;
    sumlx = f(sumlx + f(f(w * x[i]!) * l));
    suml2 = f(suml2 + f(f(w * l) * l));
  }
  for (let itry = 0; itry < 5; itry++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      const w = qw[i]!;
      const li = L[i]!;
      let slx = f(sumlx - f(f(w * x[i]!) * li));
      let sl2 = f(suml2 - f(f(w * li) * li));
      if (slx > 0 && sl2 > 0) {
        const nl = Math.min(nmax, nearestInt(f(f(x[i]! * sl2) / slx)));
        if (nl !== li) {
          slx = f(slx + f(f(w * x[i]!) * nl));
          sl2 = f(sl2 + f(f(w * nl) * nl));
          if (f(f(slx * slx) * suml2) > f(f(sumlx * sumlx) * sl2)) {
            L[i] = nl;
            sumlx = slx;
            suml2 = sl2;
            changed++;
          }
        }
      }
    }
    if (!changed) break;
  }
  return suml2 > 0 ? f(sumlx / suml2) : 0;
}

/**
 * The WebAssembly searches (same bits, several times faster), or null: the TypeScript ones.
 * Loaded at the first block quantized.
 */
let kernels: SearchKernels | null | undefined;

function searches(): SearchKernels | null {
  if (kernels === undefined) kernels = searchKernels();
  return kernels;
}

/**
 * Which scale searches the quantizers run: the WebAssembly ones (the default, where the kernel
 * module is built) or the TypeScript ones above, their reference. Returns whether the WebAssembly
 * ones are in use.
 */
export function useSearchKernels(on: boolean): boolean {
  kernels = on ? searchKernels() : null;
  return kernels !== null;
}

/** makeQkxQuants, in WebAssembly when it is loaded. */
function searchQkx(
  three: boolean,
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  weights: Float32Array,
  L: Uint8Array,
  lo: number,
  Laux: Uint8Array,
  rmin: number,
  rdelta: number,
  nstep: number,
  mad: boolean,
): number {
  const k = searches();
  if (!k) return makeQkxQuants(three, n, nmax, x, xo, weights, L, lo, Laux, rmin, rdelta, nstep, mad);
  for (let i = 0; i < n; i++) {
    k.x[i] = x[xo + i]!;
    k.w[i] = weights[i]!;
  }
  const scale = k.searchScaleMin(three ? 1 : 0, n, nmax, rmin, rdelta, nstep, mad ? 1 : 0);
  for (let i = 0; i < n; i++) L[lo + i] = k.L[i]!;
  theMin = k.min[0]!;
  return scale;
}

/** makeQxQuants, in WebAssembly when it is loaded. */
function searchQx(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  L: Int8Array,
  lo: number,
  qw: Float32Array | null,
  qo: number,
): number {
  const k = searches();
  if (!k) return makeQxQuants(n, nmax, x, xo, L, lo, qw, qo);
  for (let i = 0; i < n; i++) k.x[i] = x[xo + i]!;
  if (qw) for (let i = 0; i < n; i++) k.w[i] = qw[qo + i]!;
  const scale = k.searchScale(n, nmax, qw !== null);
  for (let i = 0; i < n; i++) L[lo + i] = k.Li[i]!;
  return scale;
}

/** makeQ3Quants, in WebAssembly when it is loaded. */
function searchQ3(n: number, nmax: number, x: Float32Array, xo: number, L: Int8Array, lo: number): number {
  const k = searches();
  if (!k) return makeQ3Quants(n, nmax, x, xo, L, lo);
  for (let i = 0; i < n; i++) k.x[i] = x[xo + i]!;
  const scale = k.searchScaleQ3(n, nmax);
  for (let i = 0; i < n; i++) L[lo + i] = k.Li[i]!;
  return scale;
}

// ---------------------------------------------------------------------------------------------
// shared packing

/** Σ x² of x[o..o+n) in f32, in order. */
function sumSquares(x: Float32Array, o: number, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) s = f(s + f(x[o + i]! * x[o + i]!));
  return s;
}

/** Q2_K/Q3_K qs: four 2-bit quants per byte, element j + 32·s of each 128 in bits 2s. */
function pack2Bit(L: ArrayLike<number>, dst: Uint8Array, o: number): void {
  for (let j = 0; j < QK_K; j += 128) {
    for (let l = 0; l < 32; l++) {
      dst[o + j / 4 + l] = L[j + l]! | (L[j + l + 32]! << 2) | (L[j + l + 64]! << 4) | (L[j + l + 96]! << 6);
    }
  }
}

/** Q4_K/Q5_K: packs eight 6-bit scales and mins into 12 bytes at o. */
function packScalesMinsK4(ls: ArrayLike<number>, lm: ArrayLike<number>, dst: Uint8Array, o: number): void {
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      dst[o + j] = ls[j]!;
      dst[o + j + 4] = lm[j]!;
    } else {
      dst[o + j + 4] = (ls[j]! & 0xf) | ((lm[j]! & 0xf) << 4);
      dst[o + j - 4] |= (ls[j]! >> 4) << 6;
      dst[o + j] |= (lm[j]! >> 4) << 6;
    }
  }
}

function scaleMinK4(j: number, s: Uint8Array, o: number, out: Int32Array): void {
  if (j < 4) {
    out[0] = s[o + j]! & 63;
    out[1] = s[o + j + 4]! & 63;
  } else {
    out[0] = (s[o + j + 4]! & 0xf) | ((s[o + j - 4]! >> 6) << 4);
    out[1] = (s[o + j + 4]! >> 4) | ((s[o + j]! >> 6) << 4);
  }
}

/** Q3_K: the 6-bit scale j (0..63, before −32) of the 12 bytes at o. */
function scaleQ3(s: Uint8Array, o: number, j: number): number {
  const low = j < 8 ? s[o + j]! & 0xf : s[o + j - 8]! >> 4;
  return low | (((s[o + 8 + (j % 4)]! >> (2 * Math.floor(j / 4))) & 3) << 4);
}

/** Q3_K: stores the 6-bit scale l (0..63) as sub-block j's. */
function setScaleQ3(s: Uint8Array, o: number, j: number, l: number): void {
  if (j < 8) s[o + j] = l & 0xf;
  else s[o + j - 8] |= (l & 0xf) << 4;
  s[o + 8 + (j % 4)] |= (l >> 4) << (2 * Math.floor(j / 4));
}

// ---------------------------------------------------------------------------------------------
// per-block quantizers: x[xo..xo+256) to the block at dst[o]; qw (importance, per column) at qo

/** Scratch shared by the block quantizers (none of them re-enters another). */
const S = {
  L: new Uint8Array(QK_K),
  Li: new Int8Array(QK_K),
  Laux: new Uint8Array(32),
  Ls: new Uint8Array(16),
  Lm: new Uint8Array(16),
  Lsi: new Int8Array(16),
  weights: new Float32Array(32),
  scales: new Float32Array(16),
  mins: new Float32Array(16),
  sw: new Float32Array(16),
  sm: new Int32Array(2),
};

/** Q2_K: requantizes L with the stored scales (the last step of both Q2_K quantizers). */
function finishQ2K(x: Float32Array, xo: number, dst: Uint8Array, o: number, dm: number, mm: number): void {
  const L = S.L;
  for (let j = 0; j < 16; j++) {
    const sc = dst[o + j]!;
    const d = f(dm * (sc & 0xf));
    if (d === 0) continue;
    const m = f(mm * (sc >> 4));
    for (let ii = 0; ii < 16; ii++) {
      L[16 * j + ii] = Math.max(0, Math.min(3, nearestInt(f(f(x[xo + 16 * j + ii]! + m) / d))));
    }
  }
  pack2Bit(L, dst, o + 16);
}

function quantizeQ2_KBlock(x: Float32Array, xo: number, dst: Uint8Array, o: number): void {
  const { L, Laux, weights, scales, mins } = S;
  let maxScale = 0;
  let maxMin = 0;
  for (let j = 0; j < 16; j++) {
    for (let l = 0; l < 16; l++) weights[l] = Math.abs(x[xo + 16 * j + l]!);
    scales[j] = searchQkx(false, 16, 3, x, xo + 16 * j, weights, L, 16 * j, Laux, -0.5, f(0.1), 15, true);
    mins[j] = theMin;
    if (scales[j]! > maxScale) maxScale = scales[j]!;
    if (mins[j]! > maxMin) maxMin = mins[j]!;
  }
  let d = 0;
  let dmin = 0;
  if (maxScale > 0) {
    const iscale = f(15 / maxScale);
    for (let j = 0; j < 16; j++) dst[o + j] = nearestInt(f(iscale * scales[j]!));
    d = writeHalf(dst, o + 80, f(maxScale / 15));
  } else {
    dst.fill(0, o, o + 16);
    d = writeHalf(dst, o + 80, 0);
  }
  if (maxMin > 0) {
    const iscale = f(15 / maxMin);
    for (let j = 0; j < 16; j++) dst[o + j] |= nearestInt(f(iscale * mins[j]!)) << 4;
    dmin = writeHalf(dst, o + 82, f(maxMin / 15));
  } else {
    dmin = writeHalf(dst, o + 82, 0);
  }
  finishQ2K(x, xo, dst, o, d, dmin);
}

function quantizeQ2_KBlockWeighted(
  x: Float32Array,
  xo: number,
  dst: Uint8Array,
  o: number,
  qw: Float32Array,
  qo: number,
): void {
  const { L, Laux, weights, scales, mins, sw, Ls, Lm } = S;
  const sigma2 = f(sumSquares(x, xo, QK_K) / QK_K);
  for (let j = 0; j < 16; j++) {
    let s = 0;
    for (let l = 0; l < 16; l++) {
      const xi = x[xo + 16 * j + l]!;
      weights[l] = f(qw[qo + 16 * j + l]! * f(Math.sqrt(f(sigma2 + f(xi * xi)))));
      s = f(s + weights[l]!);
    }
    sw[j] = s;
    scales[j] = searchQkx(true, 16, 3, x, xo + 16 * j, weights, L, 16 * j, Laux, f(-0.9), f(0.05), 36, false);
    mins[j] = theMin;
  }
  const dm = writeHalf(dst, o + 80, makeQpQuants(16, 15, scales, Ls, sw));
  const mm = writeHalf(dst, o + 82, makeQpQuants(16, 15, mins, Lm, sw));
  for (let j = 0; j < 16; j++) dst[o + j] = Ls[j]! | (Lm[j]! << 4);
  finishQ2K(x, xo, dst, o, dm, mm);
}

/** Q3_K: requantizes with the stored scales, then splits the high bits into hmask and packs. */
function finishQ3K(x: Float32Array, xo: number, dst: Uint8Array, o: number, d: number): void {
  const L = S.Li;
  for (let j = 0; j < 16; j++) {
    const dl = f(d * (scaleQ3(dst, o + 96, j) - 32));
    if (dl === 0) continue;
    for (let ii = 0; ii < 16; ii++) {
      L[16 * j + ii] = Math.max(-4, Math.min(3, nearestInt(f(x[xo + 16 * j + ii]! / dl)))) + 4;
    }
  }
  dst.fill(0, o, o + 32);
  let m = 0;
  let hm = 1;
  for (let j = 0; j < QK_K; j++) {
    if (L[j]! > 3) {
      dst[o + m] |= hm;
      L[j] = L[j]! - 4;
    }
    if (++m === 32) {
      m = 0;
      hm <<= 1;
    }
  }
  pack2Bit(L, dst, o + 32);
}

function quantizeQ3_KBlock(x: Float32Array, xo: number, dst: Uint8Array, o: number): void {
  const { Li: L, scales } = S;
  let maxScale = 0;
  let amax = 0;
  for (let j = 0; j < 16; j++) {
    scales[j] = searchQ3(16, 4, x, xo + 16 * j, L, 16 * j);
    const scale = Math.abs(scales[j]!);
    if (scale > amax) {
      amax = scale;
      maxScale = scales[j]!;
    }
  }
  dst.fill(0, o + 96, o + 108);
  let d: number;
  if (maxScale !== 0) {
    const iscale = f(-32 / maxScale);
    for (let j = 0; j < 16; j++) {
      const l = (nearestInt(f(iscale * scales[j]!)) << 24) >> 24; // int8_t
      setScaleQ3(dst, o + 96, j, Math.max(-32, Math.min(31, l)) + 32);
    }
    d = writeHalf(dst, o + 108, f(1 / iscale));
  } else {
    d = writeHalf(dst, o + 108, 0);
  }
  finishQ3K(x, xo, dst, o, d);
}

function quantizeQ3_KBlockWeighted(
  x: Float32Array,
  xo: number,
  dst: Uint8Array,
  o: number,
  qw: Float32Array,
  qo: number,
): void {
  const { Li: L, scales, weights, sw, Lsi } = S;
  const sigma2 = f(f(2 * sumSquares(x, xo, QK_K)) / QK_K);
  for (let j = 0; j < 16; j++) {
    let s = 0;
    for (let l = 0; l < 16; l++) {
      const xi = x[xo + 16 * j + l]!;
      weights[l] = f(qw[qo + 16 * j + l]! * f(Math.sqrt(f(sigma2 + f(xi * xi)))));
      s = f(s + weights[l]!);
    }
    sw[j] = s;
    scales[j] = searchQx(16, 4, x, xo + 16 * j, L, 16 * j, weights, 0);
  }
  dst.fill(0, o + 96, o + 108);
  const dBlock = searchQx(16, 32, scales, 0, Lsi, 0, sw, 0);
  for (let j = 0; j < 16; j++) setScaleQ3(dst, o + 96, j, Lsi[j]!);
  finishQ3K(x, xo, dst, o, writeHalf(dst, o + 108, dBlock));
}

/** Q4_K/Q5_K: requantizes with the stored scales and mins, then packs (Q5_K: fifth bits to qh). */
function finishK45(
  five: boolean,
  x: Float32Array,
  xo: number,
  dst: Uint8Array,
  o: number,
  d: number,
  dmin: number,
) {
  const { L, sm } = S;
  const nmax = five ? 31 : 15;
  for (let j = 0; j < 8; j++) {
    scaleMinK4(j, dst, o + 4, sm);
    const dl = f(d * sm[0]!);
    if (dl === 0) continue;
    const dm = f(dmin * sm[1]!);
    for (let ii = 0; ii < 32; ii++) {
      L[32 * j + ii] = Math.max(0, Math.min(nmax, nearestInt(f(f(x[xo + 32 * j + ii]! + dm) / dl))));
    }
  }
  if (!five) {
    for (let j = 0; j < QK_K; j += 64) {
      for (let l = 0; l < 32; l++) dst[o + 16 + j / 2 + l] = L[j + l]! | (L[j + l + 32]! << 4);
    }
    return;
  }
  dst.fill(0, o + 16, o + 48);
  let m1 = 1;
  let m2 = 2;
  for (let n = 0; n < QK_K; n += 64) {
    for (let j = 0; j < 32; j++) {
      let l1 = L[n + j]!;
      if (l1 > 15) {
        l1 -= 16;
        dst[o + 16 + j] |= m1;
      }
      let l2 = L[n + j + 32]!;
      if (l2 > 15) {
        l2 -= 16;
        dst[o + 16 + j] |= m2;
      }
      dst[o + 48 + n / 2 + j] = l1 | (l2 << 4);
    }
    m1 <<= 2;
    m2 <<= 2;
  }
}

function quantizeK45Block(five: boolean, x: Float32Array, xo: number, dst: Uint8Array, o: number): void {
  const { L, Laux, weights, scales, mins, Ls, Lm } = S;
  let maxScale = 0;
  let maxMin = 0;
  for (let j = 0; j < 8; j++) {
    const avX = f(Math.sqrt(f(sumSquares(x, xo + 32 * j, 32) / 32)));
    for (let l = 0; l < 32; l++) weights[l] = f(avX + Math.abs(x[xo + 32 * j + l]!));
    scales[j] = five
      ? searchQkx(false, 32, 31, x, xo + 32 * j, weights, L, 32 * j, Laux, -0.5, f(0.1), 15, false)
      : searchQkx(false, 32, 15, x, xo + 32 * j, weights, L, 32 * j, Laux, -1, f(0.1), 20, false);
    mins[j] = theMin;
    if (scales[j]! > maxScale) maxScale = scales[j]!;
    if (mins[j]! > maxMin) maxMin = mins[j]!;
  }
  const invScale = maxScale > 0 ? f(63 / maxScale) : 0;
  const invMin = maxMin > 0 ? f(63 / maxMin) : 0;
  for (let j = 0; j < 8; j++) {
    Ls[j] = Math.min(63, nearestInt(f(invScale * scales[j]!)) & 0xff);
    Lm[j] = Math.min(63, nearestInt(f(invMin * mins[j]!)) & 0xff);
  }
  packScalesMinsK4(Ls, Lm, dst, o + 4);
  const d = writeHalf(dst, o, f(maxScale / 63));
  const dmin = writeHalf(dst, o + 2, f(maxMin / 63));
  finishK45(five, x, xo, dst, o, d, dmin);
}

function quantizeK45BlockWeighted(
  five: boolean,
  x: Float32Array,
  xo: number,
  dst: Uint8Array,
  o: number,
  qw: Float32Array,
  qo: number,
): void {
  const { L, Laux, weights, scales, mins, sw, Ls, Lm } = S;
  const sigma2 = f(f(2 * sumSquares(x, xo, QK_K)) / QK_K);
  for (let j = 0; j < 8; j++) {
    let s = 0;
    for (let l = 0; l < 32; l++) {
      const xi = x[xo + 32 * j + l]!;
      weights[l] = f(qw[qo + 32 * j + l]! * f(Math.sqrt(f(sigma2 + f(xi * xi)))));
      s = f(s + weights[l]!);
    }
    sw[j] = s;
    const nmax = five ? 31 : 15;
    scales[j] = searchQkx(
      true,
      32,
      nmax,
      x,
      xo + 32 * j,
      weights,
      L,
      32 * j,
      Laux,
      f(-0.9),
      f(0.05),
      36,
      false,
    );
    mins[j] = theMin;
  }
  const dBlock = makeQpQuants(8, 63, scales, Ls, sw);
  const mBlock = makeQpQuants(8, 63, mins, Lm, sw);
  if (five) {
    // (only ggml's Q5_K version clamps again; the values are <= 63 already unless they wrapped)
    for (let j = 0; j < 8; j++) {
      Ls[j] = Math.min(63, Ls[j]!);
      Lm[j] = Math.min(63, Lm[j]!);
    }
  }
  dst.fill(0, o + 4, o + 16);
  packScalesMinsK4(Ls, Lm, dst, o + 4);
  const d = writeHalf(dst, o, dBlock);
  const dmin = writeHalf(dst, o + 2, mBlock);
  finishK45(five, x, xo, dst, o, d, dmin);
}

function quantizeQ6_KBlock(
  x: Float32Array,
  xo: number,
  dst: Uint8Array,
  o: number,
  qw: Float32Array | null,
  qo: number,
): void {
  const { Li: L, scales } = S;
  let maxScale = 0;
  let maxAbsScale = 0;
  for (let ib = 0; ib < 16; ib++) {
    const scale = searchQx(16, 32, x, xo + 16 * ib, L, 16 * ib, qw, qo + 16 * ib);
    scales[ib] = scale;
    if (Math.abs(scale) > maxAbsScale) {
      maxAbsScale = Math.abs(scale);
      maxScale = scale;
    }
  }
  if (maxAbsScale < GROUP_MAX_EPS) {
    dst.fill(0, o, o + 210);
    return;
  }
  const iscale = f(-128 / maxScale);
  const d = writeHalf(dst, o + 208, f(1 / iscale));
  for (let ib = 0; ib < 16; ib++) dst[o + 192 + ib] = Math.min(127, nearestInt(f(iscale * scales[ib]!)));
  for (let j = 0; j < 16; j++) {
    const dl = f(d * ((dst[o + 192 + j]! << 24) >> 24));
    if (dl === 0) continue;
    for (let ii = 0; ii < 16; ii++) {
      L[16 * j + ii] = Math.max(-32, Math.min(31, nearestInt(f(x[xo + 16 * j + ii]! / dl)))) + 32;
    }
  }
  for (let j = 0; j < QK_K; j += 128) {
    const ql = o + j / 2;
    const qh = o + 128 + j / 4;
    for (let l = 0; l < 32; l++) {
      const q1 = L[j + l]!;
      const q2 = L[j + l + 32]!;
      const q3 = L[j + l + 64]!;
      const q4 = L[j + l + 96]!;
      dst[ql + l] = (q1 & 0xf) | ((q3 & 0xf) << 4);
      dst[ql + l + 32] = (q2 & 0xf) | ((q4 & 0xf) << 4);
      dst[qh + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// importance-weighted 32-element quantizers (ggml quantize_row_q4_0_impl ... q5_1_impl)

function quantizeLegacyWeighted(
  type: "q4_0" | "q4_1" | "q5_0" | "q5_1",
  x: Float32Array,
  dst: Uint8Array,
  qw: Float32Array,
): void {
  const k = x.length;
  const sigma2 = f(sumSquares(x, 0, k) / k);
  const { weights, Li, L, Laux } = S;
  const bytes = type === "q4_0" ? 18 : type === "q4_1" ? 20 : type === "q5_0" ? 22 : 24;
  for (let ib = 0; ib < k / 32; ib++) {
    const xo = 32 * ib;
    const o = ib * bytes;
    for (let j = 0; j < 32; j++) {
      const xi = x[xo + j]!;
      weights[j] = f(qw[xo + j]! * f(Math.sqrt(f(sigma2 + f(xi * xi)))));
    }
    let q: ArrayLike<number>;
    let qsAt: number;
    if (type === "q4_0" || type === "q5_0") {
      writeHalf(dst, o, searchQx(32, type === "q4_0" ? 8 : 16, x, xo, Li, 0, weights, 0));
      q = Li;
      qsAt = type === "q4_0" ? 2 : 6;
    } else {
      const nmax = type === "q4_1" ? 15 : 31;
      const d = searchQkx(true, 32, nmax, x, xo, weights, L, 0, Laux, f(-0.9), f(0.05), 36, false);
      writeHalf(dst, o, d);
      writeHalf(dst, o + 2, -theMin);
      q = L;
      qsAt = type === "q4_1" ? 4 : 8;
    }
    let qh = 0;
    for (let j = 0; j < 16; j++) {
      const q0 = q[j]! & 0xff;
      const q1 = q[j + 16]! & 0xff;
      dst[o + qsAt + j] = (q0 & 0xf) | ((q1 & 0xf) << 4);
      qh |= (((q0 & 0x10) >> 4) << j) | (((q1 & 0x10) >> 4) << (j + 16));
    }
    if (type === "q5_0" || type === "q5_1") {
      const at = o + qsAt - 4;
      dst[at] = qh & 0xff;
      dst[at + 1] = (qh >>> 8) & 0xff;
      dst[at + 2] = (qh >>> 16) & 0xff;
      dst[at + 3] = qh >>> 24;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// entry points

export type KQuantName = "q2_K" | "q3_K" | "q4_K" | "q5_K" | "q6_K";

/**
 * Quantizes one row (a whole number of 256-element super-blocks) to a K-quant, into dst. With
 * `quantWeights` (one importance per column, e.g. an imatrix row), ggml's weighted quantizer.
 */
export function quantizeRowK(
  type: KQuantName,
  x: Float32Array,
  dst: Uint8Array,
  quantWeights?: Float32Array,
): void {
  const bytes = { q2_K: 84, q3_K: 110, q4_K: 144, q5_K: 176, q6_K: 210 }[type];
  const qw = quantWeights ?? null;
  if (qw && qw.length < x.length) {
    throw new RangeError(`importance weights: ${qw.length} for a row of ${x.length}`);
  }
  for (let b = 0; b < x.length / QK_K; b++) {
    const xo = b * QK_K;
    const o = b * bytes;
    switch (type) {
      case "q2_K":
        if (qw) quantizeQ2_KBlockWeighted(x, xo, dst, o, qw, xo);
        else quantizeQ2_KBlock(x, xo, dst, o);
        break;
      case "q3_K":
        if (qw) quantizeQ3_KBlockWeighted(x, xo, dst, o, qw, xo);
        else quantizeQ3_KBlock(x, xo, dst, o);
        break;
      case "q4_K":
      case "q5_K":
        if (qw) quantizeK45BlockWeighted(type === "q5_K", x, xo, dst, o, qw, xo);
        else quantizeK45Block(type === "q5_K", x, xo, dst, o);
        break;
      case "q6_K":
        quantizeQ6_KBlock(x, xo, dst, o, qw, xo);
        break;
    }
  }
}

/** ggml's importance-weighted Q4_0/Q4_1/Q5_0/Q5_1 quantizer of one row (whole 32-blocks) into dst. */
export function quantizeRowLegacyWeighted(
  type: "q4_0" | "q4_1" | "q5_0" | "q5_1",
  x: Float32Array,
  dst: Uint8Array,
  quantWeights: Float32Array,
): void {
  if (quantWeights.length < x.length) {
    throw new RangeError(`importance weights: ${quantWeights.length} for a row of ${x.length}`);
  }
  quantizeLegacyWeighted(type, x, dst, quantWeights);
}

/** Q3_K scale decoding, shared with the reference dequantizer and dot product. */
export { scaleQ3 };
