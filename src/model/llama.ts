import { closeSync, openSync } from "node:fs";
import { UserError } from "../errors.js";
import { GGMLType, ggmlTypeName } from "../formats/ggml-types.js";
import { type GgufHeader, type GgufTensorInfo, readGgufHeader, readTensorInto } from "../formats/gguf.js";
import {
  type AttentionShape,
  activationScratchBytes,
  type Backend,
  type Buf,
  GELU_TABLE_BYTES,
  rowBytes,
  WasmBackend,
  type Weight,
} from "../runtime/backend.js";
import { formatOfGgmlType } from "../runtime/ggml-type-table.js";
import { geluTableRef } from "../runtime/reference.js";
import { MAX_SHARD_BYTES, Runtime, SHARD_BASE } from "../runtime/runtime.js";
import {
  type Activation,
  type Architecture,
  activationWidth,
  architecture,
  type LayerGraph,
  type Product,
  projectionRoles,
  tensorPlan,
} from "./arch/index.js";
import { type LlamaConfig, llamaConfigFromMetadata, metadataGetter } from "./config.js";
import {
  allocateLayerKv,
  type BatchSegment,
  cacheRow,
  copyKvRows,
  fillTokenTable,
  type KvGeometry,
  type LayerKv,
  layerKvBytes,
} from "./kv-cache.js";
import { type LoraAdapter, type LoraTensor, loraScale, readLoraGguf } from "./lora.js";
import { planShards, type TensorGroup } from "./shard-plan.js";
import { ropeMagnitude, ropePairFactors } from "./yarn.js";

export type { BatchSegment };

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
  /** Receives warnings (a context longer than the model's training); default: one line on stderr. */
  onWarning?: (message: string) => void;
}

/** The default warning sink: one line on stderr. */
export function warnOnStderr(message: string): void {
  process.stderr.write(`warning: ${message}\n`);
}

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
  /** The layer's matrices by GGUF role (attn_q...), in the backend's layout; a fused tensor's parts by their roles. */
  w: Record<string, Weight>;
  /** The file's tensor each matrix role comes from (a fused attn_qkv for attn_q, attn_k and attn_v). */
  source: Record<string, string>;
  /** Its f32 vectors (norm weights, biases) by GGUF name within the layer (attn_norm.weight...). */
  vec: Record<string, Buf>;
  /** rope_freqs, copied into the layer's shard, when the model has them. */
  ropeFactors?: Buf;
  kv: LayerKv;
  /** Run-time LoRA updates by projection role. */
  lora: Record<string, LoraWeights>;
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
  /** ggml's GELU table, for architectures that use GELU. */
  geluTable?: Buf;
  /** A·x of the LoRA updates: batchSize rows of the largest stacked rank, per projection role. */
  loraTmp: Record<string, Buf>;
  /** New K and V rows of a batch of several sequences, before they go to each sequence's cache. */
  kNew?: Buf;
  vNew?: Buf;
  logits?: Buf;
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

/**
 * The blocks of one layer over one pass's tokens: the architecture's layer body calls them, and
 * they run on the backend. `perToken` as in Backend.matmul; `kOut`/`vOut` are where new keys and
 * values go; `attend` ropes, stores and attends in the pass's way (one sequence or a token table).
 */
class LayerPass implements LayerGraph {
  constructor(
    private readonly m: LlamaModel,
    readonly config: LlamaConfig,
    private readonly L: LayerWeights,
    private readonly A: Activations,
    private readonly n: number,
    private readonly perToken: boolean,
    private readonly kOut: Buf,
    private readonly vOut: Buf,
    private readonly attend: () => void,
  ) {}

  private buf(a: Activation): Buf {
    if (a === "k") return this.kOut;
    if (a === "v") return this.vOut;
    return this.A[a];
  }

  rmsNorm(role: string, out: Activation, x: Activation): void {
    const c = this.config;
    this.m.backend.rmsNorm(
      this.buf(out),
      this.buf(x),
      this.L.vec[`${role}.weight`]!,
      this.n,
      c.dim,
      c.normEps,
    );
  }

  layerNorm(role: string, out: Activation, x: Activation): void {
    const c = this.config;
    const { vec } = this.L;
    this.m.backend.layerNorm(
      this.buf(out),
      this.buf(x),
      vec[`${role}.weight`]!,
      vec[`${role}.bias`],
      this.n,
      c.dim,
      c.normEps,
    );
  }

