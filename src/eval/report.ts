// Run reports: one self-contained HTML page from one or more training run directories (what
// pretrain and finetune write: metrics.jsonl, samples.jsonl, config.json). Losses against steps
// and tokens, learning rate, gradient norm and tokens/s are drawn by uPlot, whose browser bundle
// is inlined with the data, so the page works offline from a file:// URL; runs given together are
// overlaid. A run directory is untrusted input: every file is read in bounded chunks with caps on
// bytes, line lengths, points and samples (the page says when one applied), every text is escaped,
// and a Content-Security-Policy lets only the page's own two scripts run.
import { createHash } from "node:crypto";
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { UserError } from "../errors.js";
import { CHECKPOINT, METRICS, SAMPLES, type TrainEvent, writeAtomic } from "../train/loop.js";
import { checkOutputs } from "../util/output-path.js";
import { formatDuration } from "../util/progress.js";
import { PAGE_CSS, PAGE_SCRIPT, RUN_COLORS } from "./report-page.js";

/** The report a run directory holds (pretrain and finetune keep it up to date). */
export const REPORT_FILE = "report.html";
const CONFIG = "config.json";
/** Marks a page as a report this module wrote, so a later report may replace it. */
const GENERATOR = "smallhammer report";
/** Seconds between reloads of a page written while its run goes on. */
export const REFRESH_SECONDS = 15;
/** Runs one report overlays at most (each needs its colour and its share of the page). */
export const MAX_RUNS = RUN_COLORS.length;

/** Bounds on what is read from a run directory and put on the page. */
export interface ReportLimits {
  /** Bytes of metrics.jsonl read, from its start. */
  metricsBytes: number;
  /** Longest line of metrics.jsonl read; longer ones are skipped. */
  lineBytes: number;
  /** Points per series on a chart; more steps are thinned to every 2nd, 4th... step. */
  points: number;
  /** Bytes of samples.jsonl read, from its end (the newest samples). */
  samplesBytes: number;
  /** Longest line of samples.jsonl read (a sample's text is then cut to `sampleChars`). */
  sampleLineBytes: number;
  /** Samples shown per run, the newest. */
  samples: number;
  /** Characters of a sample's prompt or text shown. */
  sampleChars: number;
  /** Bytes of config.json read; a larger one is not shown. */
  configBytes: number;
  /** Rows of the configuration table. */
  configRows: number;
}

export const DEFAULT_REPORT_LIMITS: ReportLimits = {
  metricsBytes: 128 * 1024 * 1024,
  lineBytes: 64 * 1024,
  points: 2000,
  samplesBytes: 8 * 1024 * 1024,
  sampleLineBytes: 1024 * 1024,
  samples: 50,
  sampleChars: 2000,
  configBytes: 1024 * 1024,
  configRows: 300,
};

/** One step's line of metrics.jsonl, as charted. */
export interface MetricsPoint {
  step: number;
  tokens?: number;
  loss?: number;
  valLoss?: number;
  lr?: number;
  gradNorm?: number;
  tokensPerSecond?: number;
}

export interface RunSample {
  step: number;
  prompt?: string;
  text: string;
}

/** What a report shows of one run, read from its directory. */
export interface RunReportData {
  /** The run's name on the page: its directory as given. */
  name: string;
  dir: string;
  kind: "pretrain" | "finetune" | "unknown";
  /** The run's planned steps (from config.json). */
  steps?: number;
  /** The last step in metrics.jsonl (0 before the first). */
  step: number;
  finished: boolean;
  /** Training points (thinned to at most `points`), the last step always included. */
  train: MetricsPoint[];
  /** Steps with a validation loss (thinned likewise). */
  validation: MetricsPoint[];
  last?: MetricsPoint;
  bestValLoss?: number;
  /** Milliseconds of the steps, summed. */
  stepMs: number;
  /** config.json flattened to dotted keys, or undefined when it could not be shown. */
  config?: [string, string][];
  /** The newest samples, oldest first. */
  samples: RunSample[];
  /** What could not be read or was left out, in words. */
  notes: string[];
}

