/**
 * A run report in a real browser: playwright-core drives the system's Chromium (Debian's
 * `chromium` package, which .ci/run installs) on the page `report` writes for two real pretraining
 * runs, opened from a file:// URL with nothing else to load. Every chart draws its points (the
 * runs' colours are on the canvas), nothing from the runs' files runs as script or markup, the page
 * fits a phone's width in dark mode, and screenshots are saved (their paths are printed).
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RUN_COLORS } from "../src/eval/report-page.js";
import { ensureBuilt, expectOk, runCli } from "./helpers/cli.js";
import { makeShakespeareCache } from "./helpers/train-setup.js";

const CHROMIUM = [process.env.CHROMIUM_PATH, "/usr/bin/chromium", "/usr/bin/chromium-browser"].find(
  (p): p is string => !!p && existsSync(p),
);
if (!CHROMIUM) {
  console.warn(
    "SKIPPED test/report-browser.test.ts: no Chromium found (install Debian's chromium package or set CHROMIUM_PATH)",
  );
}

const CHART_IDS = [
  "chart-loss-step",
  "chart-loss-tokens",
  "chart-lr",
  "chart-grad-norm",
  "chart-tokens-per-s",
];
const HOSTILE = `<script>document.title = "owned"</script><img src=x onerror="document.title='owned'">`;

(CHROMIUM ? describe : describe.skip)("run report page", () => {
  let dir: string;
  let page: string;
  let browser: Browser;

  beforeAll(async () => {
    ensureBuilt();
    dir = mkdtempSync(join(tmpdir(), "sh-report-browser-"));
    const { cache } = await makeShakespeareCache(dir, 60_000);
    const model = join(dir, "model.json");
    writeFileSync(
      model,
      JSON.stringify({ dim: 32, layers: 1, heads: 2, kvHeads: 2, ffn: 64, contextLength: 32 }),
    );
    const runs = ["lr-1e-3", "lr-1e-2"].map((name) => join(dir, name));
    for (const [i, run] of runs.entries()) {
      expectOk(
        await runCli([
          ...["pretrain", "--model", model, "--data", cache, "--out", run, "--steps", "30"],
          ...["--lr", i === 0 ? "1e-3" : "1e-2", "--batch", "2", "--seq", "32", "--threads", "1"],
          ...["--eval-every", "10", "--eval-batches", "1", "--sample-every", "15", "--sample-tokens", "8"],
        ]),
      );
    }
    // a sample whose text is markup that would change the page if it ran
    writeFileSync(
      join(runs[1]!, "samples.jsonl"),
      `${JSON.stringify({ step: 31, prompt: HOSTILE, text: HOSTILE })}\n`,
      {
        flag: "a",
      },
    );
    page = join(dir, "compare.html");
    expectOk(await runCli(["report", ...runs, "--out", page]));
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
  });

  afterAll(async () => {
    await browser?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** Opens the report; returns the page and what went wrong in it (errors, refused resources, dialogs). */
  async function open(options: { width: number; height: number; dark?: boolean }) {
    const context = await browser.newContext({
      viewport: { width: options.width, height: options.height },
      colorScheme: options.dark ? "dark" : "light",
    });
    const p = await context.newPage();
    const problems: string[] = [];
    p.on("pageerror", (e) => problems.push(`error: ${e.message}`));
    // Errors only: a refused script or style (the page's Content-Security-Policy) is one.
    p.on("console", (m) => {
      if (m.type() === "error") problems.push(`console: ${m.text()}`);
    });
    p.on("dialog", (d) => {
      problems.push(`dialog: ${d.message()}`);
      void d.dismiss();
    });
    p.on("request", (r) => {
      if (!r.url().startsWith("file:")) problems.push(`request: ${r.url()}`);
    });
    await p.goto(pathToFileURL(page).href);
    await p.waitForFunction(
      `document.querySelectorAll('.chart[data-drawn="true"]').length === ${CHART_IDS.length}`,
    );
    return { p, problems };
  }

  /**
   * Pixels of the chart's canvas within a small distance of the colour `hex` (a script run in the
   * page: the test's types know no DOM).
   */
  function pixelsOf(p: Page, id: string, hex: string): Promise<number> {
    const [r, g, b] = [1, 3, 5].map((i) => Number.parseInt(hex.slice(i, i + 2), 16));
    return p.evaluate(`(() => {
      const canvas = document.querySelector(${JSON.stringify(`#${id} canvas`)});
      const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
      let n = 0;
      for (let i = 0; i < data.length; i += 4) {
        const d = Math.abs(data[i] - ${r}) + Math.abs(data[i + 1] - ${g}) + Math.abs(data[i + 2] - ${b});
        if (data[i + 3] > 200 && d < 24) n++;
      }
      return n;
    })()`);
  }

  it("draws every chart with both runs' points, and runs nothing from the runs' files", async () => {
    const { p, problems } = await open({ width: 1280, height: 900 });
    const points = await Promise.all(CHART_IDS.map((id) => p.locator(`#${id}`).getAttribute("data-points")));
    // train and validation losses of both runs (30 steps, validation every 10), then one series per run
    expect(points).toEqual(["30,3,30,3", "30,3,30,3", "30,30", "30,30", "30,30"]);
    for (const id of CHART_IDS) {
      for (const color of RUN_COLORS.slice(0, 2))
        expect(await pixelsOf(p, id, color), `${id} ${color}`).toBeGreaterThan(40);
      // no third run's colour: nothing else is drawn in the runs' palette
      expect(await pixelsOf(p, id, RUN_COLORS[2]), id).toBe(0);
    }
    // the legend names each run's series
    const legend = await p.locator("#chart-loss-step .u-legend .u-label").allTextContents();
    expect(legend.slice(1)).toEqual([
      "lr-1e-3 train",
      "lr-1e-3 validation",
      "lr-1e-2 train",
      "lr-1e-2 validation",
    ]);
    // the hostile sample is shown as text, as prompt and reply; it made no element and ran nothing
    const shown = await p.locator("pre.reply").allTextContents();
    expect(shown).toContain(HOSTILE);
    expect(await p.locator("pre.prompt").allTextContents()).toContain(HOSTILE);
    expect(await p.locator("main img, main script").count()).toBe(0);
    expect(await p.title()).not.toBe("owned");
    expect(problems).toEqual([]);
    const shot = join(tmpdir(), `smallhammer-report-${process.pid}.png`);
    await p.screenshot({ path: shot, fullPage: true });
    console.log(`report screenshot: ${shot}`);
  });

  it("fits a phone's width, in dark mode", async () => {
    const { p, problems } = await open({ width: 390, height: 844, dark: true });
    const layout = (await p.evaluate(`({
      page: document.documentElement.scrollWidth,
      charts: [...document.querySelectorAll(".chart canvas")].map((c) => c.getBoundingClientRect().right),
      background: getComputedStyle(document.body).backgroundColor,
      text: getComputedStyle(document.body).color,
    })`)) as { page: number; charts: number[]; background: string; text: string };
    expect(layout.page).toBeLessThanOrEqual(390);
    expect(layout.charts).toHaveLength(CHART_IDS.length);
    for (const right of layout.charts) expect(right).toBeLessThanOrEqual(390);
    // dark background, light text
    const lightness = (rgb: string) => {
      const [r, g, b] = rgb.match(/\d+/g)!.map(Number);
      return (r! + g! + b!) / 3;
    };
    expect(lightness(layout.background)).toBeLessThan(60);
    expect(lightness(layout.text)).toBeGreaterThan(180);
    expect(await pixelsOf(p, "chart-loss-step", RUN_COLORS[0])).toBeGreaterThan(40);
    expect(problems).toEqual([]);
    const shot = join(tmpdir(), `smallhammer-report-phone-${process.pid}.png`);
    await p.screenshot({ path: shot, fullPage: true });
    console.log(`report screenshot (phone, dark): ${shot}`);
  });
});
