// The memory plan of a model in training: which tensors train, where every weight, gradient,
// AdamW moment and saved activation lives in the one WebAssembly memory, and how many bytes each
// part takes (what `pretrain` and `finetune` check against the machine before they start).
import { availableParallelism, freemem, totalmem } from "node:os";
import { UserError } from "../errors.js";
import type { GGMLType } from "../formats/ggml-types.js";
import { tensorPlan as archTensorPlan } from "../model/arch/index.js";
import type { LlamaConfig } from "../model/config.js";
import { BLOCK, type Weight, type WeightFormat } from "../runtime/backend.js";
import {
  formatOfGgmlType as formatOfType,
  ggmlTypeOfFormat as typeOfFormat,
} from "../runtime/ggml-type-table.js";
import { MAX_SHARD_BYTES, SHARD_BASE } from "../runtime/runtime.js";
import { SUM_SQUARES_BLOCK } from "./ops.js";

/** One parameter tensor of the model, by its GGUF name. */
export interface ParamTensor {
  name: string;
  /** ggml order: [cols, rows] for a matrix, [length] for a vector. */
  dims: number[];
  /** Elements (rows × cols); a tensor may be stored with zero rows after these (see `weight`). */
  length: number;
  /** Where the values live; weight.rows may exceed dims[1] by zero padding rows. */
  weight: Weight;
  /** Whether the tensor has a gradient and optimizer state. */
  trainable: boolean;
  /** Whether AdamW's weight decay applies (matrices, not norm weights). */
  decay: boolean;
  /** For a LoRA tensor (`<base>.lora_a` or `.lora_b`): the GGUF name of the matrix it adapts. */
  loraOf?: string;
  /** Byte offsets of the gradient and the AdamW moments (0 when frozen). */
  grad: number;
  m: number;
  v: number;
}

export interface TrainModelOptions {
  /** Sequences per micro-batch. */
  batch: number;
  /** Tokens per sequence (at most the model's context length). */
  seq: number;
  /** Compute threads, the calling thread included; default: all cores. */
  threads?: number;
  /** Keep only each layer's input and recompute the layer in the backward pass (less memory). */
  recompute?: boolean;
  /** Which tensors train (GGUF names); default: all. Frozen tensors get no gradient or moments. */
  trainable?: (name: string) => boolean;
  /** The output head reuses token_embd.weight (no output.weight). Default false. */
  tiedEmbeddings?: boolean;
  /**
   * Storage format of a frozen layer matrix (default F32; the embedding and output head are
   * always f32). Quantized frozen weights run the forward product with the quantized kernels and
   * the input gradient through dequantized rows.
   */
  formatOf?: (name: string) => WeightFormat;
  /** LoRA adapters on frozen matrices. */
  lora?: LoraOptions;
}

/**
 * Low-rank adapters: each adapted frozen matrix W (out × in) gets trainable A (rank × in) and
 * B (out × rank), named `<W>.lora_a` / `<W>.lora_b` with llama.cpp's dims, and computes
 * y = x·Wᵀ + s·(dropout(x)·Aᵀ)·Bᵀ with s = alpha / rank. Dropout (inverted, a share p of the
 * inputs of each adapted matrix) applies only in forwardBackward; its masks are hashes of
 * (seed, pass, tensor, element), so a run is reproducible and a resumed run sets `loraPass`.
 */
export interface LoraOptions {
  /** Which matrices (GGUF names) get an adapter; each must be frozen. */
  targets: (name: string) => boolean;
  /** Rank: a positive multiple of 4. */
  rank: number;
  alpha: number;
  /** Dropout share p in [0, 1) (default 0). */
  dropout?: number;
  /** Seed of A's initial values and of the dropout masks (default 0). */
  seed?: number;
}

