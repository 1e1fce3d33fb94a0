// Tokenizer training and the token cache, as a user runs them: `smallhammer tokenizer train` and
// `smallhammer data tokenize` on tinyshakespeare; the learned vocabulary loaded by llama.cpp.
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, type Llama, type LlamaModel } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readTokenizerFile } from "../src/data/chat-tokens.js";
import { openTokenCache, splitHash, TokenCacheWriter } from "../src/data/token-cache.js";
import { trainTokenizer, WordCounter } from "../src/tokenizer/train.js";
import { ensureBuilt, runCli } from "./helpers/cli.js";

const CORPUS_PATH = new URL("../../shared/data/tinyshakespeare.txt", import.meta.url).pathname;
const CORPUS = readFileSync(CORPUS_PATH, "utf8");
const TRICKY = [
  "",
  " ",
  "  leading spaces",
  "trailing spaces  ",
  "tabs\tand\nnewlines\n\n",
  "ÆØÅ naïve café — “quotes” 日本語 🤖👍🏽",
  "ROMEO:\nWhat, ho! apothecary!",
  "x".repeat(200),
  "<|im_start|>user\nhello<|im_end|>",
  "<s> </s> <unk>",
];

let dir: string;
let llama: Llama;

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-toktrain-"));
  llama = await getLlama({ gpu: false, build: "never", logLevel: "error" as never });
});
afterAll(async () => {
  await llama?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

describe("smallhammer tokenizer train", () => {
  for (const vocab of [512, 2048]) {
    describe(`vocab ${vocab}`, () => {
      let path: string;
      let model: LlamaModel;
      beforeAll(async () => {
        path = join(dir, `tok${vocab}.gguf`);
        const r = runCli([
          "tokenizer",
          "train",
          CORPUS_PATH,
          "--vocab-size",
          String(vocab),
          "--out",
          path,
          "--special",
          "<|im_start|>,<|im_end|>",
          "--json",
        ]);
        expect(r.stderr).toBe("");
        expect(r.status).toBe(0);
        const summary = JSON.parse(r.stdout);
        expect(summary.vocabSize).toBe(vocab);
        expect(summary.merges).toBeGreaterThan(0);
        model = await llama.loadModel({ modelPath: path, vocabOnly: true });
      });
      afterAll(async () => model?.dispose());

      it("tokenizes as llama.cpp does, and decodes back exactly", () => {
        const { tokenizer } = readTokenizerFile(path);
        expect(tokenizer.vocabSize).toBe(vocab);
        const lines = CORPUS.split("\n").filter((_, i) => i % 97 === 0);
        for (const text of [...TRICKY, ...lines, CORPUS.slice(200_000, 230_000)]) {
          for (const special of [true, false]) {
            const ours = tokenizer.encode(text, { addSpecial: false, parseSpecial: special });
            expect(ours, JSON.stringify(text)).toEqual(Array.from(model.tokenize(text, special)));
          }
          const ids = tokenizer.encode(text, { addSpecial: false, parseSpecial: false });
          // SentencePiece adds one leading space that decoding removes; after a user-defined
          // token the next text gets its own, as in llama.cpp, so compare with llama.cpp there.
          expect(tokenizer.decode(ids)).toBe(text.includes("<|im_") ? model.detokenize(ids) : text);
        }
      });

      it("keeps special tokens whole and uses its merges", () => {
        const { tokenizer } = readTokenizerFile(path);
        const ids = tokenizer.encode("<|im_start|>user", { addSpecial: false });
        expect(tokenizer.tokenText(ids[0])).toBe("<|im_start|>");
        const words = tokenizer.encode(" the king", { addSpecial: false });
        expect(words.length).toBeLessThanOrEqual(4);
        const bytes = CORPUS.length;
        const tokens = tokenizer.encode(CORPUS.slice(0, 100_000), { addSpecial: false }).length;
        expect(tokens).toBeLessThan(bytes); // sanity: compression happens
      });
    });
  }

  it("is deterministic: the same corpus gives the same file", () => {
    const a = join(dir, "det-a.gguf");
    const b = join(dir, "det-b.gguf");
    for (const out of [a, b]) {
      expect(runCli(["tokenizer", "train", CORPUS_PATH, "--vocab-size", "700", "--out", out]).status).toBe(0);
    }
    expect(readFileSync(a).equals(readFileSync(b))).toBe(true);
  });

  it("keeps the word table bounded by dropping rare words", () => {
    const counter = new WordCounter(2000);
    for (const doc of CORPUS.split(/\n\n+/)) {
      counter.addDocument(doc);
      expect(counter.counts.size).toBeLessThanOrEqual(2000);
    }
    expect(counter.pruned).toBeGreaterThan(0);
    expect(counter.threshold).toBeGreaterThan(0);
    // Frequent words survive the pruning.
    expect(counter.counts.get("▁the")).toBeGreaterThan(1000);
    const { summary } = trainTokenizer(counter, { vocabSize: 600 });
    expect(summary.vocabSize).toBe(600);
  });

  it("refuses a vocabulary too small for its fixed tokens, in one line", () => {
    const r = runCli([
      "tokenizer",
      "train",
      CORPUS_PATH,
      "--vocab-size",
      "280",
      "--out",
      join(dir, "small.gguf"),
    ]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/^smallhammer: --vocab-size 280 is too small: .* need \d+\n$/);
    const missing = runCli([
      "tokenizer",
      "train",
      join(dir, "nope.txt"),
      "--vocab-size",
      "600",
      "--out",
      join(dir, "x.gguf"),
    ]);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toContain("nope.txt: no such file");
  });
});

describe("smallhammer data tokenize", () => {
  let tok: string;
  beforeAll(() => {
    tok = join(dir, "cache-tok.gguf");
    expect(runCli(["tokenizer", "train", CORPUS_PATH, "--vocab-size", "1024", "--out", tok]).status).toBe(0);
  });

  it("writes a cache whose ids are the documents' tokens after BOS, split by seed", async () => {
    const jsonl = join(dir, "docs.jsonl");
    writeFileSync(
      jsonl,
      `${JSON.stringify({ text: "First document." })}\n\n${JSON.stringify({ text: "Second one\nwith two lines." })}\n`,
    );
    const out = join(dir, "cache");
    const r = runCli([
      "data",
      "tokenize",
      CORPUS_PATH,
      jsonl,
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
    const index = JSON.parse(r.stdout);
    const cache = await openTokenCache(out);
    expect(cache.index).toEqual(index);
    expect(index.dtype).toBe("uint16");
    expect(index.sources.map((s: { path: string }) => s.path)).toEqual([CORPUS_PATH, jsonl]);
    // Rebuild both splits from the documents and compare every id.
    const { tokenizer } = readTokenizerFile(join(out, "tokenizer.gguf"));
    // Blank lines (nothing but spaces) end a document.
    const docs: string[] = [];
    let lines: string[] = [];
    for (const line of `${CORPUS}\n`.split("\n")) {
      if (line.trim() !== "") lines.push(line);
      else if (lines.length) {
        docs.push(lines.join("\n"));
        lines = [];
      }
    }
    docs.push("First document.", "Second one\nwith two lines.");
    const expected = { train: [] as number[], val: [] as number[] };
    docs.forEach((d, i) => {
      const ids = [tokenizer.bosId!, ...tokenizer.encode(d, { addSpecial: false, parseSpecial: false })];
      (splitHash(1, i) < 0.1 ? expected.val : expected.train).push(...ids);
    });
    for (const name of ["train", "val"] as const) {
      const split = cache.split(name);
      expect(split.tokens).toBe(expected[name].length);
      const got = new Int32Array(split.tokens);
      split.read(0, got);
      expect(Array.from(got)).toEqual(expected[name]);
      const window = new Int32Array(7);
      split.read(5, window);
      expect(Array.from(window)).toEqual(expected[name].slice(5, 12));
    }
    expect(index.splits.val.documents).toBeGreaterThan(0);
    expect(index.splits.train.documents + index.splits.val.documents).toBe(docs.length);
    cache.close();
  });

  it("names a bad JSONL line, and with --skip-invalid counts it", () => {
    const jsonl = join(dir, "bad.jsonl");
    writeFileSync(jsonl, '{"text": "ok"}\n{"body": "no text"}\nnot json\n');
    const out = join(dir, "bad-cache");
    const r = runCli(["data", "tokenize", jsonl, "--tokenizer", tok, "--out", out]);
    expect(r.status).toBe(2);
    expect(r.stderr).toBe(
      `smallhammer: ${jsonl}:2: field text: missing or not a string (use --skip-invalid to skip such lines)\n`,
    );
    expect(() => readFileSync(join(out, "index.json"))).toThrow();
    const s = runCli(["data", "tokenize", jsonl, "--tokenizer", tok, "--out", out, "--skip-invalid"]);
    expect(s.status).toBe(0);
    expect(s.stdout).toContain('skipped 1 no string "text" field, 1 not JSON');
  });

  it("refuses a missing or damaged cache in one line", async () => {
    await expect(openTokenCache(join(dir, "none"))).rejects.toThrow(
      /none: not a usable token cache \(no index\.json\)/,
    );
    const w = new TokenCacheWriter(join(dir, "damaged"), {
      vocabSize: 300,
      bos: 1,
      tokenizerPath: tok,
      valFraction: 0,
    });
    w.addDocument([5, 6, 7], "x");
    w.finish();
    truncateSync(join(dir, "damaged", "train.bin"), 4);
    await expect(openTokenCache(join(dir, "damaged"))).rejects.toThrow(
      /train\.bin has 4 bytes, the index says 4 uint16 ids/,
    );
  });
});
