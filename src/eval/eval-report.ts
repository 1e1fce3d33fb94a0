// Evaluation reports: one self-contained HTML page from the result files of the eval commands
// (see results.ts) — a table of every result, then charts by kind: multiple-choice accuracy by
// benchmark and by category, exact match by task family, judge scores by category and their
// distribution, win / tie / loss against a baseline, and each model against the first. Models keep
// one colour across the page. Charts are tables with small inline SVG bars made here, so the page
// has no script at all; its Content-Security-Policy allows only its own stylesheet, and every text
// from a result file is escaped.
import { createHash } from "node:crypto";
import { closeSync, existsSync, openSync, readSync, statSync } from "node:fs";
import { UserError } from "../errors.js";
import { writeAtomic } from "../train/loop.js";
import { checkOutputs } from "../util/output-path.js";
import { EVAL_PAGE_CSS, OUTCOME_COLORS } from "./eval-report-page.js";
import { escapeHtml } from "./report.js";
import { RUN_COLORS } from "./report-page.js";
import type { EvalResult, JudgePairwiseResult, JudgeSingleResult, McResult, TasksResult } from "./results.js";

/** Marks a page as an evaluation report, so a later report may replace it. */
const GENERATOR = "smallhammer eval report";
/** Models one report compares at most (each needs its own colour). */
export const MAX_MODELS = RUN_COLORS.length;
/** Result files one report reads at most. */
export const MAX_RESULTS = 200;

/** A result and the file it came from (shown in the table). */
export interface SourcedResult {
  result: EvalResult;
  source?: string;
}

// ---------------------------------------------------------------------------------------------
// Bars

/** Width of a bar's SVG coordinate space; the SVG stretches to the column. */
const W = 1000;
const round1 = (v: number) => Math.round(v * 10) / 10;
const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
const signedPts = (v: number) => `${v > 0 ? "+" : v < 0 ? "−" : "±"}${Math.abs(100 * v).toFixed(1)} pts`;

/** One model's bar: `value` of `max` as a filled part of a track, with its text beside it. */
function barLine(name: string, color: string, value: number | null, max: number, text: string): string {
  const width = value === null ? 0 : round1((Math.max(0, Math.min(value, max)) / max) * W);
  return `<div class="bar-line"><span class="vh">${escapeHtml(name)}: </span><svg class="bar" viewBox="0 0 ${W} 12" preserveAspectRatio="none" aria-hidden="true" focusable="false"><rect class="track" width="${W}" height="12"/><rect class="fill" width="${width}" height="12" fill="${color}" data-value="${value ?? ""}"/></svg><span class="bar-value${value === null ? " none" : ""}">${escapeHtml(text)}</span></div>`;
}

/** A difference around a middle line: left of it below zero, right above; `max` is either end. */
function divergingLine(name: string, color: string, value: number, max: number, text: string): string {
  const half = W / 2;
  const length = round1((Math.min(Math.abs(value), max) / max) * half);
  const x = value < 0 ? half - length : half;
  return `<div class="bar-line"><span class="vh">${escapeHtml(name)}: </span><svg class="bar" viewBox="0 0 ${W} 12" preserveAspectRatio="none" aria-hidden="true" focusable="false"><rect class="track" width="${W}" height="12"/><rect class="fill" x="${round1(x)}" width="${length}" height="12" fill="${color}" data-value="${value}"/><rect class="axis" x="${half - 2}" width="4" height="12"/></svg><span class="bar-value">${escapeHtml(text)}</span></div>`;
}

/** Parts of a whole side by side (win, tie, loss). */
function stackedLine(parts: { label: string; color: string; value: number }[], text: string): string {
  const total = parts.reduce((s, p) => s + p.value, 0);
  let x = 0;
  const rects = parts.map((p) => {
    const width = total > 0 ? round1((p.value / total) * W) : 0;
    const r = `<rect class="fill" x="${round1(x)}" width="${width}" height="12" fill="${p.color}" data-part="${escapeHtml(p.label)}" data-value="${p.value}"/>`;
    x += width;
    return r;
  });
  const spoken = parts.map((p) => `${p.label} ${p.value}`).join(", ");
  return `<div class="bar-line"><span class="vh">${escapeHtml(spoken)}. </span><svg class="bar" viewBox="0 0 ${W} 12" preserveAspectRatio="none" aria-hidden="true" focusable="false"><rect class="track" width="${W}" height="12"/>${rects.join("")}</svg><span class="bar-value" aria-hidden="true">${escapeHtml(text)}</span></div>`;
}

