/**
 * Run reports from real run directories: tiny pretraining runs (and a fine-tune) made here by the
 * built CLI. pretrain and finetune write <run>/report.html and name it last; the page a run writes
 * while it goes on reloads itself, the last one does not; `report` overlays several runs (one series
 * per run and chart); a torn last metrics line, hostile sample and config text, and files over the
 * caps are handled and said on the page; a user's mistakes are one line and exit 2, writing nothing.
 */
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_REPORT_LIMITS, LiveRunReport, writeRunReport } from "../src/eval/report.js";
import { RUN_COLORS } from "../src/eval/report-page.js";
import type { TrainEvent } from "../src/train/loop.js";
import { pretrain } from "../src/train/pretrain.js";
import { openPretrainData } from "../src/train/token-data.js";
import { ensureBuilt, expectOk, runCli } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";
import { makeShakespeareCache, writeTinyAlpaca } from "./helpers/train-setup.js";

let dir: string;
let cache: string;
let model: string;

/** Exit 2 with exactly one line on stderr that starts "smallhammer:" and contains `mention`. */
function expectUserError(r: { status: number | null; stderr: string; stdout: string }, mention: string) {
  expect(r.status).toBe(2);
  expect(r.stdout).toBe("");
  const lines = r.stderr.replace(/\n$/, "").split("\n");
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^smallhammer: /);
  expect(lines[0]).toContain(mention);
}

interface PageChart {
  id: string;
  x: number[];
  series: { label: string; color: string; dashed: boolean; y: (number | null)[] }[];
}

/** The chart data a report page carries (its JSON block). */
function chartsOf(html: string): PageChart[] {
  const m = /<script type="application\/json" id="report-data">([^<]*)<\/script>/.exec(html);
  expect(m, "the page's data block").not.toBeNull();
  return (JSON.parse(m![1]!) as { charts: PageChart[] }).charts;
}

const chart = (html: string, id: string) => chartsOf(html).find((c) => c.id === id)!;
const pointsOf = (s: { y: (number | null)[] }) => s.y.filter((v) => v !== null).length;

