// `npm run bench -- convert`: `smallhammer convert` of a Hugging Face checkpoint as a user runs
// it (the built CLI in a child process) to F16 and to Q8_0: seconds and the child's peak RSS,
// against the time to read the checkpoint's files once. The checkpoint is written here, at a
// released model's shape (bf16 safetensors in two shards with an index, config.json and a
// tokenizer.json), with random weights: convert's work does not depend on the values.

import { spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { convertArchitectureForGguf } from "../convert/architectures.js";
import { UserError } from "../errors.js";
import { hfTensorName, tensorPlan } from "../model/arch/index.js";
import type { LlamaConfig } from "../model/config.js";
import { type LlamaShape, SHAPES } from "../model/random-llama.js";
import { parseFileType } from "../quant/mixes.js";
import { tokenizerToHf } from "../tokenizer/hf-tokenizer.js";
import { type TokenizerDescription, TokenType } from "../tokenizer/index.js";
import { parseBenchArgs } from "./args.js";
import { runCli } from "./child.js";
import { cpuSample, foreignCores, waitForQuiet } from "./infer.js";

export const convertUsage = `usage: npm run bench -- convert [options]

Seconds and peak RSS of \`smallhammer convert\` (a child process) from a Hugging Face checkpoint
(bf16 safetensors, two shards and an index) to F16 and to Q8_0, against one sequential read of the
checkpoint's files. Targets: peak RSS under 1.5 GB, time within 2x of the read.

  --shape NAME      1.1B (TinyLlama: dim 2048, 22 layers, 32 heads, 4 KV heads, ffn 5632),
                    110M or 15M (llama2.c's shapes); vocabulary 32000 (default 1.1B)
  --types LIST      output types (default f16,q8_0)
  --dir PATH        where the checkpoint is written, and reused when present
                    (default .tmp/bench-convert; one directory per shape under it)
  --warm            read and convert from the page cache (default: cold, the checkpoint's
                    pages dropped before each measurement)
  --quiet-wait S    seconds to wait for an idle machine before each measurement (default 120)
  --json            machine-readable results on stdout
`;

/** Foreign CPU load (in cores) above which a measurement is marked disturbed. */
const QUIET_CORES = 0.1;
const MiB = 1048576;
const RSS_TARGET_BYTES = 1.5e9;
const TIME_TARGET_RATIO = 2;

interface Row {
  type: string;
  seconds: number;
  peakRssBytes: number;
  outputBytes: number;
  /** seconds / the read's seconds. */
  ratio: number;
  foreignCores: number;
  disturbed: boolean;
}

export async function runConvertBench(argv: string[]): Promise<void> {
  const args = parseBenchArgs(
    argv,
    {
      shape: { type: "string" },
      types: { type: "string" },
      dir: { type: "string" },
      "quiet-wait": { type: "string" },
      warm: { type: "boolean" },
      json: { type: "boolean" },
    },
    convertUsage,
  );
  if (!args) return;
  const { str } = args;
  const shapeName = str("shape") ?? "1.1B";
  const shape = SHAPES[shapeName];
  if (!shape)
    throw new UserError(`--shape: unknown shape "${shapeName}" (known: ${Object.keys(SHAPES).join(", ")})`);
  const types = (str("types") ?? "f16,q8_0").split(",").map((t) => t.trim().toLowerCase());
  for (const t of types) parseFileType(t);
  const quietWait = Number(str("quiet-wait") ?? 120);
  if (!(quietWait >= 0)) throw new UserError(`--quiet-wait: expected seconds, got "${str("quiet-wait")}"`);
  const json = args.values.json === true;
  const say = (s: string) => process.stderr.write(`${s}\n`);
  const cli = new URL("../cli/main.js", import.meta.url);
  if (!existsSync(cli)) throw new UserError("the CLI is not built: run npm run build first");

  const dir = join(str("dir") ?? join(".tmp", "bench-convert"), shapeName);
  const checkpoint = join(dir, "checkpoint");
  if (existsSync(join(checkpoint, "model.safetensors.index.json"))) {
    say(`reusing the checkpoint in ${checkpoint}`);
  } else {
    say(`writing a ${shapeName} checkpoint to ${checkpoint}`);
    writeCheckpoint(checkpoint, shape);
  }
  const inputBytes = readdirSync(checkpoint).reduce((s, f) => s + statSync(join(checkpoint, f)).size, 0);

  /** Runs `work` on a quiet machine if one comes within --quiet-wait, noting the foreign load. */
  const measure = async <T>(work: () => Promise<T>) => {
    const waited = await waitForQuiet(QUIET_CORES, quietWait, say);
    const before = sampleWithChildren();
    const t0 = performance.now();
    const value = await work();
    const seconds = (performance.now() - t0) / 1000;
    const foreign = Math.max(waited, foreignCores(before, sampleWithChildren()));
    return { value, seconds, foreignCores: foreign, disturbed: foreign > QUIET_CORES };
  };

  // Cold by default: the checkpoint's pages are dropped from the page cache before the read and
  // before each convert (dd's iflag=nocache, which needs no privileges); --warm reads it once
  // untimed first instead. Either way the read and every convert start alike.
  const warm = args.values.warm === true;
  const prepare = () => {
    if (warm) readAll(checkpoint);
    else evict(checkpoint);
  };
  const cache = warm ? "warm page cache" : "cold: evicted from the page cache first";
  prepare();
  const read = await measure(async () => readAll(checkpoint));
  const rows: Row[] = [];
  for (const type of types) {
    const out = join(dir, `out-${type}.gguf`);
    say(`timing convert --type ${type}`);
    prepare();
    const run = await measure(() =>
      runCli(["convert", checkpoint, "--out", out, "--type", type, "--json", "--force"]),
    );
    rows.push({
      type,
      seconds: run.seconds,
      peakRssBytes: run.value.peakRssBytes,
      outputBytes: statSync(out).size,
      ratio: run.seconds / read.seconds,
      foreignCores: run.foreignCores,
      disturbed: run.disturbed,
    });
    rmSync(out, { force: true });
  }

  const result = {
    shape: shapeName,
    ...shape,
    inputBytes,
    readSeconds: read.seconds,
    cache: warm ? "warm" : "cold",
    readDisturbed: read.disturbed,
    rows,
    targets: { peakRssBytes: RSS_TARGET_BYTES, ratio: TIME_TARGET_RATIO },
    loadAverage: loadavg(),
  };
  if (json) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    return;
  }
  const mark = (m: { disturbed: boolean; foreignCores: number }) =>
    m.disturbed ? ` disturbed (${m.foreignCores.toFixed(2)} foreign cores)` : "";
  const lines = [
    `bench convert: ${shapeName} checkpoint, ${(inputBytes / MiB).toFixed(0)} MiB of bf16 safetensors in ${checkpoint}`,
    `read once (${cache}): ${read.seconds.toFixed(2)} s, ${(inputBytes / MiB / read.seconds).toFixed(0)} MiB/s${mark(read)}`,
    "",
    "| output | seconds | peak RSS MiB | output MiB | × read time |",
    "| ------ | ------: | -----------: | ---------: | ----------: |",
    ...rows.map(
      (r) =>
        `| ${r.type} | ${r.seconds.toFixed(2)} | ${(r.peakRssBytes / MiB).toFixed(0)} | ${(r.outputBytes / MiB).toFixed(0)} | ${r.ratio.toFixed(2)} |${mark(r)}`,
    ),
    "",
    `targets: peak RSS under ${(RSS_TARGET_BYTES / 1e9).toFixed(1)} GB, time within ${TIME_TARGET_RATIO}x of the read.`,
    `"disturbed": other processes used more than ${QUIET_CORES} cores during the measurement (from /proc/stat).`,
    "",
  ];
  process.stdout.write(lines.join("\n"));
}

