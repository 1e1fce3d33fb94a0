/**
 * llama2.c checkpoints (Karpathy's model.bin) and tokenizer.bin → GGUF llama.
 *
 * model.bin, legacy (version 0): seven int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 * vocab_size, seq_len; a negative vocab_size means the classifier is a matrix of its own, a
 * positive one that it shares the embedding), then f32 arrays with each kind's layers stacked:
 * embedding, attention norms, wq, wk, wv, wo, ffn norms, w1, w2, w3, final norm, the two RoPE
 * tables (unused), and the classifier when not shared. Version 1: magic "ak42", version 1, the
 * seven ints, a shared-classifier byte, padding to 256 bytes, then norms, embedding, wq…w3 and
 * the classifier. Matrices are PyTorch [out, in] row-major, the byte order GGUF keeps; q/k rows are
 * in Meta's interleaved-pair order, which is GGUF's, so nothing is permuted. w1 is the gate, w3 the
 * up projection, w2 the down projection.
 *
 * tokenizer.bin: u32 max token length, then per token f32 score, i32 byte length, bytes. The
 * exporter wrote "▁" as a space and BOS/EOS as "\n<s>\n" / "\n</s>\n".
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { basename } from "node:path";
import { UserError } from "../errors.js";
import { GGMLType } from "../formats/ggml-types.js";
import { GgufWriter } from "../formats/gguf.js";
import { LLAMA_LIMITS } from "../model/config.js";
import { parseFileType } from "../quant/mixes.js";
import type { TokenizerDescription } from "../tokenizer/index.js";
import { TokenType } from "../tokenizer/index.js";
import { setTokenizerMetadata } from "../tokenizer/train.js";
import type { ConvertSummary } from "./hf-to-gguf.js";
import { encodeFloat, writeConverted } from "./write-gguf.js";

const MAGIC_V1 = 0x616b3432; // "ak42"

export interface Llama2cHeader {
  version: 0 | 1;
  dim: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  seqLen: number;
  shared: boolean;
}

function readExact(fd: number, bytes: Uint8Array, position: number, path: string): void {
  let done = 0;
  while (done < bytes.length) {
    const got = readSync(fd, bytes, done, bytes.length - done, position + done);
    if (got === 0) throw new UserError(`${path}: file ends early`);
    done += got;
  }
}

/** Reads and checks the header; the file's size must be exactly what the header describes. */
function readHeader(fd: number, path: string): { h: Llama2cHeader; bodyStart: number; floats: number } {
  const size = fstatSync(fd).size;
  if (size < 28) throw new UserError(`${path}: too short for a llama2.c checkpoint`);
  const head = Buffer.alloc(Math.min(size, 256));
  readExact(fd, head, 0, path);
  const v1 = head.readUInt32LE(0) === MAGIC_V1;
  if (v1) {
    const version = head.readInt32LE(4);
    if (version !== 1) {
      throw new UserError(
        `${path}: llama2.c checkpoint version ${version} is not supported yet (supported: 0, 1)`,
      );
    }
    if (size < 256) throw new UserError(`${path}: too short for a llama2.c version 1 checkpoint`);
  }
  const at = v1 ? 8 : 0;
  const ints = Array.from({ length: 7 }, (_, i) => head.readInt32LE(at + 4 * i));
  const [dim, hidden, layers, heads, kvHeads, rawVocab, seqLen] = ints as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const vocab = Math.abs(rawVocab);
  const L = LLAMA_LIMITS;
  const bad = (what: string) => new UserError(`${path}: not a llama2.c checkpoint (${what})`);
  const within = (v: number, max: number) => v >= 1 && v <= max;
  if (
    !within(dim, L.embeddingLength) ||
    !within(hidden, L.feedForwardLength) ||
    !within(layers, L.blockCount)
  )
    throw bad(`dim ${dim}, hidden_dim ${hidden}, n_layers ${layers}`);
  if (!within(heads, L.headCount) || !within(kvHeads, heads) || dim % heads !== 0 || heads % kvHeads !== 0)
    throw bad(`n_heads ${heads}, n_kv_heads ${kvHeads} for dim ${dim}`);
  if (!within(vocab, L.vocab) || !within(seqLen, L.contextLength))
    throw bad(`vocab_size ${rawVocab}, seq_len ${seqLen}`);
  if (((dim / heads) & 1) !== 0) throw bad(`odd head size ${dim / heads}`);
  const shared = v1 ? head[36] === 1 : rawVocab > 0;
  const h: Llama2cHeader = {
    version: v1 ? 1 : 0,
    dim,
    hidden,
    layers,
    heads,
    kvHeads,
    vocab,
    seqLen,
    shared,
  };
  const kv = (dim / heads) * kvHeads;
  const perLayer = 2 * dim + 2 * dim * dim + 2 * dim * kv + 3 * dim * hidden;
  let floats = vocab * dim + layers * perLayer + dim + (shared ? 0 : vocab * dim);
  if (!v1) floats += seqLen * (dim / heads); // the two RoPE tables, seq_len × head_size/2 each
  const bodyStart = v1 ? 256 : 28;
  if (size !== bodyStart + 4 * floats) {
    throw bad(`the header describes ${bodyStart + 4 * floats} bytes, the file has ${size}`);
  }
  return { h, bodyStart, floats };
}

