import { closeSync, openSync } from "node:fs";
import { UserError } from "../errors.js";
import { GGMLType, ggmlTypeName } from "../formats/ggml-types.js";
import { type GgufHeader, type GgufTensorInfo, readGgufHeader, readTensorInto } from "../formats/gguf.js";
import {
  type AttentionShape,
  activationScratchBytes,
  type Backend,
  type Buf,
  rowBytes,
  TOKEN_ENTRY_BYTES,
  WasmBackend,
  type Weight,
} from "../runtime/backend.js";
import { formatOfGgmlType } from "../runtime/ggml-type-table.js";
import { MAX_SHARD_BYTES, Runtime, SHARD_BASE } from "../runtime/runtime.js";
import { type LlamaConfig, llamaConfigFromMetadata, metadataGetter } from "./config.js";
import { type LoraAdapter, type LoraTensor, loraScale, readLoraGguf } from "./lora.js";

export interface LlamaLoadOptions {
  /** Compute threads, the calling thread included; default: all cores. */
  threads?: number;
  /** KV cache length in tokens; default: the model's context length, at most 4096. */
  contextSize?: number;
  /** Independent sequences with their own KV cache (for serving several clients). Default 1. */
  sequences?: number;
  /** Most tokens evaluated in one forward pass (prefill chunk). Default 128. */
  batchSize?: number;
  /** Keep logits for every token of a batch, not only the last (for evaluation). */
  logitsAll?: boolean;
  /** Largest memory shard in bytes (wasm32 stops at 4 GiB); smaller values spread layers wider. */
  maxShardBytes?: number;
  /**
   * LoRA adapters applied at run time, without merging: each adds scale · alpha/rank · B·A to the
   * projections it adapts. A path is read as a GGUF LoRA adapter.
   */
  lora?: { adapter: LoraAdapter | string; scale?: number }[];
  /** Called as the weights are read, with the fraction read so far (0 to 1; 1 once loaded). */
  onLoadProgress?: (fraction: number) => void;
}

/** The seven projections of a layer, in GGUF names. */
const PROJECTIONS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"] as const;
type Projection = (typeof PROJECTIONS)[number];

/** A run-time low-rank update of one projection: out += B·(A·x), the scale folded into B. */
interface LoraWeights {
  a: Weight;
  b: Weight;
}

/**
 * Stacks the adapters of one projection into a single pair: A rows and B columns concatenated,
 * each adapter's scale folded into its B columns, the rank padded with zeros to a multiple of 4
 * (the f32 kernels' row granule). Returns undefined when no adapter touches the projection.
 */
function stackLora(
  parts: { t: LoraTensor; scale: number }[],
): { rank: number; a: Float32Array; b: Float32Array; inFeatures: number; outFeatures: number } | undefined {
  if (parts.length === 0) return undefined;
  const { inFeatures, outFeatures } = parts[0].t;
  const used = parts.reduce((s, p) => s + p.t.rank, 0);
  const rank = Math.ceil(used / 4) * 4;
  const a = new Float32Array(rank * inFeatures);
  const b = new Float32Array(outFeatures * rank);
  let r0 = 0;
  for (const { t, scale } of parts) {
    a.set(t.a, r0 * inFeatures);
    for (let o = 0; o < outFeatures; o++) {
      for (let r = 0; r < t.rank; r++) b[o * rank + r0 + r] = scale * t.b[o * t.rank + r];
    }
    r0 += t.rank;
  }
  return { rank, a, b, inFeatures, outFeatures };
}

interface LayerWeights {
  shard: number;
  attnNorm: Buf;
  wq: Weight;
  wk: Weight;
  wv: Weight;
  wo: Weight;
  ffnNorm: Buf;
  gate: Weight;
  up: Weight;
  down: Weight;
  /** K and V caches, one per sequence: contextSize rows of kvHeads·headDim floats. */
  k: Buf[];
  v: Buf[];
  /** Token table of a pass over several sequences (TOKEN_ENTRY_BYTES per token), when there are several. */
  tokens?: Buf;
  /** Run-time LoRA updates by projection. */
  lora: Partial<Record<Projection, LoraWeights>>;
}

/** Activation buffers of one shard. */
interface Activations {
  x: Buf;
  xb: Buf;
  q: Buf;
  att: Buf;
  hb: Buf;
  hb2: Buf;
  xq: Buf;
  scratch: Buf;
  /** Scratch of Backend.prepareWeight, used once at load. */
  prepare: Buf;
  /** A·x of the LoRA updates: batchSize rows of the largest stacked rank, per projection. */
  loraTmp: Buf[];
  /** New K and V rows of a batch of several sequences, before they go to each sequence's cache. */
  kNew?: Buf;
  vNew?: Buf;
  logits?: Buf;
}

