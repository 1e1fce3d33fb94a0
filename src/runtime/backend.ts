import {
  formatRow,
  ggmlTypeRow,
  RUNNABLE_TYPES,
  VEC_DOT_TYPE,
  type VecDotFormat,
  type WeightFormat,
} from "./ggml-type-table.js";
import { kernelVariant, type Runtime } from "./runtime.js";

/** A region of f32 activations (or scratch bytes) in one memory shard. */
export interface Buf {
  shard: number;
  offset: number;
}

/** A weight matrix in ggml layout: `rows` output features × `cols` input features, in `kernel`'s format. */
export interface Weight {
  shard: number;
  offset: number;
  /** Kernel suffix of the weight format (the `format` column of the type table). */
  format: WeightFormat;
  rows: number;
  cols: number;
  /**
   * Stored in one of the backend's own layouts (see Backend.prepareWeight), not row after row:
   * x4 = four rows' blocks in turn, r4 = rows in vector lanes (the relaxed kernels).
   */
  layout?: WeightLayout;
}

export type WeightLayout = "x4" | "r4";

export type { WeightFormat };

/** The 8-bit activation format each weight format's dot product consumes (none for float weights). */
export const ACTIVATION_FORMAT = Object.fromEntries(
  RUNNABLE_TYPES.map((r) => [r.format, r.activation]),
) as Record<WeightFormat, VecDotFormat | null>;

/** Activation formats: ggml's, and Q8_0S (f32 scale, i32 8·Σq, 32 × i8), which the r4 Q4_0 product reads. */
export type ActivationFormat = VecDotFormat | "Q8_0S";

/** The activation format a prepared weight's product reads (its r4 layout may want another). */
export function activationFormat(w: Weight): ActivationFormat | null {
  if (w.layout === "r4") return formatRow(w.format).r4!.activation as ActivationFormat;
  return ACTIVATION_FORMAT[w.format];
}

/** Block geometry of each weight and activation format: elements per block and bytes per block. */
export const BLOCK = Object.fromEntries([
  ...RUNNABLE_TYPES.map((r) => [r.format, { size: r.blockSize, bytes: r.typeSize }]),
  ...Object.entries(VEC_DOT_TYPE).map(([a, type]) => {
    const r = ggmlTypeRow(type)!;
    return [a, { size: r.blockSize, bytes: r.typeSize }];
  }),
  ["Q8_0S", { size: 32, bytes: 40 }],
]) as Record<WeightFormat | ActivationFormat, { size: number; bytes: number }>;

/** Bytes of `n` rows of `cols` activations in format `a` (0 for float weights). */
export function activationBytes(a: ActivationFormat | null, cols: number, n: number): number {
  if (!a) return 0;
  const b = BLOCK[a];
  return (cols / b.size) * b.bytes * n;
}

export function rowBytes(format: WeightFormat, cols: number): number {
  const b = BLOCK[format];
  return (cols / b.size) * b.bytes;
}

export interface MatmulTarget {
  w: Weight;
  out: Buf;
  /** Add into `out` instead of overwriting it. */
  acc?: boolean;
}

/**
 * The narrow set of ops model code runs. Every call records work; `flush` executes it. Calls made
 * inside `phase` run concurrently (they must not depend on each other); other calls run in order.
 * A second implementation (a native addon, WebGPU) implements this interface without touching
 * the model code.
 */