/** A JSONL line of metrics.jsonl or samples.jsonl as an object, or undefined when it is not one. */
function stepRecord(text: string): Record<string, unknown> | undefined {
  try {
    const o: unknown = JSON.parse(text);
    return typeof o === "object" && o !== null && !Array.isArray(o)
      ? (o as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

const finite = (v: unknown): number | undefined =>
  typeof v === "number" && Number.isFinite(v) ? v : undefined;

/** Keeps at most about `max` items of a stream, evenly: every item, then every 2nd, 4th... */
class Thinned<T> {
  private items: { i: number; v: T }[] = [];
  private last: { i: number; v: T } | undefined;
  stride = 1;
  count = 0;

  constructor(private readonly max: number) {}

  push(v: T): void {
    const i = this.count++;
    this.last = { i, v };
    if (i % this.stride !== 0) return;
    this.items.push({ i, v });
    if (this.items.length > this.max) {
      this.stride *= 2;
      this.items = this.items.filter((p) => p.i % this.stride === 0);
    }
  }

  /** The kept items and the newest one. */
  values(): T[] {
    const out = this.items.map((p) => p.v);
    if (this.last && this.items.at(-1)?.i !== this.last.i) out.push(this.last.v);
    return out;
  }
}

/**
 * Splits bytes read in chunks into lines without ever holding more than `maxLine` bytes of one:
 * a longer line is counted and skipped. The text after the last newline waits for more bytes.
 */
class LineSplitter {
  private parts: Buffer[] = [];
  private partBytes = 0;
  private overlong = false;
  tooLong = 0;

  constructor(
    private readonly maxLine: number,
    private readonly onLine: (line: string) => void,
  ) {}

  feed(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(10, start);
      const end = nl < 0 ? chunk.length : nl;
      this.take(chunk.subarray(start, end));
      if (nl < 0) return;
      if (this.overlong) this.tooLong++;
      else this.onLine(Buffer.concat(this.parts, this.partBytes).toString("utf8"));
      this.parts = [];
      this.partBytes = 0;
      this.overlong = false;
      start = nl + 1;
    }
  }

  private take(piece: Buffer): void {
    if (piece.length === 0 || this.overlong) return;
    if (this.partBytes + piece.length > this.maxLine) {
      this.overlong = true;
      this.parts = [];
      this.partBytes = 0;
      return;
    }
    this.parts.push(Buffer.from(piece));
    this.partBytes += piece.length;
  }

  /** The text after the last newline ("" when none), and whether it was too long to keep. */
  tail(): { text: string; overlong: boolean } {
    return { text: Buffer.concat(this.parts, this.partBytes).toString("utf8"), overlong: this.overlong };
  }

  /** Drops the text after the last newline (it was taken as a line). */
  clearTail(): void {
    this.parts = [];
    this.partBytes = 0;
    this.overlong = false;
  }
}

const CHUNK = 1024 * 1024;

/** Reads `path` from `offset` up to `end` in chunks; returns the offset reached. */
function readChunks(path: string, offset: number, end: number, onChunk: (b: Buffer) => void): number {
  const fd = openSync(path, "r");
  try {
    const buffer = Buffer.allocUnsafe(CHUNK);
    while (offset < end) {
      const n = readSync(fd, buffer, 0, Math.min(CHUNK, end - offset), offset);
      if (n === 0) break;
      onChunk(buffer.subarray(0, n));
      offset += n;
    }
    return offset;
  } finally {
    closeSync(fd);
  }
}

function fileSize(path: string): number | undefined {
  try {
    const fd = openSync(path, "r");
    try {
      return fstatSync(fd).size;
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined;
  }
}

/** 2nd, 3rd, 4th, 11th, 32nd. */
function ordinal(n: number): string {
  const tens = n % 100;
  const suffix =
    tens >= 11 && tens <= 13 ? "th" : n % 10 === 1 ? "st" : n % 10 === 2 ? "nd" : n % 10 === 3 ? "rd" : "th";
  return `${n}${suffix}`;
}

const mib = (bytes: number) => `${+(bytes / 1048576).toPrecision(3)} MiB`;
const count = (n: number, one: string, many = `${one}s`) =>
  `${n.toLocaleString("en-US")} ${n === 1 ? one : many}`;

/** metrics.jsonl, read incrementally: each call reads only what was appended since the last. */
class MetricsReader {
  private offset = 0;
  private splitter: LineSplitter;
  private train: Thinned<MetricsPoint>;
  private validation: Thinned<MetricsPoint>;
  private invalid = 0;
  private capped = false;
  tornTail = false;
  last: MetricsPoint | undefined;
  bestValLoss: number | undefined;
  stepMs = 0;

  constructor(
    private readonly path: string,
    private readonly limits: ReportLimits,
  ) {
    this.splitter = new LineSplitter(limits.lineBytes, (line) => this.line(line));
    this.train = new Thinned(limits.points);
    this.validation = new Thinned(limits.points);
  }

  private line(text: string): void {
    if (text.trim() === "") return;
    const r = stepRecord(text);
    const step = finite(r?.step);
    if (r === undefined || step === undefined || step < 0) {
      this.invalid++;
      return;
    }
    const p: MetricsPoint = {
      step,
      tokens: finite(r.tokens),
      loss: finite(r.loss),
      valLoss: finite(r.val_loss ?? r.valLoss),
      lr: finite(r.lr),
      gradNorm: finite(r.grad_norm ?? r.gradNorm),
      tokensPerSecond: finite(r.tokens_per_s ?? r.tokensPerSecond),
    };
    this.stepMs += finite(r.ms) ?? 0;
    this.last = p;
    this.train.push(p);
    if (p.valLoss !== undefined) {
      this.validation.push(p);
      if (this.bestValLoss === undefined || p.valLoss < this.bestValLoss) this.bestValLoss = p.valLoss;
    }
  }

  /** Reads what was appended since the last call; false when the file shrank (it was rewritten). */
  read(): boolean {
    const size = fileSize(this.path);
    if (size === undefined) return true;
    if (size < this.offset) return false;
    const end = Math.min(size, this.limits.metricsBytes);
    this.capped = size > this.limits.metricsBytes;
    this.offset = readChunks(this.path, this.offset, end, (b) => this.splitter.feed(b));
    // A last line without its newline: whole (a file written by hand) or cut by a kill.
    const tail = this.splitter.tail();
    this.tornTail = false;
    if (!this.capped && (tail.overlong || tail.text.trim() !== "")) {
      let whole = false;
      if (!tail.overlong) {
        try {
          JSON.parse(tail.text);
          whole = true;
        } catch {
          // cut off: skipped below
        }
      }
      if (whole) {
        this.line(tail.text);
        this.splitter.clearTail();
      } else this.tornTail = true;
    }
    return true;
  }

  points(): { train: MetricsPoint[]; validation: MetricsPoint[] } {
    return { train: this.train.values(), validation: this.validation.values() };
  }

  notes(): string[] {
    const notes: string[] = [];
    if (this.capped) {
      notes.push(
        `metrics.jsonl: only its first ${mib(this.limits.metricsBytes)} were read; the charts end at step ${this.last?.step ?? 0}`,
      );
    }
    if (this.tornTail)
      notes.push("metrics.jsonl: its last line is incomplete (cut off while written) and was skipped");
    if (this.invalid > 0)
      notes.push(
        `metrics.jsonl: skipped ${count(this.invalid, "line")} with no step (not JSON, or not a step's metrics)`,
      );
    if (this.splitter.tooLong > 0) {
      notes.push(
        `metrics.jsonl: skipped ${count(this.splitter.tooLong, "line")} over ${this.limits.lineBytes / 1024} KiB`,
      );
    }
    if (this.train.stride > 1) {
      notes.push(
        `the charts show every ${ordinal(this.train.stride)} of ${count(this.train.count, "step")} (and the last one)`,
      );
    }
    return notes;
  }
}

function clip(s: string, max: number): string {
  if (s.length <= max) return s;
  let end = max;
  const code = s.charCodeAt(end - 1);
  if (code >= 0xd800 && code <= 0xdbff) end--; // never split a surrogate pair
  return `${s.slice(0, end)}… (${(s.length - end).toLocaleString("en-US")} more characters)`;
}

/** samples.jsonl, read incrementally from within its last `samplesBytes`; the newest `samples` are kept. */
class SamplesReader {
  private offset = -1;
  /** Bytes up to the next line start are skipped (a read that began inside a line). */
  private skipping = false;
  private skippedStart = false;
  private readonly splitter: LineSplitter;
  private readonly kept: RunSample[] = [];
  private invalid = 0;

  constructor(
    private readonly path: string,
    private readonly limits: ReportLimits,
  ) {
    this.splitter = new LineSplitter(limits.sampleLineBytes, (line) => this.line(line));
  }

  private line(text: string): void {
    if (text.trim() === "") return;
    const r = stepRecord(text);
    const step = finite(r?.step);
    if (r === undefined || step === undefined || typeof r.text !== "string") {
      this.invalid++;
      return;
    }
    const sample: RunSample = { step, text: clip(r.text, this.limits.sampleChars) };
    if (typeof r.prompt === "string") sample.prompt = clip(r.prompt, this.limits.sampleChars);
    this.kept.push(sample);
    if (this.kept.length > this.limits.samples) this.kept.shift();
  }

  /** Reads what was appended since the last call; false when the file shrank (it was rewritten). */
  read(): boolean {
    const size = fileSize(this.path);
    if (size === undefined) return true;
    if (size < this.offset) return false;
    if (this.offset < 0) {
      this.offset = Math.max(0, size - this.limits.samplesBytes);
      this.skipping = this.skippedStart = this.offset > 0;
    }
    this.offset = readChunks(this.path, this.offset, size, (b) => {
      if (this.skipping) {
        const nl = b.indexOf(10);
        if (nl < 0) return;
        this.skipping = false;
        b = b.subarray(nl + 1);
      }
      this.splitter.feed(b);
    });
    return true;
  }

  samples(): RunSample[] {
    return [...this.kept];
  }

  notes(): string[] {
    const notes: string[] = [];
    if (this.skippedStart)
      notes.push(`samples.jsonl: only its last ${mib(this.limits.samplesBytes)} were read`);
    if (this.invalid > 0)
      notes.push(
        `samples.jsonl: skipped ${count(this.invalid, "line")} that ${this.invalid === 1 ? "is not a sample" : "are not samples"}`,
      );
    if (this.splitter.tooLong > 0) {
      notes.push(
        `samples.jsonl: skipped ${count(this.splitter.tooLong, "line")} over ${mib(this.limits.sampleLineBytes)}`,
      );
    }
    return notes;
  }
}

/** config.json flattened to [dotted key, value] rows. */
function flattenConfig(value: unknown, limits: ReportLimits): { rows: [string, string][]; cut: boolean } {
  const rows: [string, string][] = [];
  let cut = false;
  const visit = (v: unknown, key: string, depth: number) => {
    if (rows.length >= limits.configRows) {
      cut = true;
      return;
    }
    if (v !== null && typeof v === "object" && !Array.isArray(v) && depth < 6) {
      const entries = Object.entries(v as Record<string, unknown>);
      if (entries.length === 0) rows.push([key, "{}"]);
      for (const [k, child] of entries) visit(child, key === "" ? k : `${key}.${k}`, depth + 1);
      return;
    }
    rows.push([clip(key, 200), clip(typeof v === "string" ? v : (JSON.stringify(v) ?? String(v)), 300)]);
  };
  visit(value, "", 0);
  return { rows, cut };
}

/** One run directory, read (again) on each `read()`: the files' new lines only. */
export class RunReader {
  private metrics: MetricsReader;
  private samples: SamplesReader;

  constructor(
    readonly dir: string,
    readonly name: string = dir,
    private readonly limits: ReportLimits = DEFAULT_REPORT_LIMITS,
  ) {
    this.metrics = new MetricsReader(join(dir, METRICS), limits);
    this.samples = new SamplesReader(join(dir, SAMPLES), limits);
  }

  read(): RunReportData {
    // A file that shrank was rewritten (a resumed run drops the lines of the steps it redoes).
    if (!this.metrics.read()) {
      this.metrics = new MetricsReader(join(this.dir, METRICS), this.limits);
      this.metrics.read();
    }
    if (!this.samples.read()) {
      this.samples = new SamplesReader(join(this.dir, SAMPLES), this.limits);
      this.samples.read();
    }
    const notes: string[] = [];
    let config: [string, string][] | undefined;
    let parsed: Record<string, unknown> | undefined;
    const configPath = join(this.dir, CONFIG);
    const size = fileSize(configPath);
    if (size === undefined) notes.push("config.json: missing");
    else if (size > this.limits.configBytes)
      notes.push(`config.json: over ${mib(this.limits.configBytes)}; not shown`);
    else {
      try {
        const value: unknown = JSON.parse(readFileSync(configPath, "utf8"));
        if (value !== null && typeof value === "object" && !Array.isArray(value))
          parsed = value as Record<string, unknown>;
        const flat = flattenConfig(value, this.limits);
        config = flat.rows;
        if (flat.cut) notes.push(`config.json: only its first ${this.limits.configRows} settings are shown`);
      } catch {
        notes.push("config.json: not valid JSON; not shown");
      }
    }
    const settings = parsed?.settings as Record<string, unknown> | undefined;
    const kind: RunReportData["kind"] =
      parsed?.kind === "finetune" ? "finetune" : settings && "shape" in settings ? "pretrain" : "unknown";
    const steps = finite(kind === "finetune" ? parsed?.steps : settings?.steps);
    const { train, validation } = this.metrics.points();
    const last = this.metrics.last;
    const step = last?.step ?? 0;
    return {
      name: this.name,
      dir: this.dir,
      kind,
      steps,
      step,
      finished: steps !== undefined && step >= steps,
      train,
      validation,
      last,
      bestValLoss: this.metrics.bestValLoss,
      stepMs: this.metrics.stepMs,
      config,
      samples: this.samples.samples(),
      notes: [...notes, ...this.metrics.notes(), ...this.samples.notes()],
    };
  }
}

// ---------------------------------------------------------------------------------------------
// The page

const HTML_ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
};

/** Text as HTML text or attribute value: nothing in it can become markup. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]!);
}

/** JSON that can sit in a <script> element: no `<` (so no `</script>` or `<!--`), no line separators. */
function scriptJson(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, "\\u003c")
    .replace(/\u2028/g, "\\u2028")
    .replace(/\u2029/g, "\\u2029");
}

const sha256 = (s: string) => `'sha256-${createHash("sha256").update(s, "utf8").digest("base64")}'`;

let uplotAssets: { js: string; css: string; license: string } | undefined;

/** uPlot's browser bundle, stylesheet and licence, from the installed package (read once). */
function readUplot(): { js: string; css: string; license: string } {
  if (!uplotAssets) {
    const require = createRequire(import.meta.url);
    const read = (file: string) => readFileSync(require.resolve(`uplot/${file}`), "utf8");
    uplotAssets = {
      // Inlined in a <script> element, which the first "</script" in it would end.
      js: read("dist/uPlot.iife.min.js").replace(/<\/(script)/gi, "<\\/$1"),
      css: read("dist/uPlot.min.css"),
      license: read("LICENSE"),
    };
  }
  return uplotAssets;
}

interface ChartSeries {
  label: string;
  color: string;
  faint: boolean;
  dashed: boolean;
  points: boolean;
  y: (number | null)[];
}

interface ChartData {
  id: string;
  title: string;
  xLabel: string;
  yLabel: string;
  x: number[];
  series: ChartSeries[];
}

const round = (v: number) => Number(v.toPrecision(6));

/** Series over one x axis: the union of their x values, each series null where it has none. */
function alignedChart(
  meta: Omit<ChartData, "x" | "series">,
  series: {
    label: string;
    color: string;
    faint?: boolean;
    dashed?: boolean;
    points?: boolean;
    xy: [number, number][];
  }[],
): ChartData {
  const kept = series.filter((s) => s.xy.length > 0);
  const xs = new Set<number>();
  for (const s of kept) for (const [x] of s.xy) xs.add(x);
  const x = [...xs].sort((a, b) => a - b);
  const index = new Map(x.map((v, i) => [v, i]));
  return {
    ...meta,
    x,
    series: kept.map((s) => {
      const y: (number | null)[] = new Array(x.length).fill(null);
      for (const [xv, yv] of s.xy) y[index.get(xv)!] = round(yv);
      return {
        label: s.label,
        color: s.color,
        faint: s.faint ?? false,
        dashed: s.dashed ?? false,
        points: s.points ?? false,
        y,
      };
    }),
  };
}

function chartsOf(runs: RunReportData[]): ChartData[] {
  const several = runs.length > 1;
  const label = (run: RunReportData, what: string) => (several ? `${run.name} ${what}` : what);
  const pick = (
    points: MetricsPoint[],
    x: (p: MetricsPoint) => number | undefined,
    y: (p: MetricsPoint) => number | undefined,
  ) => {
    const xy: [number, number][] = [];
    for (const p of points) {
      const xv = x(p);
      const yv = y(p);
      if (xv !== undefined && yv !== undefined) xy.push([xv, yv]);
    }
    return xy;
  };
  const lossSeries = (x: (p: MetricsPoint) => number | undefined) =>
    runs.flatMap((run, i) => [
      // Each step's loss is noisy: drawn faint, under the validation losses.
      {
        label: label(run, "train"),
        color: RUN_COLORS[i]!,
        faint: true,
        xy: pick(run.train, x, (p) => p.loss),
      },
      {
        label: label(run, "validation"),
        color: RUN_COLORS[i]!,
        dashed: true,
        points: true,
        xy: pick(run.validation, x, (p) => p.valLoss),
      },
    ]);
  const perRun = (y: (p: MetricsPoint) => number | undefined) =>
    runs.map((run, i) => ({
      label: several ? run.name : "train",
      color: RUN_COLORS[i]!,
      xy: pick(run.train, (p) => p.step, y),
    }));
  return [
    alignedChart(
      { id: "chart-loss-step", title: "Loss by step", xLabel: "step", yLabel: "loss" },
      lossSeries((p) => p.step),
    ),
    alignedChart(
      { id: "chart-loss-tokens", title: "Loss by tokens seen", xLabel: "tokens", yLabel: "loss" },
      lossSeries((p) => p.tokens),
    ),
    alignedChart(
      { id: "chart-lr", title: "Learning rate", xLabel: "step", yLabel: "learning rate" },
      perRun((p) => p.lr),
    ),
    alignedChart(
      { id: "chart-grad-norm", title: "Gradient norm (before clipping)", xLabel: "step", yLabel: "norm" },
      perRun((p) => p.gradNorm),
    ),
    alignedChart(
      {
        id: "chart-tokens-per-s",
        title: "Tokens per second (mean since the process started)",
        xLabel: "step",
        yLabel: "tokens/s",
      },
      perRun((p) => p.tokensPerSecond),
    ),
  ];
}

const fixed = (v: number | undefined, digits = 4) => (v === undefined ? "–" : v.toFixed(digits));
const integer = (v: number | undefined) => (v === undefined ? "–" : Math.round(v).toLocaleString("en-US"));

/** Seconds with a tenth under a minute (short runs), else as the progress bar writes them. */
function stepTime(ms: number): string {
  if (!(ms > 0)) return "–";
  return ms < 60_000 ? `${(ms / 1000).toFixed(1)}s` : formatDuration(ms / 1000);
}

function localTime(d: Date): string {
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function statusOf(run: RunReportData, live: boolean): string {
  const of = run.steps !== undefined ? ` of ${run.steps.toLocaleString("en-US")}` : "";
  if (run.finished) return `finished: ${run.step.toLocaleString("en-US")}${of} steps`;
  if (run.step === 0) return live ? "starting" : "no steps yet";
  return `step ${run.step.toLocaleString("en-US")}${of}${live ? ", in progress" : ", not finished"}`;
}

function runsTable(runs: RunReportData[], live: boolean): string {
  const rows = runs.map((run, i) => {
    const swatch = `<span class="swatch run-${i}"></span>`;
    return `<tr><th>${swatch}${escapeHtml(run.name)}</th><td class="nowrap">${run.kind === "unknown" ? "–" : run.kind}</td><td>${escapeHtml(statusOf(run, live))}</td><td class="num">${fixed(run.last?.loss)}</td><td class="num">${fixed(run.validation.at(-1)?.valLoss)}</td><td class="num">${fixed(run.bestValLoss)}</td><td class="num">${integer(run.last?.tokens)}</td><td class="num">${integer(run.last?.tokensPerSecond)}</td><td class="num">${stepTime(run.stepMs)}</td></tr>`;
  });
  return `<div class="scroll"><table class="runs"><thead><tr><th>run</th><th>kind</th><th>progress</th><th>loss</th><th>validation loss</th><th>best validation</th><th>tokens</th><th>tokens/s</th><th>time in steps</th></tr></thead><tbody>${rows.join("")}</tbody></table></div>`;
}

function configTable(runs: RunReportData[]): string {
  const keys: string[] = [];
  const seen = new Set<string>();
  const maps = runs.map((r) => new Map(r.config ?? []));
  for (const r of runs) {
    for (const [k] of r.config ?? []) {
      if (!seen.has(k)) {
        seen.add(k);
        keys.push(k);
      }
    }
  }
  if (keys.length === 0) return `<p class="empty">No configuration to show.</p>`;
  const several = runs.length > 1;
  const head = several
    ? `<tr><th>setting</th>${runs.map((r) => `<th>${escapeHtml(r.name)}</th>`).join("")}</tr>`
    : `<tr><th>setting</th><th>value</th></tr>`;
  const body = keys.map((k) => {
    const values = maps.map((m) => m.get(k));
    const differs = several && new Set(values).size > 1;
    return `<tr${differs ? ' class="differs"' : ""}><th>${escapeHtml(k)}</th>${values.map((v) => `<td>${v === undefined ? "–" : escapeHtml(v)}</td>`).join("")}</tr>`;
  });
  const hint = several ? `<p class="sub">Rows that differ between the runs are marked.</p>` : "";
  return `${hint}<div class="scroll"><table class="config"><thead>${head}</thead><tbody>${body.join("")}</tbody></table></div>`;
}

function samplesSection(runs: RunReportData[]): string {
  const blocks = runs.map((run, i) => {
    const items = [...run.samples]
      .reverse()
      .map(
        (s) =>
          `<li><div class="step">step ${s.step.toLocaleString("en-US")}</div>${s.prompt !== undefined ? `<pre class="text prompt">${escapeHtml(s.prompt)}</pre>` : ""}<pre class="text reply">${escapeHtml(s.text)}</pre></li>`,
      );
    const swatch = `<span class="swatch run-${i}"></span>`;
    const body =
      items.length > 0
        ? `<ol class="samples">${items.join("")}</ol>`
        : `<p class="empty">No samples (pretrain and finetune write them with --sample-every).</p>`;
    return `<details open><summary>${swatch}${escapeHtml(run.name)}: ${count(run.samples.length, "sample")}, newest first</summary>${body}</details>`;
  });
  return blocks.join("");
}

export interface RenderOptions {
  /** The page reloads itself (every REFRESH_SECONDS) while a run is not finished: its run writes it. */
  live?: boolean;
  /** When the page was made (default: now). */
  generatedAt?: Date;
  /** The folder the runs' names are in, when their names leave it out. */
  folder?: string;
}

/** The report page of `runs`: one HTML document with everything it needs inlined. */
export function renderRunReport(runs: RunReportData[], options: RenderOptions = {}): string {
  const uplot = readUplot();
  const live = (options.live ?? false) && runs.some((r) => !r.finished);
  const charts = chartsOf(runs);
  const names = runs.map((r) => r.name).join(", ");
  const css = `${uplot.css}\n${PAGE_CSS}`;
  const csp = [
    "default-src 'none'",
    `script-src ${sha256(uplot.js)} ${sha256(PAGE_SCRIPT)}`,
    `style-src ${sha256(css)}`,
    "img-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
  ].join("; ");
  const chartCards = charts
    .map((c) => {
      const inner =
        c.x.length > 0
          ? `<div class="chart" id="${c.id}"></div>`
          : `<div class="chart empty" id="${c.id}">No data yet.</div>`;
      return `<section class="card"><h3>${escapeHtml(c.title)}</h3>${inner}</section>`;
    })
    .join("");
  const drawn = charts.filter((c) => c.x.length > 0);
  const notes = runs.flatMap((r) => r.notes.map((n) => (runs.length > 1 ? `${r.name}: ${n}` : n)));
  const generatedAt = options.generatedAt ?? new Date();
  const liveBadge = live
    ? ` <span class="live">in progress: this page reloads every ${REFRESH_SECONDS} s</span>`
    : "";
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="generator" content="${GENERATOR}">
${live ? `<meta http-equiv="refresh" content="${REFRESH_SECONDS}">\n` : ""}<title>${escapeHtml(`${names} · smallhammer report`)}</title>
<style>${css}</style>
</head>
<body>
<main>
<h1>${escapeHtml(names)}</h1>
<p class="sub">${options.folder !== undefined ? `runs in ${escapeHtml(options.folder)} · ` : ""}smallhammer training report, written ${localTime(generatedAt)}${liveBadge}</p>
${runsTable(runs, live)}
${notes.length > 0 ? `<ul class="notes">${notes.map((n) => `<li>${escapeHtml(n)}</li>`).join("")}</ul>` : ""}
<h2>Charts</h2>
<div class="charts">${chartCards}</div>
<h2>Samples</h2>
${samplesSection(runs)}
<h2>Configuration</h2>
${configTable(runs)}
</main>
<script type="application/json" id="report-data">${scriptJson({ charts: drawn })}</script>
<!-- uPlot ${escapeHtml(uplot.license.replace(/-{2,}/g, "-"))} -->
<script>${uplot.js}</script>
<script>${PAGE_SCRIPT}</script>
</body>
</html>
`;
}

// ---------------------------------------------------------------------------------------------
// Writing

/** Refuses what is not a run directory, in one line naming it. */
export function checkRunDir(dir: string): void {
  let stats: ReturnType<typeof statSync>;
  try {
    stats = statSync(dir);
  } catch {
    throw new UserError(`${dir}: no such directory`);
  }
  if (!stats.isDirectory())
    throw new UserError(`${dir}: not a directory; give a run directory of pretrain or finetune`);
  if (!existsSync(join(dir, METRICS))) {
    throw new UserError(`${dir}: not a run directory (no ${METRICS}; pretrain and finetune write one)`);
  }
}

/** A run's name on the page: its directory as given, without a trailing slash. */
function runName(dir: string): string {
  const trimmed = dir.replace(/[/\\]+$/, "");
  return trimmed === "" ? dir : trimmed;
}

/**
 * The runs' names on the page: their directories as given, less the folders they all share
 * (`runs/lr-1e-3`, `runs/lr-3e-3` are `lr-1e-3`, `lr-3e-3` in `runs/`), so legends stay short.
 */
function runNames(dirs: string[]): { names: string[]; folder?: string } {
  const names = dirs.map(runName);
  if (names.length < 2) return { names };
  const parts = names.map((n) => n.split("/"));
  let shared = 0;
  const shortest = Math.min(...parts.map((p) => p.length));
  while (shared < shortest - 1 && parts.every((p) => p[shared] === parts[0]![shared])) shared++;
  if (shared === 0 || (shared === 1 && parts[0]![0] === "")) return { names };
  return {
    names: parts.map((p) => p.slice(shared).join("/")),
    folder: `${parts[0]!.slice(0, shared).join("/")}/`,
  };
}

/** Whether `path` holds a page this module wrote (so it may be replaced). */
function isReport(path: string): boolean {
  const fd = openSync(path, "r");
  try {
    const head = Buffer.alloc(2048);
    const n = readSync(fd, head, 0, head.length, 0);
    return head.subarray(0, n).toString("utf8").includes(`<meta name="generator" content="${GENERATOR}">`);
  } finally {
    closeSync(fd);
  }
}

/** The files of a run a report must never replace. */
const RUN_FILES = [METRICS, SAMPLES, CONFIG, CHECKPOINT, "adapter.gguf", "model.gguf"];

/**
 * Checks where a report goes: never over a run's own files, and over an existing file only when
 * that is a report already (or with `force`, when `force` is a choice at all).
 */
function checkReportOutput(
  runDirs: string[],
  out: string,
  flag: string | undefined,
  force: boolean | "not a choice",
): void {
  checkOutputs({
    inputs: runDirs.flatMap((d) => RUN_FILES.map((f) => ({ path: join(d, f), name: `the run's ${f}` }))),
    outputs: [{ path: out, flag, existing: "caller" }],
  });
  if (force !== true && existsSync(out) && statSync(out).isFile() && !isReport(out)) {
    const fix = force === false ? "add --force to replace it" : "move it away to have the report written";
    throw new UserError(`${flag ?? "the report"} ${out} exists and is not a report; ${fix}`);
  }
}

