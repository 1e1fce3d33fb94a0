// The token cache format: what TokenCacheWriter writes, openTokenCache reads back id for id, and
// every way a cache directory can be unusable is one line naming the directory.
import { spawn } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readTokenizerFile } from "../src/data/chat-tokens.js";
import {
  type CorpusReadOptions,
  type CorpusSegment,
  readCorpusDocuments,
  readCorpusSegments,
} from "../src/data/corpus.js";
import {
  openTokenCache,
  splitHash,
  type TokenCacheIndex,
  TokenCacheWriter,
  type TokenCacheWriterOptions,
} from "../src/data/token-cache.js";
import { UserError } from "../src/errors.js";
import { trainTokenizer, writeTokenizerGguf } from "../src/tokenizer/train.js";
import { tokenizeCorpus } from "../src/tokenizer/train-corpus.js";
import { CLI, ensureBuilt, runCli } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

const CORPUS_PATH = new URL("./fixtures/tinyshakespeare.txt", import.meta.url).pathname;
const CORPUS = readFileSync(CORPUS_PATH, "utf8");

let dir: string;
let tokenizerPath: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "smallhammer-token-cache-"));
  tokenizerPath = join(dir, "tok.gguf");
  writeTinyLlama(tokenizerPath, { dim: 8, layers: 1, heads: 2, ffn: 16 });
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

/** Random documents of 0..maxLength ids below vocabSize. */
function randomDocuments(count: number, vocabSize: number, maxLength: number, seed: number): number[][] {
  const rand = lcg(seed);
  return Array.from({ length: count }, () =>
    Array.from({ length: Math.floor(rand() * (maxLength + 1)) }, () => Math.floor(rand() * vocabSize)),
  );
}

function writeCache(
  path: string,
  docs: number[][],
  options: Partial<TokenCacheWriterOptions> = {},
  source = (i: number) => (i % 2 === 0 ? "a.txt" : "b.jsonl"),
): TokenCacheIndex {
  const w = new TokenCacheWriter(path, { vocabSize: 1000, bos: 1, eos: 2, tokenizerPath, ...options });
  for (const [i, d] of docs.entries()) w.addDocument(d, source(i));
  return w.finish();
}

function readAll(split: { tokens: number; read(start: number, out: Int32Array): void }): number[] {
  const out = new Int32Array(split.tokens);
  split.read(0, out);
  return Array.from(out);
}

/** What the splits must hold: each document as [bos, ...ids], split by splitHash. */
function expectedSplits(docs: number[][], bos: number | undefined, valFraction: number, seed: number) {
  const expected = { train: [] as number[], val: [] as number[] };
  const documents = { train: 0, val: 0 };
  docs.forEach((d, i) => {
    const name = valFraction > 0 && splitHash(seed, i) < valFraction ? "val" : "train";
    expected[name].push(...(bos === undefined ? d : [bos, ...d]));
    documents[name]++;
  });
  return { expected, documents };
}

async function expectUnusable(path: string, problem: string | RegExp) {
  const error = await openTokenCache(path).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(UserError);
  const message = (error as Error).message;
  expect(message).not.toContain("\n");
  expect(message.startsWith(`${path}: not a usable token cache (`)).toBe(true);
  if (typeof problem === "string") expect(message).toContain(problem);
  else expect(message).toMatch(problem);
}

