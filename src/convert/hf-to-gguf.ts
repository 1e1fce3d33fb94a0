/**
 * Hugging Face model directory → GGUF, as llama.cpp's convert_hf_to_gguf.py does it for the
 * architectures of ./architectures.ts: hyper-parameters from config.json, tensors renamed by
 * src/model/arch's table (Llama's q/k rows taken from rotate-half order back to GGUF's interleaved
 * pairs), the tokenizer from tokenizer.model or tokenizer.json, special tokens and chat template
 * from tokenizer_config.json. It streams one tensor at a time; ./write-gguf.ts quantizes.
 */
import { basename, join, resolve } from "node:path";
import { UserError } from "../errors.js";
import { GGMLType } from "../formats/ggml-types.js";
import { GgufWriter } from "../formats/gguf.js";
import { architecture, tensorPlan } from "../model/arch/index.js";
import { hfTensorName } from "../model/arch/tensors.js";
import { llamaConfigFromMetadata } from "../model/config.js";
import { permuteRopeRows } from "../model/lora.js";
import { parseFileType } from "../quant/mixes.js";
import { type HfTokenizerFiles, tokenizerFromHf, withHfSpecials } from "../tokenizer/hf-tokenizer.js";
import type { TokenizerDescription } from "../tokenizer/index.js";
import { TokenType } from "../tokenizer/index.js";
import { readSentencePieceModel } from "../tokenizer/sentencepiece-model.js";
import { setTokenizerMetadata } from "../tokenizer/train.js";
import { convertArchitectureForHf, type HparamValue, llama3RopeFreqs } from "./architectures.js";
import { transpose } from "./gguf-to-hf.js";
import { HfConfig, HfWeights, isObject, readBytesFile, readJsonFile, readTextFile } from "./hf-dir.js";
import { encodeFloat, isQuantized, writeConverted } from "./write-gguf.js";

export interface HfToGgufOptions {
  /** A llama.cpp file type: f32 (default), f16, bf16, q8_0, q4_0, q4_k_m ... */
  type?: string;
  /** general.name (default: the directory's name). */
  name?: string;
  /** Draw a progress bar on stderr. */
  progress?: boolean;
}

export interface ConvertSummary {
  input: string;
  output: string;
  architecture: string;
  type: string;
  tensors: number;
  tokenizer: string;
  chatTemplate: boolean;
}

/**
 * Tensors a checkpoint may hold that the GGUF file does not need: rotary frequencies and GPT-2's
 * causal-mask buffers, both recomputed at load.
 */
const IGNORED = /(^|\.)rotary_emb\.inv_freq$|\.attn\.(masked_)?bias$/;

const MAX_TEMPLATE_BYTES = 1 << 20;
const MAX_TOKENIZER_MODEL_BYTES = 64 << 20;

/** The chat template: tokenizer_config.json's (a string, or the "default" of a named list), else chat_template.jinja. */
function chatTemplateOf(dir: string, tokenizerConfig: unknown): string | undefined {
  const t = isObject(tokenizerConfig) ? tokenizerConfig.chat_template : undefined;
  if (typeof t === "string") return t;
  if (Array.isArray(t)) {
    const d = t.find((x) => isObject(x) && x.name === "default");
    if (isObject(d) && typeof d.template === "string") return d.template;
  }
  return readTextFile(dir, "chat_template.jinja", MAX_TEMPLATE_BYTES);
}

/**
 * The tokenizer: a SentencePiece tokenizer.model when there is one (exact scores, as llama.cpp's
 * converter prefers), else tokenizer.json. Llama 3 ships a tokenizer.model in another format
 * beside its tokenizer.json; one that does not parse then gives way to the JSON file.
 */
function readTokenizer(dir: string, files: HfTokenizerFiles): TokenizerDescription {
  const spPath = join(dir, "tokenizer.model");
  const bytes = readBytesFile(dir, "tokenizer.model", MAX_TOKENIZER_MODEL_BYTES);
  if (bytes !== undefined) {
    try {
      return withHfSpecials(readSentencePieceModel(bytes, spPath), files);
    } catch (e) {
      if (
        files.tokenizer === undefined ||
        !(e instanceof UserError) ||
        !e.message.includes("not a SentencePiece model")
      )
        throw e;
    }
  }
  if (files.tokenizer === undefined)
    throw new UserError(`${dir}: tokenizer.json and tokenizer.model are both missing`);
  return tokenizerFromHf(files);
}

