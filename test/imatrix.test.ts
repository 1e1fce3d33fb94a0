// Importance matrices: collected from a forward pass and checked against the plain float64
// reference model; written in llama.cpp's GGUF format (read back here and by ggml's own GGUF
// reader through koffi); llama.cpp's files (GGUF, legacy .dat) read; quantize --imatrix.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import koffi from "koffi";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { collectImatrix } from "../src/eval/imatrix-collect.js";
import { GGMLType } from "../src/formats/ggml-types.js";
import { GgufWriter, readGgufHeader } from "../src/formats/gguf.js";
import { Model } from "../src/model/model.js";
import { type Imatrix, imatrixWeights, readImatrix, writeImatrix } from "../src/quant/imatrix.js";
import { llamaLossRef } from "../src/train/reference.js";
import { ensureBuilt, expectOk, ROOT, runCli } from "./helpers/cli.js";
import { type TinyLlama, writeTinyLlama } from "./helpers/tiny-llama.js";

const CTX = 32;
let dir: string;
let tiny: TinyLlama;
let text: string;
let textFile: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "sh-imatrix-"));
  tiny = writeTinyLlama(join(dir, "tiny.gguf"), {
    dim: 64,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    ffn: 128,
    seed: 7,
    weightScale: 0.15,
  });
  text = readFileSync(join(ROOT, "test", "fixtures", "tinyshakespeare.txt"), "utf8").slice(0, 800);
  textFile = join(dir, "calibration.txt");
  writeFileSync(textFile, text);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The sums of squared inputs of every block matrix over `chunks` chunks, by the float64 reference. */
function referenceSums(tokens: number[], chunks: number): Map<string, Float64Array> {
  const weights = new Map([...tiny.tensors].map(([name, t]) => [name, t.data]));
  const shape = {
    dim: tiny.dim,
    layers: tiny.layers,
    heads: tiny.heads,
    kvHeads: tiny.kvHeads,
    headDim: tiny.headDim,
    ffn: tiny.ffn,
    vocab: tiny.tokens.length,
    normEps: tiny.normEps,
    rope: { dim: tiny.headDim, freqBase: tiny.ropeFreqBase, freqScale: 1 },
  };
  const sums = new Map<string, Float64Array>();
  for (let c = 0; c < chunks; c++) {
    const chunk = tokens.slice(c * CTX, (c + 1) * CTX);
    chunk[0] = tiny.bos;
    const batch = {
      tokens: chunk,
      targets: chunk.map((_, i) => chunk[i + 1] ?? -1),
      positions: chunk.map((_, i) => i),
      segStart: chunk.map(() => 0),
    };
    llamaLossRef(shape, weights, batch, (name, x, w, rows, cols, n) => {
      const s = sums.get(name) ?? new Float64Array(cols);
      sums.set(name, s);
      for (let t = 0; t < n; t++) for (let j = 0; j < cols; j++) s[j]! += Number(x[t * cols + j]) ** 2;
      const y = new Float64Array(n * rows);
      for (let t = 0; t < n; t++) {
        for (let r = 0; r < rows; r++) {
          let acc = 0;
          for (let j = 0; j < cols; j++) acc += Number(x[t * cols + j]) * Number(w[r * cols + j]);
          y[t * rows + r] = acc;
        }
      }
      return y;
    });
  }
  return sums;
}

const MATRICES = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

