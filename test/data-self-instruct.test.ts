import { type ChildProcess, spawn } from "node:child_process";
import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  BLACKLISTED_WORDS,
  checkTask,
  formatTask,
  parseTasks,
  selfInstructPrompt,
} from "../src/data/instruction-filters.js";
import { RecordReader } from "../src/data/records.js";
import { rougeL } from "../src/data/rouge.js";
import {
  DEFAULT_SEED_TASKS,
  loadSeedTasks,
  type SelfInstructOptions,
  selfInstruct,
  statePath,
} from "../src/data/self-instruct.js";
import { TeacherClient } from "../src/data/teacher.js";
import { CLI, type CliResult, ensureBuilt, ROOT } from "./helpers/cli.js";
import {
  distinctTask,
  numberedReply,
  ScriptedTeacher,
  type TeacherStep,
} from "./helpers/scripted-teacher.js";

const SHARED_SEEDS = join(ROOT, "test", "fixtures", "alpaca_seed_tasks.jsonl");

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "sh-self-instruct-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const servers: ScriptedTeacher[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop();
});
async function teacherWith(script: (n: number) => TeacherStep): Promise<ScriptedTeacher> {
  const server = await new ScriptedTeacher(script).start();
  servers.push(server);
  return server;
}

async function readAlpaca(path: string) {
  const reader = await RecordReader.open(path, { format: "alpaca" });
  const tasks: { instruction: string; input: string; output: string }[] = [];
  for await (const r of reader) {
    tasks.push({
      instruction: r.messages[0]!.content,
      input: r.messages[0]!.input ?? "",
      output: r.messages[1]!.content,
    });
  }
  return tasks;
}

describe("reply parsing", () => {
  const task = (n: number) => distinctTask(n);

  it("reads the numbered format with ### separators and <noinput>", () => {
    const tasks = [task(0), task(1), task(3)];
    expect(parseTasks(numberedReply(tasks))).toEqual(tasks);
    // The same with the list's own example numbering and a trailing separator.
    expect(parseTasks(`${numberedReply(tasks, 1)}\n###\n`)).toEqual(tasks);
  });

  it("reads replies without separators, with markdown decoration and a preamble", () => {
    const reply = [
      "Sure! Here are more tasks:",
      "",
      "**4. Instruction:** Name the largest ocean on Earth.",
      "**4. Input:** <noinput>",
      "**4. Output:** The Pacific Ocean.",
      "",
      "5. Instruction: Sort the words alphabetically.",
      "5. Input:",
      "pear, apple, fig",
      "5. Output:",
      "apple, fig, pear",
    ].join("\n");
    expect(parseTasks(reply)).toEqual([
      { instruction: "Name the largest ocean on Earth.", input: "", output: "The Pacific Ocean." },
      {
        instruction: "Sort the words alphabetically.",
        input: "pear, apple, fig",
        output: "apple, fig, pear",
      },
    ]);
  });

  it("takes the text before a first Input marker as the instruction when the reply skipped its marker", () => {
    const reply =
      "Give a synonym for fast.\n4. Input:\n<noinput>\n4. Output:\nquick\n###\n5. Instruction: Add 2 and 3.\n5. Input:\n<noinput>\n5. Output:\n5";
    expect(parseTasks(reply)).toEqual([
      { instruction: "Give a synonym for fast.", input: "", output: "quick" },
      { instruction: "Add 2 and 3.", input: "", output: "5" },
    ]);
  });

  it("keeps multi-line outputs whole and drops tasks missing their output", () => {
    const reply =
      "4. Instruction: Write a Python function that doubles a number.\n4. Input:\n<noinput>\n4. Output:\ndef double(x):\n    return 2 * x\n###\n5. Instruction: Say hello in French.\n5. Input:\n<noinput>";
    expect(parseTasks(reply)).toEqual([
      {
        instruction: "Write a Python function that doubles a number.",
        input: "",
        output: "def double(x):\n    return 2 * x",
      },
    ]);
  });

  it("reads a JSON array, bare or fenced, or an object holding one", () => {
    const tasks = [task(4), task(5)];
    expect(parseTasks(JSON.stringify(tasks))).toEqual(tasks);
    expect(parseTasks(`Here you go:\n\`\`\`json\n${JSON.stringify(tasks, null, 2)}\n\`\`\`\n`)).toEqual(
      tasks,
    );
    expect(parseTasks(JSON.stringify({ tasks }))).toEqual(tasks);
    const noInput = [{ instruction: "Name a prime number under ten.", input: "<noinput>", output: "7" }];
    expect(parseTasks(JSON.stringify(noInput))).toEqual([{ ...noInput[0], input: "" }]);
    // Entries that are not tasks are skipped.
    expect(parseTasks(JSON.stringify([{ question: "x" }, task(6)]))).toEqual([task(6)]);
  });

  it("gives nothing for a reply with no tasks", () => {
    expect(parseTasks("I'm sorry, I can't help with that.")).toEqual([]);
    expect(parseTasks("")).toEqual([]);
  });
});

