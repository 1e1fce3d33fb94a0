// `npm run bench -- infer [--shapes 15M,110M,1.1B] [--types q4_0,q8_0,f32] [--threads N] [--large] [--json]`
// Prefill and decode tokens/s of smallhammer and llama.cpp (node-llama-cpp) on the same random-weight
// GGUF files with the same thread count, each engine in its own process, with peak RSS.
import { execFileSync } from "node:child_process";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type BenchType, SHAPES, writeBenchModel } from "./random-model.js";

interface Row {
  shape: string;
  type: string;
  fileBytes: number;
  kvBytes: number;
  ours: Measure;
  llamaCpp?: Measure;
  disturbed: boolean;
}
interface Measure {
  prefill: number;
  decode: number;
  maxRss: number;
  loadSeconds: number;
  shards: number;
}

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

/** Share of CPU time spent busy over `ms` milliseconds, from /proc/stat (0..1). */
function busyShare(ms = 1000): number {
  const read = () => {
    const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
    const idle = f[3]! + (f[4] ?? 0);
    return { idle, total: f.reduce((a, b) => a + b, 0) };
  };
  const a = read();
  const end = Date.now() + ms;
  while (Date.now() < end) {
    /* sample window */
  }
  const b = read();
  const total = b.total - a.total;
  // The sampling loop itself keeps one core busy.
  const cores = Math.max(1, readFileSync("/proc/cpuinfo", "utf8").split("\nprocessor").length);
  const busy = (total - (b.idle - a.idle)) / Math.max(1, total) - 1 / cores;
  return Math.max(0, busy);
}

function measure(engine: "ours" | "llama", path: string, threads: number, prefill: number, decode: number) {
  const worker = fileURLToPath(new URL("./infer-worker.js", import.meta.url));
  const out = execFileSync(
    process.execPath,
    [worker, engine, path, String(threads), String(prefill), String(decode)],
    {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
      maxBuffer: 1 << 20,
    },
  );
  return JSON.parse(out.trim().split("\n").pop()!) as Measure;
}

const mib = (b: number) => `${(b / 1048576).toFixed(0)}`;

function infer() {
  const threads = Number(flag("--threads") ?? 2);
  const json = process.argv.includes("--json");
  const dir = flag("--dir") ?? ".tmp/bench-models";
  const shapes = (flag("--shapes") ?? "15M,110M,1.1B").split(",");
  const types = (flag("--types") ?? "q4_0,q8_0,f32").split(",") as BenchType[];
  const P = 128;
  const D = 128;
  const plan: [string, BenchType][] = [];
  for (const s of shapes) {
    if (!SHAPES[s]) throw new Error(`unknown shape ${s} (known: ${Object.keys(SHAPES).join(", ")})`);
    for (const t of types) if (t !== "f32" || s === "15M") plan.push([s, t]);
  }
  const rows: Row[] = [];
  for (const [s, t] of plan) {
    const shape = SHAPES[s]!;
    const path = writeBenchModel(join(dir, `${s}-${t}.gguf`), shape, t);
    const kvBytes = 2 * shape.layers * (P + D + 8) * shape.kvHeads * (shape.dim / shape.heads) * 4;
    const disturbed = busyShare() > 0.15;
    const ours = measure("ours", path, threads, P, D);
    const llamaCpp = measure("llama", path, threads, P, D);
    const row = {
      shape: s,
      type: t,
      fileBytes: statSync(path).size,
      kvBytes,
      ours,
      llamaCpp,
      disturbed: disturbed || busyShare(300) > 0.15,
    };
    rows.push(row);
    if (!json) printRow(row, rows.length === 1);
  }
  if (process.argv.includes("--large")) {
    const shape = SHAPES["7B"]!;
    const path = writeBenchModel(join(dir, "7B-q4_0.gguf"), shape, "q4_0");
    const ours = measure("ours", path, threads, 16, 8);
    const kvBytes = 2 * shape.layers * (16 + 8 + 8) * shape.dim * 4;
    const row = {
      shape: "7B",
      type: "q4_0",
      fileBytes: statSync(path).size,
      kvBytes,
      ours,
      disturbed: busyShare(300) > 0.15,
    };
    rows.push(row);
    if (!json) {
      process.stdout.write(
        `7B q4_0 (--large): loaded in ${ours.loadSeconds.toFixed(1)} s over ${ours.shards} memory shard(s); prefill ${ours.prefill.toFixed(2)} tok/s, decode ${ours.decode.toFixed(2)} tok/s (16 + 8 tokens), peak RSS ${mib(ours.maxRss)} MiB for a ${mib(row.fileBytes)} MiB file\n`,
      );
    }
  }
  if (json)
    process.stdout.write(
      `${JSON.stringify({ threads, prefillTokens: P, decodeTokens: D, rows }, null, 2)}\n`,
    );
}

function printRow(r: Row, header: boolean) {
  if (header) {
    process.stdout.write(
      "shape type  file MiB | prefill tok/s ours  llama.cpp  ratio | decode tok/s ours  llama.cpp  ratio | peak RSS MiB ours  llama.cpp  budget\n",
    );
  }
  const l = r.llamaCpp!;
  const budget = r.fileBytes + r.kvBytes + 200 * 1048576;
  const cells = [
    r.shape.padEnd(5),
    r.type.padEnd(5),
    mib(r.fileBytes).padStart(8),
    "|",
    r.ours.prefill.toFixed(1).padStart(18),
    l.prefill.toFixed(1).padStart(10),
    (r.ours.prefill / l.prefill).toFixed(2).padStart(6),
    "|",
    r.ours.decode.toFixed(1).padStart(17),
    l.decode.toFixed(1).padStart(10),
    (r.ours.decode / l.decode).toFixed(2).padStart(6),
    "|",
    mib(r.ours.maxRss).padStart(17),
    mib(l.maxRss).padStart(10),
    `${r.ours.maxRss <= budget ? "ok" : "OVER"} (${mib(budget)})`.padStart(12),
    r.disturbed ? " disturbed" : "",
  ];
  process.stdout.write(`${cells.join(" ")}\n`);
}

const cmd = process.argv[2];
if (cmd === "infer") infer();
else {
  process.stderr.write(
    "usage: npm run bench -- infer [--shapes 15M,110M,1.1B] [--types q4_0,q8_0,f32] [--threads N] [--large] [--json]\n",
  );
  process.exit(2);
}
