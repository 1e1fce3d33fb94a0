/**
 * safetensors: an 8-byte little-endian header length, a JSON header naming every tensor's dtype,
 * shape and [begin, end) byte range in the data buffer, then the buffer (C order, little-endian).
 * This module writes and reads the float dtypes the project uses (F32, F16, BF16); other dtypes
 * are listed by the reader but refused when their values are asked for.
 */

import { closeSync, fstatSync, openSync, readSync, renameSync, rmSync, writeSync } from "node:fs";
import { UserError } from "../errors.js";
import { bf16ToF32Array, f16ToF32Array, f32ToBf16Array, f32ToF16Array } from "../quant/fp16.js";

export type SafetensorsFloat = "F32" | "F16" | "BF16";

const DTYPE_BYTES: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
};

/** Largest header the format allows. */
const MAX_HEADER_BYTES = 100_000_000;

export interface SafetensorsTensorInput {
  name: string;
  shape: readonly number[];
  /** Values in C order; stored as `dtype`. */
  data: Float32Array;
  dtype?: SafetensorsFloat;
}

export interface SafetensorsTensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  /** Byte range in the data buffer, end exclusive. */
  begin: number;
  end: number;
}

function encode(t: SafetensorsTensorInput): Uint8Array {
  const dtype = t.dtype ?? "F32";
  const count = t.shape.reduce((a, b) => a * b, 1);
  if (count !== t.data.length) {
    throw new RangeError(
      `safetensors tensor ${t.name}: shape ${t.shape.join("x")} holds ${count} values, got ${t.data.length}`,
    );
  }
  const view = dtype === "F32" ? t.data : dtype === "F16" ? f32ToF16Array(t.data) : f32ToBf16Array(t.data);
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/**
 * Writes a safetensors file through a temporary name and a rename. Tensors are laid out as the
 * reference writer does (by descending dtype size, then name), and the JSON header is padded with
 * spaces to a multiple of 8 bytes so the buffer starts aligned.
 */
export function writeSafetensors(
  path: string,
  tensors: readonly SafetensorsTensorInput[],
  metadata: Record<string, string> = { format: "pt" },
): void {
  const names = new Set<string>();
  for (const t of tensors) {
    if (names.has(t.name)) throw new RangeError(`safetensors tensor ${t.name} added twice`);
    names.add(t.name);
  }
  const ordered = [...tensors].sort(
    (a, b) =>
      DTYPE_BYTES[b.dtype ?? "F32"] - DTYPE_BYTES[a.dtype ?? "F32"] ||
      (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
  const header: Record<string, unknown> = { __metadata__: metadata };
  const blobs: Uint8Array[] = [];
  let offset = 0;
  for (const t of ordered) {
    const bytes = encode(t);
    header[t.name] = {
      dtype: t.dtype ?? "F32",
      shape: [...t.shape],
      data_offsets: [offset, offset + bytes.length],
    };
    blobs.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const jsonBytes = Buffer.from(json, "utf8");
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(jsonBytes.length));
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, "w");
  try {
    for (const part of [prefix, jsonBytes, ...blobs]) {
      let done = 0;
      while (done < part.length) done += writeSync(fd, part, done, part.length - done);
    }
    closeSync(fd);
    renameSync(tmp, path);
  } catch (e) {
    try {
      closeSync(fd);
    } catch {}
    rmSync(tmp, { force: true });
    throw e;
  }
}

/** An open safetensors file: its tensor list, metadata, and values read on demand. */
export class SafetensorsFile {
  private constructor(
    readonly path: string,
    private readonly fd: number,
    private readonly dataStart: number,
    readonly tensors: SafetensorsTensorInfo[],
    readonly metadata: Record<string, string>,
  ) {}

  static open(path: string): SafetensorsFile {
    let fd: number;
    try {
      fd = openSync(path, "r");
    } catch (e) {
      throw new UserError(`${path}: cannot open (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
    }
    try {
      const size = fstatSync(fd).size;
      const bad = (what: string) => new UserError(`${path}: not a safetensors file (${what})`);
      if (size < 8) throw bad("shorter than its 8-byte header length");
      const prefix = Buffer.alloc(8);
      readSync(fd, prefix, 0, 8, 0);
      const n = Number(prefix.readBigUInt64LE());
      if (n < 2 || n > MAX_HEADER_BYTES || 8 + n > size) throw bad(`header length ${n}`);
      const jsonBytes = Buffer.alloc(n);
      readSync(fd, jsonBytes, 0, n, 8);
      let header: Record<string, unknown>;
      try {
        header = JSON.parse(jsonBytes.toString("utf8"));
      } catch {
        throw bad("header is not JSON");
      }
      if (typeof header !== "object" || header === null || Array.isArray(header))
        throw bad("header is not an object");
      const dataBytes = size - 8 - n;
      const tensors: SafetensorsTensorInfo[] = [];
      let metadata: Record<string, string> = {};
      for (const [name, v] of Object.entries(header)) {
        if (name === "__metadata__") {
          metadata = v as Record<string, string>;
          continue;
        }
        const info = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
        const dtype = typeof info.dtype === "string" ? info.dtype : "";
        const shape = info.shape;
        const offsets = info.data_offsets;
        if (
          !(dtype in DTYPE_BYTES) ||
          !Array.isArray(shape) ||
          !shape.every((d) => Number.isSafeInteger(d) && d >= 0) ||
          !Array.isArray(offsets) ||
          offsets.length !== 2
        ) {
          throw bad(`bad entry for tensor ${JSON.stringify(name)}`);
        }
        const [begin, end] = offsets as number[];
        const count = (shape as number[]).reduce((a, b) => a * b, 1);
        if (!(begin >= 0 && end <= dataBytes && end - begin === count * DTYPE_BYTES[dtype])) {
          throw bad(
            `tensor ${JSON.stringify(name)} has byte range [${begin}, ${end}) for ${dtype} ${shape.join("x")}`,
          );
        }
        tensors.push({ name, dtype, shape: shape as number[], begin, end });
      }
      return new SafetensorsFile(path, fd, 8 + n, tensors, metadata);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  tensor(name: string): SafetensorsTensorInfo | undefined {
    return this.tensors.find((t) => t.name === name);
  }

  /** A float tensor's values as f32. */
  readFloat32(name: string): Float32Array {
    const t = this.tensor(name);
    if (!t) throw new UserError(`${this.path}: no tensor named ${JSON.stringify(name)}`);
    const bytes = new Uint8Array(t.end - t.begin);
    let done = 0;
    while (done < bytes.length) {
      const got = readSync(this.fd, bytes, done, bytes.length - done, this.dataStart + t.begin + done);
      if (got === 0) throw new UserError(`${this.path}: file ends inside tensor ${name}`);
      done += got;
    }
    switch (t.dtype) {
      case "F32":
        return new Float32Array(bytes.buffer, 0, bytes.length / 4);
      case "F16":
        return f16ToF32Array(new Uint16Array(bytes.buffer, 0, bytes.length / 2));
      case "BF16":
        return bf16ToF32Array(new Uint16Array(bytes.buffer, 0, bytes.length / 2));
      default:
        throw new UserError(`${this.path}: tensor ${name} is ${t.dtype}; only F32, F16 and BF16 are read`);
    }
  }

  close(): void {
    closeSync(this.fd);
  }
}
