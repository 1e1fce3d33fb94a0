// Training checkpoints as GGUF: the model's tensors under their llama.cpp names, the AdamW moments
// as adam_m.<name> and adam_v.<name>, the llama.* and tokenizer.* metadata, and the trainer's
// state (step, tokens seen, data position with its generator state, optimizer settings) under
// smallhammer.train.*. A checksum over every tensor byte guards against a damaged file; the write
// goes through a temporary file and a rename, so a crash leaves the previous checkpoint intact.
import { closeSync, openSync } from "node:fs";
import { UserError } from "../errors.js";
import { GGMLType } from "../formats/ggml-types.js";
import {
  type GgufHeader,
  GgufValueType,
  GgufWriter,
  readGgufHeader,
  readTensorInto,
} from "../formats/gguf.js";
import { type LlamaConfig, llamaConfigFromMetadata, metadataGetter } from "../model/config.js";
import { ggmlTypeOfFormat, type LlamaTrainModel, type ParamTensor } from "./model.js";
import type { ResolvedOptimizerOptions } from "./optimizer.js";
import type { TrainerState } from "./trainer.js";

export const CHECKPOINT_VERSION = 1;
const KEY = "smallhammer.train.";

/** Everything a checkpoint holds besides the tensors. */
export interface CheckpointInfo {
  config: LlamaConfig;
  tiedEmbeddings: boolean;
  batch: number;
  seq: number;
  accumulation: number;
  optimizer: ResolvedOptimizerOptions;
  trainer: TrainerState;
  /** Settings of the run that wrote it (e.g. pretrain's flags), JSON. */
  run: unknown;
}

/** Sets general.* and llama.* metadata describing a model of `c` (what llama.cpp reads). */
export function setLlamaMetadata(w: GgufWriter, c: LlamaConfig, name: string, fileType: number): void {
  w.setString("general.architecture", "llama");
  w.setString("general.name", name);
  w.setU32("general.file_type", fileType);
  w.setU32("general.quantization_version", 2);
  w.setU32("llama.context_length", c.contextLength);
  w.setU32("llama.embedding_length", c.dim);
  w.setU32("llama.block_count", c.layers);
  w.setU32("llama.feed_forward_length", c.ffn);
  w.setU32("llama.rope.dimension_count", c.rope.dim);
  w.setU32("llama.attention.head_count", c.heads);
  w.setU32("llama.attention.head_count_kv", c.kvHeads);
  w.setU32("llama.attention.key_length", c.headDim);
  w.setU32("llama.attention.value_length", c.headDim);
  w.setF32("llama.attention.layer_norm_rms_epsilon", c.normEps);
  w.setF32("llama.rope.freq_base", c.rope.freqBase);
  if (c.rope.freqScale !== 1) {
    w.setString("llama.rope.scaling.type", "linear");
    w.setF32("llama.rope.scaling.factor", 1 / c.rope.freqScale);
  }
  w.setU32("llama.vocab_size", c.vocab);
}

/** Copies the tokenizer.* metadata of a GGUF header (a model or a token cache's tokenizer). */
export function copyTokenizerMetadata(w: GgufWriter, from: GgufHeader): void {
  w.copyMetadataFrom(from, (key) => !key.startsWith("tokenizer."));
}

/** A 32-bit hash of byte regions in order: FNV-1a over each region's 32-bit words, then its tail bytes. */
export class Checksum {
  private h = 0x811c9dc5;

  update(bytes: Uint8Array): this {
    const words = bytes.length >>> 2;
    const u32 =
      bytes.byteOffset % 4 === 0
        ? new Uint32Array(bytes.buffer, bytes.byteOffset, words)
        : new Uint32Array(bytes.slice(0, words * 4).buffer);
    let h = this.h;
    for (let i = 0; i < words; i++) h = Math.imul(h ^ u32[i]!, 0x01000193);
    for (let i = words * 4; i < bytes.length; i++) h = Math.imul(h ^ bytes[i]!, 0x01000193);
    this.h = h;
    return this;
  }

  digest(): number {
    return this.h >>> 0;
  }
}

function checksum(parts: Iterable<Uint8Array>): number {
  const c = new Checksum();
  for (const p of parts) c.update(p);
  return c.digest();
}

/** The tensors of a checkpoint in file order: name, dims, type and the model bytes they hold. */
function checkpointTensors(
  model: LlamaTrainModel,
): { name: string; dims: number[]; type: GGMLType; bytes: Uint8Array }[] {
  const list = [];
  const f32Bytes = (offset: number, p: ParamTensor) => model.rt.u8(0, offset, p.length * 4);
  for (const p of model.params) {
    list.push({
      name: p.name,
      dims: p.dims,
      type: ggmlTypeOfFormat(p.weight.format),
      bytes: model.storedBytes(p),
    });
  }
  for (const p of model.params) {
    if (!p.trainable) continue;
    list.push({ name: `adam_m.${p.name}`, dims: p.dims, type: GGMLType.F32, bytes: f32Bytes(p.m, p) });
    list.push({ name: `adam_v.${p.name}`, dims: p.dims, type: GGMLType.F32, bytes: f32Bytes(p.v, p) });
  }
  return list;
}

