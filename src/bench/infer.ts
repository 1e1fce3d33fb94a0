// `npm run bench -- infer`: prefill and decode tokens/s of smallhammer and llama.cpp (node-llama-cpp)
// on the same random-weight Llama GGUF files, with the same thread count, each engine in a child
// process of its own (so peak RSS is per engine). See inferUsage for the flags.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import { isUserError, UserError } from "../errors.js";
import {
  type LlamaShape,
  RANDOM_MODEL_TYPES,
  type RandomModelType,
  randomLlamaFile,
  SHAPES,
} from "../model/random-llama.js";
import { type KernelVariant, kernelVariant } from "../runtime/runtime.js";
import { list, parseBenchArgs, positiveInt } from "./args.js";
import { runChild } from "./child.js";
import type { WorkerRequest, WorkerResult } from "./infer-worker.js";

export const inferUsage = `usage: npm run bench -- infer [options]

Prefill and greedy decode tokens/s of smallhammer and llama.cpp on random-weight Llama GGUF files
(written once into --dir), same file and thread count, each engine in its own process.

  --shapes LIST      15M,110M,1.1B (default all three; 7B is accepted too)
  --types LIST       q4_0,q8_0,q4_k_m,f32 (default all; f32 runs for 15M only unless named alone;
                     q4_k_m, llama.cpp's mix of Q4_K and Q6_K, for shapes whose dim and ffn are
                     multiples of 256, so not for 15M)
  --threads N        compute threads for both engines (default 2)
  --prefill N        prompt tokens (default 128)
  --decode N         generated tokens (default 128)
  --reps N           rounds: in each, both engines run one repetition after a warm-up (retried up
                     to twice while the machine is busy), taking turns; the best is reported
                     (default 3)
  --large            also a 7B-shaped Q4_0 (about 3.8 GB, written once): prefill 16, decode 8
  --dir PATH         model cache (default .tmp/bench-models)
  --quiet-wait S     seconds to wait for an idle machine before each repetition (default 120)
  --json             machine-readable results on stdout
  --save PATH        also write the machine-readable results to PATH
`;

/** Foreign CPU load (in cores) above which a measurement is marked disturbed. */
const QUIET_CORES = 0.1;
const CONTEXT_SIZE = 512;
const BATCH_SIZE = 128;
const MiB = 1048576;
/** Allowance for code, thread stacks and activations in our RSS budget. */
const RSS_ALLOWANCE = 200 * MiB;

/** Cumulative CPU time of the machine and of this process, in clock ticks (USER_HZ). */
export interface CpuSample {
  /** Busy ticks summed over all CPUs, steal excluded. */
  busy: number;
  steal: number;
  /** All ticks summed over all CPUs. */
  total: number;
  cpus: number;
  /** This process's user + system ticks, all threads. */
  own: number;
}

