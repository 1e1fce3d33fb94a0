import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RecordReader } from "../src/data/records.js";
import { cleanShareGpt, splitByTokens } from "../src/data/sharegpt-clean.js";
import { ensureBuilt, ROOT, runCli } from "./helpers/cli.js";
import { spmDescription, spmTokenizer, writeVocabGguf } from "./helpers/shakespeare-vocab.js";

const DUMMY = join(ROOT, "test", "fixtures", "sharegpt_dummy_conversation.json");

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "sh-sharegpt-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const h = (value: string) => ({ from: "human", value });
const g = (value: string) => ({ from: "gpt", value });

/** One record per drop reason and per fix, as JSON lines. */
function messyLines(): string[] {
  const records: unknown[] = [
    {
      id: "html",
      conversations: [
        h("Show me Python."),
        g('<p>Use <code>print</code>:</p><pre><code class="language-python">print(1)</code></pre>'),
      ],
    },
    { id: "leading", conversations: [g("Hello, how can I help?"), h("What is two plus two?"), g("Four.")] },
    { id: "trailing", conversations: [h("Name a color."), g("Blue."), h("Another?")] },
    { id: "role", conversations: [h("Hi"), { from: "narrator", value: "..." }] },
    { id: "order", conversations: [h("One"), h("Two"), g("Three")] },
    { id: "empty", conversations: [] },
    { id: "lonely", conversations: [h("Anyone there?")] },
    {
      id: "html-again",
      conversations: [h("Show me Python."), g("Use `print`:\n\n```python\nprint(1)\n```")],
    },
    {
      id: "refusal",
      conversations: [h("Tell me a secret."), g("As an AI language model, I do not have secrets.")],
    },
    {
      id: "french",
      conversations: [
        h("Bonjour, comment allez-vous ?"),
        g("Je vais très bien, merci. Et vous, comment est la journée ?"),
      ],
    },
    { id: "shape", foo: 1 },
    { id: "value", conversations: [h("Hi"), { from: "gpt", value: 42 }] },
    { id: "blank", conversations: [h("First question here."), g("First answer."), h("Second?"), g("   ")] },
    {
      id: "system",
      conversations: [
        { from: "system", value: "Be brief." },
        h("Why is the sea salty?"),
        g("Rivers carry dissolved minerals into it."),
      ],
    },
    {
      id: "system-late",
      conversations: [h("Hi there."), { from: "system", value: "Be brief." }, g("Hello.")],
    },
  ];
  return [
    ...records.map((r) => JSON.stringify(r)),
    '{"id": "broken", "conversations": [',
    JSON.stringify({ conversations: [h("How do plants grow?"), g("With light, water and nutrients.")] }),
  ];
}

