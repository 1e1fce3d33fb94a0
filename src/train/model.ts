// A Llama model laid out for training in one WebAssembly memory: weights, gradients and AdamW
// moments of the tensors that train, the activations the backward pass needs, and an explicit
// forward and backward pass per layer (in the manner of llm.c: no general autograd).
import { closeSync, openSync } from "node:fs";
import { UserError } from "../errors.js";
import { ggmlTypeName } from "../formats/ggml-types.js";
import { readGgufHeader, readTensorInto } from "../formats/gguf.js";
import { type LlamaConfig, llamaConfigFromMetadata, metadataGetter } from "../model/config.js";
import type { LoraTensor } from "../model/lora.js";
import { dequantizeRow, quantizeRow } from "../quant/reference.js";
import { BLOCK, rowBytes, type Weight, type WeightFormat } from "../runtime/backend.js";
import { Runtime } from "../runtime/runtime.js";
import { Rng } from "../util/random.js";
import {
  ALIGN,
  align4,
  checkMemoryFits,
  checkTrainConfig,
  DEQUANT_ROWS,
  formatOfGgmlType as formatOfType,
  headChunk,
  type LayerActs,
  type LayerParams,
  type LoraOptions,
  layout,
  type ParamTensor,
  type Regions,
  resolveOptions,
  type TokenBatch,
  type TrainMemory,
  type TrainModelOptions,
  trainMemory,
  ggmlTypeOfFormat as typeOfFormat,
} from "./layout.js";
import { dropoutThreshold, loraDropoutSeed } from "./lora-reference.js";
import { type AttentionGeometry, type LoraGeometry, ropeTables, SUM_SQUARES_BLOCK, TrainOps } from "./ops.js";

export {
  checkMemoryFits,
  checkTrainConfig,
  formatOfGgmlType,
  ggmlTypeOfFormat,
  type LoraOptions,
  type ParamTensor,
  type TokenBatch,
  type TrainMemory,
  type TrainModelOptions,
  trainMemory,
  trainParameterCount,
} from "./layout.js";

/**
 * A Llama-family model in training memory. `forwardBackward` adds the gradients of one micro-batch
 * to the gradient buffers; an optimizer (see optimizer.ts) then updates the weights.
 */
export class LlamaTrainModel {
  readonly config: LlamaConfig;
  readonly batch: number;
  readonly seq: number;
  readonly recompute: boolean;
  readonly tiedEmbeddings: boolean;
  readonly params: ParamTensor[];
  readonly memory: TrainMemory;
  readonly rt: Runtime;
  readonly ops: TrainOps;
  private readonly r: Regions;
  private readonly byName: Map<string, ParamTensor>;
  private readonly layers: LayerParams[];
  private readonly embedding: ParamTensor;
  private readonly outputNorm: ParamTensor;
  private readonly output: ParamTensor;
  private readonly vocabPad: number;
  /** Tokens in the micro-batch set by setBatch. */
  private n = 0;
  /** LoRA: the A and B of each adapted matrix, by its name, and the settings. */
  private readonly lora: Map<string, { a: ParamTensor; b: ParamTensor; index: number }>;
  private readonly loraOptions?: Required<LoraOptions>;
  /**
   * forwardBackward passes made, the key of LoRA's dropout masks. A resumed run sets it to
   * steps × accumulation so that it draws the masks an uninterrupted run would.
   */
  loraPass = 0;
  /** Dropout is on inside forwardBackward only. */
  private training = false;

