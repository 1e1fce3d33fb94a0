import { UserError } from "../errors.js";
import { escapeText, quoteText } from "../formats/escape.js";
import { ggmlTypeName } from "../formats/ggml-types.js";
import {
  type GgufArray,
  type GgufKv,
  GgufValueType,
  ggufValueTypeName,
  readGgufHeader,
} from "../formats/gguf.js";
import {
  InvalidModelConfigError,
  type LlamaConfig,
  llamaConfigFromMetadata,
  metadataGetter,
  parameterCount,
} from "./config.js";

export interface InspectReport {
  text: string;
  json: Record<string, unknown>;
  /**
   * Set when the file declares hyper-parameters no model can run with: the report still shows
   * the file, and the caller should fail with this error after printing it.
   */
  problem?: InvalidModelConfigError;
}

function human(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}

/** How much of a metadata value the text report shows: elements per array, nesting, characters. */
const TEXT_ITEMS = 6;
const TEXT_DEPTH = 4;
const TEXT_CHARS = 160;
/** How much the JSON report spells out before it summarises an array by its type and length. */
const JSON_ITEMS_PER_ARRAY = 64;
const JSON_ITEMS_PER_VALUE = 1024;
const JSON_DEPTH = 8;

function items(n: number): string {
  return n === 1 ? "1 item" : `${n} items`;
}

/** One scalar as text: numbers and 64-bit integers exactly, strings quoted with escapes. */
function showScalar(v: unknown, maxChars: number): string {
  return typeof v === "string" ? quoteText(v, maxChars) : String(v);
}

/**
 * An array as one line, nested arrays with their brackets: at most TEXT_ITEMS elements a level,
 * TEXT_DEPTH levels and about TEXT_CHARS characters, with the element count where it is cut.
 */
function showArray(arr: GgufArray, depth: number, room: { chars: number }): string {
  const values = arr.values as ArrayLike<unknown>;
  const n = values.length;
  if (n === 0) return "[]";
  if (depth >= TEXT_DEPTH) return `[… ${items(n)}]`;
  const parts: string[] = [];
  for (let i = 0; i < Math.min(n, TEXT_ITEMS) && room.chars > 0; i++) {
    const v = values[i];
    const part =
      arr.elementType === GgufValueType.ARRAY
        ? showArray(v as GgufArray, depth + 1, room)
        : showScalar(v, Math.max(8, Math.min(40, room.chars)));
    room.chars -= part.length + 2;
    parts.push(part);
  }
  const cut = parts.length < n ? `${parts.length > 0 ? ", " : ""}… ${items(n)}` : "";
  return `[${parts.join(", ")}${cut}]`;
}

/** A one-line rendering of a metadata value; long and deep arrays are cut, with their counts. */
function showValue(kv: GgufKv): string {
  if (kv.type === GgufValueType.ARRAY) return showArray(kv.value, 0, { chars: TEXT_CHARS });
  return showScalar(kv.value, 120);
}

/** A number for JSON: NaN and the infinities have no JSON form and become strings. */
function jsonNumber(v: number): number | string {
  return Number.isFinite(v) ? v : String(v);
}

function jsonScalar(v: unknown): unknown {
  if (typeof v === "bigint") return v.toString(); // exact: JSON numbers lose digits past 2^53
  if (typeof v === "number") return jsonNumber(v);
  return v;
}

/** An array for JSON, nested arrays as nested JSON arrays; large ones summarised by type and length. */
function jsonArray(arr: GgufArray, depth: number, room: { items: number }): unknown {
  const values = arr.values as ArrayLike<unknown>;
  const n = values.length;
  if (n > JSON_ITEMS_PER_ARRAY || n > room.items || depth >= JSON_DEPTH) {
    return { type: "array", elementType: ggufValueTypeName(arr.elementType), length: n };
  }
  room.items -= n;
  return Array.from(values, (v) =>
    arr.elementType === GgufValueType.ARRAY ? jsonArray(v as GgufArray, depth + 1, room) : jsonScalar(v),
  );
}

function jsonValue(kv: GgufKv): unknown {
  if (kv.type === GgufValueType.ARRAY) return jsonArray(kv.value, 0, { items: JSON_ITEMS_PER_VALUE });
  return jsonScalar(kv.value);
}

/** Memory a run needs: weights as stored, f32 KV cache for `contextSize` tokens, activations. */
export function runMemory(c: LlamaConfig, weightBytes: number, contextSize: number, threads = 2) {
  const kv = 2 * c.layers * contextSize * c.kvHeads * c.headDim * 4;
  const nb = Math.min(128, contextSize);
  const act =
    nb * (4 * c.dim + 2 * c.heads * c.headDim + 2 * c.ffn) * 4 + threads * contextSize * 4 + c.vocab * 4;
  return { weights: weightBytes, kvCache: kv, activations: act, total: weightBytes + kv + act };
}