/** One sequence's part of a batched forward pass: `tokens` of sequence `seq` at positions pos0... */
export interface BatchSegment {
  seq: number;
  tokens: ArrayLike<number>;
  pos0: number;
}

/**
 * Receives, during `forward`, the input rows of each weight matrix product: `x` holds `n` rows of
 * `cols` activations that every tensor in `tensors` (GGUF names) multiplies. The view is valid
 * only during the call. Used to collect importance matrices (imatrix).
 */
export type MatmulInputObserver = (
  tensors: readonly string[],
  x: Float32Array,
  n: number,
  cols: number,
) => void;

interface Group {
  tensors: string[];
  extraBytes: number;
  layer?: number;
}

/** A Llama-family model held in WebAssembly memory shards, with KV caches and a forward pass. */
export class LlamaModel {
  readonly config: LlamaConfig;
  readonly contextSize: number;
  readonly batchSize: number;
  readonly sequences: number;
  readonly logitsAll: boolean;
  readonly header: GgufHeader;
  readonly tiedOutput: boolean;
  readonly shardCount: number;
  private readonly backend: Backend;
  private readonly layers: LayerWeights[];
  private readonly embedding: Weight;
  private readonly outputNorm: Buf;
  private readonly output: Weight;
  private readonly headShard: number;
  private readonly act: Activations[];
  /** Set while hiddenStates runs forward. */
  private hiddenOut = false;
  private observer?: MatmulInputObserver;

  private constructor(init: {
    config: LlamaConfig;
    header: GgufHeader;
    rt: Runtime;
    backend: Backend;
    contextSize: number;
    batchSize: number;
    sequences: number;
    logitsAll: boolean;
    tiedOutput: boolean;
    layers: LayerWeights[];
    embedding: Weight;
    outputNorm: Buf;
    output: Weight;
    headShard: number;
    act: Activations[];
  }) {
    this.config = init.config;
    this.header = init.header;
    this.rt = init.rt;
    this.backend = init.backend;
    this.contextSize = init.contextSize;
    this.batchSize = init.batchSize;
    this.sequences = init.sequences;
    this.logitsAll = init.logitsAll;
    this.tiedOutput = init.tiedOutput;
    this.layers = init.layers;
    this.embedding = init.embedding;
    this.outputNorm = init.outputNorm;
    this.output = init.output;
    this.headShard = init.headShard;
    this.act = init.act;
    this.shardCount = init.rt.memories.length;
  }

  readonly rt: Runtime;

  /**
   * Sets (or, with undefined, removes) the observer `forward` shows each product's inputs to.
   * While one is set, `forward` runs its ops in smaller groups, which is slower but changes no result.
   */
  observeMatmulInputs(observer: MatmulInputObserver | undefined): void {
    this.observer = observer;
  }

  /** Shows the observer the `n` rows of `cols` inputs in `x` once the ops before have run. */
  private observe(tensors: readonly string[], x: Buf, n: number, cols: number): void {
    if (!this.observer) return;
    this.backend.flush();
    this.observer(tensors, this.rt.f32(x.shard, x.offset, n * cols), n, cols);
  }

  get threads(): number {
    return this.rt.threads;
  }

