// Dataset readers and validators on the shared samples and on files written here.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type DatasetRecord,
  detectFormat,
  InvalidRecordError,
  parseRecord,
  type ReadRecordsOptions,
  type RecordIssue,
  RecordReader,
  readRecords,
} from "../src/data/records.js";
import { UserError } from "../src/errors.js";

const SHAREGPT = new URL("./fixtures/sharegpt_dummy_conversation.json", import.meta.url).pathname;
const SEEDS = new URL("./fixtures/alpaca_seed_tasks.jsonl", import.meta.url).pathname;

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "smallhammer-records-"));
});
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

async function readAll(path: string, options: ReadRecordsOptions = {}): Promise<DatasetRecord[]> {
  const out: DatasetRecord[] = [];
  for await (const r of readRecords(path, options)) out.push(r);
  return out;
}

async function readError(path: string, options: ReadRecordsOptions = {}): Promise<UserError> {
  try {
    await readAll(path, options);
  } catch (e) {
    expect(e).toBeInstanceOf(UserError);
    expect((e as Error).message).not.toContain("\n");
    return e as UserError;
  }
  throw new Error(`reading ${path} did not fail`);
}

const jsonl = (records: unknown[]) => records.map((r) => JSON.stringify(r)).join("\n") + "\n";

describe("the shared samples", () => {
  it("ShareGPT (a JSON array): 500 conversations, human/gpt as user/assistant, line and index of each", async () => {
    const reader = await RecordReader.open(SHAREGPT);
    expect(reader.format).toBe("sharegpt");
    expect(reader.detected).toBe(true);
    const records: DatasetRecord[] = [];
    for await (const r of reader) records.push(r);
    expect(records).toHaveLength(500);
    expect(reader.records).toBe(500);
    const raw = JSON.parse(readFileSync(SHAREGPT, "utf8")) as {
      id: string;
      conversations: { from: string; value: string }[];
    }[];
    const lines = readFileSync(SHAREGPT, "utf8").split("\n");
    for (const i of [0, 1, 2, 137, 499]) {
      const r = records[i]!;
      expect(r.kind).toBe("chat");
      expect(r.messages).toEqual(
        raw[i]!.conversations.map((t) => ({
          role: t.from === "human" ? "user" : "assistant",
          content: t.value,
        })),
      );
      expect(r.source.index).toBe(i);
      expect(r.source.file).toBe(SHAREGPT);
      // The element's "{" is on its line, and the line after holds its id.
      expect(lines[r.source.line - 1]!.trim()).toBe("{");
      expect(lines[r.source.line]).toContain(`"id": "${raw[i]!.id}"`);
    }
  });

  it("Alpaca seed tasks (JSONL with instances): 175 records, input kept apart, line numbers", async () => {
    const records = await readAll(SEEDS);
    expect(records).toHaveLength(175);
    const lines = readFileSync(SEEDS, "utf8").trim().split("\n");
    for (const [i, r] of records.entries()) {
      const raw = JSON.parse(lines[i]!) as {
        instruction: string;
        instances: { input: string; output: string }[];
      };
      expect(r.source).toEqual({ file: SEEDS, line: i + 1 });
      const user = {
        role: "user",
        content: raw.instruction,
        ...(raw.instances[0]!.input ? { input: raw.instances[0]!.input } : {}),
      };
      expect(r.messages).toEqual([user, { role: "assistant", content: raw.instances[0]!.output }]);
    }
    expect(records.filter((r) => r.messages[0]!.input !== undefined).length).toBeGreaterThan(10);
  });

  it("the same records from tiny read chunks (every state crosses a chunk boundary)", async () => {
    for (const path of [SHAREGPT, SEEDS]) {
      const whole = await readAll(path);
      expect(await readAll(path, { chunkBytes: 7 })).toEqual(whole);
    }
  });
});

describe("streaming", () => {
  it("a large JSON array and a large JSONL file are read a chunk at a time, not whole", async () => {
    const record = { instruction: "Repeat the text.", input: "x".repeat(150), output: "y".repeat(150) };
    const count = 40_000; // about 14 MB each
    const array = file(
      "large.json",
      `[${Array.from({ length: count }, () => JSON.stringify(record)).join(",\n")}]`,
    );
    const lines = file("large.jsonl", jsonl(Array.from({ length: count }, () => record)));
    for (const path of [array, lines]) {
      const reader = await RecordReader.open(path);
      let n = 0;
      for await (const r of reader) {
        if (n === 0) {
          expect(r.messages[1]!.content).toBe(record.output);
          expect(reader.bytesRead).toBeLessThanOrEqual(2 << 20);
          expect(reader.size).toBeGreaterThan(10 << 20);
        }
        n++;
      }
      expect(n).toBe(count);
      expect(reader.bytesRead).toBe(reader.size);
    }
  });

  it("close() stops a reader before its end", async () => {
    const reader = await RecordReader.open(SHAREGPT, { chunkBytes: 4096 });
    await reader.close();
    expect(reader.bytesRead).toBeLessThan(reader.size);
    await expect(async () => {
      for await (const _ of reader) break;
    }).rejects.toThrow(/only once/);
  });
});

