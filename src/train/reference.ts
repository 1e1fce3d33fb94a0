/**
 * Pure TypeScript twins of the training kernels in src/kernels/assembly/train.ts, in float64.
 *
 * Each forward op has a backward twin written from the calculus, not from the kernel, so the
 * tests can check both: wasm against these, and these against finite differences. Layouts follow
 * src/kernels/README.md: an activation is n tokens × cols, a weight is rows × cols row-major.
 * Plain loops, no tricks, no speed.
 */

/** Any array of numbers a reference reads. */
export type Values = ArrayLike<number>;

// ---------------------------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------------------------

/** dst (cols × ld) with dst[c·ld + r] = src[r·cols + c], zero-padded for rows <= r < ld. */
export function transposeRef(src: Values, rows: number, cols: number, ld: number): Float64Array {
  const dst = new Float64Array(cols * ld);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) dst[c * ld + r] = src[r * cols + c]!;
  return dst;
}

// ---------------------------------------------------------------------------------------------
// Matrix product y = x·Wᵀ and its gradients
// ---------------------------------------------------------------------------------------------

/** y (n × rows) = x (n × cols) · Wᵀ, W rows × cols. */
export function linearRef(x: Values, w: Values, rows: number, cols: number, n: number): Float64Array {
  const y = new Float64Array(n * rows);
  for (let t = 0; t < n; t++) {
    for (let r = 0; r < rows; r++) {
      let s = 0;
      for (let k = 0; k < cols; k++) s += x[t * cols + k]! * w[r * cols + k]!;
      y[t * rows + r] = s;
    }
  }
  return y;
}

/** dx = dy·W (n × cols) and dW = dyᵀ·x (rows × cols) for y = x·Wᵀ. */
export function linearBackwardRef(
  dy: Values,
  x: Values,
  w: Values,
  rows: number,
  cols: number,
  n: number,
): { dx: Float64Array; dw: Float64Array } {
  const dx = new Float64Array(n * cols);
  const dw = new Float64Array(rows * cols);
  for (let t = 0; t < n; t++) {
    for (let r = 0; r < rows; r++) {
      const g = dy[t * rows + r]!;
      for (let k = 0; k < cols; k++) {
        dx[t * cols + k]! += g * w[r * cols + k]!;
        dw[r * cols + k]! += g * x[t * cols + k]!;
      }
    }
  }
  return { dx, dw };
}

// ---------------------------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------------------------

/** out[t] = table[ids[t]], rows of dim. */
export function embeddingForwardRef(table: Values, ids: Values, dim: number): Float64Array {
  const out = new Float64Array(ids.length * dim);
  for (let t = 0; t < ids.length; t++)
    for (let i = 0; i < dim; i++) out[t * dim + i] = table[ids[t]! * dim + i]!;
  return out;
}

/** dtable (vocab × dim) with dtable[ids[t]] += dout[t]. */
export function embeddingBackwardRef(ids: Values, dout: Values, dim: number, vocab: number): Float64Array {
  const d = new Float64Array(vocab * dim);
  for (let t = 0; t < ids.length; t++)
    for (let i = 0; i < dim; i++) d[ids[t]! * dim + i]! += dout[t * dim + i]!;
  return d;
}

// ---------------------------------------------------------------------------------------------
// RMS norm
// ---------------------------------------------------------------------------------------------

/** out[t, i] = x[t, i]·w[i]·rstd[t], rstd[t] = 1/sqrt(mean_i x[t, i]² + eps). */
export function rmsNormForwardRef(
  x: Values,
  w: Values,
  dim: number,
  eps: number,
  n: number,
): { out: Float64Array; rstd: Float64Array } {
  const out = new Float64Array(n * dim);
  const rstd = new Float64Array(n);
  for (let t = 0; t < n; t++) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[t * dim + i]! ** 2;
    const r = 1 / Math.sqrt(ss / dim + eps);
    rstd[t] = r;
    for (let i = 0; i < dim; i++) out[t * dim + i] = x[t * dim + i]! * r * w[i]!;
  }
  return { out, rstd };
}

/**
 * Gradients of the norm. out_i = x_i·w_i·r with r = (Σx²/dim + eps)^−½, so ∂r/∂x_j = −r³x_j/dim:
 *   dx_j = r·dout_j·w_j − x_j·r³/dim · Σ_i dout_i·w_i·x_i        dw_i = Σ_t dout_i·x_i·r
 */