  project(x: Activation, products: readonly Product[]): void {
    const { m, L, A, n } = this;
    const cols = activationWidth(this.config, x);
    const input = this.buf(x);
    m.observeInputs([...new Set(products.map(([role]) => L.source[role]!))], input, n, cols);
    m.backend.matmul(
      input,
      n,
      cols,
      products.map(([role, out, add]) => ({ w: L.w[role]!, out: this.buf(out), acc: add })),
      A.xq,
      this.perToken,
    );
    // Run-time LoRA: out += B·(A·x) for the adapted products.
    const todo = products.filter(([role]) => L.lora[role]);
    if (todo.length === 0) return;
    m.backend.matmul(
      input,
      n,
      cols,
      todo.map(([role]) => ({ w: L.lora[role]!.a, out: A.loraTmp[role]! })),
      A.xq,
      this.perToken,
    );
    for (const [role, out] of todo) {
      const w = L.lora[role]!;
      m.backend.matmul(
        A.loraTmp[role]!,
        n,
        w.a.rows,
        [{ w: w.b, out: this.buf(out), acc: true }],
        A.xq,
        this.perToken,
      );
    }
  }

  addBias(role: string, out: Activation): void {
    const b = this.m.backend;
    const width = activationWidth(this.config, out);
    const rows = this.buf(out);
    const bias = this.L.vec[`${role}.bias`];
    // (the load checked every bias the file must have; an absent one is an optional one)
    if (!bias) return;
    b.phase(() => {
      for (let t = 0; t < this.n; t++) {
        const row = { shard: rows.shard, offset: rows.offset + t * width * 4 };
        b.add(row, row, bias, width);
      }
    });
  }

  add(out: Activation, x: Activation): void {
    const width = activationWidth(this.config, out);
    this.m.backend.add(this.buf(out), this.buf(out), this.buf(x), this.n * width);
  }

  clamp(a: Activation, limit: number): void {
    this.m.backend.clamp(this.buf(a), limit, this.n * activationWidth(this.config, a));
  }

  attention(): void {
    this.attend();
  }

  siluMul(out: Activation, gate: Activation, up: Activation): void {
    const width = activationWidth(this.config, out);
    this.m.backend.siluMul(this.buf(out), this.buf(gate), this.buf(up), this.n * width);
  }

  gelu(out: Activation, x: Activation): void {
    const width = activationWidth(this.config, out);
    this.m.backend.gelu(this.buf(out), this.buf(x), this.n * width, this.A.geluTable!);
  }

  geluMul(out: Activation, gate: Activation, up: Activation): void {
    const width = activationWidth(this.config, out);
    this.m.backend.geluMul(this.buf(out), this.buf(gate), this.buf(up), this.n * width, this.A.geluTable!);
  }
}

/** A Llama-family model held in WebAssembly memory shards, with KV caches and a forward pass. */
export class LlamaModel {
  readonly config: LlamaConfig;
  readonly architecture: Architecture;
  readonly contextSize: number;
  readonly batchSize: number;
  readonly sequences: number;
  readonly logitsAll: boolean;
  readonly header: GgufHeader;
  readonly tiedOutput: boolean;
  readonly shardCount: number;
  readonly rt: Runtime;
  /** @internal The ops a layer pass records. */
  readonly backend: Backend;
  private readonly layers: LayerWeights[];
  private readonly embedding: Weight;
  /** Learned position embeddings (GPT-2), one row per position. */
  private readonly positionEmbedding?: Weight;
  private readonly outputNorm: Buf;
  private readonly outputNormBias?: Buf;
  private readonly output: Weight;
  private readonly headShard: number;
  private readonly act: Activations[];
  /** Set while hiddenStates runs forward. */
  private hiddenOut = false;
  private observer?: MatmulInputObserver;

  private constructor(init: {
    config: LlamaConfig;
    architecture: Architecture;
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
    positionEmbedding?: Weight;
    outputNorm: Buf;
    outputNormBias?: Buf;
    output: Weight;
    headShard: number;
    act: Activations[];
  }) {
    this.config = init.config;
    this.architecture = init.architecture;
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
    this.positionEmbedding = init.positionEmbedding;
    this.outputNorm = init.outputNorm;
    this.outputNormBias = init.outputNormBias;
    this.output = init.output;
    this.headShard = init.headShard;
    this.act = init.act;
    this.shardCount = init.rt.memories.length;
  }

