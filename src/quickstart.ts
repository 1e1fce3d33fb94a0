/**
 * The quickstart: the whole small-model recipe on the project's synthetic world, end to end on a
 * CPU in a few minutes. Every step is the same library call the CLI commands make:
 *
 *  1. write the world's plain-text corpus and its Alpaca-format tuning tasks;
 *  2. train a tokenizer on the corpus (`tokenizer train`);
 *  3. tokenize the corpus into a token cache (`data tokenize`);
 *  4. pretrain a small Llama on it (`pretrain`) and export the base model (`export`);
 *  5. fine-tune every weight of the base on the tasks with the Alpaca template (`finetune --method
 *     full`; with `recipe.finetuneMethod` "lora", a LoRA adapter that step 6 merges);
 *  6. quantize the tuned model to Q4_0 (`quantize`);
 *  7. score base, tuned F32 and tuned Q4_0 on held-out tasks (`eval tasks`).
 */

import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { evalTasks, makeWorld, tuningTasks, worldCorpus } from "./data/synthetic.js";
import { openTokenCache } from "./data/token-cache.js";
import { UserError } from "./errors.js";
import { writeEvalReport } from "./eval/eval-report.js";
import { LiveRunReport, REPORT_FILE, writeRunReport } from "./eval/report.js";
import { taskSummary } from "./eval/results.js";
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
  /** Changes to the recipe's settings (default: `QUICKSTART_RECIPE`), for experiments. */
  recipe?: Partial<QuickstartRecipe>;
  /**
   * Reuse the stages an earlier run in `dir` finished with the same settings (the evaluation always
   * runs). Without it, an earlier quickstart's files in `dir` are removed and the recipe starts afresh.
   */
  resume?: boolean;
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
  /** Set with `seconds` when the stage's outputs came from an earlier run (`resume`). */
  reused?: boolean;
}

export interface QuickstartResult {
  files: {
    corpus: string;
    tasks: string;
    tasksText: string;
    tokenizer: string;
    base: string;
    /** The fine-tune's own output: the full model, or with LoRA the adapter. */
    finetuned: string;
    tuned: string;
    tunedQ4: string;
    /** The training runs' report pages (`smallhammer report`). */
    pretrainReport: string;
    finetuneReport: string;
    /** The evaluation report of base, tuned and quantized models (`eval report`). */
    evalReport: string;
  };
  pretrainLoss: number;
  pretrainValLoss?: number;
  finetuneLoss: number;
  scores: { base: TaskEvalResult; tuned: TaskEvalResult; tunedQ4: TaskEvalResult };
  seconds: number;
}

/** The recipe's model: about a million parameters, enough to learn the world in minutes. */
export const QUICKSTART_SHAPE = { dim: 128, layers: 4, heads: 4, kvHeads: 4, ffn: 384, contextLength: 256 };

/** The recipe's settings besides the step counts; `QUICKSTART_RECIPE` holds the measured best. */
export interface QuickstartRecipe {
  /** Characters of pretraining corpus and number of tuning tasks. */
  corpusChars: number;
  tuningTasks: number;
  vocabSize: number;
  /** Keep every digit its own token. */
  splitDigits: boolean;
  /** Characters the tokenizer never merges (see TokenizerTrainOptions.isolate). */
  isolate: string;
  shape: typeof QUICKSTART_SHAPE;
  pretrainBatch: number;
  pretrainSeq: number;
  pretrainLr: number;
  finetuneMethod: "lora" | "full";
  loraRank: number;
  finetuneBatch: number;
  finetuneSeq: number;
  finetuneLr: number;
}

export const QUICKSTART_RECIPE: QuickstartRecipe = {
  corpusChars: 1_500_000,
  tuningTasks: 4000,
  vocabSize: 1024,
  splitDigits: true,
  isolate: '"',
  shape: QUICKSTART_SHAPE,
  pretrainBatch: 16,
  pretrainSeq: 128,
  pretrainLr: 4e-3,
  finetuneMethod: "full",
  loraRank: 8,
  finetuneBatch: 8,
  finetuneSeq: 256,
  finetuneLr: 1e-3,
};

