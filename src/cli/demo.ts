import { mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Command } from "commander";
import { inspectGguf } from "../model/inspect.js";
import { loadModel } from "../model/model.js";
import { writeRandomLlama } from "../model/random-llama.js";
import { quantizeModel } from "../quant/quantize-model.js";
import { intArg } from "./options.js";

export function registerDemo(program: Command) {
  program
    .command("demo")
    .description(
      "write a random-weight Llama, quantize it to q4_0, inspect it and generate from it (an engine check)",
    )
    .option("--dir <dir>", "where to write the model files", ".tmp/demo")
    .option("-t, --threads <n>", "compute threads (default: all cores)", intArg("--threads", 1, 1024))
    .action(async (flags: { dir: string; threads?: number }) => {
      mkdirSync(flags.dir, { recursive: true });
      const f32 = join(flags.dir, "random-f32.gguf");
      const q4 = join(flags.dir, "random-q4_0.gguf");
      const say = (s: string) => process.stdout.write(`${s}\n`);
      let t = performance.now();
      const lap = () => {
        const now = performance.now();
        const s = ((now - t) / 1000).toFixed(2);
        t = now;
        return s;
      };
      say("smallhammer demo: the engine end to end on a random-weight model (its text is noise by design)");
      writeRandomLlama(
        f32,
        {
          name: "demo",
          dim: 512,
          layers: 8,
          heads: 8,
          kvHeads: 4,
          ffn: 1408,
          vocab: 32000,
          contextLength: 512,
        },
        "f32",
      );
      say(`1. wrote ${f32} (${(statSync(f32).size / 1048576).toFixed(1)} MiB) in ${lap()} s`);
      const q = await quantizeModel(f32, q4, "q4_0");
      say(
        `2. quantized to q4_0: ${q.quantized} tensors, ${(q.outputBytes / 1048576).toFixed(1)} MiB, in ${lap()} s`,
      );
      const report = inspectGguf(q4).text.split("\n");
      say(`3. inspect ${q4}:`);
      for (const line of report.slice(0, 7)) say(`   ${line}`);
      const model = await loadModel(q4, { threads: flags.threads, contextSize: 512 });
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
