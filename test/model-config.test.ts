// Hyper-parameters a model file may declare: nonsense values (zero or negative sizes, fractions,
// NaN, infinities, absurd sizes, heads that do not divide, vocabularies that disagree) are refused
// when the config is read, so every command refuses them with one line naming the key and value.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UserError } from "../src/errors.js";
import { GgufFile, GgufWriter } from "../src/formats/gguf.js";
import {
  InvalidModelConfigError,
  LLAMA_LIMITS,
  llamaConfigFromMetadata,
  type MetadataGetter,
} from "../src/model/config.js";
import { ropeMagnitude, ropePairFactors } from "../src/model/yarn.js";
import { type CliResult, ensureBuilt, runCli } from "./helpers/cli.js";
import { DEFAULT_PIECES, writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let tiny: string;
/** The tiny model's vocabulary: <unk>, <s>, </s>, 256 byte tokens and the default pieces. */
const VOCAB = 3 + 256 + DEFAULT_PIECES.length;

beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "smallhammer-config-"));
  tiny = join(dir, "tiny.gguf");
  // 4 heads of 8, 2 KV heads
  const { tokens } = writeTinyLlama(tiny, { dim: 32, layers: 1, heads: 4, kvHeads: 2, ffn: 64 });
  expect(tokens).toHaveLength(VOCAB);
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A copy of the tiny model with its metadata passed through `edit`. */
function withMetadata(name: string, edit: (w: GgufWriter) => void): string {
  const f = GgufFile.open(tiny);
  try {
    const w = new GgufWriter().copyMetadataFrom(f.header);
    edit(w);
    for (const t of f.header.tensors) w.addTensor(t.name, t.dims, t.type, f.readTensor(t));
    const path = join(dir, `${name}.gguf`);
    w.write(path);
    return path;
  } finally {
    f.close();
  }
}

/** Exit 2 with exactly one line on stderr that starts "smallhammer:" and names the file and `says`. */
function expectOneLineError(r: CliResult, file: string, says: string) {
  expect(r.signal).toBeNull();
  expect(r.stderr).not.toContain("    at ");
  const lines = r.stderr.replace(/\n$/, "").split("\n");
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^smallhammer: /);
  expect(lines[0]).toContain(file);
  expect(lines[0]).toContain(says);
  expect(r.status).toBe(2);
}

const a = "llama";
/** Edits that set a key to a value of a given type (replacing whatever type it had). */
const set = {
  u32: (key: string, v: number) => (w: GgufWriter) => w.setU32(key, v),
  i32: (key: string, v: number) => (w: GgufWriter) => w.setI32(key, v),
  f32: (key: string, v: number) => (w: GgufWriter) => w.setF32(key, v),
  u64: (key: string, v: bigint) => (w: GgufWriter) => w.setU64(key, v),
  str: (key: string, v: string) => (w: GgufWriter) => w.setString(key, v),
};

