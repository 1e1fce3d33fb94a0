// The quickstart's synthetic world: tasks whose answers are exact, a corpus that states the same
// facts, held-out evaluation tasks disjoint from tuning tasks, and `eval tasks` on a real model.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  evalTasks,
  isCorrect,
  makeTasks,
  makeWorld,
  TASK_FAMILIES,
  taskKey,
  tuningTasks,
  worldCorpus,
} from "../src/data/synthetic.js";
import { ensureBuilt, runCli } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

describe("synthetic world", () => {
  const world = makeWorld(1);

  it("is the same for the same seed and different for another", () => {
    expect(makeWorld(1)).toEqual(world);
    expect(makeWorld(2).towns).not.toEqual(world.towns);
    expect(new Set(world.towns.map((t) => t.name)).size).toBe(world.towns.length);
  });

  it("gives every family its share and the right answers", () => {
    const tasks = makeTasks(world, { count: 270, seed: 3 });
    for (const f of TASK_FAMILIES) expect(tasks.filter((t) => t.family === f)).toHaveLength(30);
    expect(new Set(tasks.map(taskKey)).size).toBe(270);
    for (const t of tasks) {
      const nums = t.instruction.match(/\d+/g)?.map(Number) ?? [];
      const words = t.input.split(" ");
      const quoted = t.instruction.match(/"(\w+)"/)?.[1] ?? "";
      switch (t.family) {
        case "add":
          expect(Number(t.output)).toBe(nums[0] + nums[1]);
          break;
        case "subtract":
          expect(Number(t.output)).toBe(nums[0] - nums[1]);
          expect(Number(t.output)).toBeGreaterThanOrEqual(0);
          break;
        case "next":
          expect(Number(t.output)).toBe(nums[0] + 1);
          break;
        case "reverse":
          expect(t.output).toBe(words.slice().reverse().join(" "));
          break;
        case "sort":
          expect(t.output).toBe(words.slice().sort().join(" "));
          break;
        case "length":
          expect(Number(t.output)).toBe(quoted.length);
          break;
        case "first-letter":
          expect(t.output).toBe(quoted[0]);
          break;
        case "convert":
          expect(Number(t.output) % nums[0]).toBe(0);
          break;
        case "lookup": {
          const town = world.towns.find((w) => t.instruction.includes(w.name));
          expect(town).toBeDefined();
          expect([town?.country, town?.river, town?.colour, town?.animal]).toContain(t.output);
        }
      }
    }
  });

  it("keeps held-out tasks out of every tuning set", () => {
    const held = evalTasks(world, 12);
    expect(held).toHaveLength(12 * TASK_FAMILIES.length);
    const heldKeys = new Set(held.map(taskKey));
    const tuning = tuningTasks(world, 3000);
    expect(tuning).toHaveLength(3000);
    for (const t of tuning) expect(heldKeys.has(taskKey(t))).toBe(false);
    // The small families repeat in a large tuning set; that is allowed, leaking is not.
    expect(new Set(tuning.map(taskKey)).size).toBeLessThan(3000);
  });

  it("keeps held-out tasks out of the corpus, as questions and as stated instances", () => {
    const corpus = worldCorpus(world, 1_500_000);
    const paragraphs = new Set(corpus.split("\n\n").map((p) => p.trim()));
    // The corpus works every family; a held-out instance would have turned up in this much text.
    const tuning = tuningTasks(world, 400);
    const stated = tuning.filter((t) => corpus.includes(`${lines(t)}\n${t.output}\n`));
    expect(stated.length).toBeGreaterThan(tuning.length / 2);
    for (const t of evalTasks(world, 12)) {
      expect(corpus, lines(t)).not.toContain(`${lines(t)}\n`);
      const n = t.instruction.match(/\d+/g) ?? [];
      const unit = t.instruction.match(/^Convert \d+ (\w+) to/)?.[1];
      const statement = {
        add: `${n[0]} plus ${n[1]} is ${t.output}.`,
        subtract: `${n[0]} minus ${n[1]} is ${t.output}.`,
        next: `After ${n[0]} comes ${t.output}.`,
        reverse: `The words ${t.input} in reverse order are ${t.output}.`,
        sort: `Sorted alphabetically, ${t.input} becomes ${t.output}.`,
        convert: `${n[0]} ${unit} is ${t.output}`,
      }[t.family as string];
      if (statement !== undefined) {
        expect(paragraphs.has(statement) || corpus.includes(`\n${statement}`), statement).toBe(false);
      }
    }
  });

  it("refuses more distinct tasks than a family has", () => {
    expect(() => makeTasks(world, { count: 100, seed: 1, families: ["first-letter"] })).toThrow(
      /cannot make 100 distinct tasks/,
    );
  });

  it("writes a corpus that states every town's facts", () => {
    const corpus = worldCorpus(world, 200_000);
    expect(corpus.length).toBeGreaterThanOrEqual(200_000);
    expect(corpus).toBe(worldCorpus(world, 200_000));
    for (const t of world.towns) {
      expect(corpus).toContain(`The roofs of ${t.name} are ${t.colour}.`);
      expect(corpus).toContain(`The symbol of ${t.name} is the ${t.animal}.`);
    }
    expect(corpus).toMatch(/\d+ plus \d+ is \d+\./);
  });

  it("compares answers exactly, ignoring case, a final period and later lines", () => {
    expect(isCorrect(" 42.\nmore text", "42")).toBe(true);
    expect(isCorrect("Blue", "blue")).toBe(true);
    expect(isCorrect("421", "42")).toBe(false);
    expect(isCorrect("", "42")).toBe(false);
  });
});

/** A task's question as the corpus writes it: the instruction, and the input on a line of its own. */
function lines(t: { instruction: string; input: string }): string {
  return t.input ? `${t.instruction}\n${t.input}` : t.instruction;
}

describe("smallhammer eval tasks", () => {
  let dir: string;
  beforeAll(() => {
    ensureBuilt();
    dir = mkdtempSync(join(tmpdir(), "smallhammer-eval-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("scores a model per family and overall", async () => {
    const model = join(dir, "tiny.gguf");
    writeTinyLlama(model, { contextLength: 512 });
    const r = await runCli([
      "eval",
      "tasks",
      "-m",
      model,
      "--per-family",
      "2",
      "--max-tokens",
      "4",
      "--json",
    ]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const scores = JSON.parse(r.stdout);
    expect(scores.total).toBe(2 * TASK_FAMILIES.length);
    expect(Object.keys(scores.byFamily).sort()).toEqual([...TASK_FAMILIES].sort());
    expect(scores.correct).toBe(
      Object.values(scores.byFamily as Record<string, { correct: number }>).reduce(
        (a, f) => a + f.correct,
        0,
      ),
    );
    const table = await runCli(["eval", "tasks", "-m", model, "--per-family", "1", "--max-tokens", "2"]);
    expect(table.status).toBe(0);
    expect(table.stdout).toMatch(/^family/);
    expect(table.stdout).toMatch(/\nall +\d+\.\d%\n$/);
  });

  it("names a missing model file in one line", async () => {
    const r = await runCli(["eval", "tasks", "-m", join(dir, "nope.gguf")]);
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain("nope.gguf");
  });
});