  private constructor(
    config: LlamaConfig,
    o: ReturnType<typeof resolveOptions>,
    rt: Runtime,
    l: ReturnType<typeof layout>,
  ) {
    this.config = config;
    this.batch = o.batch;
    this.seq = o.seq;
    this.recompute = o.recompute;
    this.tiedEmbeddings = o.tiedEmbeddings;
    this.rt = rt;
    this.ops = new TrainOps(rt, 0);
    this.r = l.regions;
    this.params = l.params;
    this.memory = l.memory;
    this.byName = new Map(l.params.map((p) => [p.name, p]));
    const get = (name: string) => this.byName.get(name)!;
    this.embedding = get("token_embd.weight");
    this.outputNorm = get("output_norm.weight");
    this.output = o.tiedEmbeddings ? this.embedding : get("output.weight");
    this.layers = [];
    for (let i = 0; i < config.layers; i++) {
      const p = `blk.${i}.`;
      this.layers.push({
        attnNorm: get(`${p}attn_norm.weight`),
        wq: get(`${p}attn_q.weight`),
        wk: get(`${p}attn_k.weight`),
        wv: get(`${p}attn_v.weight`),
        wo: get(`${p}attn_output.weight`),
        ffnNorm: get(`${p}ffn_norm.weight`),
        gate: get(`${p}ffn_gate.weight`),
        up: get(`${p}ffn_up.weight`),
        down: get(`${p}ffn_down.weight`),
      });
    }
    this.vocabPad = align4(config.vocab);
    this.lora = new Map();
    for (const p of l.params) {
      if (!p.loraOf) continue;
      const entry = this.lora.get(p.loraOf) ?? { a: p, b: p, index: this.lora.size };
      entry[p.name.endsWith(".lora_a") ? "a" : "b"] = p;
      this.lora.set(p.loraOf, entry);
    }
    if (o.lora) this.loraOptions = { dropout: 0, seed: 0, ...o.lora };
    const c = config;
    const tables = ropeTables(c.contextLength, c.rope.dim, c.rope.freqBase, c.rope.freqScale);
    this.f32(this.r.ropeCos, tables.cos.length).set(tables.cos);
    this.f32(this.r.ropeSin, tables.sin.length).set(tables.sin);
  }

  /** Allocates the model (weights zero; see `initialize` and `setWeights`) and starts its threads. */
  static async create(config: LlamaConfig, options: TrainModelOptions): Promise<LlamaTrainModel> {
    checkTrainConfig(config, options.seq);
    if (!Number.isInteger(options.batch) || options.batch < 1)
      throw new UserError(`batch size must be a positive integer, got ${options.batch}`);
    const o = resolveOptions(options);
    const memory = trainMemory(config, options);
    checkMemoryFits(memory, "training this model");
    const rt = await Runtime.create({ threads: o.threads, shardBytes: [memory.total + 4096] });
    try {
      const l = layout(config, o, (bytes) => rt.alloc(0, bytes, ALIGN));
      return new LlamaTrainModel(config, o, rt, l);
    } catch (e) {
      await rt.dispose();
      throw e;
    }
  }

  /**
   * A model with the weights of a Llama GGUF file, for fine-tuning. Trainable tensors become f32;
   * a frozen matrix keeps its file format (f32, f16, bf16, Q4_0 ... Q6_K) unless `formatOf` says
   * otherwise (then it is converted row by row: decoded, and encoded again for a quantized
   * format), so a quantized base stays quantized. Embedding, output head and norms are f32. LoRA
   * tensors start as `initializeLora` makes them.
   */
  static async load(
    path: string,
    options: Omit<TrainModelOptions, "tiedEmbeddings">,
  ): Promise<LlamaTrainModel> {
    const header = readGgufHeader(path);
    const embd = header.tensor("token_embd.weight");
    if (!embd) throw new UserError(`${path}: tensor token_embd.weight is missing`);
    const config = llamaConfigFromMetadata(metadataGetter(header), path, embd.dims[1] ?? 1);
    const tiedEmbeddings = !header.tensor("output.weight");
    if (header.tensor("rope_freqs.weight"))
      throw new UserError(
        `${path}: training a model with rope_freqs.weight (Llama 3.1 rope scaling) is not supported`,
      );
    if (config.rope.yarnOriginalContext !== undefined || config.rope.attnFactor !== undefined)
      throw new UserError(
        `${path}: training a model with ${config.rope.yarnOriginalContext !== undefined ? "YaRN rope scaling" : "rope.scaling.attn_factor"} is not supported`,
      );
    const trainable = options.trainable ?? (() => true);
    const formatOf = (name: string): WeightFormat => {
      if (options.formatOf) return options.formatOf(name);
      const t = header.tensor(name);
      const f = t && formatOfType(t.type);
      if (!f)
        throw new UserError(
          `${path}: tensor ${name} has type ${t ? ggmlTypeName(t.type) : "?"}, which cannot be trained from`,
        );
      return f;
    };
    const model = await LlamaTrainModel.create(config, { ...options, trainable, formatOf, tiedEmbeddings });
    try {
      const fd = openSync(path, "r");
      try {
        for (const p of model.params) {
          if (p.loraOf) continue;
          const t = header.tensor(p.name);
          if (!t) throw new UserError(`${path}: tensor ${p.name} is missing`);
          if (t.dims.length !== p.dims.length || t.dims.some((d, i) => d !== p.dims[i])) {
            throw new UserError(`${path}: tensor ${p.name} has shape [${t.dims}], expected [${p.dims}]`);
          }
          if (typeOfFormat(p.weight.format) === t.type) {
            readTensorInto(fd, t, model.storedBytes(p), path);
            continue;
          }
          if (!formatOfType(t.type)) {
            throw new UserError(
              `${path}: tensor ${p.name} is ${ggmlTypeName(t.type)} and cannot be stored as ${p.weight.format}`,
            );
          }
          const bytes = new Uint8Array(t.byteSize);
          readTensorInto(fd, t, bytes, path);
          const cols = p.dims[0]!;
          const rows = p.length / cols;
          const inRow = t.byteSize / rows;
          const format = p.weight.format;
          const f32 = format === "F32" ? model.weights(p) : undefined;
          const stored = model.storedBytes(p);
          const outRow = stored.length / rows;
          for (let r = 0; r < rows; r++) {
            const row = dequantizeRow(t.type, bytes.subarray(r * inRow, (r + 1) * inRow), cols);
            if (f32) f32.set(row, r * cols);
            else quantizeRow(typeOfFormat(format), row, stored.subarray(r * outRow, (r + 1) * outRow));
          }
        }
      } finally {
        closeSync(fd);
      }
      if (options.lora) model.initializeLora();
      return model;
    } catch (e) {
      await model.dispose();
      throw e;
    }
  }

