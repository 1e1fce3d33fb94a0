// `npm run bench -- <command> [options]`: performance measurements against peers.
import { isUserError } from "../errors.js";

interface BenchCommand {
  summary: string;
  run(argv: string[]): Promise<void>;
}

const COMMANDS: Record<string, BenchCommand> = {
  infer: {
    summary: "prefill and decode tokens/s and peak RSS against llama.cpp on random-weight Llama GGUFs",
    run: async (argv) => (await import("./infer.js")).runInferBench(argv),
  },
  quantize: {
    summary:
      "every quantization type by smallhammer and by llama.cpp on a model pretrained here: size, bpw, perplexity, KL divergence, top-1, speed",
    run: async (argv) => (await import("./quantize.js")).runQuantizeBench(argv),
  },
  train: {
    summary:
      "pretraining tokens/s and GFLOP/s on the 15M and 110M shapes with 1 and 2 threads; tokenizer MB/s",
    run: async (argv) => (await import("./train.js")).runTrainBench(argv),
  },
  finetune: {
    summary:
      "LoRA training tokens/s and peak RSS (against PyTorch when installed); QLoRA peak RSS against LoRA on a float base",
    run: async (argv) => (await import("./finetune.js")).runFinetuneBench(argv),
  },
  serve: {
    summary:
      "aggregate tokens/s and time to first token of the HTTP server with 1, 4 and 16 streaming clients",
    run: async (argv) => (await import("./serve.js")).runServeBench(argv),
  },
  data: {
    summary:
      "records/s of clean-sharegpt and dedup; ROUGE-L filter candidates/s against all pairs; self-instruct overhead per request",
    run: async (argv) => (await import("./data.js")).runDataBench(argv),
  },
  convert: {
    summary:
      "seconds and peak RSS of convert from a bf16 Hugging Face checkpoint (TinyLlama's shape) to F16 and Q8_0, against reading its files",
    run: async (argv) => (await import("./convert.js")).runConvertBench(argv),
  },
  eval: {
    summary:
      "eval judge's requests/s and own work per request against a zero-latency local judge; eval mc questions/s with and without KV reuse",
    run: async (argv) => (await import("./eval.js")).runEvalBench(argv),
  },
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return `usage: npm run bench -- <command> [options]   (<command> --help for its options)\n\n${lines.join("\n")}\n`;
}

const [name, ...rest] = process.argv.slice(2);
if (name === undefined || name === "--help" || name === "-h") {
  process.stdout.write(usage());
  process.exit(name === undefined ? 2 : 0);
}
const command = COMMANDS[name];
if (!command) {
  process.stderr.write(`bench: unknown command "${name}"\n${usage()}`);
  process.exit(2);
}
try {
  await command.run(rest);
} catch (e) {
  if (!isUserError(e)) throw e;
  process.stderr.write(`bench ${name}: ${e.message}\n`);
  process.exit(2);
}
