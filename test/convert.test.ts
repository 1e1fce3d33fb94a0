/**
 * smallhammer convert: GGUF → Hugging Face → GGUF gives the same tensors and tokenizer; a
 * Hugging Face directory written here with rotate-half q/k rows (by the formula, not by the
 * converter's helper) converts to the GGUF it came from, and llama.cpp runs and tokenizes it as
 * smallhammer does; quantized output equals quantizing the float file; PEFT adapters convert; and
 * broken directories are refused in one line.
 */
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getLlama, type Llama } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { convertGgufToHf } from "../src/convert/gguf-to-hf.js";
import { convertHfToGguf } from "../src/convert/hf-to-gguf.js";
import { convertLlama2cToGguf } from "../src/convert/llama2c.js";
import { convertPeftToGguf } from "../src/convert/peft.js";
import { UserError } from "../src/errors.js";
import { GGMLType } from "../src/formats/ggml-types.js";
import { GgufFile, GgufWriter, readGgufHeader } from "../src/formats/gguf.js";
import { SafetensorsFile, writeSafetensors } from "../src/formats/safetensors.js";
import { tensorPlan } from "../src/model/arch/index.js";
import { metadataGetter } from "../src/model/config.js";
import { readLoraGguf, writePeftAdapter } from "../src/model/lora.js";
import { loadModel } from "../src/model/model.js";
import { quantizeModel } from "../src/quant/quantize-model.js";
import {
  BYTE_TO_CHAR,
  bytesToBpeText,
  preTokenize,
  preTokenizerFor,
  Tokenizer,
  type TokenizerDescription,
  TokenType,
} from "../src/tokenizer/index.js";
import { setTokenizerMetadata, trainTokenizer } from "../src/tokenizer/train.js";

const CORPUS = readFileSync(new URL("./fixtures/tinyshakespeare.txt", import.meta.url), "utf8").slice(
  0,
  60_000,
);
const TEXTS = [
  "First Citizen: Before we proceed any further, hear me speak.",
  "  two  spaces, tabs\tand\nnew lines\n\n",
  "Numbers 12345 and café ☕ — unicode!",
  "<s>special</s> text",
];
const TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}";
const SHAPE = { dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 96, context: 256 };

let dir: string;
let llama: Llama;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296 - 0.5;
  };
}

/** Writes a random f32 Llama GGUF with the tokenizer `d` (untied output, GQA, random norms). */
function writeModel(path: string, d: TokenizerDescription, arch: "llama" | "qwen2" = "llama"): void {
  const { dim, layers, heads, kvHeads, ffn } = SHAPE;
  const vocab = d.tokens.length;
  const kv = (dim / heads) * kvHeads;
  const w = new GgufWriter();
  w.setString("general.architecture", arch);
  w.setString("general.name", "convert-test");
  w.setU32("general.file_type", 0);
  w.setU32(`${arch}.context_length`, SHAPE.context);
  w.setU32(`${arch}.embedding_length`, dim);
  w.setU32(`${arch}.block_count`, layers);
  w.setU32(`${arch}.feed_forward_length`, ffn);
  w.setU32(`${arch}.rope.dimension_count`, dim / heads);
  w.setU32(`${arch}.attention.head_count`, heads);
  w.setU32(`${arch}.attention.head_count_kv`, kvHeads);
  w.setF32(`${arch}.attention.layer_norm_rms_epsilon`, 1e-5);
  w.setF32(`${arch}.rope.freq_base`, 10000);
  w.setU32(`${arch}.vocab_size`, vocab);
  setTokenizerMetadata(w, d);
  w.setString("tokenizer.chat_template", TEMPLATE);
  const next = rng(7);
  const add = (name: string, dims: number[], norm = false) => {
    const n = dims.reduce((a, b) => a * b, 1);
    const v = Float32Array.from({ length: n }, () => (norm ? 1 + next() : next() * 0.2));
    w.addTensor(name, dims, GGMLType.F32, new Uint8Array(v.buffer));
  };
  add("token_embd.weight", [dim, vocab]);
  for (let l = 0; l < layers; l++) {
    add(`blk.${l}.attn_norm.weight`, [dim], true);
    add(`blk.${l}.attn_q.weight`, [dim, dim]);
    add(`blk.${l}.attn_k.weight`, [dim, kv]);
    add(`blk.${l}.attn_v.weight`, [dim, kv]);
    if (arch === "qwen2") {
      add(`blk.${l}.attn_q.bias`, [dim]);
      add(`blk.${l}.attn_k.bias`, [kv]);
      add(`blk.${l}.attn_v.bias`, [kv]);
    }
    add(`blk.${l}.attn_output.weight`, [dim, dim]);
    add(`blk.${l}.ffn_norm.weight`, [dim], true);
    add(`blk.${l}.ffn_gate.weight`, [dim, ffn]);
    add(`blk.${l}.ffn_up.weight`, [dim, ffn]);
    add(`blk.${l}.ffn_down.weight`, [ffn, dim]);
  }
  add("output_norm.weight", [dim], true);
  add("output.weight", [dim, vocab]);
  w.write(path);
}

/** Byte-level BPE over the Llama 3 pre-tokenizer: 256 byte characters, learned merges, two specials. */
function byteLevelVocab(pre = "llama-bpe"): TokenizerDescription {
  const utf8 = new TextEncoder();
  const words = new Map<string, number>();
  for (const p of preTokenize(CORPUS.slice(0, 20_000), preTokenizerFor(pre))) {
    const e = bytesToBpeText(utf8.encode(p));
    words.set(e, (words.get(e) ?? 0) + 1);
  }
  const list = [...words].map(([w, n]) => ({ s: Array.from(w), n }));
  const tokens = [...BYTE_TO_CHAR];
  const merges: string[] = [];
  for (let m = 0; m < 200; m++) {
    const pairs = new Map<string, number>();
    for (const { s, n } of list)
      for (let i = 0; i + 1 < s.length; i++)
        pairs.set(`${s[i]} ${s[i + 1]}`, (pairs.get(`${s[i]} ${s[i + 1]}`) ?? 0) + n);
    let best = "";
    let bestN = 1;
    for (const [k, n] of pairs) if (n > bestN || (n === bestN && k < best)) [best, bestN] = [k, n];
    if (!best) break;
    const [a, b] = best.split(" ") as [string, string];
    merges.push(best);
    tokens.push(a + b);
    for (const { s } of list)
      for (let i = 0; i + 1 < s.length; i++) if (s[i] === a && s[i + 1] === b) s.splice(i, 2, a + b);
  }
  const n = tokens.length;
  tokens.push("<|begin_of_text|>", "<|end_of_text|>");
  const tokenTypes = Int32Array.from(tokens, (_, i) => (i >= n ? TokenType.Control : TokenType.Normal));
  return {
    model: "gpt2",
    pre,
    tokens,
    merges,
    tokenTypes,
    bosId: n,
    eosId: n + 1,
    addBos: true,
    addEos: false,
  };
}

