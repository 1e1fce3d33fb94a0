// What a newcomer does first, twice: `npm start` (the quickstart) and `smallhammer demo`. A second
// run must work, reuse what it can, keep the working directory clean, and never touch a directory
// it did not make.
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufHeader } from "../src/formats/gguf.js";
import { builtinTemplateSource } from "../src/model/templates.js";
import { ensureBuilt, runCli } from "./helpers/cli.js";

let dir: string;
beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-first-run-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("quickstart run twice", () => {
  const tiny = ["--pretrain-steps", "3", "--finetune-steps", "3", "--eval-per-family", "1", "--no-chat"];

  it("starts afresh in its own earlier directory, and --resume reuses the finished stages", async () => {
    const qs = join(dir, "qs");
    const first = await runCli(["quickstart", "--dir", qs, ...tiny], { timeoutMs: 300_000 });
    expect(first.status, first.stderr).toBe(0);
    expect(first.stdout).not.toContain("reused");
    const marker = JSON.parse(readFileSync(join(qs, "quickstart.json"), "utf8"));
    expect(Object.keys(marker.stages)).toEqual([
      "world",
      "tokenizer",
      "cache",
      "pretrain",
      "export",
      "finetune",
      "merge",
    ]);

    // The second plain run: every stage runs again and succeeds.
    const again = await runCli(["quickstart", "--dir", qs, ...tiny, "--json"], { timeoutMs: 300_000 });
    expect(again.status, again.stderr).toBe(0);
    expect(again.stderr).toBe("");
    const summary = JSON.parse(again.stdout);
    const firstScores = summary.scores;
    // The tuned models carry the template they were tuned with: chat needs no --template.
    for (const model of [summary.files.tuned, summary.files.tunedQ4]) {
      expect(readGgufHeader(model).get("tokenizer.chat_template")?.value).toBe(
        builtinTemplateSource("alpaca"),
      );
      const chat = await runCli(["chat", "-m", model, "-n", "4", "--temp", "0"], {
        input: "What is 2 + 2?\n",
      });
      expect(chat.status, chat.stderr).toBe(0);
    }

    // --resume with the same settings reuses all seven stages and scores the same files the same way.
    const resumed = await runCli(["quickstart", "--dir", qs, ...tiny, "--resume"], { timeoutMs: 300_000 });
    expect(resumed.status, resumed.stderr).toBe(0);
    expect(resumed.stdout.match(/reused from the earlier run/g)?.length).toBe(7);
    const resumedJson = await runCli(["quickstart", "--dir", qs, ...tiny, "--resume", "--json"]);
    expect(JSON.parse(resumedJson.stdout).scores).toEqual(firstScores);

    // Other fine-tuning steps: the five stages before fine-tuning are reused, the rest run again.
    const more = ["--pretrain-steps", "3", "--finetune-steps", "4", "--eval-per-family", "1", "--no-chat"];
    const extended = await runCli(["quickstart", "--dir", qs, ...more, "--resume"], { timeoutMs: 300_000 });
    expect(extended.status, extended.stderr).toBe(0);
    expect(extended.stdout.match(/reused from the earlier run/g)?.length).toBe(5);
  }, 600_000);

  it("refuses a directory that holds someone else's files, or a file, and leaves them alone", async () => {
    const foreign = join(dir, "foreign");
    mkdirSync(foreign);
    writeFileSync(join(foreign, "notes.txt"), "mine");
    const r = await runCli(["quickstart", "--dir", foreign, ...tiny]);
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain("not a quickstart's directory");
    expect(readdirSync(foreign)).toEqual(["notes.txt"]);

    const file = join(foreign, "notes.txt");
    const f = await runCli(["quickstart", "--dir", file, ...tiny]);
    expect(f.status).toBe(2);
    expect(f.stderr).toContain("is not a directory");
    expect(readFileSync(file, "utf8")).toBe("mine");
  });
});

describe("demo", () => {
  it("keeps its models in the user cache directory, says where, and reuses them", async () => {
    const cwd = join(dir, "cwd");
    const cache = join(dir, "xdg-cache");
    mkdirSync(cwd);
    const env = { ...process.env, XDG_CACHE_HOME: cache };
    const first = await runCli(["demo", "-t", "1"], { env, cwd, timeoutMs: 300_000 });
    expect(first.status, first.stderr).toBe(0);
    const demoDir = join(cache, "smallhammer", "demo");
    expect(first.stdout).toContain(`model files in ${demoDir}`);
    expect(readdirSync(demoDir).sort()).toEqual(["demo-f32.gguf", "demo-q4_0.gguf"]);
    expect(readdirSync(cwd)).toEqual([]);

    const second = await runCli(["demo", "-t", "1"], { env, cwd, timeoutMs: 300_000 });
    expect(second.status, second.stderr).toBe(0);
    expect(second.stdout).toContain(`1. reused ${join(demoDir, "demo-f32.gguf")}`);
    expect(second.stdout).toContain(`2. reused ${join(demoDir, "demo-q4_0.gguf")}`);
    expect(readdirSync(cwd)).toEqual([]);
  }, 300_000);

  it("--dir naming a file is one line and exit 2", async () => {
    const file = join(dir, "a-file");
    writeFileSync(file, "x");
    const r = await runCli(["demo", "--dir", file]);
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split("\n")).toEqual([
      `smallhammer: --dir ${file}: exists and is not a directory`,
    ]);
    expect(existsSync(file) && readFileSync(file, "utf8")).toBe("x");
  });
});
