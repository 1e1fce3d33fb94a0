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
  type Converted,
  chooseIndices,
  DatasetWriter,
  instructionOf,
  isChosen,
  OUTPUT_FORMATS,
  toFormat,
} from "./data/dataset-io.js";
export { decodeEntities, htmlToMarkdown, looksLikeHtml } from "./data/html-to-markdown.js";
export {
  BLACKLISTED_WORDS,
  checkTask,
  type InstructionTask,
  parseTasks,
  type RejectReason,
  selfInstructPrompt,
} from "./data/instruction-filters.js";
export {
  estimateJaccard,
  jaccard,
  lshParameters,
  MinHasher,
  NearDuplicateIndex,
  type NearDuplicateOptions,
  U64Set,
} from "./data/minhash.js";
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
  readJsonValues,
  readRecords,
} from "./data/records.js";
export { lcsLength, RougeIndex, rougeL, rougeTokens } from "./data/rouge.js";
export {
  DEFAULT_SEED_TASKS,
  loadSeedTasks,
  type SelfInstructOptions,
  type SelfInstructState,
  type SelfInstructSummary,
  selfInstruct,
} from "./data/self-instruct.js";
export {
  type CleanReport,
  type CleanShareGptOptions,
  cleanConversation,
  cleanShareGpt,
  splitByTokens,
} from "./data/sharegpt-clean.js";
export { evalTasks, makeTasks, makeWorld, tuningTasks, worldCorpus } from "./data/synthetic.js";
export {
  type ChatReply,
  RateLimiter,
  type RetryInfo,
  TeacherAbortError,
  TeacherClient,
  TeacherError,
  type TeacherOptions,
} from "./data/teacher.js";
export {
  DETECTABLE_LANGUAGES,
  detectLanguage,
  findRefusal,
  inLanguage,
  REFUSAL_PHRASES,
} from "./data/text-checks.js";
export {
  openTokenCache,
  type TokenCache,
  type TokenCacheIndex,
  TokenCacheWriter,
  type TokenCacheWriterOptions,
  type TokenSplit,
} from "./data/token-cache.js";
export { isUserError, UserError } from "./errors.js";
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
  type ChatOptions,
  type GenerateOptions,
  type GenerationInfo,
  type LoadModelOptions,
  loadModel,
  Model,
} from "./model/model.js";
export { Sampler, type SamplerOptions } from "./model/sampler.js";
export {
  BUILTIN_TEMPLATE_NAMES,
  ChatTemplateBudgetError,
  chooseTemplate,
  renderChat,
} from "./model/templates.js";
export { quantizeModel } from "./quant/quantize-model.js";
export { dequantizeRow, quantizeRow } from "./quant/reference.js";
export { type QuickstartOptions, type QuickstartResult, runQuickstart } from "./quickstart.js";
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
export {
  type CheckpointInfo,
  readCheckpoint,
  restoreCheckpoint,
  saveCheckpoint,
} from "./train/checkpoint.js";
export { type BatchSource, RandomWindows, TokenArray, type TokenSequence } from "./train/data.js";
export { type ExportSummary, exportCheckpoint } from "./train/export.js";
export {
  FINETUNE_METHODS,
  type FinetuneEvent,
  type FinetuneMethod,
  type FinetuneOptions,
  type FinetunePlan,
  type FinetuneRunOptions,
  type FinetuneSettings,
  type FinetuneSummary,
  finetune,
  finetunePlan,
  type ResumeFinetuneOptions,
  resumeFinetune,
} from "./train/finetune.js";
export {
  LlamaTrainModel,
  type LoraOptions,
  type ParamTensor,
  type TokenBatch,
  type TrainMemory,
  type TrainModelOptions,
  trainMemory,
} from "./train/model.js";
export { learningRate, type OptimizerOptions } from "./train/optimizer.js";
export { type ModelShape, PRESETS } from "./train/presets.js";
export {
  type OpenedPretrainData,
  type PretrainData,
  type PretrainEvent,
  type PretrainSettings,
  type PretrainSummary,
  pretrain,
  type ResumePretrainOptions,
  resumePretraining,
} from "./train/pretrain.js";
export { LlamaTrainer, type StepMetrics, type TrainerOptions, type TrainerState } from "./train/trainer.js";
