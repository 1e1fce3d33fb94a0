// What `inspect` prints of untrusted metadata: 64-bit integers exactly, nested arrays with their
// structure (cut with counts when long or deep), and names and strings with control and Unicode
// bidi characters escaped, in the text report and in --json.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GGMLType } from "../src/formats/ggml-types.js";
import { type GgufArray, GgufFile, GgufValueType, GgufWriter } from "../src/formats/gguf.js";
import { ensureBuilt, runCli } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let file: string;

/** Every character the report must never print raw (tab and newline are its own layout). */
const RAW_UNSAFE =
  /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
const NASTY = "a\u0007b\u001b[2Jc\u007fd\u0085e\u202ef\u2066g\u2069h\u200ei\u061cj\u2028k";
const NASTY_ESCAPED = "a\\u0007b\\u001b[2Jc\\u007fd\\u0085e\\u202ef\\u2066g\\u2069h\\u200ei\\u061cj\\u2028k";

const nested: GgufArray = {
  elementType: GgufValueType.ARRAY,
  values: [
    { elementType: GgufValueType.INT32, values: Int32Array.of(1, -2, 3) },
    { elementType: GgufValueType.STRING, values: ["x", "y\u202ez"] },
    {
      elementType: GgufValueType.ARRAY,
      values: [
        { elementType: GgufValueType.UINT64, values: [2n ** 64n - 1n] },
        { elementType: GgufValueType.BOOL, values: [] },
      ],
    },
    { elementType: GgufValueType.FLOAT32, values: new Float32Array(0) },
  ],
};

/** A chain of single-element arrays `levels` deep around one u8. */
function chain(levels: number): GgufArray {
  let inner: GgufArray = { elementType: GgufValueType.UINT8, values: Uint8Array.of(9) };
  for (let i = 0; i < levels; i++) inner = { elementType: GgufValueType.ARRAY, values: [inner] };
  return inner;
}

beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "smallhammer-inspect-"));
  const tiny = join(dir, "tiny.gguf");
  writeTinyLlama(tiny, { dim: 32, layers: 1, heads: 2, ffn: 64 });
  const f = GgufFile.open(tiny);
  try {
    const w = new GgufWriter().copyMetadataFrom(f.header);
    w.setString("general.name", NASTY);
    w.setU64("test.u64_above_2^53", 2n ** 53n + 1n);
    w.setU64("test.u64_max", 2n ** 64n - 1n);
    w.setI64("test.i64_min", -(2n ** 63n));
    w.setArray("test.u64_array", GgufValueType.UINT64, [1, 2n ** 60n + 1n, 2n ** 64n - 1n]);
    w.set("test.nested", { type: GgufValueType.ARRAY, value: nested });
    w.setArray(
      "test.wide_nested",
      GgufValueType.ARRAY,
      Array.from({ length: 100 }, () => ({ elementType: GgufValueType.UINT8, values: new Uint8Array(100) })),
    );
    w.set("test.deep", { type: GgufValueType.ARRAY, value: chain(10) });
    w.setU8(`test.key\u202eevil\u001b`, 1);
    for (const t of f.header.tensors) w.addTensor(t.name, t.dims, t.type, f.readTensor(t));
    w.addTensor("extra\u202e\u0007.weight", [4], GGMLType.F32, new Uint8Array(16));
    file = join(dir, "shown.gguf");
    w.write(file);
  } finally {
    f.close();
  }
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The text after a metadata key in the report (the key as printed, escaped). */
function shownValue(out: string, key: string): string {
  const line = out.split("\n").find((l) => l.startsWith(`  ${key} `));
  expect(line, key).toBeDefined();
  return line!.slice(2 + key.length).trim();
}

describe("inspect output", () => {
  it("prints 64-bit integers exactly, nested arrays with their structure, and escapes text", async () => {
    const r = await runCli(["inspect", file]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const out = r.stdout;
    expect(out).not.toMatch(RAW_UNSAFE);
    expect(shownValue(out, "test.u64_above_2^53")).toBe("9007199254740993");
    expect(shownValue(out, "test.u64_max")).toBe("18446744073709551615");
    expect(shownValue(out, "test.i64_min")).toBe("-9223372036854775808");
    expect(shownValue(out, "test.u64_array")).toBe("[1, 1152921504606846977, 18446744073709551615]");
    expect(shownValue(out, "test.nested")).toBe(
      '[[1, -2, 3], ["x", "y\\u202ez"], [[18446744073709551615], []], []]',
    );
    // 100 arrays of 100: the first arrays' first elements, then the counts
    const wide = shownValue(out, "test.wide_nested");
    expect(wide.startsWith("[[0, 0, 0, 0, 0, 0, … 100 items], [0, 0, 0, 0, 0, 0, … 100 items], ")).toBe(true);
    expect(wide.endsWith(", … 100 items]")).toBe(true);
    expect(wide.length).toBeLessThan(260);
    // ten levels: four shown, then a count
    expect(shownValue(out, "test.deep")).toBe("[[[[[… 1 item]]]]]");
    expect(shownValue(out, "general.name")).toBe(`"${NASTY_ESCAPED}"`);
    expect(out).toMatch(/^ {2}test\.key\\u202eevil\\u001b +1$/m);
    expect(out).toMatch(/^ {2}extra\\u202e\\u0007\.weight +f32 +\[4\] /m);
    expect(out).toMatch(/^shape +dim 32, 1 layers/m);
  });

  it("--json keeps 64-bit integers exact as strings, nests arrays, and escapes bidi characters", async () => {
    const r = await runCli(["inspect", file, "--json"]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).not.toMatch(RAW_UNSAFE);
    const j = JSON.parse(r.stdout) as { metadata: Record<string, unknown>; tensors: { name: string }[] };
    const m = j.metadata;
    expect(m["test.u64_above_2^53"]).toBe("9007199254740993");
    expect(m["test.u64_max"]).toBe("18446744073709551615");
    expect(m["test.i64_min"]).toBe("-9223372036854775808");
    expect(m["test.u64_array"]).toEqual([1, "1152921504606846977", "18446744073709551615"]);
    expect(m["test.nested"]).toEqual([[1, -2, 3], ["x", "y\u202ez"], [["18446744073709551615"], []], []]);
    expect(m["test.wide_nested"]).toEqual({ type: "array", elementType: "array", length: 100 });
    expect(m["test.deep"]).toEqual([[[[[[[[{ type: "array", elementType: "array", length: 1 }]]]]]]]]);
    // escaped in the text, the same characters once parsed
    expect(m["general.name"]).toBe(NASTY);
    expect(m["test.key\u202eevil\u001b"]).toBe(1);
    expect(j.tensors.map((t) => t.name)).toContain("extra\u202e\u0007.weight");
  });
});
