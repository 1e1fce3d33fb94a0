/**
 * The chat page as a user of a chat web UI sees it, in Debian's Chromium (playwright-core):
 * markdown replies (tables, lists, highlighted code with a copy button, the model's HTML shown as
 * text and never run), rendered as they stream with the blocks already written kept as they are;
 * Escape stopping a reply; conversations and settings kept across a reload (rename, search,
 * delete, export and import); regenerate and edit; dark mode; the phone layout; and axe-core's
 * accessibility rules.
 *
 * A random-weight model writes noise, so the markdown tests put a proxy in front of a real server:
 * it passes everything through (the page, /props, /tokenize) but answers the chat completions
 * with a scripted stream whose pace the test holds and releases. The other tests talk to the real
 * server. Screenshots are saved in the system's temporary folder; their paths are printed.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
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
    "SKIPPED test/serve-page.test.ts: no Chromium found (install Debian's chromium package or set CHROMIUM_PATH)",
  );
}

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const SHOTS = mkdtempSync(join(tmpdir(), "smallhammer-chat-"));

const CODE = 'def greet(name):\n    return f"Hello, {name}!"';
/** A reply in markdown, in the pieces it streams in; the test holds the stream at each gate. */
const INTRO = "Here is a **table** of languages:\n\n| Language | Typing |\n| --- | --- |\n| Type";
const TABLE_END = "Script | static |\n| Python | dynamic |\n\nAnd some ";
const CODE_PART = `code:\n\n\`\`\`python\n${CODE.slice(0, 20)}`;
const REST = [
  `${CODE.slice(20)}\n\`\`\`\n\n`,
  "- first item\n- second item with `inline code`\n\n",
  '<script>window.injected = 1</script><img src="x" onerror="window.injected = 2">\n\n',
  'Inline <b onmouseover="window.injected = 3">bold</b> and [a link](javascript:window.injected=4).',
];

/** A scripted answer to one chat completion: text pieces, and gates the test opens. */
class Script {
  readonly parts: (string | Promise<void>)[] = [];
  /** Resolves when the page hangs up (Stop, Escape) before the script ends. */
  hungUp: Promise<void>;
  private onHangUp!: () => void;

  constructor() {
    this.hungUp = new Promise((resolve) => {
      this.onHangUp = resolve;
    });
  }

  say(...texts: string[]): this {
    this.parts.push(...texts);
    return this;
  }

  /** A point where the stream waits; the function returned lets it go on. */
  gate(): () => void {
    let open!: () => void;
    this.parts.push(
      new Promise<void>((resolve) => {
        open = resolve;
      }),
    );
    return open;
  }

  async answer(res: ServerResponse): Promise<void> {
    let ended = false;
    res.on("close", () => {
      if (!ended) this.onHangUp();
    });
    res.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache" });
    const event = (data: unknown) => res.write(`data: ${JSON.stringify(data)}\n\n`);
    const chunk = (delta: object, finish: string | null) =>
      event({
        id: "chatcmpl-scripted",
        object: "chat.completion.chunk",
        created: 0,
        model: "page-model",
        choices: [{ index: 0, delta, finish_reason: finish }],
      });
    chunk({ role: "assistant", content: "" }, null);
    let pieces = 0;
    for (const part of this.parts) {
      if (typeof part === "string") {
        chunk({ content: part }, null);
        pieces++;
      } else await part;
      if (res.destroyed) return;
    }
    chunk({}, "stop");
    event({
      id: "chatcmpl-scripted",
      object: "chat.completion.chunk",
      created: 0,
      model: "page-model",
      choices: [],
      usage: { prompt_tokens: 30, completion_tokens: pieces, total_tokens: 30 + pieces },
    });
    res.write("data: [DONE]\n\n");
    ended = true;
    res.end();
  }
}

async function bodyOf(req: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of req) parts.push(part as Buffer);
  return Buffer.concat(parts);
}