  get threads(): number {
    return this.rt.threads;
  }

  /** The tensor of a GGUF name. */
  param(name: string): ParamTensor {
    const p = this.byName.get(name);
    if (!p) throw new Error(`no tensor ${name}`);
    return p;
  }

  /** Elements that train. */
  get trainableCount(): number {
    return this.params.reduce((s, p) => s + (p.trainable ? p.length : 0), 0);
  }

  /** Elements of every tensor. */
  get parameterCount(): number {
    return this.params.reduce((s, p) => s + p.length, 0);
  }

  private f32(offset: number, length: number): Float32Array {
    return this.rt.f32(0, offset, length);
  }

  private i32(offset: number, length: number): Int32Array {
    return new Int32Array(this.rt.memories[0]!.buffer, offset, length);
  }

  /** A live view of an f32 tensor's values (rows × cols, padding rows excluded). */
  weights(p: ParamTensor): Float32Array {
    if (p.weight.format !== "F32") throw new Error(`${p.name} is stored as ${p.weight.format}`);
    return this.f32(p.weight.offset, p.length);
  }

  /** A live view of a tensor's gradient. */
  gradient(p: ParamTensor): Float32Array {
    if (!p.trainable) throw new Error(`${p.name} is frozen`);
    return this.f32(p.grad, p.length);
  }

  /** Live views of a tensor's AdamW moments. */
  moments(p: ParamTensor): { m: Float32Array; v: Float32Array } {
    if (!p.trainable) throw new Error(`${p.name} is frozen`);
    return { m: this.f32(p.m, p.length), v: this.f32(p.v, p.length) };
  }

  /** The raw bytes of a tensor as stored (f32 or its quantized format), padding rows excluded. */
  storedBytes(p: ParamTensor): Uint8Array {
    const b = BLOCK[p.weight.format];
    return this.rt.u8(0, p.weight.offset, (p.length / b.size) * b.bytes);
  }

  /**
   * Random initial weights from `seed`: matrices N(0, 0.02), the projections into the residual
   * stream (attn_output, ffn_down) scaled by 1/sqrt(2·layers) as GPT-2 does, norm weights 1.
   */
  initialize(seed: number): void {
    const rng = new Rng(seed);
    const residualScale = 1 / Math.sqrt(2 * this.config.layers);
    for (const p of this.params) {
      if (p.weight.format !== "F32")
        throw new Error(`${p.name}: cannot initialize a ${p.weight.format} tensor`);
      const w = this.weights(p);
      if (!p.decay) {
        w.fill(1);
        continue;
      }
      const residual = p.name.endsWith("attn_output.weight") || p.name.endsWith("ffn_down.weight");
      rng.fillNormal(w, 0.02 * (residual ? residualScale : 1));
    }
  }

