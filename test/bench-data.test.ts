import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InstructionMaker, selfInstructReplies, writeShareGptFile } from "../src/bench/data-samples.js";
import { checkTask, parseTasks } from "../src/data/instruction-filters.js";
import { cleanShareGpt } from "../src/data/sharegpt-clean.js";
import { ensureBuilt, ROOT } from "./helpers/cli.js";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "sh-bench-data-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("data bench inputs", () => {
  it("a generated ShareGPT dump cleans to exactly the drops and fixes planted in it", async () => {
    const raw = join(dir, "raw.json");
    const plan = writeShareGptFile(raw, 1.5e6, 1);
    expect(plan.bytes).toBeGreaterThanOrEqual(1.5e6);
    expect(plan.bytes).toBeLessThan(1.5e6 * 1.2);
    for (const key of [
      "exactDuplicates",
      "nearDuplicates",
      "badOrder",
      "empty",
      "leadingAssistant",
      "trailingUser",
      "long",
    ] as const) {
      expect(plan[key], key).toBeGreaterThan(0);
    }
    const report = await cleanShareGpt(raw, join(dir, "clean.jsonl"));
    expect(report.conversations).toBe(plan.conversations);
    expect(report.dropped).toEqual({
      duplicate: plan.exactDuplicates,
      "bad turn order": plan.badOrder,
      empty: plan.empty,
    });
    expect(report.kept).toBe(plan.conversations - plan.exactDuplicates - plan.badOrder - plan.empty);
    expect(report.fixed).toEqual({
      "html converted": plan.htmlTurns,
      "leading assistant turn removed": plan.leadingAssistant,
      "trailing user turn removed": plan.trailingUser,
    });
    // The same seed gives the same bytes; another seed other ones.
    const again = join(dir, "again.json");
    writeShareGptFile(again, 1.5e6, 1);
    expect(readFileSync(again).equals(readFileSync(raw))).toBe(true);
    writeShareGptFile(again, 1.5e6, 2);
    expect(readFileSync(again).equals(readFileSync(raw))).toBe(false);
  });

  it("canned teacher replies parse into the tasks asked for, some failing the filters", () => {
    const replies = selfInstructReplies(20, 4, 20, 1);
    const tasks = replies.flatMap((r) => parseTasks(r));
    expect(tasks).toHaveLength(20 * 17);
    const reasons = tasks.map((t) => checkTask(t));
    expect(reasons.filter((r) => r === undefined).length).toBeGreaterThan(tasks.length / 2);
    expect(reasons).toContain("blacklisted word");
    expect(new Set(tasks.map((t) => t.instruction)).size).toBeGreaterThan(tasks.length * 0.95);
  });

  it("instructions are seeded", () => {
    const a = new InstructionMaker(4);
    const b = new InstructionMaker(4);
    const texts = Array.from({ length: 50 }, () => a.instruction());
    expect(Array.from({ length: 50 }, () => b.instruction())).toEqual(texts);
    expect(new Set(texts).size).toBe(50);
  });
});

describe("npm run bench -- data", () => {
  it("runs end to end at a small size and reports the planted counts found", async () => {
    ensureBuilt();
    const args = [
      join(ROOT, "dist", "bench", "main.js"),
      "data",
      "--size-mb",
      "0.5",
      "--kept",
      "300",
      "--candidates",
      "40",
      "--plain-candidates",
      "20",
      "--requests",
      "10",
      "--concurrency",
      "2",
      "--quiet-wait",
      "0",
      "--json",
    ];
    const { stdout } = await promisify(execFile)(process.execPath, args, { cwd: ROOT, timeout: 120_000 });
    const result = JSON.parse(stdout);
    const [clean, dedup] = result.sharegpt.commands;
    expect(clean.records).toBe(result.sharegpt.conversations);
    for (const row of [clean, dedup]) {
      for (const [reason, n] of Object.entries(row.planted)) expect(row.dropped[reason] ?? 0, reason).toBe(n);
      expect(row.peakRssBytes).toBeGreaterThan(0);
    }
    expect(dedup.records).toBe(clean.written);
    expect(result.rouge.identicalDecisions).toBe(20);
    const [loop, pipeline] = result.teacher.clients;
    expect(loop.requests).toBe(10);
    expect(pipeline.requests).toBeGreaterThanOrEqual(10);
    expect(result.teacher.kept).toBeGreaterThan(0);
    expect(result.teacher.candidates).toBe(17 * pipeline.requests);
  }, 120_000);
});