describe("ShareGPT cleaning", () => {
  it("counts every reason on a messy file and writes clean conversations", async () => {
    const input = join(dir, "messy.jsonl");
    writeFileSync(input, `${messyLines().join("\n")}\n`);
    const out = join(dir, "clean.jsonl");
    const report = await cleanShareGpt(input, out, { dropRefusals: true, lang: "en" });
    expect(report.conversations).toBe(17);
    expect(report.dropped).toEqual({
      "unknown role": 1,
      "bad turn order": 2,
      empty: 2,
      duplicate: 1,
      refusal: 1,
      "other language": 1,
      "not a conversation": 2,
      "invalid JSON": 1,
    });
    expect(report.kept).toBe(6);
    expect(report.written).toBe(6);
    expect(report.fixed).toEqual({
      "html converted": 1,
      "leading assistant turn removed": 1,
      "trailing user turn removed": 2,
      "cut at a blank turn": 1,
    });
    const lines = readFileSync(out, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(lines.map((l) => l.id)).toEqual([
      "html",
      "leading",
      "trailing",
      "blank",
      "system",
      "conversation_16",
    ]);
    expect(lines[0].conversations[1].value).toBe("Use `print`:\n\n```python\nprint(1)\n```");
    expect(lines[1].conversations).toEqual([h("What is two plus two?"), g("Four.")]);
    expect(lines[3].conversations).toEqual([h("First question here."), g("First answer.")]);
    expect(lines[4].conversations[0]).toEqual({ from: "system", value: "Be brief." });
    // The output is valid ShareGPT for the readers.
    const reader = await RecordReader.open(out);
    let n = 0;
    for await (const _ of reader) n++;
    expect(reader.format).toBe("sharegpt");
    expect(n).toBe(6);
  });

  it("keeps refusals and other languages unless asked", async () => {
    const input = join(dir, "messy2.jsonl");
    writeFileSync(input, `${messyLines().join("\n")}\n`);
    const report = await cleanShareGpt(input, join(dir, "clean2.json"));
    expect(report.dropped.refusal).toBeUndefined();
    expect(report.dropped["other language"]).toBeUndefined();
    expect(report.kept).toBe(8);
    // A .json output is one JSON array.
    expect(JSON.parse(readFileSync(join(dir, "clean2.json"), "utf8"))).toHaveLength(8);
  });

  it("the shared sample is clean: 500 in, 500 out, nothing dropped or changed", async () => {
    const out = join(dir, "dummy.json");
    const report = await cleanShareGpt(DUMMY, out);
    expect(report).toMatchObject({ conversations: 500, kept: 500, written: 500, dropped: {}, fixed: {} });
    const original = JSON.parse(readFileSync(DUMMY, "utf8"));
    expect(JSON.parse(readFileSync(out, "utf8"))).toEqual(original);
  });

  it("splits at pair boundaries within the token budget, repeating the system message", () => {
    const tokens = (s: string) => s.split(" ").length;
    const turns = [
      { role: "system" as const, value: "s s" },
      { role: "user" as const, value: "u1 u1 u1" },
      { role: "assistant" as const, value: "a1 a1 a1" },
      { role: "user" as const, value: "u2" },
      { role: "assistant" as const, value: "a2" },
      { role: "user" as const, value: "long ".repeat(20).trim() },
      { role: "assistant" as const, value: "x" },
      { role: "user" as const, value: "u4 u4" },
      { role: "assistant" as const, value: "a4 a4" },
    ];
    const { parts, pairsRemoved } = splitByTokens(turns, 10, tokens);
    expect(pairsRemoved).toBe(1);
    expect(parts.map((p) => p.map((t) => t.value))).toEqual([
      ["s s", "u1 u1 u1", "a1 a1 a1", "u2", "a2"],
      ["s s", "u4 u4", "a4 a4"],
    ]);
    for (const p of parts) expect(p.reduce((n, t) => n + tokens(t.value), 0)).toBeLessThanOrEqual(10);
    expect(splitByTokens(turns.slice(5, 7), 10, tokens)).toEqual({ parts: [], pairsRemoved: 1 });
  });

  it("with a real tokenizer: every part fits, nothing is lost but over-long pairs", async () => {
    const tokenizer = spmTokenizer();
    const count = (s: string) => tokenizer.encode(s, { addSpecial: false }).length;
    const out = join(dir, "split.jsonl");
    const report = await cleanShareGpt(DUMMY, out, { maxTokens: 88, tokenizer });
    // Every conversation has a pair within 88 tokens, some pairs are longer.
    expect(report.dropped).toEqual({});
    expect(report.fixed["turn pair over max tokens removed"]).toBeGreaterThan(0);
    expect(report.conversations).toBe(500);
    expect(report.fixed.split).toBeGreaterThan(100);
    expect(report.written).toBeGreaterThan(report.kept);
    const parts = readFileSync(out, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(parts).toHaveLength(report.written);
    let pairs = 0;
    for (const p of parts) {
      expect(
        p.conversations.reduce((n: number, t: { value: string }) => n + count(t.value), 0),
      ).toBeLessThanOrEqual(88);
      pairs += p.conversations.length / 2;
    }
    const original = JSON.parse(readFileSync(DUMMY, "utf8"));
    const originalPairs = original.reduce(
      (n: number, c: { conversations: unknown[] }) => n + c.conversations.length / 2,
      0,
    );
    expect(pairs + (report.fixed["turn pair over max tokens removed"] ?? 0)).toBe(originalPairs);
    // Parts of one conversation are numbered after its id.
    expect(parts.some((p) => /^identity_\d+_1$/.test(p.id))).toBe(true);
  });
});

describe("data clean-sharegpt command", () => {
  beforeAll(() => ensureBuilt());

  it("prints the counts by reason, and --json the report", async () => {
    const input = join(dir, "cli.jsonl");
    writeFileSync(input, `${messyLines().join("\n")}\n`);
    const out = join(dir, "cli-out.jsonl");
    const text = await runCli(["data", "clean-sharegpt", input, "--out", out, "--drop-refusals"]);
    expect(text.stderr).toBe("");
    expect(text.status).toBe(0);
    expect(text.stdout).toBe(
      `${out}: kept 7 of 17 conversations, wrote 7; dropped 10 (bad turn order 2, empty 2, not a conversation 2, duplicate 1, invalid JSON 1, refusal 1, unknown role 1); ` +
        "changed: trailing user turn removed 2, cut at a blank turn 1, html converted 1, leading assistant turn removed 1\n",
    );
    const vocab = join(dir, "vocab.gguf");
    writeVocabGguf(vocab, spmDescription());
    const json = await runCli([
      "data",
      "clean-sharegpt",
      DUMMY,
      "--out",
      out,
      "--max-tokens",
      "88",
      "--tokenizer",
      vocab,
      "--json",
      "--force",
    ]);
    expect(json.status).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ conversations: 500, kept: 500 });
  });

  it("user mistakes are one line, exit 2, and leave no file behind", async () => {
    const out = join(dir, "never.jsonl");
    const noTokenizer = await runCli(["data", "clean-sharegpt", DUMMY, "--out", out, "--max-tokens", "100"]);
    expect(noTokenizer.status).toBe(2);
    expect(noTokenizer.stderr).toBe(
      "smallhammer: --max-tokens needs --tokenizer (token counts come from a tokenizer)\n",
    );
    const lang = await runCli(["data", "clean-sharegpt", DUMMY, "--out", out, "--lang", "xx"]);
    expect(lang.status).toBe(2);
    expect(lang.stderr).toMatch(/^smallhammer: --lang: unknown language "xx"; known: en, de, /);
    const missing = await runCli(["data", "clean-sharegpt", join(dir, "nope.json"), "--out", out]);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/^smallhammer: .*nope\.json: cannot read the file \(ENOENT\)\n$/);
    expect(readdirSync(dir).filter((f) => f.includes("never"))).toEqual([]);
  });
});
