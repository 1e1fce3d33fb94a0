// The scale searches of ggml's K-quant quantizers (ggml-quants.c make_qkx2_quants,
// make_qkx3_quants, make_qx_quants with rmse_type 1): the hot loops of quantizing a model. They
// run here in f32 arithmetic, one IEEE operation per C operation in C's order (WebAssembly never
// fuses a multiply and an add), so they give ggml's bits; in TypeScript every f32 operation needs
// a rounding step of its own, several times the work. src/quant/kquants.ts calls them per
// sub-block and keeps its own TypeScript versions as the reference.
//
// Not row kernels: one call searches one group of n <= 256 floats; no thread split.

// @ts-ignore: decorator
@inline const GROUP_MAX_EPS: f32 = 1e-15;

/** ggml nearest_int: the low mantissa bits of v + 1.5·2^23 (ties to even). */
// @ts-ignore: decorator
@inline function nearestInt(v: f32): i32 {
  return (reinterpret<i32>(v + 12582912.0) & 0x007fffff) - 0x00400000;
}

// @ts-ignore: decorator
@inline function clampI(v: i32, lo: i32, hi: i32): i32 {
  return max(lo, min(hi, v));
}

/**
 * make_qkx2_quants (three = 0) or make_qkx3_quants (three = 1) on n floats at x with weights w:
 * quants 0..nmax to L (u8), returns the scale and stores the (positive) min, f32, at minOut.
 * laux: n bytes of scratch. mad = 1 measures the error as |diff|, else diff².
 */
export function searchScaleMin(
  three: i32,
  n: i32,
  nmax: i32,
  x: usize,
  w: usize,
  L: usize,
  laux: usize,
  rmin: f32,
  rdelta: f32,
  nstep: i32,
  mad: i32,
  minOut: usize,
): f32 {
  let lo: f32 = load<f32>(x);
  let hi: f32 = lo;
  let sumW: f32 = load<f32>(w);
  let sumX: f32 = sumW * lo;
  for (let i = 1; i < n; i++) {
    const xi = load<f32>(x + (<usize>i << 2));
    if (xi < lo) lo = xi;
    if (xi > hi) hi = xi;
    const wi = load<f32>(w + (<usize>i << 2));
    sumW = sumW + wi;
    sumX = sumX + wi * xi;
  }
  if (lo > 0) lo = 0;
  if (three ? hi <= lo : hi == lo) {
    memory.fill(L, 0, n);
    store<f32>(minOut, -lo);
    return 0;
  }
  const fmax = <f32>nmax;
  let iscale: f32 = fmax / (hi - lo);
  let scale: f32 = 1 / iscale;
  let bestError: f32 = 0;
  for (let i = 0; i < n; i++) {
    const xi = load<f32>(x + (<usize>i << 2));
    const l = clampI(nearestInt(iscale * (xi - lo)), 0, nmax);
    store<u8>(L + i, <u8>l);
    let diff: f32 = scale * <f32>l + lo - xi;
    diff = mad ? Mathf.abs(diff) : diff * diff;
    bestError = bestError + load<f32>(w + (<usize>i << 2)) * diff;
  }
  if (nstep < 1) {
    store<f32>(minOut, -lo);
    return scale;
  }
  for (let step = 0; step <= nstep; step++) {
    // (as in ggml, lo is the best min so far: later trials shift with it)
    iscale = (rmin + rdelta * <f32>step + fmax) / (hi - lo);
    let sumL: f32 = 0;
    let sumL2: f32 = 0;
    let sumXL: f32 = 0;
    for (let i = 0; i < n; i++) {
      const xi = load<f32>(x + (<usize>i << 2));
      const l = clampI(nearestInt(iscale * (xi - lo)), 0, nmax);
      store<u8>(laux + i, <u8>l);
      const wl: f32 = load<f32>(w + (<usize>i << 2)) * <f32>l;
      sumL = sumL + wl;
      sumL2 = sumL2 + wl * <f32>l;
      sumXL = sumXL + wl * xi;
    }
    const D: f32 = sumW * sumL2 - sumL * sumL;
    if (D > 0) {
      let thisScale: f32 = (sumW * sumXL - sumX * sumL) / D;
      let thisMin: f32 = (sumL2 * sumX - sumL * sumXL) / D;
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = sumXL / sumL2;
      }
      let error: f32 = 0;
      for (let i = 0; i < n; i++) {
        let diff: f32 = thisScale * <f32>load<u8>(laux + i) + thisMin - load<f32>(x + (<usize>i << 2));
        diff = mad ? Mathf.abs(diff) : diff * diff;
        error = error + load<f32>(w + (<usize>i << 2)) * diff;
      }
      if (error < bestError) {
        memory.copy(L, laux, n);
        bestError = error;
        scale = thisScale;
        lo = thisMin;
      }
    }
  }
  store<f32>(minOut, -lo);
  return scale;
}