describe("TokenCacheWriter and openTokenCache", () => {
  it("write uint16 ids, BOS before each document, split by seed, and read back id for id", async () => {
    const docs = randomDocuments(400, 1000, 40, 3);
    const path = join(dir, "u16");
    const index = writeCache(path, docs, { valFraction: 0.2, seed: 7 });
    const { expected, documents } = expectedSplits(docs, 1, 0.2, 7);

    expect(readdirSync(path).sort()).toEqual(["index.json", "tokenizer.gguf", "train.bin", "val.bin"]);
    expect(JSON.parse(readFileSync(join(path, "index.json"), "utf8"))).toEqual(index);
    expect(index).toEqual({
      format: "smallhammer-token-cache",
      version: 1,
      vocabSize: 1000,
      dtype: "uint16",
      bos: 1,
      eos: 2,
      splits: {
        train: { file: "train.bin", tokens: expected.train.length, documents: documents.train },
        val: { file: "val.bin", tokens: expected.val.length, documents: documents.val },
      },
      sources: [
        {
          path: "a.txt",
          bytes: 0,
          documents: 200,
          tokens: docs.filter((_, i) => i % 2 === 0).reduce((s, d) => s + d.length + 1, 0),
        },
        {
          path: "b.jsonl",
          bytes: 0,
          documents: 200,
          tokens: docs.filter((_, i) => i % 2 === 1).reduce((s, d) => s + d.length + 1, 0),
        },
      ],
      valFraction: 0.2,
      seed: 7,
    });
    expect(documents.val).toBeGreaterThan(50);
    expect(documents.val).toBeLessThan(110);
    // Little-endian uint16 on disk.
    const bytes = readFileSync(join(path, "train.bin"));
    expect(bytes.length).toBe(2 * expected.train.length);
    expect(bytes.readUInt16LE(0)).toBe(1);
    expect(bytes.readUInt16LE(2)).toBe(expected.train[1]);
    expect(readFileSync(join(path, "tokenizer.gguf")).equals(readFileSync(tokenizerPath))).toBe(true);

    const cache = await openTokenCache(path);
    expect(cache.dir).toBe(path);
    expect(cache.index).toEqual(index);
    expect(cache.tokenizerPath).toBe(join(path, "tokenizer.gguf"));
    for (const name of ["train", "val"] as const) {
      const split = cache.split(name);
      expect(split.tokens).toBe(expected[name].length);
      expect(readAll(split)).toEqual(expected[name]);
      // Windows anywhere, including empty ones and ones ending at the last id.
      const rand = lcg(11);
      for (let k = 0; k < 200; k++) {
        const length = Math.floor(rand() * 64);
        const start = Math.floor(rand() * (split.tokens - length + 1));
        const out = new Int32Array(length).fill(-1);
        split.read(start, out);
        expect(Array.from(out)).toEqual(expected[name].slice(start, start + length));
      }
      const tail = new Int32Array(3);
      split.read(split.tokens - 3, tail);
      expect(Array.from(tail)).toEqual(expected[name].slice(-3));
      expect(() => split.read(split.tokens - 2, new Int32Array(3))).toThrow(RangeError);
      expect(() => split.read(-1, new Int32Array(1))).toThrow(RangeError);
      expect(() => split.read(0.5, new Int32Array(1))).toThrow(RangeError);
    }
    cache.close();
    cache.close(); // closing twice is harmless
  });

  it("use uint32 above 65,536 tokens, keeping ids past 65,535", async () => {
    const docs = randomDocuments(50, 100_000, 30, 5);
    docs.push([65535, 65536, 99_999, 0]);
    const path = join(dir, "u32");
    const index = writeCache(path, docs, { vocabSize: 100_000, bos: 99_998, valFraction: 0 });
    expect(index.dtype).toBe("uint32");
    expect(index.splits.val).toEqual({ file: "val.bin", tokens: 0, documents: 0 });
    const all = docs.flatMap((d) => [99_998, ...d]);
    expect(readFileSync(join(path, "train.bin")).length).toBe(4 * all.length);
    const cache = await openTokenCache(path);
    expect(readAll(cache.split("train"))).toEqual(all);
    expect(cache.split("val").tokens).toBe(0);
    cache.split("val").read(0, new Int32Array(0));
    cache.close();
  });

  it("write no BOS when the tokenizer has none, and record null", async () => {
    const docs = [[5, 6], [], [7]];
    const path = join(dir, "nobos");
    const index = writeCache(path, docs, { bos: undefined, eos: undefined, valFraction: 0 });
    expect(index.bos).toBeNull();
    expect(index.eos).toBeNull();
    expect(index.splits.train).toEqual({ file: "train.bin", tokens: 3, documents: 3 });
    const cache = await openTokenCache(path);
    expect(readAll(cache.split("train"))).toEqual([5, 6, 7]);
    cache.close();
  });

  it("split the same way for the same seed, differently for another, near the asked fraction", () => {
    const pick = (seed: number, fraction: number) =>
      Array.from({ length: 20_000 }, (_, i) => splitHash(seed, i) < fraction);
    expect(pick(1, 0.01)).toEqual(pick(1, 0.01));
    expect(pick(1, 0.01)).not.toEqual(pick(2, 0.01));
    for (const seed of [0, 1, 2, 12345]) {
      for (const fraction of [0.01, 0.1, 0.5]) {
        const share = pick(seed, fraction).filter(Boolean).length / 20_000;
        expect(Math.abs(share - fraction)).toBeLessThan(0.2 * fraction + 0.002);
      }
    }
    // Document indices past 2^32 still spread.
    const high = Array.from({ length: 1000 }, (_, i) => splitHash(1, 2 ** 32 + i) < 0.5).filter(Boolean);
    expect(high.length).toBeGreaterThan(400);
    expect(high.length).toBeLessThan(600);
    // Every value is in [0, 1).
    for (let i = 0; i < 1000; i++) {
      const h = splitHash(i, i);
      expect(h >= 0 && h < 1).toBe(true);
    }
  });

  it("take a document in parts: one BOS, one document, the split chosen at its start", async () => {
    const path = join(dir, "parts");
    const w = new TokenCacheWriter(path, { vocabSize: 50, bos: 1, tokenizerPath, valFraction: 0 });
    expect(() => w.appendTokens([3])).toThrow(/without a document begun/);
    expect(w.beginDocument("x")).toBe("train");
    w.appendTokens([3, 4]);
    w.appendTokens([]);
    w.appendTokens([5]);
    w.addDocument([6], "y");
    const index = w.finish();
    expect(index.splits.train).toEqual({ file: "train.bin", tokens: 6, documents: 2 });
    expect(index.sources.map((s) => [s.path, s.documents, s.tokens])).toEqual([
      ["x", 1, 4],
      ["y", 1, 2],
    ]);
    const cache = await openTokenCache(path);
    expect(readAll(cache.split("train"))).toEqual([1, 3, 4, 5, 1, 6]);
    cache.close();
  });

  it("record each source's size and skipped lines, and count its documents and tokens", () => {
    const path = join(dir, "sources");
    const w = new TokenCacheWriter(path, { vocabSize: 50, bos: 1, tokenizerPath, valFraction: 0 });
    w.addDocument([3, 4], "x.jsonl");
    w.addDocument([5], "x.jsonl");
    w.addSource("x.jsonl", 123, { "not JSON": 2 });
    w.addSource("empty.txt", 0, {});
    expect(w.tokens).toBe(5);
    const index = w.finish();
    expect(index.sources).toEqual([
      { path: "x.jsonl", bytes: 123, documents: 2, tokens: 5, skipped: { "not JSON": 2 } },
      { path: "empty.txt", bytes: 0, documents: 0, tokens: 0 },
    ]);
  });

  it("leave nothing at the target until finish, and nothing at all after abort", () => {
    const path = join(dir, "pending");
    const w = new TokenCacheWriter(path, { vocabSize: 50, bos: 1, tokenizerPath });
    w.addDocument([3, 4, 5], "x");
    expect(existsSync(path)).toBe(false);
    w.abort();
    expect(existsSync(path)).toBe(false);
    expect(readdirSync(dir).filter((name) => name.includes("pending"))).toEqual([]);
    expect(() => w.addDocument([1], "x")).toThrow(/after finish or abort/);

    const v = new TokenCacheWriter(path, { vocabSize: 50, bos: 1, tokenizerPath });
    v.addDocument([3], "x");
    v.finish();
    expect(readdirSync(dir).filter((name) => name.includes("pending"))).toEqual(["pending"]);
    expect(() => v.finish()).toThrow(/after finish or abort/);
  });

  it("replace an earlier cache, but never a directory holding other files, nor a file", async () => {
    const path = join(dir, "replaced");
    writeCache(path, [[1, 2, 3]], { valFraction: 0 });
    writeCache(path, [[9, 9]], { valFraction: 0 });
    const cache = await openTokenCache(path);
    expect(readAll(cache.split("train"))).toEqual([1, 9, 9]);
    cache.close();

    const empty = join(dir, "empty-dir");
    mkdirSync(empty);
    writeCache(empty, [[4]], { valFraction: 0 });
    expect(readdirSync(empty)).toContain("index.json");

    const precious = join(dir, "precious");
    mkdirSync(precious);
    writeFileSync(join(precious, "notes.txt"), "keep me");
    expect(() => writeCache(precious, [[4]])).toThrow(
      new UserError(`${precious}: exists and holds files other than a token cache's; choose a new directory`),
    );
    expect(readdirSync(precious)).toEqual(["notes.txt"]);

    const file = join(dir, "a-file");
    writeFileSync(file, "x");
    expect(() => writeCache(file, [[4]])).toThrow(new UserError(`${file}: exists and is not a directory`));
    expect(readFileSync(file, "utf8")).toBe("x");
  });

  it("refuse ids outside the vocabulary and a bad fraction", () => {
    const path = join(dir, "refused");
    const w = new TokenCacheWriter(path, { vocabSize: 50, bos: 1, tokenizerPath });
    expect(() => w.addDocument([3, 50], "x")).toThrow(RangeError);
    expect(() => w.addDocument([-1], "x")).toThrow(RangeError);
    w.abort();
    expect(() => new TokenCacheWriter(path, { vocabSize: 50, bos: 50, tokenizerPath })).toThrow(RangeError);
    expect(() => new TokenCacheWriter(path, { vocabSize: 50, valFraction: 1, tokenizerPath })).toThrow(
      UserError,
    );
    expect(
      () => new TokenCacheWriter(path, { vocabSize: 50, tokenizerPath: join(dir, "nope.gguf") }),
    ).toThrow(new UserError(`${join(dir, "nope.gguf")}: no such file`));
    expect(existsSync(path)).toBe(false);
  });
});

