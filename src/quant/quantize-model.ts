import { availableParallelism } from "node:os";
import { UserError } from "../errors.js";
import { type GGMLType, ggmlTypeInfo, ggmlTypeName, parseGgmlTypeName } from "../formats/ggml-types.js";
import { GgufFile, type GgufHeader, GgufWriter } from "../formats/gguf.js";
import { Progress } from "../util/progress.js";
import { type FileType, llamaTensorOrder, MixChooser, parseFileType } from "./mixes.js";
import { RowConverter } from "./quantize-rows.js";
import { QUANTIZABLE_TYPES } from "./reference.js";
import { QUANT_TYPES } from "./types.js";

export interface QuantizeSummary {
  /** The file type, lower case (`q4_k_m`). */
  type: string;
  /** general.file_type written. */
  fileType: number;
  quantized: number;
  kept: number;
  /** Tensors whose rows do not fit the chosen type's blocks, which took llama.cpp's fallback type. */
  fellBack: number;
  /** How many tensors of each type the output holds (`{ q4_K: 150, q6_K: 37, f32: 45 }`). */
  tensorTypes: Record<string, number>;
  inputBytes: number;
  outputBytes: number;
}

export interface QuantizeProgress {
  /** The tensor being converted. */
  tensor: string;
  /** Weights converted so far, of `weights` in all tensors that are converted. */
  weightsDone: number;
  weights: number;
}

export interface QuantizeOptions {
  /** "bar": a progress bar on stderr; a function: called as tensors are converted. */
  onProgress?: "bar" | ((p: QuantizeProgress) => void);
  /** The type of output.weight, instead of the mix's choice (llama-quantize --output-tensor-type). */
  outputTensorType?: string;
  /** The type of token_embd.weight (llama-quantize --token-embedding-type). */
  tokenEmbeddingType?: string;
  /** Keep output.weight as it is (llama-quantize --leave-output-tensor). */
  leaveOutputTensor?: boolean;
  /** Every quantized tensor in the file type's base type, no mix (llama-quantize --pure). */
  pure?: boolean;
  /**
   * Importance per input column, by tensor name (an imatrix's mean squared activations): the
   * tensors it names are quantized with ggml's importance-weighted quantizers.
   */
  imatrix?: Map<string, Float32Array>;
  /**
   * Threads converting rows (llama-quantize --nthread; default: every core, as llama-quantize's
   * default). Any count writes the same bytes.
   */
  threads?: number;
}

/** `--type` names and the llama.cpp file type (general.file_type) each sets, and its base type. */
export function parseQuantizeTarget(name: string): { type: GGMLType; fileType: number } {
  const t = parseFileType(name);
  return { type: t.base, fileType: t.ftype };
}

function parseTypeOption(flag: string, name: string | undefined): GGMLType | undefined {
  if (name === undefined) return undefined;
  const type = parseGgmlTypeName(name);
  if (!QUANTIZABLE_TYPES.includes(type) || !ggmlTypeInfo(type)!.supported) {
    throw new UserError(`${flag} ${name}: cannot write tensors of type ${ggmlTypeName(type)}`);
  }
  return type;
}

/** llama.cpp's view of the model that its rules use: layers, grouped-query ratio, 70B class. */
function modelShape(path: string, h: GgufHeader) {
  // llama.cpp's rules go by tensor name, so any architecture's file quantizes alike; only these
  // counts come from its own keys (`<arch>.block_count` ...).
  const arch = h.getString("general.architecture", "llama");
  if (!/^[a-z0-9_]{1,64}$/.test(arch))
    throw new UserError(`${path}: general.architecture is not a plain name`);
  if (h.getNumber(`${arch}.expert_count`, 0) > 1) {
    throw new UserError(`${path}: mixture-of-experts models (${arch}.expert_count) are not supported`);
  }
  const layers = h.getNumber(`${arch}.block_count`);
  const heads = h.getNumber(`${arch}.attention.head_count`);
  const kvHeads = h.getNumber(`${arch}.attention.head_count_kv`, heads);
  if (!(heads > 0) || !(kvHeads > 0)) throw new UserError(`${path}: attention head counts must be positive`);
  return { layers, gqa: Math.trunc(heads / kvHeads), is70B: layers === 80 && heads !== kvHeads };
}

/**
 * Rewrites a GGUF Llama model as llama.cpp's `llama-quantize` would for file type `typeName`
 * (Q4_K_M, Q8_0, F16 ...): the same tensor types, tensor by tensor (the mix's rules, its fallback
 * for rows that do not fit a type's blocks), the same blocks (ggml's quantizers, bit for bit), the
 * same tensor order and general.file_type. Tensors are converted one at a time, their rows split
 * over `threads` threads, so memory stays near a few copies of the largest tensor.
 */