function metricLines(run: string): { step: number; val_loss?: number }[] {
  return readFileSync(join(run, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
}

const pretrainArgs = (out: string, lr: string) => [
  ...["pretrain", "--model", model, "--data", cache, "--out", out, "--steps", "30", "--lr", lr],
  ...["--batch", "2", "--seq", "32", "--threads", "1", "--eval-every", "10", "--eval-batches", "1"],
  ...["--sample-every", "15", "--sample-tokens", "8"],
];

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-run-report-"));
  ({ cache } = await makeShakespeareCache(dir, 60_000));
  model = join(dir, "model.json");
  writeFileSync(
    model,
    JSON.stringify({ dim: 32, layers: 1, heads: 2, kvHeads: 2, ffn: 64, contextLength: 32 }),
  );
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("pretrain and its report", () => {
  let slow: string;
  let fast: string;

  beforeAll(async () => {
    slow = join(dir, "lr-1e-3");
    fast = join(dir, "lr-1e-2");
    const r = await runCli(pretrainArgs(slow, "1e-3"));
    expectOk(r);
    // the report is named last, after the summary
    const lines = r.stdout.trim().split("\n");
    expect(lines.at(-2)).toMatch(/^done: 30 steps, loss /);
    expect(lines.at(-1)).toBe(`report: ${slow}/report.html`);
    const json = await runCli([...pretrainArgs(fast, "1e-2"), "--json"]);
    expectOk(json);
    expect(JSON.parse(json.stdout)).toMatchObject({ step: 30, report: join(fast, "report.html") });
  });

  it("writes <run>/report.html: a finished page with the run's losses, samples and config", () => {
    const html = readFileSync(join(slow, "report.html"), "utf8");
    expect(html.startsWith("<!doctype html>")).toBe(true);
    // finished: no reloading
    expect(html).not.toContain('http-equiv="refresh"');
    expect(html).toContain("finished: 30 of 30 steps");
    const metrics = metricLines(slow);
    const loss = chart(html, "chart-loss-step");
    expect(loss.series.map((s) => s.label)).toEqual(["train", "validation"]);
    expect(loss.x).toEqual(metrics.map((m) => m.step));
    expect(pointsOf(loss.series[0]!)).toBe(30);
    expect(pointsOf(loss.series[1]!)).toBe(3);
    expect(loss.series[1]!.dashed).toBe(true);
    for (const id of ["chart-loss-tokens", "chart-lr", "chart-grad-norm", "chart-tokens-per-s"]) {
      expect(chart(html, id).series.map(pointsOf), id).toContain(30);
    }
    // samples at steps 15 and 30, newest first; the settings in the config table
    const samples = readFileSync(join(slow, "samples.jsonl"), "utf8").trim().split("\n");
    expect(samples.map((l) => JSON.parse(l).step)).toEqual([15, 30]);
    expect(html.indexOf("step 30</div>")).toBeLessThan(html.indexOf("step 15</div>"));
    expect(html).toMatch(/<th>settings\.lr<\/th><td>0\.001<\/td>/);
    // uPlot is inlined, nothing is fetched
    expect(html).toContain("https://github.com/leeoniya/uPlot");
    expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+href=/);
  });

  it("overlays several runs: one series per run in each chart, in distinct colours", async () => {
    const out = join(dir, "compare.html");
    const r = await runCli(["report", slow, fast, "--out", out]);
    expectOk(r);
    expect(r.stdout).toBe(
      `${slow}: finished, step 30 of 30\n${fast}: finished, step 30 of 30\nreport: ${out}\n`,
    );
    const html = readFileSync(out, "utf8");
    const loss = chart(html, "chart-loss-step");
    // named without the folder they share, which the page names once
    expect(html).toContain(`runs in ${dir}/ · `);
    expect(loss.series.map((s) => s.label)).toEqual([
      "lr-1e-3 train",
      "lr-1e-3 validation",
      "lr-1e-2 train",
      "lr-1e-2 validation",
    ]);
    expect(loss.series.map(pointsOf)).toEqual([30, 3, 30, 3]);
    for (const id of ["chart-lr", "chart-grad-norm", "chart-tokens-per-s"]) {
      const c = chart(html, id);
      expect(c.series.map((s) => s.label)).toEqual(["lr-1e-3", "lr-1e-2"]);
      expect(c.series.map(pointsOf)).toEqual([30, 30]);
      expect(new Set(c.series.map((s) => s.color)).size).toBe(2);
    }
    // the learning rates differ by ten at every step
    const lr = chart(html, "chart-lr");
    for (let i = 0; i < lr.x.length; i++)
      expect(lr.series[1]!.y[i]! / lr.series[0]!.y[i]!).toBeCloseTo(10, 3);
    expect(loss.series[0]!.color).toBe(RUN_COLORS[0]);
    expect(loss.series[2]!.color).toBe(RUN_COLORS[1]);
    // the setting that differs is marked
    expect(html).toMatch(/<tr class="differs"><th>settings\.lr<\/th><td>0\.001<\/td><td>0\.01<\/td><\/tr>/);
    // a report replaces an earlier report, without --force
    expectOk(await runCli(["report", slow, fast, "--out", out, "--json"]));
  });

  it("skips a torn last metrics line, escapes hostile text, and says what it left out", async () => {
    const run = join(dir, "hostile <b>run</b>");
    cpSync(slow, run, { recursive: true });
    // a line cut off by a kill, and samples and config holding markup
    writeFileSync(join(run, "metrics.jsonl"), '{"step": 31, "loss": 1.5, "lr": 0.00', { flag: "a" });
    const attack = "<script>document.title='owned'</script><img src=x onerror=alert(1)>";
    writeFileSync(
      join(run, "samples.jsonl"),
      `${JSON.stringify({ step: 31, prompt: `</pre>${attack}`, text: attack })}\nnot json\n`,
      { flag: "a" },
    );
    const config = JSON.parse(readFileSync(join(run, "config.json"), "utf8"));
    writeFileSync(
      join(run, "config.json"),
      JSON.stringify({ ...config, "<i>note</i>": `</script>${attack}` }),
    );
    const r = await runCli(["report", run]);
    expectOk(r);
    const html = readFileSync(join(run, "report.html"), "utf8");
    expect(chart(html, "chart-loss-step").x.at(-1)).toBe(30);
    expect(html).toContain(
      "metrics.jsonl: its last line is incomplete (cut off while written) and was skipped",
    );
    expect(html).toContain("samples.jsonl: skipped 1 line that is not a sample");
    // every piece of markup from the run is text: the page's own three scripts are the only ones
    expect(html.match(/<script/g)).toHaveLength(3);
    expect(html).not.toContain("<img");
    expect(html).not.toContain("<b>run");
    expect(html).not.toContain("<i>note");
    expect(html).toContain(
      "&lt;script&gt;document.title=&#39;owned&#39;&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;",
    );
    expect(html).toContain("<h1>" + `${run.replaceAll("<", "&lt;").replaceAll(">", "&gt;")}</h1>`);
    // only the page's own scripts may run
    const csp = /<meta http-equiv="Content-Security-Policy" content="([^"]+)">/.exec(html)![1]!;
    expect(csp).toMatch(
      /^default-src 'none'; script-src 'sha256-[^']+' 'sha256-[^']+'; style-src 'sha256-[^']+';/,
    );

    // the same torn line, completed, is read; a valid last line without its newline counts too
    writeFileSync(join(run, "metrics.jsonl"), "1}", { flag: "a" });
    expectOk(await runCli(["report", run]));
    const whole = readFileSync(join(run, "report.html"), "utf8");
    expect(chart(whole, "chart-loss-step").x.at(-1)).toBe(31);
    expect(whole).not.toContain("its last line is incomplete");
  });

  it("reads within its caps and says so on the page", async () => {
    const out = join(dir, "capped.html");
    const bytes = statSync(join(slow, "metrics.jsonl")).size;
    await writeRunReport([slow], out, {
      limits: {
        ...DEFAULT_REPORT_LIMITS,
        metricsBytes: Math.floor(bytes / 2),
        points: 4,
        samples: 1,
        sampleChars: 3,
      },
    });
    const html = readFileSync(out, "utf8");
    expect(html).toContain("metrics.jsonl: only its first");
    expect(html).toMatch(/the charts show every \d+(st|nd|rd|th) of \d+ steps \(and the last one\)/);
    const loss = chart(html, "chart-loss-step");
    expect(loss.x.length).toBeLessThanOrEqual(6);
    expect(loss.x.at(-1)).toBeLessThan(30);
    expect(html.match(/<pre class="text reply">/g)).toHaveLength(1);
    expect(html).toMatch(/more characters\)<\/pre>/);
  });

  it("refuses, in one line and exit 2, what is not a run or would overwrite what is not a report", async () => {
    const missing = join(dir, "no-such-run");
    expectUserError(await runCli(["report", missing]), `${missing}: no such directory`);
    expectUserError(
      await runCli(["report", cache]),
      `${cache}: not a run directory (no metrics.jsonl; pretrain and finetune write one)`,
    );
    expectUserError(await runCli(["report", model]), `${model}: not a directory`);
    expectUserError(await runCli(["report", slow, fast]), "a report of several runs needs --out FILE");
    expectUserError(
      await runCli(["report", slow, "--out", join(slow, "metrics.jsonl")]),
      "would overwrite the run's metrics.jsonl",
    );
    const before = readFileSync(model, "utf8");
    expectUserError(
      await runCli(["report", slow, "--out", model]),
      `--out ${model} exists and is not a report; add --force`,
    );
    expect(readFileSync(model, "utf8")).toBe(before);
    expectUserError(
      await runCli(["report", slow, `${slow}/`, "--out", join(dir, "x.html")]),
      "is given twice",
    );
    expect(existsSync(join(dir, "x.html"))).toBe(false);
  });
});

