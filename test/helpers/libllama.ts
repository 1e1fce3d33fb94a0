// llama.cpp's own quantizer, reached through the libllama / libggml-base that node-llama-cpp ships
// (test-only, through koffi). Their C API is that of the llama.cpp release node-llama-cpp was built
// from (node_modules/node-llama-cpp/llama/binariesGithubRelease.json): llama.h's
// llama_model_quantize_params is laid out here as that release declares it.
import { existsSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { ROOT } from "./cli.js";

const require = createRequire(import.meta.url);
// koffi is CommonJS; its typings are loose enough that `any` is the honest type here
// biome-ignore lint/suspicious/noExplicitAny: FFI handles
type Koffi = any;
const koffi: Koffi = require("koffi");

/** The directory of node-llama-cpp's prebuilt CPU binaries for this machine. */
function binDir(): string {
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

let ggml: { quantizeChunk: (...args: unknown[]) => number } | undefined;

/**
 * ggml's `ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix)`: what llama-quantize
 * runs per tensor (the reference quantizers without an imatrix, the weighted ones with it).
 */
export function ggmlQuantize(
  type: number,
  src: Float32Array,
  rows: number,
  cols: number,
  rowBytes: number,
  imatrix?: Float32Array,
): Uint8Array {
  if (!ggml) {
    const lib = koffi.load(join(binDir(), "libggml-base.so"));
    ggml = {
      quantizeChunk: lib.func(
        "size_t ggml_quantize_chunk(int type, const float *src, _Out_ uint8_t *dst, int64_t start, int64_t nrows, int64_t n_per_row, const float *imatrix)",
      ),
    };
  }
  const dst = new Uint8Array(rows * rowBytes);
  const n = ggml.quantizeChunk(type, src, dst, 0, rows, cols, imatrix ?? null);
  if (Number(n) !== dst.length)
    throw new Error(`ggml_quantize_chunk wrote ${n} bytes, expected ${dst.length}`);
  return dst;
}

export interface LlamaQuantizeOptions {
  /** llama_ftype, e.g. 15 for Q4_K_M. */
  ftype: number;
  outputTensorType?: number;
  tokenEmbeddingType?: number;
  /** --leave-output-tensor */
  leaveOutputTensor?: boolean;
  pure?: boolean;
  threads?: number;
}

let llama: { quantize: (...args: unknown[]) => number; defaults: () => Record<string, unknown> } | undefined;

/** llama.cpp's `llama_model_quantize(input, output, params)`; throws unless it returns 0. */
export function llamaModelQuantize(input: string, output: string, o: LlamaQuantizeOptions): void {
  if (!llama) {
    const dir = binDir();
    koffi.load(join(dir, "libggml-base.so"));
    koffi.load(join(dir, "libggml.v0.4.0.so"));
    const lib = koffi.load(join(dir, "libllama.v0.4.0.so"));
    // llama.h of the release: llama_model_quantize_params
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
    const logCallback = koffi.proto("void llama_log_callback(int level, const char *text, void *user)");
    const logSet = lib.func("void llama_log_set(llama_log_callback *cb, void *user)");
    const silent = koffi.register(() => {}, koffi.pointer(logCallback));
    logSet(silent, null);
    llama = {
      defaults: lib.func("llama_model_quantize_params llama_model_quantize_default_params(void)"),
      quantize: lib.func(
        "uint32_t llama_model_quantize(const char *fname_inp, const char *fname_out, const llama_model_quantize_params *params)",
      ),
    };
  }
  const params = llama.defaults();
  params.ftype = o.ftype;
  params.nthread = o.threads ?? 1;
  if (o.outputTensorType !== undefined) params.output_tensor_type = o.outputTensorType;
  if (o.tokenEmbeddingType !== undefined) params.token_embedding_type = o.tokenEmbeddingType;
  if (o.leaveOutputTensor) params.quantize_output_tensor = false;
  if (o.pure) params.pure = true;
  const rc = llama.quantize(input, output, params);
  if (rc !== 0) throw new Error(`llama_model_quantize(${input}, ftype ${o.ftype}) returned ${rc}`);
}
