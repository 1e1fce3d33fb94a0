import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Token } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UserError } from "../src/errors.js";
import {
  GGML_TYPES,
  GGMLType,
  ggmlTypeInfo,
  ggmlTypeName,
  parseGgmlTypeName,
  tensorBytes,
} from "../src/formats/ggml-types.js";
import {
  type GgufArray,
  GgufFile,
  type GgufHeader,
  GgufValueType,
  GgufWriter,
  readGgufHeader,
  readTensorInto,
} from "../src/formats/gguf.js";
import { Rng } from "../src/util/random.js";
import { GgufBytes, randomMetadataGguf } from "./helpers/gguf-bytes.js";
import { DEFAULT_PIECES, writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "smallhammer-gguf-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function randomBytes(rng: Rng, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.nextU32() & 0xff;
  return out;
}

/** Runs fn and returns the UserError it throws (failing the test for anything else). */
function userError(fn: () => unknown): UserError {
  try {
    fn();
  } catch (e) {
    if (e instanceof UserError) return e;
    throw new Error(`expected a UserError, got ${String(e)}`);
  }
  throw new Error("expected a UserError, nothing was thrown");
}

// ---------------------------------------------------------------------------------------------

describe("ggml type table", () => {
  it("has the real ids, block sizes and sizes", () => {
    expect(GGMLType.F32).toBe(0);
    expect(GGMLType.Q4_0).toBe(2);
    expect(GGMLType.Q5_0).toBe(6);
    expect(GGMLType.Q8_0).toBe(8);
    expect(GGMLType.Q4_K).toBe(12);
    expect(GGMLType.Q6_K).toBe(14);
    expect(GGMLType.BF16).toBe(30);
    const sizes: [GGMLType, number, number][] = [
      [GGMLType.F32, 1, 4],
      [GGMLType.F16, 1, 2],
      [GGMLType.BF16, 1, 2],
      [GGMLType.Q4_0, 32, 18],
      [GGMLType.Q4_1, 32, 20],
      [GGMLType.Q5_0, 32, 22],
      [GGMLType.Q5_1, 32, 24],
      [GGMLType.Q8_0, 32, 34],
      [GGMLType.Q2_K, 256, 84],
      [GGMLType.Q3_K, 256, 110],
      [GGMLType.Q4_K, 256, 144],
      [GGMLType.Q5_K, 256, 176],
      [GGMLType.Q6_K, 256, 210],
      [GGMLType.Q8_K, 256, 292],
    ];
    for (const [type, block, bytes] of sizes) {
      expect(ggmlTypeInfo(type)).toMatchObject({ blockSize: block, typeSize: bytes });
    }
    const supported = GGML_TYPES.filter((t) => t.supported).map((t) => t.name);
    expect(supported.sort()).toEqual(
      [
        "f32",
        "f16",
        "bf16",
        "q8_0",
        "q4_0",
        "q4_1",
        "q5_0",
        "q5_1",
        "q2_K",
        "q3_K",
        "q4_K",
        "q5_K",
        "q6_K",
      ].sort(),
    );
  });

  it("names, parses and sizes tensors", () => {
    expect(ggmlTypeName(GGMLType.Q4_K)).toBe("q4_K");
    expect(ggmlTypeName(4)).toContain("removed");
    expect(ggmlTypeName(99)).toBe("type 99");
    expect(parseGgmlTypeName("q4_0")).toBe(GGMLType.Q4_0);
    expect(parseGgmlTypeName("Q4_K")).toBe(GGMLType.Q4_K);
    expect(parseGgmlTypeName("BF16")).toBe(GGMLType.BF16);
    expect(userError(() => parseGgmlTypeName("q4_z")).message).toContain('"q4_z"');
    expect(tensorBytes(GGMLType.F32, [4096, 32000])).toBe(4096 * 32000 * 4);
    expect(tensorBytes(GGMLType.Q4_0, [4096, 4096])).toBe((4096 / 32) * 18 * 4096);
    expect(tensorBytes(GGMLType.Q6_K, [256, 3, 2])).toBe(210 * 6);
    expect(() => tensorBytes(GGMLType.Q4_K, [128, 2])).toThrow(RangeError);
  });
});

describe("Rng", () => {
  it("is deterministic per seed and in range", () => {
    const a = new Rng(42);
    const b = new Rng(42);
    const c = new Rng(43);
    const xs = Array.from({ length: 8 }, () => a.nextU32());
    expect(Array.from({ length: 8 }, () => b.nextU32())).toEqual(xs);
    expect(Array.from({ length: 8 }, () => c.nextU32())).not.toEqual(xs);
    let sum = 0;
    let sq = 0;
    let inRange = true;
    const counts = new Array(7).fill(0);
    const n = 20000;
    for (let i = 0; i < n; i++) {
      const f = a.nextFloat();
      inRange &&= f >= 0 && f < 1;
      counts[a.nextInt(7)]++;
      const z = a.nextNormal();
      sum += z;
      sq += z * z;
    }
    expect(inRange).toBe(true);
    expect(counts.reduce((x, y) => x + y)).toBe(n);
    for (const c of counts) expect(Math.abs(c / n - 1 / 7)).toBeLessThan(0.02);
    expect(Math.abs(sum / n)).toBeLessThan(0.05);
    expect(Math.abs(sq / n - 1)).toBeLessThan(0.05);
  });
});

// ---------------------------------------------------------------------------------------------