/** A micro-batch: rows·seq tokens, row-major by sequence. */
export interface TokenBatch {
  /** Sequences (default: the model's batch); at most the model's batch. */
  rows?: number;
  /** Tokens per sequence (default: the model's seq); at most the model's seq. */
  seq?: number;
  /** Input token ids. */
  tokens: Int32Array;
  /** Next-token targets; −1 means no loss at that token. */
  targets: Int32Array;
  /** Position of each token for rope (default 0..seq−1 in every sequence). */
  positions?: Int32Array;
  /**
   * Segment ids: a token attends only to earlier tokens of its own run of equal ids within its
   * sequence (packed examples). Default: each sequence is one segment.
   */
  segments?: Int32Array;
}

/** Bytes of each part of a training model's memory. */
export interface TrainMemory {
  weights: number;
  gradients: number;
  optimizer: number;
  activations: number;
  scratch: number;
  total: number;
}

export const align4 = (n: number) => Math.ceil(n / 4) * 4;
/** Rows of a non-f32 frozen matrix decoded at a time for its input gradient. */
export const DEQUANT_ROWS = 256;

/** The stored format of a ggml tensor type (undefined for a type training cannot hold). */
export const formatOfGgmlType: (t: GGMLType) => WeightFormat | undefined = formatOfType;

/** The ggml tensor type of a stored format. */
export const ggmlTypeOfFormat: (f: WeightFormat) => GGMLType = typeOfFormat;
export const ALIGN = 64;

export interface LayerParams {
  attnNorm: ParamTensor;
  wq: ParamTensor;
  wk: ParamTensor;
  wv: ParamTensor;
  wo: ParamTensor;
  ffnNorm: ParamTensor;
  gate: ParamTensor;
  up: ParamTensor;
  down: ParamTensor;
}

/** Activations of one layer the backward pass reads. */
export interface LayerActs {
  xn1: number;
  rstd1: number;
  q: number;
  k: number;
  v: number;
  att: number;
  lse: number;
  xmid: number;
  xn2: number;
  rstd2: number;
  gate: number;
  up: number;
  h: number;
}

/** Every region of the model's memory, as byte offsets. */
export interface Regions {
  ids: number;
  targets: number;
  positions: number;
  segStart: number;
  segEnd: number;
  ropeCos: number;
  ropeSin: number;
  /** Residual stream: input of layer l at xs[l]; xs[layers] is the last layer's output. */
  xs: number[];
  acts: LayerActs[];
  rstdF: number;
  xnF: number;
  logits: number;
  losses: number;
  dres: number;
  dxn: number;
  dq: number;
  dk: number;
  dv: number;
  datt: number;
  dgate: number;
  dup: number;
  dh: number;
  delta: number;
  tX: number;
  tDy: number;
  tW: number;
  /** Row blocks of a non-f32 frozen matrix for its input gradient (see inputGradientByBlocks). */
  dequant: number;
  dequantT: number;
  dyBlock: number;
  xq: number;
  /** LoRA: a masked input row per thread, dU, and U per adapted tensor. */
  loraX: number;
  loraDu: number;
  loraU: Map<string, number>;
  attScratch: number;
  sumSquares: number;
}