  /**
   * LoRA's initial values, as PEFT sets them: A uniform in ±1/sqrt(in) (Kaiming-uniform with
   * a = √5) drawn from the LoRA seed, B zero, so the adapted model starts equal to its base.
   */
  initializeLora(): void {
    const rng = new Rng(this.loraOptions?.seed ?? 0);
    for (const { a, b } of this.lora.values()) {
      const bound = 1 / Math.sqrt(a.weight.cols);
      const w = this.weights(a);
      for (let i = 0; i < w.length; i++) w[i] = (2 * rng.nextFloat() - 1) * bound;
      this.weights(b).fill(0);
    }
  }

  /** The adapter being trained: A and B of every adapted matrix, copied out. */
  loraTensors(): LoraTensor[] {
    return [...this.lora].map(([base, { a, b }]) => ({
      base,
      rank: a.weight.rows,
      inFeatures: a.weight.cols,
      outFeatures: b.weight.rows,
      a: this.weights(a).slice(),
      b: this.weights(b).slice(),
    }));
  }

  /** Clears every gradient (the optimizer also clears them after each update). */
  zeroGradients(): void {
    for (const p of this.params) if (p.trainable) this.ops.fillZero(p.grad, p.weight.rows * p.weight.cols);
    this.ops.flush();
  }

  /**
   * Copies a micro-batch into memory, checking ids, targets and positions. Returns the number of
   * tokens with a target.
   */
  setBatch(b: TokenBatch): number {
    const rows = b.rows ?? this.batch;
    const seq = b.seq ?? this.seq;
    const c = this.config;
    const n = rows * seq;
    if (
      !(
        Number.isInteger(rows) &&
        rows >= 1 &&
        rows <= this.batch &&
        Number.isInteger(seq) &&
        seq >= 1 &&
        seq <= this.seq
      )
    )
      throw new UserError(`batch: ${rows}×${seq} tokens do not fit the model's ${this.batch}×${this.seq}`);
    if (b.tokens.length !== n || b.targets.length !== n) {
      throw new UserError(
        `batch: expected ${n} tokens and targets, got ${b.tokens.length} and ${b.targets.length}`,
      );
    }
    for (let t = 0; t < n; t++) {
      const id = b.tokens[t]!;
      if (!(id >= 0 && id < c.vocab))
        throw new UserError(`batch: token id ${id} is outside the vocabulary of ${c.vocab}`);
      const target = b.targets[t]!;
      if (!(target >= -1 && target < c.vocab))
        throw new UserError(`batch: target ${target} is outside the vocabulary of ${c.vocab}`);
    }
    this.i32(this.r.ids, n).set(b.tokens);
    this.i32(this.r.targets, n).set(b.targets);
    const pos = this.i32(this.r.positions, n);
    if (b.positions) {
      if (b.positions.length !== n)
        throw new UserError(`batch: expected ${n} positions, got ${b.positions.length}`);
      for (let t = 0; t < n; t++) {
        const p = b.positions[t]!;
        if (!(p >= 0 && p < c.contextLength))
          throw new UserError(`batch: position ${p} is outside the context length ${c.contextLength}`);
      }
      pos.set(b.positions);
    } else {
      for (let t = 0; t < n; t++) pos[t] = t % seq;
    }
    if (b.segments && b.segments.length !== n)
      throw new UserError(`batch: expected ${n} segment ids, got ${b.segments.length}`);
    const start = this.i32(this.r.segStart, n);
    const end = this.i32(this.r.segEnd, n);
    for (let t = 0; t < n; t++) {
      const same = t % seq !== 0 && (!b.segments || b.segments[t] === b.segments[t - 1]);
      start[t] = same ? start[t - 1]! : t;
    }
    for (let t = n - 1; t >= 0; t--) end[t] = t + 1 < n && start[t + 1] === start[t] ? end[t + 1]! : t + 1;
    this.n = n;
    let count = 0;
    for (let t = 0; t < n; t++) if (b.targets[t]! >= 0) count++;
    return count;
  }