/** A server on 127.0.0.1 that forwards to `target`, answering chat completions with `scripts` in turn. */
async function scriptedProxy(target: string) {
  const scripts: Script[] = [];
  const requests: { messages: { role: string; content: string }[] }[] = [];
  const server: Server = createServer(async (req, res) => {
    const body = await bodyOf(req);
    if (req.method === "POST" && req.url === "/v1/chat/completions") {
      requests.push(JSON.parse(body.toString()));
      const script = scripts.shift();
      if (!script) {
        res.writeHead(500).end("no script");
        return;
      }
      await script.answer(res);
      return;
    }
    const headers: Record<string, string> = {};
    for (const name of ["content-type", "authorization"]) {
      const value = req.headers[name];
      if (typeof value === "string") headers[name] = value;
    }
    const answer = await fetch(target + req.url, {
      method: req.method,
      headers,
      body: req.method === "GET" || req.method === "HEAD" ? undefined : body,
    });
    const out: Record<string, string> = {};
    answer.headers.forEach((value, name) => {
      if (!["transfer-encoding", "connection", "keep-alive", "content-length"].includes(name))
        out[name] = value;
    });
    res.writeHead(answer.status, out).end(Buffer.from(await answer.arrayBuffer()));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, scripts, requests, close: () => new Promise((resolve) => server.close(resolve)) };
}

(CHROMIUM ? describe : describe.skip)("chat page features", () => {
  let dir: string;
  let model: string;
  let browser: Browser;
  let server: RunningServer;
  let proxy: Awaited<ReturnType<typeof scriptedProxy>>;
  const axeSource = readFileSync(join(ROOT, "node_modules", "axe-core", "axe.min.js"), "utf8");

  beforeAll(async () => {
    ensureBuilt();
    if (!existsSync(join(ROOT, "build", "public", "vendor", "marked.esm.js"))) {
      execFileSync("npm", ["run", "build:page"], { cwd: ROOT, stdio: "ignore" });
    }
    dir = mkdtempSync(join(tmpdir(), "sh-page-"));
    model = join(dir, "page-model.gguf");
    writeRandomLlama(
      model,
      { name: "page", dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 192, vocab: 32000, contextLength: 4096 },
      "f32",
    );
    server = await startServer({
      model,
      port: 0,
      parallel: 2,
      contextSize: 4096,
      template: "chatml",
      threads: 2,
    });
    await server.ready;
    proxy = await scriptedProxy(server.url);
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
    console.log(`chat page screenshots: ${SHOTS}`);
  });

  afterAll(async () => {
    await browser?.close();
    await proxy?.close();
    await server?.close(0);
    rmSync(dir, { recursive: true, force: true });
  });

  /** A page in a fresh browser profile; page errors and console errors are collected. */
  async function open(url: string, options: Parameters<Browser["newContext"]>[0] = {}) {
    const context = await browser.newContext({ viewport: DESKTOP, ...options });
    const page = await context.newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    const bodies: {
      messages: { role: string; content: string }[];
      max_tokens?: number;
      temperature?: number;
    }[] = [];
    page.on("request", (r) => {
      if (r.url().endsWith("/v1/chat/completions")) bodies.push(r.postDataJSON());
    });
    await page.goto(url);
    await expect.poll(() => page.locator("#model").textContent()).toBe("page-model");
    return { context, page, errors, bodies };
  }

  async function shot(page: Page, name: string) {
    const path = join(SHOTS, `${name}-${page.viewportSize()!.width}.png`);
    await page.screenshot({ path });
    console.log(`screenshot: ${path}`);
    return path;
  }

  /**
   * axe-core's violations of impact serious or critical on the page as it is now. Its script is
   * added as one of the page's own (the route answers it), so the page's Content-Security-Policy
   * stays as the server sends it.
   */
  async function axeProblems(page: Page) {
    if (!(await page.evaluate("typeof window.axe !== 'undefined'"))) {
      await page.route("**/axe-core/axe.min.js", (route) =>
        route.fulfill({ body: axeSource, contentType: "text/javascript" }),
      );
      await page.addScriptTag({ url: new URL("/axe-core/axe.min.js", page.url()).href });
    }
    const violations = (await page.evaluate(
      "window.axe.run(document).then((r) => r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')) })))",
    )) as { id: string; impact: string; nodes: string[] }[];
    return violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  }

  const reply = (page: Page) => page.locator(".message.assistant").last();

  async function sendAndWait(page: Page, text: string) {
    const before = await page.locator(".message.assistant").count();
    await page.fill("#prompt", text);
    await page.press("#prompt", "Enter");
    await expect.poll(() => page.locator(".message.assistant").count()).toBe(before + 1);
    await expect.poll(() => reply(page).getAttribute("data-state"), { timeout: 60_000 }).toBe("done");
  }

  for (const viewport of [DESKTOP, PHONE]) {
    it(`renders a streamed markdown reply safely, block by block (${viewport.width}×${viewport.height})`, async () => {
      const script = new Script();
      script.say(INTRO);
      const afterIntro = script.gate();
      script.say(TABLE_END, CODE_PART);
      const afterCode = script.gate();
      script.say(...REST);
      proxy.scripts.push(script);
      // Without the page's Content-Security-Policy: the markdown itself must keep the HTML inert.
      const { context, page, errors } = await open(proxy.url, { viewport, bypassCSP: true });
      await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: proxy.url });
      await shot(page, "empty");
      expect(await axeProblems(page)).toEqual([]);

      await page.fill("#prompt", "Show me some markdown.");
      await page.press("#prompt", "Enter");
      const content = reply(page).locator(".content");
      await expect.poll(() => content.locator("strong").textContent()).toBe("table");
      expect(await reply(page).getAttribute("data-state")).toBe("streaming");
      // The reply being written is the one live region; the message list is not one.
      const live = await page.evaluate(
        '[...document.querySelectorAll("[aria-live]")].map((el) => [el.getAttribute("aria-live"), !!el.closest(".message.assistant[data-state=streaming]")])',
      );
      expect(live).toEqual([["polite", true]]);
      expect(await page.locator("#messages").getAttribute("aria-live")).toBeNull();
      expect(await page.locator("#messages [role=log], #messages[role=log]").count()).toBe(0);

      afterIntro();
      await expect.poll(() => content.locator("pre code").count()).toBe(1);
      // The table, closed by a blank line, is rendered once and kept while the reply goes on.
      expect(await content.locator("table tbody tr").count()).toBe(2);
      await content.locator("table").evaluate((t) => {
        t.dataset.kept = "yes";
      });
      await shot(page, "streaming");
      afterCode();
      await expect.poll(() => reply(page).getAttribute("data-state")).toBe("done");
      expect(await content.locator("table").getAttribute("data-kept")).toBe("yes");

      // A table, a list, and code highlighted as Python in a monospace font.
      expect(await content.locator("th").allTextContents()).toEqual(["Language", "Typing"]);
      expect(await content.locator("tbody td").allTextContents()).toEqual([
        "TypeScript",
        "static",
        "Python",
        "dynamic",
      ]);
      expect(await content.locator("ul > li").allTextContents()).toEqual([
        "first item",
        "second item with inline code",
      ]);
      const code = content.locator("pre code");
      expect(await code.textContent()).toBe(CODE);
      expect(await code.locator(".hljs-keyword").first().textContent()).toBe("def");
      expect(
        await page.evaluate(
          'getComputedStyle(document.querySelector(".message.assistant:last-child pre code")).fontFamily',
        ),
      ).toMatch(/mono/i);
      // The model's HTML is shown as text, and none of it runs.
      expect(await content.locator("script, img, b, [onerror], [onmouseover]").count()).toBe(0);
      expect(await content.textContent()).toContain('<script>window.injected = 1</script><img src="x"');
      await content.getByText("bold").hover();
      const link = content.locator("a", { hasText: "a link" });
      expect(await link.getAttribute("href")).toBeNull();
      await link.click();
      expect(await page.evaluate("window.injected")).toBeUndefined();
      // The figures of the reply: tokens, speed, context.
      expect(await reply(page).locator(".stats").textContent()).toMatch(
        /^\d+ tokens( · [\d.]+ tokens\/s)? · context \d+ \/ 4096$/,
      );

      // The copy button puts the code, exactly, on the clipboard.
      await content.locator(".copy-code").click();
      await expect.poll(() => content.locator(".copy-code").textContent()).toBe("Copied");
      expect(await page.evaluate("navigator.clipboard.readText()")).toBe(CODE);

      await content.locator("pre").scrollIntoViewIfNeeded();
      await shot(page, "markdown");
      expect(await axeProblems(page)).toEqual([]);
      expect(errors).toEqual([]);
      await context.close();
    });
  }

  it("Escape stops a reply; the server sees the page hang up", async () => {
    const script = new Script();
    script.say("Counting: one, ", "two, ", "three, ");
    script.gate(); // never opened: the reply goes on until the page stops it
    proxy.scripts.push(script);
    const { context, page, errors, bodies } = await open(proxy.url);
    await page.fill("#prompt", "Count for ever.");
    await page.press("#prompt", "Enter");
    await expect
      .poll(() => reply(page).locator(".content").textContent())
      .toMatch(/^Counting: one, two, three,\s*$/);
    expect(await page.locator("#stop").isVisible()).toBe(true);
    // Focus is still in the composer; Escape there stops the reply.
    await page.keyboard.press("Escape");
    await expect.poll(() => reply(page).getAttribute("data-state")).toBe("stopped");
    await script.hungUp;
    expect(await reply(page).locator(".note").textContent()).toBe("(stopped)");
    expect(await page.locator("#send").isVisible()).toBe(true);
    // The conversation goes on from what was written.
    proxy.scripts.push(new Script().say("Four."));
    await sendAndWait(page, "Go on.");
    expect(bodies[1]!.messages).toEqual([
      { role: "user", content: "Count for ever." },
      { role: "assistant", content: "Counting: one, two, three, " },
      { role: "user", content: "Go on." },
    ]);
    expect(errors).toEqual([]);
    await context.close();
  });

  it("keeps conversations and settings across a reload: rename, search, delete, export, import", async () => {
    const { context, page, errors, bodies } = await open(server.url);
    await page.fill("#system", "You are terse.");
    await page.locator("#temperature").fill("0.3");
    await page.fill("#max-tokens", "6");
    await sendAndWait(page, "First question about rivers");
    await page.click("#new-chat");
    await sendAndWait(page, "Second question about mountains");
    await sendAndWait(page, "And a follow-up");
    expect(bodies[2]!.messages.map((m) => m.content).slice(0, 2)).toEqual([
      "You are terse.",
      "Second question about mountains",
    ]);
    const replies = await page.locator(".message.assistant .content").allTextContents();

    await page.reload();
    await expect.poll(() => page.locator("#model").textContent()).toBe("page-model");
    await expect.poll(() => page.locator(".message").count()).toBe(4);
    // Everything below is restored from IndexedDB asynchronously after the reload: polled.
    await expect
      .poll(() => page.locator(".message.user .content").allTextContents())
      .toEqual(["Second question about mountains", "And a follow-up"]);
    await expect.poll(() => page.locator(".message.assistant .content").allTextContents()).toEqual(replies);
    await expect.poll(() => page.inputValue("#system")).toBe("You are terse.");
    await expect.poll(() => page.inputValue("#temperature")).toBe("0.3");
    await expect.poll(() => page.inputValue("#max-tokens")).toBe("6");
    await expect
      .poll(() => page.locator(".message.assistant .stats").first().textContent())
      .toMatch(/^\d+ tokens?( · [\d.]+ tokens\/s)? · context \d+ \/ 4096$/);
    const titles = () => page.locator("#conversations .open").allTextContents();
    await expect.poll(titles).toEqual(["Second question about mountains", "First question about rivers"]);
    await expect
      .poll(() => page.locator("#conversations .current .open").textContent())
      .toBe("Second question about mountains");
    // The conversation goes on after the reload, with its whole history and the settings kept.
    await sendAndWait(page, "One more");
    const sent = bodies.at(-1)!.messages;
    expect(sent.slice(0, 4)).toEqual(bodies[2]!.messages.slice(0, 4));
    expect(sent.map((m) => m.role)).toEqual(["system", "user", "assistant", "user", "assistant", "user"]);
    expect(sent[4]!.content.length).toBeGreaterThan(0);
    expect(sent[5]!.content).toBe("One more");
    expect(bodies.at(-1)!.temperature).toBe(0.3);
    expect(bodies.at(-1)!.max_tokens).toBe(6);

    // Rename with the keyboard, then search by title.
    await page.getByRole("button", { name: "Rename “First question about rivers”" }).click();
    await page.keyboard.press("ControlOrMeta+a");
    await page.keyboard.type("Rivers of Europe");
    await page.keyboard.press("Enter");
    await expect.poll(titles).toEqual(["Rivers of Europe", "Second question about mountains"]);
    await page.fill("#search", "europe");
    await expect.poll(titles).toEqual(["Rivers of Europe"]);
    await page.fill("#search", "");
    await shot(page, "conversations");

    // Export the current conversation as JSON; delete it; import it back.
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#export")]);
    const exported = JSON.parse(readFileSync((await download.path())!, "utf8"));
    expect(exported.title).toBe("Second question about mountains");
    expect(exported.messages.map((m: { role: string }) => m.role)).toEqual([
      "user",
      "assistant",
      "user",
      "assistant",
      "user",
      "assistant",
    ]);
    expect(exported.messages[0].content).toBe("Second question about mountains");
    page.once("dialog", (d) => d.accept());
    await page.getByRole("button", { name: "Delete “Second question about mountains”" }).click();
    await expect.poll(titles).toEqual(["Rivers of Europe"]);
    await expect.poll(() => page.locator(".message").count()).toBe(0);
    await page.setInputFiles("#import-file", {
      name: "mountains.json",
      mimeType: "application/json",
      buffer: Buffer.from(JSON.stringify(exported)),
    });
    await expect.poll(titles).toEqual(["Second question about mountains", "Rivers of Europe"]);
    // The imported conversation opens after the list shows it: polled.
    await expect.poll(() => page.locator(".message").count()).toBe(6);
    await expect
      .poll(() => page.locator("#status").textContent())
      .toBe("Imported “Second question about mountains”.");
    await page.reload();
    await expect.poll(titles).toEqual(["Second question about mountains", "Rivers of Europe"]);
    await page.click("#conversations .open >> text=Rivers of Europe");
    await expect
      .poll(() => page.locator(".message.user .content").allTextContents())
      .toEqual(["First question about rivers"]);

    // On a phone the list is in a drawer the menu button opens; Escape closes it.
    await page.setViewportSize(PHONE);
    await expect.poll(() => page.locator("#sidebar").isVisible()).toBe(false);
    await page.click("#menu");
    await expect.poll(() => page.locator("#search").isVisible()).toBe(true);
    expect(await page.locator("#menu").getAttribute("aria-expanded")).toBe("true");
    await page.waitForTimeout(300); // the drawer's slide, for the screenshot
    await shot(page, "conversations");
    expect(await axeProblems(page)).toEqual([]);
    await page.keyboard.press("Escape");
    await expect.poll(() => page.locator("#sidebar").isVisible()).toBe(false);
    expect(await page.evaluate("document.activeElement?.id")).toBe("menu");
    expect(errors).toEqual([]);
    await context.close();
  });

  it("regenerates the last reply, and edits a message to go on from there", async () => {
    const { context, page, errors, bodies } = await open(server.url);
    await page.fill("#max-tokens", "4");
    await sendAndWait(page, "Name a colour.");
    await sendAndWait(page, "Another one.");
    await reply(page).getByRole("button", { name: "Regenerate this reply" }).click();
    await expect.poll(() => bodies.length).toBe(3);
    await expect.poll(() => reply(page).getAttribute("data-state"), { timeout: 60_000 }).toBe("done");
    expect(bodies[2]!.messages).toEqual(bodies[1]!.messages);
    expect(await page.locator(".message.assistant").count()).toBe(2);
    // Only the last reply can be regenerated.
    expect(await page.getByRole("button", { name: "Regenerate this reply" }).count()).toBe(1);

    // Edit the first message: what came after it goes, and the reply is asked for again.
    await page.locator(".message.user").first().getByRole("button", { name: "Edit this message" }).click();
    const editor = page.getByRole("textbox", { name: "Edit the message" });
    expect(await editor.inputValue()).toBe("Name a colour.");
    await editor.fill("Name a fruit.");
    await editor.press("Enter");
    await expect.poll(() => bodies.length).toBe(4);
    await expect.poll(() => reply(page).getAttribute("data-state"), { timeout: 60_000 }).toBe("done");
    expect(bodies[3]!.messages).toEqual([{ role: "user", content: "Name a fruit." }]);
    expect(await page.locator(".message.user .content").allTextContents()).toEqual(["Name a fruit."]);
    expect(await page.locator(".message.assistant").count()).toBe(1);
    expect(await page.locator("#conversations .current .open").textContent()).toBe("Name a fruit.");
    expect(errors).toEqual([]);
    await context.close();
  });

  /** The relative luminance of the page's background. */
  async function backgroundLuminance(page: Page): Promise<number> {
    const color = (await page.evaluate(
      "getComputedStyle(document.documentElement).backgroundColor",
    )) as string;
    const [r, g, b] = color
      .match(/\d+/g)!
      .map((v) => Number(v) / 255)
      .map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4));
    return 0.2126 * r! + 0.7152 * g! + 0.0722 * b!;
  }

  it("follows the system's dark mode, with a toggle that is kept", async () => {
    const script = new Script().say(INTRO, TABLE_END, CODE_PART, ...REST);
    proxy.scripts.push(script);
    const { context, page, errors } = await open(proxy.url, { colorScheme: "dark" });
    expect(await backgroundLuminance(page)).toBeLessThan(0.05);
    await sendAndWait(page, "Markdown in the dark, please.");
    await shot(page, "dark");
    expect(await axeProblems(page)).toEqual([]);

    // The toggle goes light, then dark, then back to the system's; the choice outlives a reload.
    const theme = page.locator("#theme");
    expect(await theme.getAttribute("aria-label")).toBe("Colour scheme: as the system's (switch to light)");
    await theme.click();
    expect(await backgroundLuminance(page)).toBeGreaterThan(0.8);
    expect(await axeProblems(page)).toEqual([]);
    await page.reload();
    await expect.poll(() => page.locator(".message").count()).toBe(2);
    expect(await backgroundLuminance(page)).toBeGreaterThan(0.8);
    await theme.click();
    expect(await theme.getAttribute("aria-label")).toBe("Colour scheme: dark (switch to as the system's)");
    await page.emulateMedia({ colorScheme: "light" });
    expect(await backgroundLuminance(page)).toBeLessThan(0.05);
    await theme.click();
    expect(await backgroundLuminance(page)).toBeGreaterThan(0.8);
    expect(errors).toEqual([]);
    await context.close();
  });

  it("on a phone: the header stays, the composer is always on screen, settings are in a drawer", async () => {
    const long = Array.from({ length: 60 }, (_, i) => `${i + 1}. a line of the reply\n`);
    proxy.scripts.push(new Script().say(...long));
    const { context, page, errors } = await open(proxy.url, { viewport: PHONE, hasTouch: true });
    // Nothing but the conversation and the composer take the empty screen.
    expect(await page.locator("#system").isVisible()).toBe(false);
    expect(await page.locator("#api-key").isVisible()).toBe(false);
    await sendAndWait(page, "A long answer, please.");
    // The list scrolled to the end of the reply; the page itself did not scroll.
    expect(await page.evaluate("document.scrollingElement.scrollTop")).toBe(0);
    for (const id of ["#menu", "#new-chat", "#context", "#prompt", "#send"]) {
      const box = (await page.locator(id).boundingBox())!;
      expect(box.y >= 0 && box.y + box.height <= PHONE.height, `${id} on screen`).toBe(true);
      expect(box.x >= 0 && box.x + box.width <= PHONE.width, `${id} within the width`).toBe(true);
    }
    expect((await page.locator("header").boundingBox())!.y).toBe(0);
    const messages = (await page.locator("#messages").boundingBox())!;
    expect(messages.height).toBeGreaterThan(PHONE.height / 2);
    expect(await page.locator("#messages").evaluate((m) => m.scrollTop > 0)).toBe(true);
    await shot(page, "long-reply");
    // Settings: in the drawer, reached with the keyboard from the menu button.
    await page.focus("#menu");
    await page.keyboard.press("Enter");
    await expect.poll(() => page.locator("#system").isVisible()).toBe(true);
    expect(await page.evaluate("document.activeElement?.id")).toBe("close-drawer");
    expect(await page.evaluate('document.querySelector("main").inert')).toBe(true);
    await page.keyboard.press("Enter");
    await expect.poll(() => page.locator("#system").isVisible()).toBe(false);
    expect(errors).toEqual([]);
    await context.close();
  });
});
