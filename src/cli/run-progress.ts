// What pretrain and finetune show while their shared run loop works: the plan line, a progress
// bar on a TTY (steps, rate, ETA, loss with a sparkline of the recent losses, tokens/s), validation
// losses and samples, and the run's report page (<run>/report.html), kept up to date. Every line
// goes through `print`, which writes it above the bar while one is drawn.
import { LiveRunReport } from "../eval/report.js";
import type { TrainEvent } from "../train/loop.js";
import { Progress, sparkline } from "../util/progress.js";

/** Steps of loss the sparkline covers, and its width in characters (a bucket averages 5 steps). */
const SPARK_STEPS = 120;
const SPARK_WIDTH = 24;

export class RunProgress {
  private bar: Progress | undefined;
  private readonly losses: number[] = [];
  private report: LiveRunReport | undefined;
  /** Where the report was written when the run ended, or why it was not. */
  reportPath: string | undefined;
  reportError: string | undefined;

  /**
   * With `json`, nothing is printed and no bar is drawn; the bar is drawn only on a TTY. With a
   * `run` directory, its report page is written from the first step on, and by `done`.
   */
  constructor(
    private readonly name: string,
    private readonly json: boolean,
    private readonly run?: string,
  ) {}

  /** Prints a line on stdout (nothing with --json), above the bar while one is drawn. */
  readonly print = (line: string): void => {
    if (this.json) return;
    if (this.bar) this.bar.log(line);
    else process.stdout.write(`${line}\n`);
  };

  onEvent(e: TrainEvent): void {
    switch (e.type) {
      case "start":
        this.print(`training: steps ${e.fromStep + 1} to ${e.steps} on ${e.threads} threads`);
        if (!this.json && process.stderr.isTTY) {
          this.bar?.done();
          this.bar = new Progress(this.name, e.steps, "steps", { start: e.fromStep, detail: true });
        }
        if (this.run !== undefined) this.report ??= new LiveRunReport(this.run);
        break;
      case "step": {
        this.losses.push(e.metrics.loss);
        if (this.losses.length > SPARK_STEPS) this.losses.shift();
        this.bar?.tick(1, {
          detail: `loss ${e.metrics.loss.toFixed(3)} ${sparkline(this.losses, SPARK_WIDTH)} | ${Math.round(e.tokensPerSecond)} tok/s`,
        });
        break;
      }
      case "eval":
        this.print(`step ${e.step}: validation loss ${e.valLoss.toFixed(4)}`);
        break;
      case "sample":
        this.print(`step ${e.step} sample: ${JSON.stringify(e.text)}`);
        break;
      case "checkpoint":
        break;
    }
    this.report?.onEvent(e);
  }

  /** Ends the bar (its last state stays on screen) and writes the report; later lines print plainly. */
  done(): void {
    this.bar?.done();
    this.bar = undefined;
    if (this.report) {
      try {
        this.reportPath = this.report.finish();
      } catch (e) {
        this.reportError = `${this.report.path} not written: ${e instanceof Error ? e.message : String(e)}`;
      }
      this.report = undefined;
    }
  }

  /** The line that names the report ("report: run/report.html"), once `done` wrote it. */
  reportLine(): string | undefined {
    if (this.reportPath !== undefined) return `report: ${this.reportPath}`;
    if (this.reportError !== undefined) return `report: ${this.reportError}`;
    return undefined;
  }
}
