// smallhammer/train: pretraining, fine-tuning (full, LoRA, QLoRA), checkpoints, export, the quickstart.
export { type QuickstartOptions, type QuickstartResult, runQuickstart } from "../quickstart.js";
export {
  type CheckpointInfo,
  readCheckpoint,
  restoreCheckpoint,
  saveCheckpoint,
} from "./checkpoint.js";
export { type BatchSource, RandomWindows, TokenArray, type TokenSequence } from "./data.js";
export { type ExportSummary, exportCheckpoint } from "./export.js";
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
} from "./finetune.js";
export {
  LlamaTrainModel,
  type LoraOptions,
  type ParamTensor,
  type TokenBatch,
  type TrainMemory,
  type TrainModelOptions,
  trainMemory,
} from "./model.js";
export { learningRate, type OptimizerOptions } from "./optimizer.js";
export { type ModelShape, PRESETS } from "./presets.js";
export {
  type OpenedPretrainData,
  type PretrainData,
  type PretrainEvent,
  type PretrainSettings,
  type PretrainSummary,
  pretrain,
  type ResumePretrainOptions,
  resumePretraining,
} from "./pretrain.js";
export { LlamaTrainer, type StepMetrics, type TrainerOptions, type TrainerState } from "./trainer.js";