/** [case, edit, what the one line says] */
const NONSENSE: [string, (w: GgufWriter) => unknown, string][] = [
  ["context_length 0", set.u32(`${a}.context_length`, 0), "llama.context_length = 0 is invalid"],
  ["context_length -5", set.i32(`${a}.context_length`, -5), "llama.context_length = -5 is invalid"],
  ["context_length 0.5", set.f32(`${a}.context_length`, 0.5), "llama.context_length = 0.5 is invalid"],
  [
    "context_length 2^40",
    set.u64(`${a}.context_length`, 2n ** 40n),
    "llama.context_length = 1099511627776 is invalid: must be an integer from 1 to 16777216",
  ],
  [
    "context_length 2^64 - 1",
    set.u64(`${a}.context_length`, 2n ** 64n - 1n),
    "llama.context_length = 18446744073709551615 is invalid",
  ],
  [
    "context_length as text",
    set.str(`${a}.context_length`, "4096"),
    'llama.context_length = "4096" is invalid: must be a number',
  ],
  ["embedding_length 0", set.u32(`${a}.embedding_length`, 0), "llama.embedding_length = 0 is invalid"],
  ["block_count 100000", set.u32(`${a}.block_count`, 100000), "llama.block_count = 100000 is invalid"],
  ["head_count 0", set.u32(`${a}.attention.head_count`, 0), "llama.attention.head_count = 0 is invalid"],
  [
    "head_count_kv that does not divide head_count",
    set.u32(`${a}.attention.head_count_kv`, 3),
    "llama.attention.head_count_kv = 3 is invalid: must divide llama.attention.head_count = 4",
  ],
  [
    "head_count_kv above head_count",
    set.u32(`${a}.attention.head_count_kv`, 8),
    "llama.attention.head_count_kv = 8 is invalid: must be an integer from 1 to 4",
  ],
  [
    "head_count that does not divide embedding_length",
    set.u32(`${a}.attention.head_count`, 6),
    "llama.attention.head_count = 6 is invalid: must divide llama.embedding_length = 32",
  ],
  [
    "an odd head dimension",
    (w) => w.setU32(`${a}.attention.head_count`, 32).setU32(`${a}.attention.head_count_kv`, 32),
    "llama.attention.head_count = 32 is invalid: gives an odd head dimension 32 / 32 = 1",
  ],
  [
    "an odd key_length",
    set.u32(`${a}.attention.key_length`, 7),
    "llama.attention.key_length = 7 is invalid: must be even",
  ],
  [
    "feed_forward_length -1",
    set.i32(`${a}.feed_forward_length`, -1),
    "llama.feed_forward_length = -1 is invalid",
  ],
  [
    "an odd rope.dimension_count",
    set.u32(`${a}.rope.dimension_count`, 3),
    "llama.rope.dimension_count = 3 is invalid: must be even",
  ],
  [
    "rope.dimension_count above the head dimension",
    set.u32(`${a}.rope.dimension_count`, 16),
    "llama.rope.dimension_count = 16 is invalid: must be an integer from 1 to 8",
  ],
  ["rope.freq_base 0", set.f32(`${a}.rope.freq_base`, 0), "llama.rope.freq_base = 0 is invalid"],
  ["rope.freq_base NaN", set.f32(`${a}.rope.freq_base`, Number.NaN), "llama.rope.freq_base = NaN is invalid"],
  [
    "rope.freq_base infinite",
    set.f32(`${a}.rope.freq_base`, Number.POSITIVE_INFINITY),
    "llama.rope.freq_base = Infinity is invalid",
  ],
  [
    "rope.freq_base -10000",
    set.f32(`${a}.rope.freq_base`, -10000),
    "llama.rope.freq_base = -10000 is invalid",
  ],
  [
    "norm epsilon NaN",
    set.f32(`${a}.attention.layer_norm_rms_epsilon`, Number.NaN),
    "llama.attention.layer_norm_rms_epsilon = NaN is invalid",
  ],
  [
    "norm epsilon negative",
    set.f32(`${a}.attention.layer_norm_rms_epsilon`, -0.5),
    "llama.attention.layer_norm_rms_epsilon = -0.5 is invalid",
  ],
  [
    "norm epsilon 0",
    set.f32(`${a}.attention.layer_norm_rms_epsilon`, 0),
    "llama.attention.layer_norm_rms_epsilon = 0 is invalid: must be a finite number above 0 and below 1",
  ],
  [
    "rope scaling factor 0",
    (w) => w.setString(`${a}.rope.scaling.type`, "linear").setF32(`${a}.rope.scaling.factor`, 0),
    "llama.rope.scaling.factor = 0 is invalid",
  ],
  [
    "vocab_size unlike the embedding",
    set.u32(`${a}.vocab_size`, 1000),
    `llama.vocab_size = 1000 is invalid: token_embd.weight has ${VOCAB} rows`,
  ],
  [
    "fewer tokens than embedding rows",
    (w) => {
      const tokens = (w.metadata.get("tokenizer.ggml.tokens")!.value as { values: string[] }).values;
      w.setStringArray("tokenizer.ggml.tokens", tokens.slice(0, -1));
    },
    `tokenizer.ggml.tokens has ${VOCAB - 1} tokens but token_embd.weight has ${VOCAB} rows`,
  ],
];