function tensorsOf(path: string): Map<string, { dims: number[]; type: number; bytes: Buffer }> {
  const f = GgufFile.open(path);
  try {
    return new Map(
      f.header.tensors.map((t) => [
        t.name,
        { dims: [...t.dims], type: t.type, bytes: Buffer.from(f.readTensor(t)) },
      ]),
    );
  } finally {
    f.close();
  }
}

/** HF rows from GGUF rows for one head count: W.view(heads, d/2, 2, in).transpose(1, 2). */
function toRotateHalf(x: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const d = rows / heads;
  const out = new Float32Array(x.length);
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < d / 2; i++)
      for (let t = 0; t < 2; t++)
        out.set(
          x.subarray((h * d + 2 * i + t) * cols, (h * d + 2 * i + t + 1) * cols),
          (h * d + t * (d / 2) + i) * cols,
        );
  return out;
}

/** A SentencePiece tokenizer.model (protobuf ModelProto) for an SPM description. */
function sentencePieceModel(d: TokenizerDescription, modelType = 2): Buffer {
  const varint = (v: bigint): number[] => {
    let x = BigInt.asUintN(64, v);
    const out: number[] = [];
    do {
      out.push(Number(x & 0x7fn) | (x > 0x7fn ? 0x80 : 0));
      x >>= 7n;
    } while (x > 0n);
    return out;
  };
  const field = (n: number, wire: number) => varint(BigInt((n << 3) | wire));
  const bytes = (n: number, b: number[]) => [...field(n, 2), ...varint(BigInt(b.length)), ...b];
  const int = (n: number, v: number) => [...field(n, 0), ...varint(BigInt(v))];
  const out: number[] = [];
  d.tokens.forEach((t, i) => {
    const score = new Uint8Array(new Float32Array([d.scores![i]!]).buffer);
    out.push(
      ...bytes(1, [
        ...bytes(1, [...Buffer.from(t, "utf8")]),
        ...field(2, 5),
        ...score,
        ...int(3, d.tokenTypes![i]!),
      ]),
    );
  });
  out.push(...bytes(2, [...int(3, modelType), ...int(40, 0), ...int(41, 1), ...int(42, 2), ...int(43, -1)]));
  out.push(...bytes(3, int(3, 1)));
  return Buffer.from(out);
}

const spmPath = () => join(dir, "spm.gguf");
const bpePath = () => join(dir, "bpe.gguf");

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "sh-convert-"));
  const spm = (await trainTokenizer([CORPUS], { vocabSize: 500 })).description;
  writeModel(spmPath(), spm);
  writeModel(bpePath(), byteLevelVocab());
  llama = await getLlama({ gpu: false, build: "never", logLevel: "error" as never });
}, 60_000);

afterAll(async () => {
  await llama?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

function expectSameTokenizer(a: string, b: string): void {
  const ta = Tokenizer.fromGgufMetadata(metadataGetter(readGgufHeader(a)));
  const tb = Tokenizer.fromGgufMetadata(metadataGetter(readGgufHeader(b)));
  for (const text of TEXTS) expect(tb.encode(text), text).toEqual(ta.encode(text));
}

describe("GGUF → Hugging Face → GGUF", () => {
  for (const [label, source] of [
    ["SentencePiece", spmPath],
    ["byte-level BPE", bpePath],
  ] as const) {
    it(`gives back every tensor and the tokenizer (${label})`, async () => {
      const hf = join(dir, `hf-${label}`);
      const back = join(dir, `back-${label}.gguf`);
      convertGgufToHf(source(), hf);
      const config = JSON.parse(readFileSync(join(hf, "config.json"), "utf8"));
      expect(config).toMatchObject({
        model_type: "llama",
        hidden_size: 64,
        num_key_value_heads: 2,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: false,
      });
      expect(JSON.parse(readFileSync(join(hf, "tokenizer_config.json"), "utf8")).chat_template).toBe(
        TEMPLATE,
      );
      await convertHfToGguf(hf, back);
      const a = tensorsOf(source());
      const b = tensorsOf(back);
      expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
      for (const [name, t] of a) expect(b.get(name), name).toEqual(t);
      const h = readGgufHeader(back);
      const orig = readGgufHeader(source());
      for (const key of [...orig.metadata.keys()].filter((k) => k.startsWith("llama."))) {
        expect(h.get(key), key).toEqual(orig.get(key));
      }
      expect(h.getString("tokenizer.chat_template")).toBe(TEMPLATE);
      expectSameTokenizer(source(), back);
    });
  }

  it("carries YaRN rope scaling from config.json to GGUF's keys and back", async () => {
    const hf = join(dir, "hf-yarn");
    convertGgufToHf(spmPath(), hf);
    const configPath = join(hf, "config.json");
    const scaling = { rope_type: "yarn", factor: 4, original_max_position_embeddings: 64 };
    writeFileSync(
      configPath,
      JSON.stringify({ ...JSON.parse(readFileSync(configPath, "utf8")), rope_scaling: scaling }),
    );
    const gguf = join(dir, "yarn.gguf");
    await convertHfToGguf(hf, gguf);
    const h = readGgufHeader(gguf);
    expect(h.getString("llama.rope.scaling.type")).toBe("yarn");
    expect(h.get("llama.rope.scaling.factor")?.value).toBe(4);
    expect(h.get("llama.rope.scaling.original_context_length")?.value).toBe(64);
    const hfBack = join(dir, "hf-yarn-back");
    convertGgufToHf(gguf, hfBack);
    expect(JSON.parse(readFileSync(join(hfBack, "config.json"), "utf8")).rope_scaling).toEqual({
      type: "yarn",
      ...scaling,
    });
    const again = join(dir, "yarn-again.gguf");
    await convertHfToGguf(hfBack, again);
    const h2 = readGgufHeader(again);
    for (const key of [...h.metadata.keys()].filter((k) => k.startsWith("llama."))) {
      expect(h2.get(key), key).toEqual(h.get(key));
    }
  });

  it("makes Llama 3.1's rope_scaling into rope_freqs.weight, as llama.cpp's converter computes it", async () => {
    const hf = join(dir, "hf-llama3");
    convertGgufToHf(spmPath(), hf);
    const configPath = join(hf, "config.json");
    const config = JSON.parse(readFileSync(configPath, "utf8"));
    const scaling = {
      rope_type: "llama3",
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 64,
    };
    writeFileSync(configPath, JSON.stringify({ ...config, rope_theta: 10000, rope_scaling: scaling }));
    const gguf = join(dir, "llama3.gguf");
    await convertHfToGguf(hf, gguf);
    const t = tensorsOf(gguf).get("rope_freqs.weight")!;
    expect(t.dims).toEqual([8]);
    const got = new Float32Array(t.bytes.buffer, t.bytes.byteOffset, 8);
    // head dim 16: wavelengths 2π·10000^(i/8); under 64/4 keep, over 64/1 divide by 8, blend between
    const want = Array.from({ length: 8 }, (_, i) => {
      const wavelength = 2 * Math.PI * 10000 ** (i / 8);
      if (wavelength < 16) return 1;
      if (wavelength > 64) return 8;
      const smooth = (64 / wavelength - 1) / 3;
      return 1 / ((1 - smooth) / 8 + smooth);
    });
    expect(want.filter((f) => f !== 1 && f !== 8).length).toBe(2);
    for (let i = 0; i < 8; i++) expect(got[i], `pair ${i}`).toBeCloseTo(want[i]!, 5);
    // no scaling keys: the factors are all llama.cpp reads
    expect(readGgufHeader(gguf).get("llama.rope.scaling.type")).toBeUndefined();
    const m = await loadModel(gguf, { worker: false, threads: 1 });
    await m.dispose();
  });

  it("writes shards with an index past the shard size, and reads them back", async () => {
    const hf = join(dir, "hf-sharded");
    const s = convertGgufToHf(spmPath(), hf, { maxShardBytes: 100_000, dtype: "F32" });
    expect(s.files.filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)).length).toBeGreaterThan(2);
    const back = join(dir, "back-sharded.gguf");
    await convertHfToGguf(hf, back);
    expect(tensorsOf(back)).toEqual(tensorsOf(spmPath()));
  });
});