export function cpuSample(): CpuSample {
  const lines = readFileSync("/proc/stat", "utf8").split("\n");
  // cpu  user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
  const f = lines[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = f as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const cpus = lines.filter((l) => /^cpu\d+\s/.test(l)).length;
  const stat = readFileSync("/proc/self/stat", "utf8");
  // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const own = Number(rest[11]) + Number(rest[12]);
  return {
    busy: user + nice + system + irq + softirq,
    steal,
    total: user + nice + system + idle + iowait + irq + softirq + steal,
    cpus: Math.max(1, cpus),
    own,
  };
}

/** Average cores taken by other processes and by the hypervisor (steal) between two samples. */
export function foreignCores(a: CpuSample, b: CpuSample): number {
  const wallTicks = (b.total - a.total) / b.cpus;
  if (wallTicks <= 0) return 0;
  const foreign = b.busy - a.busy - (b.own - a.own) + (b.steal - a.steal);
  return Math.max(0, foreign / wallTicks);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Samples the machine for `sampleMs` at a time until other processes use at most `quietCores`, for
 * at most `maxWaitSeconds`. Returns the last sample's foreign load (in cores).
 */
export async function waitForQuiet(
  quietCores: number,
  maxWaitSeconds: number,
  say: (s: string) => void = () => {},
  sampleMs = 1000,
): Promise<number> {
  const until = Date.now() + maxWaitSeconds * 1000;
  let told = false;
  for (;;) {
    const a = cpuSample();
    await sleep(sampleMs);
    const load = foreignCores(a, cpuSample());
    if (load <= quietCores || Date.now() >= until) return load;
    if (!told) say(`waiting for the machine to be idle (other processes use ${load.toFixed(2)} cores)`);
    told = true;
  }
}

async function runWorker(req: WorkerRequest, timeoutSeconds: number): Promise<WorkerResult> {
  const script = fileURLToPath(new URL("./infer-worker.js", import.meta.url));
  try {
    return await runChild<WorkerResult>(process.execPath, [script, JSON.stringify(req)], timeoutSeconds);
  } catch (e) {
    throw new Error(`${req.engine} on ${req.path}: ${(e as Error).message}`);
  }
}

export interface EngineFigures {
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  peakRssBytes: number;
  loadSeconds: number;
  /** The most foreign load (cores) during a counted repetition. */
  foreignCoresDuring: number;
  /** llama.cpp: the threads it reports using. */
  threadsUsed?: number;
  disturbed: boolean;
  result: WorkerResult;
}

export interface InferRow {
  shape: string;
  type: RandomModelType;
  path: string;
  fileBytes: number;
  prefillTokens: number;
  decodeTokens: number;
  /** Our KV cache (f32 keys and values for CONTEXT_SIZE positions). */
  kvCacheBytes: number;
  /** file + KV cache + 200 MiB */
  rssBudgetBytes: number;
  rssWithinBudget?: boolean;
  shards?: number;
  smallhammer?: EngineFigures;
  llamaCpp?: EngineFigures;
  /** How many leading generated tokens both engines agree on (of decode + 1). */
  tokensAgreed?: number;
  disturbed: boolean;
  /** Why a row has no figures (disk, memory) or what failed. */
  note?: string;
}

/** One engine's rounds as one result: the best undisturbed rates, the highest peak RSS, every repetition. */
function mergeRounds(
  rounds: WorkerResult[],
  quietCores: number,
  prefill: number,
  decode: number,
): WorkerResult {
  const all = rounds.flatMap((r) => r.repetitions);
  const clean = all.filter((r) => r.foreignCores <= quietCores);
  const counted = clean.length > 0 ? clean : all;
  return {
    ...rounds[0]!,
    loadSeconds: Math.min(...rounds.map((r) => r.loadSeconds)),
    peakRssBytes: Math.max(...rounds.map((r) => r.peakRssBytes)),
    prefillTokensPerSecond: Math.max(...counted.map((r) => prefill / r.prefillSeconds)),
    decodeTokensPerSecond: Math.max(...counted.map((r) => decode / r.decodeSeconds)),
    repetitions: all,
  };
}

function figures(result: WorkerResult, quietCores: number): EngineFigures {
  const clean = result.repetitions.filter((r) => r.foreignCores <= quietCores);
  const counted = clean.length > 0 ? clean : result.repetitions;
  return {
    prefillTokensPerSecond: result.prefillTokensPerSecond,
    decodeTokensPerSecond: result.decodeTokensPerSecond,
    peakRssBytes: result.peakRssBytes,
    loadSeconds: result.loadSeconds,
    foreignCoresDuring: Math.max(...counted.map((r) => r.foreignCores)),
    threadsUsed: result.threadsUsed,
    disturbed: clean.length === 0,
    result,
  };
}

/** What was measured: the commit (when in a git checkout) and a digest of the kernel module. */
function provenance(): { commit?: string; kernelsSha256?: string; kernels: KernelVariant } {
  const out: { commit?: string; kernelsSha256?: string; kernels: KernelVariant } = {
    kernels: kernelVariant(),
  };
  try {
    out.commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    }).trim();
  } catch {
    /* not a checkout */
  }
  try {
    const file = out.kernels === "plain" ? "kernels.wasm" : "kernels-relaxed.wasm";
    const wasm = readFileSync(new URL(`../../build/${file}`, import.meta.url));
    out.kernelsSha256 = createHash("sha256").update(wasm).digest("hex");
  } catch {
    /* the worker reports a missing module */
  }
  return out;
}