describe("task filters", () => {
  const ok = { instruction: "Name three rivers in Europe.", input: "", output: "Danube, Rhine, Seine" };

  it("passes a good task and rejects each failure with its reason", () => {
    expect(checkTask(ok)).toBeUndefined();
    expect(checkTask({ ...ok, instruction: "Name three rivers." })).toBe("too short");
    expect(checkTask({ ...ok, instruction: `Name ${"very ".repeat(150)}long rivers.` })).toBe("too long");
    expect(checkTask({ ...ok, instruction: "- Name three rivers in Europe." })).toBe(
      "starts with punctuation",
    );
    expect(checkTask({ ...ok, instruction: '"Name three rivers in Europe."' })).toBe(
      "starts with punctuation",
    );
    expect(checkTask({ ...ok, instruction: "Écrivez trois fleuves d'Europe." })).toBe(
      "starts with non-ASCII",
    );
    expect(
      checkTask({ ...ok, instruction: "Write a program that prints the primes below 100.", output: "" }),
    ).toBe("program without output");
    expect(
      checkTask({ ...ok, instruction: "Write a program that prints the primes below 100." }),
    ).toBeUndefined();
    expect(checkTask({ ...ok, output: "  " })).toBe("empty output");
  });

  it("rejects every blacklisted word as a whole word, in any case", () => {
    for (const word of BLACKLISTED_WORDS) {
      expect(checkTask({ ...ok, instruction: `Please describe the ${word.toUpperCase()} in detail.` })).toBe(
        "blacklisted word",
      );
    }
    // Not inside other words: "mapping", "profile", "plotting"... "drawer" is a different word.
    expect(
      checkTask({ ...ok, instruction: "Explain what a data mapping does for a profile." }),
    ).toBeUndefined();
    expect(checkTask({ ...ok, instruction: "Describe what is kept in a kitchen drawer." })).toBeUndefined();
    expect(checkTask({ ...ok, instruction: "Tell me where to go   to relax." })).toBe("blacklisted word");
  });
});

