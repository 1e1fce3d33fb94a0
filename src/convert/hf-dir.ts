/**
 * Reading a Hugging Face model directory safely: bounded JSON files, the safetensors weights (one
 * file, or shards named by model.safetensors.index.json, which may only name files in the
 * directory itself), and the hyper-parameters of config.json checked key by key.
 */
import { closeSync, fstatSync, openSync, readSync, statSync } from "node:fs";
import { join } from "node:path";
import { UserError } from "../errors.js";
import { SafetensorsFile, type SafetensorsTensorInfo } from "../formats/safetensors.js";
import { LLAMA_LIMITS } from "../model/config.js";

export type Json = Record<string, unknown>;

export function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Largest JSON side file read (tokenizer.json of a 256k vocabulary is about 20 MB). */
const MAX_JSON_BYTES = 64 << 20;

/** A JSON file of the directory, parsed; undefined when absent and not `required`. */
export function readJsonFile(dir: string, name: string, required: boolean): unknown {
  const path = join(dir, name);
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" && !required) return undefined;
    throw new UserError(`${path}: cannot open (${code ?? String(e)})`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new UserError(`${path}: not a regular file`);
    if (st.size > MAX_JSON_BYTES)
      throw new UserError(`${path}: ${st.size} bytes, more than the ${MAX_JSON_BYTES} read`);
    const buf = Buffer.alloc(st.size);
    let done = 0;
    while (done < buf.length) {
      const got = readSync(fd, buf, done, buf.length - done, done);
      if (got === 0) break;
      done += got;
    }
    try {
      return JSON.parse(buf.subarray(0, done).toString("utf8"));
    } catch (e) {
      throw new UserError(`${path}: not valid JSON (${(e as Error).message.split("\n")[0]})`);
    }
  } finally {
    closeSync(fd);
  }
}

/** A text side file (chat_template.jinja), bounded; undefined when absent. */
export function readTextFile(dir: string, name: string, maxBytes: number): string | undefined {
  const path = join(dir, name);
  const st = statSync(path, { throwIfNoEntry: false });
  if (!st) return undefined;
  if (!st.isFile() || st.size > maxBytes)
    throw new UserError(`${path}: not a file of at most ${maxBytes} bytes`);
  return readFileBounded(path, maxBytes).toString("utf8");
}

/** A binary side file (tokenizer.model), bounded; undefined when absent. */
export function readBytesFile(dir: string, name: string, maxBytes: number): Buffer | undefined {
  const path = join(dir, name);
  const st = statSync(path, { throwIfNoEntry: false });
  if (!st) return undefined;
  if (!st.isFile() || st.size > maxBytes)
    throw new UserError(`${path}: not a file of at most ${maxBytes} bytes`);
  return readFileBounded(path, maxBytes);
}

function readFileBounded(path: string, maxBytes: number): Buffer {
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.alloc(Math.min(maxBytes, fstatSync(fd).size));
    let done = 0;
    while (done < buf.length) {
      const got = readSync(fd, buf, done, buf.length - done, done);
      if (got === 0) break;
      done += got;
    }
    return buf.subarray(0, done);
  } finally {
    closeSync(fd);
  }
}

/** The weights of a directory across its safetensors files, tensor by tensor. */
export class HfWeights {
  private constructor(
    readonly dir: string,
    private readonly files: SafetensorsFile[],
    private readonly where: Map<string, SafetensorsFile>,
  ) {}

