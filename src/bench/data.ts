// `npm run bench -- data`: the dataset tools at scale. On a generated ShareGPT dump (seeded, about
// --size-mb), `smallhammer data clean-sharegpt` and then `data dedup` on its output, each run as a
// user runs it (the built CLI in a child process, output to a file): records/s, MB/s and peak RSS.
// The ROUGE-L filter: candidates/s of the indexed filter self-instruct uses against a plain filter
// that compares every candidate with every kept instruction, with the same LCS, and a check that
// both decide alike. Self-instruct against a zero-latency local teacher: ms per request of the
// pipeline (prompt, request, parsing, filters, ROUGE-L, JSONL and state writes) against a plain
// loop of the same requests through the `openai` SDK; the difference is the tool's own overhead.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import OpenAI from "openai";
import { selfInstructPrompt } from "../data/instruction-filters.js";
import { lcsLength, RougeIndex, rougeTokens } from "../data/rouge.js";
import { describeRejected, loadSeedTasks, selfInstruct, statePath } from "../data/self-instruct.js";
import { TeacherClient } from "../data/teacher.js";
import { UserError } from "../errors.js";
import { parseBenchArgs, positiveInt } from "./args.js";
import { type CliRun, runCli } from "./child.js";
import {
  InstructionMaker,
  type ShareGptPlan,
  selfInstructReplies,
  writeShareGptFile,
} from "./data-samples.js";
import { type CpuSample, cpuSample, foreignCores, waitForQuiet } from "./infer.js";

export const dataUsage = `usage: npm run bench -- data [options]

Records/s of \`data clean-sharegpt\` and \`data dedup\` on a generated ShareGPT dump; candidates/s of
the indexed ROUGE-L filter against a plain all-pairs filter; self-instruct's own overhead per
request against a zero-latency local teacher.

  --size-mb N           size of the generated ShareGPT dump in MB (default 100)
  --seed N              seed of everything generated (default 1)
  --kept N              kept instructions the ROUGE-L filters check against (default 50000)
  --candidates N        candidates for the indexed filter (default 1000)
  --plain-candidates N  candidates for the all-pairs filter, the first of the same (default 100)
  --requests N          teacher requests per client (default 400)
  --concurrency N       requests in flight (default 4, as \`data self-instruct\`)
  --dir PATH            write the generated and cleaned files here and keep them
                        (default: a temporary directory, removed at the end)
  --quiet-wait S        seconds to wait for an idle machine before each measurement (default 120)
  --json                machine-readable results on stdout
  --save PATH           also write the machine-readable results to PATH
`;

/** Foreign CPU load (in cores) above which a measurement is marked disturbed. */
const QUIET_CORES = 0.1;
const ROUGE_THRESHOLD = 0.7;
/** Self-instruct's defaults: 3 examples in the prompt, a list of 20, so 17 tasks per reply. */
const EXAMPLES = 3;
const LIST_LENGTH = 20;
const WARMUP_REQUESTS = 50;
const MiB = 1048576;

interface Measured {
  seconds: number;
  /** Most CPU (cores) other processes used while it ran (or just before, when waiting gave up). */
  foreignCores: number;
  disturbed: boolean;
}

interface CommandRow extends Measured {
  step: "clean-sharegpt" | "dedup";
  inputBytes: number;
  records: number;
  recordsPerSecond: number;
  megabytesPerSecond: number;
  peakRssBytes: number;
  /** Records written. */
  written: number;
  /** Dropped records by reason, as the command reports them. */
  dropped: Record<string, number>;
  /** What the generator planted for each reason. */
  planted: Record<string, number>;
}

interface FilterRow extends Measured {
  filter: "indexed" | "all pairs";
  candidates: number;
  candidatesPerSecond: number;
  rejected: number;
}

interface TeacherRow extends Measured {
  client: "openai SDK loop" | "self-instruct";
  requests: number;
  msPerRequest: number;
}

/** This process's CPU sample with the CPU time of its finished children counted as its own. */
function sampleWithChildren(): CpuSample {
  const sample = cpuSample();
  const stat = readFileSync("/proc/self/stat", "utf8");
  // After the command name: cutime and cstime are fields 16 and 17 (reaped children, in ticks).
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { ...sample, own: sample.own + Number(rest[13]) + Number(rest[14]) };
}