/** The file in a quickstart directory that marks it as one and records the stages it finished. */
const MARKER = "quickstart.json";
const MARKER_KIND = "smallhammer-quickstart";

interface QuickstartMarker {
  kind: typeof MARKER_KIND;
  /** Per stage key: the settings it ran with and its (JSON) result. */
  stages: Record<string, { settings: string; result: unknown }>;
}

/** Every file and directory a quickstart writes in its directory, the marker last. */
const OUTPUTS = [
  "corpus.txt",
  "tasks.jsonl",
  "tasks.txt",
  "tokenizer.gguf",
  "cache",
  "pretrain",
  "base-f32.gguf",
  "finetune",
  "tuned-f32.gguf",
  "tuned-q4_0.gguf",
  "eval-report.html",
  MARKER,
];

/**
 * Makes `dir` ready: created when missing; an earlier quickstart's directory (it holds the marker)
 * is emptied of the quickstart's files, or kept for `resume`; any other non-empty directory, or a
 * file, is refused so that no one else's files are touched.
 */
function openQuickstartDir(dir: string, resume: boolean): QuickstartMarker {
  const fresh: QuickstartMarker = { kind: MARKER_KIND, stages: {} };
  if (!existsSync(dir)) {
    mkdirSync(dir, { recursive: true });
    return fresh;
  }
  if (!statSync(dir).isDirectory()) throw new UserError(`--dir ${dir}: exists and is not a directory`);
  const markerPath = join(dir, MARKER);
  if (!existsSync(markerPath)) {
    if (readdirSync(dir).length === 0) return fresh;
    throw new UserError(
      `--dir ${dir}: not empty and not a quickstart's directory (no ${MARKER}); choose another --dir`,
    );
  }
  let marker: QuickstartMarker | undefined;
  try {
    const parsed = JSON.parse(readFileSync(markerPath, "utf8"));
    if (parsed?.kind === MARKER_KIND && typeof parsed.stages === "object") marker = parsed;
  } catch {
    // An unreadable marker is treated as a run with nothing to reuse.
  }
  if (resume && marker) return marker;
  for (const name of OUTPUTS) rmSync(join(dir, name), { recursive: true, force: true });
  return fresh;
}

function saveMarker(dir: string, marker: QuickstartMarker): void {
  const path = join(dir, MARKER);
  writeFileSync(`${path}.tmp`, `${JSON.stringify(marker, null, 2)}\n`);
  renameSync(`${path}.tmp`, path);
}