  private geometry(): AttentionGeometry {
    const c = this.config;
    return {
      nHeads: c.heads,
      nKvHeads: c.kvHeads,
      headDim: c.headDim,
      segStart: this.r.segStart,
      segEnd: this.r.segEnd,
      scratch: this.r.attScratch,
      scratchStride: 4 * this.seq * 4,
    };
  }

  private acts(l: number): LayerActs {
    return this.r.acts[this.recompute ? 0 : l]!;
  }

  /** out (n × rows) (+)= x·Wᵀ for any stored format, plus W's LoRA path when it has one. */
  private linear(p: ParamTensor, x: number, n: number, out: number, acc: boolean): void {
    this.ops.matmul(p.weight, x, n, out, acc, this.r.xq);
    this.loraForward(p, x, n, out);
  }

  /** The geometry of an adapted matrix's LoRA kernels in the current pass (dropout only in training). */
  private loraGeometry(p: ParamTensor, index: number, rank: number): LoraGeometry {
    const o = this.loraOptions!;
    const g = {
      inF: p.weight.cols,
      outF: p.weight.rows,
      rank,
      scale: o.alpha / o.rank,
      threshold: 0,
      seed: 0,
    };
    if (!this.training || o.dropout === 0) return g;
    return {
      ...g,
      scale: g.scale / (1 - o.dropout),
      threshold: dropoutThreshold(o.dropout),
      seed: loraDropoutSeed(o.seed, this.loraPass, index),
    };
  }

  /**
   * LoRA forward of an adapted W: U = (s·dropout(x))·Aᵀ, kept for the backward pass, and
   * out += U·Bᵀ when `out` is given (the recomputing backward pass needs U alone).
   */
  private loraForward(p: ParamTensor, x: number, n: number, out: number): void {
    const lora = this.lora.get(p.name);
    if (!lora) return;
    const r = this.r;
    this.ops.loraForward(
      { x, a: lora.a.weight.offset, b: lora.b.weight.offset, u: r.loraU.get(p.name)!, out },
      this.loraGeometry(p, lora.index, lora.a.weight.rows),
      n,
      out !== 0,
      r.loraX,
      p.weight.cols * 4,
    );
  }

  /**
   * LoRA backward of an adapted W (n × in input x, upstream dy): dB += dyᵀ·U, dU = dy·B,
   * dA += dUᵀ·(s·dropout(x)), and dx += dropout(dU·A)·s when dx is given.
   */
  private loraBackward(p: ParamTensor, x: number, n: number, dy: number, dx: number): void {
    const lora = this.lora.get(p.name)!;
    const r = this.r;
    this.ops.loraBackward(
      {
        x,
        dy,
        a: lora.a.weight.offset,
        b: lora.b.weight.offset,
        u: r.loraU.get(p.name)!,
        du: r.loraDu,
        dx,
        da: lora.a.grad,
        db: lora.b.grad,
      },
      this.loraGeometry(p, lora.index, lora.a.weight.rows),
      n,
    );
  }

  /** Records the forward pass of layer l over the current micro-batch. */
  private layerForward(l: number, writeOutput: boolean): void {
    const c = this.config;
    const ops = this.ops;
    const n = this.n;
    const L = this.layers[l]!;
    const A = this.acts(l);
    const x = this.r.xs[l]!;
    ops.rmsNormForward(x, L.attnNorm.weight.offset, A.xn1, A.rstd1, c.dim, c.normEps, n);
    this.linear(L.wq, A.xn1, n, A.q, false);
    this.linear(L.wk, A.xn1, n, A.k, false);
    this.linear(L.wv, A.xn1, n, A.v, false);
    const { positions, ropeCos, ropeSin } = this.r;
    ops.ropeRotate(A.q, positions, ropeCos, ropeSin, n, c.heads, c.headDim, c.rope.dim, false);
    ops.ropeRotate(A.k, positions, ropeCos, ropeSin, n, c.kvHeads, c.headDim, c.rope.dim, false);
    ops.attentionForward(A.q, A.k, A.v, A.att, A.lse, n, this.geometry());
    ops.copy(A.xmid, x, n * c.dim * 4);
    this.linear(L.wo, A.att, n, A.xmid, true);
    ops.rmsNormForward(A.xmid, L.ffnNorm.weight.offset, A.xn2, A.rstd2, c.dim, c.normEps, n);
    this.linear(L.gate, A.xn2, n, A.gate, false);
    this.linear(L.up, A.xn2, n, A.up, false);
    ops.swigluForward(A.gate, A.up, A.h, n * c.ffn);
    if (writeOutput) {
      const y = this.r.xs[l + 1]!;
      ops.copy(y, A.xmid, n * c.dim * 4);
      this.linear(L.down, A.h, n, y, true);
    } else {
      this.loraForward(L.down, A.h, n, 0);
    }
  }