export interface Backend {
  readonly threads: number;
  /**
   * out[t] (+)= W · x[t] for each target, all reading the same `n` rows of `cols` inputs.
   * `perToken`: every token's outputs are bit-identical to a call with that token alone (batched
   * decoding of independent sequences needs this; the default may group tokens differently).
   */
  matmul(x: Buf, n: number, cols: number, targets: MatmulTarget[], xq: Buf, perToken?: boolean): void;
  /**
   * Rewrites a matrix weight in place into the layout the backend's products read fastest and
   * returns the weight to use from then on (the same one when there is nothing to gain). Runs at
   * once; `scratch`, in w's shard, holds four of w's rows per thread.
   */
  prepareWeight(w: Weight, scratch: Buf): Weight;
  rmsNorm(out: Buf, x: Buf, weight: Buf, n: number, dim: number, eps: number): void;
  /** out = (x - mean) / sqrt(var + eps) · weight (+ bias) per token (GPT-2's LayerNorm). */
  layerNorm(out: Buf, x: Buf, weight: Buf, bias: Buf | undefined, n: number, dim: number, eps: number): void;
  /**
   * Rotates `n` tokens of `nHeads` heads in place; token t is at position pos0 + t. `factors`, in
   * x's shard, holds rope.dim/2 f32 divisors of the pair angles (a model's rope_freqs).
   */
  rope(
    x: Buf,
    n: number,
    nHeads: number,
    headDim: number,
    rope: RopeParams,
    pos0: number,
    factors?: Buf,
  ): void;
  /** Causal attention of `n` queries at positions pos0.. over the cache rows 0..pos0+n-1. */
  attention(
    out: Buf,
    q: Buf,
    k: Buf,
    v: Buf,
    n: number,
    pos0: number,
    shape: AttentionShape,
    scratch: Buf,
  ): void;
  /**
   * One pass over tokens of several sequences, each with its own KV cache, described by a token
   * table (TOKEN_ENTRY_BYTES per token: pos, kRow, vRow, k, v as u32; see src/kernels/README.md).
   * Each gives a token the bits the one-sequence op gives it alone.
   * ropeAt: rope with token t at position table[t].pos.
   */
  ropeAt(
    x: Buf,
    n: number,
    nHeads: number,
    headDim: number,
    rope: RopeParams,
    table: Buf,
    factors?: Buf,
  ): void;
  /** Copies `n` new key and value rows of `rowBytes` to the cache rows table[t].kRow and .vRow. */
  storeKvAt(k: Buf, v: Buf, n: number, rowBytes: number, table: Buf): void;
  /** Attention of `n` queries; token t attends to positions 0..table[t].pos of its own caches. */
  attentionAt(out: Buf, q: Buf, n: number, table: Buf, shape: AttentionShape, scratch: Buf): void;
  siluMul(out: Buf, gate: Buf, up: Buf, length: number): void;
  /** out = gelu(x) elementwise; `table` (GELU_TABLE_BYTES, in x's shard) holds geluTableRef(). */
  gelu(out: Buf, x: Buf, length: number, table: Buf): void;
  /** out = gelu(gate) · up elementwise (GeGLU), with the same table. */
  geluMul(out: Buf, gate: Buf, up: Buf, length: number, table: Buf): void;
  /** out = x · s elementwise. */
  scale(out: Buf, x: Buf, s: number, length: number): void;
  /** x = min(max(x, -limit), limit) elementwise, in place. */
  clamp(x: Buf, limit: number, length: number): void;
  add(out: Buf, a: Buf, b: Buf, length: number): void;
  /** Copies rows `ids` of an embedding table into consecutive f32 rows of `out`. */
  getRows(out: Buf, table: Weight, ids: ArrayLike<number>): void;
  copy(dst: Buf, src: Buf, bytes: number): void;
  phase(record: () => void): void;
  flush(): void;
}

/** Bytes of the GELU lookup table: one f16 result per f16 input. */
export const GELU_TABLE_BYTES = 2 << 16;

/** Bytes of one token table entry (ropeAt, storeKvAt, attentionAt). */
export const TOKEN_ENTRY_BYTES = 20;

export interface RopeParams {
  dim: number;
  freqBase: number;
  freqScale: number;
  neox: boolean;
}

export interface AttentionShape {
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  /** ALiBi's maximum bias (MPT); 0 or absent: no ALiBi. */
  maxAlibiBias?: number;
  /** Floats of score scratch per thread (at least the context length). */
  scratchStride: number;
}

/** The largest activation scratch a matmul of n tokens of `cols` inputs may need, whatever its weights. */
export function activationScratchBytes(cols: number, n: number): number {
  // each format at most once (a file may mix weight formats within one product's targets)
  const all: ActivationFormat[] = ["Q8_0", "Q8_1", "Q8_K", "Q8_0S"];
  return all.reduce((sum, a) => sum + activationBytes(a, cols, n), 0);
}