  static open(dir: string): HfWeights {
    const index = readJsonFile(dir, "model.safetensors.index.json", false);
    const names: string[] = [];
    const claimed = new Map<string, string>();
    if (index === undefined) {
      names.push("model.safetensors");
    } else {
      const path = join(dir, "model.safetensors.index.json");
      const map = isObject(index) && isObject(index.weight_map) ? index.weight_map : undefined;
      if (!map) throw new UserError(`${path}: has no weight_map object`);
      for (const [tensor, file] of Object.entries(map)) {
        // Shards are files of this directory: no path separators, no "..", nothing hidden.
        if (typeof file !== "string" || !/^[A-Za-z0-9_][A-Za-z0-9_.-]*\.safetensors$/.test(file)) {
          throw new UserError(
            `${path}: tensor ${JSON.stringify(tensor)} is mapped to ${JSON.stringify(file)}, not a .safetensors file of the directory`,
          );
        }
        claimed.set(tensor, file);
        if (!names.includes(file)) names.push(file);
      }
    }
    const files: SafetensorsFile[] = [];
    const where = new Map<string, SafetensorsFile>();
    try {
      for (const name of names) {
        const path = join(dir, name);
        if (!statSync(path, { throwIfNoEntry: false })?.isFile()) {
          throw new UserError(
            `${dir}: ${name} is missing (a Hugging Face model needs its safetensors weights)`,
          );
        }
        const f = SafetensorsFile.open(path);
        files.push(f);
        for (const t of f.tensors) {
          const other = where.get(t.name);
          if (other) throw new UserError(`${path}: tensor ${t.name} is also in ${other.path}`);
          where.set(t.name, f);
        }
      }
      for (const [tensor, file] of claimed) {
        if (where.get(tensor)?.path !== join(dir, file)) {
          throw new UserError(`${dir}: the index puts ${tensor} in ${file}, which does not hold it`);
        }
      }
    } catch (e) {
      for (const f of files) f.close();
      throw e;
    }
    return new HfWeights(dir, files, where);
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  info(name: string): SafetensorsTensorInfo | undefined {
    return this.where.get(name)?.tensor(name);
  }

  get names(): string[] {
    return [...this.where.keys()];
  }

  /** A float tensor as f32, checked against the shape expected (PyTorch order, rows first). */
  readFloat32(name: string, shape: readonly number[]): Float32Array {
    const f = this.where.get(name);
    const t = f?.tensor(name);
    if (!f || !t) throw new UserError(`${this.dir}: tensor ${name} is missing`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new UserError(
        `${f.path}: tensor ${name} has shape [${t.shape.join(", ")}], expected [${shape.join(", ")}]`,
      );
    }
    return f.readFloat32(name);
  }

  close(): void {
    for (const f of this.files) f.close();
  }
}

/** Reads config.json values with one-line errors naming the key. */
export class HfConfig {
  constructor(
    readonly json: Json,
    readonly path: string,
  ) {}

  private fail(key: string, rule: string): never {
    throw new UserError(
      `${this.path}: ${key} = ${JSON.stringify(this.json[key])?.slice(0, 40)} is invalid: ${rule}`,
    );
  }

  has(key: string): boolean {
    return this.json[key] !== undefined && this.json[key] !== null;
  }

  integer(key: string, max: number, fallback?: number): number {
    if (!this.has(key)) {
      if (fallback === undefined) throw new UserError(`${this.path}: ${key} is missing`);
      return fallback;
    }
    const v = this.json[key];
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > max) {
      this.fail(key, `must be an integer from 1 to ${max}`);
    }
    return v;
  }

  positive(key: string, fallback: number): number {
    if (!this.has(key)) return fallback;
    const v = this.json[key];
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0)
      this.fail(key, "must be a finite number above 0");
    return v;
  }

  /** A token id, or the first of a list (eos_token_id may be one). */
  tokenId(key: string): number | undefined {
    const v = Array.isArray(this.json[key]) ? (this.json[key] as unknown[])[0] : this.json[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v >= LLAMA_LIMITS.vocab) {
      this.fail(key, "must be a token id");
    }
    return v;
  }

  bool(key: string): boolean {
    const v = this.json[key];
    if (v === undefined || v === null) return false;
    if (typeof v !== "boolean") this.fail(key, "must be true or false");
    return v;
  }
}