describe("formats", () => {
  it("Alpaca as a pretty-printed JSON array and as JSONL give the same messages; input is optional", async () => {
    const data = [
      { instruction: "Say hi.", input: "", output: "Hi!" },
      { instruction: "Translate.", input: "Bonjour", output: "Hello" },
      { instruction: "Count to 3.", output: "1 2 3", id: 7 },
      { instruction: "Null input.", input: null, output: "ok" },
    ];
    const a = await readAll(file("alpaca.json", JSON.stringify(data, null, 2)));
    const b = await readAll(file("alpaca.jsonl", jsonl(data)));
    expect(a.map((r) => r.messages)).toEqual(b.map((r) => r.messages));
    expect(a[1]!.messages[0]).toEqual({ role: "user", content: "Translate.", input: "Bonjour" });
    expect(a[0]!.messages[0]).toEqual({ role: "user", content: "Say hi." });
    expect(a.map((r) => r.source.index)).toEqual([0, 1, 2, 3]);
    expect(a.map((r) => r.source.line)).toEqual([2, 7, 12, 17]);
    expect(b.map((r) => r.source)).toEqual(
      [1, 2, 3, 4].map((line) => ({ file: join(dir, "alpaca.jsonl"), line })),
    );
  });

  it("chat messages: system first, text parts joined, weight 0 keeps a reply as untrained context", async () => {
    const path = file(
      "messages.jsonl",
      jsonl([
        {
          messages: [
            { role: "system", content: "Be brief." },
            {
              role: "user",
              content: [
                { type: "text", text: "Hello, " },
                { type: "text", text: "there" },
              ],
            },
            { role: "assistant", content: "Hi.", weight: 0 },
            { role: "user", content: "Bye" },
            { role: "assistant", content: "Bye.", weight: 1 },
          ],
        },
      ]),
    );
    const [r] = await readAll(path);
    expect(r!.messages).toEqual([
      { role: "system", content: "Be brief." },
      { role: "user", content: "Hello, there" },
      { role: "assistant", content: "Hi.", train: false },
      { role: "user", content: "Bye" },
      { role: "assistant", content: "Bye." },
    ]);
  });

  it("prompt/completion records are completion records of two messages", async () => {
    const [r] = await readAll(
      file("completion.jsonl", jsonl([{ prompt: "", completion: "Once upon a time" }])),
    );
    expect(r!.kind).toBe("completion");
    expect(r!.messages).toEqual([
      { role: "user", content: "" },
      { role: "assistant", content: "Once upon a time" },
    ]);
  });

  it("detects each format from its keys", () => {
    expect(detectFormat({ conversations: [] })).toBe("sharegpt");
    expect(detectFormat({ messages: [] })).toBe("messages");
    expect(detectFormat({ instruction: "x", output: "y" })).toBe("alpaca");
    expect(detectFormat({ prompt: "x", completion: "y" })).toBe("completion");
    expect(detectFormat({ text: "x" })).toBeUndefined();
    expect(detectFormat([1])).toBeUndefined();
  });

  it("a BOM, CRLF line ends and blank lines are fine in JSONL", async () => {
    const path = file(
      "crlf.jsonl",
      `\ufeff\r\n${JSON.stringify({ prompt: "a", completion: "b" })}\r\n\r\n${JSON.stringify({ prompt: "c", completion: "d" })}`,
    );
    const records = await readAll(path);
    expect(records.map((r) => [r.source.line, r.messages[1]!.content])).toEqual([
      [2, "b"],
      [4, "d"],
    ]);
  });

  it("JSON array elements with brackets, quotes and escapes inside strings, across chunks", async () => {
    const tricky = ['a "quoted" [text] {braces}', "back\\slash\\", "line\nbreak", "emoji 😀 and ü", '\\"]}'];
    const data = tricky.map((t, i) => ({ instruction: `task ${i} ${t}`, output: t }));
    const path = file("tricky.json", JSON.stringify(data));
    for (const chunkBytes of [1, 3, 1 << 20]) {
      const records = await readAll(path, { chunkBytes });
      expect(records.map((r) => r.messages[1]!.content)).toEqual(tricky);
    }
  });
});

