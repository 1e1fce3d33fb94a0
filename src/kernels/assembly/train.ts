// Training kernels: the forward ops that must keep what their backward needs, every backward op,
// and the optimizer. Same ABI as f32.ts (../README.md): byte-offset pointers, i32 sizes, f32
// scalars, then the output row range [r0, r1) this thread owns (and `tid` for per-thread scratch).
// A kernel writes only its own output rows, and every output element is summed by one thread in
// a fixed order, so results do not depend on how the rows were split between threads.
//
// Matrix products use matmulF32 from f32.ts; its transposed operands come from `transpose`:
//   forward      y[n×rows]  = x[n×cols]·Wᵀ          matmulF32(W, x, y, rows, cols, n)
//   input grad   dx[n×cols] = dy[n×rows]·W          matmulF32(Wᵀ, dy, dx, cols, rows, n)
//   weight grad  dW[rows×cols] += dyᵀ·x             matmulF32(xᵀ, dyᵀ, dW, cols, n, rows, acc = 1)
// where xᵀ and dyᵀ hold the tokens of each feature contiguously (n padded with zeros to 4).

import { expV, exp1, hmax, hsum, hsum4 } from "./simd";

// ---------------------------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------------------------

/**
 * dst[c·ld + r] = src[r·cols + c] for r < rows, and 0 for rows <= r < ld (padding), for the dst
 * rows c in [r0, r1) (rows of the op = cols of src). 4×4 blocks go through shuffles.
 */
export function transpose(src: usize, dst: usize, rows: i32, cols: i32, ld: i32, r0: i32, r1: i32): void {
  const sRow = <usize>cols << 2;
  const dRow = <usize>ld << 2;
  let c = r0;
  for (; c + 4 <= r1; c += 4) {
    const s0 = src + (<usize>c << 2);
    const d0 = dst + <usize>c * dRow;
    let r = 0;
    for (; r + 4 <= rows; r += 4) {
      const s = s0 + <usize>r * sRow;
      const a = v128.load(s);
      const b = v128.load(s + sRow);
      const e = v128.load(s + 2 * sRow);
      const f = v128.load(s + 3 * sRow);
      const ab0 = v128.shuffle<f32>(a, b, 0, 4, 1, 5);
      const ab1 = v128.shuffle<f32>(a, b, 2, 6, 3, 7);
      const ef0 = v128.shuffle<f32>(e, f, 0, 4, 1, 5);
      const ef1 = v128.shuffle<f32>(e, f, 2, 6, 3, 7);
      const d = d0 + (<usize>r << 2);
      v128.store(d, v128.shuffle<f32>(ab0, ef0, 0, 1, 4, 5));
      v128.store(d + dRow, v128.shuffle<f32>(ab0, ef0, 2, 3, 6, 7));
      v128.store(d + 2 * dRow, v128.shuffle<f32>(ab1, ef1, 0, 1, 4, 5));
      v128.store(d + 3 * dRow, v128.shuffle<f32>(ab1, ef1, 2, 3, 6, 7));
    }
    for (; r < rows; r++) {
      const s = s0 + <usize>r * sRow;
      const d = d0 + (<usize>r << 2);
      store<f32>(d, load<f32>(s));
      store<f32>(d + dRow, load<f32>(s, 4));
      store<f32>(d + 2 * dRow, load<f32>(s, 8));
      store<f32>(d + 3 * dRow, load<f32>(s, 12));
    }
    if (ld > rows) {
      const pad = <usize>(ld - rows) << 2;
      for (let j: usize = 0; j < 4; j++) memory.fill(d0 + j * dRow + (<usize>rows << 2), 0, pad);
    }
  }
  for (; c < r1; c++) {
    const d = dst + <usize>c * dRow;
    for (let r = 0; r < rows; r++) store<f32>(d + (<usize>r << 2), load<f32>(src + <usize>r * sRow + (<usize>c << 2)));
    if (ld > rows) memory.fill(d + (<usize>rows << 2), 0, <usize>(ld - rows) << 2);
  }
}

/** x[i] = 0 for the elements i in [r0, r1). */
export function fillZero(x: usize, r0: i32, r1: i32): void {
  memory.fill(x + (<usize>r0 << 2), 0, <usize>(r1 - r0) << 2);
}

// ---------------------------------------------------------------------------------------------
// Token embedding
// ---------------------------------------------------------------------------------------------

/** out[t] = table[ids[t]] (rows of dim floats); rows = tokens; ids are i32 and in range. */
export function embeddingForward(table: usize, ids: usize, out: usize, dim: i32, r0: i32, r1: i32): void {
  const rb = <usize>dim << 2;
  for (let t = r0; t < r1; t++) {
    const id = <usize>load<i32>(ids + (<usize>t << 2));
    memory.copy(out + <usize>t * rb, table + id * rb, rb);
  }
}

/**
 * dtable[ids[t]] += dout[t] for every token t < n, in token order; rows = vocabulary rows, so a
 * thread adds only the tokens whose id falls in its range and no two threads touch one row.
 */
export function embeddingBackward(dtable: usize, ids: usize, dout: usize, dim: i32, n: i32, r0: i32, r1: i32): void {
  const rb = <usize>dim << 2;
  for (let t = 0; t < n; t++) {
    const id = load<i32>(ids + (<usize>t << 2));
    if (id < r0 || id >= r1) continue;
    addRow(dtable + <usize>id * rb, dout + <usize>t * rb, dim);
  }
}

/** dst[i] += src[i] for i < len. */
// @ts-ignore: decorator
@inline function addRow(dst: usize, src: usize, len: i32): void {
  const end = <usize>len << 2;
  let o: usize = 0;
  for (; o + 16 <= end; o += 16) v128.store(dst + o, f32x4.add(v128.load(dst + o), v128.load(src + o)));
  for (; o < end; o += 4) store<f32>(dst + o, load<f32>(dst + o) + load<f32>(src + o));
}