/** Summarizes a GGUF file: architecture, metadata, tensor table and the memory needed to run it. */
export function inspectGguf(path: string, options: { contextSize?: number } = {}): InspectReport {
  const h = readGgufHeader(path);
  const get = metadataGetter(h);
  const lines: string[] = [];
  const weightBytes = h.tensors.reduce((s, t) => s + t.byteSize, 0);
  const arch = get("general.architecture");
  lines.push(`file         ${path}`);
  lines.push(
    `format       GGUF v${h.version}, ${h.tensors.length} tensors, ${h.metadata.size} metadata keys, alignment ${h.alignment}`,
  );
  lines.push(`architecture ${typeof arch === "string" ? escapeText(arch) : "(none)"}`);
  const json: Record<string, unknown> = {
    file: path,
    version: h.version,
    alignment: h.alignment,
    architecture: typeof arch === "string" ? arch : null,
    fileBytes: h.fileSize,
  };

  let config: LlamaConfig | undefined;
  let configError: string | undefined;
  let problem: InvalidModelConfigError | undefined;
  const embd = h.tensor("token_embd.weight");
  try {
    config = llamaConfigFromMetadata(get, path, embd?.dims[1] ?? 0);
  } catch (e) {
    if (!(e instanceof UserError)) throw e;
    configError = e.message;
    if (e instanceof InvalidModelConfigError) problem = e;
  }
  if (config) {
    const tied = !h.tensor("output.weight");
    const params = parameterCount(config, tied);
    const ctx = options.contextSize ?? Math.min(config.contextLength, 4096);
    const mem = runMemory(config, weightBytes, ctx);
    const c = config;
    lines.push(
      `shape        dim ${c.dim}, ${c.layers} layers, ${c.heads} heads (${c.kvHeads} KV), head dim ${c.headDim}, ffn ${c.ffn}, vocab ${c.vocab}`,
    );
    lines.push(
      `             context ${c.contextLength}, rope base ${c.rope.freqBase}${c.rope.freqScale !== 1 ? ` scale ${c.rope.freqScale}` : ""}${c.rope.yarnOriginalContext !== undefined ? ` (YaRN from ${c.rope.yarnOriginalContext})` : ""}, norm eps ${Number(c.normEps.toPrecision(6))}${tied ? ", tied output" : ""}`,
    );
    lines.push(
      `parameters   ${(params / 1e6).toFixed(2)} M (${((weightBytes * 8) / params).toFixed(2)} bits per weight)`,
    );
    lines.push(
      `memory       ${human(mem.total)} to run with a ${ctx}-token context: weights ${human(mem.weights)} + KV cache ${human(mem.kvCache)} + activations ${human(mem.activations)}`,
    );
    json.config = c;
    json.parameters = params;
    json.memory = { contextSize: ctx, ...mem };
  } else {
    lines.push(`runnable     no: ${configError}`);
    json.runnable = false;
    json.reason = configError;
    // A broken file, not merely one that is not a model (a vocabulary, an adapter, another architecture).
    json.invalid = problem !== undefined;
  }

  lines.push("", "metadata");
  // No prototype: a key named "__proto__" is an ordinary key here.
  const meta: Record<string, unknown> = Object.create(null);
  for (const [key, kv] of h.metadata) {
    lines.push(`  ${escapeText(key).padEnd(44)} ${showValue(kv)}`);
    meta[key] = jsonValue(kv);
  }
  json.metadata = meta;

  lines.push("", "tensors");
  const byType = new Map<string, { count: number; bytes: number }>();
  const names = h.tensors.map((t) => escapeText(t.name));
  const nameWidth = names.reduce((w, name) => Math.max(w, name.length), 6);
  lines.push(
    `  ${"name".padEnd(nameWidth)}  ${"type".padEnd(6)} ${"shape".padEnd(18)} ${"size".padStart(10)}`,
  );
  for (const [i, t] of h.tensors.entries()) {
    const type = ggmlTypeName(t.type);
    lines.push(
      `  ${names[i]!.padEnd(nameWidth)}  ${type.padEnd(6)} ${`[${t.dims.join(", ")}]`.padEnd(18)} ${human(t.byteSize).padStart(10)}`,
    );
    const e = byType.get(type) ?? { count: 0, bytes: 0 };
    e.count++;
    e.bytes += t.byteSize;
    byType.set(type, e);
  }
  lines.push(
    `  total ${human(weightBytes)}: ${[...byType].map(([t, e]) => `${e.count} × ${t} (${human(e.bytes)})`).join(", ")}`,
  );
  json.tensors = h.tensors.map((t) => ({
    name: t.name,
    type: ggmlTypeName(t.type),
    dims: t.dims,
    bytes: t.byteSize,
  }));
  return { text: `${lines.join("\n")}\n`, json, problem };
}