  /** Reads a GGUF file into memory shards and starts the thread pool. */
  static async load(path: string, options: LlamaLoadOptions = {}): Promise<LlamaModel> {
    const align = (n: number) => Math.ceil(n / 64) * 64;
    const header = readGgufHeader(path);
    const tensors = new Map(header.tensors.map((t) => [t.name, t]));
    const need = (name: string): GgufTensorInfo => {
      const t = tensors.get(name);
      if (!t) throw new UserError(`${path}: tensor ${name} is missing`);
      return t;
    };
    const embd = need("token_embd.weight");
    const vocab = embd.dims[1] ?? 1;
    const config = llamaConfigFromMetadata(metadataGetter(header), path, vocab);
    const c = config;
    const qDim = c.heads * c.headDim;
    const kvDim = c.kvHeads * c.headDim;
    const tiedOutput = !tensors.has("output.weight");

    // Run-time LoRA: group every adapter tensor by the projection it adapts.
    const loraParts = new Map<string, { t: LoraTensor; scale: number }[]>();
    for (const { adapter: given, scale } of options.lora ?? []) {
      const adapter = typeof given === "string" ? readLoraGguf(given) : given;
      const label = typeof given === "string" ? given : "LoRA adapter";
      const arch = metadataGetter(header)("general.architecture");
      if (adapter.architecture && adapter.architecture !== arch) {
        throw new UserError(
          `${label} is for architecture ${adapter.architecture}, ${path} is ${String(arch)}`,
        );
      }
      for (const t of adapter.tensors) {
        const m = /^blk\.(\d+)\.([a-z_]+)\.weight$/.exec(t.base);
        const base = tensors.get(t.base);
        if (!m || !(PROJECTIONS as readonly string[]).includes(m[2]) || !base) {
          throw new UserError(`${label}: cannot apply an update to ${t.base} of ${path}`);
        }
        if (base.dims[0] !== t.inFeatures || base.dims[1] !== t.outFeatures) {
          throw new UserError(
            `${label}: ${t.base} is ${base.dims.join("x")} in ${path} but ${t.inFeatures}x${t.outFeatures} in the adapter`,
          );
        }
        const list = loraParts.get(t.base) ?? [];
        list.push({ t, scale: loraScale(adapter.alpha, t.rank, scale ?? 1) });
        loraParts.set(t.base, list);
      }
    }
    const lora = new Map([...loraParts].map(([name, parts]) => [name, stackLora(parts)!]));
    const loraRank = Math.max(0, ...[...lora.values()].map((x) => x.rank));
    const loraBytesOf = (name: string) => {
      const x = lora.get(name);
      return x ? align(x.a.length * 4) + align(x.b.length * 4) : 0;
    };

    // Check every tensor's shape and type before allocating anything.
    const expect = (name: string, dims: number[], matrix: boolean) => {
      const t = need(name);
      const got = t.dims.length === 1 ? [t.dims[0]] : t.dims;
      if (got.length !== dims.length || got.some((d, i) => d !== dims[i])) {
        throw new UserError(`${path}: tensor ${name} has shape [${t.dims}], expected [${dims}]`);
      }
      if (!matrix && t.type !== GGMLType.F32) {
        throw new UserError(`${path}: tensor ${name} is ${ggmlTypeName(t.type)}; norm weights must be f32`);
      }
      if (matrix && formatOfGgmlType(t.type) === undefined) {
        throw new UserError(
          `${path}: tensor ${name} has type ${ggmlTypeName(t.type)}, which smallhammer cannot run`,
        );
      }
    };
    expect("token_embd.weight", [c.dim, vocab], true);
    expect("output_norm.weight", [c.dim], false);
    if (!tiedOutput) expect("output.weight", [c.dim, vocab], true);
    for (let l = 0; l < c.layers; l++) {
      const p = `blk.${l}.`;
      expect(`${p}attn_norm.weight`, [c.dim], false);
      expect(`${p}attn_q.weight`, [c.dim, qDim], true);
      expect(`${p}attn_k.weight`, [c.dim, kvDim], true);
      expect(`${p}attn_v.weight`, [c.dim, kvDim], true);
      expect(`${p}attn_output.weight`, [qDim, c.dim], true);
      expect(`${p}ffn_norm.weight`, [c.dim], false);
      expect(`${p}ffn_gate.weight`, [c.dim, c.ffn], true);
      expect(`${p}ffn_up.weight`, [c.dim, c.ffn], true);
      expect(`${p}ffn_down.weight`, [c.ffn, c.dim], true);
    }

    const threads = Math.max(
      1,
      Math.floor(options.threads ?? (await import("node:os")).availableParallelism()),
    );
    const contextSize = Math.max(1, Math.floor(options.contextSize ?? Math.min(c.contextLength, 4096)));
    const sequences = Math.max(1, Math.floor(options.sequences ?? 1));
    const batchSize = Math.max(1, Math.min(Math.floor(options.batchSize ?? 128), contextSize));
    const logitsAll = options.logitsAll ?? false;
    const maxShard = Math.min(options.maxShardBytes ?? MAX_SHARD_BYTES, MAX_SHARD_BYTES) - SHARD_BASE;
    // Logit rows: every token of a batch (logitsAll), and one per sequence for forwardBatch.
    const logitRows = Math.max(logitsAll ? batchSize : 1, sequences);

    // Plan: layers in order, then the embedding and output head; a new shard when one is full.
    const widest = Math.max(c.dim, qDim, c.ffn);
    // Backend.prepareWeight's scratch: four rows of the widest matrix per thread.
    let widestRow = 0;
    for (const t of tensors.values()) {
      if (t.dims.length === 2) widestRow = Math.max(widestRow, t.byteSize / t.dims[1]!);
    }
    const prepareBytes = threads * 4 * widestRow;
    const actBytes = (head: boolean) => {
      const nb = batchSize;
      let b = 0;
      b += align(nb * c.dim * 4) * 2 + align(nb * qDim * 4) * 2 + align(nb * c.ffn * 4) * 2;
      b += align(activationScratchBytes(widest, nb));
      b += align(threads * contextSize * 4) + align(prepareBytes);
      b += PROJECTIONS.length * align(nb * loraRank * 4);
      if (sequences > 1) b += 2 * align(nb * kvDim * 4);
      if (head) b += align(logitRows * vocab * 4);
      return b + 64 * 16;
    };
    const groups: Group[] = [];
    for (let l = 0; l < c.layers; l++) {
      const names = [
        "attn_norm",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_norm",
        "ffn_gate",
        "ffn_up",
      ];
      names.push("ffn_down");
      groups.push({
        tensors: names.map((n) => `blk.${l}.${n}.weight`),
        extraBytes:
          2 * sequences * align(contextSize * kvDim * 4) +
          (sequences > 1 ? align(batchSize * TOKEN_ENTRY_BYTES) : 0) +
          PROJECTIONS.reduce((sum, p) => sum + loraBytesOf(`blk.${l}.${p}.weight`), 0),
        layer: l,
      });
    }
    groups.push({
      tensors: ["token_embd.weight", "output_norm.weight", ...(tiedOutput ? [] : ["output.weight"])],
      extraBytes: 0,
    });
    const shardOf: number[] = [];
    const shardBytes: number[] = [];
    let used = -1;
    for (let g = 0; g < groups.length; g++) {
      const grp = groups[g]!;
      const head = grp.layer === undefined;
      const bytes = grp.tensors.reduce((s, n) => s + align(need(n).byteSize), 0) + grp.extraBytes;
      const cur = shardBytes.length - 1;
      // Activations are counted once per shard; the head's logits when the head lands in it.
      if (cur >= 0 && used + bytes + (head ? actBytes(true) - actBytes(false) : 0) <= maxShard) {
        used += bytes + (head ? actBytes(true) - actBytes(false) : 0);
        shardBytes[cur] = used;
      } else {
        used = actBytes(head) + bytes;
        if (used > maxShard) {
          throw new UserError(
            `${path}: ${grp.tensors[0]} and its layer need ${used} bytes, more than one memory shard`,
          );
        }
        shardBytes.push(used);
      }
      shardOf.push(shardBytes.length - 1);
    }

    const rt = await Runtime.create({ threads, shardBytes: shardBytes.map((b) => b + 4096) });
    const progress = options.onLoadProgress;
    const totalBytes = groups.reduce((s, g) => s + g.tensors.reduce((t, n) => t + need(n).byteSize, 0), 0);
    let readBytes = 0;
    try {
      const fd = openSync(path, "r");
      const loadTensor = (name: string, shard: number): number => {
        const t = need(name);
        const off = rt.alloc(shard, t.byteSize);
        readTensorInto(fd, t, rt.u8(shard, off, t.byteSize), path);
        readBytes += t.byteSize;
        // Below 1 until the matrices are also in their run-time layout.
        progress?.(Math.min(readBytes / totalBytes, 0.99));
        return off;
      };
      const weight = (name: string, shard: number): Weight => {
        const t = need(name);
        return {
          shard,
          offset: loadTensor(name, shard),
          format: formatOfGgmlType(t.type)!,
          rows: t.dims[1] ?? 1,
          cols: t.dims[0]!,
        };
      };
      const f32Weight = (data: Float32Array, rows: number, cols: number, shard: number): Weight => {
        const offset = rt.alloc(shard, data.length * 4);
        rt.f32(shard, offset, data.length).set(data);
        return { shard, offset, format: "F32", rows, cols };
      };
      const loraWeights = (layer: number, shard: number): LayerWeights["lora"] => {
        const out: LayerWeights["lora"] = {};
        for (const p of PROJECTIONS) {
          const x = lora.get(`blk.${layer}.${p}.weight`);
          if (!x) continue;
          out[p] = {
            a: f32Weight(x.a, x.rank, x.inFeatures, shard),
            b: f32Weight(x.b, x.outFeatures, x.rank, shard),
          };
        }
        return out;
      };
      let layers: LayerWeights[];
      let embedding: Weight;
      let outputNorm: Buf;
      let output: Weight;
      const headShard = shardOf[groups.length - 1]!;
      try {
        layers = [];
        for (let l = 0; l < c.layers; l++) {
          const s = shardOf[l]!;
          const p = `blk.${l}.`;
          const kvBytes = contextSize * kvDim * 4;
          const k: Buf[] = [];
          const v: Buf[] = [];
          for (let q = 0; q < sequences; q++) {
            k.push({ shard: s, offset: rt.alloc(s, kvBytes) });
            v.push({ shard: s, offset: rt.alloc(s, kvBytes) });
          }
          layers.push({
            shard: s,
            attnNorm: { shard: s, offset: loadTensor(`${p}attn_norm.weight`, s) },
            wq: weight(`${p}attn_q.weight`, s),
            wk: weight(`${p}attn_k.weight`, s),
            wv: weight(`${p}attn_v.weight`, s),
            wo: weight(`${p}attn_output.weight`, s),
            ffnNorm: { shard: s, offset: loadTensor(`${p}ffn_norm.weight`, s) },
            gate: weight(`${p}ffn_gate.weight`, s),
            up: weight(`${p}ffn_up.weight`, s),
            down: weight(`${p}ffn_down.weight`, s),
            k,
            v,
            tokens:
              sequences > 1 ? { shard: s, offset: rt.alloc(s, batchSize * TOKEN_ENTRY_BYTES) } : undefined,
            lora: loraWeights(l, s),
          });
        }
        embedding = weight("token_embd.weight", headShard);
        outputNorm = { shard: headShard, offset: loadTensor("output_norm.weight", headShard) };
        output = tiedOutput ? embedding : weight("output.weight", headShard);
      } finally {
        closeSync(fd);
      }
      if (embedding.format !== "F32" && !rt.has(`dequantize${embedding.format}`)) {
        throw new UserError(`${path}: token_embd.weight type ${embedding.format} cannot be looked up`);
      }
      const act: Activations[] = [];
      for (let s = 0; s < shardBytes.length; s++) {
        const nb = batchSize;
        const buf = (bytes: number): Buf => ({ shard: s, offset: rt.alloc(s, bytes) });
        act.push({
          x: buf(nb * c.dim * 4),
          xb: buf(nb * c.dim * 4),
          q: buf(nb * qDim * 4),
          att: buf(nb * qDim * 4),
          hb: buf(nb * c.ffn * 4),
          hb2: buf(nb * c.ffn * 4),
          xq: buf(activationScratchBytes(widest, nb)),
          scratch: buf(threads * contextSize * 4),
          prepare: buf(prepareBytes),
          loraTmp: loraRank ? PROJECTIONS.map(() => buf(nb * loraRank * 4)) : [],
          kNew: sequences > 1 ? buf(nb * kvDim * 4) : undefined,
          vNew: sequences > 1 ? buf(nb * kvDim * 4) : undefined,
          logits: s === headShard ? buf(logitRows * vocab * 4) : undefined,
        });
      }
      // Matrices go into the backend's preferred layout (not the embedding table, which is also
      // read row by row, nor a tied output, which is that table).
      const backend = new WasmBackend(rt);
      const prepare = (w: Weight): Weight => backend.prepareWeight(w, act[w.shard]!.prepare);
      for (const L of layers) {
        for (const k of ["wq", "wk", "wv", "wo", "gate", "up", "down"] as const) L[k] = prepare(L[k]);
      }
      if (!tiedOutput) output = prepare(output);
      progress?.(1);
      return new LlamaModel({
        backend,
        config,
        header,
        rt,
        contextSize,
        batchSize,
        sequences,
        logitsAll,
        tiedOutput,
        layers,
        embedding,
        outputNorm,
        output,
        headShard,
        act,
      });
    } catch (e) {
      await rt.dispose();
      throw e;
    }
  }

