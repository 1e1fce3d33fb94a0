import cliProgress from "cli-progress";

/**
 * A progress bar (count, rate, ETA) on a TTY's stderr; silent when stderr is not a terminal
 * or when `--json` output is requested.
 */
export class Progress {
  private readonly bar?: cliProgress.SingleBar;
  private value = 0;

  /** `detail`: the bar ends with a `{detail}` text that `tick` updates (counts, cost). */
  constructor(
    label: string,
    total: number,
    unit: string,
    enabled = process.stderr.isTTY === true,
    detail = false,
  ) {
    if (!enabled) return;
    this.bar = new cliProgress.SingleBar(
      {
        format: `${label} [{bar}] {value}/{total} ${unit} | {rate}/s | ETA {eta_formatted}${detail ? " | {detail}" : ""}`,
        stream: process.stderr,
        hideCursor: true,
        clearOnComplete: false,
      },
      cliProgress.Presets.shades_classic,
    );
    this.bar.start(total, 0, { rate: "0", detail: "" });
  }

  private readonly started = performance.now();

  tick(n = 1, payload: Record<string, unknown> = {}): void {
    this.value += n;
    if (!this.bar) return;
    const seconds = (performance.now() - this.started) / 1000;
    this.bar.update(this.value, { rate: seconds > 0 ? (this.value / seconds).toFixed(1) : "0", ...payload });
  }

  done(): void {
    this.bar?.stop();
  }
}