describe("collectImatrix", () => {
  it("sums the squared inputs of every block matrix per column, as the reference model computes them", async () => {
    const model = await Model.load(tiny.path, {
      threads: 2,
      contextSize: CTX,
      batchSize: 8,
      logitsAll: true,
    });
    let tokens: number[];
    let result: Awaited<ReturnType<typeof collectImatrix>>;
    try {
      tokens = model.tokenize(text);
      result = await collectImatrix(model, text, { ctx: CTX, chunks: 3, dataset: "calibration.txt" });
    } finally {
      await model.dispose();
    }
    const { imatrix } = result;
    const names = [0, 1].flatMap((l) => MATRICES.map((m) => `blk.${l}.${m}.weight`));
    expect([...imatrix.entries.keys()].sort()).toEqual(names.sort());
    expect(imatrix.chunkCount).toBe(3);
    expect(imatrix.chunkSize).toBe(CTX);
    expect(imatrix.datasets).toEqual(["calibration.txt"]);
    const ref = referenceSums(tokens, 3);
    for (const name of names) {
      const e = imatrix.entries.get(name)!;
      expect(e.counts, name).toEqual([3 * CTX]);
      const r = ref.get(name)!;
      expect(e.sums.length, name).toBe(r.length);
      for (let j = 0; j < r.length; j++) {
        expect(Math.abs(e.sums[j]! - r[j]!), `${name}[${j}]`).toBeLessThanOrEqual(1e-4 * r[j]! + 1e-6);
      }
    }
    // q, k and v read the same input.
    expect(imatrix.entries.get("blk.1.attn_k.weight")!.sums).toEqual(
      imatrix.entries.get("blk.1.attn_q.weight")!.sums,
    );
    // The perplexity measured on the way is the one perplexity() gives.
    expect(result.perplexity.chunks).toBe(3);
    expect(result.perplexity.ppl).toBeGreaterThan(1);
  });

  it("collects output.weight too with processOutput, and nothing changes the model's results", async () => {
    const a = await collectImatrix(tiny.path, text, { ctx: CTX, chunks: 2, processOutput: true, threads: 1 });
    const out = a.imatrix.entries.get("output.weight")!;
    expect(out.counts).toEqual([2 * CTX]);
    expect(out.sums.length).toBe(tiny.dim);
    expect(out.sums.every((v) => v > 0)).toBe(true);
    const plain = await collectImatrix(tiny.path, text, { ctx: CTX, chunks: 2, threads: 1 });
    expect(plain.imatrix.entries.has("output.weight")).toBe(false);
    expect(plain.perplexity.ppl).toBe(a.perplexity.ppl);
  });
});

/** ggml's own GGUF reader (libggml-base of node-llama-cpp's llama.cpp build), through koffi. */
function readWithGgml(path: string) {
  const lib = koffi.load(
    join(ROOT, "node_modules", "@node-llama-cpp", "linux-x64", "bins", "linux-x64", "libggml-base.so"),
  );
  koffi.struct("gguf_init_params", { no_alloc: "bool", ctx: "void *" });
  const init = lib.func("void *gguf_init_from_file(const char *fname, gguf_init_params params)");
  const nTensors = lib.func("int64_t gguf_get_n_tensors(void *ctx)");
  const tensorName = lib.func("const char *gguf_get_tensor_name(void *ctx, int64_t id)");
  const findKey = lib.func("int64_t gguf_find_key(void *ctx, const char *key)");
  const getU32 = lib.func("uint32_t gguf_get_val_u32(void *ctx, int64_t id)");
  const getStr = lib.func("const char *gguf_get_val_str(void *ctx, int64_t id)");
  const getArrStr = lib.func("const char *gguf_get_arr_str(void *ctx, int64_t id, size_t i)");
  const getTensor = lib.func("void *ggml_get_tensor(void *ctx, const char *name)");
  const nElements = lib.func("int64_t ggml_nelements(void *tensor)");
  const dataF32 = lib.func("void *ggml_get_data_f32(void *tensor)");
  const ggufFree = lib.func("void gguf_free(void *ctx)");
  const ggmlFree = lib.func("void ggml_free(void *ctx)");
  const slot = koffi.alloc("void *", 1);
  const g = init(path, { no_alloc: false, ctx: slot });
  if (!g) throw new Error(`ggml could not read ${path}`);
  const ctx = koffi.decode(slot, "void *");
  try {
    const names: string[] = [];
    for (let i = 0; i < Number(nTensors(g)); i++) names.push(tensorName(g, i));
    const values = (name: string) => {
      const t = getTensor(ctx, name);
      return Float32Array.from(koffi.decode(dataF32(t), "float", Number(nElements(t))) as number[]);
    };
    return {
      names,
      type: getStr(g, findKey(g, "general.type")) as string,
      dataset: getArrStr(g, findKey(g, "imatrix.datasets"), 0) as string,
      chunkCount: getU32(g, findKey(g, "imatrix.chunk_count")) as number,
      chunkSize: getU32(g, findKey(g, "imatrix.chunk_size")) as number,
      values: new Map(names.map((n) => [n, values(n)])),
    };
  } finally {
    ggufFree(g);
    ggmlFree(ctx);
  }
}

function sampleImatrix(): Imatrix {
  return {
    entries: new Map([
      ["blk.0.ffn_down.weight", { sums: Float32Array.from([4, 8, 12, 16]), counts: [4] }],
      ["blk.0.attn_q.weight", { sums: Float32Array.from([1, 2]), counts: [2] }],
    ]),
    datasets: ["calibration.txt"],
    chunkCount: 2,
    chunkSize: 2,
    legacy: false,
  };
}