  /**
   * Evaluates `tokens` (at most batchSize) of sequence `seq` at positions pos0.., filling its KV
   * cache, and returns the logits of the last token (or of every token when logitsAll).
   * The returned array is a view that the next call overwrites.
   */
  forward(tokens: ArrayLike<number>, pos0: number, seq = 0): Float32Array {
    const c = this.config;
    const n = tokens.length;
    if (n === 0 || n > this.batchSize)
      throw new Error(`forward: ${n} tokens, batch size is ${this.batchSize}`);
    if (pos0 < 0 || pos0 + n > this.contextSize) {
      throw new UserError(`${pos0 + n} tokens do not fit the context of ${this.contextSize} tokens`);
    }
    if (seq < 0 || seq >= this.sequences) throw new Error(`forward: sequence ${seq} does not exist`);
    for (let i = 0; i < n; i++) {
      const id = tokens[i]!;
      if (!Number.isInteger(id) || id < 0 || id >= c.vocab)
        throw new UserError(`token id ${id} is outside the vocabulary`);
    }
    const b = this.backend;
    const qDim = c.heads * c.headDim;
    const kvDim = c.kvHeads * c.headDim;
    const shape: AttentionShape = {
      nHeads: c.heads,
      nKvHeads: c.kvHeads,
      headDim: c.headDim,
      scratchStride: this.contextSize,
    };
    let cur = this.headShard;
    b.getRows(this.act[cur]!.x, this.embedding, tokens);
    for (const [l, L] of this.layers.entries()) {
      const A = this.act[L.shard]!;
      if (L.shard !== cur) {
        b.copy(A.x, this.act[cur]!.x, n * c.dim * 4);
        cur = L.shard;
      }
      const kAt: Buf = { shard: L.shard, offset: L.k[seq]!.offset + pos0 * kvDim * 4 };
      const vAt: Buf = { shard: L.shard, offset: L.v[seq]!.offset + pos0 * kvDim * 4 };
      const p = `blk.${l}.`;
      b.rmsNorm(A.xb, A.x, L.attnNorm, n, c.dim, c.normEps);
      this.observe([`${p}attn_q.weight`, `${p}attn_k.weight`, `${p}attn_v.weight`], A.xb, n, c.dim);
      b.matmul(
        A.xb,
        n,
        c.dim,
        [
          { w: L.wq, out: A.q },
          { w: L.wk, out: kAt },
          { w: L.wv, out: vAt },
        ],
        A.xq,
      );
      this.addLora(L, A, A.xb, n, c.dim, [
        ["attn_q", A.q],
        ["attn_k", kAt],
        ["attn_v", vAt],
      ]);
      b.phase(() => {
        b.rope(A.q, n, c.heads, c.headDim, c.rope, pos0);
        b.rope(kAt, n, c.kvHeads, c.headDim, c.rope, pos0);
      });
      b.attention(A.att, A.q, L.k[seq]!, L.v[seq]!, n, pos0, shape, A.scratch);
      this.observe([`${p}attn_output.weight`], A.att, n, qDim);
      b.matmul(A.att, n, qDim, [{ w: L.wo, out: A.x, acc: true }], A.xq);
      this.addLora(L, A, A.att, n, qDim, [["attn_output", A.x]]);
      b.rmsNorm(A.xb, A.x, L.ffnNorm, n, c.dim, c.normEps);
      this.observe([`${p}ffn_gate.weight`, `${p}ffn_up.weight`], A.xb, n, c.dim);
      b.matmul(
        A.xb,
        n,
        c.dim,
        [
          { w: L.gate, out: A.hb },
          { w: L.up, out: A.hb2 },
        ],
        A.xq,
      );
      this.addLora(L, A, A.xb, n, c.dim, [
        ["ffn_gate", A.hb],
        ["ffn_up", A.hb2],
      ]);
      b.siluMul(A.hb, A.hb, A.hb2, n * c.ffn);
      this.observe([`${p}ffn_down.weight`], A.hb, n, c.ffn);
      b.matmul(A.hb, n, c.ffn, [{ w: L.down, out: A.x, acc: true }], A.xq);
      this.addLora(L, A, A.hb, n, c.ffn, [["ffn_down", A.x]]);
    }
    const H = this.act[this.headShard]!;
    if (this.hiddenOut) {
      // hiddenStates: every token's output-normed state, and no output head.
      if (cur !== this.headShard) b.copy(H.x, this.act[cur]!.x, n * c.dim * 4);
      b.rmsNorm(H.xb, cur !== this.headShard ? H.x : this.act[cur]!.x, this.outputNorm, n, c.dim, c.normEps);
      b.flush();
      return this.rt.f32(this.headShard, H.xb.offset, n * c.dim);
    }
    const rows = this.logitsAll ? n : 1;
    const from = this.act[cur]!.x;
    const last: Buf = { shard: cur, offset: from.offset + (n - rows) * c.dim * 4 };
    if (cur !== this.headShard) b.copy(H.x, last, rows * c.dim * 4);
    const src = cur !== this.headShard ? H.x : last;
    b.rmsNorm(H.xb, src, this.outputNorm, rows, c.dim, c.normEps);
    this.observe([this.tiedOutput ? "token_embd.weight" : "output.weight"], H.xb, rows, c.dim);
    b.matmul(H.xb, rows, c.dim, [{ w: this.output, out: H.logits! }], H.xq);
    b.flush();
    return this.rt.f32(this.headShard, H.logits!.offset, rows * c.vocab);
  }