export async function runDataBench(argv: string[]): Promise<void> {
  const args = parseBenchArgs(
    argv,
    {
      "size-mb": { type: "string" },
      seed: { type: "string" },
      kept: { type: "string" },
      candidates: { type: "string" },
      "plain-candidates": { type: "string" },
      requests: { type: "string" },
      concurrency: { type: "string" },
      dir: { type: "string" },
      "quiet-wait": { type: "string" },
      json: { type: "boolean" },
      save: { type: "string" },
    },
    dataUsage,
  );
  if (!args) return;
  const { values, str } = args;
  const sizeMb = Number(str("size-mb") ?? 100);
  if (!(sizeMb > 0 && sizeMb <= 100_000))
    throw new UserError(`--size-mb: expected megabytes, got "${str("size-mb")}"`);
  const seed = positiveInt("seed", str("seed"), 1);
  const keptCount = positiveInt("kept", str("kept"), 50_000);
  const candidateCount = positiveInt("candidates", str("candidates"), 1000);
  const plainCount = Math.min(candidateCount, positiveInt("plain-candidates", str("plain-candidates"), 100));
  const requests = positiveInt("requests", str("requests"), 400);
  const concurrency = positiveInt("concurrency", str("concurrency"), 4);
  const quietWait = Number(str("quiet-wait") ?? 120);
  if (!(quietWait >= 0)) throw new UserError(`--quiet-wait: expected seconds, got "${str("quiet-wait")}"`);
  const json = values.json === true;
  const tty = process.stderr.isTTY === true;
  const say = (s: string) => {
    if (tty) process.stderr.write(`${s}\n`);
  };
  const print = (s: string) => {
    if (!json) process.stdout.write(s);
  };

  const keepDir = str("dir");
  let dir: string;
  if (keepDir !== undefined) {
    mkdirSync(keepDir, { recursive: true });
    dir = keepDir;
  } else dir = mkdtempSync(join(tmpdir(), "smallhammer-bench-data-"));

  /** Runs `work` on a quiet machine if one comes within --quiet-wait, noting the foreign load. */
  const measure = async <T>(work: () => Promise<T>): Promise<{ value: T } & Measured> => {
    const waited = await waitForQuiet(QUIET_CORES, quietWait, say);
    const before = sampleWithChildren();
    const t0 = performance.now();
    const value = await work();
    const seconds = (performance.now() - t0) / 1000;
    const foreign = Math.max(waited, foreignCores(before, sampleWithChildren()));
    return { value, seconds, foreignCores: foreign, disturbed: foreign > QUIET_CORES };
  };

  const load0 = loadavg();
  const prov = commit();
  try {
    // ------------------------------------------------------------------ ShareGPT: clean, dedup
    const raw = join(dir, "sharegpt.json");
    const clean = join(dir, "clean.jsonl");
    const deduped = join(dir, "dedup.jsonl");
    say(`writing a ${sizeMb} MB ShareGPT dump to ${raw}`);
    const t0 = performance.now();
    const plan = writeShareGptFile(raw, Math.round(sizeMb * 1e6), seed);
    const generateSeconds = (performance.now() - t0) / 1000;
    print(
      `bench data: ShareGPT dump of ${(plan.bytes / 1e6).toFixed(1)} MB, ${plan.conversations} conversations ` +
        `(seed ${seed}, written in ${generateSeconds.toFixed(1)} s); commit ${prov ?? "?"}; ` +
        `load average ${load0.map((l) => l.toFixed(2)).join(" ")}\n\n` +
        "| command | input MB | records | seconds | records/s | MB/s | peak RSS MiB | outcome (found/planted) |\n" +
        "| ------- | -------: | ------: | ------: | --------: | ---: | -----------: | ----------------------- |\n",
    );
    const commands: CommandRow[] = [];
    say("timing data clean-sharegpt");
    const cleaned = await measure(() =>
      runCli(["data", "clean-sharegpt", raw, "--out", clean, "--json", "--force"]),
    );
    const cleanReport = cleaned.value.report as {
      conversations: number;
      written: number;
      dropped: Record<string, number>;
      fixed: Record<string, number>;
    };
    commands.push(
      commandRow("clean-sharegpt", plan.bytes, cleanReport.conversations, cleanReport.written, cleaned, {
        dropped: cleanReport.dropped,
        planted: { duplicate: plan.exactDuplicates, "bad turn order": plan.badOrder, empty: plan.empty },
      }),
    );
    print(`${commandLine(commands.at(-1)!, cleanReport.fixed, plan)}\n`);
    say("timing data dedup");
    const cleanBytes = statSync(clean).size;
    const dedupRun = await measure(() =>
      runCli(["data", "dedup", clean, "--out", deduped, "--json", "--force"]),
    );
    const dedupReport = dedupRun.value.report as {
      records: number;
      written: number;
      dropped: { byReason: Record<string, number> };
    };
    commands.push(
      commandRow("dedup", cleanBytes, dedupReport.records, dedupReport.written, dedupRun, {
        dropped: dedupReport.dropped.byReason,
        planted: { "near duplicate": plan.nearDuplicates },
      }),
    );
    print(`${commandLine(commands.at(-1)!)}\n`);

    // ------------------------------------------------------------------ ROUGE-L filters
    say(`indexing ${keptCount} instructions`);
    const maker = new InstructionMaker(seed);
    const seen = new Set<string>();
    const index = new RougeIndex(ROUGE_THRESHOLD);
    const plain = new AllPairsFilter(ROUGE_THRESHOLD);
    while (seen.size < keptCount) {
      const text = maker.instruction();
      if (seen.has(text)) continue;
      seen.add(text);
      const tokens = rougeTokens(text);
      index.add(tokens);
      plain.add(tokens);
    }
    const candidateMaker = new InstructionMaker(seed + 0x51ed);
    const candidates = Array.from({ length: candidateCount }, () =>
      rougeTokens(candidateMaker.instruction()),
    );
    say(`indexed filter: ${candidateCount} candidates`);
    const indexed = await measure(async () => candidates.map((c) => index.findMatch(c) !== undefined));
    const indexStats = index.getStats();
    say(`all-pairs filter: ${plainCount} candidates`);
    const allPairs = await measure(async () => candidates.slice(0, plainCount).map((c) => plain.matches(c)));
    for (let i = 0; i < plainCount; i++) {
      if (indexed.value[i] !== allPairs.value[i]) {
        throw new Error(
          `the ROUGE-L filters disagree on candidate ${i} ("${candidates[i]!.join(" ")}"): ` +
            `indexed ${indexed.value[i] ? "rejects" : "keeps"} it, all pairs ${allPairs.value[i] ? "rejects" : "keeps"} it`,
        );
      }
    }
    const filters: FilterRow[] = [
      filterRow("indexed", candidateCount, indexed),
      filterRow("all pairs", plainCount, allPairs),
    ];
    const filterRatio = filters[0]!.candidatesPerSecond / filters[1]!.candidatesPerSecond;
    print(
      `\nROUGE-L filter (F >= ${ROUGE_THRESHOLD}) against ${keptCount} kept instructions ` +
        "(generated, distinct, not filtered against each other):\n\n" +
        "| filter | candidates | seconds | candidates/s | rejected |\n" +
        "| ------ | ---------: | ------: | -----------: | -------: |\n" +
        filters.map(filterLine).join("\n") +
        `\n\nindexed / all pairs: ${filterRatio.toFixed(1)}×; identical decisions on the ${plainCount} candidates both checked. ` +
        `The index looked at ${(indexStats.candidates / indexStats.queries).toFixed(0)} kept instructions per candidate ` +
        `and computed ${(indexStats.lcsComputed / indexStats.queries).toFixed(1)} LCS; all pairs computes up to ${keptCount}.\n`,
    );

    // ------------------------------------------------------------------ self-instruct overhead
    say("starting the zero-latency teacher");
    const seeds = await loadSeedTasks();
    const replies = selfInstructReplies(
      WARMUP_REQUESTS + requests + concurrency,
      EXAMPLES + 1,
      LIST_LENGTH,
      seed,
    );
    const teacher = await startTeacher(replies);
    let teacherRows: TeacherRow[];
    let summary: Awaited<ReturnType<typeof selfInstruct>>;
    try {
      const prompt = selfInstructPrompt(seeds.slice(0, EXAMPLES), LIST_LENGTH);
      const sdk = new OpenAI({ baseURL: teacher.url, apiKey: "no-key", maxRetries: 0 });
      const sdkLoop = async (n: number) => {
        let next = 0;
        let chars = 0;
        await Promise.all(
          Array.from({ length: concurrency }, async () => {
            while (next < n) {
              next++;
              const completion = await sdk.chat.completions.create({
                model: "canned",
                messages: [{ role: "user", content: prompt }],
                max_tokens: 3072,
                temperature: 1,
                top_p: 1,
              });
              chars += completion.choices[0]?.message?.content?.length ?? 0;
            }
          }),
        );
        if (chars === 0) throw new Error("the teacher's replies came back empty");
        return n;
      };
      const pipeline = async (n: number, out: string) => {
        // A fresh run each time, never a resumed one (--dir may hold an earlier run's output).
        rmSync(out, { force: true });
        rmSync(statePath(out), { force: true });
        const stop = new AbortController();
        return selfInstruct({
          teacher: new TeacherClient({ url: teacher.url, model: "canned" }),
          seeds,
          num: Number.MAX_SAFE_INTEGER,
          out,
          concurrency,
          examplesPerPrompt: EXAMPLES,
          listLength: LIST_LENGTH,
          rougeThreshold: ROUGE_THRESHOLD,
          seed,
          signal: stop.signal,
          onProgress: (state) => {
            if (state.replies >= n) stop.abort();
          },
        });
      };
      say(`openai SDK loop: ${requests} requests`);
      await sdkLoop(WARMUP_REQUESTS);
      const loop = await measure(() => sdkLoop(requests));
      say(`self-instruct: ${requests} requests`);
      await pipeline(WARMUP_REQUESTS, join(dir, "warmup-tasks.jsonl"));
      await teacher.reset();
      const run = await measure(() => pipeline(requests, join(dir, "tasks.jsonl")));
      summary = run.value;
      teacherRows = [
        teacherRow("openai SDK loop", requests, loop),
        teacherRow("self-instruct", summary.replies, run),
      ];
    } finally {
      await teacher.close();
    }
    const overheadMs = teacherRows[1]!.msPerRequest - teacherRows[0]!.msPerRequest;
    const rejected = Object.values(summary.rejected).reduce((a, b) => a + (b ?? 0), 0);
    print(
      `\nTeacher requests against a zero-latency local teacher (${concurrency} in flight, ` +
        `${LIST_LENGTH - EXAMPLES} tasks per reply):\n\n` +
        "| client | requests | seconds | ms/request | requests/s |\n" +
        "| ------ | -------: | ------: | ---------: | ---------: |\n" +
        teacherRows.map(teacherLine).join("\n") +
        `\n\nself-instruct's own work per request: ${overheadMs.toFixed(2)} ms ` +
        `(prompt, parsing, filters, ROUGE-L, JSONL and state writes). It kept ${summary.kept} of ` +
        `${summary.candidates} tasks (rejected ${rejected}: ${describeRejected(summary)}); ` +
        `${summary.rouge.size} instructions indexed at the end.\n` +
        `\n"disturbed": other processes used more than ${QUIET_CORES} cores during the measurement (from /proc/stat; ` +
        "the commands' own CPU excluded). Command timings include starting Node.\n",
    );

    const save = str("save");
    if (json || save !== undefined) {
      const out = {
        started: new Date().toISOString(),
        commit: prov,
        seed,
        quietCores: QUIET_CORES,
        loadAverage: load0,
        sharegpt: { ...plan, generateSeconds, commands },
        rouge: {
          threshold: ROUGE_THRESHOLD,
          kept: keptCount,
          filters,
          ratio: filterRatio,
          identicalDecisions: plainCount,
          index: indexStats,
        },
        teacher: {
          concurrency,
          tasksPerReply: LIST_LENGTH - EXAMPLES,
          clients: teacherRows,
          overheadMsPerRequest: overheadMs,
          kept: summary.kept,
          candidates: summary.candidates,
          rejected: summary.rejected,
        },
      };
      const text = `${JSON.stringify(out, null, 2)}\n`;
      if (json) process.stdout.write(text);
      if (save !== undefined) writeFileSync(save, text);
    }
  } finally {
    if (keepDir === undefined) rmSync(dir, { recursive: true, force: true });
  }
}