describe("seed tasks and the prompt", () => {
  it("the project's seed file has 100+ distinct tasks that pass the filters", async () => {
    const seeds = await loadSeedTasks();
    expect(DEFAULT_SEED_TASKS.endsWith(join("src", "data", "seed-tasks.jsonl"))).toBe(true);
    expect(seeds.length).toBeGreaterThanOrEqual(100);
    for (const s of seeds) expect(checkTask(s), s.instruction).toBeUndefined();
    expect(new Set(seeds.map((s) => s.instruction)).size).toBe(seeds.length);
    // Varied: few pairs of seed instructions are near copies.
    let similar = 0;
    for (let i = 0; i < seeds.length; i++) {
      for (let j = i + 1; j < seeds.length; j++) {
        if (rougeL(seeds[i]!.instruction, seeds[j]!.instruction) >= 0.7) similar++;
      }
    }
    expect(similar).toBe(0);
    // Some have an input, some none; some are classification tasks.
    expect(seeds.filter((s) => s.input !== "").length).toBeGreaterThan(30);
    expect(seeds.filter((s) => s.input === "").length).toBeGreaterThan(20);
    const raw = readFileSync(DEFAULT_SEED_TASKS, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(raw.filter((r) => r.is_classification).length).toBeGreaterThan(10);
    expect(Object.keys(raw[0]).sort()).toEqual([
      "id",
      "instances",
      "instruction",
      "is_classification",
      "name",
    ]);
  });

  it("reads Alpaca's own seed file", async () => {
    const seeds = await loadSeedTasks(SHARED_SEEDS);
    expect(seeds).toHaveLength(175);
    expect(seeds[0]!.instruction).toMatch(/^Is there anything I can eat for a breakfast/);
    expect(seeds[1]).toEqual({
      instruction: "What is the relation between the given pairs?",
      input: "Night : Day :: Right : Left",
      output: "The relation between the given pairs is that they are opposites.",
    });
  });

  it("shows the examples as tasks 1..k and asks for the rest of the list", () => {
    const examples = [distinctTask(0), distinctTask(1), distinctTask(2)];
    const prompt = selfInstructPrompt(examples, 20);
    expect(prompt).toContain("Reply with tasks 4 to 20 only");
    expect(prompt).toContain(formatTask(examples[0]!, 1));
    expect(prompt).toContain(`3. Input:\n${examples[2]!.input === "" ? "<noinput>" : examples[2]!.input}`);
    expect(prompt.trimEnd().endsWith("###")).toBe(true);
    // The examples read back as the tasks they are.
    expect(parseTasks(prompt.slice(prompt.indexOf("1. Instruction:")))).toEqual(examples);
  });
});

function teacher(
  server: ScriptedTeacher,
  extra: Partial<ConstructorParameters<typeof TeacherClient>[0]> = {},
) {
  return new TeacherClient({ url: server.url, model: "scripted", backoffMs: 5, timeoutMs: 5000, ...extra });
}

describe("self-instruct against a scripted teacher", () => {
  it("keeps, rejects by reason, retries, and counts tokens and cost", async () => {
    const seeds = await loadSeedTasks();
    const server = await teacherWith((n): TeacherStep => {
      switch (n) {
        case 0:
          return { status: 429, headers: { "retry-after-ms": "5" } };
        case 1:
          return {
            text: numberedReply([
              distinctTask(0),
              distinctTask(1),
              { instruction: "Draw a cat sitting on a sunny windowsill.", input: "", output: "A sketch." },
              seeds[5]!, // a seed's own instruction: similar
            ]),
          };
        case 2:
          return { status: 500 };
        case 3:
          return {
            text: `\`\`\`json\n${JSON.stringify([
              distinctTask(2),
              distinctTask(3),
              { instruction: "Be kind.", input: "", output: "Okay." },
              { instruction: "Write a program that sorts numbers quickly.", input: "", output: "" },
            ])}\n\`\`\``,
          };
        case 4:
          return {
            text: numberedReply([distinctTask(4), distinctTask(5), distinctTask(6)]),
            finishReason: "length",
          };
        case 5:
          return { text: "I'm afraid I cannot write tasks today." };
        case 6:
          return {
            text: numberedReply([
              distinctTask(7),
              distinctTask(7),
              {
                instruction: "- List three colors that feel warm.",
                input: "",
                output: "red, orange, yellow",
              },
              { instruction: "Écrivez une phrase sur la mer.", input: "", output: "La mer est calme." },
              { ...distinctTask(8), output: "" },
            ]),
          };
        default:
          return { text: numberedReply([9, 10, 11, 12, 13].map((i) => distinctTask(i))) };
      }
    });
    const out = join(dir, "scripted.jsonl");
    const progress: number[] = [];
    const summary = await selfInstruct({
      teacher: teacher(server),
      seeds,
      num: 12,
      out,
      concurrency: 1,
      priceIn: 2,
      priceOut: 6,
      onProgress: (s) => progress.push(s.kept),
    });
    const kept = await readAlpaca(out);
    expect(kept).toEqual([0, 1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 13].map((i) => distinctTask(i)));
    expect(summary.kept).toBe(12);
    expect(summary.keptNow).toBe(12);
    expect(summary.resumed).toBe(false);
    expect(summary.stopped).toBe(false);
    expect(summary.replies).toBe(6);
    expect(summary.emptyReplies).toBe(1);
    expect(summary.retries).toBe(2);
    expect(summary.candidates).toBe(4 + 4 + 3 + 0 + 5 + 5);
    expect(summary.rejected).toEqual({
      "blacklisted word": 1,
      similar: 2,
      "too short": 1,
      "program without output": 1,
      truncated: 1,
      "starts with punctuation": 1,
      "starts with non-ASCII": 1,
      "empty output": 1,
    });
    expect(summary.tokensEstimated).toBe(false);
    expect(summary.promptTokens).toBeGreaterThan(100);
    expect(summary.cost).toBeCloseTo((summary.promptTokens * 2 + summary.completionTokens * 6) / 1e6, 12);
    expect(progress.at(-1)).toBe(12);
    // The state file holds the same counters and the output's size.
    const state = JSON.parse(readFileSync(statePath(out), "utf8"));
    expect(state.kept).toBe(12);
    expect(state.outBytes).toBe(readFileSync(out).length);
    // Every request shows three examples and asks for tasks 4..20; once tasks are kept, one of the
    // examples is a generated one.
    const prompts = server.requests.map((r) => r.body.messages![0]!.content);
    for (const p of prompts) expect(p).toContain("Reply with tasks 4 to 20 only");
    const seedSet = new Set(seeds.map((s) => s.instruction));
    const shown = (p: string) => [...p.matchAll(/^\d+\. Instruction: (.*)$/gm)].map((m) => m[1]!);
    expect(shown(prompts[0]!).every((i) => seedSet.has(i))).toBe(true);
    expect(shown(prompts.at(-1)!).filter((i) => !seedSet.has(i))).toHaveLength(1);
  });

  it("with parallel requests, stops at exactly the number asked, with no duplicates", async () => {
    let next = 100;
    const server = await teacherWith((n) => ({
      delayMs: (n * 7) % 40,
      text: numberedReply(Array.from({ length: 4 }, () => distinctTask(next++))),
    }));
    const out = join(dir, "parallel.jsonl");
    const summary = await selfInstruct({
      teacher: teacher(server),
      seeds: await loadSeedTasks(),
      num: 37,
      out,
      concurrency: 4,
    });
    const kept = await readAlpaca(out);
    expect(kept).toHaveLength(37);
    expect(summary.kept).toBe(37);
    expect(new Set(kept.map((k) => k.instruction)).size).toBe(37);
  });

  it("stops with one clear line when the teacher's replies keep giving nothing usable", async () => {
    const server = await teacherWith(() => ({ text: "Sorry, I can only chat." }));
    const options: SelfInstructOptions = {
      teacher: teacher(server),
      seeds: await loadSeedTasks(),
      num: 5,
      out: join(dir, "fruitless.jsonl"),
      concurrency: 1,
      maxFruitlessReplies: 3,
    };
    await expect(selfInstruct(options)).rejects.toThrow(
      /^teacher http:\/\/127\.0\.0\.1:\d+\/v1: 3 replies in a row gave no usable task \(none rejected\); check that "scripted" follows the prompt's format$/,
    );
  });

  it("refuses to append to a file that is not a run's output", async () => {
    const out = join(dir, "foreign.jsonl");
    writeFileSync(out, `${JSON.stringify({ instruction: "x", input: "", output: "y" })}\n`);
    const server = await teacherWith(() => ({ text: "" }));
    await expect(
      selfInstruct({ teacher: teacher(server), seeds: await loadSeedTasks(), num: 5, out }),
    ).rejects.toThrow(
      /foreign\.jsonl exists and has no .*foreign\.jsonl\.state\.json, so it is not a self-instruct run to resume/,
    );
    expect(server.requests).toHaveLength(0);
  });
});

/** Runs the CLI without blocking this process's event loop (the scripted teacher lives here). */
function startCli(args: string[]): { child: ChildProcess; done: Promise<CliResult> } {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d) => {
    stdout += d;
  });
  child.stderr!.on("data", (d) => {
    stderr += d;
  });
  const done = new Promise<CliResult>((resolve) =>
    child.on("close", (status, signal) => resolve({ status, signal, stdout, stderr })),
  );
  return { child, done };
}

