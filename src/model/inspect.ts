import { UserError } from "../errors.js";
import { ggmlTypeName } from "../formats/ggml-types.js";
import { type GgufKv, GgufValueType, readGgufHeader } from "../formats/gguf.js";
import { type LlamaConfig, llamaConfigFromMetadata, metadataGetter, parameterCount } from "./config.js";

export interface InspectReport {
  text: string;
  json: Record<string, unknown>;
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

/** A one-line rendering of a metadata value; long arrays are summarized. */
function showValue(kv: GgufKv): string {
  if (kv.type === GgufValueType.ARRAY) {
    const values = kv.value.values as ArrayLike<unknown>;
    const head = Array.from({ length: Math.min(values.length, 6) }, (_, i) => values[i]);
    const shown = head.map((v) =>
      typeof v === "string" ? JSON.stringify(v) : Array.isArray(v) ? "[…]" : String(v),
    );
    return `[${shown.join(", ")}${values.length > head.length ? `, … ${values.length} items` : ""}]`;
  }
  if (kv.type === GgufValueType.STRING) {
    const s = kv.value;
    return JSON.stringify(s.length > 120 ? `${s.slice(0, 117)}...` : s);
  }
  return String(kv.value);
}

function jsonValue(kv: GgufKv): unknown {
  if (kv.type === GgufValueType.ARRAY) {
    const values = kv.value.values as ArrayLike<unknown>;
    if (values.length > 64) return { type: "array", length: values.length };
    return Array.from(values as ArrayLike<unknown>, (v) => (typeof v === "bigint" ? v.toString() : v));
  }
  return typeof kv.value === "bigint" ? kv.value.toString() : kv.value;
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
  lines.push(`architecture ${typeof arch === "string" ? arch : "(none)"}`);
  const json: Record<string, unknown> = {
    file: path,
    version: h.version,
    alignment: h.alignment,
    architecture: arch ?? null,
    fileBytes: h.fileSize,
  };

  let config: LlamaConfig | undefined;
  let configError: string | undefined;
  const embd = h.tensor("token_embd.weight");
  try {
    config = llamaConfigFromMetadata(get, path, embd?.dims[1] ?? 0);
  } catch (e) {
    if (!(e instanceof UserError)) throw e;
    configError = e.message;
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
      `             context ${c.contextLength}, rope base ${c.rope.freqBase}${c.rope.freqScale !== 1 ? ` scale ${c.rope.freqScale}` : ""}, norm eps ${Number(c.normEps.toPrecision(6))}${tied ? ", tied output" : ""}`,
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
  }

  lines.push("", "metadata");
  const meta: Record<string, unknown> = {};
  for (const [key, kv] of h.metadata) {
    lines.push(`  ${key.padEnd(44)} ${showValue(kv)}`);
    meta[key] = jsonValue(kv);
  }
  json.metadata = meta;

  lines.push("", "tensors");
  const byType = new Map<string, { count: number; bytes: number }>();
  const nameWidth = Math.max(6, ...h.tensors.map((t) => t.name.length));
  lines.push(
    `  ${"name".padEnd(nameWidth)}  ${"type".padEnd(6)} ${"shape".padEnd(18)} ${"size".padStart(10)}`,
  );
  for (const t of h.tensors) {
    const type = ggmlTypeName(t.type);
    lines.push(
      `  ${t.name.padEnd(nameWidth)}  ${type.padEnd(6)} ${`[${t.dims.join(", ")}]`.padEnd(18)} ${human(t.byteSize).padStart(10)}`,
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
  return { text: `${lines.join("\n")}\n`, json };
}