describe("openTokenCache on an unusable directory", () => {
  let good: TokenCacheIndex;

  /** A fresh copy of a good cache, with `damage` applied. */
  function damaged(name: string, damage: (path: string) => void): string {
    const path = join(dir, `damaged-${name}`);
    good = writeCache(path, randomDocuments(20, 1000, 10, 1), { valFraction: 0.3 });
    damage(path);
    return path;
  }
  const setIndex = (path: string, change: (index: Record<string, unknown>) => void) => {
    const index = JSON.parse(readFileSync(join(path, "index.json"), "utf8"));
    change(index);
    writeFileSync(join(path, "index.json"), JSON.stringify(index));
  };

  it("says which part is missing or wrong, in one line naming the directory", async () => {
    await expectUnusable(join(dir, "no-such-dir"), "(no index.json)");
    await expectUnusable(
      damaged("json", (p) => writeFileSync(join(p, "index.json"), "{not json")),
      "index.json is not JSON",
    );
    await expectUnusable(
      damaged("format", (p) => setIndex(p, (i) => (i.format = "other"))),
      '"format" is not "smallhammer-token-cache"',
    );
    await expectUnusable(
      damaged("version", (p) => setIndex(p, (i) => (i.version = 2))),
      "version 2 (this smallhammer reads version 1)",
    );
    await expectUnusable(
      damaged("dtype", (p) => setIndex(p, (i) => (i.dtype = "uint32"))),
      'dtype "uint32" does not fit a vocabulary of 1000',
    );
    await expectUnusable(
      damaged("bos", (p) => setIndex(p, (i) => (i.bos = 1000))),
      '"bos" is not null or a token id below 1000',
    );
    await expectUnusable(
      damaged("escape", (p) =>
        setIndex(p, (i) => ((i.splits as { train: { file: string } }).train.file = "../x.bin")),
      ),
      'no usable "splits.train.file"',
    );
    await expectUnusable(
      damaged("counts", (p) =>
        setIndex(p, (i) => ((i.splits as { val: { tokens: number } }).val.tokens = -1)),
      ),
      '"splits.val" needs token and document counts',
    );
    await expectUnusable(
      damaged("truncated", (p) => truncateSync(join(p, "train.bin"), 4)),
      `train.bin has 4 bytes, the index says ${good.splits.train.tokens} uint16 ids`,
    );
    await expectUnusable(
      damaged("no-val", (p) => rmSync(join(p, "val.bin"))),
      "val.bin: missing",
    );
    await expectUnusable(
      damaged("no-tokenizer", (p) => rmSync(join(p, "tokenizer.gguf"))),
      "tokenizer.gguf is missing",
    );
  });
});

