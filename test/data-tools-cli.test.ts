// `smallhammer data convert | dedup | filter | split | sample` on the shared samples and on files
// written here: the commands run in this process (their argument parsing, actions and output), and
// as a user runs them, the built CLI in a child process, where exit statuses and error lines matter.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerData } from "../src/cli/data.js";
import { ensureBuilt, ROOT, runCli } from "./helpers/cli.js";
import { spmDescription, spmTokenizer, writeVocabGguf } from "./helpers/shakespeare-vocab.js";

const DUMMY = join(ROOT, "test", "fixtures", "sharegpt_dummy_conversation.json");
const SEEDS = join(ROOT, "test", "fixtures", "alpaca_seed_tasks.jsonl");

let dir: string;
beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-data-tools-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function path(name: string): string {
  return join(dir, name);
}
function jsonl(name: string, records: unknown[]): string {
  writeFileSync(path(name), records.map((r) => `${JSON.stringify(r)}\n`).join(""));
  return path(name);
}
function readJsonl(file: string): Record<string, unknown>[] {
  return readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l));
}
/** Runs `smallhammer data ARGS` in this process; returns what it printed. */
async function runHere(args: string[]): Promise<string> {
  const program = new Command("smallhammer").exitOverride();
  registerData(program);
  let printed = "";
  const write = process.stdout.write;
  process.stdout.write = ((chunk: string) => {
    printed += chunk;
    return true;
  }) as typeof process.stdout.write;
  try {
    await program.parseAsync(["node", "smallhammer", "data", ...args]);
  } finally {
    process.stdout.write = write;
  }
  return printed;
}
/** Runs the command with --json and returns its summary. */
async function run(args: string[]) {
  return JSON.parse(await runHere([...args, "--json"]));
}
async function expectUserError(args: string[], line: RegExp) {
  const r = await runCli(["data", ...args]);
  expect(r.status).toBe(2);
  expect(r.stderr).toMatch(line);
  expect(r.stderr.trimEnd().split("\n")).toHaveLength(1);
}

