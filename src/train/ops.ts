import { ACTIVATION_FORMAT, BLOCK, type Weight } from "../runtime/backend.js";
import type { Runtime } from "../runtime/runtime.js";
import { ropeAngle } from "./reference.js";

/**
 * Cos and sin tables for ropeRotate: maxPos rows of ropeDim floats, pair i of position p as
 * (cos θ, cos θ) and (−sin θ, sin θ) with θ = p·freqScale·freqBase^(−2i/ropeDim), so that a
 * rotation of the pair (x0, x1) is (x0, x1)·C + (x1, x0)·S.
 */
export function ropeTables(
  maxPos: number,
  ropeDim: number,
  freqBase: number,
  freqScale: number,
): { cos: Float32Array; sin: Float32Array } {
  const cos = new Float32Array(maxPos * ropeDim);
  const sin = new Float32Array(maxPos * ropeDim);
  for (let p = 0; p < maxPos; p++) {
    for (let i = 0; i < ropeDim / 2; i++) {
      const theta = ropeAngle(p, i, ropeDim, freqBase, freqScale);
      const c = Math.cos(theta);
      const s = Math.sin(theta);
      const o = p * ropeDim + 2 * i;
      cos[o] = c;
      cos[o + 1] = c;
      sin[o] = -s;
      sin[o + 1] = s;
    }
  }
  return { cos, sin };
}

/** Elements per block of the sumSquares kernel. */
export const SUM_SQUARES_BLOCK = 4096;

/** Geometry of attention over a batch of n tokens. */
export interface AttentionGeometry {
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  /** i32 per token: first token of its segment. */
  segStart: number;
  /** i32 per token: one past the last token of its segment. */
  segEnd: number;
  /** Per-thread scratch: threads × scratchStride bytes. */
  scratch: number;
  /** Bytes per thread: four rows of the longest segment. */
  scratchStride: number;
}

/** Shape and input scaling of one LoRA-adapted matrix (out × in) for the LoRA kernels. */
export interface LoraGeometry {
  inF: number;
  outF: number;
  rank: number;
  /** (alpha / rank) / (1 − dropout). */
  scale: number;
  /** Dropout: p·2³² (0 = keep every input). */
  threshold: number;
  seed: number;
}

/**
 * Records the training kernels on one memory shard of a Runtime. Every method takes byte
 * offsets into that shard and records work; `flush` runs it. Each op ends in a barrier, so later
 * ops see earlier results.
 */
export class TrainOps {
  constructor(
    readonly rt: Runtime,
    readonly shard = 0,
  ) {}

  private op(kernel: string, rows: number, args: number[], align = 1): void {
    if (rows > 0) this.rt.op(kernel, this.shard, rows, args, align);
  }

  flush(): void {
    this.rt.flush();
  }

  fillZero(x: number, length: number): void {
    this.op("fillZero", length, [x], 1024);
  }

  copy(dst: number, src: number, bytes: number): void {
    if (bytes > 0) this.rt.copy(this.shard, dst, this.shard, src, bytes);
  }

  /** dst (cols × ld) = srcᵀ for src rows × cols, zero-padded from rows to ld. */
  transpose(src: number, dst: number, rows: number, cols: number, ld: number): void {
    this.op("transpose", cols, [src, dst, rows, cols, ld], 4);
  }

  /**
   * out (n × w.rows) (+)= x (n × w.cols) · Wᵀ for a weight in any format; quantized formats
   * quantize x into `xq` first (activationBytes(ACTIVATION_FORMAT[format], cols, n) bytes).
   */
  matmul(w: Weight, x: number, n: number, out: number, acc: boolean, xq = 0): void {
    const a = ACTIVATION_FORMAT[w.format];
    let input = x;
    if (a) {
      if (!xq) throw new Error(`matmul: a ${w.format} weight needs activation scratch`);
      this.op(`quantize${a}`, n, [x, xq, w.cols, n]);
      input = xq;
    }
    this.op(`matmul${w.format}`, w.rows, [w.offset, input, out, w.rows, w.cols, n, acc ? 1 : 0], 4);
  }

  /** dst (rows × cols f32) = the weight decoded to f32. */
  dequantize(w: Weight, dst: number): void {
    if (w.format === "F32") {
      this.copy(dst, w.offset, w.rows * w.cols * 4);
      return;
    }
    const blocks = (w.rows * w.cols) / BLOCK[w.format].size;
    this.op(`dequantize${w.format}`, blocks, [w.offset, dst, blocks], 64);
  }

  embeddingForward(table: number, ids: number, out: number, dim: number, n: number): void {
    this.op("embeddingForward", n, [table, ids, out, dim]);
  }

  embeddingBackward(dtable: number, ids: number, dout: number, dim: number, n: number, vocab: number): void {
    this.op("embeddingBackward", vocab, [dtable, ids, dout, dim, n]);
  }

  rmsNormForward(x: number, w: number, out: number, rstd: number, dim: number, eps: number, n: number): void {
    this.op("rmsNormForward", n, [x, w, out, rstd, dim, eps]);
  }

  rmsNormBackward(
    x: number,
    w: number,
    rstd: number,
    dout: number,
    dx: number,
    dim: number,
    n: number,
    acc: boolean,
  ): void {
    this.op("rmsNormBackward", n, [x, w, rstd, dout, dx, dim, acc ? 1 : 0]);
  }

