/**
 * The quickstart: the whole small-model recipe on the project's synthetic world, end to end on a
 * CPU in a few minutes. Every step is the same library call the CLI commands make:
 *
 *  1. write the world's plain-text corpus and its Alpaca-format tuning tasks;
 *  2. train a tokenizer on the corpus (`tokenizer train`);
 *  3. tokenize the corpus into a token cache (`data tokenize`);
 *  4. pretrain a small Llama on it (`pretrain`) and export the base model (`export`);
 *  5. LoRA-tune the base on the tasks with the Alpaca template (`finetune --method lora`);
 *  6. merge the adapter (`merge`) and quantize the result to Q4_0 (`quantize`);
 *  7. score base, tuned F32 and tuned Q4_0 on held-out tasks (`eval tasks`).
 */

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { evalTasks, makeWorld, tuningTasks, worldCorpus } from "./data/synthetic.js";
import { openTokenCache } from "./data/token-cache.js";
import { evaluateTasks, type TaskEvalResult } from "./eval/tasks.js";
import { mergeLora, readLoraGguf } from "./model/lora.js";
import { loadModel } from "./model/model.js";
import { renderChat } from "./model/templates.js";
import { quantizeModel } from "./quant/quantize-model.js";
import { tokenizeCorpus, trainTokenizerOnFiles } from "./tokenizer/train-corpus.js";
import { exportCheckpoint } from "./train/export.js";
import { finetune } from "./train/finetune.js";
import { type PretrainEvent, pretrain } from "./train/pretrain.js";

export interface QuickstartOptions {
  /** Working directory for every file the recipe writes. */
  dir: string;
  threads?: number;
  /** Pretraining and fine-tuning steps (defaults: the full recipe). */
  pretrainSteps?: number;
  finetuneSteps?: number;
  /** Held-out tasks per family (default 12). */
  evalPerFamily?: number;
  seed?: number;
  /** Called at every stage and training step, for progress display. */
  onStage?: (stage: QuickstartStage) => void;
  onTrainEvent?: (phase: "pretrain" | "finetune", e: PretrainEvent) => void;
}

export interface QuickstartStage {
  index: number;
  name: string;
  /** Set when the stage finished: its seconds and a one-line result. */
  seconds?: number;
  result?: string;
}

export interface QuickstartResult {
  files: {
    corpus: string;
    tasks: string;
    tasksText: string;
    tokenizer: string;
    base: string;
    adapter: string;
    tuned: string;
    tunedQ4: string;
  };
  pretrainLoss: number;
  pretrainValLoss?: number;
  finetuneLoss: number;
  scores: { base: TaskEvalResult; tuned: TaskEvalResult; tunedQ4: TaskEvalResult };
  seconds: number;
}

/** The recipe's model: about a million parameters, enough to learn the world in minutes. */
export const QUICKSTART_SHAPE = { dim: 128, layers: 4, heads: 4, kvHeads: 4, ffn: 384, contextLength: 256 };

