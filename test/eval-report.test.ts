// Eval result files and the evaluation report: every result type's schema (a bad file is one line
// naming the field), the page's charts and their bar lengths, escaping, the page's lack of any
// script, where it may be written, and the CLI: `eval report`, and `eval tasks --summary-out`.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MAX_MODELS, renderEvalReport, writeEvalReport } from "../src/eval/eval-report.js";
import { type EvalResult, parseEvalResult, readEvalResult, taskSummary } from "../src/eval/results.js";
import { ensureBuilt, expectOk, expectUserError, runCli } from "./helpers/cli.js";
import { MODELS, sampleResults } from "./helpers/eval-results.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "sh-eval-report-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A copy of `value` with `path` (dotted) set to `v`, or removed when `v` is undefined. */
function changed(value: unknown, path: string, v: unknown): unknown {
  const copy = structuredClone(value) as Record<string, unknown>;
  const keys = path.split(".");
  let at = copy;
  for (const k of keys.slice(0, -1)) at = at[k] as Record<string, unknown>;
  if (v === undefined) delete at[keys.at(-1)!];
  else at[keys.at(-1)!] = v;
  return copy;
}

describe("result files", () => {
  const samples = sampleResults();
  const first = (type: EvalResult["type"]) => samples.find((r) => r.type === type)!;

  it("accepts a result of every type", () => {
    for (const r of samples) expect(parseEvalResult(JSON.parse(JSON.stringify(r)), "x.json")).toEqual(r);
    // a judge without any parsed score has a null mean; a stderr of one question is null (N/A)
    expect(() => parseEvalResult(changed(first("judge-single"), "overall.mean", null), "x")).not.toThrow();
    expect(() => parseEvalResult(changed(first("mc"), "overall.acc_stderr", null), "x")).not.toThrow();
  });

  it("refuses a bad result in one line naming the file and the field", () => {
    const cases: [unknown, string][] = [
      [[1, 2], 'no "kind": "smallhammer-eval"'],
      [{ kind: "other", type: "mc" }, 'no "kind"'],
      [{ kind: "smallhammer-eval", type: "perplexity" }, 'unknown eval result type "perplexity"'],
      [{ kind: "smallhammer-eval" }, "unknown eval result type (none)"],
      [changed(first("mc"), "overall.acc", 1.5), "field overall.acc"],
      [changed(first("mc"), "shots", -1), "field shots"],
      [changed(first("mc"), "format", undefined), "field format"],
      [changed(first("tasks"), "overall.correct", 999), "correct is more than total"],
      [changed(first("judge-single"), "scores", [1, "2"]), "field scores.1"],
      [changed(first("judge-pairwise"), "overall.win", 1.5), "field overall.win"],
      [changed(first("judge-pairwise"), "categories.math", "x"), "field categories.math"],
    ];
    for (const [value, mention] of cases) {
      const error = (() => {
        try {
          parseEvalResult(value, "run.json");
        } catch (e) {
          return e as Error;
        }
        return undefined;
      })();
      expect(error?.name, mention).toBe("UserError");
      expect(error!.message.split("\n")).toHaveLength(1);
      expect(error!.message).toMatch(/^run\.json: /);
      expect(error!.message).toContain(mention);
    }
  });

  it("reads files, and says what is wrong with one that is not JSON or not there", () => {
    const good = join(dir, "good.json");
    writeFileSync(good, JSON.stringify(first("tasks")));
    expect(readEvalResult(good)).toEqual(first("tasks"));
    const bad = join(dir, "bad.json");
    writeFileSync(bad, '{"kind": "smallhammer-eval",');
    expect(() => readEvalResult(bad)).toThrow(/^.*bad\.json: not JSON \(.*\)$/);
    expect(() => readEvalResult(join(dir, "none.json"))).toThrow("cannot read the file (ENOENT)");
    expect(() => readEvalResult(dir)).toThrow("not a file");
  });

  it("taskSummary turns eval tasks' scores into a tasks result", () => {
    const summary = taskSummary("m.gguf", {
      total: 3,
      correct: 2,
      accuracy: 2 / 3,
      byFamily: { add: { total: 2, correct: 2, accuracy: 1 }, sort: { total: 1, correct: 0, accuracy: 0 } },
      replies: [],
    });
    expect(parseEvalResult(summary, "x")).toEqual({
      kind: "smallhammer-eval",
      type: "tasks",
      model: "m.gguf",
      categories: { add: { correct: 2, total: 2, accuracy: 1 }, sort: { correct: 0, total: 1, accuracy: 0 } },
      overall: { correct: 2, total: 3, accuracy: 2 / 3 },
    });
  });
});