/**
 * Writes `model` and the trainer's state to `path` (atomically: a temporary file, fsync, rename).
 * `tokenizer` is a GGUF header whose tokenizer.* metadata is copied (so export can make a model).
 */
export function saveCheckpoint(
  path: string,
  model: LlamaTrainModel,
  info: CheckpointInfo,
  tokenizer?: GgufHeader,
): void {
  const w = new GgufWriter();
  setLlamaMetadata(w, info.config, "smallhammer checkpoint", 0);
  if (tokenizer) copyTokenizerMetadata(w, tokenizer);
  const tensors = checkpointTensors(model);
  w.setU32(`${KEY}version`, CHECKPOINT_VERSION);
  w.setU32(`${KEY}step`, info.trainer.step);
  w.setU64(`${KEY}tokens_seen`, info.trainer.tokensSeen);
  w.setString(`${KEY}data_state`, JSON.stringify(info.trainer.data));
  w.setString(`${KEY}optimizer`, JSON.stringify(info.optimizer));
  w.setString(
    `${KEY}options`,
    JSON.stringify({
      batch: info.batch,
      seq: info.seq,
      accumulation: info.accumulation,
      tiedEmbeddings: info.tiedEmbeddings,
      trainable: model.params.filter((p) => p.trainable).map((p) => p.name),
    }),
  );
  w.setString(`${KEY}run`, JSON.stringify(info.run ?? null));
  w.setU32(`${KEY}checksum`, checksum(tensors.map((t) => t.bytes)));
  for (const t of tensors) w.addTensor(t.name, t.dims, t.type, t.bytes);
  w.write(path);
}

function jsonKey(h: GgufHeader, key: string): unknown {
  const kv = h.get(key);
  if (kv?.type !== GgufValueType.STRING)
    throw new UserError(`${h.path}: ${key} is missing; not a smallhammer checkpoint`);
  try {
    return JSON.parse(kv.value);
  } catch {
    throw new UserError(`${h.path}: ${key} is not valid JSON`);
  }
}

/** Reads a checkpoint's header and state (tensors are read by restoreCheckpoint). */
export function readCheckpoint(path: string): { header: GgufHeader; info: CheckpointInfo } {
  const h = readGgufHeader(path);
  const version = h.get(`${KEY}version`);
  if (version?.type !== GgufValueType.UINT32)
    throw new UserError(`${path}: not a smallhammer training checkpoint`);
  if (version.value !== CHECKPOINT_VERSION) {
    throw new UserError(
      `${path}: checkpoint version ${version.value} is not supported (expected ${CHECKPOINT_VERSION})`,
    );
  }
  const embd = h.tensor("token_embd.weight");
  if (!embd) throw new UserError(`${path}: tensor token_embd.weight is missing`);
  const config = llamaConfigFromMetadata(metadataGetter(h), path, embd.dims[1] ?? 1);
  const options = jsonKey(h, `${KEY}options`) as {
    batch: number;
    seq: number;
    accumulation: number;
    tiedEmbeddings: boolean;
  };
  const step = h.getNumber(`${KEY}step`);
  const tokensSeen = h.getNumber(`${KEY}tokens_seen`);
  return {
    header: h,
    info: {
      config,
      tiedEmbeddings: options.tiedEmbeddings,
      batch: options.batch,
      seq: options.seq,
      accumulation: options.accumulation,
      optimizer: jsonKey(h, `${KEY}optimizer`) as ResolvedOptimizerOptions,
      trainer: { step, tokensSeen, data: jsonKey(h, `${KEY}data_state`) },
      run: jsonKey(h, `${KEY}run`),
    },
  };
}

/** The checksum stored in a checkpoint's header. */
export function storedChecksum(header: GgufHeader): number {
  return header.getNumber(`${KEY}checksum`);
}

/**
 * Reads every tensor of the checkpoint at `path` into `model` (made with the checkpoint's
 * config) and checks the checksum. Throws a UserError when anything is missing, differs in
 * shape or type, or the bytes are not what was written.
 */
export function restoreCheckpoint(path: string, header: GgufHeader, model: LlamaTrainModel): void {
  const tensors = checkpointTensors(model);
  const fd = openSync(path, "r");
  try {
    for (const t of tensors) {
      const info = header.tensor(t.name);
      if (!info) throw new UserError(`${path}: tensor ${t.name} is missing`);
      const same =
        info.type === t.type &&
        info.dims.length === t.dims.length &&
        info.dims.every((d, i) => d === t.dims[i]);
      if (!same)
        throw new UserError(`${path}: tensor ${t.name} has shape [${info.dims}], expected [${t.dims}]`);
      readTensorInto(fd, info, t.bytes, path);
    }
  } finally {
    closeSync(fd);
  }
  const want = header.getNumber(`${KEY}checksum`);
  if (checksum(tensors.map((t) => t.bytes)) !== want) {
    throw new UserError(`${path}: the tensor data does not match its checksum (the file is damaged)`);
  }
}