async function documents(path: string, options: CorpusReadOptions = {}): Promise<string[]> {
  const out: string[] = [];
  for await (const doc of readCorpusDocuments(path, options)) out.push(doc);
  return out;
}

async function readError(path: string, options: CorpusReadOptions = {}): Promise<string> {
  const error = await documents(path, options).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(UserError);
  expect((error as Error).message).not.toContain("\n");
  return (error as Error).message;
}

describe("corpus documents", () => {
  const file = (name: string, content: string | Uint8Array) => {
    const path = join(dir, name);
    writeFileSync(path, content);
    return path;
  };

  it("split text files by blank lines, by line, or not at all; CRLF and a BOM are handled", async () => {
    const path = file("split.txt", "\uFEFFa\r\nb\n\n  \t\nc  \nd\n\n\n");
    expect(await documents(path)).toEqual(["a\nb", "c  \nd"]);
    expect(await documents(path, { split: "line" })).toEqual(["a", "b", "c  ", "d"]);
    expect(await documents(path, { split: "file" })).toEqual(["a\nb\n\n  \t\nc  \nd\n\n"]);
    expect(await documents(file("blank.txt", "\n  \n"))).toEqual([]);
    expect(await documents(file("blank.txt", "\n  \n"), { split: "file" })).toEqual([]);
    expect(await documents(file("no-newline.txt", "just text"))).toEqual(["just text"]);
  });

  it("hand long documents on in segments, cut after a line end followed by text", async () => {
    const path = file("long.txt", `aaaa\nbbbb\n\ncccc\ndd\n\n\n${"x".repeat(25)}\n`);
    const segments = async (options: CorpusReadOptions) => {
      const out: [string, boolean][] = [];
      for await (const s of readCorpusSegments(path, { segmentChars: 10, ...options }))
        out.push([s.text, s.continuation]);
      return out;
    };
    expect(await segments({})).toEqual([
      ["aaaa\nbbbb", false],
      ["cccc\ndd", false],
      ["x".repeat(10), false],
      ["x".repeat(10), true],
      ["x".repeat(5), true],
    ]);
    // Never a cut before an empty line: a run of line ends stays in one segment.
    expect(await segments({ split: "file" })).toEqual([
      ["aaaa\nbbbb\n\n", false],
      ["cccc\ndd\n\n\n", true],
      ["x".repeat(10), true],
      ["x".repeat(10), true],
      ["x".repeat(5), true],
    ]);
    expect(await documents(path, { segmentChars: 10, split: "file" })).toEqual([
      `aaaa\nbbbb\n\ncccc\ndd\n\n\n${"x".repeat(25)}`,
    ]);
    expect(await documents(path, { segmentChars: 10, split: "line" })).toEqual([
      "aaaa",
      "bbbb",
      "cccc",
      "dd",
      "x".repeat(25),
    ]);
    // JSONL texts are cut the same way; a surrogate pair is never cut.
    const jsonlSegments = async (text: string, segmentChars: number) => {
      const path = file("segments.jsonl", `${JSON.stringify({ text })}\n`);
      const out: CorpusSegment[] = [];
      for await (const s of readCorpusSegments(path, { segmentChars })) out.push(s);
      return out;
    };
    const parts = await jsonlSegments(`${"a".repeat(8)}\n\nb\n${"😀".repeat(6)}`, 10);
    expect(parts.map((s) => s.text)).toEqual([`${"a".repeat(8)}\n\n`, "b\n", "😀".repeat(5), "😀"]);
    expect(parts.map((s) => s.continuation)).toEqual([false, true, true, true]);
    expect((await jsonlSegments("b😀😀😀", 4)).map((s) => s.text)).toEqual(["b😀", "😀😀"]);
  });

  it("decode characters split across 1 MiB chunks, and report the bytes read", async () => {
    const text = "é€😀 a\n".repeat(300_000); // 3.3 MB
    const path = file("chunks.txt", text);
    let bytes = 0;
    const docs = await documents(path, {
      split: "file",
      onBytes: (b) => {
        bytes = b;
      },
    });
    expect(docs).toEqual([text.slice(0, -1)]);
    expect(bytes).toBe(Buffer.byteLength(text));
  });

  it("read gzip-compressed files like the plain ones, and refuse a broken one or another compression", async () => {
    const jsonl = `${JSON.stringify({ text: "one" })}\n${JSON.stringify({ text: "two\n\nlines", meta: { id: 2 } })}\n`;
    expect(await documents(file("plain.jsonl", jsonl))).toEqual(["one", "two\n\nlines"]);
    expect(await documents(file("zipped.jsonl.gz", gzipSync(jsonl)))).toEqual(["one", "two\n\nlines"]);
    expect(await documents(file("zipped.txt.gz", gzipSync(CORPUS)))).toEqual(await documents(CORPUS_PATH));
    const broken = file("broken.txt.gz", gzipSync(CORPUS).subarray(0, 5000));
    expect(await readError(broken)).toMatch(new RegExp(`^${broken}: not a valid gzip file \\(`));
    const zst = file("data.jsonl.zst", "x");
    expect(await readError(zst)).toBe(`${zst}: .zst files are not read; decompress it (or gzip it) first`);
    expect(await readError(join(dir, "missing.txt"))).toBe(`${join(dir, "missing.txt")}: no such file`);
    expect(await readError(dir)).toBe(`${dir}: not a file`);
  });

  it("name the file and line of a bad JSONL line, or skip and count it", async () => {
    const lines = [
      '{"text": "ok"}',
      "",
      '{"body": "no text"}',
      "not json",
      '{"text": 5}',
      '{"text": "  "}',
      "null",
      `{"text": "${"y".repeat(40)}"}`,
      '{"text": "last"}',
    ];
    const path = file("bad.jsonl", lines.join("\n"));
    expect(await readError(path)).toBe(`${path}:3: no string "text" field (--skip-invalid skips such lines)`);
    const skipped: Record<string, number> = {};
    expect(await documents(path, { skipInvalid: true, skipped, maxLineChars: 30 })).toEqual(["ok", "last"]);
    expect(skipped).toEqual({
      'no string "text" field': 3,
      "not JSON": 1,
      "empty text": 1,
      "line too long": 1,
    });
    const long = file("overlong.jsonl", `{"text": "a"}\n${lines[7]}\n`);
    expect(await readError(long, { maxLineChars: 30 })).toBe(
      `${long}:2: line longer than 30 characters (--skip-invalid skips such lines)`,
    );
    const array = file("array.json", '[\n  {"text": "a"}\n]\n');
    expect(await readError(array)).toBe(
      `${array}:1: a JSON array; expected one JSON object per line (JSONL) (--skip-invalid skips such lines)`,
    );
  });
});

