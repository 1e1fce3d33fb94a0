import { UserError } from "../errors.js";
import { GGMLType, ggmlTypeInfo, ggmlTypeName } from "../formats/ggml-types.js";
import { GgufFile, GgufWriter } from "../formats/gguf.js";
import { Progress } from "../util/progress.js";
import { dequantizeRow, quantizeRow } from "./reference.js";

/** Target types of `quantize` and the llama.cpp file type (general.file_type) each one sets. */
const TARGETS: Record<string, { type: GGMLType; fileType: number }> = {
  f32: { type: GGMLType.F32, fileType: 0 },
  f16: { type: GGMLType.F16, fileType: 1 },
  q4_0: { type: GGMLType.Q4_0, fileType: 2 },
  q4_1: { type: GGMLType.Q4_1, fileType: 3 },
  q8_0: { type: GGMLType.Q8_0, fileType: 7 },
  q5_0: { type: GGMLType.Q5_0, fileType: 8 },
  q5_1: { type: GGMLType.Q5_1, fileType: 9 },
};

/** Types whose rows can be decoded to f32 as the input of a (re)quantization. */
const DECODABLE = new Set<number>([
  GGMLType.F32,
  GGMLType.F16,
  GGMLType.BF16,
  GGMLType.Q8_0,
  GGMLType.Q4_0,
  GGMLType.Q4_1,
  GGMLType.Q5_0,
  GGMLType.Q5_1,
  GGMLType.Q4_K,
  GGMLType.Q5_K,
  GGMLType.Q6_K,
]);

export interface QuantizeSummary {
  type: string;
  quantized: number;
  kept: number;
  inputBytes: number;
  outputBytes: number;
}

/**
 * Whether a tensor is quantized: 2-D weight matrices whose rows divide into blocks. 1-D tensors
 * (norm weights, biases) stay as they are, as llama.cpp does.
 */
function wantsQuantization(name: string, dims: readonly number[], target: GGMLType): boolean {
  if (dims.length < 2 || !name.endsWith(".weight")) return false;
  const block = ggmlTypeInfo(target)!.blockSize;
  return dims[0]! % block === 0;
}

export function parseQuantizeTarget(name: string): { type: GGMLType; fileType: number } {
  const t = TARGETS[name.toLowerCase()];
  if (!t)
    throw new UserError(`--type ${name} is not supported; choose one of ${Object.keys(TARGETS).join(", ")}`);
  return t;
}

/**
 * Rewrites a GGUF model with its weight matrices in `typeName`, following ggml's reference
 * rounding. Tensors are converted one row at a time, so memory stays near one tensor.
 */
export async function quantizeModel(
  input: string,
  output: string,
  typeName: string,
  options: { onProgress?: "bar" } = {},
): Promise<QuantizeSummary> {
  const target = parseQuantizeTarget(typeName);
  const file = GgufFile.open(input);
  try {
    const h = file.header;
    const w = new GgufWriter();
    w.copyMetadataFrom(h);
    w.setU32("general.quantization_version", 2);
    w.setU32("general.file_type", target.fileType);
    let quantized = 0;
    let kept = 0;
    let outputBytes = 0;
    const progress =
      options.onProgress === "bar" ? new Progress("quantize", h.tensors.length, "tensors") : undefined;
    for (const t of h.tensors) {
      if (!wantsQuantization(t.name, t.dims, target.type) || t.type === target.type) {
        w.addTensor(t.name, t.dims, t.type, (dst) => file.readTensorInto(t, dst));
        kept++;
        outputBytes += t.byteSize;
        continue;
      }
      if (!DECODABLE.has(t.type)) {
        throw new UserError(
          `${input}: tensor ${t.name} has type ${ggmlTypeName(t.type)}, which cannot be converted`,
        );
      }
      const cols = t.dims[0]!;
      const rows = t.elementCount / cols;
      const info = ggmlTypeInfo(target.type)!;
      const outRow = (cols / info.blockSize) * info.typeSize;
      w.addTensor(t.name, t.dims, target.type, (dst) => {
        const src = file.readTensor(t);
        const inRow = src.length / rows;
        const row = new Float32Array(cols);
        for (let r = 0; r < rows; r++) {
          dequantizeRow(t.type, src.subarray(r * inRow, (r + 1) * inRow), cols, row);
          quantizeRow(target.type, row, dst.subarray(r * outRow, (r + 1) * outRow));
        }
      });
      quantized++;
      outputBytes += rows * outRow;
    }
    w.write(output, { onTensor: () => progress?.tick() });
    progress?.done();
    const inputBytes = h.tensors.reduce((s, t) => s + t.byteSize, 0);
    return { type: typeName.toLowerCase(), quantized, kept, inputBytes, outputBytes };
  } finally {
    file.close();
  }
}
