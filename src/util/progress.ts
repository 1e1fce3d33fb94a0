import { clearLine, cursorTo } from "node:readline";
import cliProgress from "cli-progress";

/** How a Progress bar starts. */
export interface ProgressOptions {
  /** Draw the bar (default: stderr is a terminal). */
  enabled?: boolean;
  /** End the line with a `detail` text that `tick` updates (counts, cost). */
  detail?: boolean;
  /** Count already done before this process began (a resumed run): shown, but left out of the rate and ETA. */
  start?: number;
}

/** `s` seconds as 42s, 3m07s or 2h05m. */
export function formatDuration(s: number): string {
  const whole = Math.max(0, Math.round(s));
  if (whole < 60) return `${whole}s`;
  if (whole < 3600) return `${Math.floor(whole / 60)}m${String(whole % 60).padStart(2, "0")}s`;
  return `${Math.floor(whole / 3600)}h${String(Math.floor((whole % 3600) / 60)).padStart(2, "0")}m`;
}

const SPARKS = "▁▂▃▄▅▆▇█";

/**
 * The last values of a series as a line of block characters, at most `width` wide: with more values
 * than that, consecutive ones are averaged in buckets, the newest bucket ending at the last value.
 * Scaled from the lowest to the highest bucket (all alike draw mid-height); non-finite values are
 * left out. Empty when there is nothing to draw.
 */
export function sparkline(values: readonly number[], width = 24): string {
  const finite = values.filter((v) => Number.isFinite(v));
  if (finite.length === 0 || width < 1) return "";
  const size = Math.ceil(finite.length / width);
  const buckets: number[] = [];
  for (let end = finite.length; end > 0; end -= size) {
    const part = finite.slice(Math.max(0, end - size), end);
    buckets.unshift(part.reduce((a, b) => a + b, 0) / part.length);
  }
  const lo = Math.min(...buckets);
  const hi = Math.max(...buckets);
  if (!(hi - lo > Math.abs(hi) * 1e-9)) return SPARKS[3]!.repeat(buckets.length);
  return buckets
    .map((v) => SPARKS[Math.min(SPARKS.length - 1, Math.floor(((v - lo) / (hi - lo)) * SPARKS.length))]!)
    .join("");
}

/** A rate with two or three significant digits: 1234, 12.3, 0.42. */
function formatRate(r: number): string {
  if (r >= 100) return r.toFixed(0);
  if (r >= 1) return r.toFixed(1);
  return r.toPrecision(2);
}

/**
 * A progress bar (count, rate, ETA) on a TTY's stderr; silent when stderr is not a terminal
 * or when `--json` output is requested. The unit may hold `{name}` fields that `tick`'s payload
 * fills; a field not given yet shows as "-". The ETA is left out until it can be estimated.
 * Lines printed while the bar is drawn go through `log`, which writes them above the bar.
 */
export class Progress {
  private readonly multi?: cliProgress.MultiBar;
  private readonly bar?: cliProgress.SingleBar;
  private start: number;
  private readonly started = performance.now();
  private readonly fields = new Map<string, string>();
  private value: number;
  private detailText = "";
  private finished = false;
  private readonly restoreTerminal = () => {
    // An exit while the bar is drawn (a second Ctrl-C) gives the terminal its cursor back.
    process.stderr.write("\x1b[?25h");
  };

  /** `options`: whether to draw (the default: stderr is a terminal), or a ProgressOptions. */
  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly unit: string,
    options: boolean | ProgressOptions = {},
    detail = false,
  ) {
    const o: ProgressOptions = typeof options === "boolean" ? { enabled: options, detail } : options;
    this.start = o.start ?? 0;
    this.value = this.start;
    if (!(o.enabled ?? process.stderr.isTTY === true)) return;
    const withDetail = o.detail ?? detail;
    this.multi = new cliProgress.MultiBar(
      {
        // The whole line is made here, so no field can be drawn unfilled.
        format: (barOptions, params) =>
          this.line(cliProgress.Format.BarFormat(params.progress, barOptions), withDetail, params.maxWidth),
        stream: process.stderr,
        hideCursor: true,
        // Wrapping stays on (so lines printed above the bar wrap); the line is cut to the width instead.
        linewrap: true,
        barsize: 24,
        clearOnComplete: false,
      },
      cliProgress.Presets.shades_classic,
    );
    this.bar = this.multi.create(total, this.start);
    (this.bar as cliProgress.GenericBar).render(true);
    process.once("exit", this.restoreTerminal);
  }

  private line(bar: string, withDetail: boolean, width: number): string {
    const unit = this.unit.replace(/\{(\w+)\}/g, (_, name: string) => this.fields.get(name) ?? "-");
    const seconds = (performance.now() - this.started) / 1000;
    const rate = seconds > 0 ? (this.value - this.start) / seconds : 0;
    let s = `${this.label} [${bar}] ${this.value}/${this.total} ${unit} | ${formatRate(rate)}/s`;
    const eta = (this.total - this.value) / rate;
    if (this.value > this.start && Number.isFinite(eta)) s += ` | ETA ${formatDuration(eta)}`;
    if (withDetail && this.detailText !== "") s += ` | ${this.detailText}`;
    // One column short of the width: a line that fills it would wrap before the next redraw.
    return width > 1 ? s.slice(0, width - 1) : s;
  }

  /**
   * Sets the count done before this process began (a resumed run), before the first tick: shown,
   * but left out of the rate and ETA.
   */
  startAt(n: number): void {
    if (this.value !== this.start) return;
    this.start = n;
    this.value = n;
    this.bar?.update(n);
  }

  /** Adds `n` to the count; `payload` sets the unit's fields and `detail`. */
  tick(n = 1, payload: Record<string, unknown> = {}): void {
    this.value += n;
    for (const [k, v] of Object.entries(payload)) {
      if (k === "detail") this.detailText = String(v);
      else this.fields.set(k, String(v));
    }
    this.bar?.update(this.value);
  }

  /**
   * Writes `line` to `stream` (stdout by default) above the bar: the bar's line is cleared, the
   * line written, and the bar drawn again below it. Without a bar, or when `stream` is not a
   * terminal (the bar is not on the same screen), the line is just written.
   */
  log(line: string, stream: NodeJS.WriteStream = process.stdout): void {
    if (!this.bar || this.finished || !stream.isTTY) {
      stream.write(`${line}\n`);
      return;
    }
    cursorTo(process.stderr, 0);
    clearLine(process.stderr, 0);
    stream.write(`${line}\n`);
    (this.bar as cliProgress.GenericBar).render(true);
  }

  done(): void {
    if (!this.multi || this.finished) return;
    this.finished = true;
    // A last drawing with the final count, then the cursor moves below the bar.
    (this.bar as cliProgress.GenericBar).render(true);
    this.multi.stop();
    process.off("exit", this.restoreTerminal);
  }
}