describe("Hugging Face directory with rotate-half q/k → GGUF", () => {
  let hf: string;
  beforeAll(() => {
    // The HF directory: tensors by hand, q/k rows in rotate-half order, side files from the exporter.
    hf = join(dir, "hf-by-hand");
    convertGgufToHf(spmPath(), join(dir, "hf-side"));
    mkdirSync(hf);
    for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"])
      copyFileSync(join(dir, "hf-side", f), join(hf, f));
    const f = GgufFile.open(spmPath());
    const names: Record<string, string> = {
      attn_norm: "input_layernorm",
      attn_q: "self_attn.q_proj",
      attn_k: "self_attn.k_proj",
      attn_v: "self_attn.v_proj",
      attn_output: "self_attn.o_proj",
      ffn_norm: "post_attention_layernorm",
      ffn_gate: "mlp.gate_proj",
      ffn_up: "mlp.up_proj",
      ffn_down: "mlp.down_proj",
    };
    const tensors = f.header.tensors.map((t) => {
      const bytes = f.readTensor(t);
      let data = new Float32Array(bytes.buffer, bytes.byteOffset, t.elementCount);
      const m = /^blk\.(\d+)\.(\w+)\.weight$/.exec(t.name);
      const name = m
        ? `model.layers.${m[1]}.${names[m[2]!]}.weight`
        : {
            "token_embd.weight": "model.embed_tokens.weight",
            "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight",
          }[t.name]!;
      if (m?.[2] === "attn_q") data = toRotateHalf(data, t.dims[1]!, t.dims[0]!, SHAPE.heads);
      if (m?.[2] === "attn_k") data = toRotateHalf(data, t.dims[1]!, t.dims[0]!, SHAPE.kvHeads);
      return { name, shape: [...t.dims].reverse(), data };
    });
    f.close();
    writeSafetensors(join(hf, "model.safetensors"), tensors);
  });

  it("the exporter writes the same rotate-half rows", () => {
    const ours = SafetensorsFile.open(join(dir, "hf-side", "model.safetensors"));
    const byHand = SafetensorsFile.open(join(hf, "model.safetensors"));
    try {
      for (const t of byHand.tensors)
        expect(ours.readFloat32(t.name), t.name).toEqual(byHand.readFloat32(t.name));
    } finally {
      ours.close();
      byHand.close();
    }
  });

  it("converts to the original model: llama.cpp and smallhammer agree on it", async () => {
    const out = join(dir, "from-hand-f32.gguf");
    await convertHfToGguf(hf, out, { type: "f32" });
    expect(tensorsOf(out)).toEqual(tensorsOf(spmPath()));
    // llama.cpp's greedy continuation equals smallhammer's on the converted file, and its
    // tokenization of every text equals smallhammer's.
    const ours = await loadModel(out, { worker: false, threads: 1, contextSize: 64 });
    const model = await llama.loadModel({ modelPath: out });
    try {
      for (const text of TEXTS) {
        expect(Array.from(model.tokenize(text, true)), text).toEqual(
          ours.tokenize(text, { addSpecial: false }),
        );
      }
      const prompt = ours.tokenize(TEXTS[0]!);
      const ctx = await model.createContext({ contextSize: 64, threads: 1 });
      const seq = ctx.getSequence();
      const theirs: number[] = [];
      for await (const t of seq.evaluate(prompt as never, { temperature: 0 })) {
        theirs.push(t);
        if (theirs.length === 6) break;
      }
      await ctx.dispose();
      const mine: number[] = [];
      let logits = ours.llama.forward(prompt, 0);
      for (let i = 0; i < 6; i++) {
        let best = 0;
        for (let v = 1; v < logits.length; v++) if (logits[v]! > logits[best]!) best = v;
        mine.push(best);
        logits = ours.llama.forward([best], prompt.length + i);
      }
      expect(mine).toEqual(theirs);
    } finally {
      await model.dispose();
      ours.dispose?.();
    }
  }, 60_000);

  it("quantizes as quantize does from the float file", async () => {
    const q = join(dir, "from-hand-q8_0.gguf");
    await convertHfToGguf(hf, q, { type: "q8_0" });
    const ref = join(dir, "ref-q8_0.gguf");
    await quantizeModel(spmPath(), ref, "q8_0");
    expect(tensorsOf(q)).toEqual(tensorsOf(ref));
    expect(readGgufHeader(q).getNumber("general.file_type")).toBe(7);
  });
});