function commandRow(
  step: CommandRow["step"],
  inputBytes: number,
  records: number,
  written: number,
  run: { value: CliRun } & Measured,
  counts: { dropped: Record<string, number>; planted: Record<string, number> },
): CommandRow {
  return {
    step,
    inputBytes,
    records,
    seconds: run.seconds,
    recordsPerSecond: records / run.seconds,
    megabytesPerSecond: inputBytes / 1e6 / run.seconds,
    peakRssBytes: run.value.peakRssBytes,
    written,
    ...counts,
    foreignCores: run.foreignCores,
    disturbed: run.disturbed,
  };
}

function commandLine(r: CommandRow, fixed?: Record<string, number>, plan?: ShareGptPlan): string {
  const reasons = new Set([...Object.keys(r.planted), ...Object.keys(r.dropped)]);
  const found = [...reasons].map((k) => `${k} ${r.dropped[k] ?? 0}/${r.planted[k] ?? 0}`);
  if (fixed && plan) found.push(`html converted ${fixed["html converted"] ?? 0}/${plan.htmlTurns}`);
  const cells = [
    r.step,
    (r.inputBytes / 1e6).toFixed(1),
    String(r.records),
    r.seconds.toFixed(2),
    rate(r.recordsPerSecond),
    rate(r.megabytesPerSecond),
    (r.peakRssBytes / MiB).toFixed(0),
    `wrote ${r.written}; ${found.join(", ")}`,
  ];
  return `| ${cells.join(" | ")} |${disturbed(r)}`;
}