// ---------------------------------------------------------------------------------------------
// RMS norm
// ---------------------------------------------------------------------------------------------

/** Σ x[i]² over a row of dim floats, summed as f32.ts's rmsNorm does (bit-identical). */
// @ts-ignore: decorator
@inline function sumSquaresRow(xp: usize, dim: i32): f32 {
  const rb = <usize>dim << 2;
  const vEnd = <usize>(dim & ~3) << 2;
  const v16End = <usize>(dim & ~15) << 2;
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
  return ss;
}

/**
 * out[t, i] = x[t, i] · w[i] · rstd[t] with rstd[t] = 1 / sqrt(mean_i x[t, i]² + eps), which is
 * kept for the backward pass; rows = tokens. Same arithmetic as f32.ts's rmsNorm. out may be x.
 */
export function rmsNormForward(
  x: usize, weight: usize, out: usize, rstd: usize, dim: i32, eps: f32, r0: i32, r1: i32,
): void {
  const rb = <usize>dim << 2;
  const vEnd = <usize>(dim & ~3) << 2;
  for (let t = r0; t < r1; t++) {
    const xp = x + <usize>t * rb;
    const op = out + <usize>t * rb;
    const ss = sumSquaresRow(xp, dim);
    const scale = <f32>(1.0 / Math.sqrt(<f64>ss / <f64>dim + <f64>eps));
    store<f32>(rstd + (<usize>t << 2), scale);
    const sv = f32x4.splat(scale);
    let o: usize = 0;
    for (; o < vEnd; o += 16) {
      v128.store(op + o, f32x4.mul(f32x4.mul(v128.load(xp + o), sv), v128.load(weight + o)));
    }
    for (; o < rb; o += 4) store<f32>(op + o, load<f32>(xp + o) * scale * load<f32>(weight + o));
  }
}

/**
 * Input gradient of the norm: with g = dout ∘ w,
 *   dx[t, i] (+)= rstd·g[i] − x[t, i] · rstd³ · (Σ_j g[j]·x[t, j]) / dim.
 * rows = tokens; acc != 0 adds into dx (the residual stream's gradient); dx may equal dout when
 * acc == 0.
 */
export function rmsNormBackward(
  x: usize, weight: usize, rstd: usize, dout: usize, dx: usize, dim: i32, acc: i32, r0: i32, r1: i32,
): void {
  const rb = <usize>dim << 2;
  const vEnd = <usize>(dim & ~3) << 2;
  for (let t = r0; t < r1; t++) {
    const xp = x + <usize>t * rb;
    const gp = dout + <usize>t * rb;
    const dp = dx + <usize>t * rb;
    let dv = f32x4.splat(0);
    let o: usize = 0;
    for (; o < vEnd; o += 16) {
      dv = f32x4.add(dv, f32x4.mul(f32x4.mul(v128.load(gp + o), v128.load(weight + o)), v128.load(xp + o)));
    }
    let dot = hsum(dv);
    for (; o < rb; o += 4) dot += load<f32>(gp + o) * load<f32>(weight + o) * load<f32>(xp + o);
    const r = load<f32>(rstd + (<usize>t << 2));
    const c = (r * r * r * dot) / <f32>dim;
    const rv = f32x4.splat(r);
    const cv = f32x4.splat(c);
    for (o = 0; o < vEnd; o += 16) {
      let d = f32x4.sub(f32x4.mul(f32x4.mul(v128.load(gp + o), v128.load(weight + o)), rv), f32x4.mul(v128.load(xp + o), cv));
      if (acc) d = f32x4.add(d, v128.load(dp + o));
      v128.store(dp + o, d);
    }
    for (; o < rb; o += 4) {
      let d = load<f32>(gp + o) * load<f32>(weight + o) * r - load<f32>(xp + o) * c;
      if (acc) d += load<f32>(dp + o);
      store<f32>(dp + o, d);
    }
  }
}

/**
 * Weight gradient of the norm: dw[i] += Σ_t dout[t, i] · x[t, i] · rstd[t] over n tokens, in
 * token order; rows = the dim columns (split them in multiples of 4).
 */
export function rmsNormBackwardWeight(
  x: usize, rstd: usize, dout: usize, dweight: usize, dim: i32, n: i32, r0: i32, r1: i32,
): void {
  const rb = <usize>dim << 2;
  const c0 = <usize>r0 << 2;
  const c1 = <usize>r1 << 2;
  const vEnd = c0 + (<usize>((r1 - r0) & ~3) << 2);
  for (let t = 0; t < n; t++) {
    const xp = x + <usize>t * rb;
    const gp = dout + <usize>t * rb;
    const r = load<f32>(rstd + (<usize>t << 2));
    const rv = f32x4.splat(r);
    let o = c0;
    for (; o < vEnd; o += 16) {
      const g = f32x4.mul(f32x4.mul(v128.load(gp + o), v128.load(xp + o)), rv);
      v128.store(dweight + o, f32x4.add(v128.load(dweight + o), g));
    }
    for (; o < c1; o += 4) store<f32>(dweight + o, load<f32>(dweight + o) + load<f32>(gp + o) * load<f32>(xp + o) * r);
  }
}

// ---------------------------------------------------------------------------------------------
// Rotary position embedding (llama order: pairs (x[2i], x[2i+1])), per-token positions
// ---------------------------------------------------------------------------------------------