describe("GGUF metadata round trip", () => {
  const big = 2n ** 53n + 1n;
  const nested: GgufArray = {
    elementType: GgufValueType.ARRAY,
    values: [
      { elementType: GgufValueType.INT32, values: Int32Array.of(1, -2, 3) },
      { elementType: GgufValueType.STRING, values: ["x", "yé"] },
      {
        elementType: GgufValueType.ARRAY,
        values: [
          { elementType: GgufValueType.FLOAT32, values: Float32Array.of(0.5) },
          { elementType: GgufValueType.UINT8, values: new Uint8Array(0) },
        ],
      },
      { elementType: GgufValueType.BOOL, values: [] },
    ],
  };

  function build(): GgufWriter {
    const w = new GgufWriter();
    w.setString("general.architecture", "llama");
    w.setU8("t.u8", 255);
    w.setI8("t.i8", -128);
    w.setU16("t.u16", 65535);
    w.setI16("t.i16", -32768);
    w.setU32("t.u32", 4294967295);
    w.setI32("t.i32", -2147483648);
    w.setF32("t.f32", 1.5);
    w.setF64("t.f64", Math.PI);
    w.setBool("t.true", true);
    w.setBool("t.false", false);
    w.setString("t.unicode", "héllo ▁wörld 世界 🎉");
    w.setString("t.empty_string", "");
    w.setU64("t.u64_small", 42n);
    w.setU64("t.u64_big", big);
    w.setU64("t.u64_max", 2n ** 64n - 1n);
    w.setI64("t.i64_min", -(2n ** 63n));
    w.setI64("t.i64_small", -5);
    w.setArray("a.u8", GgufValueType.UINT8, [0, 1, 255]);
    w.setArray("a.i8", GgufValueType.INT8, [-128, 0, 127]);
    w.setArray("a.u16", GgufValueType.UINT16, [0, 65535]);
    w.setArray("a.i16", GgufValueType.INT16, [-32768, 32767]);
    w.setU32Array("a.u32", [0, 4294967295]);
    w.setI32Array("a.i32", Int32Array.of(-1, 2, -3));
    w.setF32Array("a.f32", Float32Array.of(0.25, -1e30, Number.POSITIVE_INFINITY));
    w.setArray("a.f64", GgufValueType.FLOAT64, [Math.E, -0]);
    w.setArray("a.bool", GgufValueType.BOOL, [true, false, true]);
    w.setStringArray("a.string", ["<s>", "▁the", "", "日本"]);
    w.setArray("a.u64", GgufValueType.UINT64, [1, big, 2n ** 64n - 1n]);
    w.setArray("a.i64", GgufValueType.INT64, [-(2n ** 63n), -1, 7n]);
    w.setArray("a.empty_u8", GgufValueType.UINT8, []);
    w.setStringArray("a.empty_string", []);
    w.setArray("a.empty_nested", GgufValueType.ARRAY, []);
    w.set("a.nested", { type: GgufValueType.ARRAY, value: nested });
    return w;
  }

  let path: string;
  let header: GgufHeader;
  beforeAll(() => {
    path = join(dir, "metadata.gguf");
    build().write(path);
    header = readGgufHeader(path);
  });

  it("keeps every value type and the insertion order", () => {
    expect(header.version).toBe(3);
    expect(header.tensors).toHaveLength(0);
    expect([...header.metadata.keys()]).toEqual([...build().metadata.keys()]);
    const m = header.metadata;
    expect(m.get("t.u8")).toEqual({ type: GgufValueType.UINT8, value: 255 });
    expect(m.get("t.i8")).toEqual({ type: GgufValueType.INT8, value: -128 });
    expect(m.get("t.u16")).toEqual({ type: GgufValueType.UINT16, value: 65535 });
    expect(m.get("t.i16")).toEqual({ type: GgufValueType.INT16, value: -32768 });
    expect(m.get("t.u32")).toEqual({ type: GgufValueType.UINT32, value: 4294967295 });
    expect(m.get("t.i32")).toEqual({ type: GgufValueType.INT32, value: -2147483648 });
    expect(m.get("t.f32")).toEqual({ type: GgufValueType.FLOAT32, value: 1.5 });
    expect(m.get("t.f64")).toEqual({ type: GgufValueType.FLOAT64, value: Math.PI });
    expect(m.get("t.true")).toEqual({ type: GgufValueType.BOOL, value: true });
    expect(m.get("t.false")).toEqual({ type: GgufValueType.BOOL, value: false });
    expect(m.get("t.unicode")).toEqual({ type: GgufValueType.STRING, value: "héllo ▁wörld 世界 🎉" });
    expect(m.get("t.empty_string")).toEqual({ type: GgufValueType.STRING, value: "" });
    expect(m.get("t.u64_small")).toEqual({ type: GgufValueType.UINT64, value: 42 });
    expect(m.get("t.u64_big")).toEqual({ type: GgufValueType.UINT64, value: big });
    expect(m.get("t.u64_max")).toEqual({ type: GgufValueType.UINT64, value: 2n ** 64n - 1n });
    expect(m.get("t.i64_min")).toEqual({ type: GgufValueType.INT64, value: -(2n ** 63n) });
    expect(m.get("t.i64_small")).toEqual({ type: GgufValueType.INT64, value: -5 });
  });

  it("keeps arrays typed, including empty and nested arrays", () => {
    const arr = (key: string) => header.getArray(key);
    expect(arr("a.u8")).toEqual({ elementType: GgufValueType.UINT8, values: Uint8Array.of(0, 1, 255) });
    expect(arr("a.i8")).toEqual({ elementType: GgufValueType.INT8, values: Int8Array.of(-128, 0, 127) });
    expect(arr("a.u16")).toEqual({ elementType: GgufValueType.UINT16, values: Uint16Array.of(0, 65535) });
    expect(arr("a.i16")).toEqual({ elementType: GgufValueType.INT16, values: Int16Array.of(-32768, 32767) });
    expect(arr("a.u32")).toEqual({
      elementType: GgufValueType.UINT32,
      values: Uint32Array.of(0, 4294967295),
    });
    expect(arr("a.i32")).toEqual({ elementType: GgufValueType.INT32, values: Int32Array.of(-1, 2, -3) });
    expect(arr("a.f32").values).toBeInstanceOf(Float32Array);
    expect([...(arr("a.f32").values as Float32Array)]).toEqual([
      0.25,
      Math.fround(-1e30),
      Number.POSITIVE_INFINITY,
    ]);
    expect(arr("a.f64")).toEqual({ elementType: GgufValueType.FLOAT64, values: Float64Array.of(Math.E, -0) });
    expect(arr("a.bool")).toEqual({ elementType: GgufValueType.BOOL, values: [true, false, true] });
    expect(arr("a.string")).toEqual({
      elementType: GgufValueType.STRING,
      values: ["<s>", "▁the", "", "日本"],
    });
    expect(arr("a.u64")).toEqual({ elementType: GgufValueType.UINT64, values: [1, big, 2n ** 64n - 1n] });
    expect(arr("a.i64")).toEqual({ elementType: GgufValueType.INT64, values: [-(2n ** 63n), -1, 7] });
    expect(arr("a.empty_u8")).toEqual({ elementType: GgufValueType.UINT8, values: new Uint8Array(0) });
    expect(arr("a.empty_string")).toEqual({ elementType: GgufValueType.STRING, values: [] });
    expect(arr("a.empty_nested")).toEqual({ elementType: GgufValueType.ARRAY, values: [] });
    expect(arr("a.nested")).toEqual(nested);
  });

  it("rewrites byte-identically through copyMetadataFrom", () => {
    const copy = join(dir, "metadata-copy.gguf");
    new GgufWriter().copyMetadataFrom(header).write(copy);
    expect(Buffer.compare(readFileSync(copy), readFileSync(path))).toBe(0);
  });

  it("has typed getters with defaults and errors naming file and key", () => {
    expect(header.getString("general.architecture")).toBe("llama");
    expect(header.getNumber("t.u32")).toBe(4294967295);
    expect(header.getNumber("t.f32")).toBe(1.5);
    expect(header.getNumber("t.u64_small")).toBe(42);
    expect(header.getBool("t.true")).toBe(true);
    expect(header.getStringArray("a.string")).toEqual(["<s>", "▁the", "", "日本"]);
    expect(header.getNumberArray("a.f32")).toBeInstanceOf(Float32Array);
    expect(header.getNumberArray("missing.key", [3])).toEqual([3]);
    expect(header.getString("missing.key", "fallback")).toBe("fallback");
    expect(header.getNumber("missing.key", 7)).toBe(7);
    expect(header.getBool("missing.key", false)).toBe(false);
    const errors = [
      userError(() => header.getString("missing.key")),
      userError(() => header.getString("t.u32")),
      userError(() => header.getNumber("general.architecture")),
      userError(() => header.getNumber("t.u64_big")),
      userError(() => header.getNumber("a.u8")),
      userError(() => header.getBool("t.u8")),
      userError(() => header.getArray("t.u8")),
      userError(() => header.getStringArray("a.u8")),
      userError(() => header.getNumberArray("a.string")),
      userError(() => header.getNumberArray("a.u64")),
    ];
    for (const e of errors) {
      expect(e.message).toContain(path);
      expect(e.message).not.toContain("\n");
    }
    expect(errors[1]!.message).toContain('"t.u32"');
  });

  it("is read the same way by node-llama-cpp's GGUF parser", async () => {
    const { readGgufFileInfo } = await import("node-llama-cpp");
    const info = await readGgufFileInfo(path);
    const raw = info.metadata as unknown as Record<string, Record<string, unknown>>;
    expect(raw["general"]!["architecture"]).toBe("llama");
    expect(raw["t"]!["unicode"]).toBe("héllo ▁wörld 世界 🎉");
    expect(raw["t"]!["i32"]).toBe(-2147483648);
    expect(raw["a"]!["string"]).toEqual(["<s>", "▁the", "", "日本"]);
    expect(Number(raw["t"]!["u64_small"])).toBe(42);
  });

  it("rejects bad values in the writer", () => {
    const w = new GgufWriter();
    expect(() => w.setU8("k", 256)).toThrow(RangeError);
    expect(() => w.setI32("k", 1.5)).toThrow(RangeError);
    expect(() => w.setU64("k", -1)).toThrow(RangeError);
    expect(() => w.setU64("k", 2n ** 64n)).toThrow(RangeError);
    expect(() => w.setArray("k", GgufValueType.UINT16, [70000])).toThrow(RangeError);
    expect(() => w.setString("", "x")).toThrow(RangeError);
  });
});