function setHparam(w: GgufWriter, key: string, v: HparamValue): void {
  if ("u32" in v) w.setU32(key, v.u32);
  else if ("f32" in v) w.setF32(key, v.f32);
  else w.setString(key, v.str);
}

/** Tokens padded up to the embedding rows, as llama.cpp does for vocabularies smaller than the matrix. */
function padVocabulary(d: TokenizerDescription, rows: number, path: string): TokenizerDescription {
  const n = d.tokens.length;
  if (n > rows) throw new UserError(`${path}: ${n} tokens but the embedding matrix has ${rows} rows`);
  if (n === rows) return d;
  const tokens = [...d.tokens];
  const types = Int32Array.from({ length: rows }, (_, i) =>
    i < n ? (d.tokenTypes?.[i] ?? 1) : TokenType.Unused,
  );
  for (let i = n; i < rows; i++) tokens.push(`[PAD${i}]`);
  const scores = d.scores
    ? Float32Array.from({ length: rows }, (_, i) => (i < n ? d.scores![i]! : -1e9))
    : undefined;
  return { ...d, tokens, tokenTypes: types, scores };
}

/** Converts the Hugging Face model directory `dir` into the GGUF file `out`. */
export async function convertHfToGguf(
  dir: string,
  out: string,
  options: HfToGgufOptions = {},
): Promise<ConvertSummary> {
  const fileType = parseFileType(options.type ?? "f32");
  const configPath = join(dir, "config.json");
  const json = readJsonFile(dir, "config.json", true);
  if (!isObject(json)) throw new UserError(`${configPath}: not a JSON object`);
  const arch = convertArchitectureForHf(json.model_type, configPath);
  const hfConfig = new HfConfig(json, configPath);
  const hparams = arch.hparams(hfConfig);
  // Llama 3.1's rope scaling becomes a tensor of its own, made here rather than read.
  const ropeFreqs = llama3RopeFreqs(hfConfig);

  const weights = HfWeights.open(dir);
  try {
    // GPT-2 checkpoints saved from the base model name their tensors without "transformer.".
    const source = (hf: string): string => {
      const bare = hf.replace(/^transformer\./, "");
      return !weights.has(hf) && bare !== hf && weights.has(bare) ? bare : hf;
    };
    const embedSpec = architecture(arch.gguf).modelTensors.find((t) => t.role === "token_embd")!;
    const embedName = source(hfTensorName(embedSpec)!);
    const embed = weights.info(embedName);
    if (embed?.shape.length !== 2) throw new UserError(`${dir}: ${embedName} is missing or not a matrix`);
    const rows = embed.shape[0]!;
    const get = (key: string): unknown => {
      if (key === "general.architecture") return arch.gguf;
      const prefix = `${arch.gguf}.`;
      const v = key.startsWith(prefix) ? hparams.get(key.slice(prefix.length)) : undefined;
      if (!v) return undefined;
      return "u32" in v ? v.u32 : "f32" in v ? Math.fround(v.f32) : v.str;
    };
    // The checks every model file passes (head counts divide, vocabulary matches the matrix...).
    const shape = llamaConfigFromMetadata(get, configPath, rows);
    const tied = hfConfig.bool("tie_word_embeddings") || !weights.has("lm_head.weight");
    // Optional tensors (MPT's biases) come when the checkpoint has them.
    const present = new Set(
      tensorPlan(arch.gguf, shape, () => true)
        .filter(
          (t) =>
            t.spec.optional && t.spec.hf !== undefined && weights.has(source(hfTensorName(t.spec, t.layer)!)),
        )
        .map((t) => t.name),
    );
    const plan = tensorPlan(arch.gguf, shape, (name) =>
      name === "output.weight"
        ? !tied
        : name === "rope_freqs.weight"
          ? ropeFreqs !== undefined
          : present.has(name),
    );
    if (ropeFreqs && !plan.some((t) => t.name === "rope_freqs.weight")) {
      throw new UserError(`${configPath}: rope scaling "llama3" is not supported for ${arch.gguf}`);
    }
    // Every tensor present, float and of its shape, before anything is written.
    const used = new Set<string>();
    for (const t of plan) {
      if (t.name === "rope_freqs.weight") continue;
      const name = hfTensorName(t.spec, t.layer);
      if (name === undefined)
        throw new UserError(`${dir}: convert: tensor ${t.name} has no Hugging Face source yet`);
      const hf = source(name);
      const info = weights.info(hf);
      if (!info) throw new UserError(`${dir}: tensor ${hf} is missing`);
      const want = t.spec.hfTransposed ? [...t.dims] : [...t.dims].reverse();
      if (info.shape.length !== want.length || info.shape.some((d, i) => d !== want[i])) {
        throw new UserError(
          `${dir}: tensor ${hf} has shape [${info.shape.join(", ")}], expected [${want.join(", ")}]`,
        );
      }
      if (!["F32", "F16", "BF16"].includes(info.dtype)) {
        throw new UserError(`${dir}: tensor ${hf} is ${info.dtype}; convert reads F32, F16 and BF16 weights`);
      }
      used.add(hf);
    }
    // (a tied head's copy, or one the architecture never reads: llama.cpp's Gemma skips lm_head)
    if ((tied || !plan.some((t) => t.name === "output.weight")) && weights.has("lm_head.weight")) {
      used.add("lm_head.weight");
    }
    for (const name of weights.names) {
      if (!used.has(name) && !IGNORED.test(name)) {
        throw new UserError(
          `${dir}: tensor ${name} has no place in a ${arch.gguf} model (convert cannot map it)`,
        );
      }
    }

    // Tokenizer and chat template.
    const tokenizerConfig = readJsonFile(dir, "tokenizer_config.json", false);
    const generation = readJsonFile(dir, "generation_config.json", false);
    const gen = new HfConfig(isObject(generation) ? generation : {}, join(dir, "generation_config.json"));
    const description = padVocabulary(
      readTokenizer(dir, {
        tokenizer: readJsonFile(dir, "tokenizer.json", false),
        config: tokenizerConfig,
        bosId: gen.tokenId("bos_token_id") ?? hfConfig.tokenId("bos_token_id"),
        eosId: gen.tokenId("eos_token_id") ?? hfConfig.tokenId("eos_token_id"),
        path: join(dir, "tokenizer.json"),
      }),
      rows,
      join(dir, "tokenizer.json"),
    );
    const chatTemplate = chatTemplateOf(dir, tokenizerConfig);

    // Tensor types: direct for float files; for quantized ones, the weights' float type first.
    const quantized = isQuantized(fileType);
    const floatOf = (hf: string): GGMLType => {
      if (!quantized) return fileType.base;
      const dtype = weights.info(hf)!.dtype;
      return dtype === "F16" ? GGMLType.F16 : dtype === "BF16" ? GGMLType.BF16 : GGMLType.F32;
    };

    const w = new GgufWriter();
    w.setString("general.architecture", arch.gguf);
    w.setString("general.name", options.name ?? basename(resolve(dir)));
    for (const [key, v] of hparams) setHparam(w, `${arch.gguf}.${key}`, v);
    setTokenizerMetadata(w, description);
    if (chatTemplate !== undefined) w.setString("tokenizer.chat_template", chatTemplate);

    for (const t of plan) {
      if (t.name === "rope_freqs.weight") {
        w.addTensor(t.name, t.dims, GGMLType.F32, (dst) => encodeFloat(GGMLType.F32, ropeFreqs!, dst));
        continue;
      }
      const hf = source(hfTensorName(t.spec, t.layer)!);
      const hfShape = t.spec.hfTransposed ? [...t.dims] : [...t.dims].reverse();
      const type = t.kind === "matrix" || t.kind === "table" ? floatOf(hf) : GGMLType.F32;
      const heads =
        t.spec.hfPermute === "heads" ? shape.heads : t.spec.hfPermute === "kvHeads" ? shape.kvHeads : 0;
      w.addTensor(t.name, t.dims, type, (dst) => {
        let values = weights.readFloat32(hf, hfShape);
        if (heads) values = permuteRopeRows(values, t.dims[1]!, t.dims[0]!, heads, false);
        if (t.spec.hfTransposed) values = transpose(values, t.dims[0]!, t.dims[1]!);
        // (Gemma's norms: the weight GGUF holds is 1 + w, rounded to f32)
        if (t.spec.hfPlusOne) values = values.map((v) => v + 1);
        encodeFloat(type, values, dst);
      });
    }
    await writeConverted(w, out, fileType, options.progress);
    return {
      input: dir,
      output: out,
      architecture: arch.gguf,
      type: fileType.name.toLowerCase(),
      tensors: plan.length,
      tokenizer: description.model === "gpt2" ? `gpt2 (${description.pre})` : "llama",
      chatTemplate: chatTemplate !== undefined,
    };
  } finally {
    weights.close();
  }
}