describe("invalid records", () => {
  const cases: [string, unknown, string, RecordIssue["reason"]][] = [
    ["alpaca.jsonl", { instruction: "x" }, "field output: missing", "missing field"],
    [
      "alpaca.jsonl",
      { instruction: "x", output: 3 },
      "field output: expected a string, got a number",
      "wrong type",
    ],
    ["alpaca.jsonl", { instruction: "  ", output: "y" }, "field instruction: blank", "blank text"],
    ["alpaca.jsonl", { instruction: "x", instances: [] }, "field instances: empty list", "empty list"],
    [
      "alpaca.jsonl",
      { instruction: "x", instances: [{ input: "" }] },
      "field instances[0].output: missing",
      "missing field",
    ],
    [
      "sharegpt.jsonl",
      {
        conversations: [
          { from: "human", value: "hi" },
          { from: "bot", value: "yo" },
        ],
      },
      'field conversations[1].from: "bot" is not one of human, gpt, system',
      "unknown role",
    ],
    [
      "sharegpt.jsonl",
      { conversations: [{ from: "gpt", value: "hi" }] },
      "field conversations[0]: expected a user message, got assistant",
      "bad turn order",
    ],
    [
      "sharegpt.jsonl",
      { conversations: [{ from: "human", value: "hi" }] },
      "field conversations: ends with a user message, not an assistant reply",
      "bad turn order",
    ],
    [
      "sharegpt.jsonl",
      {
        conversations: [
          { from: "human", value: "hi" },
          { from: "gpt", value: " " },
        ],
      },
      "field conversations[1].value: blank",
      "blank text",
    ],
    [
      "messages.jsonl",
      {
        messages: [
          { role: "user", content: "a" },
          { role: "system", content: "b" },
          { role: "assistant", content: "c" },
        ],
      },
      "field messages[1]: a system message may only come first",
      "bad turn order",
    ],
    [
      "messages.jsonl",
      {
        messages: [
          { role: "user", content: "a" },
          { role: "tool", content: "b" },
        ],
      },
      'field messages[1].role: "tool" is not one of system, user, assistant',
      "unknown role",
    ],
    [
      "messages.jsonl",
      {
        messages: [
          { role: "user", content: "a" },
          { role: "assistant", content: null },
        ],
      },
      "field messages[1].content: expected a string or a list of text parts, got null",
      "wrong type",
    ],
    [
      "messages.jsonl",
      {
        messages: [
          { role: "user", content: "a" },
          { role: "assistant", content: "b", weight: 0.5 },
        ],
      },
      "field messages[1].weight: expected 0 or 1, got 0.5",
      "wrong type",
    ],
    ["completion.jsonl", { prompt: "a", completion: "" }, "field completion: blank", "blank text"],
  ];

  it.each(cases)("%s: %s", async (name, bad, message, reason) => {
    const good = JSON.parse(
      {
        "alpaca.jsonl": '{"instruction":"i","output":"o"}',
        "sharegpt.jsonl": '{"conversations":[{"from":"human","value":"u"},{"from":"gpt","value":"g"}]}',
        "messages.jsonl": '{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"}]}',
        "completion.jsonl": '{"prompt":"p","completion":"c"}',
      }[name]!,
    );
    const path = file(name, jsonl([good, good, bad, good]));
    const e = await readError(path);
    expect(e).toBeInstanceOf(InvalidRecordError);
    expect(e.message.startsWith(`${path}:3: ${message}`)).toBe(true);
    expect((e as InvalidRecordError).issue.reason).toBe(reason);

    const skipped: RecordIssue[] = [];
    const reader = await RecordReader.open(path, { skipInvalid: true, onSkip: (i) => skipped.push(i) });
    const records: DatasetRecord[] = [];
    for await (const r of reader) records.push(r);
    expect(records.map((r) => r.source.line)).toEqual([1, 2, 4]);
    expect(reader.skipped).toEqual(new Map([[reason, 1]]));
    expect(skipped.map((i) => i.source.line)).toEqual([3]);
  });

  it("in a JSON array, the error names the line and the array index", async () => {
    const path = file(
      "bad.json",
      JSON.stringify(
        [
          {
            conversations: [
              { from: "human", value: "a" },
              { from: "gpt", value: "b" },
            ],
          },
          {
            conversations: [
              { from: "human", value: "a" },
              { from: "bot", value: "b" },
            ],
          },
        ],
        null,
        2,
      ),
    );
    const e = await readError(path);
    expect(e.message).toBe(
      `${path}:14 (array index 1): field conversations[1].from: "bot" is not one of human, gpt, system`,
    );
  });

  it("invalid JSON, non-objects and several reasons are counted by reason", async () => {
    const ok = '{"prompt":"p","completion":"c"}';
    const path = file(
      "mixed.jsonl",
      [ok, "{not json", "[1,2]", '{"prompt":"p"}', '{"prompt":"p"}', ok, "42"].join("\n"),
    );
    const e = await readError(path);
    expect(e.message).toMatch(new RegExp(`^${path}:2: invalid JSON: `));
    const reader = await RecordReader.open(path, { skipInvalid: true });
    let n = 0;
    for await (const _ of reader) n++;
    expect(n).toBe(2);
    expect(Object.fromEntries(reader.skipped)).toEqual({
      "invalid JSON": 1,
      "not an object": 2,
      "missing field": 2,
    });
    expect(reader.skippedCount).toBe(5);
  });

  it("a pretty-printed object is not JSONL: the error says so", async () => {
    const path = file("object.json", JSON.stringify({ instruction: "a", output: "b" }, null, 2));
    const e = await readError(path);
    expect(e.message).toContain(`${path}:1: invalid JSON`);
    expect(e.message).toContain("a JSON file must hold an array of records");
  });

  it("--format wins over detection; an unknown layout asks for --format", async () => {
    const e = await readError(SEEDS, { format: "sharegpt" });
    expect(e.message).toBe(`${SEEDS}:1: field conversations: missing`);
    const unknown = await readError(file("text.jsonl", jsonl([{ text: "plain" }])));
    expect(unknown.message).toContain("cannot tell the dataset format from the first record (keys: text)");
    expect(unknown.message).toContain("--format");
  });

  it("a broken JSON array or an empty file is a clear error", async () => {
    const missingComma = file(
      "comma.json",
      '[\n{"prompt":"a","completion":"b"}\n{"prompt":"c","completion":"d"}]',
    );
    expect((await readError(missingComma)).message).toBe(
      `${missingComma}:3: invalid JSON array: expected ',' or ']' after element 0`,
    );
    const truncated = file("trunc.json", '[{"prompt":"a","completion":"b"}, {"prompt":"c"');
    expect((await readError(truncated)).message).toContain("ends inside its JSON array");
    const after = file("after.json", '[{"prompt":"a","completion":"b"}] x');
    expect((await readError(after)).message).toBe(`${after}:1: unexpected text after the JSON array`);
    const empty = file("empty.jsonl", "\n\n");
    expect((await readError(empty)).message).toContain("no records");
    expect((await readError(join(dir, "absent.jsonl"))).message).toContain("cannot read the file (ENOENT)");
  });

  it("a line or array element over the length limit is an error, or skipped and counted, never held", async () => {
    const short = (i: number) => JSON.stringify({ instruction: `Task ${i}.`, output: "Done." });
    const long = JSON.stringify({ instruction: "x".repeat(5000), output: "y" });
    const jsonl = file("long-line.jsonl", [short(1), long, short(3), long].join("\n"));
    // The limit in a chunk far smaller than the line: the line is cut off across chunks.
    const small = { maxLineChars: 1000, chunkBytes: 64 };
    expect((await readError(jsonl, small)).message).toBe(`${jsonl}:2: line longer than 1000 characters`);
    const skipped: RecordIssue[] = [];
    const reader = await RecordReader.open(jsonl, {
      ...small,
      skipInvalid: true,
      onSkip: (i) => skipped.push(i),
    });
    const kept: DatasetRecord[] = [];
    for await (const r of reader) kept.push(r);
    expect(kept.map((r) => r.source.line)).toEqual([1, 3]);
    expect(reader.skipped).toEqual(new Map([["too long", 2]]));
    expect(skipped.map((i) => i.source.line)).toEqual([2, 4]);
    // Within the limit the same file reads whole.
    expect(await readAll(jsonl, { chunkBytes: 64 })).toHaveLength(4);

    const array = file("long-element.json", `[\n${short(1)},\n${long},\n${short(3)}\n]\n`);
    expect((await readError(array, small)).message).toBe(
      `${array}:3 (array index 1): record longer than 1000 characters`,
    );
    const fromArray = await readAll(array, { ...small, skipInvalid: true });
    expect(fromArray.map((r) => r.source.index)).toEqual([0, 2]);
  });

  it("parseRecord validates an in-memory value", () => {
    const source = { file: "mem", line: 1 };
    const ok = parseRecord({ instruction: "a", output: "b" }, "alpaca", source);
    expect(ok.ok && ok.records[0]!.messages.length).toBe(2);
    const bad = parseRecord({ instruction: "a" }, "alpaca", source);
    expect(bad).toEqual({
      ok: false,
      issue: { source, field: "output", problem: "missing", reason: "missing field" },
    });
  });
});