interface Row {
  label: string;
  /** An "all"/"overall" row, set in bold. */
  total?: boolean;
  lines: string[];
}

interface Figure {
  id: string;
  title: string;
  caption: string;
  kind: "bars" | "difference" | "outcomes";
  /** The legend: model indexes, or the win / tie / loss colours. */
  legend: number[] | "outcomes";
  rows: Row[];
}

class Page {
  readonly figures: Figure[] = [];
  private ids = new Set<string>();

  constructor(readonly models: string[]) {}

  color(model: number): string {
    return RUN_COLORS[model]!;
  }

  /** A figure id that is unique on the page and safe in an attribute. */
  id(base: string): string {
    const clean = `chart-${base
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, "-")
      .replace(/^-|-$/g, "")}`.slice(0, 60);
    let id = clean;
    for (let i = 2; this.ids.has(id); i++) id = `${clean}-${i}`;
    this.ids.add(id);
    return id;
  }
}

function renderFigure(page: Page, f: Figure): string {
  const legend =
    f.legend === "outcomes"
      ? (["win", "tie", "loss"] as const)
          .map((o) => `<li><span class="swatch outcome-${o}"></span>${o}</li>`)
          .join("")
      : f.legend
          .map((m) => `<li><span class="swatch run-${m}"></span>${escapeHtml(page.models[m]!)}</li>`)
          .join("");
  const rows = f.rows
    .map(
      (r) =>
        `<tr${r.total ? ' class="total"' : ""}><th scope="row">${escapeHtml(r.label)}</th><td>${r.lines.join("")}</td></tr>`,
    )
    .join("");
  return `<figure class="card plot" id="${f.id}" data-chart="${f.kind}" aria-labelledby="${f.id}-title"><figcaption><h3 id="${f.id}-title">${escapeHtml(f.title)}</h3>${f.caption ? `<p>${escapeHtml(f.caption)}</p>` : ""}</figcaption><ul class="legend" aria-hidden="true">${legend}</ul><table class="bars"><tbody>${rows}</tbody></table></figure>`;
}

/** The largest |value|, rounded up to a whole percentage point, so differences have room. */
function differenceScale(values: number[], floor: number): number {
  const top = Math.max(floor, ...values.map(Math.abs));
  return Math.ceil(top * 100) / 100;
}

/**
 * Each model's value of each row against the first model's (`first`: the index of the model every
 * other is compared with), as diverging bars; undefined when no row has two models.
 */
function differenceFigure(
  page: Page,
  key: string,
  title: string,
  caption: string,
  rows: { label: string; total?: boolean; values: Map<number, number> }[],
  format: (d: number) => string,
  floor: number,
): Figure | undefined {
  const kept = rows.filter((r) => r.values.size >= 2);
  if (kept.length === 0) return undefined;
  const first = Math.min(...kept.flatMap((r) => [...r.values.keys()]));
  const diffs = kept.flatMap((r) =>
    [...r.values]
      .filter(([m]) => m !== first && r.values.has(first))
      .map(([, v]) => v - r.values.get(first)!),
  );
  if (diffs.length === 0) return undefined;
  const max = differenceScale(diffs, floor);
  const others = new Set<number>();
  const out: Row[] = [];
  for (const r of kept) {
    const base = r.values.get(first);
    if (base === undefined) continue;
    const lines: string[] = [];
    for (const [m, v] of [...r.values].sort((a, b) => a[0] - b[0])) {
      if (m === first) continue;
      others.add(m);
      lines.push(divergingLine(page.models[m]!, page.color(m), v - base, max, format(v - base)));
    }
    out.push({ label: r.label, total: r.total, lines });
  }
  return {
    id: page.id(`${key}-against`),
    title: `${title} against ${page.models[first]}`,
    caption,
    kind: "difference",
    legend: [...others].sort((a, b) => a - b),
    rows: out,
  };
}

/** Rows of per-model values as plain bars. */
function barsFigure(
  page: Page,
  key: string,
  title: string,
  caption: string,
  rows: { label: string; total?: boolean; bars: { model: number; value: number | null; text: string }[] }[],
  max: number,
): Figure {
  const legend = new Set<number>();
  const out = rows.map((r) => ({
    label: r.label,
    total: r.total,
    lines: r.bars.map((b) => {
      legend.add(b.model);
      return barLine(page.models[b.model]!, page.color(b.model), b.value, max, b.text);
    }),
  }));
  return {
    id: page.id(key),
    title,
    caption,
    kind: "bars",
    legend: [...legend].sort((a, b) => a - b),
    rows: out,
  };
}