export async function quantizeModel(
  input: string,
  output: string,
  typeName: string,
  options: QuantizeOptions = {},
): Promise<QuantizeSummary> {
  const fileType: FileType = parseFileType(typeName);
  const outputTensorType = parseTypeOption("--output-tensor-type", options.outputTensorType);
  const tokenEmbeddingType = parseTypeOption("--token-embedding-type", options.tokenEmbeddingType);
  const threads = options.threads ?? availableParallelism();
  if (!Number.isInteger(threads) || threads < 1) {
    throw new UserError(`threads ${threads}: must be a whole number of at least 1`);
  }
  const file = GgufFile.open(input);
  const converter = new RowConverter(threads);
  try {
    const h = file.header;
    const shape = modelShape(input, h);
    const chooser = new MixChooser({
      fileType,
      ...shape,
      names: h.tensors.map((t) => t.name),
      outputTensorType,
      tokenEmbeddingType,
      leaveOutputTensor: options.leaveOutputTensor,
      pure: options.pure,
      hasImatrix: options.imatrix !== undefined,
    });
    const tensors = llamaTensorOrder(h.tensors);
    const plan = tensors.map((t) => ({ t, ...chooser.choose(t.name, t.dims, t.type) }));

    const w = new GgufWriter();
    w.copyMetadataFrom(h);
    w.setU32("general.quantization_version", 2);
    w.setU32("general.file_type", fileType.ftype);
    let quantized = 0;
    let kept = 0;
    let fellBack = 0;
    let outputBytes = 0;
    const tensorTypes: Record<string, number> = {};
    const weights = plan.reduce((s, p) => s + (p.type !== p.t.type ? p.t.elementCount : 0), 0);
    let weightsDone = 0;
    const bar =
      options.onProgress === "bar"
        ? new Progress("quantize", Math.max(1, Math.round(weights / 1e6)), "M weights")
        : undefined;
    const report = (tensor: string, n: number) => {
      const before = Math.round(weightsDone / 1e6);
      weightsDone += n;
      bar?.tick(Math.round(weightsDone / 1e6) - before);
      if (typeof options.onProgress === "function") options.onProgress({ tensor, weightsDone, weights });
    };

    for (const { t, type, fellBack: fb } of plan) {
      const name = ggmlTypeName(type);
      tensorTypes[name] = (tensorTypes[name] ?? 0) + 1;
      if (type === t.type) {
        w.addTensor(t.name, t.dims, t.type, (dst) => file.readTensorInto(t, dst));
        kept++;
        outputBytes += t.byteSize;
        continue;
      }
      if (!QUANT_TYPES.includes(t.type)) {
        throw new UserError(
          `${input}: tensor ${t.name} has type ${ggmlTypeName(t.type)}, which cannot be converted`,
        );
      }
      const cols = t.dims[0]!;
      const info = ggmlTypeInfo(type)!;
      if (cols % info.blockSize !== 0) {
        throw new UserError(
          `${t.name}: rows of ${cols} are not a whole number of ${info.name} blocks of ${info.blockSize}`,
        );
      }
      const qw = options.imatrix?.get(t.name);
      if (qw && qw.length !== cols && t.name !== "token_embd.weight") {
        // (llama.cpp ignores a token_embd entry of the wrong size: imatrix tools often write one)
        throw new UserError(`imatrix entry ${t.name} has ${qw.length} values, the tensor's rows ${cols}`);
      }
      const rowWeights = qw?.length === cols ? qw : undefined;
      const rows = t.elementCount / cols;
      const outRow = (cols / info.blockSize) * info.typeSize;
      w.addTensor(t.name, t.dims, type, (dst) => {
        const src = converter.sourceBuffer(t.byteSize);
        file.readTensorInto(t, src);
        const bad = converter.convert({ srcType: t.type, dstType: type, cols, rows, src, dst, rowWeights });
        if (bad >= 0) {
          throw new UserError(`${input}: tensor ${t.name} holds a NaN or infinite value (row ${bad})`);
        }
        report(t.name, t.elementCount);
      });
      quantized++;
      if (fb) fellBack++;
      outputBytes += rows * outRow;
    }
    try {
      w.write(output);
    } finally {
      bar?.done();
    }
    const inputBytes = h.tensors.reduce((s, t) => s + t.byteSize, 0);
    return {
      type: fileType.name.toLowerCase(),
      fileType: fileType.ftype,
      quantized,
      kept,
      fellBack,
      tensorTypes,
      inputBytes,
      outputBytes,
    };
  } finally {
    file.close();
    await converter.close();
  }
}