/** The WebAssembly SIMD128 backend: kernels from build/kernels.wasm on the runtime's thread pool. */
export class WasmBackend implements Backend {
  readonly threads: number;
  private grouped = false;
  /** Formats with an r4 layout take it: only the relaxed module has its 8-bit dot product. */
  private readonly rowLanes: boolean;

  constructor(readonly rt: Runtime) {
    this.threads = rt.threads;
    this.rowLanes = kernelVariant() === "relaxed";
  }

  private op(kernel: string, shard: number, rows: number, args: number[], align = 1) {
    this.rt.op(kernel, shard, rows, args, align, !this.grouped);
  }

  phase(record: () => void): void {
    const was = this.grouped;
    this.grouped = true;
    try {
      record();
    } finally {
      this.grouped = was;
    }
    if (!was) this.rt.barrier();
  }

  matmul(x: Buf, n: number, cols: number, targets: MatmulTarget[], xq: Buf, _perToken = false): void {
    // Quantize the input once per activation format the targets need, then run all products.
    const formats = new Map<string, number>();
    let xqTop = xq.offset;
    this.phase(() => {
      for (const { w } of targets) {
        const a = activationFormat(w);
        if (!a || formats.has(a)) continue;
        formats.set(a, xqTop);
        this.op(`quantize${a}`, x.shard, n, [x.offset, xqTop, cols, n]);
        xqTop += activationBytes(a, cols, n);
      }
    });
    this.phase(() => {
      for (const { w, out, acc } of targets) {
        if (w.cols !== cols) throw new Error(`matmul: weight has ${w.cols} columns, input ${cols}`);
        const a = activationFormat(w);
        const input = a ? formats.get(a)! : x.offset;
        // Every kernel here computes each token's outputs as that token alone would get them,
        // so `perToken` needs nothing special.
        this.op(
          `matmul${w.format}${w.layout ?? ""}`,
          w.shard,
          w.rows,
          [w.offset, input, out.offset, w.rows, cols, n, acc ? 1 : 0],
          4,
        );
      }
    });
  }

  /**
   * The block formats go into the interleaved layout x4 (four rows' blocks in turn): a
   * product then reads its four rows as one sequential stream, which decoding, bound by how fast
   * weights come from memory, reads about twice as fast. With the relaxed module, Q4_0 and the K-quants go
   * further, into r4: each block's nibbles transposed so that vector lanes are rows, which leaves
   * their products no sums to reduce across lanes (src/kernels/README.md). Needs rows % 4 == 0.
   */
  prepareWeight(w: Weight, scratch: Buf): Weight {
    const row = formatRow(w.format);
    if (w.layout || !row.x4 || w.rows % 4 !== 0) return w;
    if (scratch.shard !== w.shard) throw new Error("prepareWeight: scratch must be in the weight's shard");
    const rb = rowBytes(w.format, w.cols);
    const r4 = this.rowLanes ? row.r4 : undefined;
    if (r4?.from === "rows") {
      this.op(`repack${w.format}r4`, w.shard, w.rows / 4, [w.offset, w.cols, scratch.offset, 4 * rb]);
      this.flush();
      return { ...w, layout: "r4" };
    }
    this.op("interleaveRows4", w.shard, w.rows / 4, [
      w.offset,
      rb,
      BLOCK[w.format].bytes,
      scratch.offset,
      4 * rb,
    ]);
    if (r4?.from === "x4") {
      this.op(`repack${w.format}r4`, w.shard, w.rows / 4, [w.offset, w.cols]);
      this.flush();
      return { ...w, layout: "r4" };
    }
    this.flush();
    return { ...w, layout: "x4" };
  }

  rmsNorm(out: Buf, x: Buf, weight: Buf, n: number, dim: number, eps: number): void {
    this.op("rmsNorm", x.shard, n, [x.offset, weight.offset, out.offset, dim, eps]);
  }

  layerNorm(out: Buf, x: Buf, weight: Buf, bias: Buf | undefined, n: number, dim: number, eps: number): void {
    this.op("layerNorm", x.shard, n, [x.offset, weight.offset, bias?.offset ?? 0, out.offset, dim, eps]);
  }