describe("imatrix files", () => {
  it("writes llama.cpp's GGUF layout, which reads back here and in ggml's own reader", () => {
    const path = join(dir, "written.gguf");
    writeImatrix(path, sampleImatrix());
    const h = readGgufHeader(path);
    expect(h.getString("general.type")).toBe("imatrix");
    expect(h.getStringArray("imatrix.datasets")).toEqual(["calibration.txt"]);
    expect(h.tensors.map((t) => [t.name, t.dims, t.type])).toEqual([
      ["blk.0.attn_q.weight.in_sum2", [2, 1], GGMLType.F32],
      ["blk.0.attn_q.weight.counts", [1, 1], GGMLType.F32],
      ["blk.0.ffn_down.weight.in_sum2", [4, 1], GGMLType.F32],
      ["blk.0.ffn_down.weight.counts", [1, 1], GGMLType.F32],
    ]);
    const back = readImatrix(path);
    expect(back).toEqual(sampleImatrix());

    const g = readWithGgml(path);
    expect(g.type).toBe("imatrix");
    expect(g.dataset).toBe("calibration.txt");
    expect([g.chunkCount, g.chunkSize]).toEqual([2, 2]);
    expect(g.values.get("blk.0.ffn_down.weight.in_sum2")).toEqual(Float32Array.from([4, 8, 12, 16]));
    expect(g.values.get("blk.0.ffn_down.weight.counts")).toEqual(Float32Array.from([4]));
  });

  it("reads llama.cpp's files: GGUF (with the newer in_sum tensors) and legacy .dat", () => {
    const tensors = [{ name: "blk.0.attn_q.weight", dims: [4, 8] }];
    // As llama-imatrix writes it, with the plain sums newer versions add.
    const gguf = join(dir, "llama.gguf");
    const w = new GgufWriter();
    w.setString("general.type", "imatrix");
    w.setStringArray("imatrix.datasets", ["wiki.train.raw"]);
    w.setU32("imatrix.chunk_count", 10);
    w.setU32("imatrix.chunk_size", 512);
    const f32 = (v: number[]) => new Uint8Array(Float32Array.from(v).buffer);
    w.addTensor("blk.0.attn_q.weight.in_sum", [4, 1], GGMLType.F32, f32([1, -1, 2, 0]));
    w.addTensor("blk.0.attn_q.weight.in_sum2", [4, 1], GGMLType.F32, f32([5120, 10240, 0, 2560]));
    w.addTensor("blk.0.attn_q.weight.counts", [1, 1], GGMLType.F32, f32([5120]));
    w.write(gguf);
    const g = readImatrix(gguf);
    expect(g.chunkCount).toBe(10);
    expect(g.datasets).toEqual(["wiki.train.raw"]);
    expect(imatrixWeights(g, tensors, gguf).get("blk.0.attn_q.weight")).toEqual(
      Float32Array.from([1, 2, 0, 0.5]),
    );

    // The legacy file stores mean squares times the chunk count (ncall), then the chunk count and dataset.
    const dat = join(dir, "llama.dat");
    const name = Buffer.from("blk.0.attn_q.weight");
    const parts = [
      i32(1),
      i32(name.length),
      name,
      i32(10),
      i32(4),
      Buffer.from(Float32Array.from([10, 20, 0, 5]).buffer),
      i32(10),
      i32(14),
      Buffer.from("wiki.train.raw"),
    ];
    writeFileSync(dat, Buffer.concat(parts));
    const d = readImatrix(dat);
    expect(d.legacy).toBe(true);
    expect(d.chunkCount).toBe(10);
    expect(d.datasets).toEqual(["wiki.train.raw"]);
    expect(imatrixWeights(d, tensors, dat).get("blk.0.attn_q.weight")).toEqual(
      Float32Array.from([1, 2, 0, 0.5]),
    );
    // Without the optional tail it reads the same.
    writeFileSync(dat, Buffer.concat(parts.slice(0, 6)));
    expect(imatrixWeights(readImatrix(dat), tensors, dat)).toEqual(imatrixWeights(d, tensors, dat));
  });

  it("refuses broken and foreign files in one line", () => {
    const bad = (bytes: Buffer | Uint8Array, message: RegExp) => {
      const path = join(dir, "bad.imatrix");
      writeFileSync(path, bytes);
      expect(() => readImatrix(path)).toThrow(message);
    };
    const name = Buffer.from("blk.0.attn_q.weight");
    bad(Buffer.concat([i32(1), i32(name.length), name, i32(1)]), /ends in entry/);
    bad(Buffer.concat([i32(1), i32(1 << 30), Buffer.alloc(16)]), /name of 1073741824 bytes/);
    bad(Buffer.concat([i32(-3)]), /entry count -3/);
    bad(
      Buffer.concat([
        i32(1),
        i32(name.length),
        name,
        i32(1),
        i32(1),
        Buffer.from(Float32Array.from([Number.NaN]).buffer),
      ]),
      /non-finite/,
    );
    const gguf = (build: (w: GgufWriter) => void) => {
      const w = new GgufWriter();
      w.setString("general.type", "imatrix");
      build(w);
      const path = join(dir, "bad.gguf");
      w.write(path);
      return path;
    };
    const one = new Uint8Array(Float32Array.from([1]).buffer);
    expect(() => readImatrix(gguf((w) => w.addTensor("a.in_sum2", [1, 1], GGMLType.F32, one)))).toThrow(
      /"a" has no \.counts tensor/,
    );
    expect(() =>
      readImatrix(
        gguf((w) => {
          w.addTensor("a.in_sum2", [1, 1], GGMLType.F32, one);
          w.addTensor("a.counts", [1, 1], GGMLType.I32, one);
        }),
      ),
    ).toThrow(/a\.counts" is i32, expected f32/);
    // A model is a GGUF file, but not an imatrix.
    expect(() => readImatrix(tiny.path)).toThrow(/not an imatrix file: no \.in_sum2 tensors/);

    const im = sampleImatrix();
    expect(() => imatrixWeights(im, [{ name: "blk.0.attn_q.weight", dims: [64, 64] }], "im.gguf")).toThrow(
      /im\.gguf: entry "blk\.0\.attn_q\.weight" has 2 values, the tensor has 64 columns/,
    );
    expect(() => imatrixWeights(im, [{ name: "output.weight", dims: [2, 9] }], "im.gguf")).toThrow(
      /no entry names a tensor of the model/,
    );
  });
});

function i32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return b;
}

