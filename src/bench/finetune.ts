// `npm run bench -- finetune`: LoRA training tokens/s and peak RSS on random-weight Llamas (rank 8
// on q,v and on every linear layer), against the same LoRA setup in PyTorch (bench/llama_torch.py,
// see torch-peer.ts) when a Python with torch is found; and the peak RSS of QLoRA (a Q4_0 base held quantized) against LoRA on a float base, on
// the 1.1B shape over a few steps. Every configuration runs in a child process of its own, so peak
// RSS is its own. See finetuneUsage for the flags.
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { UserError } from "../errors.js";
import { readGgufHeader } from "../formats/gguf.js";
import { llamaConfigFromMetadata, metadataGetter } from "../model/config.js";
import { LORA_TARGETS, parseLoraTargets } from "../model/lora.js";
import { type LlamaShape, randomLlamaFile, SHAPES } from "../model/random-llama.js";
import type { WeightFormat } from "../runtime/backend.js";
import { trainMemory } from "../train/model.js";
import { parseBenchArgs, positiveInt } from "./args.js";
import { runChild } from "./child.js";
import type { FinetuneWorkerRequest, FinetuneWorkerResult } from "./finetune-worker.js";
import { waitForQuiet } from "./infer.js";
import {
  checkSameModel,
  describeTorchPeer,
  findTorchPeer,
  runTorchPeer,
  type TorchPeer,
  type TorchPeerResult,
} from "./torch-peer.js";

export const finetuneUsage = `usage: npm run bench -- finetune [options]

LoRA training tokens/s and peak RSS of smallhammer (and of the same LoRA setup in PyTorch,
bench/llama_torch.py, when a Python that imports torch is found: SMALLHAMMER_PYTHON, python3 or
/usr/bin/python3) on random-weight Llama GGUF files, and QLoRA's peak RSS against LoRA on a
float base.

  --shapes LIST      LoRA throughput shapes: 15M,110M (default both)
  --targets LIST     target sets, ';'-separated: default "q,v;all"
  --rank N           LoRA rank (default 8); alpha is 2·rank
  --batch N          sequences per step (default 4)
  --seq N            tokens per sequence (default 256)
  --steps N          timed optimizer steps (default 10)
  --warmup N         untimed steps first (default 2)
  --threads N        compute threads for both engines (default 2)
  --qlora-shape S    shape of the QLoRA memory comparison (default 1.1B; "none" to skip)
  --qlora-batch N    sequences per step there (default 1)
  --qlora-seq N      tokens per sequence there (default 128)
  --qlora-steps N    timed steps there (default 2, after 1 warm-up)
  --dir PATH         model cache (default .tmp/bench-models)
  --quiet-wait S     seconds to wait for an idle machine before timing (default 120)
  --json             machine-readable results on stdout
  --save PATH        also write the machine-readable results to PATH
`;

const QUIET_CORES = 0.1;
const GiB = 2 ** 30;
const MiB = 2 ** 20;

interface Options {
  shapes: LlamaShape[];
  targets: string[];
  rank: number;
  batch: number;
  seq: number;
  steps: number;
  warmup: number;
  threads: number;
  qloraShape?: LlamaShape;
  qloraBatch: number;
  qloraSeq: number;
  qloraSteps: number;
  dir: string;
  quietWait: number;
  json: boolean;
  save?: string;
}

export interface ThroughputRow {
  shape: string;
  targets: string;
  trainable?: number;
  smallhammer?: { tokensPerSecond: number; peakRssBytes: number; foreignCores: number; disturbed: boolean };
  pytorch?: { tokensPerSecond: number; peakRssBytes: number; torchVersion: string };
  /** smallhammer tokens/s ÷ PyTorch tokens/s. */
  ratio?: number;
  note?: string;
}

export interface MemoryRow {
  shape: string;
  base: "q4_0" | "f16" | "f32";
  peakRssBytes?: number;
  /** What the training layout allocates (one WebAssembly memory). */
  layoutBytes: number;
  tokensPerSecond?: number;
  note?: string;
}

export interface FinetuneBenchResult {
  commit?: string;
  threads: number;
  pytorch: string;
  /** The BLAS library the peer's torch multiplies with. */
  pytorchBlas?: string;
  throughput: ThroughputRow[];
  memory: MemoryRow[];
  /** QLoRA peak RSS ÷ f32-base LoRA peak RSS (measured, or estimated when f32 does not fit). */
  qloraRssRatio?: number;
  qloraRssRatioEstimated?: boolean;
  /** The same LoRA run on a float32 base in PyTorch, when our f32 base does not fit. */
  pytorchF32LoraPeakRssBytes?: number;
  /** QLoRA peak RSS ÷ that PyTorch run's peak RSS (measured). */
  qloraRssRatioVsPytorch?: number;
}

