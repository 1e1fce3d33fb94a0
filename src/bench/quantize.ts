// `npm run bench -- quantize`: what each quantization type costs and keeps, beside llama.cpp's
// file of the same type made from the same input. A small Llama is pretrained here on the first
// 90% of tinyshakespeare (real weights: random ones make every type look alike) and kept in --dir
// for later runs with the same settings; every type is then quantized by smallhammer and by
// llama.cpp (llama_model_quantize through koffi), and both files are measured the same way, by
// smallhammer's perplexity on the held-out last 10%, against the f32 model (KL divergence, top-1
// agreement, Δppl), and timed at prefill and decode, each engine on its own file in a process of
// its own. See quantizeUsage for the flags.
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { openTokenCache } from "../data/token-cache.js";
import { UserError } from "../errors.js";
import { collectImatrix } from "../eval/imatrix-collect.js";
import { perplexity } from "../eval/perplexity.js";
import { GgufFile } from "../formats/gguf.js";
import { Model } from "../model/model.js";
import { imatrixWeights, writeImatrix } from "../quant/imatrix.js";
import { FILE_TYPES, parseFileType } from "../quant/mixes.js";
import { quantizeModel } from "../quant/quantize-model.js";
import { tokenizeCorpus, trainTokenizerOnFiles } from "../tokenizer/train-corpus.js";
import { exportCheckpoint } from "../train/export.js";
import { pretrain } from "../train/pretrain.js";
import { list, parseBenchArgs, positiveInt } from "./args.js";
import { runChild } from "./child.js";
import type { WorkerRequest, WorkerResult } from "./infer-worker.js";
import { llamaModelQuantize } from "./libllama.js";

export const quantizeUsage = `usage: npm run bench -- quantize [options]

Every quantization type, by smallhammer and by llama.cpp from the same f32 model (a small Llama
pretrained here on tinyshakespeare, kept in --dir): file size, bits per weight, perplexity,
Δppl, KL divergence and top-1 agreement against the f32 model on held-out text (all measured by
smallhammer's perplexity, llama-perplexity's method), quantize seconds, prefill and decode tokens/s
(each engine on its own file).

  --types LIST    file types (default: every type the quantizer writes, F32 aside)
  --steps N       pretraining steps of 16 x 128 tokens (default 600, a few minutes on 2 cores)
  --imatrix       also both engines with an importance matrix collected on training text
  --ctx N         perplexity chunk length (default 256)
  --chunks N      perplexity chunks (default 40)
  --threads N     compute threads of both engines (default 2)
  --quiet-wait S  seconds a speed measurement waits for an idle machine (default 60)
  --dir PATH      model and files (default .tmp/bench-quantize)
  --json          machine-readable results on stdout
  --save PATH     also write them to PATH
`;

const SHAPE = { dim: 256, layers: 4, heads: 4, kvHeads: 2, ffn: 768, contextLength: 256 };
const VOCAB = 512;
const MiB = 1048576;
/** Cores other processes may take during a speed repetition that counts as undisturbed. */
const QUIET_CORES = 0.25;

interface FileFigures {
  bytes: number;
  bitsPerWeight: number;
  ppl: number;
  pplError: number;
  deltaPpl: number;
  kld: number;
  kldError: number;
  sameTop: number;
  /** Undefined for the f32 model itself. */
  quantizeSeconds?: number;
  prefillTokensPerSecond?: number;
  /** No speed repetition ran while other processes left the machine idle (see --quiet-wait). */
  disturbed?: boolean;
  decodeTokensPerSecond?: number;
}

interface QuantizeRow {
  type: string;
  imatrix: boolean;
  smallhammer?: FileFigures;
  llamaCpp?: FileFigures;
  /** Tensors whose bytes are the same in both files, of all. */
  sameTensors?: [number, number];
  note?: string;
}