// ---------------------------------------------------------------------------------------------
// ROUGE-L without an index

/**
 * The filter as it is written without an index: the candidate's ROUGE-L F against every kept
 * instruction in turn (token ids, the same LCS as the index), stopping at the first at or above the
 * threshold.
 */
class AllPairsFilter {
  private readonly vocabulary = new Map<string, number>();
  private readonly kept: Int32Array[] = [];

  constructor(readonly threshold: number) {}

  private ids(tokens: string[]): Int32Array {
    return Int32Array.from(tokens, (t) => {
      let id = this.vocabulary.get(t);
      if (id === undefined) {
        id = this.vocabulary.size;
        this.vocabulary.set(t, id);
      }
      return id;
    });
  }

  add(tokens: string[]): void {
    this.kept.push(this.ids(tokens));
  }

  matches(tokens: string[]): boolean {
    if (tokens.length === 0) return false;
    const query = this.ids(tokens);
    for (const reference of this.kept) {
      if (reference.length === 0) continue;
      const score = (2 * lcsLength(query, reference)) / (query.length + reference.length);
      if (score >= this.threshold) return true;
    }
    return false;
  }
}

function filterRow(
  filter: FilterRow["filter"],
  candidates: number,
  run: { value: boolean[] } & Measured,
): FilterRow {
  return {
    filter,
    candidates,
    seconds: run.seconds,
    candidatesPerSecond: candidates / run.seconds,
    rejected: run.value.filter((r) => r).length,
    foreignCores: run.foreignCores,
    disturbed: run.disturbed,
  };
}

