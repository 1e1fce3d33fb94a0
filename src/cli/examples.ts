import type { Command } from "commander";

/**
 * One example command line per command, shown at the end of its --help. Keyed by the command's
 * full name; a test checks that every registered command has one and that each example parses.
 */
export const EXAMPLES: Record<string, string> = {
  inspect: "smallhammer inspect model.gguf",
  generate: 'smallhammer generate -m model.gguf -p "Once upon a time" -n 128 --temp 0.7 --seed 1',
  chat: 'smallhammer chat -m model.gguf --system "You are a helpful assistant."',
  quantize: "smallhammer quantize model-f32.gguf model-q4_k_m.gguf --type Q4_K_M",
  imatrix: "smallhammer imatrix -m model-f32.gguf -f calibration.txt -o imatrix.gguf --chunks 100",
  perplexity:
    "smallhammer perplexity -m model-q4_0.gguf -f wiki.test.raw --kl-divergence-base model-f32.gguf",
  merge: "smallhammer merge --base base.gguf --adapter run/adapter.gguf --out tuned.gguf",
  finetune:
    "smallhammer finetune --base base.gguf --data alpaca.jsonl --template alpaca --out run/ --epochs 3",
  pretrain: "smallhammer pretrain --model tiny --data cache/ --out run/ --steps 2000 --batch 16 --seq 128",
  export: "smallhammer export run/ --out model.gguf --type q8_0",
  convert: "smallhammer convert TinyLlama-1.1B-Chat/ -o tinyllama-q8_0.gguf --type q8_0",
  report: "smallhammer report lr-1e-3/ lr-3e-3/ --out compare.html",
  tokenizer: "smallhammer tokenizer train corpus.txt --vocab-size 8000 --out tokenizer.gguf",
  "tokenizer train": "smallhammer tokenizer train corpus/*.txt --vocab-size 8000 --out tokenizer.gguf",
  demo: "smallhammer demo",
  quickstart: "smallhammer quickstart --resume",
  serve: "smallhammer serve -m model.gguf --port 8080 --api-key KEY",
  eval: "smallhammer eval tasks -m model.gguf --show 5",
  "eval tasks": "smallhammer eval tasks -m model.gguf --template alpaca --show 5",
  "eval mc":
    "smallhammer eval mc -m model.gguf --data mmlu-test.jsonl --format mmlu --shots 5 --fewshot-data mmlu-dev.jsonl --json > mmlu.json",
  "eval report": "smallhammer eval report base-mmlu.json tuned-mmlu.json --out report.html",
  "eval answers": "smallhammer eval answers -m model.gguf --questions question.jsonl --out answers.jsonl",
  "eval judge":
    "smallhammer eval judge --judge http://127.0.0.1:8080/v1 --judge-model judge --questions question.jsonl --answers answers.jsonl --out judgments.jsonl",
  data: "smallhammer data stats data.jsonl --tokenizer model.gguf --template chatml",
  "data stats":
    "smallhammer data stats data.jsonl --tokenizer model.gguf --template chatml --max-length 2048",
  "data preview": "smallhammer data preview data.jsonl --tokenizer model.gguf --template alpaca -n 3",
  "data tokenize":
    "smallhammer data tokenize corpus.txt --tokenizer tokenizer.gguf --out cache/ --val-fraction 0.05",
  "data self-instruct":
    "smallhammer data self-instruct --teacher http://127.0.0.1:8080/v1 --model teacher --num 1000 --out tasks.jsonl",
  "data clean-sharegpt": "smallhammer data clean-sharegpt sharegpt.json --out clean.json --lang en",
  "data convert": "smallhammer data convert sharegpt.json --to messages --out messages.jsonl",
  "data dedup": "smallhammer data dedup tasks.jsonl --out unique.jsonl",
  "data filter": "smallhammer data filter tasks.jsonl --out kept.jsonl --min-chars 20 --drop-refusals",
  "data split":
    "smallhammer data split tasks.jsonl --train-out train.jsonl --validation-out val.jsonl --validation 0.05",
  "data sample": "smallhammer data sample tasks.jsonl --num 500 --out sample.jsonl --seed 1",
};

/** The full name of a command below the program: "data stats". */
export function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c?.parent; c = c.parent) names.unshift(c.name());
  return names.join(" ");
}

/** Every command below `program`, depth first, without commander's implicit `help`. */
export function allCommands(program: Command): Command[] {
  return program.commands.flatMap((c) => [c, ...allCommands(c)]);
}

/** Adds each command's example to the end of its help. */
export function addExamples(program: Command): void {
  for (const cmd of allCommands(program)) {
    const example = EXAMPLES[commandPath(cmd)];
    if (example !== undefined) cmd.addHelpText("after", `\nExample:\n  $ ${example}\n`);
  }
}
