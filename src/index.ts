// smallhammer's library entry: load and run GGUF models, read and write GGUF, tokenize, quantize.
export { isUserError, UserError } from "./errors.js";
export { GGMLType, ggmlTypeName, parseGgmlTypeName, tensorBytes } from "./formats/ggml-types.js";
export {
  GgufFile,
  GgufHeader,
  GgufValueType,
  GgufWriter,
  readGgufHeader,
  readTensorInto,
} from "./formats/gguf.js";
export { type LlamaConfig, parameterCount } from "./model/config.js";
export { inspectGguf } from "./model/inspect.js";
export { type LlamaLoadOptions, LlamaModel } from "./model/llama.js";
export {
  type ChatMessage,
  type GenerateOptions,
  type GenerationInfo,
  type LoadModelOptions,
  loadModel,
  Model,
} from "./model/model.js";
export { Sampler, type SamplerOptions } from "./model/sampler.js";
export { BUILTIN_TEMPLATE_NAMES, chooseTemplate, renderChat } from "./model/templates.js";
export { quantizeModel } from "./quant/quantize-model.js";
export { dequantizeRow, quantizeRow } from "./quant/reference.js";
export type { Backend } from "./runtime/backend.js";
export { WasmBackend } from "./runtime/backend.js";
export { Runtime } from "./runtime/runtime.js";
export { type RunningServer, type ServerOptions, startServer } from "./serve/server.js";
export { StreamDecoder, Tokenizer } from "./tokenizer/index.js";