// ---------------------------------------------------------------------------------------------

describe("GGUF tensors", () => {
  const specs: { name: string; dims: number[]; type: GGMLType }[] = [
    { name: "f32.weight", dims: [7, 3], type: GGMLType.F32 },
    { name: "f16.weight", dims: [5], type: GGMLType.F16 },
    { name: "bf16.weight", dims: [3, 2, 2], type: GGMLType.BF16 },
    { name: "q8_0.weight", dims: [64, 3], type: GGMLType.Q8_0 },
    { name: "q4_0.weight", dims: [32, 1, 2, 2], type: GGMLType.Q4_0 },
    { name: "q5_1.weight", dims: [96, 1], type: GGMLType.Q5_1 },
    { name: "q4_K.weight", dims: [256, 2], type: GGMLType.Q4_K },
    { name: "q6_K.weight", dims: [512], type: GGMLType.Q6_K },
  ];

  function writeTensors(path: string, alignment?: number, lazy = false): Map<string, Uint8Array> {
    const rng = new Rng(7);
    const w = new GgufWriter();
    w.setString("general.architecture", "test");
    if (alignment !== undefined) w.setU32("general.alignment", alignment);
    const datas = new Map<string, Uint8Array>();
    for (const s of specs) {
      const data = randomBytes(rng, tensorBytes(s.type, s.dims));
      datas.set(s.name, data);
      w.addTensor(s.name, s.dims, s.type, lazy ? (target) => target.set(data) : data);
    }
    w.write(path);
    return datas;
  }

  function checkFile(path: string, datas: Map<string, Uint8Array>, alignment: number) {
    const file = GgufFile.open(path);
    try {
      const h = file.header;
      expect(h.alignment).toBe(alignment);
      expect(h.dataOffset % alignment).toBe(0);
      expect(h.tensors.map((t) => t.name)).toEqual(specs.map((s) => s.name));
      let expectedOffset = 0;
      for (const [i, t] of h.tensors.entries()) {
        expect(t.dims).toEqual(specs[i]!.dims);
        expect(t.type).toBe(specs[i]!.type);
        expect(t.byteSize).toBe(tensorBytes(t.type, t.dims));
        // ggml requires tensors packed in order, each padded to the alignment
        expect(t.offset).toBe(expectedOffset);
        expectedOffset += Math.ceil(t.byteSize / alignment) * alignment;
        expect(t.fileOffset).toBe(h.dataOffset + t.offset);
        expect(t.fileOffset % alignment).toBe(0);
        expect(file.readTensor(t)).toEqual(datas.get(t.name));
      }
      expect(h.fileSize).toBe(h.dataOffset + expectedOffset);
      // padding bytes are zero
      const bytes = readFileSync(path);
      for (const t of h.tensors) {
        const end = t.fileOffset + t.byteSize;
        const padEnd = Math.ceil(end / alignment) * alignment;
        expect(bytes.subarray(end, padEnd).every((b) => b === 0)).toBe(true);
      }
    } finally {
      file.close();
    }
  }

  it("writes and reads tensors of several types at the default alignment 32", () => {
    const path = join(dir, "tensors.gguf");
    checkFile(path, writeTensors(path), 32);
  });

  it("honours a custom general.alignment", () => {
    for (const alignment of [8, 64, 256]) {
      const path = join(dir, `tensors-align${alignment}.gguf`);
      checkFile(path, writeTensors(path, alignment), alignment);
    }
  });

  it("writes lazy tensor sources identically", () => {
    const a = join(dir, "eager.gguf");
    const b = join(dir, "lazy.gguf");
    writeTensors(a);
    writeTensors(b, undefined, true);
    expect(Buffer.compare(readFileSync(a), readFileSync(b))).toBe(0);
  });

  it("reads a tensor straight into shared WebAssembly memory", () => {
    const path = join(dir, "wasm.gguf");
    const datas = writeTensors(path);
    const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    const file = GgufFile.open(path);
    try {
      const t = file.header.tensor("q6_K.weight")!;
      const view = new Uint8Array(memory.buffer, 1024, t.byteSize);
      readTensorInto(file.fd, t, view);
      expect(new Uint8Array(view)).toEqual(datas.get("q6_K.weight"));
      expect(() => readTensorInto(file.fd, t, new Uint8Array(t.byteSize + 1))).toThrow(RangeError);
    } finally {
      file.close();
    }
  });

  it("streams a tensor larger than one read chunk", () => {
    const path = join(dir, "big.gguf");
    const rng = new Rng(3);
    const data = randomBytes(rng, (9 << 20) + 36);
    const dims = [data.length / 4];
    new GgufWriter().addTensor("big", dims, GGMLType.F32, data).write(path);
    const file = GgufFile.open(path);
    try {
      // (toEqual on megabytes is slow; compare natively)
      expect(Buffer.compare(file.readTensor("big"), data)).toBe(0);
    } finally {
      file.close();
    }
  });

  it("leaves no output and no temporary file when writing fails", () => {
    const path = join(dir, "failed.gguf");
    const w = new GgufWriter();
    w.addTensor("ok", [4], GGMLType.F32, new Uint8Array(16));
    w.addTensor("bad", [4], GGMLType.F32, () => {
      throw new Error("source failed");
    });
    expect(() => w.write(path)).toThrow("source failed");
    expect(existsSync(path)).toBe(false);
    expect(readdirSync(dir).filter((f) => f.startsWith("failed.gguf"))).toEqual([]);
    const e = userError(() => new GgufWriter().write(join(dir, "no-such-dir", "x.gguf")));
    expect(e.message).toContain("no-such-dir");
  });

  it("rejects bad tensors in the writer", () => {
    const w = new GgufWriter();
    w.addTensor("a", [32], GGMLType.Q8_0, new Uint8Array(34));
    expect(userError(() => w.addTensor("a", [32], GGMLType.Q8_0, new Uint8Array(34))).message).toContain(
      '"a"',
    );
    userError(() => w.addTensor("b", [16], GGMLType.Q4_0, new Uint8Array(9)));
    userError(() => w.addTensor("c", [1, 2, 3, 4, 5], GGMLType.F32, new Uint8Array(480)));
    userError(() => w.addTensor("d", [0], GGMLType.F32, new Uint8Array(0)));
    userError(() => w.addTensor("x".repeat(64), [1], GGMLType.F32, new Uint8Array(4)));
    userError(() => w.addTensor("e", [1], 4 as GGMLType, new Uint8Array(4)));
    expect(() => w.addTensor("f", [4], GGMLType.F32, new Uint8Array(4))).toThrow(RangeError);
    w.setU32("general.alignment", 48);
    expect(() => w.write(join(dir, "bad-align.gguf"))).toThrow(RangeError);
  });
});