function lines(path: string): string[] {
  return existsSync(path)
    ? readFileSync(path, "utf8")
        .split("\n")
        .filter((l) => l !== "")
    : [];
}

describe("self-instruct command", () => {
  beforeAll(() => ensureBuilt());

  it("a killed run, resumed, loses nothing and duplicates nothing", async () => {
    let next = 1000;
    const server = await teacherWith(() => ({
      delayMs: 60,
      text: numberedReply(Array.from({ length: 3 }, () => distinctTask(next++))),
    }));
    const out = join(dir, "resume.jsonl");
    const args = ["data", "self-instruct", "--teacher", server.url, "--model", "scripted", "--num", "45"];
    args.push("--out", out, "--concurrency", "2", "--seeds", SHARED_SEEDS, "--json");
    const first = startCli(args);
    // Kill it hard once some tasks are written.
    await new Promise<void>((resolve, reject) => {
      const poll = setInterval(() => {
        if (lines(out).length >= 12) {
          clearInterval(poll);
          first.child.kill("SIGKILL");
          resolve();
        }
      }, 20);
      first.done.then((r) => {
        clearInterval(poll);
        reject(new Error(`finished before the kill: ${r.stderr}`));
      });
    });
    const killed = await first.done;
    expect(killed.signal).toBe("SIGKILL");
    const before = readFileSync(out, "utf8");
    expect(before.endsWith("\n")).toBe(true);
    const keptBefore = lines(out).length;
    expect(keptBefore).toBeLessThan(45);
    // A kill in the middle of a write leaves a cut line; resuming drops it.
    appendFileSync(out, '{"instruction": "Explain how amber');

    const second = await startCli(args).done;
    expect(second.stderr).toBe("");
    expect(second.status).toBe(0);
    const summary = JSON.parse(second.stdout);
    expect(summary.resumed).toBe(true);
    expect(summary.kept).toBe(45);
    expect(summary.keptNow).toBe(45 - keptBefore);
    const after = readFileSync(out, "utf8");
    expect(after.startsWith(before)).toBe(true);
    const kept = await readAlpaca(out);
    expect(kept).toHaveLength(45);
    expect(new Set(kept.map((k) => k.instruction)).size).toBe(45);

    // Run again: the target is met, nothing is asked of the teacher.
    const asked = server.requests.length;
    const third = await startCli(args).done;
    expect(third.status).toBe(0);
    expect(JSON.parse(third.stdout)).toMatchObject({ kept: 45, keptNow: 0, resumed: true });
    expect(server.requests.length).toBe(asked);
    expect(readFileSync(out, "utf8")).toBe(after);
  });

  it("Ctrl-C stops cleanly: state saved, exit 130, resumable", async () => {
    let next = 5000;
    const server = await teacherWith(() => ({
      delayMs: 80,
      text: numberedReply(Array.from({ length: 2 }, () => distinctTask(next++))),
    }));
    const out = join(dir, "sigint.jsonl");
    const run = startCli([
      "data",
      "self-instruct",
      "--teacher",
      server.url,
      "--model",
      "m",
      "--num",
      "500",
      "--out",
      out,
      "--json",
    ]);
    await new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        if (lines(out).length >= 4) {
          clearInterval(poll);
          resolve();
        }
      }, 20);
    });
    run.child.kill("SIGINT");
    const r = await run.done;
    expect(r.status).toBe(130);
    expect(r.stderr).toBe("smallhammer: stopped; run the same command again to resume\n");
    const summary = JSON.parse(r.stdout);
    expect(summary.stopped).toBe(true);
    expect(summary.kept).toBe(lines(out).length);
    const state = JSON.parse(readFileSync(statePath(out), "utf8"));
    expect(state.kept).toBe(summary.kept);
    expect(state.outBytes).toBe(readFileSync(out).length);
  });

  it("a 200 reply cut off mid-JSON is retried, not fatal; the counters add up", async () => {
    let next = 7000;
    const server = await teacherWith((n): TeacherStep => {
      // Requests 1, 2 and 4 are cut off mid-body; every other one answers with two new tasks, a
      // repeat of the second (similar) and a task to draw (blacklisted).
      if (n === 1 || n === 2 || n === 4) return { text: "unfinished", cutAt: 45 + n };
      const a = distinctTask(next++);
      const b = distinctTask(next++);
      const draw = {
        instruction: "Draw a map of the town square and its shops.",
        input: "",
        output: "A map.",
      };
      return { text: numberedReply([a, b, b, draw]) };
    });
    const out = join(dir, "cut-off.jsonl");
    const r = await startCli([
      ...["data", "self-instruct", "--teacher", server.url, "--model", "m", "--num", "6"],
      ...["--out", out, "--concurrency", "1", "--seeds", SHARED_SEEDS, "--json"],
    ]).done;
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const summary = JSON.parse(r.stdout);
    expect(summary).toMatchObject({ kept: 6, stopped: false, replies: 3, retries: 3 });
    expect(summary.retriesByReason).toEqual({ "cut off": 3 });
    expect(server.requests).toHaveLength(6);
    expect(lines(out)).toHaveLength(6);
    // The last reply's tasks after the sixth kept one are not judged, and not counted.
    expect(summary.rejected).toEqual({ similar: 2, "blacklisted word": 2 });
    const rejected = Object.values(summary.rejected as Record<string, number>).reduce((a, b) => a + b, 0);
    expect(summary.candidates).toBe(summary.kept + rejected);
    expect(summary.candidates).toBe(10);
    const state = JSON.parse(readFileSync(statePath(out), "utf8"));
    expect(state).toMatchObject({ kept: 6, candidates: 10, retries: 3, retriesByReason: { "cut off": 3 } });
  });

  it("user mistakes are one line and exit 2", async () => {
    const server = await teacherWith(() => ({ status: 401 }));
    const base = ["data", "self-instruct", "--teacher", server.url, "--model", "m", "--num", "3"];
    const unset = await startCli([
      ...base,
      "--out",
      join(dir, "a.jsonl"),
      "--api-key-env",
      "SH_NO_SUCH_KEY_VAR",
    ]).done;
    expect(unset.status).toBe(2);
    expect(unset.stderr).toBe(
      "smallhammer: --api-key-env: the environment variable SH_NO_SUCH_KEY_VAR is not set\n",
    );
    const denied = await startCli([...base, "--out", join(dir, "b.jsonl")]).done;
    expect(denied.status).toBe(2);
    expect(denied.stderr).toMatch(
      /^smallhammer: teacher http:\/\/127\.0\.0\.1:\d+\/v1: 401 .*--api-key-env\)\n$/,
    );
    const badSeeds = await startCli([
      ...base,
      "--out",
      join(dir, "c.jsonl"),
      "--seeds",
      join(dir, "none.jsonl"),
    ]).done;
    expect(badSeeds.status).toBe(2);
    expect(badSeeds.stderr).toMatch(/^smallhammer: .*none\.jsonl: cannot read the file \(ENOENT\)\n$/);
  });
});