/** Model shape checks the kernels rely on. */
export function checkTrainConfig(c: LlamaConfig, seq: number): void {
  const bad = (what: string) => {
    throw new UserError(`model config: ${what}`);
  };
  for (const [k, v] of Object.entries({
    dim: c.dim,
    layers: c.layers,
    heads: c.heads,
    kvHeads: c.kvHeads,
    ffn: c.ffn,
    vocab: c.vocab,
    contextLength: c.contextLength,
  })) {
    if (!Number.isInteger(v) || v <= 0) bad(`${k} must be a positive integer, got ${v}`);
  }
  if (c.heads % c.kvHeads !== 0) bad(`${c.heads} heads are not divisible by ${c.kvHeads} kv heads`);
  if (c.headDim % 4 !== 0) bad(`head dimension ${c.headDim} must be a multiple of 4`);
  if (c.dim % 4 !== 0) bad(`dim ${c.dim} must be a multiple of 4`);
  if (c.ffn % 4 !== 0) bad(`ffn ${c.ffn} must be a multiple of 4`);
  if (c.rope.dim % 4 !== 0 || c.rope.dim > c.headDim) bad(`rope dimension ${c.rope.dim} is not supported`);
  // The trainer's graph is Llama's; other architectures' biases and blocks have no backward pass here.
  if (c.architecture !== "llama" && c.architecture !== "mistral")
    bad(`architecture ${c.architecture} cannot be trained (llama and mistral can)`);
  if (c.rope.neox) bad("NeoX rope ordering is not supported for training");
  if (!Number.isInteger(seq) || seq < 1 || seq > c.contextLength)
    bad(`sequence length ${seq} must be from 1 to the context length ${c.contextLength}`);
}

/** Names, shapes and roles of every tensor, in file order. */
function tensorPlan(c: LlamaConfig, tied: boolean): { name: string; dims: number[]; matrix: boolean }[] {
  return archTensorPlan(c.architecture, c, (name) => name === "output.weight" && !tied).map((t) => ({
    name: t.name,
    dims: t.dims,
    matrix: t.kind === "matrix",
  }));
}

/** Parameters of a model of this shape (every tensor, trainable or not). */
export function trainParameterCount(c: LlamaConfig, tiedEmbeddings: boolean): number {
  return tensorPlan(c, tiedEmbeddings).reduce((n, t) => n + t.dims.reduce((a, b) => a * b, 1), 0);
}

/** Tokens of logits computed at a time in the output head. */
export function headChunk(n: number): number {
  return Math.min(align4(n), 512);
}

/**
 * Lays out every region through `alloc` (a real allocator or a counter). Returns the regions,
 * the tensors and the bytes of each part.
 */