export async function runQuickstart(options: QuickstartOptions): Promise<QuickstartResult> {
  const dir = options.dir;
  const seed = options.seed ?? 1;
  const marker = openQuickstartDir(dir, options.resume ?? false);
  const started = performance.now();
  let index = 0;
  // Once one stage runs, every later one runs too: it depends on what the earlier ones wrote.
  let reusing = true;
  /**
   * Runs (or, resuming, reuses) one stage. `settings` are what its outputs depend on besides the
   * earlier stages; `outputs` are removed before it runs; its result must survive JSON.
   */
  const stage = async <T>(
    key: string,
    name: string,
    settings: object,
    outputs: string[],
    work: () => Promise<T>,
    result: (r: T) => string,
  ): Promise<T> => {
    index++;
    const fingerprint = JSON.stringify(settings);
    const done = marker.stages[key];
    if (reusing && done?.settings === fingerprint && outputs.every((p) => existsSync(p))) {
      const r = done.result as T;
      options.onStage?.({ index, name, seconds: 0, result: result(r), reused: true });
      return r;
    }
    reusing = false;
    delete marker.stages[key];
    for (const p of outputs) rmSync(p, { recursive: true, force: true });
    options.onStage?.({ index, name });
    const t = performance.now();
    const r = await work();
    marker.stages[key] = { settings: fingerprint, result: r };
    saveMarker(dir, marker);
    options.onStage?.({ index, name, seconds: (performance.now() - t) / 1000, result: result(r) });
    return r;
  };
  saveMarker(dir, marker);
  const recipe = { ...QUICKSTART_RECIPE, ...options.recipe };
  const files = {
    corpus: join(dir, "corpus.txt"),
    tasks: join(dir, "tasks.jsonl"),
    tasksText: join(dir, "tasks.txt"),
    tokenizer: join(dir, "tokenizer.gguf"),
    base: join(dir, "base-f32.gguf"),
    finetuned: join(dir, "finetune", recipe.finetuneMethod === "full" ? "model.gguf" : "adapter.gguf"),
    tuned: join(dir, "tuned-f32.gguf"),
    tunedQ4: join(dir, "tuned-q4_0.gguf"),
    pretrainReport: join(dir, "pretrain", REPORT_FILE),
    finetuneReport: join(dir, "finetune", REPORT_FILE),
    evalReport: join(dir, "eval-report.html"),
  };
  const world = makeWorld(seed);
  // What each stage's outputs depend on, earlier stages included.
  const worldSettings = { seed, corpusChars: recipe.corpusChars, tuningTasks: recipe.tuningTasks };
  const tokenizerSettings = {
    ...worldSettings,
    vocabSize: recipe.vocabSize,
    splitDigits: recipe.splitDigits,
    isolate: recipe.isolate,
  };
  const pretrainSettings = {
    ...tokenizerSettings,
    shape: recipe.shape,
    pretrainBatch: recipe.pretrainBatch,
    pretrainSeq: recipe.pretrainSeq,
    pretrainLr: recipe.pretrainLr,
  };
  const finetuneSettings = {
    ...pretrainSettings,
    finetuneMethod: recipe.finetuneMethod,
    loraRank: recipe.loraRank,
    finetuneBatch: recipe.finetuneBatch,
    finetuneSeq: recipe.finetuneSeq,
    finetuneLr: recipe.finetuneLr,
  };
  const pretrainSteps = options.pretrainSteps ?? 1400;
  const finetuneSteps = options.finetuneSteps ?? 300;

  await stage(
    "world",
    "write the synthetic world: corpus and tuning tasks",
    worldSettings,
    [files.corpus, files.tasksText, files.tasks],
    async () => {
      writeFileSync(files.corpus, worldCorpus(world, recipe.corpusChars));
      const tasks = tuningTasks(world, recipe.tuningTasks);
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
  await stage(
    "tokenizer",
    "train a tokenizer",
    tokenizerSettings,
    [files.tokenizer],
    async () => {
      const s = await trainTokenizerOnFiles([files.corpus, files.tasksText], files.tokenizer, {
        vocabSize: recipe.vocabSize,
        splitDigits: recipe.splitDigits,
        isolate: recipe.isolate,
        progress: false,
      });
      return { vocabSize: s.vocabSize, merges: s.merges };
    },
    (s) => `${s.vocabSize} tokens, ${s.merges} merges`,
  );
  const cacheDir = join(dir, "cache");
  await stage(
    "cache",
    "tokenize the corpus",
    tokenizerSettings,
    [cacheDir],
    async () => {
      const i = await tokenizeCorpus([files.corpus], files.tokenizer, cacheDir, {
        valFraction: 0.02,
        seed,
        progress: false,
      });
      return { train: i.splits.train.tokens, val: i.splits.val.tokens };
    },
    (i) => `${i.train} train and ${i.val} validation tokens`,
  );
  const pretrainRun = join(dir, "pretrain");
  const pre = await stage(
    "pretrain",
    "pretrain the base model",
    { ...pretrainSettings, pretrainSteps },
    [pretrainRun],
    async () => {
      const cache = await openTokenCache(cacheDir);
      const report = new LiveRunReport(pretrainRun);
      try {
        const s = await pretrain(
          {
            shape: recipe.shape,
            steps: pretrainSteps,
            batch: recipe.pretrainBatch,
            seq: recipe.pretrainSeq,
            lr: recipe.pretrainLr,
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
          pretrainRun,
          {
            threads: options.threads,
            onEvent: (e) => {
              report.onEvent(e);
              options.onTrainEvent?.("pretrain", e);
            },
          },
        );
        return { parameters: s.parameters, loss: s.loss, valLoss: s.valLoss };
      } finally {
        cache.close();
      }
    },
    (s) =>
      `${s.parameters} parameters, loss ${s.loss.toFixed(3)}${s.valLoss !== undefined ? `, validation ${s.valLoss.toFixed(3)}` : ""}`,
  );
  // Written afresh also for a reused stage, so the page is there and current.
  await writeRunReport([pretrainRun]);
  await stage(
    "export",
    "export the base model",
    { ...pretrainSettings, pretrainSteps },
    [files.base],
    async () => {
      await exportCheckpoint(pretrainRun, files.base, "f32");
      return files.base;
    },
    (path) => path,
  );
  const tuned = await stage(
    "finetune",
    `${recipe.finetuneMethod === "full" ? "fine-tune" : "LoRA-tune"} it on the tasks (alpaca template)`,
    { ...finetuneSettings, pretrainSteps, finetuneSteps },
    [join(dir, "finetune")],
    async () => {
      const report = new LiveRunReport(join(dir, "finetune"));
      const s = await finetune({
        base: files.base,
        data: files.tasks,
        template: "alpaca",
        method: recipe.finetuneMethod,
        rank: recipe.loraRank,
        alpha: 2 * recipe.loraRank,
        targets: "all",
        steps: finetuneSteps,
        // The Alpaca prompt alone is about 100 tokens with this small vocabulary.
        batch: recipe.finetuneBatch,
        seq: recipe.finetuneSeq,
        lr: recipe.finetuneLr,
        // A short run on clean synthetic tasks: no dropout, the pretraining betas, a short warmup,
        // validation at the end only.
        dropout: 0,
        beta2: 0.95,
        warmupSteps: Math.min(20, Math.floor(finetuneSteps / 10)),
        evalEvery: 0,
        out: join(dir, "finetune"),
        threads: options.threads,
        seed,
        onEvent: (e) => {
          if (e.type === "data") return;
          report.onEvent(e);
          options.onTrainEvent?.("finetune", e);
        },
      });
      return { loss: s.loss };
    },
    (s) =>
      `loss ${s.loss.toFixed(3)}, ${recipe.finetuneMethod === "full" ? "model" : "adapter"} ${files.finetuned}`,
  );
  await writeRunReport([join(dir, "finetune")]);
  await stage(
    "merge",
    recipe.finetuneMethod === "full" ? "quantize to q4_0" : "merge the adapter and quantize to q4_0",
    { ...finetuneSettings, pretrainSteps, finetuneSteps },
    [files.tuned, files.tunedQ4],
    async () => {
      if (recipe.finetuneMethod === "full") copyFileSync(files.finetuned, files.tuned);
      else mergeLora(files.base, readLoraGguf(files.finetuned), files.tuned);
      const q = await quantizeModel(files.tuned, files.tunedQ4, "q4_0");
      return { outputBytes: q.outputBytes };
    },
    (q) => `${files.tuned}, ${files.tunedQ4} (${(q.outputBytes / 1048576).toFixed(2)} MiB)`,
  );
  const tasks = evalTasks(world, options.evalPerFamily ?? 12);
  const score = async (path: string) => {
    const model = await loadModel(path, { threads: options.threads, template: "alpaca", worker: false });
    try {
      return await evaluateTasks(model, tasks);
    } finally {
      await model.dispose();
    }
  };
  // Scored afresh on every run (the number of tasks may differ), and not recorded in the marker.
  const scoreStage = { index: ++index, name: `score ${tasks.length} held-out tasks` };
  options.onStage?.(scoreStage);
  const scoreStarted = performance.now();
  const scores = {
    base: await score(files.base),
    tuned: await score(files.tuned),
    tunedQ4: await score(files.tunedQ4),
  };
  options.onStage?.({
    ...scoreStage,
    seconds: (performance.now() - scoreStarted) / 1000,
    result: `exact match: base ${pct(scores.base.accuracy)}, tuned f32 ${pct(scores.tuned.accuracy)}, tuned q4_0 ${pct(scores.tunedQ4.accuracy)}`,
  });
  // The same page `eval report` draws from result files, so the three models compare at a glance.
  writeEvalReport(
    [
      taskSummary("base f32", scores.base),
      taskSummary("tuned f32", scores.tuned),
      taskSummary("tuned q4_0", scores.tunedQ4),
    ],
    files.evalReport,
    { force: true },
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
