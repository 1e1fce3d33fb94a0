/**
 * Pure TypeScript twins of the f32 kernels in src/kernels/assembly/f32.ts.
 *
 * Each function takes the same arguments as its kernel, with typed arrays in place of pointers
 * and the whole output (no row range), and computes in float64 where that makes it a better
 * reference. Layouts follow src/kernels/README.md: a weight is rows × cols row-major, an
 * activation is n tokens × cols, matrix products write out[t * rows + r].
 * These are for tests and for readers: plain loops, no tricks, no speed.
 */

// ---------------------------------------------------------------------------------------------
// Half-precision conversions
// ---------------------------------------------------------------------------------------------

/** IEEE 754 half (f16) bits to a number; subnormals, infinities and NaN included. */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 31) return mantissa === 0 ? sign * Infinity : Number.NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** bfloat16 bits to a number: the top 16 bits of an f32. */
export function bf16ToF32(h: number): number {
  const u = new Uint32Array([(h & 0xffff) << 16]);
  return new Float32Array(u.buffer)[0]!;
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** A number to IEEE half bits, rounding to nearest even (overflow gives infinity). */
export function f32ToF16(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  let mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  let e = exponent - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    // subnormal half (or zero): shift the implicit 1 in and round to nearest even
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mantissa & ((1 << shift) - 1);
    let m = mantissa >>> shift;
    if (rest > half || (rest === half && m & 1)) m++;
    return sign | m;
  }
  let m = mantissa >>> 13;
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && m & 1)) {
    m++;
    if (m === 0x400) {
      m = 0;
      e++;
      if (e >= 31) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | m;
}

/** A number to bfloat16 bits, rounding to nearest even (NaN stays NaN). */
export function f32ToBF16(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0]!;
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

// ---------------------------------------------------------------------------------------------
// Matrix products: out[t * rows + r] (+)= Σ_k W[r, k] · x[t, k]
// ---------------------------------------------------------------------------------------------

function matmulWith(
  weightAt: (i: number) => number,
  x: Float32Array,
  out: Float32Array,
  rows: number,
  cols: number,
  n: number,
  acc: number,
): void {
  for (let t = 0; t < n; t++) {
    for (let r = 0; r < rows; r++) {
      let sum = 0;
      for (let k = 0; k < cols; k++) sum += weightAt(r * cols + k) * x[t * cols + k]!;
      out[t * rows + r] = acc ? out[t * rows + r]! + sum : sum;
    }
  }
}

/** out (n × rows) (+)= x (n × cols) · Wᵀ, W f32 rows × cols; sums in float64. */
export function matmulF32Ref(
  w: Float32Array,
  x: Float32Array,
  out: Float32Array,
  rows: number,
  cols: number,
  n: number,
  acc: number,
): void {
  matmulWith((i) => w[i]!, x, out, rows, cols, n, acc);
}

/** As matmulF32Ref with W given as IEEE half bits. */
export function matmulF16Ref(
  w: Uint16Array,
  x: Float32Array,
  out: Float32Array,
  rows: number,
  cols: number,
  n: number,
  acc: number,
): void {
  matmulWith((i) => f16ToF32(w[i]!), x, out, rows, cols, n, acc);
}

/** As matmulF32Ref with W given as bfloat16 bits. */
export function matmulBF16Ref(
  w: Uint16Array,
  x: Float32Array,
  out: Float32Array,
  rows: number,
  cols: number,
  n: number,
  acc: number,
): void {
  matmulWith((i) => bf16ToF32(w[i]!), x, out, rows, cols, n, acc);
}

// ---------------------------------------------------------------------------------------------
// Norm, rope, attention
// ---------------------------------------------------------------------------------------------

/** out[t, i] = x[t, i] · weight[i] / sqrt(mean_i x[t, i]² + eps) for n tokens of dim; out may be x. */
export function rmsNormRef(
  x: Float32Array,
  weight: Float32Array,
  out: Float32Array,
  dim: number,
  eps: number,
  n: number,
): void {
  for (let t = 0; t < n; t++) {
    let sumSquares = 0;
    for (let i = 0; i < dim; i++) sumSquares += x[t * dim + i]! ** 2;
    const scale = 1 / Math.sqrt(sumSquares / dim + eps);
    for (let i = 0; i < dim; i++) out[t * dim + i] = x[t * dim + i]! * scale * weight[i]!;
  }
}

/**
 * LayerNorm as ggml computes it: mean = f32(Σx)/dim, y = x - mean, scale = 1/sqrt(Σy²/dim + eps),
 * out = y · scale · weight (+ bias), each step rounded to f32. `bias` may be absent; out may be x.
 */
export function layerNormRef(
  x: Float32Array,
  weight: Float32Array,
  bias: Float32Array | undefined,
  out: Float32Array,
  dim: number,
  eps: number,
  n: number,
): void {
  const f = Math.fround;
  for (let t = 0; t < n; t++) {
    const row = x.subarray(t * dim, (t + 1) * dim);
    let sum = 0;
    for (const v of row) sum += v;
    const mean = f(f(sum) / dim);
    let squares = 0;
    for (const v of row) squares += f(v - mean) ** 2;
    const scale = f(1 / f(Math.sqrt(f(f(squares / dim) + f(eps)))));
    for (let i = 0; i < dim; i++) {
      const y = f(f(f(row[i]! - mean) * scale) * weight[i]!);
      out[t * dim + i] = bias ? f(y + bias[i]!) : y;
    }
  }
}

/**
 * Rotary position embedding in place on x (n × nHeads·headDim), token t at position pos0 + t.
 * Pair i < ropeDim/2 turns by theta = pos · freqScale · freqBase^(-2i/ropeDim); the pair is
 * (x[2i], x[2i+1]) for llama order (neox = 0) and (x[i], x[i + ropeDim/2]) for NeoX order.
 * Dimensions from ropeDim on are unchanged. `factors` (ropeDim/2 of them) divide the pair angles
 * (Llama 3.1's rope_freqs).
 */
export function ropeRef(
  x: Float32Array,
  n: number,
  nHeads: number,
  headDim: number,
  ropeDim: number,
  pos0: number,
  freqBase: number,
  freqScale: number,
  neox: number,
  factors?: Float32Array,
): void {
  const half = ropeDim / 2;
  for (let t = 0; t < n; t++) {
    const pos = pos0 + t;
    for (let h = 0; h < nHeads; h++) {
      const base = (t * nHeads + h) * headDim;
      for (let i = 0; i < half; i++) {
        const theta = (pos * freqScale * freqBase ** ((-2 * i) / ropeDim)) / (factors?.[i] ?? 1);
        const a = base + (neox ? i : 2 * i);
        const b = base + (neox ? i + half : 2 * i + 1);
        const x0 = x[a]!;
        const x1 = x[b]!;
        x[a] = x0 * Math.cos(theta) - x1 * Math.sin(theta);
        x[b] = x0 * Math.sin(theta) + x1 * Math.cos(theta);
      }
    }
  }
}

/** ropeRef over tokens of several sequences: token t (a row of nHeads·headDim) is at positions[t]. */
export function ropeAtRef(
  x: Float32Array,
  positions: readonly number[],
  nHeads: number,
  headDim: number,
  ropeDim: number,
  freqBase: number,
  freqScale: number,
  neox: number,
  factors?: Float32Array,
): void {
  const w = nHeads * headDim;
  positions.forEach((pos, t) => {
    const row = x.subarray(t * w, (t + 1) * w);
    ropeRef(row, 1, nHeads, headDim, ropeDim, pos, freqBase, freqScale, neox, factors);
  });
}

/**
 * Causal attention. q and out are n × nHeads·headDim; k and v hold cache positions
 * 0 .. pos0 + n - 1, each a row of nKvHeads·headDim. Token t (position pos0 + t) attends to
 * positions 0 .. pos0 + t; head h reads kv head h / (nHeads / nKvHeads); scores are scaled by
 * 1/sqrt(headDim). Everything in float64.
 */
export function attentionRef(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  out: Float32Array,
  n: number,
  pos0: number,
  nHeads: number,
  nKvHeads: number,
  headDim: number,
  maxAlibiBias = 0,
): void {
  const group = nHeads / nKvHeads;
  const kvRow = nKvHeads * headDim;
  const scale = 1 / Math.sqrt(headDim);
  for (let t = 0; t < n; t++) {
    for (let h = 0; h < nHeads; h++) {
      const qBase = (t * nHeads + h) * headDim;
      const kvBase = Math.floor(h / group) * headDim;
      const len = pos0 + t + 1;
      const scores = new Float64Array(len);
      for (let p = 0; p < len; p++) {
        let dot = 0;
        for (let d = 0; d < headDim; d++) dot += q[qBase + d]! * k[p * kvRow + kvBase + d]!;
        scores[p] =
          dot * scale + (maxAlibiBias > 0 ? alibiSlopeRef(h, nHeads, maxAlibiBias) * (p - (len - 1)) : 0);
      }
      let max = -Infinity;
      for (const s of scores) max = Math.max(max, s);
      let sum = 0;
      for (let p = 0; p < len; p++) {
        scores[p] = Math.exp(scores[p]! - max);
        sum += scores[p]!;
      }
      for (let d = 0; d < headDim; d++) {
        let value = 0;
        for (let p = 0; p < len; p++) value += scores[p]! * v[p * kvRow + kvBase + d]!;
        out[qBase + d] = value / sum;
      }
    }
  }
}

/**
 * ALiBi's slope for head h of nHeads (ggml_soft_max_ext): with n the largest power of 2 not above
 * nHeads, 2^(-maxBias/n · (h + 1)) for the first n heads, 2^(-maxBias/(2n) · (2(h - n) + 1)) after.
 */
export function alibiSlopeRef(h: number, nHeads: number, maxBias: number): number {
  const n = 2 ** Math.floor(Math.log2(nHeads));
  return h < n ? 2 ** ((-maxBias / n) * (h + 1)) : 2 ** ((-maxBias / 2 / n) * (2 * (h - n) + 1));
}

/** One token of a pass over several sequences: its position and its sequence's caches. */
export interface TokenRef {
  pos: number;
  /** K and V cache rows 0..pos of the token's sequence, nKvHeads·headDim floats each. */
  k: Float32Array;
  v: Float32Array;
}

/** attentionRef over tokens of several sequences: token t attends to its own caches up to tokens[t].pos. */
export function attentionAtRef(
  q: Float32Array,
  tokens: readonly TokenRef[],
  out: Float32Array,
  nHeads: number,
  nKvHeads: number,
  headDim: number,
  maxAlibiBias = 0,
): void {
  const w = nHeads * headDim;
  tokens.forEach(({ pos, k, v }, t) => {
    const o = out.subarray(t * w, (t + 1) * w);
    attentionRef(q.subarray(t * w, (t + 1) * w), k, v, o, 1, pos, nHeads, nKvHeads, headDim, maxAlibiBias);
  });
}

// ---------------------------------------------------------------------------------------------
// Elementwise
// ---------------------------------------------------------------------------------------------

/** out[i] = silu(gate[i]) · up[i] = gate[i] · up[i] / (1 + e^-gate[i]) over all elements. */
export function siluMulRef(gate: Float32Array, up: Float32Array, out: Float32Array): void {
  for (let i = 0; i < out.length; i++) {
    const g = gate[i]!;
    out[i] = (g * up[i]!) / (1 + Math.exp(-g));
  }
}

/**
 * ggml's GELU table (GGML_GELU_FP16): for every f16 bit pattern h, the f16 bits of
 * 0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²))) at x = f16 value of h, each step in f32 as C
 * evaluates it. The kernels look their results up in it: it is data rather than a computation to
 * mirror, so the model uploads this very table (llama.ts) and the tests check it against the formula.
 */
export function geluTableRef(): Uint16Array {
  const f = Math.fround;
  const table = new Uint16Array(1 << 16);
  const sqrt2OverPi = f(Math.sqrt(2 / Math.PI)); // ggml's SQRT_2_OVER_PI, a float
  const a = f(0.044715);
  for (let h = 0; h < 1 << 16; h++) {
    const x = f16ToF32(h);
    const inner = f(f(sqrt2OverPi * x) * f(1 + f(f(a * x) * x)));
    table[h] = f32ToF16(f(f(0.5 * x) * f(1 + f(Math.tanh(inner)))));
  }
  return table;
}

let geluTable: Uint16Array | undefined;

/** gelu(x) as ggml's CPU backend gives it: 0 at or below -10, x at or above 10, else the table's value at f16(x). */
export function geluOfRef(x: number): number {
  if (x <= -10) return 0;
  if (x >= 10) return x;
  geluTable ??= geluTableRef();
  return f16ToF32(geluTable[f32ToF16(x)]!);
}

/** out[i] = gelu(x[i]) (geluOfRef). */
export function geluRef(x: Float32Array, out: Float32Array): void {
  for (let i = 0; i < out.length; i++) out[i] = geluOfRef(x[i]!);
}

/** out[i] = gelu(gate[i]) · up[i], rounded to f32 (GeGLU). */
export function geluMulRef(gate: Float32Array, up: Float32Array, out: Float32Array): void {
  for (let i = 0; i < out.length; i++) out[i] = Math.fround(geluOfRef(gate[i]!) * up[i]!);
}

/** out[i] = x[i] · s, rounded to f32. */
export function scaleRef(x: Float32Array, s: number, out: Float32Array): void {
  for (let i = 0; i < out.length; i++) out[i] = Math.fround(x[i]! * Math.fround(s));
}

/** x[i] clamped to [-limit, limit], in place. */
export function clampRef(x: Float32Array, limit: number): void {
  const l = Math.fround(limit);
  for (let i = 0; i < x.length; i++) x[i] = Math.min(Math.max(x[i]!, -l), l);
}

/** out[i] = a[i] + b[i] over all elements. */
export function addRef(a: Float32Array, b: Float32Array, out: Float32Array): void {
  for (let i = 0; i < out.length; i++) out[i] = a[i]! + b[i]!;
}

/** Softmax of each row of cols values of x, in place (x.length / cols rows). */
export function softmaxRef(x: Float32Array, cols: number): void {
  for (let base = 0; base + cols <= x.length; base += cols) {
    let max = -Infinity;
    for (let i = 0; i < cols; i++) max = Math.max(max, x[base + i]!);
    let sum = 0;
    const e = new Float64Array(cols);
    for (let i = 0; i < cols; i++) {
      e[i] = Math.exp(x[base + i]! - max);
      sum += e[i]!;
    }
    for (let i = 0; i < cols; i++) x[base + i] = e[i]! / sum;
  }
}