describe("data tokenize (command line)", () => {
  let tok: string;
  let jsonl: string;
  let gz: string;

  beforeAll(async () => {
    ensureBuilt();
    tok = join(dir, "shakespeare.gguf");
    const { description } = await trainTokenizer(CORPUS.split(/\n\s*\n/), { vocabSize: 1024 });
    writeTokenizerGguf(tok, description);
    jsonl = join(dir, "docs.jsonl");
    writeFileSync(
      jsonl,
      `${JSON.stringify({ text: "First document." })}\n\n${JSON.stringify({ text: "Second one\nwith <s> in it." })}\n`,
    );
    gz = join(dir, "more.txt.gz");
    writeFileSync(gz, gzipSync("Gzipped text.\n\nAnd a second paragraph.\n"));
  });

  const tokenize = async (args: string[]) => await runCli(["data", "tokenize", ...args]);
  const count = (n: number) => n.toLocaleString("en-US");

  it("writes train and val ids that are each document's tokens after BOS, and reports what it read", async () => {
    const out = join(dir, "cli-cache");
    const r = await tokenize([
      CORPUS_PATH,
      jsonl,
      gz,
      "--tokenizer",
      tok,
      "--out",
      out,
      "--val-fraction",
      "0.1",
      "--json",
    ]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const index = JSON.parse(r.stdout) as TokenCacheIndex;
    const cache = await openTokenCache(out);
    expect(cache.index).toEqual(index);
    expect(readFileSync(cache.tokenizerPath).equals(readFileSync(tok))).toBe(true);
    expect(index).toMatchObject({
      vocabSize: 1024,
      dtype: "uint16",
      bos: 1,
      eos: 2,
      valFraction: 0.1,
      seed: 1,
    });

    // Rebuild both splits from the corpus documents and the cache's tokenizer.
    const { tokenizer } = readTokenizerFile(cache.tokenizerPath);
    const docs = [...(await documents(CORPUS_PATH)), ...(await documents(jsonl)), ...(await documents(gz))];
    expect(docs.slice(-4)).toEqual([
      "First document.",
      "Second one\nwith <s> in it.",
      "Gzipped text.",
      "And a second paragraph.",
    ]);
    const ids = docs.map((d) => tokenizer.encode(d, { addSpecial: false, parseSpecial: false }));
    const { expected, documents: counts } = expectedSplits(ids, 1, 0.1, 1);
    for (const name of ["train", "val"] as const) {
      expect(index.splits[name]).toEqual({
        file: `${name}.bin`,
        tokens: expected[name].length,
        documents: counts[name],
      });
      expect(readAll(cache.split(name))).toEqual(expected[name]);
    }
    expect(counts.val).toBeGreaterThan(600);
    // "<s>" in the text stayed text: id 1 only as BOS.
    expect(ids.flat().includes(1)).toBe(false);
    const tokensOf = (from: number, to: number) => ids.slice(from, to).reduce((s, d) => s + d.length + 1, 0);
    const n = docs.length;
    expect(index.sources).toEqual([
      { path: CORPUS_PATH, bytes: Buffer.byteLength(CORPUS), documents: n - 4, tokens: tokensOf(0, n - 4) },
      { path: jsonl, bytes: readFileSync(jsonl).length, documents: 2, tokens: tokensOf(n - 4, n - 2) },
      { path: gz, bytes: readFileSync(gz).length, documents: 2, tokens: tokensOf(n - 2, n) },
    ]);
    cache.close();

    // The same run again gives the same bytes; the text report says what was read.
    const again = join(dir, "cli-cache-again");
    const t = await tokenize([
      CORPUS_PATH,
      jsonl,
      gz,
      "--tokenizer",
      tok,
      "--out",
      again,
      "--val-fraction",
      "0.1",
    ]);
    expect(t.stderr).toBe("");
    expect(t.status).toBe(0);
    for (const name of ["train.bin", "val.bin", "index.json"]) {
      expect(readFileSync(join(again, name)).equals(readFileSync(join(out, name))), name).toBe(true);
    }
    const bytes = index.sources.reduce((s, f) => s + f.bytes, 0);
    const { train, val } = index.splits;
    expect(t.stdout.trimEnd().split("\n")).toEqual([
      `${again}: ${count(train.tokens + val.tokens)} tokens (uint16, vocabulary 1,024) from ${count(n)} documents in 3 files, ${count(bytes)} bytes`,
      `  train: ${count(train.tokens)} tokens, ${count(train.documents)} documents`,
      `  val:   ${count(val.tokens)} tokens, ${count(val.documents)} documents (fraction 0.1, seed 1)`,
      ...index.sources.map(
        (s) =>
          `  ${s.path}: ${count(s.bytes)} bytes, ${count(s.documents)} documents, ${count(s.tokens)} tokens`,
      ),
    ]);
  });

  it("splits text files as asked, and the validation split by the seed given", async () => {
    const run = async (out: string, extra: string[]) => {
      const r = await tokenize([
        CORPUS_PATH,
        "--tokenizer",
        tok,
        "--out",
        join(dir, out),
        "--json",
        ...extra,
      ]);
      expect(r.status).toBe(0);
      return JSON.parse(r.stdout) as TokenCacheIndex;
    };
    const lines = await run("by-line", ["--split", "line", "--val-fraction", "0"]);
    expect(lines.splits.train.documents).toBe(CORPUS.split("\n").filter((l) => l.trim() !== "").length);
    expect(lines.splits.val.tokens).toBe(0);
    // --seed reaches the split: the validation documents are the ones splitHash(2, i) picks.
    const seeded = await run("seed-2", ["--seed", "2", "--val-fraction", "0.05"]);
    const speeches = seeded.splits.train.documents + seeded.splits.val.documents;
    const picked = Array.from({ length: speeches }, (_, i) => splitHash(2, i) < 0.05).filter(Boolean).length;
    expect(seeded.seed).toBe(2);
    expect(seeded.splits.val.documents).toBe(picked);
    expect(picked).not.toBe(
      Array.from({ length: speeches }, (_, i) => splitHash(1, i) < 0.05).filter(Boolean).length,
    );
    const whole = await tokenize([
      CORPUS_PATH,
      "--tokenizer",
      tok,
      "--out",
      join(dir, "by-file"),
      "--split",
      "file",
    ]);
    expect(whole.status).toBe(0);
    expect(whole.stdout).toContain(" from 1 documents in 1 file, ");
    expect(whole.stdout).toContain("note: no document went to validation");
  });

  it("gives a long document, encoded segment by segment, the ids of the whole text", async () => {
    const { tokenizer } = readTokenizerFile(tok);
    const whole = [1, ...tokenizer.encode(CORPUS.slice(0, -1), { addSpecial: false, parseSpecial: false })];
    // The command line reads 1 Mi characters at a time: tinyshakespeare as one document is two.
    const out = join(dir, "whole");
    const r = await tokenize([
      CORPUS_PATH,
      "--tokenizer",
      tok,
      "--out",
      out,
      "--split",
      "file",
      "--val-fraction",
      "0",
    ]);
    expect(r.status).toBe(0);
    let cache = await openTokenCache(out);
    expect(readAll(cache.split("train"))).toEqual(whole);
    cache.close();
    // Much shorter segments, through the library.
    for (const [split, segmentChars] of [
      ["file", 300],
      ["blank-line", 100], // longer than any line, shorter than many speeches
    ] as const) {
      const small = join(dir, `segments-${split}`);
      await tokenizeCorpus([CORPUS_PATH], tok, small, {
        split,
        segmentChars,
        valFraction: 0,
        progress: false,
      });
      cache = await openTokenCache(small);
      const expected = (await documents(CORPUS_PATH, { split })).flatMap((d) => [
        1,
        ...tokenizer.encode(d, { addSpecial: false, parseSpecial: false }),
      ]);
      expect(readAll(cache.split("train"))).toEqual(expected);
      cache.close();
    }
  });

  it("turns control-token texts into tokens only with --parse-special", async () => {
    const out = join(dir, "parsed");
    const r = await tokenize([
      jsonl,
      "--tokenizer",
      tok,
      "--out",
      out,
      "--val-fraction",
      "0",
      "--parse-special",
    ]);
    expect(r.status).toBe(0);
    const cache = await openTokenCache(out);
    expect(readAll(cache.split("train")).filter((id) => id === 1)).toHaveLength(3); // two BOS and "<s>"
    cache.close();
  });

  it("stops at a bad JSONL line in one line, writing nothing; --skip-invalid counts it", async () => {
    const bad = join(dir, "cli-bad.jsonl");
    writeFileSync(bad, '{"text": "ok"}\n{"body": "no text"}\nnot json\n');
    const out = join(dir, "bad-cache");
    const r = await tokenize([bad, "--tokenizer", tok, "--out", out]);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe(
      `smallhammer: ${bad}:2: no string "text" field (--skip-invalid skips such lines)\n`,
    );
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(dir).filter((name) => name.includes("bad-cache"))).toEqual([]);
    const s = await tokenize([bad, "--tokenizer", tok, "--out", out, "--skip-invalid"]);
    expect(s.stderr).toBe("");
    expect(s.status).toBe(0);
    expect(s.stdout).toContain(`  ${bad}: 44 bytes, 1 documents, `);
    expect(s.stdout).toContain('; skipped 1 no string "text" field, 1 not JSON');
  });

  it("stops on Ctrl-C, leaving nothing behind", async () => {
    const big = join(dir, "big.txt");
    writeFileSync(big, CORPUS.repeat(30));
    const out = join(dir, "interrupted");
    const child = spawn(process.execPath, [CLI, "data", "tokenize", big, "--tokenizer", tok, "--out", out]);
    let stderr = "";
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    let running = true;
    const exited = new Promise<number | null>((resolve) =>
      child.on("exit", (code) => {
        running = false;
        resolve(code);
      }),
    );
    // Interrupt once the unfinished cache exists (a hidden directory beside the target).
    while (running && !readdirSync(dir).some((name) => name.startsWith(".interrupted.tmp-"))) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    child.kill("SIGINT");
    expect(await exited).toBe(2);
    expect(stderr).toBe(`smallhammer: ${out}: interrupted; nothing was written\n`);
    expect(readdirSync(dir).filter((name) => name.includes("interrupted"))).toEqual([]);
  });

  it("refuses bad inputs and outputs in one line", async () => {
    const expectError = async (args: string[], message: string | RegExp) => {
      const r = await tokenize(args);
      expect(r.status).toBe(2);
      expect(r.stdout).toBe("");
      if (typeof message === "string") expect(r.stderr).toBe(`smallhammer: ${message}\n`);
      else expect(r.stderr).toMatch(message);
    };
    const precious = join(dir, "cli-precious");
    mkdirSync(precious);
    writeFileSync(join(precious, "notes.txt"), "keep");
    await expectError(
      [jsonl, "--tokenizer", tok, "--out", precious],
      `${precious}: exists and holds files other than a token cache's; choose a new directory`,
    );
    expect(readdirSync(precious)).toEqual(["notes.txt"]);
    await expectError(
      [jsonl, "--tokenizer", join(dir, "none.gguf"), "--out", join(dir, "x")],
      /^smallhammer: .*none\.gguf.*\n$/,
    );
    await expectError(
      [join(dir, "none.txt"), "--tokenizer", tok, "--out", join(dir, "x")],
      `${join(dir, "none.txt")}: no such file`,
    );
    await expectError(
      [jsonl, "--tokenizer", tok, "--out", join(dir, "x"), "--val-fraction", "1"],
      /--val-fraction must be a number from 0 to 0\.99, got "1" \(see --help\)\n$/,
    );
    expect(existsSync(join(dir, "x"))).toBe(false);
  });
});