export function rmsNormBackwardRef(
  x: Values,
  w: Values,
  dout: Values,
  dim: number,
  eps: number,
  n: number,
): { dx: Float64Array; dw: Float64Array } {
  const dx = new Float64Array(n * dim);
  const dw = new Float64Array(dim);
  for (let t = 0; t < n; t++) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[t * dim + i]! ** 2;
    const r = 1 / Math.sqrt(ss / dim + eps);
    let dot = 0;
    for (let i = 0; i < dim; i++) dot += dout[t * dim + i]! * w[i]! * x[t * dim + i]!;
    for (let j = 0; j < dim; j++) {
      const xj = x[t * dim + j]!;
      dx[t * dim + j] = r * dout[t * dim + j]! * w[j]! - (xj * r ** 3 * dot) / dim;
      dw[j]! += dout[t * dim + j]! * xj * r;
    }
  }
  return { dx, dw };
}

// ---------------------------------------------------------------------------------------------
// Rotary position embedding, llama order, per-token positions
// ---------------------------------------------------------------------------------------------

/** The angle of pair i at position pos: pos·freqScale·freqBase^(−2i/ropeDim). */
export function ropeAngle(
  pos: number,
  i: number,
  ropeDim: number,
  freqBase: number,
  freqScale: number,
): number {
  return pos * freqScale * freqBase ** ((-2 * i) / ropeDim);
}

/**
 * x (n × nHeads·headDim) with each pair (x[2i], x[2i+1]), i < ropeDim/2, of token t turned by
 * the angle at positions[t] (by minus that angle when inverse). Returns a new array.
 */