describe("smallhammer imatrix and quantize --imatrix", () => {
  beforeAll(() => ensureBuilt());

  it("writes an imatrix file that quantize --imatrix uses; refuses to replace it without --force", async () => {
    const out = join(dir, "cli-imatrix.gguf");
    const args = ["imatrix", "-m", tiny.path, "-f", textFile, "-o", out, "-c", String(CTX), "--chunks", "2"];
    const r = await runCli([...args, "--json", "-t", "1"]);
    expectOk(r);
    const summary = JSON.parse(r.stdout);
    expect(summary).toMatchObject({ out, entries: 14, chunks: 2, chunkSize: CTX, tokens: 2 * CTX });
    const im = readImatrix(out);
    const lib = await collectImatrix(tiny.path, text, { ctx: CTX, chunks: 2, threads: 1, dataset: textFile });
    expect(im).toEqual(lib.imatrix);

    const again = await runCli(args);
    expect(again.status).toBe(2);
    expect(again.stderr).toMatch(/exists/);

    const plain = join(dir, "q4_0.gguf");
    const weighted = join(dir, "q4_0-imatrix.gguf");
    expectOk(await runCli(["quantize", tiny.path, plain, "--type", "q4_0"]));
    expectOk(await runCli(["quantize", tiny.path, weighted, "--type", "q4_0", "--imatrix", out]));
    // The weighted quantizer chooses other scales for the matrices the imatrix covers.
    expect(readFileSync(weighted).equals(readFileSync(plain))).toBe(false);

    // An imatrix of another model is refused in one line.
    const other = join(dir, "other.gguf");
    writeTinyLlama(other, { dim: 32, layers: 2, heads: 4, ffn: 64, seed: 1 });
    const refused = await runCli([
      "quantize",
      other,
      join(dir, "x.gguf"),
      "--type",
      "q4_0",
      "--imatrix",
      out,
    ]);
    expect(refused.status).toBe(2);
    expect(refused.stderr.trim().split("\n")).toHaveLength(1);
    expect(refused.stderr).toMatch(/has 64 values, the tensor has 32 columns/);
  });
});