// ---------------------------------------------------------------------------------------------

/** Little-endian byte builder for hand-made (mostly malformed) files. */
class Bytes {
  private parts: number[] = [];
  u8(v: number) {
    this.parts.push(v & 0xff);
    return this;
  }
  u32(v: number) {
    for (let i = 0; i < 4; i++) this.parts.push((v >>> (8 * i)) & 0xff);
    return this;
  }
  u64(v: number | bigint) {
    let b = BigInt.asUintN(64, BigInt(v));
    for (let i = 0; i < 8; i++) {
      this.parts.push(Number(b & 0xffn));
      b >>= 8n;
    }
    return this;
  }
  str(s: string) {
    const b = Buffer.from(s, "utf8");
    this.u64(b.length);
    for (const x of b) this.parts.push(x);
    return this;
  }
  header(tensors: number | bigint, kvs: number | bigint, version = 3) {
    return this.u32(0x46554747).u32(version).u64(tensors).u64(kvs);
  }
  kvU32(key: string, v: number) {
    return this.str(key).u32(GgufValueType.UINT32).u32(v);
  }
  tensor(name: string, dims: (number | bigint)[], type: number, offset: number | bigint) {
    this.str(name).u32(dims.length);
    for (const d of dims) this.u64(d);
    return this.u32(type).u64(offset);
  }
  padTo(alignment: number) {
    while (this.parts.length % alignment !== 0) this.parts.push(0);
    return this;
  }
  zeros(n: number) {
    for (let i = 0; i < n; i++) this.parts.push(0);
    return this;
  }
  get length() {
    return this.parts.length;
  }
  bytes() {
    return Uint8Array.from(this.parts);
  }
}