/** Where each GGUF tensor's f32 values start (in floats from the body start), per layout. */
function offsets(h: Llama2cHeader): Map<string, { at: number; dims: number[] }> {
  const { dim, hidden, layers, vocab } = h;
  const kv = (dim / h.heads) * h.kvHeads;
  const m = new Map<string, { at: number; dims: number[] }>();
  let at = 0;
  const whole = (name: string, dims: number[]) => {
    m.set(name, { at, dims });
    at += dims.reduce((a, b) => a * b, 1);
  };
  const stacked = (role: string, dims: number[]) => {
    for (let l = 0; l < layers; l++) whole(`blk.${l}.${role}.weight`, dims);
  };
  const matrices = () => {
    stacked("attn_q", [dim, dim]);
    stacked("attn_k", [dim, kv]);
    stacked("attn_v", [dim, kv]);
    stacked("attn_output", [dim, dim]);
  };
  const ffn = () => {
    stacked("ffn_gate", [dim, hidden]);
    stacked("ffn_down", [hidden, dim]);
    stacked("ffn_up", [dim, hidden]);
  };
  if (h.version === 0) {
    whole("token_embd.weight", [dim, vocab]);
    stacked("attn_norm", [dim]);
    matrices();
    stacked("ffn_norm", [dim]);
    ffn();
    whole("output_norm.weight", [dim]);
    at += h.seqLen * (dim / h.heads);
  } else {
    stacked("attn_norm", [dim]);
    stacked("ffn_norm", [dim]);
    whole("output_norm.weight", [dim]);
    whole("token_embd.weight", [dim, vocab]);
    matrices();
    ffn();
  }
  if (!h.shared) whole("output.weight", [dim, vocab]);
  return m;
}

/** Reads tokenizer.bin for a vocabulary of `vocab` tokens. */
export function readLlama2cTokenizer(path: string, vocab: number): TokenizerDescription {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw new UserError(`${path}: cannot open (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  try {
    const size = fstatSync(fd).size;
    if (size > 1 << 28) throw new UserError(`${path}: ${size} bytes is too large for a tokenizer.bin`);
    const buf = Buffer.alloc(size);
    readExact(fd, buf, 0, path);
    const bad = (what: string) => new UserError(`${path}: not a llama2.c tokenizer.bin (${what})`);
    if (size < 4) throw bad("too short");
    const maxLength = buf.readUInt32LE(0);
    let at = 4;
    const tokens: string[] = [];
    const scores = new Float32Array(vocab);
    const types = new Int32Array(vocab);
    for (let i = 0; i < vocab; i++) {
      if (at + 8 > size) throw bad(`it ends at token ${i} of the model's ${vocab}`);
      scores[i] = buf.readFloatLE(at);
      const len = buf.readInt32LE(at + 4);
      at += 8;
      if (len < 0 || len > maxLength || at + len > size) throw bad(`token ${i} has length ${len}`);
      let text = buf.toString("utf8", at, at + len);
      at += len;
      let type: number = TokenType.Normal;
      if (i === 0) {
        text = "<unk>";
        type = TokenType.Unknown;
      } else if (text.trim() === "<s>" || text.trim() === "</s>") {
        text = text.trim();
        type = TokenType.Control;
      } else if (/^<0x[0-9A-F]{2}>$/.test(text)) {
        type = TokenType.Byte;
      } else {
        text = text.replaceAll(" ", "\u2581");
      }
      tokens.push(text);
      types[i] = type;
    }
    if (at !== size) throw bad(`${size - at} bytes follow the model's ${vocab} tokens`);
    const id = (t: string) => {
      const i = tokens.indexOf(t);
      return i < 0 ? undefined : i;
    };
    return {
      model: "llama",
      tokens,
      scores,
      tokenTypes: types,
      unkId: 0,
      bosId: id("<s>"),
      eosId: id("</s>"),
      addBos: true,
      addEos: false,
      addSpacePrefix: true,
    };
  } finally {
    closeSync(fd);
  }
}