/**
 * make_qx_quants, rmse_type 1: symmetric quants, stored + nmax (0..2·nmax−1) to L (i8), weighted
 * by qw (or x² when qw is 0); returns the scale, the best of 19 trials.
 */
export function searchScale(n: i32, nmax: i32, x: usize, L: usize, qw: usize): f32 {
  let mx: f32 = 0;
  let amax: f32 = 0;
  for (let i = 0; i < n; i++) {
    const xi = load<f32>(x + (<usize>i << 2));
    const ax = Mathf.abs(xi);
    if (ax > amax) {
      amax = ax;
      mx = xi;
    }
  }
  if (amax < GROUP_MAX_EPS) {
    memory.fill(L, 0, n);
    return 0;
  }
  const fmax = <f32>nmax;
  let iscale: f32 = -fmax / mx;
  let sumlx: f32 = 0;
  let suml2: f32 = 0;
  for (let i = 0; i < n; i++) {
    const xi = load<f32>(x + (<usize>i << 2));
    const l = clampI(nearestInt(iscale * xi), -nmax, nmax - 1);
    store<i8>(L + i, <i8>(l + nmax));
    const wi: f32 = qw ? load<f32>(qw + (<usize>i << 2)) : xi * xi;
    sumlx = sumlx + wi * xi * <f32>l;
    suml2 = suml2 + wi * <f32>l * <f32>l;
  }
  qxScale = suml2 != 0 ? sumlx / suml2 : 0;
  qxBest = qxScale * sumlx;
  qxStep = 0;
  // The 18 trial scales do not depend on one another: four at a time in f32 lanes, each lane
  // summing in element order as the scalar loop does (the same bits), then picked in order.
  const nminV = i32x4.splat(-nmax);
  const topV = i32x4.splat(nmax - 1);
  for (let v = 0; v < 5; v++) {
    const s0 = trialStep(4 * v);
    const s1 = trialStep(4 * v + 1);
    const s2 = trialStep(4 * v + 2);
    const s3 = trialStep(4 * v + 3);
    let steps = f32x4.splat(<f32>s0);
    steps = f32x4.replace_lane(steps, 1, <f32>s1);
    steps = f32x4.replace_lane(steps, 2, <f32>s2);
    steps = f32x4.replace_lane(steps, 3, <f32>s3);
    const iscaleV = f32x4.div(
      f32x4.neg(f32x4.add(f32x4.splat(fmax), f32x4.mul(f32x4.splat(<f32>0.1), steps))),
      f32x4.splat(mx),
    );
    let lx = f32x4.splat(0);
    let l2 = f32x4.splat(0);
    for (let i = 0; i < n; i++) {
      const xi = load<f32>(x + (<usize>i << 2));
      const wi: f32 = qw ? load<f32>(qw + (<usize>i << 2)) : xi * xi;
      const q = f32x4.add(f32x4.mul(iscaleV, f32x4.splat(xi)), f32x4.splat(12582912.0));
      const li = i32x4.sub(v128.and(q, i32x4.splat(0x007fffff)), i32x4.splat(0x00400000));
      const l = f32x4.convert_i32x4_s(i32x4.max_s(nminV, i32x4.min_s(topV, li)));
      lx = f32x4.add(lx, f32x4.mul(f32x4.splat(wi * xi), l));
      l2 = f32x4.add(l2, f32x4.mul(f32x4.mul(f32x4.splat(wi), l), l));
    }
    considerTrial(f32x4.extract_lane(lx, 0), f32x4.extract_lane(l2, 0), s0);
    considerTrial(f32x4.extract_lane(lx, 1), f32x4.extract_lane(l2, 1), s1);
    considerTrial(f32x4.extract_lane(lx, 2), f32x4.extract_lane(l2, 2), s2);
    considerTrial(f32x4.extract_lane(lx, 3), f32x4.extract_lane(l2, 3), s3);
  }
  if (qxStep != 0) {
    iscale = -(fmax + <f32>0.1 * <f32>qxStep) / mx;
    for (let i = 0; i < n; i++) {
      const l = clampI(nearestInt(iscale * load<f32>(x + (<usize>i << 2))), -nmax, nmax - 1);
      store<i8>(L + i, <i8>(l + nmax));
    }
  }
  return qxScale;
}

