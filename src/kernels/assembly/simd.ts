// Small SIMD128 helpers shared by kernel files (not kernels themselves: nothing here is exported
// from index.ts). The exp is the same Cody–Waite + Cephes polynomial as f32.ts uses, to the bit.

/** The four horizontal sums of a, b, c, d as one vector [Σa, Σb, Σc, Σd]. */
// @ts-ignore: decorator
@inline export function hsum4(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = f32x4.add(v128.shuffle<f32>(a, b, 0, 4, 1, 5), v128.shuffle<f32>(a, b, 2, 6, 3, 7));
  const cd = f32x4.add(v128.shuffle<f32>(c, d, 0, 4, 1, 5), v128.shuffle<f32>(c, d, 2, 6, 3, 7));
  return f32x4.add(v128.shuffle<f32>(ab, cd, 0, 1, 4, 5), v128.shuffle<f32>(ab, cd, 2, 3, 6, 7));
}

/** The horizontal sum of one vector. */
// @ts-ignore: decorator
@inline export function hsum(a: v128): f32 {
  const b = f32x4.add(a, v128.shuffle<f32>(a, a, 2, 3, 0, 1));
  return f32x4.extract_lane(b, 0) + f32x4.extract_lane(b, 1);
}

/** The horizontal maximum of one vector. */
// @ts-ignore: decorator
@inline export function hmax(a: v128): f32 {
  const b = f32x4.max(a, v128.shuffle<f32>(a, a, 2, 3, 0, 1));
  return max(f32x4.extract_lane(b, 0), f32x4.extract_lane(b, 1));
}

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

/** exp of four lanes: relative error below 1e-7 on [-87, 88]; 0 below -87.34, e^88 above 88. */
// @ts-ignore: decorator
@inline export function expV(x0: v128): v128 {
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
@inline export function exp1(x0: f32): f32 {
  return f32x4.extract_lane(expV(f32x4.splat(x0)), 0);
}