  /**
   * Evaluates `tokens` as `forward` does and returns their hidden states after the output norm
   * (what the output head reads, and what llama.cpp pools into embeddings): tokens.length rows of
   * `dim` floats, a view that the next call overwrites.
   */
  hiddenStates(tokens: ArrayLike<number>, pos0: number, seq = 0): Float32Array {
    this.hiddenOut = true;
    try {
      return this.forward(tokens, pos0, seq);
    } finally {
      this.hiddenOut = false;
    }
  }

  /**
   * Copies the first `tokens` positions of sequence `from`'s KV cache to sequence `to`, which
   * then goes on from there as if it had evaluated them itself (several replies to one prompt).
   */
  copySequence(from: number, to: number, tokens: number): void {
    for (const s of [from, to]) {
      if (!Number.isInteger(s) || s < 0 || s >= this.sequences)
        throw new Error(`copySequence: sequence ${s} does not exist`);
    }
    if (!Number.isInteger(tokens) || tokens < 0 || tokens > this.contextSize)
      throw new Error(`copySequence: ${tokens} tokens do not fit the context of ${this.contextSize}`);
    if (from === to || tokens === 0) return;
    const bytes = tokens * this.config.kvHeads * this.config.headDim * 4;
    const b = this.backend;
    b.phase(() => {
      for (const L of this.layers) {
        b.copy(L.k[to]!, L.k[from]!, bytes);
        b.copy(L.v[to]!, L.v[from]!, bytes);
      }
    });
    b.flush();
  }

