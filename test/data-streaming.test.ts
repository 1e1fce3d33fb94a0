// Every dataset command streams: with the JavaScript heap capped far below the input's size, each
// one still goes through a large generated file. A control run shows the cap is real: reading the
// file whole under the same cap dies.
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureBuilt, runCli, runNode } from "./helpers/cli.js";

/** Heap limit for the commands, in MB. */
const HEAP_MB = 24;
/** Size of each generated input, in bytes: above the heap limit. */
const INPUT_BYTES = 32e6;

let dir: string;
let alpaca: string;
let sharegpt: string;
let alpacaRecords = 0;
let conversations = 0;

const FILLER = "The quick brown fox jumps over the lazy dog while the river runs to the sea. ".repeat(50);

/** Writes records until the file reaches INPUT_BYTES; returns how many. */
function generate(path: string, array: boolean, record: (i: number) => unknown): number {
  const fd = openSync(path, "w");
  let bytes = 0;
  let i = 0;
  let buffer = array ? "[\n" : "";
  while (bytes + buffer.length < INPUT_BYTES) {
    const json = JSON.stringify(record(i));
    buffer += array ? `${i > 0 ? ",\n" : ""}${json}` : `${json}\n`;
    i++;
    if (buffer.length > 1 << 20) {
      writeSync(fd, buffer);
      bytes += buffer.length;
      buffer = "";
    }
  }
  writeSync(fd, array ? `${buffer}\n]\n` : buffer);
  closeSync(fd);
  return i;
}

beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-streaming-"));
  alpaca = join(dir, "large.jsonl");
  alpacaRecords = generate(alpaca, false, (i) => ({
    instruction: `Describe item ${i} of the catalogue and its use number ${(i * 7919) % 100003}.`,
    input: i % 2 ? `context ${i}` : "",
    // Every hundredth record repeats the one before it.
    output: `${FILLER} (${i % 100 === 99 ? i - 1 : i})`,
  }));
  sharegpt = join(dir, "large.json");
  conversations = generate(sharegpt, true, (i) => ({
    id: `c${i}`,
    conversations: [
      { from: "human", value: `Tell me about item ${i}.` },
      { from: "gpt", value: `<p>${FILLER}</p><ul><li>detail ${i}</li></ul>` },
    ],
  }));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function capped(args: string[]) {
  const r = await runCli(["data", ...args, "--json"], { nodeArgs: [`--max-old-space-size=${HEAP_MB}`] });
  expect(r.stderr).toBe("");
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout);
}

describe(`dataset commands on ${INPUT_BYTES / 1e6} MB inputs with a ${HEAP_MB} MB heap`, () => {
  it("the heap cap is real: reading the file whole dies under it", async () => {
    expect(statSync(alpaca).size).toBeGreaterThan(1.3 * HEAP_MB * 1e6);
    const whole = await runNode([
      `--max-old-space-size=${HEAP_MB}`,
      "-e",
      `const t = require("fs").readFileSync(${JSON.stringify(alpaca)}, "utf8"); console.log(t.split("\\n").map((l) => l && JSON.parse(l)).length);`,
    ]);
    expect(whole.status).not.toBe(0);
    expect(whole.stderr).toMatch(/heap/i);
  });

  it("convert, dedup, filter, split and sample stream", async () => {
    expect(
      await capped(["convert", alpaca, "--to", "messages", "--out", join(dir, "messages.jsonl")]),
    ).toMatchObject({
      records: alpacaRecords,
      written: alpacaRecords,
    });
    const dedup = await capped(["dedup", alpaca, "--out", join(dir, "dedup.jsonl")]);
    // Records 99, 199, ... repeat their predecessor's output but not its instruction: all kept.
    expect(dedup).toMatchObject({ records: alpacaRecords, written: alpacaRecords });
    const filter = await capped([
      "filter",
      alpaca,
      "--out",
      join(dir, "filter.jsonl"),
      "--require",
      "context",
      "--lang",
      "en",
    ]);
    expect(filter.written).toBe(Math.floor(alpacaRecords / 2));
    const split = await capped([
      "split",
      alpaca,
      "--train-out",
      join(dir, "train.jsonl"),
      "--validation-out",
      join(dir, "val.jsonl"),
    ]);
    expect(split.train.records + split.validation.records).toBe(alpacaRecords);
    expect(split.validation.records).toBe(Math.round(alpacaRecords * 0.05));
    expect(await capped(["sample", alpaca, "--num", "50", "--out", join(dir, "sample.jsonl")])).toMatchObject(
      {
        written: 50,
      },
    );
    expect(readFileSync(join(dir, "sample.jsonl"), "utf8").trim().split("\n")).toHaveLength(50);
  });

  it("clean-sharegpt streams a JSON array", async () => {
    const report = await capped(["clean-sharegpt", sharegpt, "--out", join(dir, "clean.json")]);
    expect(report).toMatchObject({ conversations, kept: conversations, written: conversations, dropped: {} });
    expect(report.fixed["html converted"]).toBe(conversations);
  });
});
