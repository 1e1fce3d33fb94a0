// One fine-tuning measurement in its own process (so its peak RSS is its own): runs a few steps
// and prints {tokensPerSecond, maxRssBytes} as JSON.
import { finetune } from "../train/finetune.js";

const req = JSON.parse(process.argv[2]!) as {
  base: string;
  data: string;
  out: string;
  method: "lora" | "qlora";
  targets: string;
  steps: number;
  batch: number;
  seq: number;
  threads?: number;
};
let best = 0;
const summary = await finetune({
  base: req.base,
  data: req.data,
  out: req.out,
  template: "alpaca",
  method: req.method,
  targets: req.targets,
  rank: 8,
  alpha: 16,
  steps: req.steps,
  batch: req.batch,
  seq: req.seq,
  threads: req.threads,
  valFraction: 0,
  checkpointEvery: 0,
  // The first step warms up the kernels; the rate is the best step's after it.
  onEvent: (e) => {
    if (e.type === "step" && e.metrics.step > 1)
      best = Math.max(best, e.metrics.tokens / (e.metrics.ms / 1000));
  },
});
process.stdout.write(
  `${JSON.stringify({ tokensPerSecond: best, maxRssBytes: process.resourceUsage().maxRSS * 1024, loss: summary.loss })}\n`,
);