describe("nonsense hyper-parameters", () => {
  it("the unchanged model runs and inspects (exit 0)", async () => {
    const r = await runCli(["generate", "-m", tiny, "-p", "hello", "-n", "2", "-t", "1"]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const i = await runCli(["inspect", tiny]);
    expect(i.status).toBe(0);
    expect(i.stdout).toMatch(/^shape +dim 32, 1 layers, 4 heads \(2 KV\), head dim 8, ffn 64/m);
  });

  for (const [name, edit, says] of NONSENSE) {
    it(`refuses ${name}: generate and inspect exit 2 with one line, inspect still shows the file`, async () => {
      const file = withMetadata(name.replace(/\W+/g, "-"), edit);
      expectOneLineError(
        await runCli(["generate", "-m", file, "-p", "hello", "-n", "2", "-t", "1"]),
        file,
        says,
      );
      const r = await runCli(["inspect", file]);
      expectOneLineError(r, file, says);
      expect(r.stdout).toContain(`runnable     no: ${file}: metadata ${says}`);
      expect(r.stdout).toMatch(/^ {2}general\.architecture +"llama"$/m);
      expect(r.stdout).toMatch(/^ {2}token_embd\.weight +f32 /m);
    });
  }

  it("inspect --json marks such a file invalid, and exits 2", async () => {
    const file = withMetadata("json-ctx0", set.u32(`${a}.context_length`, 0));
    const r = await runCli(["inspect", file, "--json"]);
    expectOneLineError(r, file, "llama.context_length = 0 is invalid");
    expect(JSON.parse(r.stdout)).toMatchObject({ runnable: false, invalid: true });
    expect(JSON.parse(r.stdout).metadata["llama.context_length"]).toBe(0);
  });

  it("chat and serve refuse a context_length of 0 with one line", async () => {
    const file = withMetadata("chat-serve-ctx0", set.u32(`${a}.context_length`, 0));
    const chat = await runCli(["chat", "-m", file, "-t", "1"], { input: "hi\n" });
    expectOneLineError(chat, file, "context_length");
    const serve = await runCli(["serve", "-m", file, "--port", "0", "-t", "1"]);
    expectOneLineError(serve, file, "context_length");
  });

  it("a file that is not a model (no hyper-parameters) is shown by inspect with exit 0", async () => {
    const file = join(dir, "vocabulary-only.gguf");
    const w = new GgufWriter();
    w.setString("general.architecture", "llama");
    w.setStringArray("tokenizer.ggml.tokens", ["<unk>", "<s>", "</s>"]);
    w.write(file);
    const r = await runCli(["inspect", file]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^runnable +no: .*llama\.embedding_length is missing$/m);
  });
});

describe("llamaConfigFromMetadata", () => {
  const base: Record<string, unknown> = {
    "general.architecture": "llama",
    "llama.embedding_length": 4096,
    "llama.block_count": 32,
    "llama.feed_forward_length": 14336,
    "llama.attention.head_count": 32,
    "llama.attention.head_count_kv": 8,
    "llama.rope.dimension_count": 128,
    "llama.context_length": 32768,
    "llama.rope.freq_base": 1000000,
    "llama.attention.layer_norm_rms_epsilon": 1e-5,
    "llama.vocab_size": 32000,
  };
  const getter =
    (changes: Record<string, unknown>): MetadataGetter =>
    (key) =>
      key in changes ? changes[key] : base[key];
  const config = (changes: Record<string, unknown> = {}, rows = 32000) =>
    llamaConfigFromMetadata(getter(changes), "m.gguf", rows);
  const failure = (changes: Record<string, unknown>, rows = 32000): UserError => {
    try {
      config(changes, rows);
    } catch (e) {
      if (e instanceof UserError) return e;
      throw e;
    }
    throw new Error("expected a UserError");
  };

  it("reads a Mistral-7B-like shape", () => {
    expect(config()).toMatchObject({
      dim: 4096,
      layers: 32,
      heads: 32,
      kvHeads: 8,
      headDim: 128,
      ffn: 14336,
      vocab: 32000,
      contextLength: 32768,
      rope: { dim: 128, freqBase: 1000000, freqScale: 1 },
    });
    expect(
      config({ "llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4 }).rope.freqScale,
    ).toBe(0.25);
  });

  it("reads YaRN scaling as llama.cpp does, and refuses other scaling types by name", () => {
    const yarn = { "llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4 };
    expect(config({ ...yarn, "llama.rope.scaling.original_context_length": 8192 }).rope).toMatchObject({
      freqScale: 0.25,
      yarnOriginalContext: 8192,
    });
    // without an original context, the trained one
    expect(config(yarn).rope.yarnOriginalContext).toBe(32768);
    expect(config({ "llama.rope.scaling.factor": 4 }).rope).not.toHaveProperty("yarnOriginalContext");
    expect(config({ "llama.rope.scaling.attn_factor": 0.5 }).rope.attnFactor).toBe(0.5);
    expect(failure({ ...yarn, "llama.rope.scaling.original_context_length": 0 })).toBeInstanceOf(
      InvalidModelConfigError,
    );
    expect(failure({ "llama.rope.scaling.type": "longrope" }).message).toBe(
      'm.gguf: metadata llama.rope.scaling.type = "longrope" is not supported (supported: none, linear, yarn)',
    );
  });

  it("turns YaRN into per-pair angle divisors and a scale of q and k, as ggml's rope_yarn", () => {
    const rope = { dim: 128, freqBase: 500000, freqScale: 1 / 8, neox: false, yarnOriginalContext: 4096 };
    // ggml: the corrected dims from beta_fast 32 and beta_slow 1, a linear ramp between them, and
    // theta = theta_interp·(1 − ramp) + theta_extrap·ramp
    const corr = (turns: number) => (128 * Math.log(4096 / (turns * 2 * Math.PI))) / (2 * Math.log(500000));
    const low = Math.max(0, Math.floor(corr(32)));
    const high = Math.min(127, Math.ceil(corr(1)));
    expect([low, high]).toEqual([14, 32]);
    const fileFactors = Float32Array.from({ length: 64 }, (_, i) => 1 + i / 64);
    const divisors = ropePairFactors(rope, fileFactors)!;
    for (let i = 0; i < 64; i++) {
      const extrap = (7 * 500000 ** (-i / 64)) / fileFactors[i]!;
      const ramp = 1 - Math.min(1, Math.max(0, (i - low) / (high - low)));
      const want = extrap * rope.freqScale * (1 - ramp) + extrap * ramp;
      const got = (7 * rope.freqScale * 500000 ** (-i / 64)) / divisors[i]!;
      expect(Math.abs(got - want)).toBeLessThanOrEqual(1e-6 * want);
    }
    expect(divisors[0]).toBeCloseTo(fileFactors[0]! / 8, 6);
    expect(divisors[63]).toBeCloseTo(fileFactors[63]!, 6);
    expect(ropeMagnitude(rope)).toBeCloseTo(1 + 0.1 * Math.log(8), 12);
    expect(ropeMagnitude({ ...rope, attnFactor: 2 })).toBeCloseTo(2 * (1 + 0.1 * Math.log(8)), 12);
    // linear scaling: no divisors beyond the file's, no scale
    const linear = { dim: 128, freqBase: 500000, freqScale: 1 / 8, neox: false };
    expect(ropePairFactors(linear)).toBeUndefined();
    expect(ropeMagnitude(linear)).toBe(1);
  });

  it("takes each limit and refuses one past it", () => {
    const limits: [string, number][] = [
      ["llama.context_length", LLAMA_LIMITS.contextLength],
      ["llama.block_count", LLAMA_LIMITS.blockCount],
      ["llama.feed_forward_length", LLAMA_LIMITS.feedForwardLength],
    ];
    for (const [key, limit] of limits) {
      expect(() => config({ [key]: limit })).not.toThrow();
      const e = failure({ [key]: limit + 1 });
      expect(e).toBeInstanceOf(InvalidModelConfigError);
      expect(e.message).toBe(
        `m.gguf: metadata ${key} = ${limit + 1} is invalid: must be an integer from 1 to ${limit}`,
      );
    }
    const wide = {
      "llama.embedding_length": LLAMA_LIMITS.embeddingLength * 2,
      "llama.attention.head_count": 64,
    };
    expect(failure(wide).message).toContain(`llama.embedding_length = ${LLAMA_LIMITS.embeddingLength * 2}`);
  });

  it("prints 64-bit values exactly and text escaped", () => {
    expect(failure({ "llama.block_count": 2n ** 63n + 1n }).message).toContain(
      "= 9223372036854775809 is invalid",
    );
    expect(failure({ "llama.block_count": "32\u202e" }).message).toContain('= "32\\u202e" is invalid');
    expect(failure({ "llama.block_count": true }).message).toContain("= true is invalid: must be a number");
  });

  it("tells a file that is not a model (missing keys, other architectures) from a broken one", () => {
    const missing = failure({ "llama.block_count": undefined });
    expect(missing).not.toBeInstanceOf(InvalidModelConfigError);
    expect(missing.message).toBe("m.gguf: metadata key llama.block_count is missing");
    const other = failure({ "general.architecture": "gpt2\u202e" });
    expect(other).not.toBeInstanceOf(InvalidModelConfigError);
    expect(other.message).toContain('"gpt2\\u202e" is not supported');
    expect(failure({ "llama.vocab_size": 32001 })).toBeInstanceOf(InvalidModelConfigError);
    expect(failure({ "tokenizer.ggml.tokens": ["a", "b"] })).toBeInstanceOf(InvalidModelConfigError);
    // an unknown vocabulary size (0) skips the vocabulary checks
    expect(config({ "llama.vocab_size": 5 }, 0).vocab).toBe(0);
  });
});
