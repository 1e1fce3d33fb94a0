/**
 * GGUF → Hugging Face directory: config.json, generation_config.json, model.safetensors (or
 * shards of at most `maxShardBytes` with model.safetensors.index.json, as transformers' 5 GB
 * default), tokenizer.json and tokenizer_config.json with the chat template, so transformers (and
 * what builds on it: axolotl, torchtune, vLLM) loads the model. Tensors are dequantized and
 * written one at a time; q/k rows go back to rotate-half order.
 */
import { closeSync, mkdirSync, openSync, renameSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { join, resolve } from "node:path";
import { UserError } from "../errors.js";
import { GgufFile } from "../formats/gguf.js";
import { tensorPlan } from "../model/arch/index.js";
import { hfTensorName, type PlannedTensor } from "../model/arch/tensors.js";
import { llamaConfigFromMetadata, metadataGetter } from "../model/config.js";
import { permuteRopeRows } from "../model/lora.js";
import { f32ToBf16Array, f32ToF16Array } from "../quant/fp16.js";
import { dequantizeRow } from "../quant/reference.js";
import { tokenizerToHf } from "../tokenizer/hf-tokenizer.js";
import { Tokenizer } from "../tokenizer/index.js";
import { Progress } from "../util/progress.js";
import { convertArchitectureForGguf } from "./architectures.js";

export type HfDtype = "F32" | "F16" | "BF16";

export interface GgufToHfOptions {
  /** Weights' dtype in the safetensors files (default F32). */
  dtype?: HfDtype;
  /** Largest shard (default 5 GB, transformers' default). */
  maxShardBytes?: number;
  progress?: boolean;
}

export interface GgufToHfSummary {
  input: string;
  output: string;
  architecture: string;
  dtype: HfDtype;
  tensors: number;
  files: string[];
}

const TORCH_DTYPE: Record<HfDtype, string> = { F32: "float32", F16: "float16", BF16: "bfloat16" };

interface Planned {
  planned: PlannedTensor;
  hf: string;
  shape: number[];
  bytes: number;
}

function writeAll(fd: number, data: Uint8Array, path: string): void {
  let done = 0;
  try {
    while (done < data.length) done += writeSync(fd, data, done, data.length - done);
  } catch (e) {
    throw new UserError(`${path}: cannot write (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
}

/** Converts the GGUF model `input` into the Hugging Face directory `out`. */
export function convertGgufToHf(input: string, out: string, options: GgufToHfOptions = {}): GgufToHfSummary {
  const dtype = options.dtype ?? "F32";
  const maxShard = options.maxShardBytes ?? 5_000_000_000;
  const file = GgufFile.open(input);
  const tmp = `${resolve(out)}.tmp-${process.pid}`;
  try {
    const h = file.header;
    const get = metadataGetter(h);
    const embd = h.tensor("token_embd.weight");
    if (!embd) throw new UserError(`${input}: token_embd.weight is missing`);
    const arch = convertArchitectureForGguf(h.getString("general.architecture"), input);
    const config = llamaConfigFromMetadata(get, input, embd.dims[1] ?? 0);
    // (transformers has no plain scale of cos and sin; YaRN's attention_factor replaces its own)
    if (config.rope.attnFactor !== undefined) {
      throw new UserError(
        `${input}: rope.scaling.attn_factor ${config.rope.attnFactor} has no Hugging Face equivalent yet`,
      );
    }
    const plan = tensorPlan(
      h.getString("general.architecture"),
      config,
      (name) => h.tensor(name) !== undefined,
    );
    const elementBytes = dtype === "F32" ? 4 : 2;
    const tensors: Planned[] = plan.map((t) => {
      const info = h.tensor(t.name);
      if (!info) throw new UserError(`${input}: tensor ${t.name} is missing`);
      if (info.dims.length !== t.dims.length || info.dims.some((d, i) => d !== t.dims[i])) {
        throw new UserError(
          `${input}: tensor ${t.name} has dims [${info.dims.join(", ")}], expected [${t.dims.join(", ")}]`,
        );
      }
      const hf = hfTensorName(t.spec, t.layer);
      if (hf === undefined)
        throw new UserError(`${input}: convert: tensor ${t.name} has no Hugging Face equivalent yet`);
      const count = t.dims.reduce((a, b) => a * b, 1);
      const shape = t.spec.hfTransposed ? [...t.dims] : [...t.dims].reverse();
      return { planned: t, hf, shape, bytes: count * elementBytes };
    });
    const tied = !h.tensor("output.weight");

    // Shards: consecutive tensors up to maxShard bytes each.
    const shards: Planned[][] = [[]];
    let size = 0;
    for (const t of tensors) {
      if (size > 0 && size + t.bytes > maxShard) {
        shards.push([]);
        size = 0;
      }
      shards[shards.length - 1]!.push(t);
      size += t.bytes;
    }
    const shardName = (i: number) =>
      shards.length === 1
        ? "model.safetensors"
        : `model-${String(i + 1).padStart(5, "0")}-of-${String(shards.length).padStart(5, "0")}.safetensors`;

    // The tokenizer first: one the Hugging Face side cannot express stops before any weight is written.
    const tokenizer = Tokenizer.fromGgufMetadata(get);
    const description = {
      model: tokenizer.model,
      pre: tokenizer.pre,
      tokens: Array.from({ length: tokenizer.vocabSize }, (_, i) => tokenizer.tokenText(i)),
      scores: get("tokenizer.ggml.scores") as ArrayLike<number> | undefined,
      tokenTypes: Int32Array.from({ length: tokenizer.vocabSize }, (_, i) => tokenizer.tokenType(i)),
      merges: get("tokenizer.ggml.merges") as string[] | undefined,
      bosId: tokenizer.bosId,
      eosId: tokenizer.eosId,
      unkId: tokenizer.unkId,
      padId: tokenizer.padId,
      addBos: tokenizer.addBos,
      addEos: tokenizer.addEos,
      addSpacePrefix: tokenizer.addSpacePrefix,
    };
    const chatTemplate = get("tokenizer.chat_template");
    const hfTok = tokenizerToHf(description, {
      chatTemplate: typeof chatTemplate === "string" ? chatTemplate : undefined,
      contextLength: config.contextLength,
    });
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { recursive: true });
    const bar = options.progress ? new Progress("convert", tensors.length, "tensors") : undefined;
    const weightMap: Record<string, string> = {};
    try {
      shards.forEach((shard, i) => {
        const name = shardName(i);
        const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
        let offset = 0;
        for (const t of shard) {
          header[t.hf] = { dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes] };
          offset += t.bytes;
          weightMap[t.hf] = name;
        }
        let text = JSON.stringify(header);
        text += " ".repeat((8 - (Buffer.byteLength(text) % 8)) % 8);
        const jsonBytes = Buffer.from(text, "utf8");
        const prefix = Buffer.alloc(8);
        prefix.writeBigUInt64LE(BigInt(jsonBytes.length));
        const fd = openSync(join(tmp, name), "w");
        try {
          writeAll(fd, prefix, name);
          writeAll(fd, jsonBytes, name);
          for (const t of shard) {
            writeAll(fd, tensorBytes(file, t, config, dtype), name);
            bar?.tick();
          }
        } finally {
          closeSync(fd);
        }
      });
    } finally {
      bar?.done();
    }
    const files = shards.map((_, i) => shardName(i));
    if (shards.length > 1) {
      const total = tensors.reduce((s, t) => s + t.bytes, 0);
      writeJson(join(tmp, "model.safetensors.index.json"), {
        metadata: { total_size: total },
        weight_map: weightMap,
      });
      files.push("model.safetensors.index.json");
    }

    writeJson(join(tmp, "tokenizer.json"), hfTok.tokenizer);
    writeJson(join(tmp, "tokenizer_config.json"), hfTok.config);
    const ids = { bos_token_id: tokenizer.bosId ?? null, eos_token_id: tokenizer.eosId ?? null };
    writeJson(join(tmp, "config.json"), {
      ...arch.config(config, (name) => h.tensor(name) !== undefined),
      tie_word_embeddings: tied,
      ...ids,
      torch_dtype: TORCH_DTYPE[dtype],
    });
    writeJson(join(tmp, "generation_config.json"), {
      ...ids,
      ...(tokenizer.padId !== undefined ? { pad_token_id: tokenizer.padId } : {}),
    });
    files.push("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json");

    // Each file moves into place whole; files of the directory that are not ours are left alone.
    mkdirSync(out, { recursive: true });
    for (const name of files) renameSync(join(tmp, name), join(out, name));
    return { input, output: out, architecture: arch.gguf, dtype, tensors: tensors.length, files };
  } finally {
    file.close();
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** The cols × rows transpose of a rows × cols row-major matrix. */
export function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) for (let k = 0; k < cols; k++) out[k * rows + r] = x[r * cols + k]!;
  return out;
}

function writeJson(path: string, value: unknown): void {
  writeFileSync(path, `${JSON.stringify(value, null, 2)}\n`);
}

/**
 * One tensor dequantized to f32, q/k rows put in rotate-half order (Llama), Conv1D matrices
 * transposed to [in, out] (GPT-2), 1 + w norms back to w (Gemma), encoded as `dtype`.
 */
function tensorBytes(
  file: GgufFile,
  t: Planned,
  c: ReturnType<typeof llamaConfigFromMetadata>,
  dtype: HfDtype,
): Uint8Array {
  const info = file.header.tensor(t.planned.name)!;
  const src = file.readTensor(info);
  const cols = info.dims[0]!;
  const rows = info.elementCount / cols;
  const inRow = src.length / rows;
  const decoded = new Float32Array(info.elementCount);
  for (let r = 0; r < rows; r++) {
    dequantizeRow(
      info.type,
      src.subarray(r * inRow, (r + 1) * inRow),
      cols,
      decoded.subarray(r * cols, (r + 1) * cols),
    );
  }
  const permute = t.planned.spec.hfPermute;
  let values: Float32Array = decoded;
  if (permute) values = permuteRopeRows(values, rows, cols, permute === "heads" ? c.heads : c.kvHeads, true);
  if (t.planned.spec.hfTransposed) values = transpose(values, rows, cols);
  if (t.planned.spec.hfPlusOne) values = values.map((v) => v - 1);
  const out = dtype === "F32" ? values : dtype === "F16" ? f32ToF16Array(values) : f32ToBf16Array(values);
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}