  /**
   * Evaluates several sequences in one pass: their tokens (at most batchSize in all) go through
   * each weight matrix together, so the weights are read once per step, and each sequence attends
   * to its own KV cache. Returns, per segment, the logits of its last token (views that the next
   * call overwrites).
   *
   * A sequence's logits do not depend on the other segments, nor on how its tokens were split
   * into calls: every op computes each token on its own (the matrix products in their per-token
   * form), so a sequence decoded in a shared step gets the same bits as decoded alone. For one
   * token of one sequence this is `forward`'s decoding step, bit for bit.
   */
  forwardBatch(segments: readonly BatchSegment[]): Float32Array[] {
    const c = this.config;
    if (segments.length === 0) throw new Error("forwardBatch: no segments");
    const seen = new Set<number>();
    const first: number[] = []; // index of each segment's first token in the batch
    let n = 0;
    for (const s of segments) {
      if (s.seq < 0 || s.seq >= this.sequences || !Number.isInteger(s.seq))
        throw new Error(`forwardBatch: sequence ${s.seq} does not exist`);
      if (seen.has(s.seq)) throw new Error(`forwardBatch: sequence ${s.seq} appears twice`);
      seen.add(s.seq);
      if (s.tokens.length === 0) throw new Error(`forwardBatch: sequence ${s.seq} has no tokens`);
      if (s.pos0 < 0 || s.pos0 + s.tokens.length > this.contextSize) {
        throw new UserError(
          `${s.pos0 + s.tokens.length} tokens do not fit the context of ${this.contextSize} tokens`,
        );
      }
      for (let i = 0; i < s.tokens.length; i++) {
        const id = s.tokens[i]!;
        if (!Number.isInteger(id) || id < 0 || id >= c.vocab)
          throw new UserError(`token id ${id} is outside the vocabulary`);
      }
      first.push(n);
      n += s.tokens.length;
    }
    if (n > this.batchSize) throw new Error(`forwardBatch: ${n} tokens, batch size is ${this.batchSize}`);
    const tokens = new Int32Array(n);
    segments.forEach((s, i) => {
      tokens.set(Array.from(s.tokens), first[i]);
    });

    const b = this.backend;
    const qDim = c.heads * c.headDim;
    const kvDim = c.kvHeads * c.headDim;
    const shape: AttentionShape = {
      nHeads: c.heads,
      nKvHeads: c.kvHeads,
      headDim: c.headDim,
      scratchStride: this.contextSize,
    };
    const at = (buf: Buf, row: number, width: number): Buf => ({
      shard: buf.shard,
      offset: buf.offset + row * width * 4,
    });
    // One segment writes its K and V rows straight into its cache. Several go through kNew/vNew,
    // and one token table per layer names each token's position and caches for ropeAt,
    // storeKvAt and attentionAt: three ops per layer, whatever the number of sequences.
    const direct = segments.length === 1;
    let cur = this.headShard;
    b.getRows(this.act[cur]!.x, this.embedding, tokens);
    for (const L of this.layers) {
      const A = this.act[L.shard]!;
      if (L.shard !== cur) {
        b.copy(A.x, this.act[cur]!.x, n * c.dim * 4);
        cur = L.shard;
      }
      const kOut = direct ? at(L.k[segments[0]!.seq]!, segments[0]!.pos0, kvDim) : A.kNew!;
      const vOut = direct ? at(L.v[segments[0]!.seq]!, segments[0]!.pos0, kvDim) : A.vNew!;
      b.rmsNorm(A.xb, A.x, L.attnNorm, n, c.dim, c.normEps);
      b.matmul(
        A.xb,
        n,
        c.dim,
        [
          { w: L.wq, out: A.q },
          { w: L.wk, out: kOut },
          { w: L.wv, out: vOut },
        ],
        A.xq,
        true,
      );
      this.addLora(
        L,
        A,
        A.xb,
        n,
        c.dim,
        [
          ["attn_q", A.q],
          ["attn_k", kOut],
          ["attn_v", vOut],
        ],
        true,
      );
      if (direct) {
        const s = segments[0]!;
        b.phase(() => {
          b.rope(A.q, n, c.heads, c.headDim, c.rope, s.pos0);
          b.rope(kOut, n, c.kvHeads, c.headDim, c.rope, s.pos0);
        });
        b.attention(A.att, A.q, L.k[s.seq]!, L.v[s.seq]!, n, s.pos0, shape, A.scratch);
      } else {
        const table = this.tokenTable(L, segments, n);
        b.phase(() => {
          b.ropeAt(A.q, n, c.heads, c.headDim, c.rope, table);
          b.ropeAt(kOut, n, c.kvHeads, c.headDim, c.rope, table);
        });
        b.storeKvAt(kOut, vOut, n, kvDim * 4, table);
        b.attentionAt(A.att, A.q, n, table, shape, A.scratch);
      }
      b.matmul(A.att, n, qDim, [{ w: L.wo, out: A.x, acc: true }], A.xq, true);
      this.addLora(L, A, A.att, n, qDim, [["attn_output", A.x]], true);
      b.rmsNorm(A.xb, A.x, L.ffnNorm, n, c.dim, c.normEps);
      b.matmul(
        A.xb,
        n,
        c.dim,
        [
          { w: L.gate, out: A.hb },
          { w: L.up, out: A.hb2 },
        ],
        A.xq,
        true,
      );
      this.addLora(
        L,
        A,
        A.xb,
        n,
        c.dim,
        [
          ["ffn_gate", A.hb],
          ["ffn_up", A.hb2],
        ],
        true,
      );
      b.siluMul(A.hb, A.hb, A.hb2, n * c.ffn);
      b.matmul(A.hb, n, c.ffn, [{ w: L.down, out: A.x, acc: true }], A.xq, true);
      this.addLora(L, A, A.hb, n, c.ffn, [["ffn_down", A.x]], true);
    }
    // The output head on each segment's last token: row i of H.xb is segment i's.
    const H = this.act[this.headShard]!;
    const last = (i: number): Buf => at(this.act[cur]!.x, first[i]! + segments[i]!.tokens.length - 1, c.dim);
    if (cur !== this.headShard) {
      b.phase(() => {
        segments.forEach((_, i) => {
          b.copy(at(H.x, i, c.dim), last(i), c.dim * 4);
        });
      });
      b.rmsNorm(H.xb, H.x, this.outputNorm, segments.length, c.dim, c.normEps);
    } else {
      b.phase(() => {
        segments.forEach((_, i) => {
          b.rmsNorm(at(H.xb, i, c.dim), last(i), this.outputNorm, 1, c.dim, c.normEps);
        });
      });
    }
    b.matmul(H.xb, segments.length, c.dim, [{ w: this.output, out: H.logits! }], H.xq, true);
    b.flush();
    return segments.map((_, i) => this.rt.f32(this.headShard, H.logits!.offset + i * c.vocab * 4, c.vocab));
  }