// ---------------------------------------------------------------------------------------------
// Sections

const benchmarkOf = (r: McResult) => (r.shots > 0 ? `${r.format}, ${r.shots}-shot` : r.format);

/** Groups items by a key, keeping the order in which keys first appear. */
function groupBy<T>(items: readonly T[], key: (t: T) => string): Map<string, T[]> {
  const out = new Map<string, T[]>();
  for (const item of items) {
    const k = key(item);
    const list = out.get(k);
    if (list) list.push(item);
    else out.set(k, [item]);
  }
  return out;
}

/** Category names of several results, sorted. */
function categoryNames(results: readonly { categories: Record<string, unknown> }[]): string[] {
  return [...new Set(results.flatMap((r) => Object.keys(r.categories)))].sort();
}

function mcSection(page: Page, results: McResult[], modelOf: (r: EvalResult) => number): string {
  const figures: Figure[] = [];
  const benchmarks = groupBy(results, benchmarkOf);
  const se = (v: number | null) => (v === null ? "" : ` ± ${(100 * v).toFixed(1)}`);
  for (const [metric, stderr, label] of [
    ["acc", "acc_stderr", "acc"],
    ["acc_norm", "acc_norm_stderr", "acc_norm"],
  ] as const) {
    figures.push(
      barsFigure(
        page,
        `mc-${metric}`,
        `Multiple choice: ${label} by benchmark`,
        metric === "acc"
          ? "The share of questions whose right answer the model found most likely, ± the standard error."
          : "The same after dividing each answer's log-likelihood by its length in characters.",
        [...benchmarks].map(([name, list]) => ({
          label: name,
          bars: list.map((r) => ({
            model: modelOf(r),
            value: r.overall[metric],
            text: `${pct(r.overall[metric])}${se(r.overall[stderr])}`,
          })),
        })),
        1,
      ),
    );
  }
  for (const [name, list] of benchmarks) {
    const cats = categoryNames(list);
    if (cats.length === 0) continue;
    figures.push(
      barsFigure(
        page,
        `mc-${name}-categories`,
        `${name}: acc by category`,
        `${cats.length} categories.`,
        cats.map((c) => ({
          label: c,
          bars: list
            .filter((r) => r.categories[c] !== undefined)
            .map((r) => ({
              model: modelOf(r),
              value: r.categories[c]!.acc,
              text: `${pct(r.categories[c]!.acc)} of ${r.categories[c]!.n}`,
            })),
        })),
        1,
      ),
    );
  }
  const diff = differenceFigure(
    page,
    "mc-acc",
    "Multiple choice: acc",
    "Percentage points above (right) or below (left) the first model, per benchmark.",
    [...benchmarks].map(([name, list]) => ({
      label: name,
      values: new Map(list.map((r) => [modelOf(r), r.overall.acc])),
    })),
    signedPts,
    0.01,
  );
  if (diff) figures.push(diff);
  return section(page, "Multiple choice", figures);
}

function tasksSection(page: Page, results: TasksResult[], modelOf: (r: EvalResult) => number): string {
  const families = [...new Set(results.flatMap((r) => Object.keys(r.categories)))];
  const rows = [
    ...families.map((f) => ({ label: f, total: false, pick: (r: TasksResult) => r.categories[f] })),
    { label: "all", total: true, pick: (r: TasksResult) => r.overall },
  ];
  const figures: Figure[] = [
    barsFigure(
      page,
      "tasks",
      "Exact match by task family",
      "Held-out tasks of the synthetic world answered exactly (eval tasks).",
      rows.map((row) => ({
        label: row.label,
        total: row.total,
        bars: results
          .filter((r) => row.pick(r) !== undefined)
          .map((r) => {
            const s = row.pick(r)!;
            return {
              model: modelOf(r),
              value: s.accuracy,
              text: `${pct(s.accuracy)} (${s.correct}/${s.total})`,
            };
          }),
      })),
      1,
    ),
  ];
  const diff = differenceFigure(
    page,
    "tasks",
    "Exact match",
    "Percentage points above (right) or below (left) the first model, per task family.",
    rows.map((row) => ({
      label: row.label,
      total: row.total,
      values: new Map(
        results.filter((r) => row.pick(r) !== undefined).map((r) => [modelOf(r), row.pick(r)!.accuracy]),
      ),
    })),
    signedPts,
    0.01,
  );
  if (diff) figures.push(diff);
  return section(page, "Tasks", figures);
}

