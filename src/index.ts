// smallhammer's library entry: load and run GGUF models, read and write GGUF, tokenize, quantize.
export {
  chatPieces,
  type PieceKind,
  readTokenizerFile,
  type TemplateChoice,
  type TokenizedExample,
  type TokenizeOptions,
  type TokenizerFile,
  tokenizeChat,
  tokenizeCompletion,
  tokenizeRecord,
  tokenizeRecords,
} from "./data/chat-tokens.js";
export {
  type CorpusReadOptions,
  type CorpusSegment,
  type DocumentSplit,
  readCorpusDocuments,
  readCorpusSegments,
} from "./data/corpus.js";
export {
  type BatchOptions,
  type BatchStats,
  emptyBatchStats,
  type FittedExample,
  fitExample,
  type PackedBatch,
  packBatches,
  type SplitOptions,
  shuffled,
  splitValidation,
} from "./data/packing.js";
export {
  DATASET_FORMATS,
  type DatasetFormat,
  type DatasetMessage,
  type DatasetRecord,
  describeIssue,
  describeSource,
  detectFormat,
  type InvalidReason,
  InvalidRecordError,
  type ParsedRecord,
  parseFormatName,
  parseRecord,
  type ReadRecordsOptions,
  type RecordIssue,
  RecordReader,
  type RecordSource,
  readRecords,
} from "./data/records.js";
export { evalTasks, makeTasks, makeWorld, tuningTasks, worldCorpus } from "./data/synthetic.js";
export {
  openTokenCache,
  type TokenCache,
  type TokenCacheIndex,
  TokenCacheWriter,
  type TokenCacheWriterOptions,
  type TokenSplit,
} from "./data/token-cache.js";
export { isUserError, UserError } from "./errors.js";
export { evaluateTasks } from "./eval/tasks.js";
export { GGMLType, ggmlTypeName, parseGgmlTypeName, tensorBytes } from "./formats/ggml-types.js";
export {
  GgufFile,
  GgufHeader,
  GgufValueType,
  GgufWriter,
  readGgufHeader,
  readTensorInto,
} from "./formats/gguf.js";
export { SafetensorsFile, writeSafetensors } from "./formats/safetensors.js";
export { type LlamaConfig, parameterCount } from "./model/config.js";
export { inspectGguf } from "./model/inspect.js";
export { type LlamaLoadOptions, LlamaModel } from "./model/llama.js";
export {
  type LoraAdapter,
  type LoraTensor,
  loraScale,
  mergeLora,
  readLoraGguf,
  readPeftAdapter,
  writeLoraGguf,
  writePeftAdapter,
} from "./model/lora.js";
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
export {
  learnVocabulary,
  type TokenizerTrainOptions,
  type TrainedTokenizer,
  trainTokenizer,
  WordCounter,
  writeTokenizerGguf,
} from "./tokenizer/train.js";
export { tokenizeCorpus, trainTokenizerOnFiles } from "./tokenizer/train-corpus.js";
