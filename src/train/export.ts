// A plain model GGUF from a training checkpoint: the model's tensors, llama.* metadata and the
// tokenizer, without optimizer state; optionally quantized. generate, chat and llama.cpp load it.
import { existsSync, statSync, unlinkSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { UserError } from "../errors.js";
import { GgufFile, GgufWriter } from "../formats/gguf.js";
import { parseQuantizeTarget, quantizeModel } from "../quant/quantize-model.js";
import {
  Checksum,
  copyTokenizerMetadata,
  readCheckpoint,
  setLlamaMetadata,
  storedChecksum,
} from "./checkpoint.js";

export interface ExportSummary {
  checkpoint: string;
  out: string;
  type: string;
  step: number;
  tensors: number;
  bytes: number;
}

/** The checkpoint file of a run directory, or the path itself when it is a file. */
export function checkpointPath(runOrFile: string): string {
  if (existsSync(runOrFile) && statSync(runOrFile).isDirectory()) return join(runOrFile, "checkpoint.gguf");
  return runOrFile;
}

/**
 * Writes the model in the checkpoint of `run` (a run directory or a checkpoint file) to `out` as a
 * GGUF of `type` (f32, f16, q8_0, q4_0, ...; norm weights stay f32). The checkpoint's checksum is
 * verified first.
 */
export async function exportCheckpoint(run: string, out: string, type = "f32"): Promise<ExportSummary> {
  const target = parseQuantizeTarget(type);
  const path = checkpointPath(run);
  if (!existsSync(path)) throw new UserError(`${run}: no checkpoint.gguf to export`);
  const { header, info } = readCheckpoint(path);
  if (!header.has("tokenizer.ggml.tokens")) {
    throw new UserError(`${path}: the checkpoint holds no tokenizer, so it cannot become a usable model`);
  }
  if (resolve(out) === resolve(path)) throw new UserError(`--out ${out} would overwrite the checkpoint`);
  const file = GgufFile.open(path);
  try {
    const sum = new Checksum();
    for (const t of header.tensors) sum.update(file.readTensor(t));
    if (sum.digest() !== storedChecksum(header)) {
      throw new UserError(`${path}: the tensor data does not match its checksum (the file is damaged)`);
    }
    const model = header.tensors.filter(
      (t) => !t.name.startsWith("adam_m.") && !t.name.startsWith("adam_v."),
    );
    const w = new GgufWriter();
    const name = basename(resolve(run)).replace(/\.gguf$/, "");
    setLlamaMetadata(w, info.config, name, 0);
    copyTokenizerMetadata(w, header);
    for (const t of model) w.addTensor(t.name, t.dims, t.type, (dst) => file.readTensorInto(t, dst));
    const summary = (bytes: number): ExportSummary => ({
      checkpoint: path,
      out,
      type: type.toLowerCase(),
      step: info.trainer.step,
      tensors: model.length,
      bytes,
    });
    if (target.fileType === 0) {
      w.write(out);
      return summary(statSync(out).size);
    }
    // Quantize from an f32 file beside the output.
    const f32 = `${out}.f32-${process.pid}`;
    try {
      w.write(f32);
      await quantizeModel(f32, out, type);
    } finally {
      if (existsSync(f32)) unlinkSync(f32);
    }
    return summary(statSync(out).size);
  } finally {
    file.close();
  }
}