function judgeSingleSection(
  page: Page,
  results: JudgeSingleResult[],
  modelOf: (r: EvalResult) => number,
): string {
  const figures: Figure[] = [];
  for (const [judge, list] of groupBy(results, (r) => r.judge)) {
    const top = Math.max(10, ...list.flatMap((r) => r.scores));
    const cats = categoryNames(list);
    const rows = [
      ...cats.map((c) => ({ label: c, total: false, pick: (r: JudgeSingleResult) => r.categories[c] })),
      { label: "overall", total: true, pick: (r: JudgeSingleResult) => r.overall },
    ];
    const meanText = (s: { mean: number | null; n: number }) =>
      s.mean === null ? "no scores" : `${s.mean.toFixed(2)} (n ${s.n})`;
    figures.push(
      barsFigure(
        page,
        `judge-${judge}`,
        `Judge score by category (judge: ${judge})`,
        `Mean score the judge gave, on a scale to ${top}.`,
        rows.map((row) => ({
          label: row.label,
          total: row.total,
          bars: list
            .filter((r) => row.pick(r) !== undefined)
            .map((r) => {
              const s = row.pick(r)!;
              return { model: modelOf(r), value: s.mean, text: meanText(s) };
            }),
        })),
        top,
      ),
    );
    // Scores binned to whole numbers, lowest to highest seen.
    const all = list.flatMap((r) => r.scores.map(Math.round));
    if (all.length > 0) {
      const lo = Math.min(...all);
      const hi = Math.max(...all);
      const bins = list.map((r) => {
        const counts = new Map<number, number>();
        for (const s of r.scores) counts.set(Math.round(s), (counts.get(Math.round(s)) ?? 0) + 1);
        return { r, counts, n: r.scores.length };
      });
      const rows: { label: string; bars: { model: number; value: number | null; text: string }[] }[] = [];
      for (let v = hi; v >= lo && rows.length < 101; v--) {
        rows.push({
          label: String(v),
          bars: bins
            .filter((b) => b.n > 0)
            .map((b) => {
              const c = b.counts.get(v) ?? 0;
              return { model: modelOf(b.r), value: c / b.n, text: `${c} (${pct(c / b.n)})` };
            }),
        });
      }
      figures.push(
        barsFigure(
          page,
          `judge-${judge}-distribution`,
          `Score distribution (judge: ${judge})`,
          "Share of each model's judged answers per score, highest first.",
          rows,
          Math.max(...rows.flatMap((r) => r.bars.map((b) => b.value ?? 0)), 0.01),
        ),
      );
    }
    const diff = differenceFigure(
      page,
      `judge-${judge}`,
      `Judge score (judge: ${judge})`,
      "Points above (right) or below (left) the first model's mean score.",
      rows.map((row) => ({
        label: row.label,
        total: row.total,
        values: new Map(
          list
            .filter((r) => row.pick(r)?.mean !== null && row.pick(r) !== undefined)
            .map((r) => [modelOf(r), row.pick(r)!.mean!]),
        ),
      })),
      (d) => `${d > 0 ? "+" : d < 0 ? "−" : "±"}${Math.abs(d).toFixed(2)}`,
      0.1,
    );
    if (diff) figures.push(diff);
  }
  return section(page, "Judge scores", figures);
}

function judgePairwiseSection(page: Page, results: JudgePairwiseResult[]): string {
  const figures = results.map((r): Figure => {
    const row = (label: string, s: JudgePairwiseResult["overall"], total = false): Row => {
      const decided = s.win + s.tie + s.loss;
      const rate = decided > 0 ? ` · ${pct(s.win / decided)} won` : "";
      const unparsed = s.unparsed > 0 ? ` · ${s.unparsed} unparsed` : "";
      return {
        label,
        total,
        lines: [
          stackedLine(
            [
              { label: "win", color: OUTCOME_COLORS.win, value: s.win },
              { label: "tie", color: OUTCOME_COLORS.tie, value: s.tie },
              { label: "loss", color: OUTCOME_COLORS.loss, value: s.loss },
            ],
            `${s.win}/${s.tie}/${s.loss}${rate}${unparsed}`,
          ),
        ],
      };
    };
    return {
      id: page.id(`pairwise-${r.model}-${r.baseline}`),
      title: `${r.model} against ${r.baseline} (judge: ${r.judge})`,
      caption: "Wins, ties and losses of the model's answers against the baseline's.",
      kind: "outcomes",
      legend: "outcomes",
      rows: [...categoryNames([r]).map((c) => row(c, r.categories[c]!)), row("overall", r.overall, true)],
    };
  });
  return section(page, "Against a baseline", figures);
}

