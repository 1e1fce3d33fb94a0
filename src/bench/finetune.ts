// `npm run bench -- finetune`: LoRA training tokens/s and peak RSS on random-weight Llama shapes
// (rank 8 on q,v and on every projection), and QLoRA's peak RSS against a LoRA whose frozen
// base is f16 on the 1.1B shape (--large). The peer is PyTorch running the same LoRA setup when
// it is installed; without it the table says so and gives no ratio.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { makeWorld, tuningTasks } from "../data/synthetic.js";
import { SHAPES, writeRandomLlama } from "../model/random-llama.js";
import { quantizeModel } from "../quant/quantize-model.js";
import { waitForQuiet } from "./infer.js";

interface Measure {
  tokensPerSecond: number;
  maxRssBytes: number;
}

function torchAvailable(): boolean {
  try {
    execFileSync("python3", ["-c", "import torch"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

function measure(req: Record<string, unknown>): Measure {
  const worker = fileURLToPath(new URL("./finetune-worker.js", import.meta.url));
  const r = spawnSync(process.execPath, [worker, JSON.stringify(req)], {
    encoding: "utf8",
    timeout: 1800_000,
  });
  if (r.status !== 0)
    throw new Error(`finetune worker failed: ${r.stderr.trim().split("\n").slice(-3).join(" | ")}`);
  return JSON.parse(r.stdout.trim().split("\n").pop()!);
}

export async function runFinetuneBench(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      shapes: { type: "string", default: "15M,110M" },
      large: { type: "boolean", default: false },
      threads: { type: "string" },
      steps: { type: "string", default: "4" },
      dir: { type: "string", default: "bench-out/finetune" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(
      "npm run bench -- finetune [--shapes 15M,110M] [--large] [--steps 4] [--threads N] [--dir bench-out/finetune]\n",
    );
    return;
  }
  const threads = values.threads ? Number(values.threads) : undefined;
  const steps = Number(values.steps);
  const dir = values.dir!;
  mkdirSync(dir, { recursive: true });
  const data = join(dir, "tasks.jsonl");
  writeFileSync(
    data,
    `${tuningTasks(makeWorld(1), 2000)
      .map((t) => JSON.stringify({ instruction: t.instruction, input: t.input, output: t.output }))
      .join("\n")}\n`,
  );
  const peer = torchAvailable();
  const foreign = await waitForQuiet(0.3, 60, (s) => process.stderr.write(`${s}\n`));
  const disturbed = foreign > 0.3 ? ` (DISTURBED: other processes used ${foreign.toFixed(2)} cores)` : "";
  process.stdout.write(
    `LoRA rank 8, ${steps} steps, alpaca records, batch × seq as listed${disturbed}\npeer: ${peer ? "PyTorch found, but the PyTorch LoRA script is not part of this bench yet" : "PyTorch is not installed here: no peer ratio"}\n\n`,
  );
  process.stdout.write(
    `${"shape".padEnd(6)} ${"targets".padEnd(22)} ${"batch×seq".padEnd(10)} ${"tok/s".padStart(8)} ${"peak RSS".padStart(10)}\n`,
  );
  const mib = (b: number) => `${(b / 1048576).toFixed(0)} MiB`;
  for (const name of values.shapes!.split(",")) {
    const shape = SHAPES[name.trim()];
    if (!shape) throw new Error(`unknown shape ${name}`);
    const base = join(dir, `${shape.name}-f32.gguf`);
    writeRandomLlama(base, { ...shape, contextLength: 512 }, "f32");
    const [batch, seq] = shape.dim <= 288 ? [4, 256] : [2, 256];
    for (const targets of ["q,v", "q,k,v,o,gate,up,down"]) {
      const out = join(dir, `run-${shape.name}-${targets.length}`);
      rmSync(out, { recursive: true, force: true });
      const m = measure({ base, data, out, method: "lora", targets, steps, batch, seq, threads });
      process.stdout.write(
        `${shape.name.padEnd(6)} ${targets.padEnd(22)} ${`${batch}×${seq}`.padEnd(10)} ${m.tokensPerSecond.toFixed(0).padStart(8)} ${mib(m.maxRssBytes).padStart(10)}\n`,
      );
    }
    rmSync(base, { force: true });
  }
  if (!values.large) return;
  // 1.1B: its f32 weights exceed one WebAssembly memory, so the LoRA reference point holds the
  // frozen base in f16; QLoRA holds it in q4_0.
  const shape = SHAPES["1.1B"]!;
  const f32 = join(dir, "1.1B-f32.gguf");
  const f16 = join(dir, "1.1B-f16.gguf");
  writeRandomLlama(f32, { ...shape, contextLength: 512 }, "f32");
  await quantizeModel(f32, f16, "f16");
  rmSync(f32, { force: true });
  const lora = measure({
    base: f16,
    data,
    out: join(dir, "run-1.1B-lora"),
    method: "lora",
    targets: "q,v",
    steps: 2,
    batch: 1,
    seq: 128,
    threads,
  });
  const qlora = measure({
    base: f16,
    data,
    out: join(dir, "run-1.1B-qlora"),
    method: "qlora",
    targets: "q,v",
    steps: 2,
    batch: 1,
    seq: 128,
    threads,
  });
  process.stdout.write(
    `\n1.1B, rank 8 on q,v, 1×128: LoRA on an f16 base ${mib(lora.maxRssBytes)} (${lora.tokensPerSecond.toFixed(0)} tok/s), QLoRA on q4_0 ${mib(qlora.maxRssBytes)} (${qlora.tokensPerSecond.toFixed(0)} tok/s): QLoRA/LoRA peak RSS ${(qlora.maxRssBytes / lora.maxRssBytes).toFixed(2)}x (target <= 0.4x against an f32 base)\n`,
  );
  for (const p of [f16, join(dir, "run-1.1B-lora"), join(dir, "run-1.1B-qlora")])
    rmSync(p, { recursive: true, force: true });
}