  /** Records the embedding and every layer. */
  private forwardLayers(): void {
    this.ops.embeddingForward(
      this.embedding.weight.offset,
      this.r.ids,
      this.r.xs[0]!,
      this.config.dim,
      this.n,
    );
    for (let l = 0; l < this.config.layers; l++) this.layerForward(l, true);
  }

  /** An f32 weight transposed into tW (cols × rows), for input gradients. */
  private transposedWeight(p: ParamTensor): number {
    const w = p.weight;
    if (w.format !== "F32") throw new Error(`transposedWeight: ${p.name} is ${w.format}`);
    this.ops.transpose(w.offset, this.r.tW, w.rows, w.cols, w.rows);
    return this.r.tW;
  }

  /**
   * dx (n × cols) (+)= dy·W for a non-f32 W (rows × cols), a block of DEQUANT_ROWS rows at a time:
   * the block decoded to f32 and transposed, times the block's columns of dy (dy is transposed
   * once and each block transposed back), so no f32 copy of the whole matrix is ever held.
   */
  private inputGradientByBlocks(w: Weight, dy: number, n: number, dx: number, acc: boolean): void {
    const ops = this.ops;
    const r = this.r;
    const nPad = align4(n);
    const bytesPerRow = rowBytes(w.format, w.cols);
    ops.transpose(dy, r.tDy, n, w.rows, nPad);
    for (let r0 = 0; r0 < w.rows; r0 += DEQUANT_ROWS) {
      const m = Math.min(DEQUANT_ROWS, w.rows - r0);
      ops.dequantize({ ...w, offset: w.offset + r0 * bytesPerRow, rows: m }, r.dequant);
      ops.transpose(r.dequant, r.dequantT, m, w.cols, m);
      ops.transpose(r.tDy + r0 * nPad * 4, r.dyBlock, m, nPad, m);
      ops.matmul(
        { shard: 0, offset: r.dequantT, format: "F32", rows: w.cols, cols: m },
        r.dyBlock,
        n,
        dx,
        acc || r0 > 0,
      );
    }
  }

  /**
   * Backward of y_i = x·W_iᵀ (+ LoRA) for linears that share the input x (n × cols):
   * dW_i += dy_iᵀ·x for the trainable W_i, LoRA gradients for the adapted ones, and
   * dx (+)= Σ_i dy_i·W_i (+ LoRA's part) when dx is given.
   */
  private linearsBackward(
    x: number,
    cols: number,
    n: number,
    parts: { p: ParamTensor; dy: number }[],
    dx: number,
    dxAcc: boolean,
  ): void {
    const ops = this.ops;
    const nPad = align4(n);
    if (parts.some((q) => q.p.trainable)) ops.transpose(x, this.r.tX, n, cols, nPad);
    let acc = dxAcc;
    for (const { p, dy } of parts) {
      const rows = p.weight.rows;
      if (p.trainable) {
        ops.transpose(dy, this.r.tDy, n, rows, nPad);
        ops.matmul(
          { shard: 0, offset: this.r.tX, format: "F32", rows: cols, cols: nPad },
          this.r.tDy,
          rows,
          p.grad,
          true,
        );
      }
      if (dx) {
        if (p.weight.format === "F32") {
          const wT = this.transposedWeight(p);
          ops.matmul({ shard: 0, offset: wT, format: "F32", rows: cols, cols: rows }, dy, n, dx, acc);
        } else {
          this.inputGradientByBlocks(p.weight, dy, n, dx, acc);
        }
        acc = true;
      }
    }
    for (const { p, dy } of parts) if (this.lora.has(p.name)) this.loraBackward(p, x, n, dy, dx);
  }

