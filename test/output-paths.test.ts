// No command writes over what it reads. An output that is one of the inputs (spelled another way,
// through a symbolic link or a hard link) is refused before anything is written, --force or not;
// two outputs may not be one file; an existing output is replaced only with --force. Each refusal
// is one line on stderr and exit status 2, and the input is byte for byte what it was.
import {
  linkSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type LoraAdapter, writeLoraGguf } from "../src/model/lora.js";
import { Rng } from "../src/util/random.js";
import { type CliResult, ensureBuilt, ROOT, runCli } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let model: string;
let adapter: string;
let corpus: string;
let data: string;
let sharegpt: string;

const path = (name: string) => join(dir, name);

beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-output-paths-"));
  model = path("model.gguf");
  const tiny = writeTinyLlama(model, { dim: 32, layers: 1, heads: 2, ffn: 64 });
  // A real adapter of the tiny model: merging it works, so only the check stands between the
  // command and the input.
  const rng = new Rng(3);
  const lora: LoraAdapter = { architecture: "llama", alpha: 8, tensors: [] };
  for (const name of ["attn_q", "attn_v"]) {
    const [inFeatures, outFeatures] = tiny.tensors.get(`blk.0.${name}.weight`)!.dims as [number, number];
    const rand = (n: number) => Float32Array.from({ length: n }, () => rng.nextNormal(0, 0.1));
    lora.tensors.push({
      base: `blk.0.${name}.weight`,
      rank: 4,
      inFeatures,
      outFeatures,
      a: rand(4 * inFeatures),
      b: rand(outFeatures * 4),
    });
  }
  adapter = path("adapter.gguf");
  writeLoraGguf(adapter, lora);
  corpus = path("corpus.txt");
  writeFileSync(
    corpus,
    Array.from({ length: 200 }, (_, i) => `The river ${i} runs past the mill and the old stone bridge.`).join(
      "\n\n",
    ),
  );
  data = path("data.jsonl");
  writeFileSync(
    data,
    Array.from({ length: 40 }, (_, i) =>
      JSON.stringify({ instruction: `Name the river number ${i}.`, input: "", output: `River ${i}.` }),
    ).join("\n") + "\n",
  );
  sharegpt = path("sharegpt.jsonl");
  writeFileSync(
    sharegpt,
    Array.from({ length: 10 }, (_, i) =>
      JSON.stringify({
        id: `c${i}`,
        conversations: [
          { from: "human", value: `Hello ${i}` },
          { from: "gpt", value: `Hi ${i}` },
        ],
      }),
    ).join("\n") + "\n",
  );
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Exit 2 and one line on stderr, starting "smallhammer:", matching `says`, without a stack. */
function expectRefused(r: CliResult, says: RegExp) {
  expect(r.signal).toBeNull();
  expect(r.stderr).not.toContain("    at ");
  const lines = r.stderr.replace(/\n$/, "").split("\n");
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^smallhammer: /);
  expect(lines[0]).toMatch(says);
  expect(r.status).toBe(2);
  expect(r.stdout).toBe("");
}

/** Runs `args`; expects a refusal, and every file in `inputs` unchanged and nothing new beside them. */
async function expectInputsKept(args: string[], inputs: string[], says: RegExp) {
  const before = inputs.map((f) => readFileSync(f));
  const entries = readdirSync(dir).sort();
  expectRefused(await runCli(args), says);
  for (const [i, f] of inputs.entries())
    expect(readFileSync(f).equals(before[i]!), `${f} changed`).toBe(true);
  expect(readdirSync(dir).sort()).toEqual(entries);
}

