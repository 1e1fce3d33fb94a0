/**
 * The web chat page in a real browser: playwright-core drives the system's Chromium (Debian's
 * `chromium` package, which .ci/run installs) against a running server. It types a message,
 * watches the reply stream in, presses Stop, and saves a screenshot (.tmp/serve-chat.png). On a
 * model with a 256-token context (the quickstart's size), the first message gets a reply on a
 * phone-sized and a desktop-sized window, and a long conversation goes on with its oldest turns
 * left out. A page on another origin can neither use the API nor make it generate, unless the
 * server names that origin with --cors.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
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
  let smallModel: string;
  let browser: Browser;
  const servers: RunningServer[] = [];

  beforeAll(async () => {
    ensureBuilt();
    if (!existsSync(join(ROOT, "build", "public", "vendor", "marked.esm.js"))) {
      execFileSync("npm", ["run", "build:page"], { cwd: ROOT, stdio: "ignore" });
    }
    dir = mkdtempSync(join(tmpdir(), "sh-browser-"));
    model = join(dir, "page-model.gguf");
    writeRandomLlama(
      model,
      { name: "page", dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 192, vocab: 32000, contextLength: 4096 },
      "f32",
    );
    smallModel = join(dir, "small-model.gguf");
    writeRandomLlama(
      smallModel,
      { name: "small", dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 192, vocab: 32000, contextLength: 256 },
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

  /** A server on the 256-token model, with the context size the file gives. */
  async function serveSmall(cors?: string[]): Promise<RunningServer> {
    const s = await startServer({
      model: smallModel,
      port: 0,
      parallel: 2,
      template: "chatml",
      threads: 2,
      cors,
    });
    servers.push(s);
    await s.ready;
    return s;
  }

  /** Opens the page; collects page errors and the bodies of chat requests. */
  async function openPage(server: RunningServer, viewport: { width: number; height: number }) {
    const page = await browser.newPage({ viewport });
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    const bodies: { messages: { role: string; content: string }[]; max_tokens?: number }[] = [];
    page.on("request", (r) => {
      if (r.url().endsWith("/v1/chat/completions")) bodies.push(r.postDataJSON());
    });
    await page.goto(server.url);
    return { page, errors, bodies };
  }

  /** The tokens of the context the page says the conversation takes. */
  async function contextUsed(page: Page): Promise<number> {
    const m = /^context used: (\d+) \/ 256$/.exec((await page.locator("#context").textContent()) ?? "");
    expect(m, "the page shows the context used").not.toBeNull();
    return Number(m![1]);
  }

  /** Sends a message with the Send button and waits until its reply is done. */
  async function say(page: Page, text: string) {
    const before = await page.locator(".message.assistant").count();
    await page.fill("#prompt", text);
    await page.click("#send");
    await expect.poll(() => page.locator(".message.assistant").count()).toBe(before + 1);
    await expect.poll(() => assistant(page).getAttribute("data-state"), { timeout: 60_000 }).toBe("done");
    return (await assistant(page).locator(".content").textContent()) ?? "";
  }

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
    // Greedy: the same reply on every run, one that is still streaming when Stop is clicked (a
    // sampled reply could reach its end first and race the click).
    await page.locator("#temperature").fill("0");
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
    // What is shown is the reply rendered as markdown; the text itself goes with the next request.
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
      temperature: 0,
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
      { role: "assistant", content: expect.any(String) },
      { role: "user", content: "And then?" },
    ]);
    expect((bodies[1]!.messages as { content: string }[])[2]!.content.trim().length).toBeGreaterThan(0);
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

  for (const viewport of [
    { width: 390, height: 844 },
    { width: 1280, height: 800 },
  ]) {
    it(`the first message on a 256-token model streams a reply (${viewport.width}×${viewport.height})`, async () => {
      const server = await serveSmall();
      const { page, errors, bodies } = await openPage(server, viewport);
      await expect.poll(() => page.locator("#model").textContent()).toBe("small-model");
      await expect.poll(() => page.locator("#context").textContent()).toBe("context used: 0 / 256");
      // No reply limit unless one is set: the reply may run to the end of the context.
      expect(await page.inputValue("#max-tokens")).toBe("");
      // Everything needed to talk is on screen, with nothing wider than the window.
      for (const id of ["#prompt", "#send", "#context"]) {
        const box = (await page.locator(id).boundingBox())!;
        expect(box.x >= 0 && box.x + box.width <= viewport.width, `${id} within the width`).toBe(true);
        expect(box.y >= 0 && box.y + box.height <= viewport.height, `${id} within the height`).toBe(true);
      }
      expect(await page.evaluate("document.documentElement.scrollWidth")).toBeLessThanOrEqual(viewport.width);

      await page.fill("#prompt", "Hello! Who are you?");
      await page.click("#send");
      const reply = assistant(page);
      const shown = async () => ((await reply.locator(".content").textContent()) ?? "").length;
      await expect.poll(shown, { timeout: 30_000 }).toBeGreaterThan(0);
      await expect.poll(() => reply.getAttribute("data-state"), { timeout: 60_000 }).toBe("done");
      expect(await reply.getAttribute("class")).not.toMatch(/error/);
      expect(await shown()).toBeGreaterThan(0);
      expect(bodies).toHaveLength(1);
      expect(bodies[0]!.max_tokens).toBeUndefined();
      expect(bodies[0]!.messages).toEqual([{ role: "user", content: "Hello! Who are you?" }]);
      const used = await contextUsed(page);
      expect(used).toBeGreaterThan(0);
      expect(used).toBeLessThanOrEqual(256);
      if (used === 256)
        expect(await reply.locator(".note").textContent()).toBe("(stopped: the context is full)");
      await page.screenshot({ path: join(ROOT, ".tmp", `serve-chat-${viewport.width}.png`), fullPage: true });
      expect(errors).toEqual([]);
      await page.close();
    });
  }

  it("a long conversation on a 256-token model goes on, its oldest turns left out", async () => {
    const server = await serveSmall();
    const { page, errors, bodies } = await openPage(server, { width: 1100, height: 700 });
    await expect.poll(() => page.locator("#context").textContent()).toBe("context used: 0 / 256");
    await page.fill("#system", "You are terse.");
    // Short replies first, so that the conversation grows turn by turn.
    await page.fill("#max-tokens", "20");
    const said: string[] = [];
    for (let turn = 0; turn < 8; turn++) {
      const text = `Turn ${turn}: tell me about the world and the hello, and then some more.`;
      said.push(text);
      expect((await say(page, text)).length, `reply ${turn}`).toBeGreaterThan(0);
      expect(await contextUsed(page)).toBeLessThanOrEqual(256);
    }
    // Then replies with no limit, which fill the context each time.
    await page.fill("#max-tokens", "");
    for (let turn = 8; turn < 11; turn++) {
      const text = `Turn ${turn}: and now a long story, please.`;
      said.push(text);
      expect((await say(page, text)).length, `reply ${turn}`).toBeGreaterThan(0);
    }
    expect(await page.locator(".message.error").count()).toBe(0);
    expect(bodies).toHaveLength(11);
    for (const [i, body] of bodies.entries()) {
      // The system prompt is always sent, then whole turns, ending with the newest message.
      expect(body.messages[0]).toEqual({ role: "system", content: "You are terse." });
      expect(body.messages.at(-1)).toEqual({ role: "user", content: said[i] });
      expect(body.messages[1]!.role).toBe("user");
    }
    // Old turns were left out, and the page shows them faded.
    const firstSent = bodies.map((b) => b.messages[1]!.content);
    expect(firstSent.at(-1)).not.toBe(said[0]);
    expect(bodies.some((b, i) => i > 0 && b.messages.length < 2 * i + 2)).toBe(true);
    expect(await page.locator(".message.dropped").count()).toBeGreaterThan(0);
    expect(await page.locator("#status").textContent()).toMatch(/no longer fit the context of 256 tokens/);
    // New chat: nothing taken.
    await page.click("#new-chat");
    expect(await page.locator("#context").textContent()).toBe("context used: 0 / 256");
    expect(errors).toEqual([]);
    await page.close();
  });

  it("a page on another origin cannot use the API, unless --cors names it", async () => {
    // Another site, as far as the browser can tell: another origin on this machine.
    const site = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/html" });
      res.end("<!doctype html><title>another site</title>");
    });
    await new Promise<void>((resolve) => site.listen(0, "127.0.0.1", resolve));
    const siteOrigin = `http://localhost:${(site.address() as AddressInfo).port}`;
    const generations = async (s: RunningServer) =>
      ((await (await fetch(`${s.url}/health`)).json()) as { generations: { finished: number } }).generations;
    /** What the page gets from a "simple" cross-origin POST (text/plain) and from a JSON one. */
    const tryFromSite = async (s: RunningServer) => {
      const page = await browser.newPage();
      await page.goto(siteOrigin);
      const result = await page.evaluate(async (url) => {
        const body = JSON.stringify({ model: "small-model", prompt: "hi", max_tokens: 2 });
        const out: string[] = [];
        try {
          // Sent without asking first; the page may not read the answer.
          await fetch(`${url}/v1/completions`, { method: "POST", mode: "no-cors", body });
          out.push("sent");
        } catch {
          out.push("failed");
        }
        try {
          const r = await fetch(`${url}/v1/completions`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body,
          });
          out.push(`${r.status} ${((await r.json()) as { object?: string }).object ?? ""}`);
        } catch {
          out.push("blocked");
        }
        return out;
      }, s.url);
      await page.close();
      return result;
    };
    try {
      const closed = await serveSmall();
      const before = await generations(closed);
      expect(await tryFromSite(closed)).toEqual(["sent", "blocked"]);
      // The request the browser did send ran nothing.
      expect(await generations(closed)).toEqual(before);

      const open = await serveSmall([siteOrigin]);
      const result = await tryFromSite(open);
      expect(result[1]).toBe("200 text_completion");
      expect((await generations(open)).finished).toBeGreaterThan(0);
    } finally {
      site.close();
    }
  });
});