export function ropeRotateRef(
  x: Values,
  positions: Values,
  nHeads: number,
  headDim: number,
  ropeDim: number,
  freqBase: number,
  freqScale: number,
  inverse: boolean,
): Float64Array {
  const out = Float64Array.from(x);
  const n = positions.length;
  for (let t = 0; t < n; t++) {
    for (let h = 0; h < nHeads; h++) {
      const base = (t * nHeads + h) * headDim;
      for (let i = 0; i < ropeDim / 2; i++) {
        const theta = (inverse ? -1 : 1) * ropeAngle(positions[t]!, i, ropeDim, freqBase, freqScale);
        const x0 = x[base + 2 * i]!;
        const x1 = x[base + 2 * i + 1]!;
        out[base + 2 * i] = x0 * Math.cos(theta) - x1 * Math.sin(theta);
        out[base + 2 * i + 1] = x0 * Math.sin(theta) + x1 * Math.cos(theta);
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

export interface AttentionShapeRef {
  n: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
}

/**
 * The first token of each token's segment, for n tokens whose segment ids are `segments` (a
 * segment is a run of equal ids; without ids all n tokens are one segment).
 */
export function segmentStarts(n: number, segments?: Values): Int32Array {
  const start = new Int32Array(n);
  for (let t = 1; t < n; t++) {
    const same = segments === undefined || segments[t] === segments[t - 1];
    start[t] = same ? start[t - 1]! : t;
  }
  return start;
}

/** Probabilities of query row (t, h) over its keys p in [segStart[t], t] (index p − segStart[t]). */
function attentionProbs(
  q: Values,
  k: Values,
  t: number,
  h: number,
  lo: number,
  s: AttentionShapeRef,
): Float64Array {
  const group = s.nHeads / s.nKvHeads;
  const kvRow = s.nKvHeads * s.headDim;
  const g = Math.floor(h / group);
  const scale = 1 / Math.sqrt(s.headDim);
  const len = t - lo + 1;
  const p = new Float64Array(len);
  let max = -Infinity;
  for (let j = 0; j < len; j++) {
    let dot = 0;
    for (let d = 0; d < s.headDim; d++) {
      dot += q[(t * s.nHeads + h) * s.headDim + d]! * k[(lo + j) * kvRow + g * s.headDim + d]!;
    }
    p[j] = dot * scale;
    max = Math.max(max, p[j]!);
  }
  let sum = 0;
  for (let j = 0; j < len; j++) {
    p[j] = Math.exp(p[j]! - max);
    sum += p[j]!;
  }
  for (let j = 0; j < len; j++) p[j]! /= sum;
  return p;
}

/** Causal grouped-query attention within segments: out and the log-sum-exp of each row's scores. */
export function attentionForwardRef(
  q: Values,
  k: Values,
  v: Values,
  segStart: Values,
  s: AttentionShapeRef,
): { out: Float64Array; lse: Float64Array } {
  const group = s.nHeads / s.nKvHeads;
  const kvRow = s.nKvHeads * s.headDim;
  const scale = 1 / Math.sqrt(s.headDim);
  const out = new Float64Array(s.n * s.nHeads * s.headDim);
  const lse = new Float64Array(s.n * s.nHeads);
  for (let t = 0; t < s.n; t++) {
    const lo = segStart[t]!;
    for (let h = 0; h < s.nHeads; h++) {
      const g = Math.floor(h / group);
      const p = attentionProbs(q, k, t, h, lo, s);
      for (let d = 0; d < s.headDim; d++) {
        let o = 0;
        for (let j = 0; j < p.length; j++) o += p[j]! * v[(lo + j) * kvRow + g * s.headDim + d]!;
        out[(t * s.nHeads + h) * s.headDim + d] = o;
      }
      let max = -Infinity;
      const scores: number[] = [];
      for (let j = 0; j < p.length; j++) {
        let dot = 0;
        for (let d = 0; d < s.headDim; d++) {
          dot += q[(t * s.nHeads + h) * s.headDim + d]! * k[(lo + j) * kvRow + g * s.headDim + d]!;
        }
        scores.push(dot * scale);
        max = Math.max(max, dot * scale);
      }
      lse[t * s.nHeads + h] = max + Math.log(scores.reduce((a, x) => a + Math.exp(x - max), 0));
    }
  }
  return { out, lse };
}

/**
 * Gradients of attention from the probabilities P (softmax of scaled scores S):
 *   dV_p += P_p·dout        dP_p = dout·v_p        dS_p = P_p·(dP_p − Σ_j P_j·dP_j)
 *   dq += dS_p·k_p/√d       dk_p += dS_p·q/√d
 */
export function attentionBackwardRef(
  q: Values,
  k: Values,
  v: Values,
  dout: Values,
  segStart: Values,
  s: AttentionShapeRef,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const group = s.nHeads / s.nKvHeads;
  const kvRow = s.nKvHeads * s.headDim;
  const hd = s.headDim;
  const scale = 1 / Math.sqrt(hd);
  const dq = new Float64Array(s.n * s.nHeads * hd);
  const dk = new Float64Array(s.n * kvRow);
  const dv = new Float64Array(s.n * kvRow);
  for (let t = 0; t < s.n; t++) {
    const lo = segStart[t]!;
    for (let h = 0; h < s.nHeads; h++) {
      const g = Math.floor(h / group);
      const P = attentionProbs(q, k, t, h, lo, s);
      const qo = (t * s.nHeads + h) * hd;
      const dP = new Float64Array(P.length);
      let mean = 0;
      for (let j = 0; j < P.length; j++) {
        const vo = (lo + j) * kvRow + g * hd;
        for (let d = 0; d < hd; d++) {
          dv[vo + d]! += P[j]! * dout[qo + d]!;
          dP[j]! += dout[qo + d]! * v[vo + d]!;
        }
        mean += P[j]! * dP[j]!;
      }
      for (let j = 0; j < P.length; j++) {
        const dS = P[j]! * (dP[j]! - mean);
        const ko = (lo + j) * kvRow + g * hd;
        for (let d = 0; d < hd; d++) {
          dq[qo + d]! += dS * k[ko + d]! * scale;
          dk[ko + d]! += dS * q[qo + d]! * scale;
        }
      }
    }
  }
  return { dq, dk, dv };
}

// ---------------------------------------------------------------------------------------------
// SwiGLU
// ---------------------------------------------------------------------------------------------

/** out = silu(gate)·up. */
export function swigluForwardRef(gate: Values, up: Values): Float64Array {
  const out = new Float64Array(gate.length);
  for (let i = 0; i < gate.length; i++) out[i] = (gate[i]! * up[i]!) / (1 + Math.exp(-gate[i]!));
  return out;
}

/** dup = dout·silu(g); dgate = dout·up·silu'(g), silu'(g) = σ(g)·(1 + g·(1 − σ(g))). */
export function swigluBackwardRef(
  gate: Values,
  up: Values,
  dout: Values,
): { dgate: Float64Array; dup: Float64Array } {
  const dgate = new Float64Array(gate.length);
  const dup = new Float64Array(gate.length);
  for (let i = 0; i < gate.length; i++) {
    const g = gate[i]!;
    const s = 1 / (1 + Math.exp(-g));
    dup[i] = dout[i]! * g * s;
    dgate[i] = dout[i]! * up[i]! * s * (1 + g * (1 - s));
  }
  return { dgate, dup };
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy
// ---------------------------------------------------------------------------------------------

/**
 * losses[t] = logsumexp(logits[t]) − logits[t, target[t]] (0 where target < 0), and
 * dlogits = dscale·(softmax − onehot) (zero rows where target < 0).
 */
export function crossEntropyRef(
  logits: Values,
  targets: Values,
  vocab: number,
  dscale: number,
): { losses: Float64Array; dlogits: Float64Array } {
  const n = targets.length;
  const losses = new Float64Array(n);
  const dlogits = new Float64Array(n * vocab);
  for (let t = 0; t < n; t++) {
    const target = targets[t]!;
    if (target < 0) continue;
    let max = -Infinity;
    for (let i = 0; i < vocab; i++) max = Math.max(max, logits[t * vocab + i]!);
    let sum = 0;
    for (let i = 0; i < vocab; i++) sum += Math.exp(logits[t * vocab + i]! - max);
    losses[t] = max + Math.log(sum) - logits[t * vocab + target]!;
    for (let i = 0; i < vocab; i++) {
      dlogits[t * vocab + i] =
        (dscale * Math.exp(logits[t * vocab + i]! - max)) / sum - (i === target ? dscale : 0);
    }
  }
  return { losses, dlogits };
}

// ---------------------------------------------------------------------------------------------
// Optimizer
// ---------------------------------------------------------------------------------------------

export interface AdamWStepRef {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  gradScale: number;
  /** 1-based step count for the bias corrections. */
  step: number;
}

/** One AdamW update in place on param, m, v (decoupled weight decay, bias-corrected moments). */
export function adamwRef(
  param: Float64Array,
  grad: Values,
  m: Float64Array,
  v: Float64Array,
  h: AdamWStepRef,
): void {
  const bc1 = 1 / (1 - h.beta1 ** h.step);
  const bc2 = 1 / (1 - h.beta2 ** h.step);
  for (let i = 0; i < param.length; i++) {
    const g = grad[i]! * h.gradScale;
    m[i] = h.beta1 * m[i]! + (1 - h.beta1) * g;
    v[i] = h.beta2 * v[i]! + (1 - h.beta2) * g * g;
    param[i] =
      param[i]! - h.lr * ((m[i]! * bc1) / (Math.sqrt(v[i]! * bc2) + h.eps) + h.weightDecay * param[i]!);
  }
}

/** Σ x². */
export function sumSquaresRef(x: Values): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i]! ** 2;
  return s;
}

// ---------------------------------------------------------------------------------------------
// A whole Llama forward pass and its loss
// ---------------------------------------------------------------------------------------------

/** The shape fields of a Llama config the reference model reads. */
export interface LlamaShapeRef {
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffn: number;
  vocab: number;
  normEps: number;
  rope: { dim: number; freqBase: number; freqScale: number };
}

/**
 * The mean next-token loss of a Llama over n tokens (targets −1 excluded), in float64, built from
 * the references above. `weights` maps GGUF tensor names to values (output.weight missing: the
 * head reuses token_embd.weight). segStart gives each token's first visible token.
 */
export function llamaLossRef(
  c: LlamaShapeRef,
  weights: Map<string, Values>,
  batch: { tokens: Values; targets: Values; positions: Values; segStart: Values },
): number {
  const n = batch.tokens.length;
  const w = (name: string) => {
    const v = weights.get(name);
    if (!v) throw new Error(`llamaLossRef: no ${name}`);
    return v;
  };
  const q = c.heads * c.headDim;
  const kv = c.kvHeads * c.headDim;
  const shape = { n, nHeads: c.heads, nKvHeads: c.kvHeads, headDim: c.headDim };
  const rope = (x: Values, heads: number) =>
    ropeRotateRef(x, batch.positions, heads, c.headDim, c.rope.dim, c.rope.freqBase, c.rope.freqScale, false);
  let x = embeddingForwardRef(w("token_embd.weight"), batch.tokens, c.dim);
  for (let l = 0; l < c.layers; l++) {
    const p = `blk.${l}.`;
    const xn = rmsNormForwardRef(x, w(`${p}attn_norm.weight`), c.dim, c.normEps, n).out;
    const qs = rope(linearRef(xn, w(`${p}attn_q.weight`), q, c.dim, n), c.heads);
    const ks = rope(linearRef(xn, w(`${p}attn_k.weight`), kv, c.dim, n), c.kvHeads);
    const vs = linearRef(xn, w(`${p}attn_v.weight`), kv, c.dim, n);
    const att = attentionForwardRef(qs, ks, vs, batch.segStart, shape).out;
    const o = linearRef(att, w(`${p}attn_output.weight`), c.dim, q, n);
    const xmid = x.map((v, i) => v + o[i]!);
    const xn2 = rmsNormForwardRef(xmid, w(`${p}ffn_norm.weight`), c.dim, c.normEps, n).out;
    const h = swigluForwardRef(
      linearRef(xn2, w(`${p}ffn_gate.weight`), c.ffn, c.dim, n),
      linearRef(xn2, w(`${p}ffn_up.weight`), c.ffn, c.dim, n),
    );
    const d = linearRef(h, w(`${p}ffn_down.weight`), c.dim, c.ffn, n);
    x = xmid.map((v, i) => v + d[i]!);
  }
  const xf = rmsNormForwardRef(x, w("output_norm.weight"), c.dim, c.normEps, n).out;
  const head = weights.get("output.weight") ?? w("token_embd.weight");
  const logits = linearRef(xf, head, c.vocab, c.dim, n);
  const { losses } = crossEntropyRef(logits, batch.targets, c.vocab, 1);
  let sum = 0;
  let count = 0;
  for (let t = 0; t < n; t++) {
    if (batch.targets[t]! < 0) continue;
    sum += losses[t]!;
    count++;
  }
  return sum / count;
}