describe("GGUF validation", () => {
  const cases: [string, () => Uint8Array, string][] = [
    ["empty", () => new Uint8Array(0), "too short"],
    ["short", () => new Bytes().u32(0x46554747).u32(3).bytes(), "too short"],
    ["magic", () => new Bytes().u32(0x04034b50).u32(3).u64(0).u64(0).bytes(), "not a GGUF file"],
    ["v1", () => new Bytes().header(0, 0, 1).bytes(), "version 1"],
    ["v4", () => new Bytes().header(0, 0, 4).bytes(), "unknown GGUF version 4"],
    ["v0", () => new Bytes().header(0, 0, 0).bytes(), "unknown GGUF version 0"],
    ["big-endian", () => new Bytes().header(0, 0, 0x03000000).bytes(), "big-endian"],
    [
      "truncated-kv",
      () => new Bytes().header(0, 1).str("general.name").u32(GgufValueType.STRING).bytes(),
      "truncated",
    ],
    [
      "string-past-end",
      () => new Bytes().header(0, 1).u64(1000).u32(0).u32(0).u32(0).bytes(),
      "runs past the end of the file",
    ],
    [
      "huge-string",
      () =>
        new Bytes()
          .header(0, 1)
          .u64(2n ** 64n - 1n)
          .zeros(8)
          .bytes(),
      "runs past the end of the file",
    ],
    [
      "array-past-end",
      () =>
        new Bytes()
          .header(0, 1)
          .str("a")
          .u32(GgufValueType.ARRAY)
          .u32(GgufValueType.UINT32)
          .u64(1000)
          .zeros(8)
          .bytes(),
      "array count 1000 runs past the end",
    ],
    [
      "string-array-past-end",
      () =>
        new Bytes()
          .header(0, 1)
          .str("a")
          .u32(GgufValueType.ARRAY)
          .u32(GgufValueType.STRING)
          .u64(2n ** 62n)
          .bytes(),
      "runs past the end",
    ],
    [
      "absurd-kv-count",
      () =>
        new Bytes()
          .header(0, 2n ** 62n)
          .zeros(16)
          .bytes(),
      "metadata count",
    ],
    [
      "absurd-tensor-count",
      () =>
        new Bytes()
          .header(2n ** 63n, 0)
          .zeros(16)
          .bytes(),
      "tensor count",
    ],
    [
      "unknown-value-type",
      () => new Bytes().header(0, 1).str("k").u32(13).u32(0).bytes(),
      'metadata key "k" has unknown value type 13',
    ],
    [
      "unknown-array-type",
      () => new Bytes().header(0, 1).str("k").u32(GgufValueType.ARRAY).u32(77).u64(0).bytes(),
      "unknown array element type 77",
    ],
    [
      "duplicate-key",
      () => new Bytes().header(0, 2).kvU32("k", 1).kvU32("k", 2).bytes(),
      'duplicate metadata key "k"',
    ],
    ["empty-key", () => new Bytes().header(0, 1).kvU32("", 1).bytes(), "is empty"],
    [
      "deep-nesting",
      () => {
        const b = new Bytes().header(0, 1).str("deep").u32(GgufValueType.ARRAY);
        for (let i = 0; i < 100; i++) b.u32(GgufValueType.ARRAY).u64(1);
        return b.u32(GgufValueType.UINT8).u64(0).bytes();
      },
      "nested deeper",
    ],
    [
      "alignment-not-power-of-two",
      () => new Bytes().header(0, 1).kvU32("general.alignment", 48).bytes(),
      "power of two",
    ],
    ["alignment-zero", () => new Bytes().header(0, 1).kvU32("general.alignment", 0).bytes(), "power of two"],
    [
      "alignment-type",
      () => new Bytes().header(0, 1).str("general.alignment").u32(GgufValueType.STRING).str("32").bytes(),
      "general.alignment must be a u32",
    ],
    [
      "n-dims",
      () => new Bytes().header(1, 0).tensor("t", [1, 1, 1, 1, 1], 0, 0).padTo(32).zeros(32).bytes(),
      "5 dimensions",
    ],
    [
      "dim-zero",
      () => new Bytes().header(1, 0).tensor("t", [4, 0], 0, 0).padTo(32).zeros(32).bytes(),
      "dimension 1 is 0",
    ],
    [
      "dim-negative",
      () => new Bytes().header(1, 0).tensor("t", [-4], 0, 0).padTo(32).zeros(32).bytes(),
      "negative",
    ],
    [
      "element-overflow",
      () =>
        new Bytes()
          .header(1, 0)
          .tensor("t", [2 ** 30, 2 ** 30, 2 ** 30], 0, 0)
          .padTo(32)
          .zeros(32)
          .bytes(),
      "element count overflows",
    ],
    [
      "type-removed",
      () => new Bytes().header(1, 0).tensor("t", [32], 4, 0).padTo(32).zeros(32).bytes(),
      "q4_2",
    ],
    [
      "type-unknown",
      () => new Bytes().header(1, 0).tensor("t", [32], 99, 0).padTo(32).zeros(32).bytes(),
      "type 99",
    ],
    [
      "block-size",
      () => new Bytes().header(1, 0).tensor("t", [16], GGMLType.Q4_0, 0).padTo(32).zeros(32).bytes(),
      "not a multiple of the q4_0 block size",
    ],
    [
      "duplicate-tensor",
      () =>
        new Bytes().header(2, 0).tensor("t", [4], 0, 0).tensor("t", [4], 0, 32).padTo(32).zeros(64).bytes(),
      'duplicate tensor name "t"',
    ],
    [
      "unaligned-offset",
      () => new Bytes().header(1, 0).tensor("t", [4], 0, 4).padTo(32).zeros(64).bytes(),
      "not a multiple of the alignment 32",
    ],
    [
      "data-outside-file",
      () => new Bytes().header(1, 0).tensor("t", [64], 0, 0).padTo(32).zeros(100).bytes(),
      "lies outside the file",
    ],
    [
      "data-offset-outside-file",
      () =>
        new Bytes()
          .header(1, 0)
          .tensor("t", [4], 0, 2n ** 62n)
          .padTo(32)
          .zeros(32)
          .bytes(),
      "lies outside the file",
    ],
    [
      "overlapping-tensors",
      () =>
        new Bytes()
          .header(2, 0)
          .tensor("a", [16], GGMLType.F32, 0)
          .tensor("b", [16], GGMLType.F32, 32)
          .padTo(32)
          .zeros(96)
          .bytes(),
      'tensors "a" (64 bytes at data offset 0) and "b" (at data offset 32) overlap',
    ],
    [
      "overlapping-tensors-out-of-order",
      () =>
        new Bytes()
          .header(3, 0)
          .tensor("c", [8], GGMLType.F32, 64)
          .tensor("a", [4], GGMLType.F32, 0)
          .tensor("b", [32], GGMLType.F32, 32)
          .padTo(32)
          .zeros(192)
          .bytes(),
      'tensors "b" (128 bytes at data offset 32) and "c" (at data offset 64) overlap',
    ],
    [
      "shared-offset",
      () =>
        new Bytes()
          .header(2, 0)
          .tensor("a", [4], GGMLType.F32, 0)
          .tensor("b", [4], GGMLType.F32, 0)
          .padTo(32)
          .zeros(32)
          .bytes(),
      'tensors "a" and "b" share the data offset 0',
    ],
    [
      "tensor-name-too-long",
      () => new Bytes().header(1, 0).tensor("x".repeat(64), [4], 0, 0).padTo(32).zeros(32).bytes(),
      "longer than 63 bytes",
    ],
    [
      "name-with-control-and-bidi-characters",
      () => new Bytes().header(0, 1).str("k\u202e\u001b[2J").u32(13).bytes(),
      'metadata key "k\\u202e\\u001b[2J" has unknown value type 13',
    ],
    [
      "millions-of-empty-arrays",
      () => {
        const b = new GgufBytes().header(0, 1).str("a").u32(GgufValueType.ARRAY).u32(GgufValueType.ARRAY);
        b.u64(100_000);
        for (let i = 0; i < 100_000; i++) b.u32(GgufValueType.UINT8).u64(0);
        return b.bytes();
      },
      'metadata key "a": the header would take over',
    ],
    [
      "a-flood-of-tiny-keys",
      () => {
        const b = new GgufBytes().header(0, 200_000);
        for (let i = 0; i < 200_000; i++) b.str(i.toString(36)).u32(GgufValueType.BOOL).u8(1);
        return b.bytes();
      },
      "metadata count 200000: the header would take over",
    ],
    [
      "a-flood-of-tiny-tensors",
      () => {
        const b = new GgufBytes().header(100_000, 0);
        for (let i = 0; i < 100_000; i++) b.tensorInfo(i.toString(36), [1], GGMLType.F32, 32 * i);
        return b.padTo(32).zeros(3_200_000).bytes();
      },
      "tensor count 100000: the header would take over",
    ],
  ];

  for (const [name, make, expected] of cases) {
    it(`rejects ${name}`, () => {
      const path = join(dir, `invalid-${name}.gguf`);
      writeFileSync(path, make());
      const e = userError(() => readGgufHeader(path));
      expect(e.message).toContain(path);
      expect(e.message).toContain(expected);
      expect(e.message).not.toContain("\n");
    });
  }

  it("accepts the hand-made layout when it is valid (v2 and v3)", () => {
    for (const version of [2, 3]) {
      const path = join(dir, `valid-v${version}.gguf`);
      const b = new Bytes().header(2, 1, version).kvU32("general.alignment", 64);
      b.tensor("a", [4], GGMLType.F32, 0)
        .tensor("b", [32, 2], GGMLType.Q8_0, 64)
        .padTo(64)
        .zeros(64 + 68);
      writeFileSync(path, b.bytes());
      const h = readGgufHeader(path);
      expect(h.version).toBe(version);
      expect(h.alignment).toBe(64);
      expect(h.tensor("b")).toMatchObject({ offset: 64, byteSize: 68, fileOffset: h.dataOffset + 64 });
    }
  });

  it("accepts tensors stored out of order and with gaps, as long as none overlap", () => {
    const path = join(dir, "out-of-order.gguf");
    const b = new Bytes().header(3, 0);
    b.tensor("late", [8], GGMLType.F32, 128).tensor("early", [8], GGMLType.F32, 0);
    b.tensor("middle", [8], GGMLType.F32, 32).padTo(32).zeros(160);
    writeFileSync(path, b.bytes());
    const h = readGgufHeader(path);
    expect(h.tensors.map((t) => [t.name, t.offset])).toEqual([
      ["late", 128],
      ["early", 0],
      ["middle", 32],
    ]);
  });

  it("reads large honest metadata: a vocabulary of 200,000 short tokens with scores", () => {
    const path = join(dir, "vocabulary.gguf");
    const tokens = Array.from({ length: 200_000 }, (_, i) =>
      i % 3 === 0 ? `▁${i.toString(36)}` : i.toString(36),
    );
    const w = new GgufWriter();
    w.setString("general.architecture", "llama");
    w.setStringArray("tokenizer.ggml.tokens", tokens);
    w.setF32Array("tokenizer.ggml.scores", new Float32Array(tokens.length));
    w.setI32Array("tokenizer.ggml.token_type", new Int32Array(tokens.length).fill(1));
    w.write(path);
    const h = readGgufHeader(path);
    expect(h.getStringArray("tokenizer.ggml.tokens")).toEqual(tokens);
  });

  it("names the file when it cannot be opened", () => {
    const path = join(dir, "does-not-exist.gguf");
    expect(userError(() => readGgufHeader(path)).message).toContain(path);
    expect(userError(() => readGgufHeader(dir)).message).toContain("not a regular file");
  });

  it("reports a file truncated inside tensor data while reading", () => {
    const path = join(dir, "shrinks.gguf");
    new GgufWriter().addTensor("t", [64], GGMLType.F32, new Uint8Array(256)).write(path);
    const file = GgufFile.open(path);
    try {
      writeFileSync(path, readFileSync(path).subarray(0, statSync(path).size - 100));
      const e = userError(() => file.readTensor("t"));
      expect(e.message).toContain(path);
      expect(e.message).toContain('"t"');
    } finally {
      file.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------

describe("GGUF reader fuzzing", () => {
  it("either parses or throws UserError for 1500 seeded mutations of a small file", () => {
    const base = join(dir, "fuzz-base.gguf");
    const w = new GgufWriter();
    w.setString("general.architecture", "llama");
    w.setU32("llama.context_length", 128);
    w.setF32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    w.setBool("tokenizer.ggml.add_bos_token", true);
    w.setU64("big", 2n ** 60n);
    w.setStringArray("tokenizer.ggml.tokens", [
      "<unk>",
      "<s>",
      "</s>",
      "▁a",
      "b",
      "é",
      ...DEFAULT_PIECES.slice(0, 20),
    ]);
    w.setF32Array("tokenizer.ggml.scores", new Float32Array(26).fill(-1));
    w.setI32Array("tokenizer.ggml.token_type", new Int32Array(26).fill(1));
    w.setArray("nested", GgufValueType.ARRAY, [
      { elementType: GgufValueType.UINT16, values: Uint16Array.of(1, 2) },
      { elementType: GgufValueType.STRING, values: ["x"] },
    ]);
    const rng = new Rng(1234);
    w.addTensor("token_embd.weight", [8, 4], GGMLType.F32, randomBytes(rng, 128));
    w.addTensor("blk.0.attn_q.weight", [32, 2], GGMLType.Q8_0, randomBytes(rng, 68));
    w.addTensor("output_norm.weight", [16], GGMLType.F16, randomBytes(rng, 32));
    w.write(base);
    const original = readFileSync(base);
    expect(original.length).toBeLessThan(4096);
    readGgufHeader(base);

    const boundary8 = [0, 0xff, 0x7f, 0x80, 0x01, 0xfe];
    const boundary64 = [0n, 1n, 2n ** 64n - 1n, 2n ** 63n, 2n ** 32n, 2n ** 53n + 1n, 0xffffffffn];
    const path = join(dir, "fuzz.gguf");
    let parsed = 0;
    const iterations = 1500;
    for (let iter = 0; iter < iterations; iter++) {
      let bytes = Buffer.from(original);
      const mutations = 1 + rng.nextInt(3);
      for (let m = 0; m < mutations; m++) {
        const pos = rng.nextInt(bytes.length);
        switch (rng.nextInt(6)) {
          case 0: // bit flip
            bytes[pos]! ^= 1 << rng.nextInt(8);
            break;
          case 1: // boundary byte
            bytes[pos] = boundary8[rng.nextInt(boundary8.length)]!;
            break;
          case 2: // boundary u64 over an 8-byte field
            if (pos + 8 <= bytes.length)
              bytes.writeBigUInt64LE(boundary64[rng.nextInt(boundary64.length)]!, pos);
            break;
          case 3: // truncation
            bytes = bytes.subarray(0, pos);
            break;
          case 4: {
            // insertion
            const ins = Buffer.from(randomBytes(rng, 1 + rng.nextInt(16)));
            bytes = Buffer.concat([bytes.subarray(0, pos), ins, bytes.subarray(pos)]);
            break;
          }
          default: // random byte
            bytes[pos] = rng.nextU32() & 0xff;
        }
        if (bytes.length === 0) break;
      }
      writeFileSync(path, bytes);
      try {
        const file = GgufFile.open(path);
        try {
          for (const t of file.header.tensors) file.readTensor(t);
        } finally {
          file.close();
        }
        parsed++;
      } catch (e) {
        if (!(e instanceof UserError)) {
          throw new Error(`mutation ${iter} threw ${String(e)} instead of a UserError`);
        }
        expect(e.message).toContain(path);
        expect(e.message).not.toContain("\n");
      }
    }
    // some mutations hit tensor data or values only and the file stays readable
    expect(parsed).toBeGreaterThan(0);
    expect(parsed).toBeLessThan(iterations);
  });

  it("either parses or throws a one-line UserError for 1500 generated metadata shapes", () => {
    // Nested arrays of every element type, lying counts and string lengths (up to 2^64 - 1), deep
    // nesting past the limit, unknown types, odd key bytes, overlapping tensors, truncations.
    // gguf-limits.test.ts reads the same shapes in a child process and measures their memory.
    const rng = new Rng(777);
    const path = join(dir, "fuzz-shapes.gguf");
    const outcomes = new Map<string, number>();
    for (let iter = 0; iter < 1500; iter++) {
      writeFileSync(path, randomMetadataGguf(rng));
      let outcome = "parsed";
      try {
        const file = GgufFile.open(path);
        try {
          for (const t of file.header.tensors) file.readTensor(t);
        } finally {
          file.close();
        }
      } catch (e) {
        if (!(e instanceof UserError)) {
          throw new Error(`case ${iter} threw ${String(e)} instead of a UserError`);
        }
        expect(e.message).toContain(path);
        expect(e.message).not.toContain("\n");
        expect(e.message).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/);
        // what went wrong, without the file name and the numbers
        outcome = e.message
          .slice(path.length + 2)
          .replace(/"[^"]*"|\d+/g, "#")
          .slice(0, 40);
      }
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
    }
    // The generator reaches many different checks, and some files are valid.
    expect(outcomes.get("parsed")).toBeGreaterThan(50);
    expect(outcomes.size).toBeGreaterThan(15);
  });
});

// ---------------------------------------------------------------------------------------------

describe("llama.cpp acceptance", () => {
  it("loads a tiny random-weight Llama written by GgufWriter and evaluates tokens", async () => {
    const path = join(dir, "tiny-llama.gguf");
    const tiny = writeTinyLlama(path, { dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 160, seed: 5 });
    const header = readGgufHeader(path);
    expect(header.getString("general.architecture")).toBe("llama");
    expect(header.getStringArray("tokenizer.ggml.tokens")).toEqual(tiny.tokens);
    expect(header.getStringArray("tokenizer.ggml.tokens")[3]).toBe("<0x00>");
    expect(header.tensors).toHaveLength(3 + 9 * 2);

    const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
    const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
    try {
      const model = await llama.loadModel({ modelPath: path });
      try {
        expect(model.trainContextSize).toBe(tiny.contextLength);
        expect(model.tokens.bos).toBe(tiny.bos);
        expect(model.tokens.eos).toBe(tiny.eos);
        const text = "hello world";
        const tokens = model.tokenize(text);
        expect(tokens).toContain(tiny.tokens.indexOf("▁hello"));
        expect(tokens).toContain(tiny.tokens.indexOf("▁world"));
        expect(model.detokenize(tokens)).toBe(text);
        // a character outside the vocabulary falls back to byte tokens
        const euro = model.tokenize("€");
        expect(euro).toEqual(expect.arrayContaining([0xe2, 0x82, 0xac].map((b) => 3 + b)));
        expect(model.detokenize(euro)).toBe("€");

        const context = await model.createContext({ contextSize: 64, threads: 1 });
        try {
          const sequence = context.getSequence();
          const input = [tiny.bos as Token, ...tokens];
          const results = await sequence.controlledEvaluate([
            ...input.slice(0, -1),
            [input.at(-1)!, { generateNext: { probabilities: true } }],
          ]);
          const probabilities = results.at(-1)?.next?.probabilities;
          expect(probabilities).toBeDefined();
          let total = 0;
          for (const p of probabilities!.values()) {
            expect(Number.isFinite(p)).toBe(true);
            total += p;
          }
          expect(total).toBeGreaterThan(0.99);
          expect(total).toBeLessThan(1.01);
          expect(sequence.nextTokenIndex).toBe(input.length);
        } finally {
          await context.dispose();
        }
      } finally {
        await model.dispose();
      }
    } finally {
      await llama.dispose();
    }
  });
});