export interface WriteReportOptions extends RenderOptions {
  /** Replace an existing file that is not a report. */
  force?: boolean;
  limits?: ReportLimits;
  /** How messages name the output (the CLI's "--out"). */
  outFlag?: string;
}

export interface WrittenReport {
  path: string;
  runs: { run: string; kind: RunReportData["kind"]; step: number; steps?: number; finished: boolean }[];
}

function summaryOf(path: string, runs: RunReportData[]): WrittenReport {
  return {
    path,
    runs: runs.map((r) => ({ run: r.dir, kind: r.kind, step: r.step, steps: r.steps, finished: r.finished })),
  };
}

/**
 * Writes the report of `runDirs` to `outPath` (default: `<run>/report.html` for one run; several
 * runs need an `outPath`), through a temporary file and a rename.
 */
export async function writeRunReport(
  runDirs: string[],
  outPath?: string,
  options: WriteReportOptions = {},
): Promise<WrittenReport> {
  if (runDirs.length === 0) throw new UserError("give at least one run directory");
  if (runDirs.length > MAX_RUNS)
    throw new UserError(`at most ${MAX_RUNS} runs fit in one report, got ${runDirs.length}`);
  for (const d of runDirs) checkRunDir(d);
  const resolved = runDirs.map((d) => resolve(d));
  const twice = runDirs.find((_, i) => resolved.indexOf(resolved[i]!) !== i);
  if (twice !== undefined) throw new UserError(`${twice}: the same run is given twice`);
  const { names, folder } = runNames(runDirs);
  if (outPath === undefined && runDirs.length > 1) {
    throw new UserError(
      "a report of several runs needs --out FILE (one run's report goes to <run>/report.html)",
    );
  }
  const out = outPath ?? join(runDirs[0]!, REPORT_FILE);
  checkReportOutput(runDirs, out, options.outFlag, options.force ?? false);
  const runs = runDirs.map((d, i) => new RunReader(d, names[i], options.limits).read());
  writeAtomic(out, renderRunReport(runs, { ...options, folder: options.folder ?? folder }));
  return summaryOf(out, runs);
}