  /** Fills layer L's token table for the tokens of `segments` (n in all) and returns it. */
  private tokenTable(L: LayerWeights, segments: readonly BatchSegment[], n: number): Buf {
    const table = L.tokens!;
    const e = this.rt.u32(table.shard, table.offset, n * (TOKEN_ENTRY_BYTES / 4));
    const rowBytes = this.config.kvHeads * this.config.headDim * 4;
    let t = 0;
    for (const s of segments) {
      const k = L.k[s.seq]!.offset;
      const v = L.v[s.seq]!.offset;
      for (let j = 0; j < s.tokens.length; j++, t++) {
        const pos = s.pos0 + j;
        e.set([pos, k + pos * rowBytes, v + pos * rowBytes, k, v], t * 5);
      }
    }
    return table;
  }

  /**
   * Adds the run-time LoRA updates of projections that all read `x` to their outputs; `perToken`
   * as in Backend.matmul (forwardBatch).
   */
  private addLora(
    L: LayerWeights,
    A: Activations,
    x: Buf,
    n: number,
    cols: number,
    updates: [Projection, Buf][],
    perToken = false,
  ) {
    const todo = updates.filter(([p]) => L.lora[p]);
    if (todo.length === 0) return;
    const b = this.backend;
    const tmp = (p: Projection) => A.loraTmp[PROJECTIONS.indexOf(p)]!;
    b.matmul(
      x,
      n,
      cols,
      todo.map(([p]) => ({ w: L.lora[p]!.a, out: tmp(p) })),
      A.xq,
      perToken,
    );
    for (const [p, out] of todo) {
      const w = L.lora[p]!;
      b.matmul(tmp(p), n, w.a.rows, [{ w: w.b, out, acc: true }], A.xq, perToken);
    }
  }

  /** Bytes of the weights as stored in the file. */
  get weightBytes(): number {
    return this.header.tensors.reduce((s, t) => s + t.byteSize, 0);
  }

  /** Bytes of all KV caches. */
  get kvCacheBytes(): number {
    const c = this.config;
    return 2 * c.layers * this.sequences * this.contextSize * c.kvHeads * c.headDim * 4;
  }

  async dispose(): Promise<void> {
    await this.rt.dispose();
  }
}

export { rowBytes };
