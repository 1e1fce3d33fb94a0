/**
 * The web chat page in a real browser: playwright-core drives the system's Chromium (Debian's
 * `chromium` package, which .ci/run installs) against a running server. It types a message,
 * watches the reply stream in, presses Stop, and saves a screenshot (.tmp/serve-chat.png).
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeRandomLlama } from "../src/model/random-llama.js";
import { type RunningServer, startServer } from "../src/serve/server.js";
import { ensureBuilt, ROOT } from "./helpers/cli.js";

const CHROMIUM = [process.env.CHROMIUM_PATH, "/usr/bin/chromium", "/usr/bin/chromium-browser"].find(
  (p): p is string => !!p && existsSync(p),
);
if (!CHROMIUM) {
  console.warn(
    "SKIPPED test/serve-browser.test.ts: no Chromium found (install Debian's chromium package or set CHROMIUM_PATH)",
  );
}

(CHROMIUM ? describe : describe.skip)("web chat page", () => {
  let dir: string;
  let model: string;
  let browser: Browser;
  const servers: RunningServer[] = [];

  beforeAll(async () => {
    ensureBuilt();
    dir = mkdtempSync(join(tmpdir(), "sh-browser-"));
    model = join(dir, "page-model.gguf");
    writeRandomLlama(
      model,
      { name: "page", dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 192, vocab: 32000, contextLength: 4096 },
      "f32",
    );
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
  });

  afterAll(async () => {
    await browser?.close();
    for (const s of servers) await s.close(0);
    rmSync(dir, { recursive: true, force: true });
  });

  async function serve(apiKey?: string): Promise<RunningServer> {
    const s = await startServer({
      model,
      port: 0,
      apiKey,
      parallel: 2,
      contextSize: 4096,
      template: "chatml",
      threads: 2,
    });
    servers.push(s);
    await s.ready;
    return s;
  }

  const assistant = (page: Page) => page.locator(".message.assistant").last();

  it("streams a reply, stops it, starts a new chat", async () => {
    const server = await serve();
    const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    const bodies: Record<string, unknown>[] = [];
    page.on("request", (r) => {
      if (r.url().endsWith("/v1/chat/completions")) bodies.push(r.postDataJSON());
    });
    await page.goto(server.url);
    await expect.poll(() => page.locator("#model").textContent()).toBe("page-model");

    await page.fill("#system", "You are terse.");
    await page.locator("#temperature").fill("0.5");
    await page.fill("#max-tokens", "3500");
    await page.fill("#prompt", "Tell me everything.");
    await page.press("#prompt", "Enter");

    // Text appears and keeps growing while the reply streams.
    const reply = assistant(page);
    await expect.poll(() => reply.getAttribute("data-state")).toBe("streaming");
    const shown = async () => ((await reply.locator(".content").textContent()) ?? "").length;
    await expect.poll(shown, { timeout: 30_000 }).toBeGreaterThan(0);
    const early = await shown();
    await expect.poll(shown, { timeout: 30_000 }).toBeGreaterThan(early);
    expect(await page.locator("#stop").isVisible()).toBe(true);
    expect(await page.locator("#send").isVisible()).toBe(false);

    await page.click("#stop");
    await expect.poll(() => reply.getAttribute("data-state")).toBe("stopped");
    const stoppedText = (await reply.locator(".content").textContent())!;
    expect(stoppedText.length).toBeGreaterThan(early);
    expect(await reply.locator(".note").textContent()).toBe("(stopped)");
    expect(await page.locator("#send").isVisible()).toBe(true);
    // The server cancelled the generation when the page hung up.
    await expect.poll(() => server.stats().busy).toBe(0);
    mkdirSync(join(ROOT, ".tmp"), { recursive: true });
    await page.screenshot({ path: join(ROOT, ".tmp", "serve-chat.png"), fullPage: true });
    expect(await reply.locator(".content").textContent()).toBe(stoppedText);

    expect(bodies).toHaveLength(1);
    expect(bodies[0]).toMatchObject({
      model: "page-model",
      stream: true,
      temperature: 0.5,
      max_tokens: 3500,
      messages: [
        { role: "system", content: "You are terse." },
        { role: "user", content: "Tell me everything." },
      ],
    });

    // The conversation goes on from the stopped reply; then a new chat starts empty.
    await page.fill("#max-tokens", "5");
    await page.fill("#prompt", "And then?");
    await page.click("#send");
    await expect.poll(() => assistant(page).getAttribute("data-state")).toBe("done");
    expect(bodies[1]!.messages).toEqual([
      { role: "system", content: "You are terse." },
      { role: "user", content: "Tell me everything." },
      { role: "assistant", content: stoppedText },
      { role: "user", content: "And then?" },
    ]);
    await page.click("#new-chat");
    expect(await page.locator(".message").count()).toBe(0);
    expect(errors).toEqual([]);
    await page.close();
  });

  it("asks for the API key when the server needs one, then works with it", async () => {
    const server = await serve("page-key");
    const page = await browser.newPage();
    await page.goto(server.url);
    await expect.poll(() => page.locator("#model").textContent()).toBe("API key needed");
    await page.fill("#api-key", "page-key");
    await page.locator("#api-key").dispatchEvent("change");
    await expect.poll(() => page.locator("#model").textContent()).toBe("page-model");
    await page.fill("#max-tokens", "4");
    await page.fill("#prompt", "hi");
    await page.click("#send");
    await expect.poll(() => assistant(page).getAttribute("data-state")).toBe("done");
    expect((await assistant(page).locator(".content").textContent())!.length).toBeGreaterThan(0);
    await page.close();
  });
});
