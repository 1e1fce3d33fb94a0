import { existsSync, mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Command } from "commander";
import { UserError } from "../errors.js";
import { inspectGguf } from "../model/inspect.js";
import { loadModel } from "../model/model.js";
import { type LlamaShape, randomLlamaFile } from "../model/random-llama.js";
import { quantizeModel } from "../quant/quantize-model.js";
import { userCacheDir } from "../util/cache-dir.js";
import { threadsArg } from "./options.js";

const DEMO_SHAPE: LlamaShape = {
  name: "demo",
  dim: 512,
  layers: 8,
  heads: 8,
  kvHeads: 4,
  ffn: 1408,
  vocab: 32000,
  contextLength: 512,
};

function prepareDir(dir: string): void {
  if (existsSync(dir) && !statSync(dir).isDirectory()) {
    throw new UserError(`--dir ${dir}: exists and is not a directory`);
  }
  mkdirSync(dir, { recursive: true });
}

export function registerDemo(program: Command) {
  program
    .command("demo")
    .description(
      "write a random-weight Llama, quantize it to q4_0, inspect it and generate from it (an engine check)",
    )
    .option("--dir <dir>", "where to keep the model files, reused by the next run", userCacheDir("demo"))
    .option("-t, --threads <n>", "compute threads (default: all cores)", threadsArg)
    .action(async (flags: { dir: string; threads?: number }) => {
      prepareDir(flags.dir);
      const q4 = join(flags.dir, "demo-q4_0.gguf");
      const say = (s: string) => process.stdout.write(`${s}\n`);
      let t = performance.now();
      const lap = () => {
        const now = performance.now();
        const s = ((now - t) / 1000).toFixed(2);
        t = now;
        return s;
      };
      say("smallhammer demo: the engine end to end on a random-weight model (its text is noise by design)");
      say(`model files in ${flags.dir} (kept for the next run; delete the directory to free the space)`);
      let wrote = false;
      const f32 = randomLlamaFile(flags.dir, DEMO_SHAPE, "f32", () => (wrote = true));
      const mib = (path: string) => (statSync(path).size / 1048576).toFixed(1);
      say(`1. ${wrote ? "wrote" : "reused"} ${f32} (${mib(f32)} MiB) in ${lap()} s`);
      // The quantized file is made again whenever the f32 one is newer (or missing).
      if (!wrote && existsSync(q4) && statSync(q4).mtimeMs >= statSync(f32).mtimeMs) {
        say(`2. reused ${q4} (q4_0, ${mib(q4)} MiB)`);
      } else {
        const q = await quantizeModel(f32, q4, "q4_0");
        say(`2. quantized to q4_0: ${q.quantized} tensors, ${mib(q4)} MiB, in ${lap()} s`);
      }
      const report = inspectGguf(q4).text.split("\n");
      say(`3. inspect ${q4}:`);
      for (const line of report.slice(0, 7)) say(`   ${line}`);
      const model = await loadModel(q4, { threads: flags.threads, contextSize: 512, worker: false });
      try {
        say(`4. loaded on ${model.llama.threads} threads in ${lap()} s; generating 64 tokens (greedy):`);
        let info: { promptTokens: number; completionTokens: number } | undefined;
        let text = "";
        const t0 = performance.now();
        for await (const piece of model.generate("the cat sat on the", {
          maxTokens: 64,
          temperature: 0,
          onDone: (i) => (info = i),
        })) {
          text += piece;
        }
        const s = (performance.now() - t0) / 1000;
        say(`   ${JSON.stringify(text.slice(0, 160))}`);
        say(
          `   ${info?.completionTokens} tokens in ${s.toFixed(2)} s (${((info?.completionTokens ?? 0) / s).toFixed(1)} tokens/s)`,
        );
      } finally {
        await model.dispose();
      }
      say("Next: `smallhammer inspect|generate|chat -m <a real GGUF>`; see README.md.");
    });
}