/**
 * Rotates x in place: x is n × (nHeads·headDim), rows = n·nHeads (row = t·nHeads + h), token t
 * at position positions[t] (i32). cosTable and sinTable are maxPos × ropeDim floats laid out per
 * pair i as (cos θ, cos θ) and (−sin θ, sin θ), θ = pos·freqScale·freqBase^(−2i/ropeDim), so a
 * rotation is x·C + swap(x)·S. inverse != 0 turns by −θ: the backward pass (the transpose of a
 * rotation). Dimensions from ropeDim to headDim stay. ropeDim % 4 == 0.
 */
export function ropeRotate(
  x: usize, positions: usize, cosTable: usize, sinTable: usize, nHeads: i32, headDim: i32, ropeDim: i32,
  inverse: i32, r0: i32, r1: i32,
): void {
  const hb = <usize>headDim << 2;
  const tb = <usize>ropeDim << 2;
  for (let row = r0; row < r1; row++) {
    const t = row / nHeads;
    const pos = <usize>load<i32>(positions + (<usize>t << 2));
    const cp = cosTable + pos * tb;
    const sp = sinTable + pos * tb;
    const p = x + <usize>row * hb;
    for (let o: usize = 0; o < tb; o += 16) {
      const v = v128.load(p + o);
      const sw = v128.shuffle<f32>(v, v, 1, 0, 3, 2);
      const c = f32x4.mul(v, v128.load(cp + o));
      const s = f32x4.mul(sw, v128.load(sp + o));
      v128.store(p + o, inverse ? f32x4.sub(c, s) : f32x4.add(c, s));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Causal attention with grouped-query heads and segments
// ---------------------------------------------------------------------------------------------
//
// q, out, dq, dout are n × (nHeads·headDim); k, v, dk, dv are n × (nKvHeads·headDim), the keys
// and values of the same n tokens (several sequences laid end to end). Token t attends to the
// tokens p with segStart[t] <= p <= t, where segStart[t] is the first token of t's segment (a
// sequence, or one example of a packed sequence); segEnd[p] is one past the last token of p's
// segment, so p is seen by the queries p <= t < segEnd[p]. Head h reads kv head h / (nHeads /
// nKvHeads); scores are scaled by 1/sqrt(headDim). Memory is O(length) per thread: rows of
// scores in scratch + tid·scratchStride (bytes), four rows of the longest segment. headDim % 4 == 0.
//
// Two neighbouring rows of one head (tokens t and t + 1 of one segment) go together: they share
// every key and value but one, so each key and value row read serves both. Every score is the
// same chain of products whichever way it is computed (one row or two, in a group of four keys or
// alone), and every sum runs over the keys in order, so the pairing does not change a bit.

/** sc[i] = scale · (a · rows[i]) for i < count, rows strided by rowStride bytes; hb = row bytes. */
function dotRows(a: usize, rows: usize, rowStride: usize, hb: usize, count: i32, scale: f32, sc: usize): void {
  const sv = f32x4.splat(scale);
  const zero = f32x4.splat(0);
  let i = 0;
  for (; i + 4 <= count; i += 4) {
    const k0 = rows + <usize>i * rowStride;
    const k1 = k0 + rowStride, k2 = k1 + rowStride, k3 = k2 + rowStride;
    let c0 = zero, c1 = zero, c2 = zero, c3 = zero;
    for (let o: usize = 0; o < hb; o += 16) {
      const q = v128.load(a + o);
      c0 = f32x4.add(c0, f32x4.mul(q, v128.load(k0 + o)));
      c1 = f32x4.add(c1, f32x4.mul(q, v128.load(k1 + o)));
      c2 = f32x4.add(c2, f32x4.mul(q, v128.load(k2 + o)));
      c3 = f32x4.add(c3, f32x4.mul(q, v128.load(k3 + o)));
    }
    v128.store(sc + (<usize>i << 2), f32x4.mul(hsum4(c0, c1, c2, c3), sv));
  }
  for (; i < count; i++) {
    const k0 = rows + <usize>i * rowStride;
    let c0 = zero;
    for (let o: usize = 0; o < hb; o += 16) c0 = f32x4.add(c0, f32x4.mul(v128.load(a + o), v128.load(k0 + o)));
    store<f32>(sc + (<usize>i << 2), hsum(c0) * scale);
  }
}

/** dotRows for two vectors a0, a1 against the same rows: sc0 and sc1, with dotRows' arithmetic. */
function dotRows2(
  a0: usize, a1: usize, rows: usize, rowStride: usize, hb: usize, count: i32, scale: f32, sc0: usize, sc1: usize,
): void {
  const sv = f32x4.splat(scale);
  const zero = f32x4.splat(0);
  let i = 0;
  for (; i + 4 <= count; i += 4) {
    const k0 = rows + <usize>i * rowStride;
    const k1 = k0 + rowStride, k2 = k1 + rowStride, k3 = k2 + rowStride;
    let c0 = zero, c1 = zero, c2 = zero, c3 = zero;
    let d0 = zero, d1 = zero, d2 = zero, d3 = zero;
    for (let o: usize = 0; o < hb; o += 16) {
      const q = v128.load(a0 + o);
      const r = v128.load(a1 + o);
      let k = v128.load(k0 + o);
      c0 = f32x4.add(c0, f32x4.mul(q, k));
      d0 = f32x4.add(d0, f32x4.mul(r, k));
      k = v128.load(k1 + o);
      c1 = f32x4.add(c1, f32x4.mul(q, k));
      d1 = f32x4.add(d1, f32x4.mul(r, k));
      k = v128.load(k2 + o);
      c2 = f32x4.add(c2, f32x4.mul(q, k));
      d2 = f32x4.add(d2, f32x4.mul(r, k));
      k = v128.load(k3 + o);
      c3 = f32x4.add(c3, f32x4.mul(q, k));
      d3 = f32x4.add(d3, f32x4.mul(r, k));
    }
    v128.store(sc0 + (<usize>i << 2), f32x4.mul(hsum4(c0, c1, c2, c3), sv));
    v128.store(sc1 + (<usize>i << 2), f32x4.mul(hsum4(d0, d1, d2, d3), sv));
  }
  if (i < count) {
    dotRows(a0, rows + <usize>i * rowStride, rowStride, hb, count - i, scale, sc0 + (<usize>i << 2));
    dotRows(a1, rows + <usize>i * rowStride, rowStride, hb, count - i, scale, sc1 + (<usize>i << 2));
  }
}

// @ts-ignore: decorator
@inline function storeScaled(p: usize, a: v128, s: v128, acc: i32): void {
  let v = f32x4.mul(a, s);
  if (acc) v = f32x4.add(v, v128.load(p));
  v128.store(p, v);
}

/**
 * out (+)= scale · Σ_i w[i] · rows[i] for i < count (rows strided by rowStride bytes, hb bytes
 * each, hb % 16 == 0), in i order, 16 floats of the row at a time.
 */
function weightedRows(
  rows: usize, rowStride: usize, hb: usize, count: i32, w: usize, scale: f32, out: usize, acc: i32,
): void {
  const zero = f32x4.splat(0);
  const sv = f32x4.splat(scale);
  let d: usize = 0;
  for (; d + 64 <= hb; d += 64) {
    let a0 = zero, a1 = zero, a2 = zero, a3 = zero;
    let r = rows + d;
    for (let i = 0; i < count; i++) {
      const s = v128.load32_splat(w + (<usize>i << 2));
      a0 = f32x4.add(a0, f32x4.mul(s, v128.load(r)));
      a1 = f32x4.add(a1, f32x4.mul(s, v128.load(r, 16)));
      a2 = f32x4.add(a2, f32x4.mul(s, v128.load(r, 32)));
      a3 = f32x4.add(a3, f32x4.mul(s, v128.load(r, 48)));
      r += rowStride;
    }
    const o = out + d;
    storeScaled(o, a0, sv, acc);
    storeScaled(o + 16, a1, sv, acc);
    storeScaled(o + 32, a2, sv, acc);
    storeScaled(o + 48, a3, sv, acc);
  }
  for (; d < hb; d += 16) {
    let a0 = zero;
    let r = rows + d;
    for (let i = 0; i < count; i++) {
      a0 = f32x4.add(a0, f32x4.mul(v128.load32_splat(w + (<usize>i << 2)), v128.load(r)));
      r += rowStride;
    }
    storeScaled(out + d, a0, sv, acc);
  }
}

/**
 * Two weighted sums over shared rows, as weightedRows computes each:
 *   extra = +1: out0 = s0·Σ_{i<count} w0[i]·rows[i],  out1 = s1·Σ_{i<=count} w1[i]·rows[i]
 *   extra = −1: out0 = s0·Σ_{−1<=i<count} w0[i+1]·rows[i],  out1 = s1·Σ_{i<count} w1[i]·rows[i]
 * (out1 has one more row after the shared ones, or out0 one more before them).
 */
function weightedRows2(
  rows: usize, rowStride: usize, hb: usize, count: i32, w0: usize, w1: usize, s0: f32, s1: f32,
  out0: usize, out1: usize, acc: i32, extra: i32,
): void {
  const zero = f32x4.splat(0);
  const sv0 = f32x4.splat(s0);
  const sv1 = f32x4.splat(s1);
  const lead = extra < 0;
  const wa = lead ? w0 + 4 : w0;
  for (let d: usize = 0; d < hb; d += 16) {
    let a0 = zero, a1 = zero, a2 = zero, a3 = zero;
    let b0 = zero, b1 = zero, b2 = zero, b3 = zero;
    let r = rows + d;
    // A block of 16 floats when it fits, else one vector (lanes 1..3 stay zero and unstored).
    const wide = d + 64 <= hb;
    if (lead) {
      const s = v128.load32_splat(w0);
      const p = r - rowStride;
      a0 = f32x4.mul(s, v128.load(p));
      if (wide) {
        a1 = f32x4.mul(s, v128.load(p, 16));
        a2 = f32x4.mul(s, v128.load(p, 32));
        a3 = f32x4.mul(s, v128.load(p, 48));
      }
    }
    if (wide) {
      for (let i = 0; i < count; i++) {
        const s = v128.load32_splat(wa + (<usize>i << 2));
        const t = v128.load32_splat(w1 + (<usize>i << 2));
        let v = v128.load(r);
        a0 = f32x4.add(a0, f32x4.mul(s, v));
        b0 = f32x4.add(b0, f32x4.mul(t, v));
        v = v128.load(r, 16);
        a1 = f32x4.add(a1, f32x4.mul(s, v));
        b1 = f32x4.add(b1, f32x4.mul(t, v));
        v = v128.load(r, 32);
        a2 = f32x4.add(a2, f32x4.mul(s, v));
        b2 = f32x4.add(b2, f32x4.mul(t, v));
        v = v128.load(r, 48);
        a3 = f32x4.add(a3, f32x4.mul(s, v));
        b3 = f32x4.add(b3, f32x4.mul(t, v));
        r += rowStride;
      }
    } else {
      for (let i = 0; i < count; i++) {
        const v = v128.load(r);
        a0 = f32x4.add(a0, f32x4.mul(v128.load32_splat(wa + (<usize>i << 2)), v));
        b0 = f32x4.add(b0, f32x4.mul(v128.load32_splat(w1 + (<usize>i << 2)), v));
        r += rowStride;
      }
    }
    if (extra > 0) {
      const t = v128.load32_splat(w1 + (<usize>count << 2));
      b0 = f32x4.add(b0, f32x4.mul(t, v128.load(r)));
      if (wide) {
        b1 = f32x4.add(b1, f32x4.mul(t, v128.load(r, 16)));
        b2 = f32x4.add(b2, f32x4.mul(t, v128.load(r, 32)));
        b3 = f32x4.add(b3, f32x4.mul(t, v128.load(r, 48)));
      }
    }
    storeScaled(out0 + d, a0, sv0, acc);
    storeScaled(out1 + d, b0, sv1, acc);
    if (wide) {
      storeScaled(out0 + d + 16, a1, sv0, acc);
      storeScaled(out0 + d + 32, a2, sv0, acc);
      storeScaled(out0 + d + 48, a3, sv0, acc);
      storeScaled(out1 + d + 16, b1, sv1, acc);
      storeScaled(out1 + d + 32, b2, sv1, acc);
      storeScaled(out1 + d + 48, b3, sv1, acc);
      d += 48;
    }
  }
}

/** The sum expShifted found (a thread's own instance global). */
let expSum: f32 = 0;

/** sc[i] = exp(sc[i] − m) for i < len with m the maximum; returns m and leaves the sum in expSum. */
function expShifted(sc: usize, len: i32): f32 {
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
  expSum = s;
  return m;
}

/** Whether rows `row` and `row + nHeads` (tokens t and t + 1, head h) are both in [r0, r1) and one segment. */
// @ts-ignore: decorator
@inline function pairs(segStart: usize, t: i32, nHeads: i32, row: i32, r1: i32, last: i32): bool {
  return t < last && row + nHeads < r1 && load<i32>(segStart + (<usize>(t + 1) << 2)) == load<i32>(segStart + (<usize>t << 2));
}

/**
 * out = softmax(q·kᵀ/√d)·v over each query's segment, and lse[row] = log Σ_p exp(score_p) (the
 * log-sum-exp the backward passes rebuild the probabilities from); rows = n·nHeads.
 */
export function attentionForward(
  q: usize, k: usize, v: usize, out: usize, lse: usize, segStart: usize,
  nHeads: i32, nKvHeads: i32, headDim: i32, scratch: usize, scratchStride: i32, r0: i32, r1: i32, tid: i32,
): void {
  if (r0 >= r1) return;
  const sc0 = scratch + <usize>tid * <usize>scratchStride;
  const sc1 = sc0 + (<usize>scratchStride >> 2);
  const group = nHeads / nKvHeads;
  const hb = <usize>headDim << 2;
  const kvRow = <usize>nKvHeads * hb;
  const qRow = <usize>nHeads * hb;
  const scale = <f32>(1.0 / Math.sqrt(<f64>headDim));
  // Head-major over the rows of [r0, r1): consecutive rows read the same kv head.
  const t0 = r0 / nHeads;
  const t1 = (r1 - 1) / nHeads;
  for (let h = 0; h < nHeads; h++) {
    const kvOff = <usize>(h / group) * hb;
    for (let t = t0; t <= t1; t++) {
      const row = t * nHeads + h;
      if (row < r0 || row >= r1) continue;
      const lo = load<i32>(segStart + (<usize>t << 2));
      const len = t - lo + 1;
      const kp = k + <usize>lo * kvRow + kvOff;
      const vp = v + <usize>lo * kvRow + kvOff;
      const qp = q + <usize>row * hb;
      if (pairs(segStart, t, nHeads, row, r1, t1)) {
        dotRows2(qp, qp + qRow, kp, kvRow, hb, len, scale, sc0, sc1);
        dotRows(qp + qRow, kp + <usize>len * kvRow, kvRow, hb, 1, scale, sc1 + (<usize>len << 2));
        const m0 = expShifted(sc0, len);
        const s0 = expSum;
        const m1 = expShifted(sc1, len + 1);
        const s1 = expSum;
        const op = out + <usize>row * hb;
        weightedRows2(vp, kvRow, hb, len, sc0, sc1, <f32>1.0 / s0, <f32>1.0 / s1, op, op + qRow, 0, 1);
        store<f32>(lse + (<usize>row << 2), <f32>(<f64>m0 + Math.log(<f64>s0)));
        store<f32>(lse + (<usize>(row + nHeads) << 2), <f32>(<f64>m1 + Math.log(<f64>s1)));
        t++;
        continue;
      }
      dotRows(qp, kp, kvRow, hb, len, scale, sc0);
      const m = expShifted(sc0, len);
      const sum = expSum;
      weightedRows(vp, kvRow, hb, len, sc0, <f32>1.0 / sum, out + <usize>row * hb, 0);
      store<f32>(lse + (<usize>row << 2), <f32>(<f64>m + Math.log(<f64>sum)));
    }
  }
}

/** dout · out over one head row. */
// @ts-ignore: decorator
@inline function rowDot(a: usize, b: usize, hb: usize): f32 {
  let dv = f32x4.splat(0);
  for (let o: usize = 0; o < hb; o += 16) dv = f32x4.add(dv, f32x4.mul(v128.load(a + o), v128.load(b + o)));
  return hsum(dv);
}

/**
 * Query side of the attention backward pass; rows = n·nHeads. With P_p = exp(score_p − lse),
 * delta = dout·out and dS_p = P_p·(dout·v_p − delta):
 *   dq = (1/√d)·Σ_p dS_p·k_p, and delta[row] is kept for attentionBackwardKeyValue.
 */
export function attentionBackwardQuery(
  q: usize, k: usize, v: usize, out: usize, dout: usize, lse: usize, segStart: usize, dq: usize, delta: usize,
  nHeads: i32, nKvHeads: i32, headDim: i32, scratch: usize, scratchStride: i32, r0: i32, r1: i32, tid: i32,
): void {
  if (r0 >= r1) return;
  const quarter = <usize>scratchStride >> 2;
  const sc0 = scratch + <usize>tid * <usize>scratchStride;
  const dp0 = sc0 + quarter;
  const sc1 = dp0 + quarter;
  const dp1 = sc1 + quarter;
  const group = nHeads / nKvHeads;
  const hb = <usize>headDim << 2;
  const kvRow = <usize>nKvHeads * hb;
  const qRow = <usize>nHeads * hb;
  const scale = <f32>(1.0 / Math.sqrt(<f64>headDim));
  const t0 = r0 / nHeads;
  const t1 = (r1 - 1) / nHeads;
  for (let h = 0; h < nHeads; h++) {
    const kvOff = <usize>(h / group) * hb;
    for (let t = t0; t <= t1; t++) {
      const row = t * nHeads + h;
      if (row < r0 || row >= r1) continue;
      const lo = load<i32>(segStart + (<usize>t << 2));
      const len = t - lo + 1;
      const kp = k + <usize>lo * kvRow + kvOff;
      const vp = v + <usize>lo * kvRow + kvOff;
      const qp = q + <usize>row * hb;
      const gp = dout + <usize>row * hb;
      const D0 = rowDot(gp, out + <usize>row * hb, hb);
      store<f32>(delta + (<usize>row << 2), D0);
      if (pairs(segStart, t, nHeads, row, r1, t1)) {
        const D1 = rowDot(gp + qRow, out + <usize>row * hb + qRow, hb);
        store<f32>(delta + (<usize>(row + nHeads) << 2), D1);
        dotRows2(qp, qp + qRow, kp, kvRow, hb, len, scale, sc0, sc1);
        dotRows(qp + qRow, kp + <usize>len * kvRow, kvRow, hb, 1, scale, sc1 + (<usize>len << 2));
        dotRows2(gp, gp + qRow, vp, kvRow, hb, len, 1.0, dp0, dp1);
        dotRows(gp + qRow, vp + <usize>len * kvRow, kvRow, hb, 1, 1.0, dp1 + (<usize>len << 2));
        dScores(sc0, dp0, len, load<f32>(lse + (<usize>row << 2)), D0);
        dScores(sc1, dp1, len + 1, load<f32>(lse + (<usize>(row + nHeads) << 2)), D1);
        const o = dq + <usize>row * hb;
        weightedRows2(kp, kvRow, hb, len, sc0, sc1, scale, scale, o, o + qRow, 0, 1);
        t++;
        continue;
      }
      dotRows(qp, kp, kvRow, hb, len, scale, sc0);
      dotRows(gp, vp, kvRow, hb, len, 1.0, dp0);
      dScores(sc0, dp0, len, load<f32>(lse + (<usize>row << 2)), D0);
      weightedRows(kp, kvRow, hb, len, sc0, scale, dq + <usize>row * hb, 0);
    }
  }
}

/** sc[i] = P_i · (dp[i] − D) with P_i = exp(sc[i] − L), for i < len. */
function dScores(sc: usize, dp: usize, len: i32, L: f32, D: f32): void {
  const lv = f32x4.splat(L);
  const dv = f32x4.splat(D);
  const bytes = <usize>len << 2;
  const vEnd = <usize>(len & ~3) << 2;
  let o: usize = 0;
  for (; o < vEnd; o += 16) {
    const p = expV(f32x4.sub(v128.load(sc + o), lv));
    v128.store(sc + o, f32x4.mul(p, f32x4.sub(v128.load(dp + o), dv)));
  }
  for (; o < bytes; o += 4) {
    const p = exp1(load<f32>(sc + o) - L);
    store<f32>(sc + o, p * (load<f32>(dp + o) - D));
  }
}

/**
 * sc[i] <- P_i = exp(sc[i] − lse_t) and dp[i] <- P_i·(dp[i] − delta_t) for the queries t of
 * i < count, whose lse and delta are `stride` bytes apart from lp and ep on.
 */
function keyScores(sc: usize, dp: usize, count: i32, lp: usize, ep: usize, stride: usize): void {
  let i = 0;
  for (; i + 4 <= count; i += 4) {
    const o = <usize>i << 2;
    const at = <usize>i * stride;
    let L = v128.load32_zero(lp + at);
    L = f32x4.replace_lane(L, 1, load<f32>(lp + at + stride));
    L = f32x4.replace_lane(L, 2, load<f32>(lp + at + 2 * stride));
    L = f32x4.replace_lane(L, 3, load<f32>(lp + at + 3 * stride));
    let D = v128.load32_zero(ep + at);
    D = f32x4.replace_lane(D, 1, load<f32>(ep + at + stride));
    D = f32x4.replace_lane(D, 2, load<f32>(ep + at + 2 * stride));
    D = f32x4.replace_lane(D, 3, load<f32>(ep + at + 3 * stride));
    const P = expV(f32x4.sub(v128.load(sc + o), L));
    v128.store(sc + o, P);
    v128.store(dp + o, f32x4.mul(P, f32x4.sub(v128.load(dp + o), D)));
  }
  for (; i < count; i++) {
    const o = <usize>i << 2;
    const P = exp1(load<f32>(sc + o) - load<f32>(lp + <usize>i * stride));
    store<f32>(sc + o, P);
    store<f32>(dp + o, P * (load<f32>(dp + o) - load<f32>(ep + <usize>i * stride)));
  }
}

/**
 * Key and value side of the attention backward pass; rows = n·nKvHeads (row = p·nKvHeads + g).
 * Over the heads h of kv head g and the queries p <= t < segEnd[p]:
 *   dv_p = Σ P_tp·dout_t        dk_p = (1/√d)·Σ P_tp·(dout_t·v_p − delta_t)·q_t
 * Needs delta from attentionBackwardQuery. Keys p and p + 1 of one segment go together: p sees
 * one more query (t = p) before the ones they share.
 */
export function attentionBackwardKeyValue(
  q: usize, k: usize, v: usize, dout: usize, lse: usize, delta: usize, segEnd: usize, dk: usize, dv: usize,
  nHeads: i32, nKvHeads: i32, headDim: i32, scratch: usize, scratchStride: i32, r0: i32, r1: i32, tid: i32,
): void {
  const quarter = <usize>scratchStride >> 2;
  const sc0 = scratch + <usize>tid * <usize>scratchStride;
  const dp0 = sc0 + quarter;
  const sc1 = dp0 + quarter;
  const dp1 = sc1 + quarter;
  const group = nHeads / nKvHeads;
  const hb = <usize>headDim << 2;
  const qRow = <usize>nHeads * hb;
  const kvRow = <usize>nKvHeads * hb;
  const scale = <f32>(1.0 / Math.sqrt(<f64>headDim));
  const stride = <usize>nHeads << 2;
  if (r0 >= r1) return;
  const p0 = r0 / nKvHeads;
  const p1 = (r1 - 1) / nKvHeads;
  for (let g = 0; g < nKvHeads; g++) {
    for (let p = p0; p <= p1; p++) {
      const row = p * nKvHeads + g;
      if (row < r0 || row >= r1) continue;
      const count = load<i32>(segEnd + (<usize>p << 2)) - p;
      // key p + 1 goes along when its row is in [r0, r1) and it is in p's segment
      const paired = p < p1 && row + nKvHeads < r1 && count > 1;
      const kp = k + <usize>row * hb;
      const vp = v + <usize>row * hb;
      const dko = dk + <usize>row * hb;
      const dvo = dv + <usize>row * hb;
      for (let j = 0; j < group; j++) {
        const h = g * group + j;
        const qp = q + <usize>p * qRow + <usize>h * hb;
        const gp = dout + <usize>p * qRow + <usize>h * hb;
        const lp = lse + (<usize>(p * nHeads + h) << 2);
        const ep = delta + (<usize>(p * nHeads + h) << 2);
        if (paired) {
          // p sees query p first, then both see the queries p + 1 .. end − 1
          dotRows(kp, qp, qRow, hb, 1, scale, sc0);
          dotRows2(kp, kp + kvRow, qp + qRow, qRow, hb, count - 1, scale, sc0 + 4, sc1);
          dotRows(vp, gp, qRow, hb, 1, 1.0, dp0);
          dotRows2(vp, vp + kvRow, gp + qRow, qRow, hb, count - 1, 1.0, dp0 + 4, dp1);
          keyScores(sc0, dp0, count, lp, ep, stride);
          keyScores(sc1, dp1, count - 1, lp + stride, ep + stride, stride);
          weightedRows2(gp + qRow, qRow, hb, count - 1, sc0, sc1, 1.0, 1.0, dvo, dvo + kvRow, j, -1);
          weightedRows2(qp + qRow, qRow, hb, count - 1, dp0, dp1, scale, scale, dko, dko + kvRow, j, -1);
          continue;
        }
        dotRows(kp, qp, qRow, hb, count, scale, sc0);
        dotRows(vp, gp, qRow, hb, count, 1.0, dp0);
        keyScores(sc0, dp0, count, lp, ep, stride);
        weightedRows(gp, qRow, hb, count, sc0, 1.0, dvo, j);
        weightedRows(qp, qRow, hb, count, dp0, scale, dko, j);
      }
      if (paired) p++;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU
// ---------------------------------------------------------------------------------------------

/**
 * Backward of out = silu(gate)·up; rows = elements. With σ = 1/(1 + e^−gate):
 *   dup = dout·gate·σ        dgate = dout·up·σ·(1 + gate·(1 − σ))
 * dgate may be gate and dup may be up (each element is read before it is written).
 */
export function swigluBackward(gate: usize, up: usize, dout: usize, dgate: usize, dup: usize, r0: i32, r1: i32): void {
  let o = <usize>r0 << 2;
  const end = <usize>r1 << 2;
  const one = f32x4.splat(1.0);
  for (; o + 16 <= end; o += 16) {
    const g = v128.load(gate + o);
    const u = v128.load(up + o);
    const d = v128.load(dout + o);
    const s = f32x4.div(one, f32x4.add(one, expV(f32x4.neg(g))));
    const gs = f32x4.mul(g, s);
    v128.store(dup + o, f32x4.mul(d, gs));
    v128.store(dgate + o, f32x4.mul(f32x4.mul(f32x4.mul(d, u), s), f32x4.add(one, f32x4.sub(g, gs))));
  }
  for (; o < end; o += 4) {
    const g = load<f32>(gate + o);
    const u = load<f32>(up + o);
    const d = load<f32>(dout + o);
    const s = <f32>1.0 / (<f32>1.0 + exp1(-g));
    const gs = g * s;
    store<f32>(dup + o, d * gs);
    store<f32>(dgate + o, d * u * s * (<f32>1.0 + (g - gs)));
  }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy fused with softmax
// ---------------------------------------------------------------------------------------------

/**
 * For each token row of vocab logits (rows = tokens, `stride` floats apart, stride >= vocab):
 * losses[t] = logsumexp(row) − row[target], and the row is overwritten with its gradient
 * dscale·(softmax(row) − onehot(target)); floats vocab..stride of the row are set to 0.
 * A target below 0 means no loss: losses[t] = 0 and a zero gradient row.
 */
export function crossEntropy(
  logits: usize, targets: usize, losses: usize, vocab: i32, stride: i32, dscale: f32, r0: i32, r1: i32,
): void {
  const rb = <usize>vocab << 2;
  const sb = <usize>stride << 2;
  for (let t = r0; t < r1; t++) {
    const row = logits + <usize>t * sb;
    const target = load<i32>(targets + (<usize>t << 2));
    if (target < 0) {
      store<f32>(losses + (<usize>t << 2), 0);
      memory.fill(row, 0, sb);
      continue;
    }
    const xt = load<f32>(row + (<usize>target << 2));
    const m = expShifted(row, vocab);
    const sum = expSum;
    store<f32>(losses + (<usize>t << 2), <f32>(<f64>m + Math.log(<f64>sum) - <f64>xt));
    const s = dscale / sum;
    const sv = f32x4.splat(s);
    const vEnd = <usize>(vocab & ~3) << 2;
    let o: usize = 0;
    for (; o < vEnd; o += 16) v128.store(row + o, f32x4.mul(v128.load(row + o), sv));
    for (; o < rb; o += 4) store<f32>(row + o, load<f32>(row + o) * s);
    const tp = row + (<usize>target << 2);
    store<f32>(tp, load<f32>(tp) - dscale);
    if (sb > rb) memory.fill(row + rb, 0, sb - rb);
  }
}

// ---------------------------------------------------------------------------------------------
// Optimizer
// ---------------------------------------------------------------------------------------------

/**
 * AdamW with decoupled weight decay; rows = elements. With g = grad·gradScale:
 *   m = β1·m + (1 − β1)·g        v = β2·v + (1 − β2)·g²
 *   param −= lr·(m·bc1 / (sqrt(v·bc2) + eps) + weightDecay·param)
 * bc1 = 1/(1 − β1^step) and bc2 = 1/(1 − β2^step) are the bias corrections. The gradient is
 * zeroed for the next step.
 */
export function adamw(
  param: usize, grad: usize, m: usize, v: usize, lr: f32, beta1: f32, beta2: f32, eps: f32,
  weightDecay: f32, gradScale: f32, bc1: f32, bc2: f32, r0: i32, r1: i32,
): void {
  let o = <usize>r0 << 2;
  const end = <usize>r1 << 2;
  const b1 = f32x4.splat(beta1), c1 = f32x4.splat(<f32>1.0 - beta1);
  const b2 = f32x4.splat(beta2), c2 = f32x4.splat(<f32>1.0 - beta2);
  const lv = f32x4.splat(lr), ev = f32x4.splat(eps), wv = f32x4.splat(weightDecay);
  const gs = f32x4.splat(gradScale), k1 = f32x4.splat(bc1), k2 = f32x4.splat(bc2);
  const zero = f32x4.splat(0);
  for (; o + 16 <= end; o += 16) {
    const g = f32x4.mul(v128.load(grad + o), gs);
    const mn = f32x4.add(f32x4.mul(b1, v128.load(m + o)), f32x4.mul(c1, g));
    const vn = f32x4.add(f32x4.mul(b2, v128.load(v + o)), f32x4.mul(c2, f32x4.mul(g, g)));
    const p = v128.load(param + o);
    const u = f32x4.div(f32x4.mul(mn, k1), f32x4.add(f32x4.sqrt(f32x4.mul(vn, k2)), ev));
    v128.store(param + o, f32x4.sub(p, f32x4.mul(lv, f32x4.add(u, f32x4.mul(wv, p)))));
    v128.store(m + o, mn);
    v128.store(v + o, vn);
    v128.store(grad + o, zero);
  }
  for (; o < end; o += 4) {
    const g = load<f32>(grad + o) * gradScale;
    const mn = beta1 * load<f32>(m + o) + (<f32>1.0 - beta1) * g;
    const vn = beta2 * load<f32>(v + o) + (<f32>1.0 - beta2) * (g * g);
    const p = load<f32>(param + o);
    const u = (mn * bc1) / (sqrt<f32>(vn * bc2) + eps);
    store<f32>(param + o, p - lr * (u + weightDecay * p));
    store<f32>(m + o, mn);
    store<f32>(v + o, vn);
    store<f32>(grad + o, 0);
  }
}

/** Elements per block of sumSquares. */
const SQ_BLOCK: i32 = 4096;

/**
 * out[b] (f64) = Σ x[i]² over block b = [b·4096, min(length, (b+1)·4096)); rows = blocks. The
 * caller adds the blocks in order, so the total does not depend on the thread count.
 */
export function sumSquares(x: usize, length: i32, out: usize, r0: i32, r1: i32): void {
  for (let b = r0; b < r1; b++) {
    const i0 = b * SQ_BLOCK;
    const i1 = min(length, i0 + SQ_BLOCK);
    let s0 = f32x4.splat(0), s1 = s0;
    let o = <usize>i0 << 2;
    const end = <usize>i1 << 2;
    for (; o + 32 <= end; o += 32) {
      const a = v128.load(x + o), c = v128.load(x + o, 16);
      s0 = f32x4.add(s0, f32x4.mul(a, a));
      s1 = f32x4.add(s1, f32x4.mul(c, c));
    }
    for (; o + 16 <= end; o += 16) {
      const a = v128.load(x + o);
      s0 = f32x4.add(s0, f32x4.mul(a, a));
    }
    let s = <f64>hsum(f32x4.add(s0, s1));
    for (; o < end; o += 4) {
      const a = <f64>load<f32>(x + o);
      s += a * a;
    }
    store<f64>(out + (<usize>b << 3), s);
  }
}

// ---------------------------------------------------------------------------------------------
// Scaling (the alpha/rank factor of LoRA updates)
// ---------------------------------------------------------------------------------------------

/** x[i] *= s for i in [r0, r1). */
export function scale(x: usize, s: f32, r0: i32, r1: i32): void {
  let o = <usize>r0 << 2;
  const end = <usize>r1 << 2;
  const sv = f32x4.splat(s);
  for (; o + 16 <= end; o += 16) v128.store(x + o, f32x4.mul(v128.load(x + o), sv));
  for (; o < end; o += 4) store<f32>(x + o, load<f32>(x + o) * s);
}
