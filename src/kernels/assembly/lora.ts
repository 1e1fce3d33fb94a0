// LoRA training: the scaled, dropped-out copy of a layer input that feeds the low-rank path.
// Same ABI as f32.ts (../README.md). The dropout mask is a hash of the element index and a seed,
// so it needs no storage, is the same for any thread split, and the backward pass rebuilds it.

/** lowbias32 (Wellons): a 32-bit integer mix with good avalanche. */
// @ts-ignore: decorator
@inline function mix(x: u32): u32 {
  x ^= x >>> 16;
  x *= 0x7feb352d;
  x ^= x >>> 15;
  x *= 0x846ca68b;
  x ^= x >>> 16;
  return x;
}

// @ts-ignore: decorator
@inline function mixV(x: v128): v128 {
  x = v128.xor(x, i32x4.shr_u(x, 16));
  x = i32x4.mul(x, i32x4.splat(0x7feb352d));
  x = v128.xor(x, i32x4.shr_u(x, 15));
  x = i32x4.mul(x, i32x4.splat(<i32>0x846ca68b));
  x = v128.xor(x, i32x4.shr_u(x, 16));
  return x;
}

/**
 * out[i] (+)= keep(i) ? x[i]·scale : 0 for the elements i in [r0, r1), where
 * keep(i) = mix(seed ^ mix(i)) >= threshold (unsigned). threshold = p·2³² drops a share p;
 * threshold 0 keeps every element (a plain scaled copy). rows = elements; out may equal x when
 * acc is 0.
 */
export function dropoutScale(
  x: usize, out: usize, scale: f32, threshold: u32, seed: u32, acc: i32, r0: i32, r1: i32,
): void {
  let i = r0;
  const s = f32x4.splat(scale);
  if (threshold === 0) {
    for (; i + 4 <= r1; i += 4) {
      const o = <usize>i << 2;
      let v = f32x4.mul(v128.load(x + o), s);
      if (acc) v = f32x4.add(v, v128.load(out + o));
      v128.store(out + o, v);
    }
  } else {
    const seedV = i32x4.splat(seed);
    const thresholdV = i32x4.splat(threshold);
    for (; i + 4 <= r1; i += 4) {
      const o = <usize>i << 2;
      const index = i32x4.add(i32x4.splat(i), i32x4(0, 1, 2, 3));
      const keep = i32x4.ge_u(mixV(v128.xor(seedV, mixV(index))), thresholdV);
      let v = v128.and(f32x4.mul(v128.load(x + o), s), keep);
      if (acc) v = f32x4.add(v, v128.load(out + o));
      v128.store(out + o, v);
    }
  }
  for (; i < r1; i++) {
    const o = <usize>i << 2;
    let v: f32 = mix(seed ^ mix(<u32>i)) >= threshold ? load<f32>(x + o) * scale : 0;
    if (acc) v += load<f32>(out + o);
    store<f32>(out + o, v);
  }
}