export function layout(
  c: LlamaConfig,
  o: Required<Pick<TrainModelOptions, "batch" | "seq" | "recompute" | "tiedEmbeddings">> & {
    threads: number;
    trainable: (name: string) => boolean;
    formatOf: (name: string) => WeightFormat;
    lora?: LoraOptions;
  },
  alloc: (bytes: number) => number,
): { regions: Regions; params: ParamTensor[]; memory: TrainMemory } {
  const memory: TrainMemory = {
    weights: 0,
    gradients: 0,
    optimizer: 0,
    activations: 0,
    scratch: 0,
    total: 0,
  };
  const take = (part: keyof TrainMemory, bytes: number) => {
    const padded = Math.ceil(bytes / ALIGN) * ALIGN;
    memory[part] += padded;
    memory.total += padded;
    return alloc(padded);
  };
  const vocabPad = align4(c.vocab);
  const params: ParamTensor[] = [];
  let hasQuantized = false;
  let largestF32Matrix = 0;
  const plan = tensorPlan(c, o.tiedEmbeddings);
  for (const t of plan) {
    const cols = t.dims[0]!;
    const rows = t.dims[1] ?? 1;
    const vocabRows = t.name === "token_embd.weight" || t.name === "output.weight";
    const storedRows = vocabRows ? vocabPad : rows;
    const trainable = o.trainable(t.name);
    // The embedding and the output head stay f32 (their rows are looked up and padded).
    const format: WeightFormat = t.matrix && !trainable && !vocabRows ? o.formatOf(t.name) : "F32";
    if (format !== "F32") {
      if (cols % BLOCK[format].size !== 0)
        throw new UserError(`${t.name}: row length ${cols} does not divide into ${format} blocks`);
      hasQuantized = true;
    }
    const length = rows * cols;
    const bytes =
      format === "F32"
        ? storedRows * cols * 4
        : (storedRows * cols * BLOCK[format].bytes) / BLOCK[format].size;
    if (t.matrix && format === "F32") largestF32Matrix = Math.max(largestF32Matrix, storedRows * cols);
    const offset = take("weights", bytes);
    const tensor: ParamTensor = {
      name: t.name,
      dims: t.dims,
      length,
      weight: { shard: 0, offset, format, rows: storedRows, cols },
      trainable,
      decay: t.matrix,
      grad: 0,
      m: 0,
      v: 0,
    };
    if (trainable) {
      tensor.grad = take("gradients", storedRows * cols * 4);
      tensor.m = take("optimizer", length * 4);
      tensor.v = take("optimizer", length * 4);
    }
    params.push(tensor);
  }
  const lora = o.lora;
  const adapted = lora ? plan.filter((t) => t.matrix && lora.targets(t.name)) : [];
  for (const t of adapted) {
    if (o.trainable(t.name)) throw new UserError(`${t.name}: a LoRA adapter needs a frozen matrix`);
    const [cols, rows] = t.dims as [number, number];
    const r = lora!.rank;
    for (const [suffix, dims] of [
      ["a", [cols, r]],
      ["b", [r, rows]],
    ] as const) {
      const length = dims[0] * dims[1];
      params.push({
        name: `${t.name}.lora_${suffix}`,
        dims: [...dims],
        length,
        weight: {
          shard: 0,
          offset: take("weights", length * 4),
          format: "F32",
          rows: dims[1],
          cols: dims[0],
        },
        trainable: true,
        decay: true,
        loraOf: t.name,
        grad: take("gradients", length * 4),
        m: take("optimizer", length * 4),
        v: take("optimizer", length * 4),
      });
    }
  }

  const N = o.batch * o.seq;
  const nPad = align4(N);
  const q = c.heads * c.headDim;
  const kv = c.kvHeads * c.headDim;
  const f = (part: keyof TrainMemory, floats: number) => take(part, floats * 4);
  const act = (floats: number) => f("activations", floats);
  const scratch = (floats: number) => f("scratch", floats);
  const regions = {
    ids: act(N),
    targets: act(N),
    positions: act(N),
    segStart: act(N),
    segEnd: act(N),
    ropeCos: act(c.contextLength * c.rope.dim),
    ropeSin: act(c.contextLength * c.rope.dim),
  } as Regions;
  regions.xs = [];
  for (let l = 0; l <= c.layers; l++) regions.xs.push(act(N * c.dim));
  regions.acts = [];
  const actSets = o.recompute ? 1 : c.layers;
  for (let l = 0; l < actSets; l++) {
    regions.acts.push({
      xn1: act(N * c.dim),
      rstd1: act(N),
      q: act(N * q),
      k: act(N * kv),
      v: act(N * kv),
      att: act(N * q),
      lse: act(N * c.heads),
      xmid: act(N * c.dim),
      xn2: act(N * c.dim),
      rstd2: act(N),
      gate: act(N * c.ffn),
      up: act(N * c.ffn),
      h: act(N * c.ffn),
    });
  }
  const chunk = headChunk(N);
  regions.rstdF = act(N);
  regions.xnF = act(N * c.dim);
  regions.logits = act(chunk * vocabPad);
  regions.losses = act(N);
  regions.dres = scratch(N * c.dim);
  regions.dxn = scratch(N * c.dim);
  regions.dq = scratch(N * q);
  regions.dk = scratch(N * kv);
  regions.dv = scratch(N * kv);
  regions.datt = scratch(N * q);
  regions.dgate = scratch(N * c.ffn);
  regions.dup = scratch(N * c.ffn);
  regions.dh = scratch(N * c.ffn);
  regions.delta = scratch(N * c.heads);
  const widest = Math.max(c.dim, q, kv, c.ffn);
  regions.tX = scratch(Math.max(widest * nPad, c.dim * chunk));
  regions.tDy = scratch(Math.max(widest * nPad, vocabPad * chunk));
  regions.tW = scratch(largestF32Matrix);
  regions.dequant = hasQuantized ? scratch(DEQUANT_ROWS * widest) : 0;
  regions.dequantT = hasQuantized ? scratch(DEQUANT_ROWS * widest) : 0;
  regions.dyBlock = hasQuantized ? scratch(nPad * DEQUANT_ROWS) : 0;
  regions.loraU = new Map();
  const rank = lora?.rank ?? 0;
  const uOfSuffix = new Map<string, number>();
  for (const t of adapted) {
    // With recomputation one set of activations serves every layer.
    const suffix = o.recompute ? t.name.replace(/^blk\.\d+\./, "") : t.name;
    let u = uOfSuffix.get(suffix);
    if (u === undefined) {
      u = act(N * rank);
      uOfSuffix.set(suffix, u);
    }
    regions.loraU.set(t.name, u);
  }
  const withLora = adapted.length > 0;
  regions.loraX = withLora ? scratch(o.threads * widest) : 0;
  regions.loraDu = withLora ? scratch(N * rank) : 0;
  regions.xq = hasQuantized ? take("scratch", 2 * N * widest + 64 * N) : 0;
  regions.attScratch = take("scratch", o.threads * 4 * o.seq * 4);
  regions.sumSquares = take(
    "scratch",
    8 * (params.length + Math.ceil(memory.weights / 4 / SUM_SQUARES_BLOCK)),
  );
  return { regions, params, memory };
}