/** Pretrains (or reuses) the f32 model; returns its path and the held-out and calibration texts. */
async function baseModel(dir: string, steps: number, threads: number, say: (s: string) => void) {
  const corpus = readFileSync(new URL("../../test/fixtures/tinyshakespeare.txt", import.meta.url), "utf8");
  const cut = Math.floor(corpus.length * 0.9);
  const heldOut = corpus.slice(cut);
  const calibration = corpus.slice(0, 100_000);
  const settings = JSON.stringify({ shape: SHAPE, vocab: VOCAB, steps, version: 1 });
  const model = join(dir, "model");
  const base = join(model, "base-f32.gguf");
  const stamp = join(model, "settings.json");
  if (existsSync(base) && existsSync(stamp) && readFileSync(stamp, "utf8") === settings) {
    say(`reusing ${base}`);
    return { base, heldOut, calibration };
  }
  rmSync(model, { recursive: true, force: true });
  mkdirSync(model, { recursive: true });
  const train = join(model, "train.txt");
  writeFileSync(train, corpus.slice(0, cut));
  const tokenizer = join(model, "tokenizer.gguf");
  say(`training a ${VOCAB}-token tokenizer on ${train}`);
  await trainTokenizerOnFiles([train], tokenizer, { vocabSize: VOCAB, progress: false });
  const cacheDir = join(model, "cache");
  await tokenizeCorpus([train], tokenizer, cacheDir, { valFraction: 0.02, seed: 1, progress: false });
  const cache = await openTokenCache(cacheDir);
  const run = join(model, "run");
  const t0 = performance.now();
  let last = 0;
  try {
    const s = await pretrain(
      {
        shape: SHAPE,
        steps,
        batch: 16,
        seq: 128,
        lr: 3e-3,
        warmupSteps: Math.min(50, Math.floor(steps / 10)),
        seed: 1,
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
      {
        threads,
        onEvent: (e) => {
          if (e.type !== "step" || performance.now() - last < 15_000) return;
          last = performance.now();
          say(`pretraining: step ${e.metrics.step}/${steps}, loss ${e.metrics.loss.toFixed(3)}`);
        },
      },
    );
    say(
      `pretrained ${s.parameters} parameters in ${((performance.now() - t0) / 1000).toFixed(0)} s: loss ${s.loss.toFixed(3)}` +
        (s.valLoss !== undefined ? `, validation ${s.valLoss.toFixed(3)}` : ""),
    );
  } finally {
    cache.close();
  }
  await exportCheckpoint(run, base, "f32");
  writeFileSync(stamp, settings);
  return { base, heldOut, calibration };
}

/** Bytes, elements and per-tensor bytes of a GGUF file's tensors. */
function tensorBytes(path: string): { bits: number; elements: number; tensors: Map<string, Buffer> } {
  const f = GgufFile.open(path);
  try {
    let bytes = 0;
    let elements = 0;
    const tensors = new Map<string, Buffer>();
    for (const t of f.header.tensors) {
      bytes += t.byteSize;
      elements += t.elementCount;
      tensors.set(t.name, Buffer.from(f.readTensor(t)));
    }
    return { bits: bytes * 8, elements, tensors };
  } finally {
    f.close();
  }
}

async function speed(engine: WorkerRequest["engine"], path: string, threads: number, quietWait: number) {
  const script = fileURLToPath(new URL("./infer-worker.js", import.meta.url));
  const req: WorkerRequest = {
    engine,
    path,
    threads,
    prefill: 128,
    decode: 64,
    reps: 1,
    maxReps: 2,
    quietCores: QUIET_CORES,
    quietWaitSeconds: quietWait,
    contextSize: SHAPE.contextLength,
    batchSize: 128,
    vocab: VOCAB,
  };
  return runChild<WorkerResult>(process.execPath, [script, JSON.stringify(req)], 600);
}

export async function runQuantizeBench(argv: string[]): Promise<void> {
  const args = parseBenchArgs(
    argv,
    {
      types: { type: "string" },
      steps: { type: "string" },
      imatrix: { type: "boolean" },
      ctx: { type: "string" },
      chunks: { type: "string" },
      threads: { type: "string" },
      "quiet-wait": { type: "string" },
      dir: { type: "string" },
      json: { type: "boolean" },
      save: { type: "string" },
    },
    quantizeUsage,
  );
  if (!args) return;
  const { values, str } = args;
  const threads = positiveInt("threads", str("threads"), 2);
  const steps = positiveInt("steps", str("steps"), 600);
  const ctx = positiveInt("ctx", str("ctx"), 256);
  const chunks = positiveInt("chunks", str("chunks"), 40);
  const quietWait = Number(str("quiet-wait") ?? 60);
  if (!(quietWait >= 0)) throw new UserError(`--quiet-wait: expected seconds, got "${str("quiet-wait")}"`);
  if (ctx > SHAPE.contextLength)
    throw new UserError(`--ctx: at most the model's ${SHAPE.contextLength} tokens`);
  const dir = str("dir") ?? ".tmp/bench-quantize";
  const json = values.json === true;
  const fileTypes = list(
    str("types"),
    FILE_TYPES.filter((t) => t.name !== "F32")
      .map((t) => t.name)
      .join(","),
  );
  const types = fileTypes.map((t) => parseFileType(t));
  const tty = process.stderr.isTTY === true;
  const say = (s: string) => {
    if (tty) process.stderr.write(`${s}\n`);
  };
  mkdirSync(dir, { recursive: true });
  const { base, heldOut, calibration } = await baseModel(dir, steps, threads, say);

  let weights: Map<string, Float32Array> | undefined;
  if (values.imatrix === true) {
    say("collecting an importance matrix on training text");
    const { imatrix } = await collectImatrix(base, calibration, {
      ctx,
      chunks: 32,
      threads,
      dataset: "tinyshakespeare",
    });
    writeImatrix(join(dir, "imatrix.gguf"), imatrix);
    const f = GgufFile.open(base);
    weights = imatrixWeights(imatrix, f.header.tensors, join(dir, "imatrix.gguf"));
    f.close();
  }

  // The f32 model, loaded once, is the base of every KL divergence.
  const baseModelLoaded = await Model.load(base, {
    threads,
    contextSize: ctx,
    batchSize: Math.min(ctx, 256),
    logitsAll: true,
  });
  const measure = async (
    path: string,
    seconds: number | undefined,
    engine: WorkerRequest["engine"],
  ): Promise<FileFigures> => {
    const r = await perplexity(path, heldOut, { ctx, chunks, threads, klDivergenceBase: baseModelLoaded });
    const t = tensorBytes(path);
    const s = await speed(engine, path, threads, quietWait);
    return {
      bytes: statSync(path).size,
      bitsPerWeight: t.bits / t.elements,
      ppl: r.ppl,
      pplError: r.pplError,
      deltaPpl: r.kl!.deltaPpl,
      kld: r.kl!.kld.mean,
      kldError: r.kl!.kld.meanError,
      sameTop: r.kl!.sameTop,
      quantizeSeconds: seconds,
      prefillTokensPerSecond: s.prefillTokensPerSecond,
      decodeTokensPerSecond: s.decodeTokensPerSecond,
      disturbed: s.repetitions.every((r) => r.foreignCores > QUIET_CORES),
    };
  };

  const rows: QuantizeRow[] = [];
  const started = new Date().toISOString();
  if (!json) {
    process.stdout.write(
      `bench quantize: ${SHAPE.dim}-wide ${SHAPE.layers}-layer Llama pretrained ${steps} steps (${base}); ` +
        `perplexity on the last 10% of tinyshakespeare, ${chunks} chunks of ${ctx}; ${threads} threads\n\n${tableHeader()}\n`,
    );
  }
  try {
    const f32 = await measure(base, undefined, "smallhammer");
    // llama.cpp's speed on the same f32 file, for reference (its other figures are the file's).
    const peer = await speed("llama.cpp", base, threads, quietWait);
    const f32Row: QuantizeRow = {
      type: "F32",
      imatrix: false,
      smallhammer: f32,
      llamaCpp: {
        ...f32,
        prefillTokensPerSecond: peer.prefillTokensPerSecond,
        decodeTokensPerSecond: peer.decodeTokensPerSecond,
        disturbed: peer.repetitions.every((r) => r.foreignCores > QUIET_CORES),
      },
    };
    rows.push(f32Row);
    if (!json) process.stdout.write(`${tableRow(f32Row)}\n`);
    for (const withImatrix of weights ? [false, true] : [false]) {
      for (const t of types) {
        const row: QuantizeRow = { type: t.name, imatrix: withImatrix };
        rows.push(row);
        try {
          const suffix = `${t.name.toLowerCase()}${withImatrix ? "-imatrix" : ""}`;
          const ours = join(dir, `smallhammer-${suffix}.gguf`);
          const theirs = join(dir, `llama.cpp-${suffix}.gguf`);
          const imatrix = withImatrix ? weights : undefined;
          say(`${t.name}${withImatrix ? " with imatrix" : ""}: quantizing`);
          let t0 = performance.now();
          await quantizeModel(base, ours, t.name, { imatrix });
          const oursSeconds = (performance.now() - t0) / 1000;
          t0 = performance.now();
          llamaModelQuantize(base, theirs, { ftype: t.ftype, threads, imatrix });
          const theirsSeconds = (performance.now() - t0) / 1000;
          const a = tensorBytes(ours).tensors;
          const b = tensorBytes(theirs).tensors;
          row.sameTensors = [[...a].filter(([n, bytes]) => b.get(n)?.equals(bytes)).length, a.size];
          say(`${t.name}: measuring`);
          row.smallhammer = await measure(ours, oursSeconds, "smallhammer");
          row.llamaCpp = await measure(theirs, theirsSeconds, "llama.cpp");
        } catch (e) {
          if (!(e instanceof Error)) throw e;
          row.note = e.message.split("\n")[0];
        }
        if (!json) process.stdout.write(`${tableRow(row)}\n`);
      }
    }
  } finally {
    await baseModelLoaded.dispose();
  }
  const save = str("save");
  if (json || save !== undefined) {
    const text = `${JSON.stringify({ started, shape: SHAPE, vocab: VOCAB, steps, ctx, chunks, threads, rows }, null, 2)}\n`;
    if (json) process.stdout.write(text);
    if (save !== undefined) writeFileSync(save, text);
  }
  if (!json) {
    process.stdout.write(
      "\nBoth files of a row are measured by smallhammer (perplexity, KL divergence against the f32 model, top-1 = same most\n" +
        "likely next token); tok/s: each engine running its own file (smallhammer ours, llama.cpp its own). same = tensors\n" +
        "whose bytes are identical in both files. quantize s: smallhammer in one JavaScript thread, llama.cpp with --threads.\n" +
        `"disturbed": a speed measured while other processes took more than ${QUIET_CORES} cores.\n`,
    );
  }
}

const COLUMNS: [string, number][] = [
  ["type", 8],
  ["MiB", 5],
  ["bpw", 5],
  ["ppl ours", 8],
  ["llama.cpp", 9],
  ["Δppl ours", 9],
  ["llama.cpp", 9],
  ["KLD ours", 9],
  ["llama.cpp", 9],
  ["top-1 ours", 10],
  ["llama.cpp", 9],
  ["quantize s ours", 15],
  ["llama.cpp", 9],
  ["same", 7],
  ["prefill tok/s ours", 18],
  ["llama.cpp", 9],
  ["decode tok/s ours", 17],
  ["llama.cpp", 9],
];

function tableHeader(): string {
  const cells = COLUMNS.map(([t, w]) => t.padStart(w));
  return `| ${cells.join(" | ")} |\n| ${COLUMNS.map(([, w]) => `${"-".repeat(w - 1)}:`).join(" | ")} |`;
}

function tableRow(r: QuantizeRow): string {
  const o = r.smallhammer;
  const l = r.llamaCpp;
  const num = (x: number | undefined, digits: number) => (x === undefined ? "-" : x.toFixed(digits));
  const rate = (x: number | undefined) => (x === undefined ? "-" : x >= 100 ? x.toFixed(0) : x.toFixed(1));
  const pct = (x: number | undefined) => (x === undefined ? "-" : `${(100 * x).toFixed(2)}%`);
  const cells = [
    r.imatrix ? `${r.type}+i` : r.type,
    num(o && o.bytes / MiB, 2),
    num(o?.bitsPerWeight, 2),
    num(o?.ppl, 3),
    num(l?.ppl, 3),
    num(o?.deltaPpl, 4),
    num(l?.deltaPpl, 4),
    num(o?.kld, 6),
    num(l?.kld, 6),
    pct(o?.sameTop),
    pct(l?.sameTop),
    num(o?.quantizeSeconds, 2),
    num(l?.quantizeSeconds, 2),
    r.sameTensors ? `${r.sameTensors[0]}/${r.sameTensors[1]}` : "-",
    rate(o?.prefillTokensPerSecond),
    rate(l?.prefillTokensPerSecond),
    rate(o?.decodeTokensPerSecond),
    rate(l?.decodeTokensPerSecond),
  ].map((c, i) => c.padStart(COLUMNS[i]![1]));
  const disturbed = o?.disturbed || l?.disturbed ? " disturbed" : "";
  return `| ${cells.join(" | ")} |${disturbed}${r.note ? ` ${r.note}` : ""}`;
}