/**
 * The report a training run keeps in its directory: written at the first step, refreshed after
 * each evaluation and sample (at most every `minSeconds`, and at least every `maxSeconds` while
 * steps go on), and written a last time by `finish`. Each refresh reads only the lines appended
 * since the last one. A refresh that fails is skipped (the run goes on); `finish` throws.
 */
export class LiveRunReport {
  readonly path: string;
  private readonly reader: RunReader;
  private lastWrite = Number.NEGATIVE_INFINITY;
  private lastStep = -1;
  private evalPending = false;
  private checked = false;
  private readonly minMs: number;
  private readonly maxMs: number;

  constructor(
    readonly run: string,
    options: { minSeconds?: number; maxSeconds?: number; limits?: ReportLimits } = {},
  ) {
    this.path = join(run, REPORT_FILE);
    this.reader = new RunReader(run, runName(run), options.limits);
    this.minMs = (options.minSeconds ?? 5) * 1000;
    this.maxMs = (options.maxSeconds ?? 60) * 1000;
  }

  onEvent(e: TrainEvent | { type: string }): void {
    const now = performance.now();
    switch (e.type) {
      case "eval":
        // The step's metrics line (with the validation loss) is written before its "step" event.
        this.evalPending = true;
        break;
      case "step": {
        const step = (e as Extract<TrainEvent, { type: "step" }>).metrics.step;
        const first = this.lastStep < 0;
        if (
          first ||
          (this.evalPending && now - this.lastWrite >= this.minMs) ||
          now - this.lastWrite >= this.maxMs
        ) {
          this.tryWrite(step, now);
        }
        break;
      }
      case "sample": {
        // A sample follows its step's event: show it with the step just written, else when allowed.
        const step = (e as Extract<TrainEvent, { type: "sample" }>).step;
        if (step === this.lastStep || now - this.lastWrite >= this.minMs) this.tryWrite(step, now);
        break;
      }
    }
  }

  private tryWrite(step: number, now: number): void {
    try {
      this.write(true);
    } catch {
      // A report is a view of the run: failing to write it must not stop the training.
    }
    this.lastWrite = now;
    this.lastStep = step;
    this.evalPending = false;
  }

  private write(live: boolean): void {
    if (!this.checked) {
      checkReportOutput([this.run], this.path, undefined, "not a choice");
      this.checked = true;
    }
    writeAtomic(this.path, renderRunReport([this.reader.read()], { live }));
  }

  /** Writes the final report (no reloading) and returns its path. */
  finish(): string {
    this.write(false);
    return this.path;
  }
}
