// llama.cpp's own quantizer for the benches and the tests: llama_model_quantize of the libllama
// that node-llama-cpp ships, and ggml_quantize_chunk of its libggml-base, reached through koffi (a
// devDependency; the benches are not in the package). The C API is that of the llama.cpp release node-llama-cpp was built from
// (node_modules/node-llama-cpp/llama/binariesGithubRelease.json); llama_model_quantize_params and
// llama_model_imatrix_data are laid out here as its llama.h declares them.
import { existsSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
// koffi is CommonJS and loosely typed: its handles are `any` here.
// biome-ignore lint/suspicious/noExplicitAny: FFI handles
type Koffi = any;

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The directory of node-llama-cpp's prebuilt CPU binaries for this machine. */
export function llamaCppBinDir(): string {
  const base = join(ROOT, "node_modules", "@node-llama-cpp");
  for (const pkg of ["linux-x64", ...readdirSync(base).filter((d) => d.startsWith("linux-x64"))]) {
    const bins = join(base, pkg, "bins");
    if (!existsSync(bins)) continue;
    for (const d of readdirSync(bins)) {
      if (existsSync(join(bins, d, "libggml-base.so"))) return join(bins, d);
    }
  }
  throw new Error(`no prebuilt libllama under ${base}`);
}

export interface LlamaQuantizeOptions {
  /** llama_ftype, e.g. 15 for Q4_K_M. */
  ftype: number;
  threads?: number;
  outputTensorType?: number;
  tokenEmbeddingType?: number;
  /** --leave-output-tensor */
  leaveOutputTensor?: boolean;
  pure?: boolean;
  /** Importance per input column by tensor name (mean squared activations), as llama-quantize passes an imatrix. */
  imatrix?: Map<string, Float32Array>;
}

let api:
  | {
      koffi: Koffi;
      quantize: (...a: unknown[]) => number;
      quantizeChunk: (...a: unknown[]) => number;
      defaults: () => Record<string, unknown>;
    }
  | undefined;

function load() {
  if (api) return api;
  const koffi: Koffi = require("koffi");
  const dir = llamaCppBinDir();
  const so = (prefix: string) => readdirSync(dir).find((f) => f.startsWith(prefix) && f.endsWith(".so"));
  koffi.load(join(dir, "libggml-base.so"));
  koffi.load(join(dir, so("libggml.")!));
  const lib = koffi.load(join(dir, so("libllama.")!));
  koffi.struct("llama_model_quantize_params", {
    nthread: "int32_t",
    ftype: "int",
    output_tensor_type: "int",
    token_embedding_type: "int",
    allow_requantize: "bool",
    quantize_output_tensor: "bool",
    only_copy: "bool",
    pure: "bool",
    keep_split: "bool",
    dry_run: "bool",
    imatrix: "void *",
    kv_overrides: "void *",
    tt_overrides: "void *",
    prune_layers: "void *",
    max_buf_size: "size_t",
  });
  koffi.struct("llama_model_imatrix_data", { name: "void *", data: "void *", size: "size_t" });
  const logCallback = koffi.proto("void llama_log_callback(int level, const char *text, void *user)");
  lib.func("void llama_log_set(llama_log_callback *cb, void *user)")(
    koffi.register(() => {}, koffi.pointer(logCallback)),
    null,
  );
  api = {
    koffi,
    quantizeChunk: koffi
      .load(join(dir, "libggml-base.so"))
      .func(
        "size_t ggml_quantize_chunk(int type, const float *src, _Out_ uint8_t *dst, int64_t start, int64_t nrows, int64_t n_per_row, const float *imatrix)",
      ),
    defaults: lib.func("llama_model_quantize_params llama_model_quantize_default_params(void)"),
    quantize: lib.func(
      "uint32_t llama_model_quantize(const char *fname_inp, const char *fname_out, const llama_model_quantize_params *params)",
    ),
  };
  return api;
}

/** llama.cpp's `llama_model_quantize(input, output, params)`; throws unless it returns 0. */
export function llamaModelQuantize(input: string, output: string, o: LlamaQuantizeOptions): void {
  const { koffi, defaults, quantize } = load();
  const params = defaults();
  params.ftype = o.ftype;
  params.nthread = o.threads ?? 1;
  if (o.outputTensorType !== undefined) params.output_tensor_type = o.outputTensorType;
  if (o.tokenEmbeddingType !== undefined) params.token_embedding_type = o.tokenEmbeddingType;
  if (o.leaveOutputTensor) params.quantize_output_tensor = false;
  if (o.pure) params.pure = true;
  // The imatrix goes as an array of {name, data, size} ended by a null name, in memory that stays put.
  const owned: unknown[] = [];
  const alloc = (type: string, values: ArrayLike<number>) => {
    const p = koffi.alloc(type, values.length);
    koffi.encode(p, type, Array.from(values), values.length);
    owned.push(p);
    return p;
  };
  try {
    if (o.imatrix && o.imatrix.size > 0) {
      const entries = [...o.imatrix].map(([name, w]) => ({
        name: alloc("uint8_t", [...Buffer.from(name, "utf8"), 0]),
        data: alloc("float", w),
        size: w.length,
      }));
      entries.push({ name: null, data: null, size: 0 });
      const table = koffi.alloc("llama_model_imatrix_data", entries.length);
      owned.push(table);
      koffi.encode(table, "llama_model_imatrix_data", entries, entries.length);
      params.imatrix = table;
    }
    const rc = quantize(input, output, params);
    if (rc !== 0) throw new Error(`llama_model_quantize(${input}, ftype ${o.ftype}) returned ${rc}`);
  } finally {
    for (const p of owned) koffi.free(p);
  }
}

/**
 * ggml's `ggml_quantize_chunk(type, src, dst, 0, rows, cols, imatrix)`: what llama-quantize runs per
 * tensor (the reference quantizers without an imatrix, the weighted ones with it).
 */
export function ggmlQuantize(
  type: number,
  src: Float32Array,
  rows: number,
  cols: number,
  rowBytes: number,
  imatrix?: Float32Array,
): Uint8Array {
  const dst = new Uint8Array(rows * rowBytes);
  const n = load().quantizeChunk(type, src, dst, 0, rows, cols, imatrix ?? null);
  if (Number(n) !== dst.length)
    throw new Error(`ggml_quantize_chunk wrote ${n} bytes, expected ${dst.length}`);
  return dst;
}
