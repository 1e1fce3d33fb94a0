// LoRA training: the low-rank path of an adapted matrix W (out × in), its forward pass and its
// gradients, without transposes. Same ABI as f32.ts (../README.md).
//
//   xd = keep ∘ x · scale        scale = (alpha / rank) / (1 − p); keep is the dropout mask
//   u  = xd · Aᵀ                 A rank × in, u n × rank (kept for the backward pass)
//   y += u · Bᵀ                  B out × rank
//
// and back: dB += dyᵀ·u, du = dy·B, dA += duᵀ·xd, dx += keep ∘ (du·A) · scale.
// The mask is a hash of the element index t·in + k and a seed, so it needs no storage, is the
// same for any thread split, and the backward pass rebuilds it. threshold = p·2³² drops a share
// p of the elements; threshold 0 keeps them all. rank and in are multiples of 4.

import { hsum } from "./simd";

/** lowbias32 (Wellons), four lanes at a time: a 32-bit integer mix with good avalanche. */
// @ts-ignore: decorator
@inline function mixV(x: v128): v128 {
  x = v128.xor(x, i32x4.shr_u(x, 16));
  x = i32x4.mul(x, i32x4.splat(0x7feb352d));
  x = v128.xor(x, i32x4.shr_u(x, 15));
  x = i32x4.mul(x, i32x4.splat(<i32>0x846ca68b));
  x = v128.xor(x, i32x4.shr_u(x, 16));
  return x;
}

/** All-ones lanes where the mask keeps elements i..i+3: mix(seed ^ mix(i)) >= threshold. */
// @ts-ignore: decorator
@inline function keep4(i: u32, seed: u32, threshold: u32): v128 {
  if (threshold === 0) return i32x4.splat(-1);
  const index = i32x4.add(i32x4.splat(i), i32x4(0, 1, 2, 3));
  return i32x4.ge_u(mixV(v128.xor(i32x4.splat(seed), mixV(index))), i32x4.splat(threshold));
}

/** keep ∘ x[i..i+3] · scale. */
// @ts-ignore: decorator
@inline function masked4(x: usize, i: u32, scale: v128, seed: u32, threshold: u32): v128 {
  return v128.and(f32x4.mul(v128.load(x + (<usize>i << 2)), scale), keep4(i, seed, threshold));
}

/**
 * u[t] = (keep ∘ x[t] · scale)·Aᵀ, and out[t] += u[t]·Bᵀ when writeOut != 0; rows = tokens.
 * scratch + tid·stride holds a thread's masked input row (in floats).
 */
export function loraForward(
  x: usize, a: usize, b: usize, u: usize, out: usize, inF: i32, outF: i32, rank: i32,
  scale: f32, threshold: u32, seed: u32, writeOut: i32, scratch: usize, stride: i32,
  r0: i32, r1: i32, tid: i32,
): void {
  const xs = scratch + <usize>tid * <usize>stride;
  const sv = f32x4.splat(scale);
  const inBytes = <usize>inF << 2;
  for (let t = r0; t < r1; t++) {
    const base = <u32>t * <u32>inF;
    for (let k = 0; k < inF; k += 4) v128.store(xs + (<usize>k << 2), masked4(x, base + <u32>k, sv, seed, threshold));
    const ut = u + ((<usize>t * <usize>rank) << 2);
    for (let j = 0; j < rank; j += 4) {
      const a0 = a + <usize>j * inBytes;
      let s0 = f32x4.splat(0), s1 = s0, s2 = s0, s3 = s0;
      for (let o: usize = 0; o < inBytes; o += 16) {
        const xv = v128.load(xs + o);
        s0 = f32x4.add(s0, f32x4.mul(xv, v128.load(a0 + o)));
        s1 = f32x4.add(s1, f32x4.mul(xv, v128.load(a0 + inBytes + o)));
        s2 = f32x4.add(s2, f32x4.mul(xv, v128.load(a0 + 2 * inBytes + o)));
        s3 = f32x4.add(s3, f32x4.mul(xv, v128.load(a0 + 3 * inBytes + o)));
      }
      store<f32>(ut + (<usize>j << 2), hsum(s0));
      store<f32>(ut + (<usize>j << 2), hsum(s1), 4);
      store<f32>(ut + (<usize>j << 2), hsum(s2), 8);
      store<f32>(ut + (<usize>j << 2), hsum(s3), 12);
    }
    if (!writeOut) continue;
    const ot = out + ((<usize>t * <usize>outF) << 2);
    const rankBytes = <usize>rank << 2;
    for (let o = 0; o < outF; o++) {
      const bo = b + <usize>o * rankBytes;
      let s = f32x4.splat(0);
      for (let j: usize = 0; j < rankBytes; j += 16) s = f32x4.add(s, f32x4.mul(v128.load(ut + j), v128.load(bo + j)));
      const p = ot + (<usize>o << 2);
      store<f32>(p, load<f32>(p) + hsum(s));
    }
  }
}