/** This process's CPU sample with its reaped children's time counted as its own. */
function sampleWithChildren() {
  const sample = cpuSample();
  const stat = readFileText("/proc/self/stat");
  // After the command name: cutime and cstime are fields 16 and 17 (reaped children, in ticks).
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { ...sample, own: sample.own + Number(rest[13]) + Number(rest[14]) };
}

function readFileText(path: string): string {
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.alloc(4096);
    return buf.subarray(0, readSync(fd, buf, 0, buf.length, null)).toString("utf8");
  } finally {
    closeSync(fd);
  }
}

/** Drops the files of `dir` from the page cache (posix_fadvise DONTNEED, through dd). */
function evict(dir: string): void {
  for (const f of readdirSync(dir)) {
    const r = spawnSync("dd", [`if=${join(dir, f)}`, "iflag=nocache", "count=0", "status=none"]);
    if (r.status !== 0) throw new UserError(`cannot drop ${f} from the page cache with dd (use --warm)`);
  }
}

/** Reads every byte of every file in `dir` once, in order, 16 MiB at a time. */
function readAll(dir: string): void {
  const buf = Buffer.allocUnsafe(16 * MiB);
  for (const f of readdirSync(dir).sort()) {
    const fd = openSync(join(dir, f), "r");
    try {
      while (readSync(fd, buf, 0, buf.length, null) > 0) {}
    } finally {
      closeSync(fd);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The checkpoint

/** Writes config.json, tokenizer files and two bf16 safetensors shards with their index. */
function writeCheckpoint(dir: string, s: LlamaShape): void {
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const headDim = s.dim / s.heads;
  const config: LlamaConfig = {
    architecture: "llama",
    dim: s.dim,
    layers: s.layers,
    heads: s.heads,
    kvHeads: s.kvHeads,
    ffn: s.ffn,
    headDim,
    vocab: s.vocab,
    contextLength: 2048,
    normEps: 1e-5,
    rope: { dim: headDim, freqBase: 10000, freqScale: 1, neox: false },
  };
  const plan = tensorPlan("llama", config, (name) => name === "output.weight");
  const tokenizer = tokenizerDescription(s.vocab);
  writeFileSync(
    join(tmp, "config.json"),
    JSON.stringify({
      ...convertArchitectureForGguf("llama", dir).config(config, () => true),
      torch_dtype: "bfloat16",
      tie_word_embeddings: false,
      bos_token_id: tokenizer.bosId,
      eos_token_id: tokenizer.eosId,
    }),
  );
  const hf = tokenizerToHf(tokenizer, { contextLength: config.contextLength });
  writeFileSync(join(tmp, "tokenizer.json"), JSON.stringify(hf.tokenizer));
  writeFileSync(join(tmp, "tokenizer_config.json"), JSON.stringify(hf.config));

  // Two shards of about equal size, tensors in the plan's order (embeddings, then the layers).
  const tensors = plan.map((t) => ({
    name: hfTensorName(t.spec, t.layer)!,
    shape: [...t.dims].reverse(),
    ones: t.kind === "norm",
    bytes: t.dims.reduce((a, b) => a * b, 1) * 2,
  }));
  const total = tensors.reduce((a, t) => a + t.bytes, 0);
  let split = 0;
  for (let acc = 0; split < tensors.length && acc + tensors[split]!.bytes <= total / 2; split++)
    acc += tensors[split]!.bytes;
  const shards = [tensors.slice(0, split), tensors.slice(split)];
  const weightMap: Record<string, string> = {};
  const random = new Xorshift(1);
  shards.forEach((shard, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    for (const t of shard) weightMap[t.name] = file;
    writeShard(join(tmp, file), shard, random);
  });
  writeFileSync(
    join(tmp, "model.safetensors.index.json"),
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2),
  );
  // (written under a temporary name: an interrupted run leaves no half checkpoint to reuse)
  rmSync(dir, { recursive: true, force: true });
  renameSync(tmp, dir);
}

/** One safetensors file, written tensor by tensor: random bf16 weights, norms of ones. */
function writeShard(
  path: string,
  tensors: { name: string; shape: number[]; ones: boolean; bytes: number }[],
  random: Xorshift,
): void {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: "BF16", shape: t.shape, data_offsets: [offset, offset + t.bytes] };
    offset += t.bytes;
  }
  let text = JSON.stringify(header);
  text += " ".repeat((8 - (Buffer.byteLength(text) % 8)) % 8);
  const fd = openSync(path, "w");
  try {
    const size = Buffer.alloc(8);
    size.writeBigUInt64LE(BigInt(Buffer.byteLength(text)));
    writeSync(fd, size);
    writeSync(fd, Buffer.from(text, "utf8"));
    const chunk = new Uint16Array(8 * MiB);
    for (const t of tensors) {
      for (let left = t.bytes / 2; left > 0; ) {
        const n = Math.min(left, chunk.length);
        if (t.ones) chunk.fill(0x3f80, 0, n);
        else random.bf16(chunk, n);
        writeSync(fd, new Uint8Array(chunk.buffer, 0, n * 2));
        left -= n;
      }
    }
  } finally {
    closeSync(fd);
  }
}