describe("report page", () => {
  const html = renderEvalReport(sampleResults().map((result, i) => ({ result, source: `r${i}.json` })));

  /** The bars of chart `id`: each fill rect's model colour, width (of 1000) and data value. */
  function bars(page: string, id: string): { fill: string; width: number; value: string }[] {
    const start = page.indexOf(`<figure class="card plot" id="${id}"`);
    expect(start, id).toBeGreaterThanOrEqual(0);
    const figure = page.slice(start, page.indexOf("</figure>", start));
    return [
      ...figure.matchAll(
        /<rect class="fill"[^>]*?width="([\d.]+)"[^>]*?fill="(#[0-9a-f]{6})"[^>]*?data-value="([^"]*)"/g,
      ),
    ].map((m) => ({ width: Number(m[1]), fill: m[2]!, value: m[3]! }));
  }

  it("draws every chart, bars as long as their values, one colour per model", () => {
    for (const id of [
      "chart-mc-acc",
      "chart-mc-acc-norm",
      "chart-mc-mmlu-5-shot-categories",
      "chart-mc-acc-against",
      "chart-tasks",
      "chart-tasks-against",
      "chart-judge-judge-7b",
      "chart-judge-judge-7b-distribution",
      "chart-judge-judge-7b-against",
      "chart-pairwise-tuned-f32-base-f32",
      "chart-pairwise-tuned-q4-0-base-f32",
    ]) {
      expect(bars(html, id).length, id).toBeGreaterThan(0);
    }
    // acc: mmlu then hellaswag, three models each, width = acc · 1000
    const acc = bars(html, "chart-mc-acc");
    expect(acc).toHaveLength(6);
    for (const b of acc) expect(b.width).toBeCloseTo(Number(b.value) * 1000, 0);
    expect(acc.map((b) => b.fill)).toEqual([
      "#2f7ed8",
      "#e4572e",
      "#17a673",
      "#2f7ed8",
      "#e4572e",
      "#17a673",
    ]);
    // exact match of "tuned f32" on reverse: 12 of 12
    expect(bars(html, "chart-tasks").find((b) => b.value === "1")?.width).toBe(1000);
    // differences against the first model: the other two models, centred bars
    const diff = bars(html, "chart-mc-acc-against");
    expect(diff.map((b) => b.fill)).toEqual(["#e4572e", "#17a673", "#e4572e", "#17a673"]);
    expect(html).toContain("Multiple choice: acc against base f32");
    // judge means on a scale to 10
    const judge = bars(html, "chart-judge-judge-7b");
    for (const b of judge) expect(b.width).toBeCloseTo((Number(b.value) / 10) * 1000, 0);
    // win / tie / loss: 14 / 3 / 3 of 20
    const wtl = bars(html, "chart-pairwise-tuned-f32-base-f32").slice(-3);
    expect(wtl.map((b) => b.width)).toEqual([700, 150, 150]);
    expect(html).toContain("14/3/3 · 70.0% won · 1 unparsed");
    // the table names every file and model
    for (let i = 0; i < 14; i++) expect(html).toContain(`<td>r${i}.json</td>`);
    for (const m of MODELS) expect(html).toContain(m);
  });

  it("has no script, and shows hostile names as text", () => {
    expect(html).not.toMatch(/<script/i);
    expect(html).toContain("script-src 'none'");
    const hostile = `<img src=x onerror=alert(1)>"'&`;
    const one = sampleResults()[0]!;
    const page = renderEvalReport([{ result: { ...one, model: hostile }, source: "<b>.json" }]);
    expect(page).not.toContain("<img");
    expect(page).not.toContain("<b>");
    expect(page).toContain("&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;");
  });

  it("refuses the same measurement twice and more models than it has colours", () => {
    const one = sampleResults()[0]!;
    expect(() =>
      renderEvalReport([
        { result: one, source: "a.json" },
        { result: one, source: "b.json" },
      ]),
    ).toThrow("a.json and b.json both hold the mc result of base f32 on mmlu, 5-shot");
    const many = Array.from({ length: MAX_MODELS + 1 }, (_, i) => ({ result: { ...one, model: `m${i}` } }));
    expect(() => renderEvalReport(many)).toThrow(`at most ${MAX_MODELS} models`);
    expect(() => renderEvalReport([])).toThrow("at least one");
  });

  it("writes over its own earlier report, over another file only with force, never over an input", () => {
    const results = sampleResults();
    const out = join(dir, "report.html");
    expect(writeEvalReport(results, out)).toBe(out);
    expect(readFileSync(out, "utf8")).toContain('<meta name="generator" content="smallhammer eval report">');
    writeEvalReport(results.slice(0, 3), out); // its own report: replaced
    const other = join(dir, "notes.html");
    writeFileSync(other, "my notes");
    expect(() => writeEvalReport(results, other)).toThrow("exists and is not an evaluation report");
    expect(readFileSync(other, "utf8")).toBe("my notes");
    writeEvalReport(results, other, { force: true });
    const input = join(dir, "input.json");
    writeFileSync(input, JSON.stringify(results[0]));
    expect(() => writeEvalReport([results[0]!], input, { sources: [input], force: true })).toThrow(
      "would overwrite",
    );
    expect(() => writeEvalReport(results, join(dir, "missing", "r.html"))).toThrow();
  });
});