function section(page: Page, title: string, figures: Figure[]): string {
  page.figures.push(...figures);
  return `<h2>${escapeHtml(title)}</h2><div class="plots">${figures.map((f) => renderFigure(page, f)).join("")}</div>`;
}

// ---------------------------------------------------------------------------------------------
// The page

function benchmarkText(r: EvalResult): string {
  switch (r.type) {
    case "mc":
      return benchmarkOf(r);
    case "tasks":
      return "synthetic tasks";
    case "judge-single":
      return `judge ${r.judge}`;
    case "judge-pairwise":
      return `against ${r.baseline}, judge ${r.judge}`;
  }
}

function scoreText(r: EvalResult): { n: number; text: string } {
  switch (r.type) {
    case "mc": {
      const o = r.overall;
      const se = (v: number | null) => (v === null ? "" : ` ± ${(100 * v).toFixed(1)}`);
      return {
        n: o.n,
        text: `acc ${pct(o.acc)}${se(o.acc_stderr)} · acc_norm ${pct(o.acc_norm)}${se(o.acc_norm_stderr)}`,
      };
    }
    case "tasks":
      return { n: r.overall.total, text: `exact match ${pct(r.overall.accuracy)}` };
    case "judge-single":
      return {
        n: r.overall.n,
        text: `mean ${r.overall.mean === null ? "–" : r.overall.mean.toFixed(2)}${r.unparsed > 0 ? ` · ${r.unparsed} unparsed` : ""}`,
      };
    case "judge-pairwise": {
      const o = r.overall;
      const decided = o.win + o.tie + o.loss;
      const share = (v: number) => (decided > 0 ? pct(v / decided) : "–");
      return {
        n: decided,
        text: `win ${share(o.win)} · tie ${share(o.tie)} · loss ${share(o.loss)}${o.unparsed > 0 ? ` · ${o.unparsed} unparsed` : ""}`,
      };
    }
  }
}

function resultsTable(results: readonly SourcedResult[], modelOf: (r: EvalResult) => number): string {
  const withSource = results.some((r) => r.source !== undefined);
  const rows = results.map(({ result: r, source }) => {
    const { n, text } = scoreText(r);
    const file = withSource ? `<td>${escapeHtml(source ?? "–")}</td>` : "";
    return `<tr>${file}<td class="nowrap">${r.type}</td><th scope="row"><span class="swatch run-${modelOf(r)}"></span>${escapeHtml(r.model)}</th><td>${escapeHtml(benchmarkText(r))}</td><td class="num">${n.toLocaleString("en-US")}</td><td>${escapeHtml(text)}</td></tr>`;
  });
  return `<div class="scroll"><table class="results"><thead><tr>${withSource ? "<th>file</th>" : ""}<th>type</th><th>model</th><th>benchmark</th><th>n</th><th>score</th></tr></thead><tbody>${rows.join("")}</tbody></table></div>`;
}