/** dB[o] += Σ_t dy[t, o]·u[t] over the n tokens in order; rows = out features, in fours. */
export function loraBackwardB(
  dy: usize, u: usize, db: usize, n: i32, outF: i32, rank: i32, r0: i32, r1: i32,
): void {
  const dyRow = <usize>outF << 2;
  const uRow = <usize>rank << 2;
  for (let o = r0; o < r1; o += 4) {
    const d0 = db + <usize>o * uRow;
    for (let j: usize = 0; j < uRow; j += 16) {
      let s0 = v128.load(d0 + j);
      let s1 = v128.load(d0 + uRow + j);
      let s2 = v128.load(d0 + 2 * uRow + j);
      let s3 = v128.load(d0 + 3 * uRow + j);
      let dp = dy + (<usize>o << 2);
      let up = u + j;
      for (let t = 0; t < n; t++) {
        const g = v128.load(dp);
        const uv = v128.load(up);
        s0 = f32x4.add(s0, f32x4.mul(f32x4.splat(f32x4.extract_lane(g, 0)), uv));
        s1 = f32x4.add(s1, f32x4.mul(f32x4.splat(f32x4.extract_lane(g, 1)), uv));
        s2 = f32x4.add(s2, f32x4.mul(f32x4.splat(f32x4.extract_lane(g, 2)), uv));
        s3 = f32x4.add(s3, f32x4.mul(f32x4.splat(f32x4.extract_lane(g, 3)), uv));
        dp += dyRow;
        up += uRow;
      }
      v128.store(d0 + j, s0);
      v128.store(d0 + uRow + j, s1);
      v128.store(d0 + 2 * uRow + j, s2);
      v128.store(d0 + 3 * uRow + j, s3);
    }
  }
}

/**
 * du[t] = dy[t]·B, and dx[t] += keep ∘ (du[t]·A) · scale when dx != 0; rows = tokens.
 */
export function loraBackwardInput(
  dy: usize, a: usize, b: usize, du: usize, dx: usize, inF: i32, outF: i32, rank: i32,
  scale: f32, threshold: u32, seed: u32, r0: i32, r1: i32,
): void {
  const sv = f32x4.splat(scale);
  const rankBytes = <usize>rank << 2;
  const inBytes = <usize>inF << 2;
  for (let t = r0; t < r1; t++) {
    const dyt = dy + ((<usize>t * <usize>outF) << 2);
    const dut = du + <usize>t * rankBytes;
    for (let j: usize = 0; j < rankBytes; j += 16) {
      let s = f32x4.splat(0);
      let bp = b + j;
      for (let o = 0; o < outF; o++) {
        s = f32x4.add(s, f32x4.mul(f32x4.splat(load<f32>(dyt + (<usize>o << 2))), v128.load(bp)));
        bp += rankBytes;
      }
      v128.store(dut + j, s);
    }
    if (!dx) continue;
    const base = <u32>t * <u32>inF;
    const dxt = dx + <usize>base * 4;
    for (let k = 0; k < inF; k += 4) {
      let s = f32x4.splat(0);
      let ap = a + (<usize>k << 2);
      for (let j = 0; j < rank; j++) {
        s = f32x4.add(s, f32x4.mul(f32x4.splat(load<f32>(dut + (<usize>j << 2))), v128.load(ap)));
        ap += inBytes;
      }
      const p = dxt + (<usize>k << 2);
      const kept = v128.and(f32x4.mul(s, sv), keep4(base + <u32>k, seed, threshold));
      v128.store(p, f32x4.add(v128.load(p), kept));
    }
  }
}

/** dA[j, k] += Σ_t du[t, j]·(keep ∘ x[t, k] · scale) over the n tokens in order; rows = in features, in fours. */
export function loraBackwardA(
  x: usize, du: usize, da: usize, n: i32, inF: i32, rank: i32, scale: f32, threshold: u32, seed: u32,
  r0: i32, r1: i32,
): void {
  const sv = f32x4.splat(scale);
  const inBytes = <usize>inF << 2;
  const rankBytes = <usize>rank << 2;
  for (let k = r0; k < r1; k += 4) {
    for (let j = 0; j < rank; j += 4) {
      const d0 = da + <usize>j * inBytes + (<usize>k << 2);
      let s0 = v128.load(d0);
      let s1 = v128.load(d0 + inBytes);
      let s2 = v128.load(d0 + 2 * inBytes);
      let s3 = v128.load(d0 + 3 * inBytes);
      let up = du + (<usize>j << 2);
      for (let t = 0; t < n; t++) {
        const xv = masked4(x, <u32>t * <u32>inF + <u32>k, sv, seed, threshold);
        const g = v128.load(up);
        s0 = f32x4.add(s0, f32x4.mul(f32x4.splat(f32x4.extract_lane(g, 0)), xv));
        s1 = f32x4.add(s1, f32x4.mul(f32x4.splat(f32x4.extract_lane(g, 1)), xv));
        s2 = f32x4.add(s2, f32x4.mul(f32x4.splat(f32x4.extract_lane(g, 2)), xv));
        s3 = f32x4.add(s3, f32x4.mul(f32x4.splat(f32x4.extract_lane(g, 3)), xv));
        up += rankBytes;
      }
      v128.store(d0, s0);
      v128.store(d0 + inBytes, s1);
      v128.store(d0 + 2 * inBytes, s2);
      v128.store(d0 + 3 * inBytes, s3);
    }
  }
}
