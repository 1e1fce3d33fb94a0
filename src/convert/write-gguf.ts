/**
 * The last step of every conversion to GGUF: float files are written directly; a quantized type
 * first writes a float GGUF beside the output (in the weights' own float type, so nothing is
 * rounded twice) and quantizes it with quantizeModel, which makes llama-quantize's mix.
 */
import { rmSync } from "node:fs";
import { GGMLType } from "../formats/ggml-types.js";
import type { GgufWriter } from "../formats/gguf.js";
import { f32ToBf16Array, f32ToF16Array } from "../quant/fp16.js";
import type { FileType } from "../quant/mixes.js";
import { quantizeModel } from "../quant/quantize-model.js";
import { Progress } from "../util/progress.js";

/** Whether the file type quantizes (its matrices are then written in their source float type first). */
export function isQuantized(fileType: FileType): boolean {
  return ![GGMLType.F32, GGMLType.F16, GGMLType.BF16].includes(fileType.base);
}

/** f32 values into a tensor buffer of type F32, F16 or BF16. */
export function encodeFloat(type: GGMLType, values: Float32Array, dst: Uint8Array): void {
  const at = dst.byteOffset;
  if (type === GGMLType.F32) new Float32Array(dst.buffer as ArrayBuffer, at, values.length).set(values);
  else if (type === GGMLType.F16)
    f32ToF16Array(values, new Uint16Array(dst.buffer as ArrayBuffer, at, values.length));
  else f32ToBf16Array(values, new Uint16Array(dst.buffer as ArrayBuffer, at, values.length));
}

/** Writes `w` (general.file_type set here) to `out` as `fileType`. */
export async function writeConverted(
  w: GgufWriter,
  out: string,
  fileType: FileType,
  progress = false,
): Promise<void> {
  const quantized = isQuantized(fileType);
  w.setU32("general.file_type", quantized ? 0 : fileType.ftype);
  const bar = progress ? new Progress("convert", w.tensorCount, "tensors") : undefined;
  const target = quantized ? `${out}.convert-${process.pid}.gguf` : out;
  try {
    try {
      w.write(target, { onTensor: (i) => i > 0 && bar?.tick() });
    } finally {
      bar?.done();
    }
    if (quantized) await quantizeModel(target, out, fileType.name, progress ? { onProgress: "bar" } : {});
  } finally {
    if (quantized) rmSync(target, { force: true });
  }
}