  rope(
    x: Buf,
    n: number,
    nHeads: number,
    headDim: number,
    rope: RopeParams,
    pos0: number,
    factors?: Buf,
  ): void {
    this.op("rope", x.shard, n * nHeads, [
      x.offset,
      nHeads,
      headDim,
      rope.dim,
      pos0,
      rope.freqBase,
      rope.freqScale,
      rope.neox ? 1 : 0,
      factors?.offset ?? 0,
    ]);
  }

  attention(
    out: Buf,
    q: Buf,
    k: Buf,
    v: Buf,
    n: number,
    pos0: number,
    s: AttentionShape,
    scratch: Buf,
  ): void {
    this.op("attention", q.shard, n * s.nHeads, [
      q.offset,
      k.offset,
      v.offset,
      out.offset,
      n,
      pos0,
      s.nHeads,
      s.nKvHeads,
      s.headDim,
      scratch.offset,
      s.scratchStride * 4,
      s.maxAlibiBias ?? 0,
    ]);
  }

  ropeAt(
    x: Buf,
    n: number,
    nHeads: number,
    headDim: number,
    rope: RopeParams,
    table: Buf,
    factors?: Buf,
  ): void {
    this.op("ropeAt", x.shard, n * nHeads, [
      x.offset,
      nHeads,
      headDim,
      rope.dim,
      table.offset,
      rope.freqBase,
      rope.freqScale,
      rope.neox ? 1 : 0,
      factors?.offset ?? 0,
    ]);
  }

  storeKvAt(k: Buf, v: Buf, n: number, rowBytes: number, table: Buf): void {
    this.op("storeKvAt", k.shard, n, [k.offset, v.offset, table.offset, rowBytes]);
  }

  attentionAt(out: Buf, q: Buf, n: number, table: Buf, s: AttentionShape, scratch: Buf): void {
    this.op("attentionAt", q.shard, n * s.nHeads, [
      q.offset,
      table.offset,
      out.offset,
      s.nHeads,
      s.nKvHeads,
      s.headDim,
      scratch.offset,
      s.scratchStride * 4,
      s.maxAlibiBias ?? 0,
    ]);
  }

  siluMul(out: Buf, gate: Buf, up: Buf, length: number): void {
    this.op("siluMul", out.shard, length, [gate.offset, up.offset, out.offset], 1024);
  }

  gelu(out: Buf, x: Buf, length: number, table: Buf): void {
    this.op("gelu", out.shard, length, [x.offset, out.offset, table.offset], 1024);
  }

  geluMul(out: Buf, gate: Buf, up: Buf, length: number, table: Buf): void {
    this.op("geluMul", out.shard, length, [gate.offset, up.offset, out.offset, table.offset], 1024);
  }

  scale(out: Buf, x: Buf, s: number, length: number): void {
    this.op("scale", out.shard, length, [x.offset, out.offset, s], 1024);
  }

  clamp(x: Buf, limit: number, length: number): void {
    this.op("clamp", x.shard, length, [x.offset, limit], 1024);
  }

  add(out: Buf, a: Buf, b: Buf, length: number): void {
    this.op("add", out.shard, length, [a.offset, b.offset, out.offset], 1024);
  }

  getRows(out: Buf, table: Weight, ids: ArrayLike<number>): void {
    const bytes = rowBytes(table.format, table.cols);
    this.phase(() => {
      for (let t = 0; t < ids.length; t++) {
        const src = table.offset + ids[t]! * bytes;
        const dst = out.offset + t * table.cols * 4;
        if (table.format === "F32") {
          this.rt.copy(out.shard, dst, table.shard, src, bytes, false);
        } else {
          const blocks = table.cols / BLOCK[table.format].size;
          this.op(`dequantize${table.format}`, table.shard, blocks, [src, dst, blocks], 64);
        }
      }
    });
  }

  copy(dst: Buf, src: Buf, bytes: number): void {
    this.rt.copy(dst.shard, dst.offset, src.shard, src.offset, bytes, !this.grouped);
  }

  flush(): void {
    this.rt.flush();
  }
}
