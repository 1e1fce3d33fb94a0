// What pretrain and finetune print while their shared run loop works: the plan line, a progress
// bar on a TTY (steps, loss, tokens/s, ETA), validation losses and samples.
import type { TrainEvent } from "../train/loop.js";
import { Progress } from "../util/progress.js";

export class RunProgress {
  private bar: Progress | undefined;

  /** `out` prints a line (nothing with --json); the bar is drawn only on a TTY without --json. */
  constructor(
    private readonly name: string,
    private readonly out: (line: string) => void,
    private readonly json: boolean,
  ) {}

  onEvent(e: TrainEvent): void {
    switch (e.type) {
      case "start":
        this.out(`training: steps ${e.fromStep + 1} to ${e.steps} on ${e.threads} threads`);
        if (!this.json && process.stderr.isTTY) {
          this.bar = new Progress(this.name, e.steps, "steps | loss {loss} | {tokps} tok/s");
          this.bar.tick(e.fromStep, { loss: "-", tokps: "-" });
        }
        break;
      case "step":
        this.bar?.tick(1, {
          loss: e.metrics.loss.toFixed(3),
          tokps: Math.round(e.tokensPerSecond).toString(),
        });
        break;
      case "eval":
        this.out(`step ${e.step}: validation loss ${e.valLoss.toFixed(4)}`);
        break;
      case "sample":
        this.out(`step ${e.step} sample: ${JSON.stringify(e.text)}`);
        break;
      case "checkpoint":
        break;
    }
  }

  done(): void {
    this.bar?.done();
  }
}
