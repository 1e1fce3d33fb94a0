// Importance matrices (imatrix) in llama.cpp's files. For every weight matrix that multiplies
// activations, the sum over calibration tokens of each input column's squared activation, and how
// many tokens were summed: quantizing with their ratio (the mean square) as per-column weights
// keeps the error small where activations are large.
//
// The GGUF file (llama-imatrix's default, tools/imatrix/imatrix.cpp): general.type = "imatrix",
// imatrix.datasets (array of string), imatrix.chunk_count and imatrix.chunk_size (u32), and per
// matrix X two F32 tensors, `X.in_sum2` of dims [cols, nmat] and `X.counts` of dims [1, nmat]
// (nmat is 1 except for stacked experts), in name order. Newer files add `X.in_sum` (plain sums),
// which quantizing does not use.
//
// The legacy .dat file, read only: i32 entry count; per entry i32 name length, the name, i32 ncall
// (chunks), i32 nval, nval f32 holding mean square × ncall; then, optionally, i32 chunk count and a
// dataset name (i32 length and bytes).
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { UserError } from "../errors.js";
import { GGMLType, ggmlTypeName } from "../formats/ggml-types.js";
import { GgufFile, GgufWriter, readGgufHeader } from "../formats/gguf.js";
import { quote } from "../formats/gguf-types.js";

/** One matrix's statistics: `sums` (nmat rows of cols values) and one token count per row. */
export interface ImatrixEntry {
  sums: Float32Array;
  counts: number[];
}

export interface Imatrix {
  /** By tensor name (blk.0.attn_q.weight...). */
  entries: Map<string, ImatrixEntry>;
  /** The calibration files it was computed on. */
  datasets: string[];
  /** Chunks evaluated, and their length in tokens (0 when the file does not say). */
  chunkCount: number;
  chunkSize: number;
  /** Read from a legacy .dat file: `sums` are mean squares × counts[0] (ncall, in chunks). */
  legacy: boolean;
}

const SUMS = ".in_sum2";
const COUNTS = ".counts";
/** A legacy file is read whole; real ones are a few MiB (one float per matrix column). */
const MAX_LEGACY_BYTES = 256 << 20;

/** Writes `im` as llama.cpp's GGUF imatrix file (through a temporary file and a rename). */
export function writeImatrix(path: string, im: Imatrix): void {
  const w = new GgufWriter();
  w.setString("general.type", "imatrix");
  w.setStringArray("imatrix.datasets", im.datasets);
  w.setU32("imatrix.chunk_count", im.chunkCount);
  w.setU32("imatrix.chunk_size", im.chunkSize);
  for (const name of [...im.entries.keys()].sort()) {
    const e = im.entries.get(name)!;
    const nmat = e.counts.length;
    w.addTensor(`${name}${SUMS}`, [e.sums.length / nmat, nmat], GGMLType.F32, bytesOf(e.sums));
    w.addTensor(`${name}${COUNTS}`, [1, nmat], GGMLType.F32, bytesOf(Float32Array.from(e.counts)));
  }
  w.write(path);
}