it("reads a SentencePiece tokenizer.model: the same pieces, scores and types, tokenized alike in llama.cpp", async () => {
  const hf = join(dir, "hf-spm-model");
  convertGgufToHf(spmPath(), hf);
  const get = metadataGetter(readGgufHeader(spmPath()));
  const d = {
    tokens: get("tokenizer.ggml.tokens") as string[],
    scores: get("tokenizer.ggml.scores") as Float32Array,
    tokenTypes: get("tokenizer.ggml.token_type") as Int32Array,
  } as unknown as TokenizerDescription;
  writeFileSync(join(hf, "tokenizer.model"), sentencePieceModel(d));
  rmSync(join(hf, "tokenizer.json"));
  const out = join(dir, "from-tokenizer-model.gguf");
  await convertHfToGguf(hf, out);
  const back = metadataGetter(readGgufHeader(out));
  for (const key of [
    "tokens",
    "scores",
    "token_type",
    "bos_token_id",
    "eos_token_id",
    "unknown_token_id",
    "add_space_prefix",
  ]) {
    expect(back(`tokenizer.ggml.${key}`), key).toEqual(get(`tokenizer.ggml.${key}`));
  }
  const tok = Tokenizer.fromGgufMetadata(back);
  const model = await llama.loadModel({ modelPath: out, vocabOnly: true });
  try {
    for (const text of TEXTS) {
      expect(Array.from(model.tokenize(text, true)), text).toEqual(tok.encode(text, { addSpecial: false }));
    }
  } finally {
    await model.dispose();
  }
  // A unigram model, and a truncated file beside no tokenizer.json, are refused in one line.
  writeFileSync(join(hf, "tokenizer.model"), sentencePieceModel(d, 1));
  await expect(convertHfToGguf(hf, join(dir, "never.gguf"))).rejects.toThrow(
    /unigram models are not supported yet/,
  );
  writeFileSync(join(hf, "tokenizer.model"), sentencePieceModel(d).subarray(0, 1000));
  await expect(convertHfToGguf(hf, join(dir, "never.gguf"))).rejects.toThrow(/not a SentencePiece model \(/);
});

it("llama.cpp tokenizes a converted byte-level BPE file as smallhammer does", async () => {
  const hf = join(dir, "hf-bpe-tok");
  convertGgufToHf(bpePath(), hf);
  const out = join(dir, "bpe-tok.gguf");
  await convertHfToGguf(hf, out, { type: "f16" });
  expect(readGgufHeader(out).getString("tokenizer.ggml.pre")).toBe("llama-bpe");
  const tok = Tokenizer.fromGgufMetadata(metadataGetter(readGgufHeader(out)));
  const model = await llama.loadModel({ modelPath: out, vocabOnly: true });
  try {
    for (const text of TEXTS) {
      expect(Array.from(model.tokenize(text, true)), text).toEqual(tok.encode(text, { addSpecial: false }));
    }
    expect(model.tokens.bos).toBe(tok.bosId);
  } finally {
    await model.dispose();
  }
});

it("Qwen 2: biases and NeoX rows round-trip, and llama.cpp runs the converted file as the original", async () => {
  const orig = join(dir, "qwen2.gguf");
  writeModel(orig, byteLevelVocab("qwen2"), "qwen2");
  const hf = join(dir, "hf-qwen2");
  convertGgufToHf(orig, hf);
  const config = JSON.parse(readFileSync(join(hf, "config.json"), "utf8"));
  expect(config).toMatchObject({ model_type: "qwen2", architectures: ["Qwen2ForCausalLM"] });
  const st = SafetensorsFile.open(join(hf, "model.safetensors"));
  expect(st.tensor("model.layers.1.self_attn.k_proj.bias")?.shape).toEqual([32]);
  // No rotate-half permutation for NeoX-order models: the q rows are GGUF's as they are.
  const q = tensorsOf(orig).get("blk.0.attn_q.weight")!.bytes;
  expect(Buffer.from(st.readFloat32("model.layers.0.self_attn.q_proj.weight").buffer)).toEqual(q);
  st.close();
  const back = join(dir, "qwen2-back.gguf");
  await convertHfToGguf(hf, back);
  expect(tensorsOf(back)).toEqual(tensorsOf(orig));
  expect(readGgufHeader(back).getString("tokenizer.ggml.pre")).toBe("qwen2");
  const greedy = async (path: string) => {
    const model = await llama.loadModel({ modelPath: path });
    const ctx = await model.createContext({ contextSize: 64, threads: 1 });
    const out: number[] = [];
    try {
      for await (const t of ctx.getSequence().evaluate(model.tokenize(TEXTS[0]!), { temperature: 0 })) {
        out.push(t);
        if (out.length === 6) break;
      }
    } finally {
      await ctx.dispose();
      await model.dispose();
    }
    return out;
  };
  expect(await greedy(back)).toEqual(await greedy(orig));
  const tok = Tokenizer.fromGgufMetadata(metadataGetter(readGgufHeader(back)));
  const model = await llama.loadModel({ modelPath: back, vocabOnly: true });
  try {
    for (const text of TEXTS) {
      expect(Array.from(model.tokenize(text, true)), text).toEqual(tok.encode(text, { addSpecial: false }));
    }
  } finally {
    await model.dispose();
  }
}, 60_000);

describe("GPT-2, Phi-3, Gemma and MPT", () => {
  const dim = 64;
  const layers = 2;
  const heads = 4;
  /** Per architecture: feed-forward width, KV heads, tied head, tokenizer, extra metadata. */
  const CASES = {
    gpt2: { ffn: 4 * dim, kvHeads: heads, tied: false, spm: false },
    phi3: { ffn: 96, kvHeads: 2, tied: false, spm: true },
    gemma: { ffn: 96, kvHeads: 2, tied: true, spm: true },
    mpt: { ffn: 4 * dim, kvHeads: heads, tied: true, spm: false },
  } as const;
  type Arch = keyof typeof CASES;

  /** The hyper-parameter metadata each converter row writes, with these values. */
  function metadata(arch: Arch, vocab: number): [key: string, type: "u32" | "f32", value: number][] {
    const { ffn, kvHeads } = CASES[arch];
    const common: [string, "u32" | "f32", number][] = [
      ["context_length", "u32", SHAPE.context],
      ["embedding_length", "u32", dim],
      ["block_count", "u32", layers],
      ["feed_forward_length", "u32", ffn],
      ["attention.head_count", "u32", heads],
      ["vocab_size", "u32", vocab],
    ];
    if (arch === "gpt2") return [...common, ["attention.layer_norm_epsilon", "f32", 1e-5]];
    if (arch === "mpt") {
      return [
        ...common,
        ["attention.head_count_kv", "u32", kvHeads],
        ["attention.layer_norm_epsilon", "f32", 1e-5],
        ["attention.max_alibi_bias", "f32", 8],
        ["attention.clamp_kqv", "f32", 6],
      ];
    }
    const rms: [string, "u32" | "f32", number][] = [
      ...common,
      ["rope.dimension_count", "u32", dim / heads],
      ["attention.head_count_kv", "u32", kvHeads],
      ["attention.layer_norm_rms_epsilon", "f32", 1e-5],
      ["rope.freq_base", "f32", 10000],
    ];
    if (arch === "gemma") {
      rms.push(["attention.key_length", "u32", dim / heads], ["attention.value_length", "u32", dim / heads]);
    }
    return rms;
  }

  /** A random f32 GGUF of `arch` (norms and biases random too) with the tokenizer `d`. */
  function writeArch(path: string, arch: Arch, d: TokenizerDescription): void {
    const { ffn, kvHeads, tied } = CASES[arch];
    const w = new GgufWriter();
    w.setString("general.architecture", arch);
    w.setString("general.name", "convert-test");
    w.setU32("general.file_type", 0);
    for (const [key, type, value] of metadata(arch, d.tokens.length)) {
      if (type === "u32") w.setU32(`${arch}.${key}`, value);
      else w.setF32(`${arch}.${key}`, value);
    }
    setTokenizerMetadata(w, d);
    const config = {
      architecture: arch,
      dim,
      layers,
      heads,
      kvHeads,
      headDim: dim / heads,
      ffn,
      vocab: d.tokens.length,
      contextLength: SHAPE.context,
      normEps: 1e-5,
      rope: { dim: dim / heads, freqBase: 10000, freqScale: 1, neox: true },
    };
    const next = rng(11);
    for (const t of tensorPlan(arch, config, (name) => name === "output.weight" && !tied)) {
      const n = t.dims.reduce((a, b) => a * b, 1);
      const v = Float32Array.from({ length: n }, () => (t.kind === "norm" ? 1 + next() : next() * 0.2));
      w.addTensor(t.name, t.dims, GGMLType.F32, new Uint8Array(v.buffer));
    }
    w.write(path);
  }

  /** Hugging Face names, by the architectures' own modelling code (not the converter's table). */
  function hfName(arch: Arch, gguf: string): { name: string; transposed?: boolean; minusOne?: boolean } {
    const m = /^blk\.(\d+)\.(\w+)\.(weight|bias)$/.exec(gguf);
    const [l, role, suffix] = m
      ? [m[1]!, m[2]!, m[3]!]
      : ["", gguf.replace(/\.(weight|bias)$/, ""), gguf.split(".").pop()!];
    const table: Record<Arch, Record<string, string>> = {
      // GPT-2 as the base model saves it: no "transformer." prefix, Conv1D matrices [in, out].
      gpt2: {
        token_embd: "wte",
        position_embd: "wpe",
        output_norm: "ln_f",
        output: "lm_head",
        attn_norm: `h.${l}.ln_1`,
        attn_qkv: `h.${l}.attn.c_attn`,
        attn_output: `h.${l}.attn.c_proj`,
        ffn_norm: `h.${l}.ln_2`,
        ffn_up: `h.${l}.mlp.c_fc`,
        ffn_down: `h.${l}.mlp.c_proj`,
      },
      phi3: {
        token_embd: "model.embed_tokens",
        output_norm: "model.norm",
        output: "lm_head",
        attn_norm: `model.layers.${l}.input_layernorm`,
        attn_qkv: `model.layers.${l}.self_attn.qkv_proj`,
        attn_output: `model.layers.${l}.self_attn.o_proj`,
        ffn_norm: `model.layers.${l}.post_attention_layernorm`,
        ffn_up: `model.layers.${l}.mlp.gate_up_proj`,
        ffn_down: `model.layers.${l}.mlp.down_proj`,
      },
      gemma: {
        token_embd: "model.embed_tokens",
        output_norm: "model.norm",
        attn_norm: `model.layers.${l}.input_layernorm`,
        attn_q: `model.layers.${l}.self_attn.q_proj`,
        attn_k: `model.layers.${l}.self_attn.k_proj`,
        attn_v: `model.layers.${l}.self_attn.v_proj`,
        attn_output: `model.layers.${l}.self_attn.o_proj`,
        ffn_norm: `model.layers.${l}.post_attention_layernorm`,
        ffn_gate: `model.layers.${l}.mlp.gate_proj`,
        ffn_up: `model.layers.${l}.mlp.up_proj`,
        ffn_down: `model.layers.${l}.mlp.down_proj`,
      },
      mpt: {
        token_embd: "transformer.wte",
        output_norm: "transformer.norm_f",
        attn_norm: `transformer.blocks.${l}.norm_1`,
        attn_qkv: `transformer.blocks.${l}.attn.Wqkv`,
        attn_output: `transformer.blocks.${l}.attn.out_proj`,
        ffn_norm: `transformer.blocks.${l}.norm_2`,
        ffn_up: `transformer.blocks.${l}.ffn.up_proj`,
        ffn_down: `transformer.blocks.${l}.ffn.down_proj`,
      },
    };
    const name = `${table[arch][role]}.${suffix}`;
    const matrix =
      suffix === "weight" && !role.endsWith("norm") && role !== "token_embd" && role !== "position_embd";
    return {
      name,
      transposed: arch === "gpt2" && matrix && role !== "output",
      minusOne: arch === "gemma" && role.endsWith("norm"),
    };
  }

  /** config.json as each architecture's transformers class writes it. */
  function hfConfig(arch: Arch, vocab: number): object {
    const { ffn, kvHeads } = CASES[arch];
    if (arch === "gpt2") {
      return {
        model_type: "gpt2",
        architectures: ["GPT2LMHeadModel"],
        n_embd: dim,
        n_layer: layers,
        n_head: heads,
        n_positions: SHAPE.context,
        n_inner: null,
        layer_norm_epsilon: 1e-5,
        activation_function: "gelu_new",
        vocab_size: vocab,
        tie_word_embeddings: false,
      };
    }
    if (arch === "mpt") {
      return {
        model_type: "mpt",
        architectures: ["MPTForCausalLM"],
        d_model: dim,
        n_heads: heads,
        n_layers: layers,
        expansion_ratio: 4,
        max_seq_len: SHAPE.context,
        vocab_size: vocab,
        no_bias: true,
        learned_pos_emb: true,
        attn_config: { alibi: true, alibi_bias_max: 8, clip_qkv: 6, qk_ln: false },
      };
    }
    const llamaLike = {
      hidden_size: dim,
      intermediate_size: ffn,
      num_hidden_layers: layers,
      num_attention_heads: heads,
      num_key_value_heads: kvHeads,
      max_position_embeddings: SHAPE.context,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      vocab_size: vocab,
    };
    if (arch === "phi3")
      return {
        model_type: "phi3",
        architectures: ["Phi3ForCausalLM"],
        ...llamaLike,
        hidden_act: "silu",
        sliding_window: 2047,
        tie_word_embeddings: false,
      };
    return {
      model_type: "gemma",
      architectures: ["GemmaForCausalLM"],
      ...llamaLike,
      head_dim: dim / heads,
      hidden_act: "gelu",
      hidden_activation: "gelu_pytorch_tanh",
    };
  }

  /** llama.cpp's greedy continuation and ours (argmax, fed back) agree on `path`. */
  async function expectSameGreedy(path: string): Promise<void> {
    const ours = await loadModel(path, { worker: false, threads: 1, contextSize: 64 });
    try {
      const model = await llama.loadModel({ modelPath: path });
      const prompt = ours.tokenize(TEXTS[0]!);
      const ctx = await model.createContext({
        contextSize: 64,
        threads: 1,
        experimentalKvCacheKeyType: "F32",
        experimentalKvCacheValueType: "F32",
      });
      const theirs: number[] = [];
      for await (const t of ctx.getSequence().evaluate(prompt as never, { temperature: 0 })) {
        theirs.push(t);
        if (theirs.length === 8) break;
      }
      await ctx.dispose();
      const mine: number[] = [];
      let logits = ours.llama.forward(prompt, 0);
      for (let i = 0; i < 8; i++) {
        let best = 0;
        for (let v = 1; v < logits.length; v++) if (logits[v]! > logits[best]!) best = v;
        mine.push(best);
        logits = ours.llama.forward([best], prompt.length + i);
      }
      await model.dispose();
      expect(mine).toEqual(theirs);
    } finally {
      await ours.dispose();
    }
  }

  for (const arch of Object.keys(CASES) as Arch[]) {
    describe(arch, () => {
      let orig: string;
      beforeAll(async () => {
        const d = CASES[arch].spm
          ? (await trainTokenizer([CORPUS], { vocabSize: 400 })).description
          : byteLevelVocab("gpt-2");
        orig = join(dir, `${arch}.gguf`);
        writeArch(orig, arch, d);
      }, 60_000);

      it("GGUF → Hugging Face → GGUF keeps every tensor bit for bit, the metadata and the tokenizer", async () => {
        const hf = join(dir, `hf-${arch}`);
        convertGgufToHf(orig, hf);
        const config = JSON.parse(readFileSync(join(hf, "config.json"), "utf8"));
        expect(config.model_type).toBe(arch);
        const back = join(dir, `${arch}-back.gguf`);
        await convertHfToGguf(hf, back);
        expect(tensorsOf(back)).toEqual(tensorsOf(orig));
        const h = readGgufHeader(back);
        const o = readGgufHeader(orig);
        const keys = [...o.metadata.keys()].filter((k) => k.startsWith(`${arch}.`));
        expect(keys.length).toBe(metadata(arch, 1).length);
        for (const key of keys) expect(h.get(key), key).toEqual(o.get(key));
        expectSameTokenizer(orig, back);
      });

      it("a Hugging Face directory written by hand converts to the same file, which both engines run alike", async () => {
        const hf = join(dir, `hf-hand-${arch}`);
        convertGgufToHf(orig, join(dir, `hf-side-${arch}`));
        mkdirSync(hf);
        for (const f of ["tokenizer.json", "tokenizer_config.json"])
          copyFileSync(join(dir, `hf-side-${arch}`, f), join(hf, f));
        const f = GgufFile.open(orig);
        const vocab = f.header.tensor("token_embd.weight")!.dims[1]!;
        const tensors = f.header.tensors.map((t) => {
          const bytes = f.readTensor(t);
          let data = new Float32Array(bytes.buffer, bytes.byteOffset, t.elementCount).slice();
          const { name, transposed, minusOne } = hfName(arch, t.name);
          let shape = [...t.dims].reverse();
          if (transposed) {
            const [cols, rows] = t.dims as [number, number];
            const x = data;
            data = new Float32Array(x.length);
            for (let r = 0; r < rows; r++)
              for (let k = 0; k < cols; k++) data[k * rows + r] = x[r * cols + k]!;
            shape = [cols, rows];
          }
          if (minusOne) data = data.map((v) => v - 1);
          return { name, shape, data };
        });
        f.close();
        // GPT-2's causal-mask buffers, which convert leaves out
        if (arch === "gpt2")
          tensors.push({ name: "h.0.attn.bias", shape: [1, 1, 4, 4], data: new Float32Array(16) });
        writeSafetensors(join(hf, "model.safetensors"), tensors);
        writeFileSync(join(hf, "config.json"), JSON.stringify(hfConfig(arch, vocab)));
        const out = join(dir, `${arch}-from-hand.gguf`);
        // (a general.name naming Phi-3 makes llama.cpp look for Phi-3's own special tokens)
        await convertHfToGguf(hf, out, { name: "from-hand" });
        expect(tensorsOf(out)).toEqual(tensorsOf(orig));
        await expectSameGreedy(out);
        // A quantized type: the float file quantized as quantize does.
        const q = join(dir, `${arch}-from-hand-q8_0.gguf`);
        await convertHfToGguf(hf, q, { type: "q8_0", name: "from-hand" });
        const ref = join(dir, `${arch}-ref-q8_0.gguf`);
        await quantizeModel(out, ref, "q8_0");
        expect(tensorsOf(q)).toEqual(tensorsOf(ref));
      }, 60_000);
    });
  }
});

it("converts a PEFT adapter into llama.cpp's GGUF LoRA", () => {
  const next = rng(3);
  const rand = (n: number) => Float32Array.from({ length: n }, () => next());
  const adapter = {
    architecture: "llama",
    alpha: 16,
    tensors: [
      { base: "blk.0.attn_q.weight", rank: 4, inFeatures: 64, outFeatures: 64, a: rand(256), b: rand(256) },
      { base: "blk.1.attn_k.weight", rank: 4, inFeatures: 64, outFeatures: 32, a: rand(256), b: rand(128) },
    ],
  };
  const peft = join(dir, "peft");
  writePeftAdapter(peft, adapter, { baseModel: "x", heads: SHAPE.heads, kvHeads: SHAPE.kvHeads });
  const out = join(dir, "adapter.gguf");
  const s = convertPeftToGguf(peft, spmPath(), out);
  expect(s).toMatchObject({ rank: 4, alpha: 16, tensors: 2 });
  const back = readLoraGguf(out);
  expect(back.alpha).toBe(16);
  expect(back.tensors.map((t) => [t.base, t.a, t.b])).toEqual(adapter.tensors.map((t) => [t.base, t.a, t.b]));
  // An adapter for a matrix of another shape is refused.
  const wrong = join(dir, "peft-wrong");
  writePeftAdapter(
    wrong,
    { ...adapter, tensors: [{ ...adapter.tensors[1]!, base: "blk.1.attn_q.weight" }] },
    {
      baseModel: "x",
      heads: SHAPE.heads,
      kvHeads: SHAPE.kvHeads,
    },
  );
  expect(() => convertPeftToGguf(wrong, spmPath(), join(dir, "wrong.gguf"))).toThrow(/base matrix 64x64/);
});

describe("llama2.c checkpoints", () => {
  /** model.bin (version 0 or 1) and tokenizer.bin made from spm.gguf's tensors and vocabulary. */
  function writeLlama2c(version: 0 | 1, shared: boolean): { model: string; tokenizer: string } {
    const t = tensorsOf(spmPath());
    const { dim, layers, heads, kvHeads, ffn, context } = SHAPE;
    const vocab = t.get("token_embd.weight")!.dims[1]!;
    const stack = (role: string) =>
      Array.from({ length: layers }, (_, l) => t.get(`blk.${l}.${role}.weight`)!.bytes);
    const ints = Buffer.alloc(28);
    const header = [dim, ffn, layers, heads, kvHeads, shared || version === 1 ? vocab : -vocab, context];
    for (const [i, v] of header.entries()) ints.writeInt32LE(v, 4 * i);
    const parts: Buffer[] = [];
    const matrices = () => parts.push(...["attn_q", "attn_k", "attn_v", "attn_output"].flatMap(stack));
    const ffnParts = () => parts.push(...["ffn_gate", "ffn_down", "ffn_up"].flatMap(stack));
    if (version === 0) {
      parts.push(ints, t.get("token_embd.weight")!.bytes, ...stack("attn_norm"));
      matrices();
      parts.push(...stack("ffn_norm"));
      ffnParts();
      parts.push(t.get("output_norm.weight")!.bytes, Buffer.alloc(context * (dim / heads) * 4, 7));
    } else {
      const head = Buffer.alloc(256);
      head.writeUInt32LE(0x616b3432, 0);
      head.writeInt32LE(1, 4);
      ints.copy(head, 8);
      head[36] = shared ? 1 : 0;
      parts.push(
        head,
        ...stack("attn_norm"),
        ...stack("ffn_norm"),
        t.get("output_norm.weight")!.bytes,
        t.get("token_embd.weight")!.bytes,
      );
      matrices();
      ffnParts();
    }
    if (!shared) parts.push(t.get("output.weight")!.bytes);
    const model = join(dir, `llama2c-v${version}-${shared}.bin`);
    writeFileSync(model, Buffer.concat(parts));
    const get = metadataGetter(readGgufHeader(spmPath()));
    const tokens = get("tokenizer.ggml.tokens") as string[];
    const scores = get("tokenizer.ggml.scores") as Float32Array;
    const tok: Buffer[] = [Buffer.alloc(4)];
    tok[0]!.writeUInt32LE(64);
    tokens.forEach((text, i) => {
      const shown =
        text === "<s>" ? "\n<s>\n" : text === "</s>" ? "\n</s>\n" : text.replaceAll("\u2581", " ");
      const b = Buffer.from(shown, "utf8");
      const h = Buffer.alloc(8);
      h.writeFloatLE(scores[i]!, 0);
      h.writeInt32LE(b.length, 4);
      tok.push(h, b);
    });
    const tokenizer = join(dir, "tokenizer.bin");
    writeFileSync(tokenizer, Buffer.concat(tok));
    return { model, tokenizer };
  }

  for (const [version, shared] of [
    [0, false],
    [1, true],
  ] as const) {
    it(`version ${version}, ${shared ? "shared" : "separate"} classifier: the same tensors and vocabulary`, async () => {
      const { model, tokenizer } = writeLlama2c(version, shared);
      const out = join(dir, `llama2c-${version}.gguf`);
      await convertLlama2cToGguf(model, tokenizer, out);
      const want = tensorsOf(spmPath());
      if (shared) want.delete("output.weight");
      expect(tensorsOf(out)).toEqual(want);
      const a = metadataGetter(readGgufHeader(spmPath()));
      const b = metadataGetter(readGgufHeader(out));
      for (const key of ["tokens", "scores", "token_type", "bos_token_id", "eos_token_id"]) {
        expect(b(`tokenizer.ggml.${key}`), key).toEqual(a(`tokenizer.ggml.${key}`));
      }
      for (const key of [
        "embedding_length",
        "block_count",
        "attention.head_count_kv",
        "feed_forward_length",
        "context_length",
      ]) {
        expect(b(`llama.${key}`), key).toEqual(a(`llama.${key}`));
      }
    });
  }

  it("refuses a checkpoint whose size disagrees with its header, and a short tokenizer", async () => {
    const { model, tokenizer } = writeLlama2c(0, false);
    const cut = join(dir, "cut.bin");
    writeFileSync(cut, readFileSync(model).subarray(0, 5000));
    await expect(convertLlama2cToGguf(cut, tokenizer, join(dir, "never.gguf"))).rejects.toThrow(
      /not a llama2.c checkpoint \(the header describes \d+ bytes, the file has 5000\)/,
    );
    const short = join(dir, "short-tokenizer.bin");
    writeFileSync(short, readFileSync(tokenizer).subarray(0, 300));
    await expect(convertLlama2cToGguf(model, short, join(dir, "never.gguf"))).rejects.toThrow(
      /not a llama2.c tokenizer.bin/,
    );
  });
});

describe("hostile directories are refused in one line", () => {
  let good: string;
  beforeAll(() => {
    good = join(dir, "hf-good");
    convertGgufToHf(spmPath(), good);
  });

  /** A copy of the good directory with `edit` applied. */
  function variant(name: string, edit: (d: string) => void): string {
    const d = join(dir, name);
    mkdirSync(d);
    for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"])
      copyFileSync(join(good, f), join(d, f));
    edit(d);
    return d;
  }

  async function refusal(d: string): Promise<string> {
    try {
      await convertHfToGguf(d, join(dir, "never.gguf"));
    } catch (e) {
      expect(e).toBeInstanceOf(UserError);
      const msg = (e as Error).message;
      expect(msg).not.toContain("\n");
      return msg;
    }
    throw new Error(`${d} was accepted`);
  }

  const config = (d: string) => JSON.parse(readFileSync(join(d, "config.json"), "utf8"));
  const setConfig = (d: string, patch: object) =>
    writeFileSync(join(d, "config.json"), JSON.stringify({ ...config(d), ...patch }));

  it("bad config.json", async () => {
    expect(await refusal(variant("c1", (d) => writeFileSync(join(d, "config.json"), "{not json")))).toMatch(
      /config.json: not valid JSON/,
    );
    expect(await refusal(variant("c2", (d) => setConfig(d, { hidden_size: -64 })))).toMatch(
      /hidden_size = -64 is invalid/,
    );
    expect(await refusal(variant("c3", (d) => setConfig(d, { num_attention_heads: 5 })))).toMatch(
      /head_count/,
    );
    expect(await refusal(variant("c4", (d) => setConfig(d, { model_type: "falcon" })))).toMatch(
      /architecture "falcon" is not supported yet/,
    );
    // A supported architecture whose own keys are missing: the first one is named.
    expect(await refusal(variant("c4b", (d) => setConfig(d, { model_type: "gpt2" })))).toMatch(
      /config\.json: n_embd is missing/,
    );
    expect(
      await refusal(
        variant("c4c", (d) =>
          setConfig(d, {
            model_type: "mpt",
            d_model: 64,
            n_heads: 4,
            n_layers: 2,
            attn_config: { alibi: true, qk_ln: true },
          }),
        ),
      ),
    ).toMatch(/attn_config\.qk_ln true is not supported/);
    expect(
      await refusal(variant("c4d", (d) => setConfig(d, { model_type: "gemma", hidden_activation: "relu" }))),
    ).toMatch(/hidden_activation "relu" is not supported/);
    expect(
      await refusal(
        variant("c5", (d) => setConfig(d, { rope_scaling: { rope_type: "longrope", factor: 4 } })),
      ),
    ).toMatch(/rope scaling "longrope" is not supported yet \(supported: linear, yarn, llama3\)/);
    expect(
      await refusal(
        variant("c5b", (d) =>
          setConfig(d, { rope_scaling: { rope_type: "yarn", factor: 4, beta_fast: 16 } }),
        ),
      ),
    ).toMatch(/rope_scaling beta_fast 16 is not supported yet/);
  });

  it("safetensors with lying offsets or shapes", async () => {
    const lie = (
      d: string,
      edit: (h: Record<string, { shape: number[]; data_offsets: number[] }>) => void,
    ) => {
      const path = join(d, "model.safetensors");
      const buf = readFileSync(path);
      const n = Number(buf.readBigUInt64LE(0));
      const header = JSON.parse(buf.subarray(8, 8 + n).toString());
      edit(header);
      let text = JSON.stringify(header);
      text += " ".repeat(Math.max(0, n - text.length));
      expect(text.length).toBe(n);
      buf.write(text, 8, "utf8");
      writeFileSync(path, buf);
    };
    const q = "model.layers.0.self_attn.q_proj.weight";
    expect(await refusal(variant("s1", (d) => lie(d, (h) => (h[q]!.data_offsets = [0, 1e12]))))).toMatch(
      /byte range/,
    );
    expect(
      await refusal(
        variant("s2", (d) =>
          lie(d, (h) => {
            h[q]!.shape = [32, 128];
          }),
        ),
      ),
    ).toMatch(/q_proj.weight has shape \[32, 128\], expected \[64, 64\]/);
  });

  it("a shard index pointing outside the directory, or at a file that lacks the tensor", async () => {
    const index = (d: string, file: string) => {
      const st = SafetensorsFile.open(join(d, "model.safetensors"));
      const map = Object.fromEntries(st.tensors.map((t) => [t.name, "model.safetensors"]));
      st.close();
      map["model.norm.weight"] = file;
      writeFileSync(
        join(d, "model.safetensors.index.json"),
        JSON.stringify({ metadata: {}, weight_map: map }),
      );
    };
    expect(await refusal(variant("i1", (d) => index(d, "../hf-good/model.safetensors")))).toMatch(
      /not a .safetensors file of the directory/,
    );
    expect(await refusal(variant("i2", (d) => index(d, "/etc/passwd")))).toMatch(
      /not a .safetensors file of the directory/,
    );
    expect(
      await refusal(
        variant("i3", (d) => {
          index(d, "other.safetensors");
          writeSafetensors(join(d, "other.safetensors"), [
            { name: "x", shape: [1], data: new Float32Array(1) },
          ]);
        }),
      ),
    ).toMatch(/no place in a llama model|does not hold it/);
  });

  it("a tokenizer.json with ids past its vocabulary, or a pre-tokenizer it does not know", async () => {
    const editTokenizer = (
      d: string,
      edit: (t: { model: { vocab: Record<string, number> }; pre_tokenizer: unknown }) => void,
    ) => {
      const t = JSON.parse(readFileSync(join(d, "tokenizer.json"), "utf8"));
      edit(t);
      writeFileSync(join(d, "tokenizer.json"), JSON.stringify(t));
    };
    expect(
      await refusal(
        variant("k1", (d) =>
          editTokenizer(d, (t) => {
            t.model.vocab["\u2581zzz"] = 1e6;
          }),
        ),
      ),
    ).toMatch(/token ids are not 0\.\.\d+/);
    // A byte-level directory whose split regex is not one of the known families.
    const bpe = join(dir, "hf-bpe-hostile");
    convertGgufToHf(bpePath(), bpe);
    editTokenizer(bpe, (t) => {
      (t.pre_tokenizer as { pretokenizers: { pattern: { Regex: string } }[] })
        .pretokenizers[0]!.pattern.Regex = "\\w+";
    });
    expect(await refusal(bpe)).toMatch(/the pre-tokenizer is not one convert knows/);
  });

  it("a GGUF whose pre-tokenizer has no tokenizer.json form stops before writing weights", () => {
    const src = join(dir, "starcoder-pre.gguf");
    const d = byteLevelVocab();
    writeModel(src, { ...d, pre: "starcoder" });
    const out = join(dir, "hf-starcoder");
    expect(() => convertGgufToHf(src, out)).toThrow(/tokenizer.ggml.pre "starcoder"/);
    expect(existsSync(out)).toBe(false);
  });

  it("a missing tokenizer, or tensors it cannot place", async () => {
    expect(await refusal(variant("t1", (d) => rmSync(join(d, "tokenizer.json"))))).toMatch(
      /tokenizer.json and tokenizer.model are both missing/,
    );
    expect(
      await refusal(
        variant("t2", (d) => {
          const st = SafetensorsFile.open(join(d, "model.safetensors"));
          const all = st.tensors.map((t) => ({ name: t.name, shape: t.shape, data: st.readFloat32(t.name) }));
          st.close();
          all.push({ name: "model.layers.0.self_attn.q_proj.bias", shape: [64], data: new Float32Array(64) });
          writeSafetensors(join(d, "model.safetensors"), all);
        }),
      ),
    ).toMatch(/q_proj.bias has no place/);
  });
});
