// smallhammer's library entry: load and run GGUF models, read and write GGUF, tokenize, quantize, convert.
// Datasets, training and the server are subpaths (smallhammer/data, smallhammer/train,
// smallhammer/serve), so that importing the engine loads neither fastify nor the openai client.
export {
  convertGgufToHf,
  type GgufToHfOptions,
  type GgufToHfSummary,
  type HfDtype,
} from "./convert/gguf-to-hf.js";
export { type ConvertSummary, convertHfToGguf, type HfToGgufOptions } from "./convert/hf-to-gguf.js";
export { convertLlama2cToGguf } from "./convert/llama2c.js";
export { convertPeftToGguf, type PeftToGgufSummary } from "./convert/peft.js";
export { AbortError, type ErrorCode, isUserError, UserError } from "./errors.js";
export { renderEvalReport, type WriteEvalReportOptions, writeEvalReport } from "./eval/eval-report.js";
export { type CollectImatrixOptions, collectImatrix } from "./eval/imatrix-collect.js";
export {
  evaluateMc,
  formatMcMarkdown,
  LoglikelihoodScorer,
  type McEvalOptions,
  type McEvalResult,
} from "./eval/mc.js";
export { MC_FORMATS, type McDoc, type McFormat, readMcFile } from "./eval/mc-formats.js";
export {
  type KlDivergenceResult,
  type PerplexityOptions,
  type PerplexityProgress,
  type PerplexityResult,
  perplexity,
} from "./eval/perplexity.js";
export {
  DEFAULT_REPORT_LIMITS,
  LiveRunReport,
  type ReportLimits,
  RunReader,
  type RunReportData,
  renderRunReport,
  type WriteReportOptions,
  type WrittenReport,
  writeRunReport,
} from "./eval/report.js";
export {
  type EvalResult,
  type JudgePairwiseResult,
  type JudgeSingleResult,
  type McResult,
  parseEvalResult,
  readEvalResult,
  type TasksResult,
  taskSummary,
} from "./eval/results.js";
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
export { InvalidModelConfigError, LLAMA_LIMITS, type LlamaConfig, parameterCount } from "./model/config.js";
export { POOLING_TYPES, type PoolingType } from "./model/embedding.js";
export {
  type ConstraintOptions,
  createConstraint,
  GrammarAutomaton,
  GrammarConstraint,
  GrammarError,
  type JsonSchema,
  jsonSchemaToGbnf,
  parseGbnf,
} from "./model/grammar/index.js";
export { inspectGguf } from "./model/inspect.js";
export { type LlamaLoadOptions, LlamaModel } from "./model/llama.js";
export { type TokenLogprob, type TopLogprob, tokenLogprob } from "./model/logprobs.js";
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
  type ChatOptions,
  type EmbedOptions,
  type GenerateOptions,
  type GenerationInfo,
  type LoadModelOptions,
  loadModel,
  Model,
  ModelBase,
} from "./model/model.js";
export { WorkerModel } from "./model/model-worker.js";
export { Sampler, type SamplerOptions } from "./model/sampler.js";
export {
  BUILTIN_TEMPLATE_NAMES,
  ChatTemplateBudgetError,
  chooseTemplate,
  renderChat,
} from "./model/templates.js";
export {
  parseToolCalls,
  type ToolCall,
  ToolCallStream,
  type ToolDefinition,
  type ToolFormat,
  toolCallGrammar,
  toolFormatOf,
} from "./model/tool-calls.js";
export {
  type Imatrix,
  type ImatrixEntry,
  imatrixWeights,
  readImatrix,
  writeImatrix,
} from "./quant/imatrix.js";
export { FILE_TYPES, type FileType, parseFileType } from "./quant/mixes.js";
export {
  type QuantizeOptions,
  type QuantizeProgress,
  type QuantizeSummary,
  quantizeModel,
} from "./quant/quantize-model.js";
export { dequantizeRow, quantizeRow } from "./quant/reference.js";
export type { Backend } from "./runtime/backend.js";
export { WasmBackend } from "./runtime/backend.js";
export { Runtime } from "./runtime/runtime.js";
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
