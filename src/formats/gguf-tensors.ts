/**
 * Reading GGUF tensor infos and checking the layout of their data: every tensor's bytes must lie
 * inside the file, start at an aligned offset, and belong to that tensor alone (ggml's gguf.cpp
 * goes further and wants them packed in order; gaps are harmless here, shared bytes are not).
 */
import { type GGMLType, ggmlTypeInfo, ggmlTypeName, tensorBytes } from "./ggml-types.js";
import { type FileReader, HEAP_COST } from "./gguf-metadata.js";
import {
  alignUp,
  GGUF_MAX_DIMS,
  GGUF_MAX_TENSOR_NAME_BYTES,
  type GgufTensorInfo,
  quote,
} from "./gguf-types.js";

interface RawTensorInfo {
  name: string;
  dims: number[];
  type: GGMLType;
  count: number;
  offset: number;
  byteSize: number;
}

function readTensorInfo(r: FileReader, index: number, names: Set<string>): RawTensorInfo {
  const name = r.string(`tensor ${index} name`);
  const what = `tensor ${quote(name)}`;
  if (Buffer.byteLength(name, "utf8") > GGUF_MAX_TENSOR_NAME_BYTES) {
    r.fail(`${what} name is longer than ${GGUF_MAX_TENSOR_NAME_BYTES} bytes`);
  }
  if (names.has(name)) r.fail(`duplicate tensor name ${quote(name)}`);
  names.add(name);
  const nDims = r.u32(`${what} dimension count`);
  if (nDims > GGUF_MAX_DIMS) r.fail(`${what} has ${nDims} dimensions (at most ${GGUF_MAX_DIMS})`);
  const dims: number[] = [];
  let count = 1;
  for (let d = 0; d < nDims; d++) {
    const ne = r.u64Approx(`${what} dimension ${d}`);
    if (ne >= 2 ** 63) r.fail(`${what} dimension ${d} is negative`);
    if (ne === 0) r.fail(`${what} dimension ${d} is 0`);
    count *= ne;
    if (!Number.isSafeInteger(count)) {
      r.fail(`${what} element count overflows (dims ${[...dims, ne].join(" x ")})`);
    }
    dims.push(ne);
  }
  const type = r.u32(`${what} type`);
  const info = ggmlTypeInfo(type);
  if (!info) r.fail(`${what} has unknown tensor type ${ggmlTypeName(type)}`);
  const ne0 = dims[0] ?? 1;
  if (ne0 % info.blockSize !== 0) {
    r.fail(`${what}: row length ${ne0} is not a multiple of the ${info.name} block size ${info.blockSize}`);
  }
  const offset = r.u64Approx(`${what} offset`);
  return { name, dims, type, count, offset, byteSize: tensorBytes(type, dims) };
}

/**
 * Reads `count` tensor infos. Each is charged to the reader's memory budget before any is read,
 * so a count of millions of tiny tensors is refused at once.
 */
export function readTensorInfos(r: FileReader, count: number): RawTensorInfo[] {
  r.charge(count * HEAP_COST.tensorInfo, `tensor count ${count}`);
  const infos: RawTensorInfo[] = [];
  const names = new Set<string>();
  for (let i = 0; i < count; i++) infos.push(readTensorInfo(r, i, names));
  return infos;
}

/**
 * Places the tensors in the file: the data section starts at the first aligned offset after the
 * tensor infos (`infoEnd`). Refuses an unaligned offset, data outside the file, and two tensors
 * whose bytes overlap or start at the same offset.
 */
export function layOutTensors(
  r: FileReader,
  raw: readonly RawTensorInfo[],
  infoEnd: number,
  alignment: number,
): { dataOffset: number; tensors: GgufTensorInfo[] } {
  const dataOffset = alignUp(infoEnd, alignment);
  const tensors: GgufTensorInfo[] = raw.map((t) => {
    const what = `tensor ${quote(t.name)}`;
    if (t.offset % alignment !== 0) {
      r.fail(`${what} offset ${t.offset} is not a multiple of the alignment ${alignment}`);
    }
    const fileOffset = dataOffset + t.offset;
    if (fileOffset + t.byteSize > r.fileSize) {
      r.fail(
        `${what} data (${t.byteSize} bytes at offset ${fileOffset}) lies outside the file (${r.fileSize} bytes; truncated?)`,
      );
    }
    return Object.freeze({
      name: t.name,
      dims: Object.freeze(t.dims),
      type: t.type,
      elementCount: t.count,
      offset: t.offset,
      fileOffset,
      byteSize: t.byteSize,
    });
  });
  // In offset order, each tensor must end at or before the next one starts.
  const byOffset = [...tensors].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < byOffset.length; i++) {
    const prev = byOffset[i - 1]!;
    const next = byOffset[i]!;
    if (next.offset === prev.offset) {
      r.fail(`tensors ${quote(prev.name)} and ${quote(next.name)} share the data offset ${next.offset}`);
    }
    if (next.offset < prev.offset + prev.byteSize) {
      r.fail(
        `tensors ${quote(prev.name)} (${prev.byteSize} bytes at data offset ${prev.offset}) and ${quote(next.name)} (at data offset ${next.offset}) overlap`,
      );
    }
  }
  return { dataOffset, tensors };
}