function checkLoraOptions(l: LoraOptions): void {
  if (!Number.isInteger(l.rank) || l.rank < 4 || l.rank % 4 !== 0)
    throw new UserError(`LoRA rank must be a positive multiple of 4, got ${l.rank}`);
  if (!(Number.isFinite(l.alpha) && l.alpha > 0))
    throw new UserError(`LoRA alpha must be positive, got ${l.alpha}`);
  const p = l.dropout ?? 0;
  if (!(p >= 0 && p < 1)) throw new UserError(`LoRA dropout must be in [0, 1), got ${p}`);
}

export function resolveOptions(o: TrainModelOptions) {
  if (o.lora) checkLoraOptions(o.lora);
  return {
    batch: o.batch,
    seq: o.seq,
    recompute: o.recompute ?? false,
    tiedEmbeddings: o.tiedEmbeddings ?? false,
    threads: Math.max(1, Math.floor(o.threads ?? availableParallelism())),
    trainable: o.trainable ?? (() => true),
    formatOf: o.formatOf ?? (() => "F32" as WeightFormat),
    lora: o.lora,
  };
}

/** Bytes a training model of this shape and batch needs (what `LlamaTrainModel.create` allocates). */
export function trainMemory(config: LlamaConfig, options: TrainModelOptions): TrainMemory {
  let top = 0;
  return layout(config, resolveOptions(options), (bytes) => {
    const p = top;
    top += bytes;
    return p;
  }).memory;
}

/**
 * Throws a UserError naming the estimate when a model will not fit: one wasm memory holds at most
 * 4 GiB, and the machine must have the memory free.
 */
export function checkMemoryFits(mem: TrainMemory, what: string): void {
  const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
  const limit = MAX_SHARD_BYTES - SHARD_BASE;
  if (mem.total > limit) {
    throw new UserError(
      `${what} needs ${gib(mem.total)} (weights ${gib(mem.weights)}, gradients ${gib(mem.gradients)}, optimizer ${gib(mem.optimizer)}, activations ${gib(mem.activations)}, scratch ${gib(mem.scratch)}), more than one WebAssembly memory holds (${gib(limit)}); lower --batch or --seq, or use --recompute`,
    );
  }
  const available = Math.max(freemem(), totalmem() * 0.8);
  if (mem.total > available) {
    throw new UserError(
      `${what} needs ${gib(mem.total)} of memory but only ${gib(available)} is available; lower --batch or --seq, or use --recompute`,
    );
  }
}