function filterLine(r: FilterRow): string {
  const share = ((100 * r.rejected) / r.candidates).toFixed(0);
  const cells = [
    r.filter,
    String(r.candidates),
    r.seconds.toFixed(2),
    rate(r.candidatesPerSecond),
    `${r.rejected} (${share}%)`,
  ];
  return `| ${cells.join(" | ")} |${disturbed(r)}`;
}

// ---------------------------------------------------------------------------------------------
// The teacher

interface Teacher {
  url: string;
  reset(): Promise<void>;
  close(): Promise<void>;
}

/** Starts the zero-latency teacher (data-teacher.ts) in a worker thread. */
function startTeacher(replies: string[]): Promise<Teacher> {
  const worker = new Worker(new URL("./data-teacher.js", import.meta.url), { workerData: { replies } });
  return new Promise((resolve, reject) => {
    worker.once("error", reject);
    worker.once("message", (message: { port: number }) => {
      resolve({
        url: `http://127.0.0.1:${message.port}/v1`,
        reset: () =>
          new Promise<void>((done) => {
            worker.once("message", () => done());
            worker.postMessage("reset");
          }),
        close: async () => {
          await worker.terminate();
        },
      });
    });
  });
}

function teacherRow(client: TeacherRow["client"], requests: number, run: Measured): TeacherRow {
  return {
    client,
    requests,
    seconds: run.seconds,
    msPerRequest: (1000 * run.seconds) / requests,
    foreignCores: run.foreignCores,
    disturbed: run.disturbed,
  };
}

function teacherLine(r: TeacherRow): string {
  const cells = [
    r.client,
    String(r.requests),
    r.seconds.toFixed(2),
    r.msPerRequest.toFixed(2),
    rate(r.requests / r.seconds),
  ];
  return `| ${cells.join(" | ")} |${disturbed(r)}`;
}

// ---------------------------------------------------------------------------------------------

function rate(x: number): string {
  return x >= 100 ? x.toFixed(0) : x.toFixed(1);
}

function disturbed(m: Measured): string {
  return m.disturbed ? ` disturbed (${m.foreignCores.toFixed(2)} foreign cores)` : "";
}

function commit(): string | undefined {
  try {
    return execFileSync("git", ["rev-parse", "--short", "HEAD"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    }).trim();
  } catch {
    return undefined;
  }
}