function memAvailableBytes(): number {
  const m = /MemAvailable:\s*(\d+)\s*kB/.exec(readFileSync("/proc/meminfo", "utf8"));
  return m ? Number(m[1]) * 1024 : Number.POSITIVE_INFINITY;
}

export async function runInferBench(argv: string[]): Promise<void> {
  const args = parseBenchArgs(
    argv,
    {
      shapes: { type: "string" },
      types: { type: "string" },
      threads: { type: "string" },
      prefill: { type: "string" },
      decode: { type: "string" },
      reps: { type: "string" },
      large: { type: "boolean" },
      dir: { type: "string" },
      "quiet-wait": { type: "string" },
      json: { type: "boolean" },
      save: { type: "string" },
    },
    inferUsage,
  );
  if (!args) return;
  const { values, str } = args;
  const threads = positiveInt("threads", str("threads"), 2);
  const prefill = positiveInt("prefill", str("prefill"), 128);
  const decode = positiveInt("decode", str("decode"), 128);
  const reps = positiveInt("reps", str("reps"), 3);
  const quietWait = Number(str("quiet-wait") ?? 120);
  if (!(quietWait >= 0)) throw new UserError(`--quiet-wait: expected seconds, got "${str("quiet-wait")}"`);
  const dir = str("dir") ?? ".tmp/bench-models";
  const json = values.json === true;
  if (prefill + decode + 1 > CONTEXT_SIZE) {
    throw new UserError(`--prefill + --decode must stay under the ${CONTEXT_SIZE}-token context`);
  }
  const shapes = list(str("shapes"), "15M,110M,1.1B");
  for (const s of shapes) {
    if (!SHAPES[s])
      throw new UserError(`--shapes: unknown shape "${s}" (known: ${Object.keys(SHAPES).join(", ")})`);
  }
  const types = list(str("types"), "q4_0,q8_0,q4_k_m,f32");
  for (const t of types) {
    if (!RANDOM_MODEL_TYPES.includes(t as RandomModelType)) {
      throw new UserError(`--types: unknown type "${t}" (known: ${RANDOM_MODEL_TYPES.join(", ")})`);
    }
  }
  // F32 is for the smallest shape only, unless it is the one type asked for.
  const fullF32 = types.length === 1;
  const plan: { shape: LlamaShape; type: RandomModelType; prefill: number; decode: number; reps: number }[] =
    [];
  for (const s of shapes) {
    for (const t of types as RandomModelType[]) {
      const shape = SHAPES[s]!;
      if (t === "f32" && s !== "15M" && !fullF32) continue;
      if (t === "q4_k_m" && (shape.dim % 256 !== 0 || shape.ffn % 256 !== 0)) continue;
      plan.push({ shape, type: t, prefill, decode, reps });
    }
  }
  if (values.large === true)
    plan.push({ shape: SHAPES["7B"]!, type: "q4_0", prefill: 16, decode: 8, reps: 1 });

  const tty = process.stderr.isTTY === true;
  const say = (s: string) => {
    if (tty) process.stderr.write(`${s}\n`);
  };
  const rows: InferRow[] = [];
  const started = new Date().toISOString();
  const load0 = loadavg();
  const prov = provenance();
  if (!json) {
    process.stdout.write(
      `bench infer: ${threads} threads, prefill ${prefill} and decode ${decode} tokens (--large: 16 and 8), ` +
        `best of ${reps} undisturbed repetitions after a warm-up, context ${CONTEXT_SIZE}, batch ${BATCH_SIZE}\n` +
        `commit ${prov.commit ?? "?"}, ${prov.kernels} kernels (SMALLHAMMER_SIMD=plain|relaxed picks), ` +
        `sha256 ${prov.kernelsSha256?.slice(0, 12) ?? "?"}, ` +
        `load average ${load0.map((l) => l.toFixed(2)).join(" ")}\n\n`,
    );
    process.stdout.write(`${tableHeader()}\n`);
  }
  for (const p of plan) {
    const s = p.shape;
    const headDim = s.dim / s.heads;
    const kvCacheBytes = 2 * s.layers * CONTEXT_SIZE * s.kvHeads * headDim * 4;
    const row: InferRow = {
      shape: s.name,
      type: p.type,
      path: "",
      fileBytes: 0,
      prefillTokens: p.prefill,
      decodeTokens: p.decode,
      kvCacheBytes,
      rssBudgetBytes: 0,
      disturbed: false,
    };
    rows.push(row);
    try {
      row.path = randomLlamaFile(dir, s, p.type, (path, bytes) =>
        say(`writing ${path} (${(bytes / 1e9).toFixed(2)} GB)`),
      );
      row.fileBytes = statSync(row.path).size;
      row.rssBudgetBytes = row.fileBytes + kvCacheBytes + RSS_ALLOWANCE;
      const needed = row.fileBytes + kvCacheBytes + 512 * MiB;
      if (memAvailableBytes() < needed) {
        throw new UserError(
          `needs about ${(needed / 1e9).toFixed(1)} GB of memory, ${(memAvailableBytes() / 1e9).toFixed(1)} GB available`,
        );
      }
      // The engines take turns, one repetition each per round (and each round starts with the
      // other one), so that a machine whose speed drifts over minutes moves both alike.
      const results: Record<"smallhammer" | "llama.cpp", WorkerResult[]> = {
        smallhammer: [],
        "llama.cpp": [],
      };
      for (let round = 0; round < p.reps; round++) {
        const order = ["smallhammer", "llama.cpp"] as const;
        for (const engine of round % 2 === 0 ? order : [...order].reverse()) {
          say(`${s.name} ${p.type}: measuring ${engine}, round ${round + 1} of ${p.reps}`);
          results[engine].push(
            await runWorker(
              {
                engine,
                path: row.path,
                threads,
                prefill: p.prefill,
                decode: p.decode,
                reps: 1,
                maxReps: 3,
                quietCores: QUIET_CORES,
                quietWaitSeconds: quietWait,
                contextSize: CONTEXT_SIZE,
                batchSize: BATCH_SIZE,
              },
              3600,
            ),
          );
        }
      }
      for (const engine of ["smallhammer", "llama.cpp"] as const) {
        const result = mergeRounds(results[engine], QUIET_CORES, p.prefill, p.decode);
        const f = figures(result, QUIET_CORES);
        if (engine === "smallhammer") {
          row.smallhammer = f;
          row.shards = result.shards;
          row.rssWithinBudget = f.peakRssBytes <= row.rssBudgetBytes;
        } else row.llamaCpp = f;
        row.disturbed ||= f.disturbed;
      }
      const a = row.smallhammer!.result.firstTokens;
      const b = row.llamaCpp!.result.firstTokens;
      let k = 0;
      while (k < a.length && k < b.length && a[k] === b[k]) k++;
      row.tokensAgreed = k;
    } catch (e) {
      if (!isUserError(e) && !(e instanceof Error && /exit status|killed by/.test(e.message))) throw e;
      row.note = (e as Error).message.split("\n").slice(0, 3).join(" / ");
    }
    if (!json) process.stdout.write(`${tableRow(row)}\n`);
  }
  const systemInfo = rows.find((r) => r.llamaCpp)?.llamaCpp?.result.systemInfo;
  const save = str("save");
  if (json || save !== undefined) {
    const out = {
      started,
      ...prov,
      threads,
      contextSize: CONTEXT_SIZE,
      batchSize: BATCH_SIZE,
      reps,
      quietCores: QUIET_CORES,
      loadAverage: load0,
      llamaCppSystemInfo: systemInfo,
      rows: rows.map((r) => ({
        ...r,
        smallhammer: r.smallhammer && {
          ...r.smallhammer,
          result: undefined,
          repetitions: r.smallhammer.result.repetitions,
        },
        llamaCpp: r.llamaCpp && {
          ...r.llamaCpp,
          result: undefined,
          repetitions: r.llamaCpp.result.repetitions,
        },
      })),
    };
    const text = `${JSON.stringify(out, null, 2)}\n`;
    if (json) process.stdout.write(text);
    if (save !== undefined) writeFileSync(save, text);
  }
  if (!json) {
    process.stdout.write(
      `\nratio = smallhammer / llama.cpp (higher is better for us). budget = file + our f32 KV cache for ${CONTEXT_SIZE} positions + 200 MiB.\n` +
        `agree = leading greedy tokens both engines produced alike (random weights leave near-ties in the logits, so small ` +
        `numeric differences part them after a few tokens; a first-token mismatch would point to a bug).\n` +
        `"disturbed": no repetition ran while other processes used at most ${QUIET_CORES} cores (measured from /proc/stat).\n`,
    );
    if (systemInfo) process.stdout.write(`llama.cpp: ${systemInfo.trim()}\n`);
  }
}