// searchScale's trial being picked: the best so far and its step (0: the first guess).
let qxBest: f32 = 0;
let qxScale: f32 = 0;
let qxStep: i32 = 0;

/** Trial k's step: −9..−1, 1..9 for k = 0..17; 10 and 11 (k = 18, 19) fill the last vector. */
// @ts-ignore: decorator
@inline function trialStep(k: i32): i32 {
  return k < 9 ? k - 9 : k - 8;
}

/** make_qx_quants' test of one trial, in trial order: the later of equal ones loses. */
// @ts-ignore: decorator
@inline function considerTrial(sumlx: f32, suml2: f32, step: i32): void {
  if (step > 9) return;
  if (suml2 > 0 && sumlx * sumlx > qxBest * suml2) {
    qxScale = sumlx / suml2;
    qxBest = qxScale * sumlx;
    qxStep = step;
  }
}

/**
 * make_q3_quants with do_rmse: symmetric quants weighted by x², then up to five passes that move
 * single quants while the weighted error falls; stored + nmax to L (i8); returns the scale.
 */
export function searchScaleQ3(n: i32, nmax: i32, x: usize, L: usize): f32 {
  let mx: f32 = 0;
  let amax: f32 = 0;
  for (let i = 0; i < n; i++) {
    const xi = load<f32>(x + (<usize>i << 2));
    const ax = Mathf.abs(xi);
    if (ax > amax) {
      amax = ax;
      mx = xi;
    }
  }
  if (amax < GROUP_MAX_EPS) {
    memory.fill(L, 0, n);
    return 0;
  }
  const iscale: f32 = -<f32>nmax / mx;
  let sumlx: f32 = 0;
  let suml2: f32 = 0;
  for (let i = 0; i < n; i++) {
    const xi = load<f32>(x + (<usize>i << 2));
    const l = clampI(nearestInt(iscale * xi), -nmax, nmax - 1);
    store<i8>(L + i, <i8>l);
    const wi: f32 = xi * xi;
    sumlx = sumlx + wi * xi * <f32>l;
    suml2 = suml2 + wi * <f32>l * <f32>l;
  }
  for (let pass = 0; pass < 5; pass++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      const xi = load<f32>(x + (<usize>i << 2));
      const wi: f32 = xi * xi;
      const li = <i32>load<i8>(L + i);
      let slx: f32 = sumlx - wi * xi * <f32>li;
      if (slx > 0) {
        let sl2: f32 = suml2 - wi * <f32>li * <f32>li;
        const nl = clampI(nearestInt((xi * sl2) / slx), -nmax, nmax - 1);
        if (nl != li) {
          slx = slx + wi * xi * <f32>nl;
          sl2 = sl2 + wi * <f32>nl * <f32>nl;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            store<i8>(L + i, <i8>nl);
            sumlx = slx;
            suml2 = sl2;
            changed++;
          }
        }
      }
    }
    if (!changed) break;
  }
  for (let i = 0; i < n; i++) store<i8>(L + i, <i8>(load<i8>(L + i) + nmax));
  return suml2 > 0 ? sumlx / suml2 : 0;
}
