// The token cache format: what TokenCacheWriter writes, openTokenCache reads back id for id, and
// every way a cache directory can be unusable is one line naming the directory.
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
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  openTokenCache,
  splitHash,
  type TokenCacheIndex,
  TokenCacheWriter,
  type TokenCacheWriterOptions,
} from "../src/data/token-cache.js";
import { UserError } from "../src/errors.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

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