const seedRecords = () =>
  readFileSync(SEEDS, "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l))
    .map((t) => ({ instruction: t.instruction, input: t.instances[0].input, output: t.instances[0].output }));

describe("data convert", () => {
  it("sharegpt -> messages -> sharegpt gives the conversations back", async () => {
    const messages = path("dummy-messages.jsonl");
    expect(await run(["convert", DUMMY, "--to", "messages", "--out", messages])).toMatchObject({
      from: "sharegpt",
      to: "messages",
      records: 500,
      written: 500,
    });
    const first = readJsonl(messages)[0]!;
    expect(first).toEqual({
      messages: [
        { role: "user", content: "Who are you?" },
        {
          role: "assistant",
          content:
            "I am Vicuna, a language model trained by researchers from Large Model Systems Organization (LMSYS).",
        },
        { role: "user", content: "Have a nice day!" },
        { role: "assistant", content: "You too!" },
      ],
    });
    const back = path("dummy-back.json");
    await run(["convert", messages, "--to", "sharegpt", "--out", back]);
    const original = JSON.parse(readFileSync(DUMMY, "utf8")) as { conversations: unknown }[];
    expect(JSON.parse(readFileSync(back, "utf8"))).toEqual(
      original.map((c) => ({ conversations: c.conversations })),
    );
  });

  it("alpaca -> sharegpt -> alpaca keeps every text; an input rejoins its instruction after a blank line", async () => {
    const alpaca = jsonl("seeds.jsonl", seedRecords());
    const sharegpt = path("seeds-sharegpt.jsonl");
    await run(["convert", alpaca, "--to", "sharegpt", "--out", sharegpt]);
    const back = path("seeds-back.jsonl");
    expect(await run(["convert", sharegpt, "--to", "alpaca", "--out", back])).toMatchObject({
      records: 175,
      written: 175,
    });
    const expected = seedRecords().map((r) => ({
      instruction: r.input === "" ? r.instruction : `${r.instruction}\n\n${r.input}`,
      input: "",
      output: r.output,
    }));
    expect(readJsonl(back)).toEqual(expected);
    // alpaca -> alpaca is the identity.
    const same = path("seeds-same.jsonl");
    await run(["convert", alpaca, "--to", "alpaca", "--out", same]);
    expect(readJsonl(same)).toEqual(seedRecords());
  });

  it("counts the records a format cannot hold", async () => {
    const summary = await run(["convert", DUMMY, "--to", "alpaca", "--out", path("dummy-alpaca.jsonl")]);
    expect(summary).toMatchObject({
      records: 500,
      written: 167,
      notConverted: { total: 333, byReason: { "multi-turn": 333 } },
    });
    const withSystem = jsonl("system.jsonl", [
      {
        messages: [
          { role: "system", content: "Be brief." },
          { role: "user", content: "Hi" },
          { role: "assistant", content: "Hello" },
        ],
      },
      {
        messages: [
          { role: "user", content: "Hi" },
          { role: "assistant", content: "Hello", weight: 0 },
          { role: "user", content: "Bye" },
          { role: "assistant", content: "Bye" },
        ],
      },
    ]);
    const toAlpaca = await run([
      "convert",
      withSystem,
      "--to",
      "alpaca",
      "--out",
      path("system-alpaca.jsonl"),
    ]);
    expect(toAlpaca.notConverted.byReason).toEqual({ "system message": 1, "multi-turn": 1 });
    // messages -> messages keeps a weight 0 reply as weight 0.
    await run(["convert", withSystem, "--to", "messages", "--out", path("system-messages.jsonl")]);
    expect(readJsonl(path("system-messages.jsonl"))[1]!.messages).toEqual([
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello", weight: 0 },
      { role: "user", content: "Bye" },
      { role: "assistant", content: "Bye" },
    ]);
    const text = await runHere(["convert", SEEDS, "--to", "completion", "--out", path("x.jsonl")]);
    expect(text).toBe(
      `${path("x.jsonl")}: 0 of 175 records as completion (from alpaca); 175 not converted (not a completion record 175)\n`,
    );
  });
});

describe("data dedup", () => {
  const records = [
    {
      instruction: "Name three rivers that flow through Germany and France.",
      input: "",
      output: "Rhine, Moselle, Saar",
    },
    {
      instruction: "Name three rivers that flow through Germany and France.",
      input: "",
      output: "Rhine, Moselle, Saar",
    },
    {
      instruction: "Name three rivers that flow through Germany and France.",
      input: "",
      output: "The Rhine, the Moselle and the Saar.",
    },
    { instruction: "name three rivers that flow through germany and france!", input: "", output: "Rhine" },
    {
      instruction: "Explain why the sky looks blue during a clear afternoon.",
      input: "",
      output: "Scattering.",
    },
    {
      instruction: "Translate the sentence into German.",
      input: "The river is long.",
      output: "Der Fluss ist lang.",
    },
    {
      instruction: "Translate the sentence into German.",
      input: "The cat sleeps on the sofa.",
      output: "Die Katze schläft auf dem Sofa.",
    },
  ];

  it("drops exact copies and near-duplicate instructions, keeping the first", async () => {
    const file = jsonl("dups.jsonl", records);
    const out = path("dedup.jsonl");
    const summary = await run(["dedup", file, "--out", out]);
    expect(summary).toMatchObject({
      records: 7,
      written: 4,
      dropped: { total: 3, byReason: { "exact duplicate": 1, "near duplicate": 2 } },
      lsh: { threshold: 0.8, numPerm: 128 },
    });
    expect(readJsonl(out)).toEqual([records[0], records[4], records[5], records[6]]);
    const exact = path("dedup-exact.jsonl");
    expect(await run(["dedup", file, "--out", exact, "--exact-only"])).toMatchObject({
      written: 6,
      lsh: null,
    });
    expect(readJsonl(exact)).toEqual(records.filter((_, i) => i !== 1));
  });

  it("is stable: deduplicated data deduplicates to itself", async () => {
    const once = path("seeds-dedup.jsonl");
    const first = await run(["dedup", SEEDS, "--out", once]);
    const twice = path("seeds-dedup2.jsonl");
    const second = await run(["dedup", once, "--out", twice]);
    expect(second.written).toBe(first.written);
    expect(readFileSync(twice, "utf8")).toBe(readFileSync(once, "utf8"));
  });
});

describe("data filter", () => {
  it("drops by length, keywords, refusals and language, counting each reason", async () => {
    const records = [
      { instruction: "Say hi.", input: "", output: "Hi!" },
      { instruction: "Write a long story about a dragon.", input: "", output: "x ".repeat(400) },
      {
        instruction: "Describe a picture of a cat in the garden.",
        input: "",
        output: "A cat sits among the flowers.",
      },
      {
        instruction: "Tell me how to pick a lock on a door.",
        input: "",
        output: "As an AI language model, I cannot help with that.",
      },
      {
        instruction: "Explique comment faire une omelette.",
        input: "",
        output: "Battez les oeufs et faites-les cuire dans une poêle avec du beurre.",
      },
      {
        instruction: "Give one tip for learning to cook at home.",
        input: "",
        output: "Start with simple recipes and cook them often.",
      },
    ];
    const file = jsonl("filter.jsonl", records);
    const out = path("filtered.jsonl");
    const summary = await run([
      "filter",
      file,
      "--out",
      out,
      "--min-chars",
      "20",
      "--max-chars",
      "300",
      "--exclude",
      "picture, image",
      "--drop-refusals",
      "--lang",
      "en",
    ]);
    expect(summary.dropped.byReason).toEqual({
      "too short": 1,
      "too long": 1,
      "excluded word": 1,
      refusal: 1,
      "other language": 1,
    });
    expect(readJsonl(out)).toEqual([records[5]]);
    // The same output again: replacing it takes --force.
    const required = await run(["filter", file, "--out", out, "--require", "cook, dragon", "--force"]);
    expect(required.dropped.byReason).toEqual({ "no required word": 4 });
  });

  it("counts tokens with a tokenizer, and asks for one when token limits are given", async () => {
    const vocab = path("vocab.gguf");
    writeVocabGguf(vocab, spmDescription());
    // Message texts as the filter counts them: the user message (instruction, a blank line, input), the reply.
    const tokens = (r: Record<string, unknown>) => {
      const user = r.input === "" ? r.instruction : `${r.instruction}\n\n${r.input}`;
      return spmTokenizer().encode(`${user}\n${r.output}`, { addSpecial: false }).length;
    };
    const out = path("short.jsonl");
    const summary = await run([
      "filter",
      SEEDS,
      "--out",
      out,
      "--tokenizer",
      vocab,
      "--min-tokens",
      "40",
      "--max-tokens",
      "150",
    ]);
    const all = seedRecords();
    const expected = all.filter((r) => tokens(r) >= 40 && tokens(r) <= 150);
    expect(readJsonl(out)).toEqual(expected);
    expect(summary.dropped.byReason).toEqual({
      "too few tokens": all.filter((r) => tokens(r) < 40).length,
      "too many tokens": all.filter((r) => tokens(r) > 150).length,
    });
    expect(expected.length).toBeGreaterThan(20);
    await expectUserError(
      ["filter", SEEDS, "--out", path("t.jsonl"), "--max-tokens", "10"],
      /^smallhammer: --min-tokens and --max-tokens need --tokenizer/,
    );
    await expectUserError(
      ["filter", SEEDS, "--out", path("t.jsonl"), "--exclude", " , "],
      /^smallhammer: --exclude: no words given/,
    );
  });
});

describe("data split and sample", () => {
  it("splits exactly the share asked, in order, by seed", async () => {
    const train = path("train.jsonl");
    const validation = path("validation.jsonl");
    const summary = await run([
      "split",
      SEEDS,
      "--train-out",
      train,
      "--validation-out",
      validation,
      "--validation",
      "0.1",
      "--seed",
      "7",
    ]);
    expect(summary).toMatchObject({ records: 175, train: { records: 157 }, validation: { records: 18 } });
    const all = seedRecords();
    const t = readJsonl(train);
    const v = readJsonl(validation);
    // Together they are the dataset, each record once, each file in the original order.
    const position = new Map(all.map((r, i) => [r.instruction, i]));
    const ti = t.map((r) => position.get(r.instruction as string)!);
    const vi = v.map((r) => position.get(r.instruction as string)!);
    expect([...ti, ...vi].sort((a, b) => a - b)).toEqual(all.map((_, i) => i));
    expect(ti).toEqual([...ti].sort((a, b) => a - b));
    expect(vi).toEqual([...vi].sort((a, b) => a - b));
    // The same seed gives the same split; another seed another.
    await run([
      "split",
      SEEDS,
      "--train-out",
      path("t2.jsonl"),
      "--validation-out",
      path("v2.jsonl"),
      "--validation",
      "0.1",
      "--seed",
      "7",
    ]);
    expect(readFileSync(path("v2.jsonl"), "utf8")).toBe(readFileSync(validation, "utf8"));
    await run([
      "split",
      SEEDS,
      "--train-out",
      path("t3.jsonl"),
      "--validation-out",
      path("v3.jsonl"),
      "--validation",
      "0.1",
      "--seed",
      "8",
    ]);
    expect(readFileSync(path("v3.jsonl"), "utf8")).not.toBe(readFileSync(validation, "utf8"));
    // A count instead of a share.
    expect(
      await run([
        "split",
        DUMMY,
        "--train-out",
        path("t4.json"),
        "--validation-out",
        path("v4.json"),
        "--validation",
        "25",
      ]),
    ).toMatchObject({
      train: { records: 475 },
      validation: { records: 25 },
    });
    await expectUserError(
      [
        "split",
        SEEDS,
        "--train-out",
        path("t5.jsonl"),
        "--validation-out",
        path("v5.jsonl"),
        "--validation",
        "500",
      ],
      /^smallhammer: --validation: 500 records asked, the dataset has 175\n$/,
    );
  });

  it("samples by seed, in order, all records when asked for more", async () => {
    const out = path("sample.jsonl");
    expect(await run(["sample", SEEDS, "--num", "10", "--seed", "3", "--out", out])).toMatchObject({
      records: 175,
      written: 10,
    });
    const picked = readJsonl(out);
    const all = seedRecords();
    const positions = picked.map((p) => all.findIndex((r) => r.instruction === p.instruction));
    expect(positions.every((i) => i >= 0)).toBe(true);
    expect(positions).toEqual([...positions].sort((a, b) => a - b));
    await run(["sample", SEEDS, "--num", "10", "--seed", "3", "--out", path("sample2.jsonl")]);
    expect(readFileSync(path("sample2.jsonl"), "utf8")).toBe(readFileSync(out, "utf8"));
    expect(await run(["sample", SEEDS, "--num", "1000", "--out", path("sample-all.jsonl")])).toMatchObject({
      written: 175,
    });
  });
});

describe("outputs", () => {
  it("a bad record stops the command with file:line and leaves no output, not even a partial one", async () => {
    const lines = seedRecords().map((r) => JSON.stringify(r));
    lines.splice(100, 0, '{"instruction": "No output here."}');
    writeFileSync(path("bad.jsonl"), `${lines.join("\n")}\n`);
    for (const args of [
      ["convert", path("bad.jsonl"), "--to", "sharegpt", "--out", path("bad-out.jsonl")],
      ["dedup", path("bad.jsonl"), "--out", path("bad-out.jsonl")],
      ["filter", path("bad.jsonl"), "--out", path("bad-out.jsonl")],
      ["sample", path("bad.jsonl"), "--num", "5", "--out", path("bad-out.jsonl")],
      [
        "split",
        path("bad.jsonl"),
        "--train-out",
        path("bad-out.jsonl"),
        "--validation-out",
        path("bad-val.jsonl"),
      ],
    ]) {
      await expectUserError(args, /^smallhammer: .*bad\.jsonl:101: field output: missing\n$/);
    }
    expect(readdirSync(dir).filter((f) => f.includes("bad-"))).toEqual([]);
    // With --skip-invalid the record is counted and left out.
    const summary = await run([
      "convert",
      path("bad.jsonl"),
      "--to",
      "alpaca",
      "--out",
      path("bad-skipped.jsonl"),
      "--skip-invalid",
    ]);
    expect(summary).toMatchObject({ written: 175, skipped: { total: 1, byReason: { "missing field": 1 } } });
  });

  it("an output that cannot be written is one line, and leaves nothing behind", async () => {
    const missing = path("no-such-dir");
    await expectUserError(
      ["convert", SEEDS, "--to", "sharegpt", "--out", join(missing, "x.jsonl")],
      /^smallhammer: --out .*no-such-dir\/x\.jsonl: cannot write, the directory .*no-such-dir does not exist\n$/,
    );
    await expectUserError(
      ["split", SEEDS, "--train-out", path("ok-train.jsonl"), "--validation-out", join(missing, "v.jsonl")],
      /^smallhammer: --validation-out .*no-such-dir\/v\.jsonl: cannot write, the directory .*no-such-dir does not exist\n$/,
    );
    expect(readdirSync(dir).filter((f) => f.includes("ok-train"))).toEqual([]);
  });

  it("never writes over its own input, and replaces another existing output only with --force", async () => {
    const file = jsonl("in-place.jsonl", [...seedRecords(), ...seedRecords()]);
    const before = readFileSync(file, "utf8");
    await expectUserError(
      ["dedup", file, "--out", file, "--force"],
      /^smallhammer: --out .*in-place\.jsonl would overwrite the input .*in-place\.jsonl; write to another path\n$/,
    );
    expect(readFileSync(file, "utf8")).toBe(before);
    const out = jsonl("taken.jsonl", [seedRecords()[0]]);
    await expectUserError(
      ["dedup", file, "--out", out],
      /^smallhammer: --out .*taken\.jsonl exists; add --force/,
    );
    expect(readJsonl(out)).toEqual([seedRecords()[0]]);
    expect(await run(["dedup", file, "--out", out, "--force"])).toMatchObject({ records: 350, written: 175 });
    expect(readJsonl(out)).toEqual(seedRecords());
  });
});