function bytesOf(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Reads an imatrix file: llama.cpp's GGUF format, or its legacy .dat format. */
export function readImatrix(path: string): Imatrix {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw new UserError(`${path}: cannot open (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  let magic: Buffer;
  let size: number;
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new UserError(`${path}: not a regular file`);
    size = st.size;
    magic = Buffer.alloc(4);
    readSync(fd, magic, 0, 4, 0);
  } finally {
    closeSync(fd);
  }
  return magic.toString("latin1") === "GGUF" ? readGgufImatrix(path) : readLegacyImatrix(path, size);
}

function readGgufImatrix(path: string): Imatrix {
  const file = GgufFile.open(path);
  try {
    const h = file.header;
    const bad = (what: string): never => {
      throw new UserError(`${path}: not an imatrix file: ${what}`);
    };
    const sums = new Map<string, (typeof h.tensors)[number]>();
    const counts = new Map<string, (typeof h.tensors)[number]>();
    for (const t of h.tensors) {
      if (t.name.endsWith(SUMS)) sums.set(t.name.slice(0, -SUMS.length), t);
      else if (t.name.endsWith(COUNTS)) counts.set(t.name.slice(0, -COUNTS.length), t);
    }
    if (sums.size === 0) bad(`no ${SUMS} tensors`);
    const entries = new Map<string, ImatrixEntry>();
    for (const name of [...new Set([...sums.keys(), ...counts.keys()])].sort()) {
      const s = sums.get(name);
      const c = counts.get(name);
      if (!s || !c) bad(`${quote(name)} has ${s ? `no ${COUNTS}` : `no ${SUMS}`} tensor`);
      for (const t of [s!, c!]) {
        if (t.type !== GGMLType.F32) bad(`${quote(t.name)} is ${ggmlTypeName(t.type)}, expected f32`);
      }
      const nmat = c!.elementCount;
      if (nmat === 0 || s!.elementCount === 0 || s!.elementCount % nmat !== 0) {
        bad(`${quote(name)} has ${s!.elementCount} sums for ${nmat} counts`);
      }
      const values = floats(file.readTensor(s!));
      const n = Array.from(floats(file.readTensor(c!)));
      if (!values.every((v) => Number.isFinite(v) && v >= 0)) {
        bad(`${quote(s!.name)} holds a negative or non-finite sum of squares`);
      }
      if (!n.every((v) => Number.isFinite(v) && v >= 0)) bad(`${quote(c!.name)} holds a bad count`);
      entries.set(name, { sums: values, counts: n.map(Math.round) });
    }
    const datasets = h.has("imatrix.datasets") ? h.getStringArray("imatrix.datasets") : [];
    return {
      entries,
      datasets: [...datasets],
      chunkCount: h.getNumber("imatrix.chunk_count", 0),
      chunkSize: h.getNumber("imatrix.chunk_size", 0),
      legacy: false,
    };
  } finally {
    file.close();
  }
}

function floats(bytes: Uint8Array): Float32Array {
  const out = new Float32Array(bytes.length / 4);
  new Uint8Array(out.buffer).set(bytes);
  return out;
}

function readLegacyImatrix(path: string, size: number): Imatrix {
  const bad = (what: string): never => {
    throw new UserError(`${path}: not an imatrix file (GGUF or legacy .dat): ${what}`);
  };
  if (size > MAX_LEGACY_BYTES) bad(`${size} bytes, more than a legacy imatrix file holds`);
  if (size < 4) bad("too short");
  const buf = Buffer.alloc(size);
  const fd = openSync(path, "r");
  try {
    let done = 0;
    while (done < size) {
      const got = readSync(fd, buf, done, size - done, done);
      if (got === 0) break;
      done += got;
    }
  } finally {
    closeSync(fd);
  }
  let pos = 0;
  const i32 = (what: string): number => {
    if (pos + 4 > size) bad(`the file ends in ${what}`);
    const v = buf.readInt32LE(pos);
    pos += 4;
    return v;
  };
  const count = i32("the entry count");
  // Each entry takes at least 16 bytes (three integers and one value).
  if (count < 1 || count > (size - 4) / 16) bad(`entry count ${count}`);
  const entries = new Map<string, ImatrixEntry>();
  for (let i = 0; i < count; i++) {
    const len = i32(`entry ${i + 1}`);
    if (len < 1 || len > size - pos) bad(`entry ${i + 1} has a name of ${len} bytes`);
    const name = buf.toString("utf8", pos, pos + len);
    pos += len;
    const ncall = i32(`entry ${quote(name)}`);
    const nval = i32(`entry ${quote(name)}`);
    if (ncall < 0 || nval < 1 || nval > (size - pos) / 4) {
      bad(`entry ${quote(name)} has ${nval} values from ${ncall} chunks`);
    }
    const sums = floats(buf.subarray(pos, pos + 4 * nval));
    pos += 4 * nval;
    if (!sums.every((v) => Number.isFinite(v) && v >= 0)) {
      bad(`entry ${quote(name)} holds a negative or non-finite value`);
    }
    if (entries.has(name)) bad(`entry ${quote(name)} appears twice`);
    entries.set(name, { sums, counts: [ncall] });
  }
  // The chunk count and the dataset name that follow are optional.
  let chunkCount = 0;
  const datasets: string[] = [];
  if (pos + 4 <= size) {
    chunkCount = Math.max(0, i32("the chunk count"));
    if (pos + 4 <= size) {
      const len = buf.readInt32LE(pos);
      pos += 4;
      if (len > 0 && len <= size - pos) datasets.push(buf.toString("utf8", pos, pos + len));
    }
  }
  return { entries, datasets, chunkCount, chunkSize: 0, legacy: true };
}

/**
 * The per-column weights a quantizer takes from an imatrix, by tensor name: the mean square of
 * each column's activations (sums / counts; 1 for a matrix row with no tokens, as llama.cpp
 * does). Only entries of tensors in `tensors` are kept, each checked against its row length
 * (dims[0]) and matrix count; `label` names the file in messages. No entry for any of them is an
 * error (the file is for another model).
 */
export function imatrixWeights(
  im: Imatrix,
  tensors: readonly { name: string; dims: readonly number[] }[],
  label: string,
): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const t of tensors) {
    const e = im.entries.get(t.name);
    if (!e) continue;
    const cols = t.dims[0]!;
    const nmat = t.dims.slice(2).reduce((a, b) => a * b, 1);
    if (e.sums.length !== cols * nmat) {
      throw new UserError(
        `${label}: entry ${quote(t.name)} has ${e.sums.length} values, the tensor has ${cols * nmat} columns`,
      );
    }
    const w = new Float32Array(e.sums.length);
    const per = e.sums.length / e.counts.length;
    for (let i = 0; i < w.length; i++) {
      const n = e.counts[Math.floor(i / per)]!;
      w[i] = n > 0 ? e.sums[i]! / n : im.legacy ? e.sums[i]! : 1;
    }
    out.set(t.name, w);
  }
  if (out.size === 0) throw new UserError(`${label}: no entry names a tensor of the model`);
  return out;
}

/** The imatrix weights at `path` for the model at `modelPath` (what quantize --imatrix passes on). */
export function readImatrixWeights(path: string, modelPath: string): Map<string, Float32Array> {
  return imatrixWeights(readImatrix(path), readGgufHeader(modelPath).tensors, path);
}
