/**
 * The evaluation report in a real browser: playwright-core drives the system's Chromium on a page
 * written from result files of every type, opened from a file:// URL. Every chart draws its bars
 * at lengths proportional to their values in each model's colour, the page loads nothing and runs
 * nothing, axe-core finds no serious accessibility problem, and it fits a phone's width in dark
 * mode. The desktop screenshot is saved as docs/eval-report.png (the README shows it).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeEvalReport } from "../src/eval/eval-report.js";
import { RUN_COLORS } from "../src/eval/report-page.js";
import { ROOT } from "./helpers/cli.js";
import { sampleResults } from "./helpers/eval-results.js";

const CHROMIUM = [process.env.CHROMIUM_PATH, "/usr/bin/chromium", "/usr/bin/chromium-browser"].find(
  (p): p is string => !!p && existsSync(p),
);
if (!CHROMIUM) {
  console.warn(
    "SKIPPED test/eval-report-browser.test.ts: no Chromium found (install Debian's chromium package or set CHROMIUM_PATH)",
  );
}

interface DrawnBar {
  fill: string;
  value: number;
  /** The bar's drawn width over its track's, and where it starts on the track (0 to 1). */
  share: number;
  start: number;
}

(CHROMIUM ? describe : describe.skip)("evaluation report page", () => {
  let dir: string;
  let page: string;
  let browser: Browser;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "sh-eval-report-browser-"));
    page = join(dir, "report.html");
    writeEvalReport(sampleResults(), page, { generatedAt: new Date(2025, 0, 1, 12, 0, 0) });
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
  });

  afterAll(async () => {
    await browser?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  async function open(options: { width: number; height: number; dark?: boolean; bypassCSP?: boolean }) {
    const context = await browser.newContext({
      viewport: { width: options.width, height: options.height },
      colorScheme: options.dark ? "dark" : "light",
      bypassCSP: options.bypassCSP ?? false,
    });
    const p = await context.newPage();
    const problems: string[] = [];
    p.on("pageerror", (e) => problems.push(`error: ${e.message}`));
    p.on("console", (m) => {
      if (m.type() === "error") problems.push(`console: ${m.text()}`);
    });
    p.on("request", (r) => {
      if (!r.url().startsWith("file:")) problems.push(`request: ${r.url()}`);
    });
    await p.goto(pathToFileURL(page).href);
    return { p, problems };
  }

  /** Every bar of chart `id` as drawn: its colour, value, and geometry against its track. */
  function drawn(p: Page, id: string): Promise<DrawnBar[]> {
    return p.evaluate(`[...document.querySelectorAll(${JSON.stringify(`#${id} svg.bar`)})].flatMap((svg) => {
      const track = svg.querySelector("rect.track").getBoundingClientRect();
      return [...svg.querySelectorAll("rect.fill")].map((r) => {
        const box = r.getBoundingClientRect();
        return {
          fill: r.getAttribute("fill"),
          value: Number(r.getAttribute("data-value")),
          share: box.width / track.width,
          start: (box.left - track.left) / track.width,
        };
      });
    })`) as Promise<DrawnBar[]>;
  }

  it("draws every chart with bars as long as their values, and loads and runs nothing", async () => {
    const { p, problems } = await open({ width: 1280, height: 900 });
    const ids = (await p.evaluate(
      `[...document.querySelectorAll("figure.plot")].map((f) => f.id)`,
    )) as string[];
    expect(ids).toHaveLength(11);
    for (const id of ids) {
      const bars = await drawn(p, id);
      expect(bars.length, id).toBeGreaterThan(0);
      // every chart's track has a width on screen, and some bar of it shows
      expect(Math.max(...bars.map((b) => b.share)), id).toBeGreaterThan(0.02);
    }
    // plain bars: the drawn length is the value (of 1 for shares, of 10 for judge scores)
    for (const [id, scale] of [
      ["chart-mc-acc", 1],
      ["chart-mc-mmlu-5-shot-categories", 1],
      ["chart-tasks", 1],
      ["chart-judge-judge-7b", 10],
    ] as const) {
      for (const b of await drawn(p, id)) expect(b.share, id).toBeCloseTo(b.value / scale, 2);
    }
    const acc = await drawn(p, "chart-mc-acc");
    expect(acc.map((b) => b.fill)).toEqual([...RUN_COLORS.slice(0, 3), ...RUN_COLORS.slice(0, 3)]);
    // differences start at the middle and go right when above the first model, left when below
    for (const b of await drawn(p, "chart-tasks-against")) {
      if (b.value > 0) expect(b.start).toBeCloseTo(0.5, 2);
      if (b.value < 0) expect(b.start + b.share).toBeCloseTo(0.5, 2);
    }
    expect((await drawn(p, "chart-tasks-against")).some((b) => b.value > 0)).toBe(true);
    // win, tie, loss side by side over the whole track: 14 / 3 / 3
    const overall = (await drawn(p, "chart-pairwise-tuned-f32-base-f32")).slice(-3);
    expect(overall.map((b) => b.share.toFixed(2))).toEqual(["0.70", "0.15", "0.15"]);
    expect(overall[1]!.start).toBeCloseTo(0.7, 2);
    // a screen reader reads each bar's model and value from the table
    const row = await p.locator("#chart-mc-acc tbody tr").first().textContent();
    expect(row).toContain("mmlu, 5-shot");
    expect(await p.locator("#chart-mc-acc .vh").first().textContent()).toBe("base f32: ");
    expect(problems).toEqual([]);
    await p.screenshot({ path: join(ROOT, "docs", "eval-report.png"), fullPage: true });
    console.log(`eval report screenshot: ${join(ROOT, "docs", "eval-report.png")}`);
  });

  it("has no serious accessibility problem (axe-core)", async () => {
    // axe runs as a script, which the page's policy forbids: this context lets it in.
    const { p, problems } = await open({ width: 1280, height: 900, bypassCSP: true });
    await p.addScriptTag({
      content: readFileSync(join(ROOT, "node_modules", "axe-core", "axe.min.js"), "utf8"),
    });
    const violations = (await p.evaluate(
      "window.axe.run(document).then((r) => r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')) })))",
    )) as { id: string; impact: string; nodes: string[] }[];
    expect(violations.filter((v) => v.impact === "serious" || v.impact === "critical")).toEqual([]);
    expect(problems).toEqual([]);
  });

  it("fits a phone's width, in dark mode", async () => {
    const { p, problems } = await open({ width: 390, height: 844, dark: true });
    const layout = (await p.evaluate(`({
      page: document.documentElement.scrollWidth,
      bars: [...document.querySelectorAll("svg.bar")].map((s) => s.getBoundingClientRect().right),
      background: getComputedStyle(document.body).backgroundColor,
      text: getComputedStyle(document.body).color,
    })`)) as { page: number; bars: number[]; background: string; text: string };
    expect(layout.page).toBeLessThanOrEqual(390);
    expect(layout.bars.length).toBeGreaterThan(50);
    for (const right of layout.bars) expect(right).toBeLessThanOrEqual(390);
    const lightness = (rgb: string) => {
      const [r, g, b] = rgb.match(/\d+/g)!.map(Number);
      return (r! + g! + b!) / 3;
    };
    expect(lightness(layout.background)).toBeLessThan(60);
    expect(lightness(layout.text)).toBeGreaterThan(180);
    const bars = await drawn(p, "chart-mc-acc");
    for (const b of bars) expect(b.share).toBeCloseTo(b.value, 2);
    expect(problems).toEqual([]);
    const shot = join(tmpdir(), `smallhammer-eval-report-phone-${process.pid}.png`);
    await p.screenshot({ path: shot, fullPage: true });
    console.log(`eval report screenshot (phone, dark): ${shot}`);
  });
});
