// smallhammer/data: dataset readers and writers, tokenizing and packing for training, token caches,
// self-instruct against an OpenAI-compatible teacher, ShareGPT cleaning, the synthetic world.
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
} from "./chat-tokens.js";
export {
  type CorpusReadOptions,
  type CorpusSegment,
  type DocumentSplit,
  readCorpusDocuments,
  readCorpusSegments,
} from "./corpus.js";
export {
  type Converted,
  chooseIndices,
  DatasetWriter,
  instructionOf,
  isChosen,
  OUTPUT_FORMATS,
  toFormat,
} from "./dataset-io.js";
export { decodeEntities, htmlToMarkdown, looksLikeHtml } from "./html-to-markdown.js";
export {
  BLACKLISTED_WORDS,
  checkTask,
  type InstructionTask,
  parseTasks,
  type RejectReason,
  selfInstructPrompt,
} from "./instruction-filters.js";
export {
  estimateJaccard,
  jaccard,
  lshParameters,
  MinHasher,
  NearDuplicateIndex,
  type NearDuplicateOptions,
  U64Set,
} from "./minhash.js";
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
} from "./packing.js";
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
} from "./records.js";
export { lcsLength, RougeIndex, rougeL, rougeTokens } from "./rouge.js";
export {
  DEFAULT_SEED_TASKS,
  loadSeedTasks,
  type SelfInstructOptions,
  type SelfInstructState,
  type SelfInstructSummary,
  selfInstruct,
} from "./self-instruct.js";
export {
  type CleanReport,
  type CleanShareGptOptions,
  cleanConversation,
  cleanShareGpt,
  splitByTokens,
} from "./sharegpt-clean.js";
export { evalTasks, makeTasks, makeWorld, tuningTasks, worldCorpus } from "./synthetic.js";
export {
  type ChatReply,
  RateLimiter,
  type RetryInfo,
  TeacherAbortError,
  TeacherClient,
  TeacherError,
  type TeacherOptions,
} from "./teacher.js";
export {
  DETECTABLE_LANGUAGES,
  detectLanguage,
  findRefusal,
  inLanguage,
  REFUSAL_PHRASES,
} from "./text-checks.js";
export {
  openTokenCache,
  type TokenCache,
  type TokenCacheIndex,
  TokenCacheWriter,
  type TokenCacheWriterOptions,
  type TokenSplit,
} from "./token-cache.js";