  rmsNormBackwardWeight(x: number, rstd: number, dout: number, dw: number, dim: number, n: number): void {
    this.op("rmsNormBackwardWeight", dim, [x, rstd, dout, dw, dim, n], 4);
  }

  ropeRotate(
    x: number,
    positions: number,
    cos: number,
    sin: number,
    n: number,
    nHeads: number,
    headDim: number,
    ropeDim: number,
    inverse: boolean,
  ): void {
    this.op("ropeRotate", n * nHeads, [x, positions, cos, sin, nHeads, headDim, ropeDim, inverse ? 1 : 0]);
  }

  attentionForward(
    q: number,
    k: number,
    v: number,
    out: number,
    lse: number,
    n: number,
    g: AttentionGeometry,
  ) {
    this.op("attentionForward", n * g.nHeads, [
      q,
      k,
      v,
      out,
      lse,
      g.segStart,
      g.nHeads,
      g.nKvHeads,
      g.headDim,
      g.scratch,
      g.scratchStride,
    ]);
  }

  /** dq, dk, dv of attention (delta: n·nHeads floats of scratch). */
  attentionBackward(
    a: { q: number; k: number; v: number; out: number; dout: number; lse: number; delta: number },
    d: { dq: number; dk: number; dv: number },
    n: number,
    g: AttentionGeometry,
  ): void {
    const shape = [g.nHeads, g.nKvHeads, g.headDim, g.scratch, g.scratchStride];
    this.op("attentionBackwardQuery", n * g.nHeads, [
      a.q,
      a.k,
      a.v,
      a.out,
      a.dout,
      a.lse,
      g.segStart,
      d.dq,
      a.delta,
      ...shape,
    ]);
    this.op("attentionBackwardKeyValue", n * g.nKvHeads, [
      a.q,
      a.k,
      a.v,
      a.dout,
      a.lse,
      a.delta,
      g.segEnd,
      d.dk,
      d.dv,
      ...shape,
    ]);
  }

  swigluForward(gate: number, up: number, out: number, length: number): void {
    this.op("siluMul", length, [gate, up, out], 1024);
  }

  swigluBackward(gate: number, up: number, dout: number, dgate: number, dup: number, length: number): void {
    this.op("swigluBackward", length, [gate, up, dout, dgate, dup], 1024);
  }

  /** Losses and dlogits (in place) of n rows of logits, `stride` floats apart. */
  crossEntropy(
    logits: number,
    targets: number,
    losses: number,
    vocab: number,
    stride: number,
    dscale: number,
    n: number,
  ): void {
    this.op("crossEntropy", n, [logits, targets, losses, vocab, stride, dscale]);
  }

  adamw(
    p: { param: number; grad: number; m: number; v: number; length: number },
    h: {
      lr: number;
      beta1: number;
      beta2: number;
      eps: number;
      weightDecay: number;
      gradScale: number;
      bc1: number;
      bc2: number;
    },
  ): void {
    this.op(
      "adamw",
      p.length,
      [p.param, p.grad, p.m, p.v, h.lr, h.beta1, h.beta2, h.eps, h.weightDecay, h.gradScale, h.bc1, h.bc2],
      1024,
    );
  }

  /**
   * LoRA forward of an adapted matrix (see assembly/lora.ts): u = (keep ∘ x · scale)·Aᵀ and, with
   * writeOut, out += u·Bᵀ. scratch: threads × stride bytes (a masked input row each).
   */
  loraForward(
    t: { x: number; a: number; b: number; u: number; out: number },
    g: LoraGeometry,
    n: number,
    writeOut: boolean,
    scratch: number,
    stride: number,
  ): void {
    this.op("loraForward", n, [
      t.x,
      t.a,
      t.b,
      t.u,
      t.out,
      g.inF,
      g.outF,
      g.rank,
      g.scale,
      g.threshold,
      g.seed,
      writeOut ? 1 : 0,
      scratch,
      stride,
    ]);
  }

  /** LoRA's gradients: dB += dyᵀ·u; du = dy·B; dx += keep ∘ (du·A)·scale (when dx); dA += duᵀ·(keep ∘ x·scale). */
  loraBackward(
    t: {
      x: number;
      dy: number;
      a: number;
      b: number;
      u: number;
      du: number;
      dx: number;
      da: number;
      db: number;
    },
    g: LoraGeometry,
    n: number,
  ): void {
    this.op("loraBackwardB", g.outF, [t.dy, t.u, t.db, n, g.outF, g.rank], 4);
    this.op("loraBackwardInput", n, [
      t.dy,
      t.a,
      t.b,
      t.du,
      t.dx,
      g.inF,
      g.outF,
      g.rank,
      g.scale,
      g.threshold,
      g.seed,
    ]);
    this.op("loraBackwardA", g.inF, [t.x, t.du, t.da, n, g.inF, g.rank, g.scale, g.threshold, g.seed], 4);
  }

  /** out[b] (f64) = Σ x² over blocks of SUM_SQUARES_BLOCK elements. */
  sumSquares(x: number, length: number, out: number): void {
    this.op("sumSquares", Math.ceil(length / SUM_SQUARES_BLOCK), [x, length, out]);
  }
}