/** Whether a file starts with GGUF's magic (else convert reads it as a llama2.c checkpoint). */
export function isGgufFile(path: string): boolean {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw new UserError(`${path}: cannot open (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  try {
    const b = Buffer.alloc(4);
    return readSync(fd, b, 0, 4, 0) === 4 && b.toString("latin1") === "GGUF";
  } finally {
    closeSync(fd);
  }
}

/** Converts a llama2.c model.bin with its tokenizer.bin into a GGUF llama model. */
export async function convertLlama2cToGguf(
  model: string,
  tokenizer: string,
  out: string,
  options: { type?: string; name?: string; progress?: boolean } = {},
): Promise<ConvertSummary> {
  const fileType = parseFileType(options.type ?? "f32");
  let fd: number;
  try {
    fd = openSync(model, "r");
  } catch (e) {
    throw new UserError(`${model}: cannot open (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  try {
    const { h, bodyStart } = readHeader(fd, model);
    const vocab = readLlama2cTokenizer(tokenizer, h.vocab);
    const w = new GgufWriter();
    w.setString("general.architecture", "llama");
    w.setString("general.name", options.name ?? basename(model).replace(/\.bin$/, ""));
    w.setU32("llama.context_length", h.seqLen);
    w.setU32("llama.embedding_length", h.dim);
    w.setU32("llama.block_count", h.layers);
    w.setU32("llama.feed_forward_length", h.hidden);
    w.setU32("llama.rope.dimension_count", h.dim / h.heads);
    w.setU32("llama.attention.head_count", h.heads);
    w.setU32("llama.attention.head_count_kv", h.kvHeads);
    w.setF32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    w.setF32("llama.rope.freq_base", 10000);
    w.setU32("llama.vocab_size", h.vocab);
    setTokenizerMetadata(w, vocab);
    const where = offsets(h);
    // File order as llama.cpp writes it: embedding, the layers, final norm, output.
    const names = [
      "token_embd.weight",
      ...Array.from({ length: h.layers }, (_, l) =>
        [
          "attn_norm",
          "attn_q",
          "attn_k",
          "attn_v",
          "attn_output",
          "ffn_norm",
          "ffn_gate",
          "ffn_up",
          "ffn_down",
        ].map((r) => `blk.${l}.${r}.weight`),
      ).flat(),
      "output_norm.weight",
      ...(h.shared ? [] : ["output.weight"]),
    ];
    for (const name of names) {
      const { at, dims } = where.get(name)!;
      const matrix = dims.length === 2;
      const half = fileType.base === GGMLType.F16 || fileType.base === GGMLType.BF16;
      const type = matrix && half ? fileType.base : GGMLType.F32;
      const count = dims.reduce((a, b) => a * b, 1);
      w.addTensor(name, dims, type, (dst) => {
        const values = new Float32Array(count);
        readExact(fd, new Uint8Array(values.buffer), bodyStart + 4 * at, model);
        encodeFloat(type, values, dst);
      });
    }
    await writeConverted(w, out, fileType, options.progress);
    return {
      input: model,
      output: out,
      architecture: "llama",
      type: fileType.name.toLowerCase(),
      tensors: names.length,
      tokenizer: "llama",
      chatTemplate: false,
    };
  } finally {
    closeSync(fd);
  }
}