export async function runQuickstart(options: QuickstartOptions): Promise<QuickstartResult> {
  const dir = options.dir;
  const seed = options.seed ?? 1;
  mkdirSync(dir, { recursive: true });
  const started = performance.now();
  let index = 0;
  const stage = async <T>(name: string, work: () => Promise<T>, result: (r: T) => string): Promise<T> => {
    index++;
    options.onStage?.({ index, name });
    const t = performance.now();
    const r = await work();
    options.onStage?.({ index, name, seconds: (performance.now() - t) / 1000, result: result(r) });
    return r;
  };
  const files = {
    corpus: join(dir, "corpus.txt"),
    tasks: join(dir, "tasks.jsonl"),
    tasksText: join(dir, "tasks.txt"),
    tokenizer: join(dir, "tokenizer.gguf"),
    base: join(dir, "base-f32.gguf"),
    adapter: join(dir, "finetune", "adapter.gguf"),
    tuned: join(dir, "tuned-f32.gguf"),
    tunedQ4: join(dir, "tuned-q4_0.gguf"),
  };
  const world = makeWorld(seed);

  await stage(
    "write the synthetic world: corpus and tuning tasks",
    async () => {
      writeFileSync(files.corpus, worldCorpus(world, 1_500_000));
      const tasks = tuningTasks(world, 4000);
      // The tokenizer learns from all the project's text: the corpus and the tuning conversations.
      writeFileSync(
        files.tasksText,
        tasks
          .map((t) =>
            renderChat(
              [
                { role: "user", content: t.instruction, input: t.input },
                { role: "assistant", content: t.output },
              ],
              { name: "alpaca", bosToken: "", eosToken: "", addGenerationPrompt: false },
            ),
          )
          .join("\n\n"),
      );
      writeFileSync(
        files.tasks,
        tasks
          .map((t) => JSON.stringify({ instruction: t.instruction, input: t.input, output: t.output }))
          .join("\n") + "\n",
      );
      return tasks.length;
    },
    (n) => `${files.corpus}, ${n} tasks in ${files.tasks}`,
  );
  const tok = await stage(
    "train a tokenizer",
    () =>
      trainTokenizerOnFiles([files.corpus, files.tasksText], files.tokenizer, {
        vocabSize: 512,
        progress: false,
      }),
    (s) => `${s.vocabSize} tokens, ${s.merges} merges`,
  );
  const cacheDir = join(dir, "cache");
  const cacheIndex = await stage(
    "tokenize the corpus",
    () =>
      tokenizeCorpus([files.corpus], files.tokenizer, cacheDir, { valFraction: 0.02, seed, progress: false }),
    (i) => `${i.splits.train.tokens} train and ${i.splits.val.tokens} validation tokens`,
  );
  void tok;
  void cacheIndex;
  const pre = await stage(
    "pretrain the base model",
    async () => {
      const cache = await openTokenCache(cacheDir);
      try {
        const run = join(dir, "pretrain");
        return await pretrain(
          {
            shape: QUICKSTART_SHAPE,
            steps: options.pretrainSteps ?? 500,
            batch: 16,
            seq: 128,
            lr: 2e-3,
            warmupSteps: 20,
            seed,
            evalEvery: 0,
            sampleEvery: 0,
            checkpointEvery: 0,
          },
          {
            source: cacheDir,
            train: cache.split("train"),
            val: cache.split("val"),
            tokenizerPath: cache.tokenizerPath,
          },
          run,
          { threads: options.threads, onEvent: (e) => options.onTrainEvent?.("pretrain", e) },
        );
      } finally {
        cache.close();
      }
    },
    (s) =>
      `${s.parameters} parameters, loss ${s.loss.toFixed(3)}${s.valLoss !== undefined ? `, validation ${s.valLoss.toFixed(3)}` : ""}`,
  );
  await stage(
    "export the base model",
    () => exportCheckpoint(join(dir, "pretrain"), files.base, "f32"),
    () => files.base,
  );
  const tuned = await stage(
    "LoRA-tune it on the tasks (alpaca template)",
    () =>
      finetune({
        base: files.base,
        data: files.tasks,
        template: "alpaca",
        method: "lora",
        rank: 8,
        alpha: 16,
        targets: "all",
        steps: options.finetuneSteps ?? 300,
        // The Alpaca prompt alone is about 100 tokens with this small vocabulary.
        batch: 8,
        seq: 256,
        lr: 5e-3,
        out: join(dir, "finetune"),
        threads: options.threads,
        seed,
        onEvent: (e: PretrainEvent) => options.onTrainEvent?.("finetune", e),
      }),
    (s) => `loss ${s.loss.toFixed(3)}, adapter ${files.adapter}`,
  );
  await stage(
    "merge the adapter and quantize to q4_0",
    async () => {
      mergeLora(files.base, readLoraGguf(files.adapter), files.tuned);
      return quantizeModel(files.tuned, files.tunedQ4, "q4_0");
    },
    (q) => `${files.tuned}, ${files.tunedQ4} (${(q.outputBytes / 1048576).toFixed(2)} MiB)`,
  );
  const tasks = evalTasks(world, options.evalPerFamily ?? 12);
  const score = async (path: string) => {
    const model = await loadModel(path, { threads: options.threads, template: "alpaca" });
    try {
      return await evaluateTasks(model, tasks);
    } finally {
      await model.dispose();
    }
  };
  const scores = await stage(
    `score ${tasks.length} held-out tasks`,
    async () => ({
      base: await score(files.base),
      tuned: await score(files.tuned),
      tunedQ4: await score(files.tunedQ4),
    }),
    (s) =>
      `exact match: base ${pct(s.base.accuracy)}, tuned f32 ${pct(s.tuned.accuracy)}, tuned q4_0 ${pct(s.tunedQ4.accuracy)}`,
  );
  return {
    files,
    pretrainLoss: pre.loss,
    pretrainValLoss: pre.valLoss,
    finetuneLoss: tuned.loss,
    scores,
    seconds: (performance.now() - started) / 1000,
  };
}

function pct(x: number): string {
  return `${(100 * x).toFixed(1)}%`;
}