/** xorshift32: fast, seeded, plenty for weights nobody reads. */
class Xorshift {
  constructor(private state: number) {}
  /** n bf16 values: random sign, magnitudes from 2^-10 to 2^-3 (weights of a trained model's size). */
  bf16(out: Uint16Array, n: number): void {
    let x = this.state;
    for (let i = 0; i < n; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      // sign bit, exponent 117..124, 7 mantissa bits
      out[i] = (x & 0x8000) | ((117 + ((x >>> 7) & 7)) << 7) | (x & 0x7f);
    }
    this.state = x;
  }
}

/**
 * A SentencePiece-style vocabulary of 32000 pieces that tokenizer.json can express (every piece
 * two shorter pieces merged): controls, the 256 byte pieces, then letters, pairs and triples.
 */
function tokenizerDescription(vocab: number): TokenizerDescription {
  const tokens = ["<unk>", "<s>", "</s>"];
  const types: number[] = [TokenType.Unknown, TokenType.Control, TokenType.Control];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(TokenType.Byte);
  }
  const letters = "abcdefghijklmnopqrstuvwxyz".split("");
  const pieces = ["▁", ...letters, ...letters.map((a) => `▁${a}`)];
  for (const a of letters) for (const b of letters) pieces.push(`${a}${b}`, `▁${a}${b}`);
  for (const a of letters) for (const b of letters) for (const c of letters) pieces.push(`${a}${b}${c}`);
  for (const a of letters) for (const b of letters) for (const c of letters) pieces.push(`▁${a}${b}${c}`);
  for (const p of pieces.slice(0, vocab - tokens.length)) {
    tokens.push(p);
    types.push(TokenType.Normal);
  }
  return {
    model: "llama",
    tokens,
    scores: Float32Array.from(tokens, (_, i) => (i < 259 ? 0 : -(i - 258))),
    tokenTypes: Int32Array.from(types),
    bosId: 1,
    eosId: 2,
    unkId: 0,
    addBos: true,
    addEos: false,
    addSpacePrefix: true,
  };
}