describe("eval report and eval tasks --summary-out (CLI)", () => {
  it("writes the page of result files; a bad file is one line", async () => {
    ensureBuilt();
    const files = sampleResults().map((r, i) => {
      const path = join(dir, `cli-${i}.json`);
      writeFileSync(path, JSON.stringify(r));
      return path;
    });
    const out = join(dir, "cli-report.html");
    const r = await runCli(["eval", "report", ...files, "--out", out]);
    expectOk(r);
    expect(r.stdout).toBe(`report: ${out}\n`);
    expect(readFileSync(out, "utf8")).toContain("chart-pairwise-tuned-f32-base-f32");
    const bad = join(dir, "cli-bad.json");
    writeFileSync(bad, JSON.stringify(changed(sampleResults()[0], "overall.n", "many")));
    expectUserError(await runCli(["eval", "report", files[0]!, bad, "--out", out]), "field overall.n");
    expectUserError(await runCli(["eval", "report", files[0]!, "--out", files[1]!]), "--force");
  });

  it("eval tasks --summary-out writes a tasks result the report reads", async () => {
    ensureBuilt();
    const model = join(dir, "tasks-tiny.gguf");
    writeTinyLlama(model, { dim: 32, layers: 1, heads: 2, ffn: 64, seed: 4, contextLength: 512 });
    const summary = join(dir, "tasks.json");
    const r = await runCli([
      ...["eval", "tasks", "-m", model, "--per-family", "1", "--max-tokens", "2", "-t", "1"],
      ...["--summary-out", summary, "--json"],
    ]);
    expectOk(r);
    const result = readEvalResult(summary);
    expect(result.type).toBe("tasks");
    expect(result.model).toBe(model);
    const printed = JSON.parse(r.stdout) as { total: number; correct: number };
    expect(result.type === "tasks" && result.overall.total).toBe(printed.total);
    expect(result.type === "tasks" && result.overall.correct).toBe(printed.correct);
    const out = join(dir, "tasks-report.html");
    expectOk(await runCli(["eval", "report", summary, "--out", out]));
    expect(readFileSync(out, "utf8")).toContain("Exact match by task family");
  });
});