it("the page a run writes while it goes on reloads itself; the last one does not", async () => {
  const run = join(dir, "live");
  const data = await openPretrainData(cache);
  const seen: { step: number; html: string }[] = [];
  const report = new LiveRunReport(run, { minSeconds: 0 });
  try {
    await pretrain(
      {
        shape: { dim: 32, layers: 1, heads: 2, kvHeads: 2, ffn: 64, contextLength: 32 },
        steps: 12,
        batch: 2,
        seq: 32,
      },
      data,
      run,
      {
        threads: 1,
        onEvent: (e: TrainEvent) => {
          report.onEvent(e);
          if (e.type === "step") seen.push({ step: e.metrics.step, html: readFileSync(report.path, "utf8") });
        },
      },
    );
  } finally {
    data.close();
  }
  // written from the first step on, with the steps so far, reloading while steps remain
  expect(seen[0]!.html).toContain('<meta http-equiv="refresh" content="15">');
  expect(seen[0]!.html).toContain("step 1 of 12, in progress");
  expect(chart(seen[0]!.html, "chart-loss-step").x).toEqual([1]);
  expect(report.finish()).toBe(join(run, "report.html"));
  const last = readFileSync(join(run, "report.html"), "utf8");
  expect(last).not.toContain('http-equiv="refresh"');
  expect(last).toContain("finished: 12 of 12 steps");
  expect(chart(last, "chart-loss-step").x).toHaveLength(12);
});

it("finetune writes its report, with the prompt of each sample", async () => {
  const tiny = writeTinyLlama(join(dir, "base.gguf"), {
    dim: 32,
    layers: 1,
    heads: 2,
    kvHeads: 2,
    ffn: 64,
    contextLength: 256,
    weightScale: 0.05,
  });
  const data = writeTinyAlpaca(join(dir, "alpaca.jsonl"));
  const out = join(dir, "finetune");
  const r = await runCli([
    ...["finetune", "--base", tiny.path, "--data", data, "--template", "alpaca", "--targets", "q,v"],
    ...["--steps", "4", "--batch", "1", "--seq", "256", "--threads", "1", "--eval-every", "2"],
    ...["--sample-every", "2", "--sample-tokens", "4", "--val-fraction", "0.1", "--out", out],
  ]);
  expectOk(r);
  expect(r.stdout.trim().split("\n").at(-1)).toBe(`report: ${out}/report.html`);
  const html = readFileSync(join(out, "report.html"), "utf8");
  expect(html).toContain('<td class="nowrap">finetune</td>');
  expect(html).toContain("finished: 4 of 4 steps");
  expect(html.match(/<pre class="text prompt">[^<]*### Instruction:/g)).toHaveLength(2);
  expect(pointsOf(chart(html, "chart-loss-step").series[1]!)).toBe(2);
});