  /**
   * Sets (or, with undefined, removes) the observer `forward` shows each product's inputs to.
   * While one is set, `forward` runs its ops in smaller groups, which is slower but changes no result.
   */
  observeMatmulInputs(observer: MatmulInputObserver | undefined): void {
    this.observer = observer;
  }

  /** @internal Shows the observer the `n` rows of `cols` inputs in `x` once the ops before have run. */
  observeInputs(tensors: readonly string[], x: Buf, n: number, cols: number): void {
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
    const arch = architecture(c.architecture, path);
    const plan = tensorPlan(arch, c, (name) => tensors.has(name));
    const roles = projectionRoles(arch);
    const qDim = c.heads * c.headDim;
    const kvDim = c.kvHeads * c.headDim;
    const tiedOutput = !tensors.has("output.weight");
    const hasFileRopeFactors = tensors.has("rope_freqs.weight");
    // rope_freqs and YaRN's blend both divide the pair angles: one table of divisors per shard.
    const hasRopeFactors = hasFileRopeFactors || c.rope.yarnOriginalContext !== undefined;

    // Run-time LoRA: group every adapter tensor by the projection it adapts.
    const loraParts = new Map<string, { t: LoraTensor; scale: number }[]>();
    for (const { adapter: given, scale } of options.lora ?? []) {
      const adapter = typeof given === "string" ? readLoraGguf(given) : given;
      const label = typeof given === "string" ? given : "LoRA adapter";
      const archName = metadataGetter(header)("general.architecture");
      if (adapter.architecture && adapter.architecture !== archName) {
        throw new UserError(
          `${label} is for architecture ${adapter.architecture}, ${path} is ${String(archName)}`,
        );
      }
      for (const t of adapter.tensors) {
        const m = /^blk\.(\d+)\.([a-z_]+)\.weight$/.exec(t.base);
        const base = tensors.get(t.base);
        if (!m || !roles.includes(m[2]!) || !base) {
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

    // A tensor the architecture's table does not name means a variant its layer body does not compute.
    if (arch.strictTensors) {
      const planned = new Set(plan.map((p) => p.name));
      const extra = header.tensors.find((t) => !planned.has(t.name));
      if (extra && /rope_factors_(long|short)/.test(extra.name)) {
        throw new UserError(
          `${path}: tensor ${extra.name} (${arch.name}'s long-context rope factors) is not supported`,
        );
      }
      if (extra) {
        throw new UserError(
          `${path}: tensor ${extra.name} is not part of a ${arch.name} model that smallhammer runs`,
        );
      }
    }

    // Check every tensor's shape and type before allocating anything.
    for (const p of plan) {
      const t = need(p.name);
      const got = t.dims.length === 1 ? [t.dims[0]] : t.dims;
      if (got.length !== p.dims.length || got.some((d, i) => d !== p.dims[i])) {
        throw new UserError(`${path}: tensor ${p.name} has shape [${t.dims}], expected [${p.dims}]`);
      }
      if (p.kind !== "matrix" && p.kind !== "table" && t.type !== GGMLType.F32) {
        const what = p.kind === "norm" ? "norm weights" : p.kind === "bias" ? "biases" : "rope_freqs";
        throw new UserError(`${path}: tensor ${p.name} is ${ggmlTypeName(t.type)}; ${what} must be f32`);
      }
      if ((p.kind === "matrix" || p.kind === "table") && formatOfGgmlType(t.type) === undefined) {
        throw new UserError(
          `${path}: tensor ${p.name} has type ${ggmlTypeName(t.type)}, which smallhammer cannot run`,
        );
      }
    }

    const threads = Math.max(
      1,
      Math.floor(options.threads ?? (await import("node:os")).availableParallelism()),
    );
    const contextSize = Math.max(1, Math.floor(options.contextSize ?? Math.min(c.contextLength, 4096)));
    const learnedPositions = plan.some((t) => t.name === "position_embd.weight");
    if (learnedPositions && contextSize > c.contextLength) {
      throw new UserError(
        `${path}: a context of ${contextSize} tokens is longer than the ${c.contextLength} positions position_embd.weight holds`,
      );
    }
    if (contextSize > c.contextLength) {
      // As llama.cpp warns: positions past the training length were never seen, so text there
      // degrades unless the file's rope scaling was made for it.
      (options.onWarning ?? warnOnStderr)(
        `${path}: a context of ${contextSize} tokens is longer than the ${c.contextLength} the model was trained with`,
      );
    }
    const sequences = Math.max(1, Math.floor(options.sequences ?? 1));
    const batchSize = Math.max(1, Math.min(Math.floor(options.batchSize ?? 128), contextSize));
    const logitsAll = options.logitsAll ?? false;
    const maxShard = Math.min(options.maxShardBytes ?? MAX_SHARD_BYTES, MAX_SHARD_BYTES) - SHARD_BASE;
    // Logit rows: every token of a batch (logitsAll), and one per sequence for forwardBatch.
    const logitRows = Math.max(logitsAll ? batchSize : 1, sequences);
    const kvGeometry: KvGeometry = { contextSize, rowFloats: kvDim, sequences, batchSize };

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
      b += roles.length * align(nb * loraRank * 4);
      if (sequences > 1) b += 2 * align(nb * kvDim * 4);
      if (head) b += align(logitRows * vocab * 4);
      if (arch.gelu) b += GELU_TABLE_BYTES;
      return b + 64 * 16;
    };
    const factorBytes = hasRopeFactors ? align((c.rope.dim / 2) * 4) : 0;
    const tensorBytes = (names: string[]) => names.reduce((s, n) => s + align(need(n).byteSize), 0);
    const groups: TensorGroup[] = [];
    for (let l = 0; l < c.layers; l++) {
      const names = plan.filter((t) => t.layer === l).map((t) => t.name);
      groups.push({
        tensors: names,
        tensorBytes: tensorBytes(names),
        extraBytes:
          layerKvBytes(kvGeometry) +
          factorBytes +
          roles.reduce((sum, r) => sum + loraBytesOf(`blk.${l}.${r}.weight`), 0),
      });
    }
    // (rope_freqs goes to every shard that holds layers, counted with them above)
    const headNames = plan.filter((t) => t.layer === undefined && t.kind !== "factors").map((t) => t.name);
    groups.push({ tensors: headNames, tensorBytes: tensorBytes(headNames), extraBytes: 0, head: true });
    const { shardOf, shardBytes } = planShards(groups, actBytes, maxShard, path);

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
        for (const r of roles) {
          const x = lora.get(`blk.${layer}.${r}.weight`);
          if (!x) continue;
          out[r] = {
            a: f32Weight(x.a, x.rank, x.inFeatures, shard),
            b: f32Weight(x.b, x.outFeatures, x.rank, shard),
          };
        }
        return out;
      };
      // The angle divisors (rope_freqs, YaRN's blend): one copy per shard that holds layers.
      let pairFactors: Float32Array | undefined;
      if (hasFileRopeFactors) {
        const t = need("rope_freqs.weight");
        const fileFactors = new Float32Array(c.rope.dim / 2);
        readTensorInto(fd, t, new Uint8Array(fileFactors.buffer), path);
        for (const v of fileFactors) {
          if (!(Number.isFinite(v) && v > 0)) {
            throw new UserError(
              `${path}: rope_freqs.weight holds ${v}; frequency factors must be finite and above 0`,
            );
          }
        }
        pairFactors = ropePairFactors(c.rope, fileFactors);
      } else {
        pairFactors = ropePairFactors(c.rope);
      }
      const factorsByShard = new Map<number, Buf>();
      const ropeFactorsIn = (shard: number): Buf | undefined => {
        if (!pairFactors) return undefined;
        let f = factorsByShard.get(shard);
        if (!f) {
          f = { shard, offset: rt.alloc(shard, pairFactors.byteLength) };
          rt.f32(shard, f.offset, pairFactors.length).set(pairFactors);
          factorsByShard.set(shard, f);
        }
        return f;
      };
      let layers: LayerWeights[];
      let embedding: Weight;
      let positionEmbedding: Weight | undefined;
      let outputNorm: Buf;
      let outputNormBias: Buf | undefined;
      let output: Weight;
      const headShard = shardOf[groups.length - 1]!;
      try {
        layers = [];
        for (let l = 0; l < c.layers; l++) {
          const s = shardOf[l]!;
          const L: LayerWeights = {
            shard: s,
            w: {},
            source: {},
            vec: {},
            ropeFactors: ropeFactorsIn(s),
            kv: allocateLayerKv(rt, s, kvGeometry),
            lora: loraWeights(l, s),
          };
          for (const t of plan) {
            if (t.layer !== l) continue;
            // A fused tensor's parts are its row ranges (matrices of their own) or element ranges
            // (biases); any other tensor is one part, itself.
            const parts = t.spec.parts ?? [{ role: t.spec.role, rows: () => t.dims.at(-1)! }];
            let row = 0;
            if (t.kind === "matrix") {
              const whole = weight(t.name, s);
              for (const { role, rows } of parts) {
                const offset = whole.offset + row * rowBytes(whole.format, whole.cols);
                L.w[role] = { ...whole, offset, rows: rows(c) };
                L.source[role] = t.name;
                row += rows(c);
              }
            } else {
              const offset = loadTensor(t.name, s);
              for (const { role, rows } of parts) {
                L.vec[`${role}.${t.spec.suffix}`] = { shard: s, offset: offset + row * 4 };
                row += rows(c);
              }
            }
          }
          layers.push(L);
        }
        embedding = weight("token_embd.weight", headShard);
        if (learnedPositions) positionEmbedding = weight("position_embd.weight", headShard);
        outputNorm = { shard: headShard, offset: loadTensor("output_norm.weight", headShard) };
        if (plan.some((t) => t.name === "output_norm.bias")) {
          outputNormBias = { shard: headShard, offset: loadTensor("output_norm.bias", headShard) };
        }
        output = tiedOutput ? embedding : weight("output.weight", headShard);
      } finally {
        closeSync(fd);
      }
      for (const [name, table] of [
        ["token_embd.weight", embedding],
        ["position_embd.weight", positionEmbedding],
      ] as const) {
        if (table && table.format !== "F32" && !rt.has(`dequantize${table.format}`)) {
          throw new UserError(`${path}: ${name} type ${table.format} cannot be looked up`);
        }
      }
      const geluTable = arch.gelu ? geluTableRef() : undefined;
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
          loraTmp: loraRank ? Object.fromEntries(roles.map((r) => [r, buf(nb * loraRank * 4)])) : {},
          kNew: sequences > 1 ? buf(nb * kvDim * 4) : undefined,
          vNew: sequences > 1 ? buf(nb * kvDim * 4) : undefined,
          logits: s === headShard ? buf(logitRows * vocab * 4) : undefined,
        });
        if (geluTable) {
          const table = buf(GELU_TABLE_BYTES);
          rt.u8(s, table.offset, GELU_TABLE_BYTES).set(new Uint8Array(geluTable.buffer));
          act[s]!.geluTable = table;
        }
      }
      // Matrices go into the backend's preferred layout (not the embedding table, which is also
      // read row by row, nor a tied output, which is that table).
      const backend = new WasmBackend(rt);
      const prepare = (w: Weight): Weight => backend.prepareWeight(w, act[w.shard]!.prepare);
      for (const L of layers) {
        for (const r of Object.keys(L.w)) L.w[r] = prepare(L.w[r]!);
      }
      if (!tiedOutput) output = prepare(output);
      progress?.(1);
      return new LlamaModel({
        backend,
        config,
        architecture: arch,
        header,
        rt,
        contextSize,
        batchSize,
        sequences,
        logitsAll,
        tiedOutput,
        layers,
        embedding,
        positionEmbedding,
        outputNorm,
        outputNormBias,
        output,
        headShard,
        act,
      });
    } catch (e) {
      await rt.dispose();
      throw e;
    }
  }

  /** Checks that every id of `tokens` is in the vocabulary. */
  private checkTokens(tokens: ArrayLike<number>): void {
    for (let i = 0; i < tokens.length; i++) {
      const id = tokens[i]!;
      if (!Number.isInteger(id) || id < 0 || id >= this.config.vocab)
        throw new UserError(`token id ${id} is outside the vocabulary`);
    }
  }

  /**
   * Runs the embedding and every layer over `tokens`, the tokens of `segments` in order, and
   * returns the shard whose `x` holds the last layer's output. One segment writes its K and V rows
   * straight into its cache. Several go through kNew/vNew, and one token table per layer names
   * each token's position and caches for ropeAt, storeKvAt and attentionAt: three ops per layer,
   * whatever the number of sequences. `perToken` as in Backend.matmul.
   */
  private runLayers(tokens: ArrayLike<number>, segments: readonly BatchSegment[], perToken: boolean): number {
    const c = this.config;
    const b = this.backend;
    const n = tokens.length;
    const kvDim = c.kvHeads * c.headDim;
    const qDim = c.heads * c.headDim;
    // Attention reads q and k only through q·k, so rope's scale of both (YaRN) is taken by q, squared.
    const qkScale = ropeMagnitude(c.rope) ** 2;
    const shape: AttentionShape = {
      nHeads: c.heads,
      nKvHeads: c.kvHeads,
      headDim: c.headDim,
      scratchStride: this.contextSize,
      maxAlibiBias: c.maxAlibiBias,
    };
    const rotary = (this.architecture.positions ?? "rope") === "rope";
    const direct = segments.length === 1;
    let cur = this.headShard;
    const H = this.act[cur]!;
    b.getRows(H.x, this.embedding, tokens);
    const embeddingScale = this.architecture.embeddingScale?.(c);
    if (embeddingScale !== undefined) b.scale(H.x, H.x, embeddingScale, n * c.dim);
    if (this.positionEmbedding) {
      const positions = segments.flatMap((s) =>
        Array.from({ length: s.tokens.length }, (_, i) => s.pos0 + i),
      );
      b.getRows(H.xb, this.positionEmbedding, positions);
      b.add(H.x, H.x, H.xb, n * c.dim);
    }
    for (const L of this.layers) {
      const A = this.act[L.shard]!;
      if (L.shard !== cur) {
        b.copy(A.x, this.act[cur]!.x, n * c.dim * 4);
        cur = L.shard;
      }
      let pass: LayerPass;
      if (direct) {
        const s = segments[0]!;
        const kOut = cacheRow(L.kv.k[s.seq]!, s.pos0, kvDim);
        const vOut = cacheRow(L.kv.v[s.seq]!, s.pos0, kvDim);
        pass = new LayerPass(this, c, L, A, n, perToken, kOut, vOut, () => {
          if (rotary) {
            b.phase(() => {
              b.rope(A.q, n, c.heads, c.headDim, c.rope, s.pos0, L.ropeFactors);
              b.rope(kOut, n, c.kvHeads, c.headDim, c.rope, s.pos0, L.ropeFactors);
            });
            if (qkScale !== 1) b.scale(A.q, A.q, qkScale, n * qDim);
          }
          b.attention(A.att, A.q, L.kv.k[s.seq]!, L.kv.v[s.seq]!, n, s.pos0, shape, A.scratch);
        });
      } else {
        const kOut = A.kNew!;
        const vOut = A.vNew!;
        pass = new LayerPass(this, c, L, A, n, perToken, kOut, vOut, () => {
          const table = fillTokenTable(this.rt, L.kv, segments, n, kvDim);
          if (rotary) {
            b.phase(() => {
              b.ropeAt(A.q, n, c.heads, c.headDim, c.rope, table, L.ropeFactors);
              b.ropeAt(kOut, n, c.kvHeads, c.headDim, c.rope, table, L.ropeFactors);
            });
            if (qkScale !== 1) b.scale(A.q, A.q, qkScale, n * qDim);
          }
          b.storeKvAt(kOut, vOut, n, kvDim * 4, table);
          b.attentionAt(A.att, A.q, n, table, shape, A.scratch);
        });
      }
      this.architecture.layer(pass);
    }
    return cur;
  }

  /** The norm before the head over `n` rows of x, into out: RMSNorm, or LayerNorm by the architecture. */
  private normOutput(out: Buf, x: Buf, n: number): void {
    const c = this.config;
    if (this.architecture.norm === "layer") {
      this.backend.layerNorm(out, x, this.outputNorm, this.outputNormBias, n, c.dim, c.normEps);
    } else {
      this.backend.rmsNorm(out, x, this.outputNorm, n, c.dim, c.normEps);
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
    this.checkTokens(tokens);
    const b = this.backend;
    const cur = this.runLayers(tokens, [{ seq, tokens, pos0 }], false);
    const H = this.act[this.headShard]!;
    if (this.hiddenOut) {
      // hiddenStates: every token's output-normed state, and no output head.
      if (cur !== this.headShard) b.copy(H.x, this.act[cur]!.x, n * c.dim * 4);
      this.normOutput(H.xb, cur !== this.headShard ? H.x : this.act[cur]!.x, n);
      b.flush();
      return this.rt.f32(this.headShard, H.xb.offset, n * c.dim);
    }
    const rows = this.logitsAll ? n : 1;
    const from = this.act[cur]!.x;
    const last: Buf = { shard: cur, offset: from.offset + (n - rows) * c.dim * 4 };
    if (cur !== this.headShard) b.copy(H.x, last, rows * c.dim * 4);
    const src = cur !== this.headShard ? H.x : last;
    this.normOutput(H.xb, src, rows);
    this.observeInputs([this.tiedOutput ? "token_embd.weight" : "output.weight"], H.xb, rows, c.dim);
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
    copyKvRows(
      this.backend,
      this.layers.map((L) => L.kv),
      from,
      to,
      bytes,
    );
    this.backend.flush();
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
    const { tokens, first } = this.batchTokens(segments, "forwardBatch");
    const b = this.backend;
    const cur = this.runLayers(tokens, segments, true);
    const at = (buf: Buf, row: number, width: number): Buf => ({
      shard: buf.shard,
      offset: buf.offset + row * width * 4,
    });
    // The output head on each segment's last token: row i of H.xb is segment i's.
    const H = this.act[this.headShard]!;
    const last = (i: number): Buf => at(this.act[cur]!.x, first[i]! + segments[i]!.tokens.length - 1, c.dim);
    if (cur !== this.headShard) {
      b.phase(() => {
        segments.forEach((_, i) => {
          b.copy(at(H.x, i, c.dim), last(i), c.dim * 4);
        });
      });
      this.normOutput(H.xb, H.x, segments.length);
    } else {
      b.phase(() => {
        segments.forEach((_, i) => {
          this.normOutput(at(H.xb, i, c.dim), last(i), 1);
        });
      });
    }
    b.matmul(H.xb, segments.length, c.dim, [{ w: this.output, out: H.logits! }], H.xq, true);
    b.flush();
    return segments.map((_, i) => this.rt.f32(this.headShard, H.logits!.offset + i * c.vocab * 4, c.vocab));
  }

  /**
   * Evaluates several sequences in one pass as forwardBatch does, and returns per segment its
   * tokens' hidden states after the output norm, as hiddenStates gives them: tokens.length rows of
   * `dim` floats (views that the next call overwrites). As with forwardBatch, a token's states do
   * not depend on the other segments, nor on how its sequence's tokens were split into calls.
   */
  hiddenStatesBatch(segments: readonly BatchSegment[]): Float32Array[] {
    const c = this.config;
    const { tokens, first } = this.batchTokens(segments, "hiddenStatesBatch");
    const b = this.backend;
    const n = tokens.length;
    const cur = this.runLayers(tokens, segments, true);
    const H = this.act[this.headShard]!;
    if (cur !== this.headShard) b.copy(H.x, this.act[cur]!.x, n * c.dim * 4);
    b.rmsNorm(H.xb, cur !== this.headShard ? H.x : this.act[cur]!.x, this.outputNorm, n, c.dim, c.normEps);
    b.flush();
    return segments.map((s, i) =>
      this.rt.f32(this.headShard, H.xb.offset + first[i]! * c.dim * 4, s.tokens.length * c.dim),
    );
  }

  /** Checks the segments of a batched pass and lays their tokens out in order. */
  private batchTokens(
    segments: readonly BatchSegment[],
    caller: string,
  ): { tokens: Int32Array; first: number[] } {
    if (segments.length === 0) throw new Error(`${caller}: no segments`);
    const seen = new Set<number>();
    const first: number[] = []; // index of each segment's first token in the batch
    let n = 0;
    for (const s of segments) {
      if (s.seq < 0 || s.seq >= this.sequences || !Number.isInteger(s.seq))
        throw new Error(`${caller}: sequence ${s.seq} does not exist`);
      if (seen.has(s.seq)) throw new Error(`${caller}: sequence ${s.seq} appears twice`);
      seen.add(s.seq);
      if (s.tokens.length === 0) throw new Error(`${caller}: sequence ${s.seq} has no tokens`);
      if (s.pos0 < 0 || s.pos0 + s.tokens.length > this.contextSize) {
        throw new UserError(
          `${s.pos0 + s.tokens.length} tokens do not fit the context of ${this.contextSize} tokens`,
        );
      }
      this.checkTokens(s.tokens);
      first.push(n);
      n += s.tokens.length;
    }
    if (n > this.batchSize) throw new Error(`${caller}: ${n} tokens, batch size is ${this.batchSize}`);
    const tokens = new Int32Array(n);
    segments.forEach((s, i) => {
      tokens.set(Array.from(s.tokens), first[i]);
    });
    return { tokens, first };
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