function localTime(d: Date): string {
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

const sha256 = (s: string) => `'sha256-${createHash("sha256").update(s, "utf8").digest("base64")}'`;

/** What makes two results the same measurement (the same model on the same benchmark). */
function identity(r: EvalResult): string {
  return JSON.stringify([r.type, r.model, benchmarkText(r)]);
}

/** The models of `results` in order of appearance; a UserError when there are too many or a result is given twice. */
function modelsOf(results: readonly SourcedResult[]): string[] {
  if (results.length === 0) throw new UserError("give at least one eval result");
  if (results.length > MAX_RESULTS)
    throw new UserError(`at most ${MAX_RESULTS} results fit in one report, got ${results.length}`);
  const seen = new Map<string, SourcedResult>();
  for (const sr of results) {
    const id = identity(sr.result);
    const earlier = seen.get(id);
    if (earlier) {
      const where = (s: SourcedResult) => s.source ?? "a result";
      throw new UserError(
        `${where(earlier)} and ${where(sr)} both hold the ${sr.result.type} result of ${sr.result.model} on ${benchmarkText(sr.result)}; give each model its own name`,
      );
    }
    seen.set(id, sr);
  }
  const models = [...new Set(results.map((r) => r.result.model))];
  if (models.length > MAX_MODELS)
    throw new UserError(
      `at most ${MAX_MODELS} models fit in one report (each has its colour), got ${models.length}`,
    );
  return models;
}

/** The report page of `results`: one HTML document with nothing to load. */
export function renderEvalReport(
  results: readonly SourcedResult[],
  options: { generatedAt?: Date } = {},
): string {
  const models = modelsOf(results);
  const page = new Page(models);
  const modelOf = (r: EvalResult) => models.indexOf(r.model);
  const of = <T extends EvalResult["type"]>(type: T) =>
    results.map((r) => r.result).filter((r): r is Extract<EvalResult, { type: T }> => r.type === type);
  const sections: string[] = [];
  if (of("mc").length > 0) sections.push(mcSection(page, of("mc"), modelOf));
  if (of("tasks").length > 0) sections.push(tasksSection(page, of("tasks"), modelOf));
  if (of("judge-single").length > 0) sections.push(judgeSingleSection(page, of("judge-single"), modelOf));
  if (of("judge-pairwise").length > 0) sections.push(judgePairwiseSection(page, of("judge-pairwise")));
  const css = EVAL_PAGE_CSS;
  const csp = [
    "default-src 'none'",
    `style-src ${sha256(css)}`,
    "img-src 'none'",
    "script-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
  ].join("; ");
  const legend = models
    .map((m, i) => `<li><span class="swatch run-${i}"></span>${escapeHtml(m)}</li>`)
    .join("");
  const title = models.join(", ");
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="generator" content="${GENERATOR}">
<title>${escapeHtml(`${title} · smallhammer evaluation`)}</title>
<style>${css}</style>
</head>
<body>
<main>
<h1>Evaluation: ${escapeHtml(title)}</h1>
<p class="sub">${results.length} ${results.length === 1 ? "result" : "results"}, ${models.length} ${models.length === 1 ? "model" : "models"} · smallhammer evaluation report, written ${localTime(options.generatedAt ?? new Date())}</p>
<ul class="legend" aria-label="models">${legend}</ul>
${resultsTable(results, modelOf)}
${sections.join("\n")}
</main>
</body>
</html>
`;
}

// ---------------------------------------------------------------------------------------------
// Writing

/** Whether `path` holds a page this module wrote (so it may be replaced without --force). */
function isEvalReport(path: string): boolean {
  const fd = openSync(path, "r");
  try {
    const head = Buffer.alloc(2048);
    const n = readSync(fd, head, 0, head.length, 0);
    return head.subarray(0, n).toString("utf8").includes(`<meta name="generator" content="${GENERATOR}">`);
  } finally {
    closeSync(fd);
  }
}

export interface WriteEvalReportOptions {
  /** The files the results came from, in order: shown in the table and never written over. */
  sources?: readonly string[];
  /** Replace an existing file that is not an evaluation report. */
  force?: boolean;
  /** How messages name the output (the CLI's "--out"). */
  outFlag?: string;
  generatedAt?: Date;
}

/**
 * Writes the report of `results` to `outPath` (through a temporary file and a rename) and returns
 * the path. An existing evaluation report there is replaced; any other file only with `force`.
 */
export function writeEvalReport(
  results: readonly EvalResult[],
  outPath: string,
  options: WriteEvalReportOptions = {},
): string {
  const sources = options.sources ?? [];
  checkOutputs({
    inputs: sources.map((path) => ({ path, name: "the result file" })),
    outputs: [{ path: outPath, flag: options.outFlag, existing: "caller" }],
  });
  if (options.force !== true && existsSync(outPath) && statSync(outPath).isFile() && !isEvalReport(outPath)) {
    throw new UserError(
      `${options.outFlag ?? "the report"} ${outPath} exists and is not an evaluation report; add --force to replace it`,
    );
  }
  const html = renderEvalReport(
    results.map((result, i) => ({ result, source: sources[i] })),
    { generatedAt: options.generatedAt },
  );
  writeAtomic(outPath, html);
  return outPath;
}