const COLUMNS: [title: string, width: number][] = [
  ["shape", 5],
  ["type", 6],
  ["file MiB", 8],
  ["prefill tok/s ours", 18],
  ["llama.cpp", 9],
  ["ratio", 5],
  ["decode tok/s ours", 17],
  ["llama.cpp", 9],
  ["ratio", 5],
  ["RSS MiB ours", 12],
  ["llama.cpp", 9],
  ["budget", 11],
  ["shards", 6],
  ["agree", 7],
];

function tableHeader(): string {
  const cells = COLUMNS.map(([t, w]) => t.padStart(w));
  const rule = COLUMNS.map(([, w]) => "-".repeat(w - 1) + ":");
  return `| ${cells.join(" | ")} |\n| ${rule.join(" | ")} |`;
}

function tableRow(r: InferRow): string {
  const mib = (b: number) => (b / MiB).toFixed(0);
  const rate = (x: number | undefined) => (x === undefined ? "-" : x >= 100 ? x.toFixed(0) : x.toFixed(1));
  const ratio = (a: number | undefined, b: number | undefined) =>
    a === undefined || b === undefined ? "-" : (a / b).toFixed(2);
  const o = r.smallhammer;
  const l = r.llamaCpp;
  const cells = [
    r.shape,
    r.type,
    r.fileBytes ? mib(r.fileBytes) : "-",
    rate(o?.prefillTokensPerSecond),
    rate(l?.prefillTokensPerSecond),
    ratio(o?.prefillTokensPerSecond, l?.prefillTokensPerSecond),
    rate(o?.decodeTokensPerSecond),
    rate(l?.decodeTokensPerSecond),
    ratio(o?.decodeTokensPerSecond, l?.decodeTokensPerSecond),
    o ? mib(o.peakRssBytes) : "-",
    l ? mib(l.peakRssBytes) : "-",
    r.rssWithinBudget === undefined ? "-" : `${r.rssWithinBudget ? "ok" : "OVER"} ${mib(r.rssBudgetBytes)}`,
    r.shards === undefined ? "-" : String(r.shards),
    r.tokensAgreed === undefined ? "-" : `${r.tokensAgreed}/${r.decodeTokens + 1}`,
  ].map((c, i) => c.padStart(COLUMNS[i]![1]));
  let line = `| ${cells.join(" | ")} |`;
  if (r.disturbed) line += " disturbed";
  if (r.note) line += ` ${r.note}`;
  return line;
}
