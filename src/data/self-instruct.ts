/**
 * Self-instruct: grow an instruction dataset from a few seed tasks with a teacher model, as Stanford
 * Alpaca made its 52K examples.
 *
 *   const summary = await selfInstruct({
 *     teacher: new TeacherClient({ url: "http://127.0.0.1:8080/v1", model: "teacher" }),
 *     seeds: await loadSeedTasks(),          // the project's own seed tasks
 *     num: 1000,
 *     out: "generated.jsonl",
 *   });
 *
 * Each request shows the teacher a few seed tasks (and one already generated task once there are
 * some) and asks it to continue the numbered list; every task in the reply is checked
 * (instruction-filters.ts) and against all kept and seed instructions with ROUGE-L (rouge.ts).
 * Kept tasks are appended to `out` as Alpaca JSONL ({instruction, input, output} per line).
 *
 * Resuming: `out` is append-only and `out.state.json` (written by rename after every reply) holds
 * the counters. A run killed at any moment and started again with the same `out` reads the
 * complete lines back (a line cut by the kill is dropped), indexes them, and goes on to `num`:
 * nothing kept is lost and, as every new task is checked against every kept one, nothing is
 * repeated. Requests in flight at the kill are lost (their tokens too).
 */

import {
  closeSync,
  existsSync,
  fstatSync,
  ftruncateSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { fileURLToPath } from "node:url";
import { UserError } from "../errors.js";
import { Rng } from "../util/random.js";
import {
  checkTask,
  type InstructionTask,
  parseTasks,
  type RejectReason,
  selfInstructPrompt,
  type TaskFilterOptions,
} from "./instruction-filters.js";
import { RecordReader } from "./records.js";
import { RougeIndex, rougeTokens } from "./rouge.js";
import { TeacherAbortError, type TeacherClient } from "./teacher.js";

/** The project's own seed tasks (Alpaca's seed format), shipped with the package. */
export const DEFAULT_SEED_TASKS = fileURLToPath(new URL("../../src/data/seed-tasks.jsonl", import.meta.url));

/**
 * Seed tasks from a file: Alpaca's seed format ({instruction, instances: [{input, output}]}; the
 * first instance of each task) or Alpaca records ({instruction, input, output}).
 */
export async function loadSeedTasks(path = DEFAULT_SEED_TASKS): Promise<InstructionTask[]> {
  const reader = await RecordReader.open(path, { format: "alpaca" });
  const tasks: InstructionTask[] = [];
  const seen = new Set<string>();
  for await (const record of reader) {
    const [user, assistant] = record.messages;
    if (seen.has(user!.content)) continue; // later instances of a seed task
    seen.add(user!.content);
    tasks.push({ instruction: user!.content, input: user!.input ?? "", output: assistant!.content });
  }
  if (tasks.length === 0) throw new UserError(`${path}: no seed tasks`);
  return tasks;
}

export interface SelfInstructOptions extends TaskFilterOptions {
  teacher: TeacherClient;
  seeds: readonly InstructionTask[];
  /** Kept tasks wanted in `out` (counting those a resumed run already has). */
  num: number;
  /** Alpaca JSONL output, appended to; `${out}.state.json` beside it. */
  out: string;
  /** Requests in flight at once (default 4). */
  concurrency?: number;
  /** Example tasks shown per request (default 3), one of them generated when there are any. */
  examplesPerPrompt?: number;
  /** Length of the list the teacher is asked to complete, examples included (default 20). */
  listLength?: number;
  /** Most tokens per reply (default 3072). */
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  /** ROUGE-L F at or above which a task is too similar to a kept one (default 0.7). */
  rougeThreshold?: number;
  /** Seed of the example choice (default 0). */
  seed?: number;
  /** Prices in currency units per million prompt and completion tokens (default 0). */
  priceIn?: number;
  priceOut?: number;
  /** Stop after this many replies in a row give no kept task (default 25). */
  maxFruitlessReplies?: number;
  /** Stops the run (state saved, resumable). */
  signal?: AbortSignal;
  /** Called after every reply, and once at the start with the resumed counts. */
  onProgress?: (state: SelfInstructState) => void;
}

/** Counters of a run, kept across resumes in `${out}.state.json`. */
export interface SelfInstructState {
  version: 1;
  teacher: string;
  model: string;
  kept: number;
  /** Requests answered. */
  replies: number;
  /** Replies in which no task could be parsed. */
  emptyReplies: number;
  /**
   * Tasks from replies that were judged: always `kept` plus every count in `rejected` (tasks of a
   * reply past the wanted number are left unjudged and not counted).
   */
  candidates: number;
  rejected: Partial<Record<RejectReason, number>>;
  promptTokens: number;
  completionTokens: number;
  /** True when some server reported no usage and counts were estimated. */
  tokensEstimated: boolean;
  /** Requests sent again, and why ("429", "timeout", "connection", "cut off"...). */
  retries: number;
  retriesByReason: Record<string, number>;
  /** Bytes of `out` after the last reply written (a longer file has lines written after it). */
  outBytes: number;
}

export interface SelfInstructSummary extends SelfInstructState {
  out: string;
  target: number;
  /** True when the run went on from an earlier one's output. */
  resumed: boolean;
  /** Tasks kept by this run (not by the earlier ones). */
  keptNow: number;
  /** True when it stopped on the signal before reaching `num`. */
  stopped: boolean;
  cost: number;
  rouge: { size: number; lcsComputed: number; candidates: number };
}

/** `${out}.state.json` */
export function statePath(out: string): string {
  return `${out}.state.json`;
}

/** Generated tasks kept in memory for prompts (the newest; older ones stay in the file only). */
const RECENT_TASKS = 256;

export async function selfInstruct(options: SelfInstructOptions): Promise<SelfInstructSummary> {
  const { teacher, seeds, num, out } = options;
  const concurrency = options.concurrency ?? 4;
  const examplesPerPrompt = options.examplesPerPrompt ?? 3;
  const listLength = options.listLength ?? 20;
  if (seeds.length === 0) throw new UserError("self-instruct: no seed tasks");
  if (examplesPerPrompt < 1 || listLength <= examplesPerPrompt) {
    throw new UserError(
      `self-instruct: the list length (${listLength}) must exceed the examples per prompt (${examplesPerPrompt})`,
    );
  }

  const index = new RougeIndex(options.rougeThreshold ?? 0.7);
  for (const s of seeds) index.add(s.instruction);
  const resumed = await resume(out, teacher, index);
  const state = resumed.state;
  const recent = resumed.recent;
  const keptBefore = state.kept;
  const rng = new Rng((options.seed ?? 0) ^ Math.imul(state.replies + 1, 0x9e3779b1));

  let fd: number;
  try {
    fd = openSync(out, "a");
  } catch (e) {
    throw new UserError(`${out}: cannot write (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  const saveState = () => {
    state.outBytes = fstatSync(fd).size;
    const tmp = `${statePath(out)}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(state, null, 2)}\n`);
    renameSync(tmp, statePath(out));
  };
  saveState();
  options.onProgress?.(state);

  const pickExamples = (): InstructionTask[] => {
    const generated = recent.length > 0 ? 1 : 0;
    const chosen = new Set<number>();
    const wantSeeds = Math.min(examplesPerPrompt - generated, seeds.length);
    while (chosen.size < wantSeeds) chosen.add(rng.nextInt(seeds.length));
    const examples = [...chosen].map((i) => seeds[i]!);
    if (generated) examples.push(recent[rng.nextInt(recent.length)]!);
    return rng.shuffle(examples);
  };

  /** Checks the reply's tasks, appends the kept ones, saves the state; true when one was kept. */
  const take = (text: string, finishReason: string | null): boolean => {
    state.replies++;
    const tasks = parseTasks(text);
    if (tasks.length === 0) state.emptyReplies++;
    // A reply cut at max tokens may end in a task cut short.
    if (finishReason === "length" && tasks.length > 0) {
      tasks.pop();
      reject("truncated");
    }
    let lines = "";
    let keptHere = 0;
    for (const task of tasks) {
      if (state.kept >= num) break;
      const reason = checkTask(task, options);
      if (reason) {
        reject(reason);
        continue;
      }
      const tokens = rougeTokens(task.instruction);
      if (index.findMatch(tokens)) {
        reject("similar");
        continue;
      }
      index.add(tokens);
      recent.push(task);
      if (recent.length > RECENT_TASKS) recent.shift();
      lines += `${JSON.stringify({ instruction: task.instruction, input: task.input, output: task.output })}\n`;
      state.kept++;
      state.candidates++;
      keptHere++;
    }
    if (lines !== "") writeSync(fd, lines);
    saveState();
    return keptHere > 0;
  };
  // A candidate is counted with its verdict: kept above, or rejected here.
  const reject = (reason: RejectReason) => {
    state.candidates++;
    state.rejected[reason] = (state.rejected[reason] ?? 0) + 1;
  };

  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  let fruitless = 0;
  let failure: unknown;
  const worker = async () => {
    while (state.kept < num && !signal.aborted) {
      const prompt = selfInstructPrompt(pickExamples(), listLength);
      let reply: Awaited<ReturnType<TeacherClient["complete"]>>;
      try {
        reply = await teacher.complete({
          messages: [{ role: "user", content: prompt }],
          maxTokens: options.maxTokens ?? 3072,
          temperature: options.temperature ?? 1,
          topP: options.topP ?? 1,
          signal,
          onRetry: (retry) => {
            state.retries++;
            state.retriesByReason[retry.reason] = (state.retriesByReason[retry.reason] ?? 0) + 1;
          },
        });
      } catch (e) {
        if (e instanceof TeacherAbortError) return;
        failure ??= e;
        stop.abort();
        return;
      }
      state.promptTokens += reply.promptTokens;
      state.completionTokens += reply.completionTokens;
      if (!reply.usageReported) state.tokensEstimated = true;
      if (state.kept >= num) {
        saveState();
        return;
      }
      fruitless = take(reply.text, reply.finishReason) ? 0 : fruitless + 1;
      options.onProgress?.(state);
      if (state.kept >= num) stop.abort();
      else if (fruitless >= (options.maxFruitlessReplies ?? 25)) {
        failure ??= new UserError(
          `teacher ${teacher.url}: ${fruitless} replies in a row gave no usable task (${describeRejected(state)}); ` +
            `check that "${teacher.model}" follows the prompt's format`,
        );
        stop.abort();
      }
    }
  };
  try {
    if (state.kept < num) await Promise.all(Array.from({ length: concurrency }, worker));
    saveState();
  } finally {
    closeSync(fd);
  }
  if (failure) throw failure;
  const stats = index.getStats();
  return {
    ...state,
    out,
    target: num,
    resumed: resumed.resumed,
    keptNow: state.kept - keptBefore,
    stopped: state.kept < num,
    cost: cost(state, options.priceIn ?? 0, options.priceOut ?? 0),
    rouge: { size: stats.size, lcsComputed: stats.lcsComputed, candidates: stats.candidates },
  };
}