describe("an output that is an input is refused, and the input stays as it was", () => {
  it("quantize in.gguf in.gguf, by any spelling, link or hard link, even with --force", async () => {
    const q = ["--type", "q8_0"];
    await expectInputsKept(
      ["quantize", model, model, ...q],
      [model],
      /the output .*model\.gguf would overwrite the input .*model\.gguf; write to another path$/,
    );
    // ./in.gguf: the same file by a relative path from the command's directory.
    const dotted = `./${relative(ROOT, model)}`;
    await expectInputsKept(["quantize", model, dotted, ...q], [model], /would overwrite the input/);
    const link = path("link.gguf");
    symlinkSync(model, link);
    await expectInputsKept(["quantize", model, link, ...q, "--force"], [model], /would overwrite the input/);
    await expectInputsKept(["quantize", link, model, ...q, "--force"], [model], /would overwrite the input/);
    rmSync(link);
    const hard = path("hard.gguf");
    linkSync(model, hard);
    await expectInputsKept(["quantize", model, hard, ...q, "--force"], [model], /would overwrite the input/);
    rmSync(hard);
  });

  it("merge --out equal to the base or the adapter", async () => {
    const merge = ["merge", "--base", model, "--adapter", adapter, "--out"];
    await expectInputsKept(
      [...merge, model],
      [model, adapter],
      /^smallhammer: --out .*model\.gguf would overwrite --base .*model\.gguf;/,
    );
    await expectInputsKept(
      [...merge, adapter, "--force"],
      [model, adapter],
      /^smallhammer: --out .*adapter\.gguf would overwrite --adapter .*adapter\.gguf;/,
    );
    // The same merge to a new file works.
    const r = await runCli([...merge, path("merged.gguf")]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    rmSync(path("merged.gguf"));
  });

  it("tokenizer train corpus.txt --out corpus.txt", async () => {
    await expectInputsKept(
      ["tokenizer", "train", corpus, "--vocab-size", "300", "--out", corpus],
      [corpus],
      /^smallhammer: --out .*corpus\.txt would overwrite the input .*corpus\.txt;/,
    );
  });

  it("data filter, dedup, convert, sample, split and clean-sharegpt onto their input", async () => {
    const refused = /^smallhammer: --(out|train-out|validation-out) .* would overwrite the input .*;/;
    await expectInputsKept(["data", "filter", data, "--out", data, "--require", "zzzz"], [data], refused);
    await expectInputsKept(["data", "dedup", data, "--out", data, "--force"], [data], refused);
    await expectInputsKept(["data", "convert", data, "--to", "sharegpt", "--out", data], [data], refused);
    await expectInputsKept(["data", "sample", data, "--num", "3", "--out", data], [data], refused);
    await expectInputsKept(
      ["data", "split", data, "--train-out", data, "--validation-out", path("v.jsonl")],
      [data],
      refused,
    );
    await expectInputsKept(
      ["data", "split", data, "--train-out", path("t.jsonl"), "--validation-out", data],
      [data],
      refused,
    );
    await expectInputsKept(["data", "clean-sharegpt", sharegpt, "--out", sharegpt], [sharegpt], refused);
    // Through a symbolic link and a hard link too.
    const link = path("data-link.jsonl");
    symlinkSync(data, link);
    await expectInputsKept(["data", "dedup", data, "--out", link, "--force"], [data], refused);
    rmSync(link);
    const hard = path("data-hard.jsonl");
    linkSync(data, hard);
    await expectInputsKept(["data", "dedup", hard, "--out", data, "--force"], [data], refused);
    rmSync(hard);
  });

  it("an input given by another flag counts too: --tokenizer, --seeds", async () => {
    await expectInputsKept(
      ["data", "filter", data, "--tokenizer", model, "--max-tokens", "50", "--out", model, "--force"],
      [data, model],
      /^smallhammer: --out .*model\.gguf would overwrite --tokenizer .*model\.gguf;/,
    );
    // self-instruct appends to its output: onto the seed file it would corrupt the seeds.
    await expectInputsKept(
      [
        ...["data", "self-instruct", "--teacher", "http://127.0.0.1:9/v1", "--model", "m", "--num", "1"],
        ...["--seeds", data, "--out", data],
      ],
      [data],
      /^smallhammer: --out .*data\.jsonl would overwrite --seeds .*data\.jsonl;/,
    );
  });

  it("a directory output may not be an input or hold one: data tokenize, pretrain", async () => {
    // A corpus file inside the cache directory would be replaced by the new cache.
    const cache = path("cache");
    mkdirSync(cache);
    const inside = join(cache, "train.bin");
    writeFileSync(inside, "Words that are the corpus.\n");
    await expectInputsKept(
      ["data", "tokenize", inside, "--tokenizer", model, "--out", cache],
      [inside],
      /^smallhammer: --out .*cache holds the input .*train\.bin, which writing there could replace;/,
    );
    await expectInputsKept(
      ["pretrain", "--model", "tiny", "--data", cache, "--out", `${cache}/.`, "--steps", "1"],
      [inside],
      /^smallhammer: --out .*cache\/\. would overwrite --data .*cache;/,
    );
    rmSync(cache, { recursive: true });
  });
});

describe("existing outputs and outputs that collide", () => {
  it("an existing output file is replaced only with --force", async () => {
    const out = path("existing.jsonl");
    writeFileSync(out, "keep me\n");
    await expectInputsKept(
      ["data", "convert", data, "--to", "messages", "--out", out],
      [data, out],
      /^smallhammer: --out .*existing\.jsonl exists; add --force to replace it$/,
    );
    const forced = await runCli(["data", "convert", data, "--to", "messages", "--out", out, "--force"]);
    expect(forced.stderr).toBe("");
    expect(forced.status).toBe(0);
    expect(readFileSync(out, "utf8").trim().split("\n")).toHaveLength(40);
    const gguf = path("existing.gguf");
    writeFileSync(gguf, "not a model, but someone's file");
    await expectInputsKept(["quantize", model, gguf, "--type", "q8_0"], [model, gguf], /exists; add --force/);
    const q = await runCli(["quantize", model, gguf, "--type", "q8_0", "--force"]);
    expect(q.status).toBe(0);
    expect(readFileSync(gguf).subarray(0, 4).toString()).toBe("GGUF");
    rmSync(out);
    rmSync(gguf);
  });

  it("data split with one path for both outputs writes nothing", async () => {
    const same = path("both.jsonl");
    await expectInputsKept(
      ["data", "split", data, "--train-out", same, "--validation-out", same],
      [data],
      /^smallhammer: --train-out .*both\.jsonl and --validation-out .*both\.jsonl are the same file;/,
    );
    await expectInputsKept(
      ["data", "split", data, "--train-out", same, "--validation-out", `${dir}/./both.jsonl`, "--force"],
      [data],
      /are the same file/,
    );
  });

  it("a file output that is a directory, or in no directory, is one line", async () => {
    const folder = path("folder");
    mkdirSync(folder);
    await expectInputsKept(
      ["data", "convert", data, "--to", "sharegpt", "--out", folder],
      [data],
      /^smallhammer: --out .*folder is a directory; give a file path$/,
    );
    await expectInputsKept(
      ["data", "dedup", data, "--out", join(dir, "nowhere", "x.jsonl")],
      [data],
      /^smallhammer: --out .*nowhere\/x\.jsonl: cannot write, the directory .*nowhere does not exist$/,
    );
    rmSync(folder, { recursive: true });
  });

  it("clean-sharegpt on a file that is not ShareGPT says so and writes nothing", async () => {
    const out = path("clean.json");
    await expectInputsKept(
      ["data", "clean-sharegpt", data, "--out", out],
      [data],
      /^smallhammer: .*data\.jsonl: not ShareGPT: none of its 40 records has a "conversations" list \(it looks like alpaca records; data convert --to sharegpt rewrites them\)$/,
    );
    const empty = path("empty.jsonl");
    writeFileSync(empty, "\n");
    await expectInputsKept(
      ["data", "clean-sharegpt", empty, "--out", out],
      [empty],
      /empty\.jsonl: no records/,
    );
    rmSync(empty);
    // A real ShareGPT file is cleaned as before.
    const r = await runCli(["data", "clean-sharegpt", sharegpt, "--out", out, "--json"]);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ conversations: 10, kept: 10, written: 10 });
    expect(JSON.parse(readFileSync(out, "utf8"))).toHaveLength(10);
    rmSync(out);
  });
});