function shapeOf(name: string): LlamaShape {
  const s = SHAPES[name] ?? Object.values(SHAPES).find((x) => x.name.toLowerCase() === name.toLowerCase());
  if (!s) throw new UserError(`unknown shape "${name}" (known: ${Object.keys(SHAPES).join(", ")})`);
  return s;
}

function parseOptions(argv: string[]): Options | undefined {
  const args = parseBenchArgs(
    argv,
    {
      shapes: { type: "string" },
      targets: { type: "string" },
      rank: { type: "string" },
      batch: { type: "string" },
      seq: { type: "string" },
      steps: { type: "string" },
      warmup: { type: "string" },
      threads: { type: "string" },
      "qlora-shape": { type: "string" },
      "qlora-batch": { type: "string" },
      "qlora-seq": { type: "string" },
      "qlora-steps": { type: "string" },
      dir: { type: "string" },
      "quiet-wait": { type: "string" },
      json: { type: "boolean" },
      save: { type: "string" },
    },
    finetuneUsage,
  );
  if (!args) return undefined;
  const { values, str } = args;
  const targets = (str("targets") ?? "q,v;all").split(";").map((t) => t.trim());
  for (const t of targets) parseLoraTargets(t);
  const rank = positiveInt("rank", str("rank"), 8);
  if (rank % 4 !== 0) throw new UserError(`--rank must be a multiple of 4, got ${rank}`);
  const qlora = str("qlora-shape") ?? "1.1B";
  const quietWait = Number(str("quiet-wait") ?? 120);
  if (!(quietWait >= 0)) throw new UserError(`--quiet-wait: expected seconds, got "${str("quiet-wait")}"`);
  return {
    shapes: (str("shapes") ?? "15M,110M").split(",").map((s) => shapeOf(s.trim())),
    targets,
    rank,
    batch: positiveInt("batch", str("batch"), 4),
    seq: positiveInt("seq", str("seq"), 256),
    steps: positiveInt("steps", str("steps"), 10),
    warmup: Number(str("warmup") ?? 2),
    threads: positiveInt("threads", str("threads"), 2),
    qloraShape: qlora === "none" ? undefined : shapeOf(qlora),
    qloraBatch: positiveInt("qlora-batch", str("qlora-batch"), 1),
    qloraSeq: positiveInt("qlora-seq", str("qlora-seq"), 128),
    qloraSteps: positiveInt("qlora-steps", str("qlora-steps"), 2),
    dir: resolve(str("dir") ?? ".tmp/bench-models"),
    quietWait,
    json: values.json === true,
    save: str("save"),
  };
}

function runOurs(req: FinetuneWorkerRequest): Promise<FinetuneWorkerResult> {
  const script = fileURLToPath(new URL("./finetune-worker.js", import.meta.url));
  return runChild(process.execPath, [script, JSON.stringify(req)], 3600);
}

/** The same LoRA setup in bench/llama_torch.py: rank, alpha, dropout, targets, AdamW without decay. */
async function runPeer(
  o: Options,
  peer: TorchPeer,
  shape: LlamaShape,
  targets: string,
): Promise<TorchPeerResult> {
  await waitForQuiet(QUIET_CORES, o.quietWait);
  return runTorchPeer(peer, {
    mode: "lora",
    dim: shape.dim,
    layers: shape.layers,
    heads: shape.heads,
    kvHeads: shape.kvHeads,
    ffn: shape.ffn,
    vocab: shape.vocab,
    batch: o.batch,
    seq: o.seq,
    threads: o.threads,
    warmup: o.warmup,
    steps: o.steps,
    timing: "mean",
    lr: 1e-4,
    weightDecay: 0,
    gradClip: 1,
    normEps: 1e-5,
    ropeBase: 10000,
    rank: o.rank,
    alpha: 2 * o.rank,
    dropout: 0.05,
    targets: parseLoraTargets(targets),
  });
}

function workerRequest(
  o: Options,
  path: string,
  format: WeightFormat,
  targets: string,
): FinetuneWorkerRequest {
  return {
    path,
    format,
    targets,
    rank: o.rank,
    alpha: 2 * o.rank,
    batch: o.batch,
    seq: o.seq,
    warmup: o.warmup,
    steps: o.steps,
    threads: o.threads,
    quietCores: QUIET_CORES,
    quietWaitSeconds: o.quietWait,
  };
}