  /** Records the backward pass of layer l; dres holds dLoss/d(layer output) and becomes dLoss/d(input). */
  private layerBackward(l: number): void {
    const c = this.config;
    const ops = this.ops;
    const n = this.n;
    const r = this.r;
    const L = this.layers[l]!;
    if (this.recompute) this.layerForward(l, false);
    const A = this.acts(l);
    const q = c.heads * c.headDim;
    // feed-forward: y = xmid + (silu(xn2·Wgᵀ) ∘ xn2·Wuᵀ)·Wdᵀ
    this.linearsBackward(A.h, c.ffn, n, [{ p: L.down, dy: r.dres }], r.dh, false);
    ops.swigluBackward(A.gate, A.up, r.dh, r.dgate, r.dup, n * c.ffn);
    this.linearsBackward(
      A.xn2,
      c.dim,
      n,
      [
        { p: L.gate, dy: r.dgate },
        { p: L.up, dy: r.dup },
      ],
      r.dxn,
      false,
    );
    if (L.ffnNorm.trainable) ops.rmsNormBackwardWeight(A.xmid, A.rstd2, r.dxn, L.ffnNorm.grad, c.dim, n);
    ops.rmsNormBackward(A.xmid, L.ffnNorm.weight.offset, A.rstd2, r.dxn, r.dres, c.dim, n, true);
    // attention: xmid = x + attention(rope(xn1·Wqᵀ), rope(xn1·Wkᵀ), xn1·Wvᵀ)·Woᵀ
    this.linearsBackward(A.att, q, n, [{ p: L.wo, dy: r.dres }], r.datt, false);
    ops.attentionBackward(
      { q: A.q, k: A.k, v: A.v, out: A.att, dout: r.datt, lse: A.lse, delta: r.delta },
      { dq: r.dq, dk: r.dk, dv: r.dv },
      n,
      this.geometry(),
    );
    ops.ropeRotate(r.dq, r.positions, r.ropeCos, r.ropeSin, n, c.heads, c.headDim, c.rope.dim, true);
    ops.ropeRotate(r.dk, r.positions, r.ropeCos, r.ropeSin, n, c.kvHeads, c.headDim, c.rope.dim, true);
    this.linearsBackward(
      A.xn1,
      c.dim,
      n,
      [
        { p: L.wq, dy: r.dq },
        { p: L.wk, dy: r.dk },
        { p: L.wv, dy: r.dv },
      ],
      r.dxn,
      false,
    );
    const x = r.xs[l]!;
    if (L.attnNorm.trainable) ops.rmsNormBackwardWeight(x, A.rstd1, r.dxn, L.attnNorm.grad, c.dim, n);
    ops.rmsNormBackward(x, L.attnNorm.weight.offset, A.rstd1, r.dxn, r.dres, c.dim, n, true);
  }

  /**
   * Records the final norm, the output head and the loss over tokens [t0, t1) chunk by chunk;
   * with `dscale` (backward) the head's gradients too, leaving dLoss/d(last layer output) in dres.
   */
  private head(t0: number, t1: number, dscale: number | undefined): void {
    const c = this.config;
    const ops = this.ops;
    const r = this.r;
    const n = t1 - t0;
    const xf = r.xs[c.layers]! + t0 * c.dim * 4;
    const xn = r.xnF + t0 * c.dim * 4;
    const rstd = r.rstdF + t0 * 4;
    ops.rmsNormForward(xf, this.outputNorm.weight.offset, xn, rstd, c.dim, c.normEps, n);
    const out = this.output;
    const backward = dscale !== undefined;
    const wT = backward ? this.transposedWeight(out) : 0;
    const chunk = headChunk(this.batch * this.seq);
    for (let a = 0; a < n; a += chunk) {
      const m = Math.min(chunk, n - a);
      const xc = xn + a * c.dim * 4;
      this.linear(out, xc, m, r.logits, false);
      ops.crossEntropy(
        r.logits,
        r.targets + (t0 + a) * 4,
        r.losses + (t0 + a) * 4,
        c.vocab,
        this.vocabPad,
        dscale ?? 0,
        m,
      );
      if (!backward) continue;
      ops.matmul(
        { shard: 0, offset: wT, format: "F32", rows: c.dim, cols: this.vocabPad },
        r.logits,
        m,
        r.dxn + (t0 + a) * c.dim * 4,
        false,
      );
      if (out.trainable) {
        const mPad = align4(m);
        ops.transpose(xc, r.tX, m, c.dim, mPad);
        ops.transpose(r.logits, r.tDy, m, this.vocabPad, mPad);
        ops.matmul(
          { shard: 0, offset: r.tX, format: "F32", rows: c.dim, cols: mPad },
          r.tDy,
          this.vocabPad,
          out.grad,
          true,
        );
      }
    }
    if (backward) {
      if (this.outputNorm.trainable)
        ops.rmsNormBackwardWeight(xf, rstd, r.dxn, this.outputNorm.grad, c.dim, n);
      ops.rmsNormBackward(xf, this.outputNorm.weight.offset, rstd, r.dxn, r.dres, c.dim, n, false);
    }
  }