export function cost(
  state: Pick<SelfInstructState, "promptTokens" | "completionTokens">,
  priceIn: number,
  priceOut: number,
) {
  return (state.promptTokens * priceIn + state.completionTokens * priceOut) / 1e6;
}

/** `similar 12, too short 3` */
export function describeRejected(state: Pick<SelfInstructState, "rejected">): string {
  const entries = Object.entries(state.rejected).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  return entries.length === 0 ? "none rejected" : entries.map(([r, n]) => `${r} ${n}`).join(", ");
}

/**
 * The state of an earlier run on `out` with its kept tasks read back into the index (and the newest
 * into `recent`), after dropping a last line cut short by a kill; a fresh state when there is no
 * output yet. The kept count comes from the file, which is the truth.
 */
async function resume(
  out: string,
  teacher: TeacherClient,
  index: RougeIndex,
): Promise<{ state: SelfInstructState; recent: InstructionTask[]; resumed: boolean }> {
  const fresh: SelfInstructState = {
    version: 1,
    teacher: teacher.url,
    model: teacher.model,
    kept: 0,
    replies: 0,
    emptyReplies: 0,
    candidates: 0,
    rejected: {},
    promptTokens: 0,
    completionTokens: 0,
    tokensEstimated: false,
    retries: 0,
    retriesByReason: {},
    outBytes: 0,
  };
  const hasOut = existsSync(out);
  const hasState = existsSync(statePath(out));
  if (!hasOut && hasState) rmSync(statePath(out)); // a state without its output describes nothing
  if (!hasOut) return { state: fresh, recent: [], resumed: false };
  if (!statSync(out).isFile()) throw new UserError(`${out}: not a file`);
  if (!hasState) {
    if (statSync(out).size === 0) return { state: fresh, recent: [], resumed: false };
    throw new UserError(
      `${out} exists and has no ${statePath(out)}, so it is not a self-instruct run to resume; choose another --out or remove it`,
    );
  }
  let state: SelfInstructState;
  try {
    state = JSON.parse(readText(statePath(out)));
    if (state.version !== 1 || typeof state.kept !== "number") throw new Error("unknown version");
  } catch (e) {
    throw new UserError(`${statePath(out)}: not a self-instruct state file (${(e as Error).message})`);
  }
  dropCutLine(out);
  const recent: InstructionTask[] = [];
  let count = 0;
  if (statSync(out).size > 0) {
    const reader = await RecordReader.open(out, { format: "alpaca" });
    for await (const record of reader) {
      const [user, assistant] = record.messages;
      const task = { instruction: user!.content, input: user!.input ?? "", output: assistant!.content };
      index.add(task.instruction);
      recent.push(task);
      if (recent.length > RECENT_TASKS) recent.shift();
      count++;
    }
  }
  // The file is the truth for what was kept: tasks written after the last saved state (a kill
  // between the two) were judged, tasks lost with a cut line were not kept. Counting the
  // difference keeps candidates = kept + rejections.
  state.candidates += count - state.kept;
  state.retriesByReason ??= {};
  state.kept = count;
  state.teacher = teacher.url;
  state.model = teacher.model;
  return { state, recent, resumed: true };
}

function readText(path: string): string {
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    const buf = Buffer.alloc(size);
    readSync(fd, buf, 0, size, 0);
    return buf.toString("utf8");
  } finally {
    closeSync(fd);
  }
}

/** Truncates a file after its last newline (a line a kill cut short). */
function dropCutLine(path: string): void {
  const fd = openSync(path, "r+");
  try {
    const size = fstatSync(fd).size;
    const buf = Buffer.alloc(65536);
    let end = size;
    while (end > 0) {
      const start = Math.max(0, end - buf.length);
      const n = readSync(fd, buf, 0, end - start, start);
      const nl = buf.subarray(0, n).lastIndexOf(0x0a);
      if (nl >= 0) {
        const keep = start + nl + 1;
        if (keep < size) ftruncateSync(fd, keep);
        return;
      }
      end = start;
    }
    ftruncateSync(fd, 0);
  } finally {
    closeSync(fd);
  }
}