/** Bytes the training layout of a base file takes with its frozen layer matrices in `format`. */
function layoutBytes(
  path: string,
  format: WeightFormat,
  targets: string,
  rank: number,
  batch: number,
  seq: number,
  threads: number,
): number {
  const header = readGgufHeader(path);
  const config = llamaConfigFromMetadata(
    metadataGetter(header),
    path,
    header.tensor("token_embd.weight")!.dims[1]!,
  );
  const suffixes = parseLoraTargets(targets).map((t) => `.${LORA_TARGETS[t].gguf}.weight`);
  return trainMemory(config, {
    batch,
    seq,
    threads,
    trainable: () => false,
    tiedEmbeddings: !header.tensor("output.weight"),
    formatOf: (name) => (name.startsWith("blk.") && !name.endsWith("_norm.weight") ? format : "F32"),
    lora: { targets: (name) => suffixes.some((s) => name.endsWith(s)), rank, alpha: 2 * rank },
  }).total;
}

const fmtRate = (x: number | undefined) => (x === undefined ? "-" : x.toFixed(0));
const fmtMiB = (b: number | undefined) => (b === undefined ? "-" : `${(b / MiB).toFixed(0)} MiB`);

export async function runFinetuneBench(argv: string[]): Promise<void> {
  const o = parseOptions(argv);
  if (!o) return;
  const say = (s: string) => {
    if (!o.json) process.stdout.write(`${s}\n`);
  };
  mkdirSync(o.dir, { recursive: true });
  const peer = findTorchPeer();
  say(`peer: ${describeTorchPeer(peer)}`);
  const result: FinetuneBenchResult = {
    threads: o.threads,
    pytorch: peer?.torchVersion ?? "absent",
    pytorchBlas: peer?.blas,
    throughput: [],
    memory: [],
  };
  try {
    result.commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    }).trim();
  } catch {
    /* not a checkout */
  }

  say(
    `\nLoRA rank ${o.rank} (alpha ${2 * o.rank}), batch ${o.batch} × seq ${o.seq}, ${o.steps} timed steps after ${o.warmup}`,
  );
  say(
    `${"shape".padEnd(6)} ${"targets".padEnd(8)} ${"trainable".padStart(10)} ${"tok/s".padStart(8)} ${"peak RSS".padStart(10)} ${"torch tok/s".padStart(12)} ${"torch RSS".padStart(10)} ${"ratio".padStart(6)}`,
  );
  for (const shape of o.shapes) {
    const path = randomLlamaFile(o.dir, shape, "f32", (p) => say(`writing ${p}`));
    for (const targets of o.targets) {
      const row: ThroughputRow = { shape: shape.name, targets };
      let ours: FinetuneWorkerResult | undefined;
      try {
        ours = await runOurs(workerRequest(o, path, "F32", targets));
        row.trainable = ours.trainable;
        row.smallhammer = {
          tokensPerSecond: ours.tokensPerSecond,
          peakRssBytes: ours.peakRssBytes,
          foreignCores: ours.foreignCores,
          disturbed: ours.foreignCores > QUIET_CORES,
        };
      } catch (e) {
        row.note = (e as Error).message.split("\n")[0];
      }
      let theirs: TorchPeerResult | undefined;
      if (ours && peer) {
        try {
          theirs = await runPeer(o, peer, shape, targets);
        } catch (e) {
          row.note = `PyTorch: ${(e as Error).message.split("\n")[0]}`;
        }
      }
      if (ours && theirs) {
        // A different model would make the ratio meaningless: stop.
        checkSameModel(theirs, ours, `${shape.name} LoRA ${targets}`);
        row.pytorch = {
          tokensPerSecond: theirs.tokensPerSecond,
          peakRssBytes: theirs.peakRssBytes,
          torchVersion: theirs.torchVersion,
        };
        row.ratio = ours.tokensPerSecond / theirs.tokensPerSecond;
      }
      result.throughput.push(row);
      say(
        `${row.shape.padEnd(6)} ${targets.padEnd(8)} ${String(row.trainable ?? "-").padStart(10)} ${fmtRate(row.smallhammer?.tokensPerSecond).padStart(8)} ${fmtMiB(row.smallhammer?.peakRssBytes).padStart(10)} ${fmtRate(row.pytorch?.tokensPerSecond).padStart(12)} ${fmtMiB(row.pytorch?.peakRssBytes).padStart(10)} ${(row.ratio === undefined ? "-" : `${row.ratio.toFixed(2)}x`).padStart(6)}${row.smallhammer?.disturbed ? "  (machine busy)" : ""}${row.note ? `  ${row.note}` : ""}`,
      );
    }
  }

  if (o.qloraShape) {
    const shape = o.qloraShape;
    const targets = "all";
    const q = { ...o, batch: o.qloraBatch, seq: o.qloraSeq, steps: o.qloraSteps, warmup: 1 };
    say(
      `\nQLoRA memory: ${shape.name}, rank ${o.rank} on all linear layers, batch ${q.batch} × seq ${q.seq}, ${q.steps} steps after 1`,
    );
    // The float bases are decoded from the Q4_0 file (no 4 GB f32 file is written): the memory
    // a base takes depends on its format, not on its values.
    const path = randomLlamaFile(o.dir, shape, "q4_0", (p) => say(`writing ${p}`));
    for (const [base, format] of [
      ["q4_0", "Q4_0"],
      ["f16", "F16"],
      ["f32", "F32"],
    ] as const) {
      const row: MemoryRow = {
        shape: shape.name,
        base,
        layoutBytes: layoutBytes(path, format, targets, o.rank, q.batch, q.seq, o.threads),
      };
      try {
        const ours = await runOurs(workerRequest(q, path, format, targets));
        row.peakRssBytes = ours.peakRssBytes;
        row.tokensPerSecond = ours.tokensPerSecond;
      } catch (e) {
        row.note = (e as Error).message.split("\n")[0];
      }
      result.memory.push(row);
      say(
        `  ${base.padEnd(5)} base: peak RSS ${fmtMiB(row.peakRssBytes).padStart(10)}, layout ${(row.layoutBytes / GiB).toFixed(2)} GiB, ${fmtRate(row.tokensPerSecond)} tok/s${row.note ? `  (${row.note})` : ""}`,
      );
    }
    const [q4, f16, f32] = result.memory;
    if (q4?.peakRssBytes && f32?.peakRssBytes) {
      result.qloraRssRatio = q4.peakRssBytes / f32.peakRssBytes;
      result.qloraRssRatioEstimated = false;
      say(`  QLoRA ÷ f32-base LoRA peak RSS: ${result.qloraRssRatio.toFixed(2)}x (target <= 0.4x)`);
    } else if (q4?.peakRssBytes && f16?.peakRssBytes && f32) {
      // f32 does not fit one WebAssembly memory: its RSS estimated as the f16 run's plus the
      // layout's extra bytes for f32 matrices.
      const estimate = f16.peakRssBytes + (f32.layoutBytes - f16.layoutBytes);
      result.qloraRssRatio = q4.peakRssBytes / estimate;
      result.qloraRssRatioEstimated = true;
      say(
        `  QLoRA ÷ f16-base LoRA peak RSS: ${(q4.peakRssBytes / f16.peakRssBytes).toFixed(2)}x (measured)\n` +
          `  QLoRA ÷ f32-base LoRA peak RSS: ${result.qloraRssRatio.toFixed(2)}x (estimated: f16 run + ${((f32.layoutBytes - f16.layoutBytes) / GiB).toFixed(2)} GiB of f32 weights; target <= 0.4x)`,
      );
      // A measured f32-base LoRA of the same shape and setup: the PyTorch peer's.
      if (peer) {
        try {
          const theirs = await runPeer(q, peer, shape, targets);
          result.pytorchF32LoraPeakRssBytes = theirs.peakRssBytes;
          result.qloraRssRatioVsPytorch = q4.peakRssBytes / theirs.peakRssBytes;
          say(
            `  PyTorch f32-base LoRA: peak RSS ${fmtMiB(theirs.peakRssBytes)}, ${fmtRate(theirs.tokensPerSecond)} tok/s\n` +
              `  QLoRA ÷ PyTorch f32-base LoRA peak RSS: ${result.qloraRssRatioVsPytorch.toFixed(2)}x (measured; target <= 0.4x)`,
          );
        } catch (e) {
          say(`  PyTorch f32-base LoRA: ${(e as Error).message.split("\n")[0]}`);
        }
      }
    }
  }
  const json = `${JSON.stringify(result, null, 2)}\n`;
  if (o.save) writeFileSync(o.save, json);
  if (o.json) process.stdout.write(json);
}
