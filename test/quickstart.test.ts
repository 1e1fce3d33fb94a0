// The quickstart as a user runs it (shortened: fewer steps and tasks than `npm start`): the whole
// recipe runs, writes every file it names, and the tuned model beats its base on held-out tasks.
// Training and evaluation are deterministic (seeded, the same bits for any thread count), so the
// margin asserted here is reached on every run.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ensureBuilt, runCli } from "./helpers/cli.js";

let dir: string;
beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-quickstart-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

it("runs the recipe end to end and the tuned model beats its base", async () => {
  const r = await runCli(
    [
      "quickstart",
      "--dir",
      dir,
      "--pretrain-steps",
      "200",
      "--finetune-steps",
      "120",
      "--eval-per-family",
      "6",
      "--no-chat",
      "--json",
    ],
    { timeoutMs: 600_000 },
  );
  expect(r.stderr).toBe("");
  expect(r.status).toBe(0);
  const s = JSON.parse(r.stdout);
  for (const f of Object.values(s.files as Record<string, string>)) expect(existsSync(f), f).toBe(true);
  expect(s.pretrainValLoss).toBeLessThan(1.5);
  expect(s.scores.base.accuracy).toBe(0);
  expect(s.scores.tuned.accuracy).toBeGreaterThanOrEqual(0.05);
  // Q4_0 rounding costs the small model some of its gain; it still answers what the base cannot.
  expect(s.scores.tunedQ4.accuracy).toBeGreaterThan(s.scores.base.accuracy);
}, 600_000);