  /** The per-token losses of the last forward pass (0 where the target is −1). */
  private lossSum(): number {
    const losses = this.f32(this.r.losses, this.n);
    let s = 0;
    for (let t = 0; t < this.n; t++) s += losses[t]!;
    return s;
  }

  /**
   * Forward and backward over the micro-batch set by setBatch: adds dscale·∂(Σ token losses)/∂θ
   * to every trainable tensor's gradient. dscale is 1 / (tokens with a target in the whole
   * optimizer step), so accumulated micro-batches give the gradient of the mean loss. Returns the
   * micro-batch's summed loss.
   */
  forwardBackward(dscale: number): number {
    if (this.n === 0) throw new Error("forwardBackward: no batch set");
    const c = this.config;
    this.training = true;
    try {
      this.forwardLayers();
      this.head(0, this.n, dscale);
      for (let l = c.layers - 1; l >= 0; l--) this.layerBackward(l);
      if (this.embedding.trainable)
        this.ops.embeddingBackward(this.embedding.grad, this.r.ids, this.r.dres, c.dim, this.n, c.vocab);
      this.ops.flush();
    } finally {
      this.training = false;
      this.loraPass++;
    }
    return this.lossSum();
  }

  /** Forward only: the summed loss of the micro-batch set by setBatch. */
  evaluate(): number {
    if (this.n === 0) throw new Error("evaluate: no batch set");
    this.forwardLayers();
    this.head(0, this.n, undefined);
    this.ops.flush();
    return this.lossSum();
  }

  /**
   * Logits of the next token after `tokens` (one sequence, positions 0.., at most seq tokens).
   * Returns a copy.
   */
  nextTokenLogits(tokens: ArrayLike<number>): Float32Array {
    const n = tokens.length;
    if (n < 1 || n > this.seq)
      throw new Error(`nextTokenLogits: ${n} tokens, the model takes 1 to ${this.seq}`);
    this.setBatch({ rows: 1, seq: n, tokens: Int32Array.from(tokens), targets: new Int32Array(n).fill(-1) });
    this.forwardLayers();
    const c = this.config;
    const r = this.r;
    const last = r.xs[c.layers]! + (n - 1) * c.dim * 4;
    this.ops.rmsNormForward(last, this.outputNorm.weight.offset, r.xnF, r.rstdF, c.dim, c.normEps, 1);
    this.linear(this.output, r.xnF, 1, r.logits, false);
    this.ops.flush();
    return this.f32(r.logits, c.vocab).slice();
  }

  /**
   * Σ g² over the gradients of the trainable tensors, each summed in fixed blocks and the blocks
   * added in order (the same value for any thread count).
   */
  gradientSumSquares(): number {
    const out = this.r.sumSquares;
    let at = out;
    const spans: [number, number][] = [];
    for (const p of this.params) {
      if (!p.trainable) continue;
      const blocks = Math.ceil(p.length / SUM_SQUARES_BLOCK);
      this.ops.sumSquares(p.grad, p.length, at);
      spans.push([at, blocks]);
      at += blocks * 8;
    }
    this.ops.flush();
    let s = 0;
    for (const [o, b] of spans) {
      const v = new Float64Array(this.rt.memories[0]!.buffer, o, b);
      for (let i = 0; i < b; i++) s += v[i]!;
    }
    return s;
  }

  async dispose(): Promise<void> {
    await this.rt.dispose();
  }
}
