// Inputs a user can get wrong: broken or unsupported model files, bad flags, prompts too long for
// the context. Each must end in one line on stderr that names the file or flag, and exit code 2.
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MAX_LINE_CHARS } from "../src/data/corpus.js";
import { UserError, userErrorOfSystemError } from "../src/errors.js";
import { GGMLType } from "../src/formats/ggml-types.js";
import { GgufFile, GgufWriter, readGgufHeader } from "../src/formats/gguf.js";
import { loadModel } from "../src/model/model.js";
import { Rng } from "../src/util/random.js";
import { type CliResult, ensureBuilt, runCli } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let tiny: string;

beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "smallhammer-bad-"));
  tiny = join(dir, "tiny.gguf");
  writeTinyLlama(tiny, { dim: 32, layers: 1, heads: 2, ffn: 64 });
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Exit 2 with exactly one line on stderr that starts "smallhammer:" and names `mention`. */
function expectUserError(r: CliResult, mention: string, says?: RegExp) {
  expect(r.signal).toBeNull();
  expect(r.stderr).not.toContain("    at ");
  const lines = r.stderr.replace(/\n$/, "").split("\n");
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^smallhammer: /);
  expect(lines[0]).toContain(mention);
  if (says) expect(lines[0]).toMatch(says);
  expect(r.status).toBe(2);
}

/** Writes `bytes` to a new file in the test directory and returns its path. */
function file(name: string, bytes: Uint8Array): string {
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

/** A copy of `src` whose metadata and tensors pass through `edit`. */
function rewrite(
  src: string,
  name: string,
  edit: {
    metadata?: (w: GgufWriter) => void;
    tensor?: (name: string, dims: readonly number[]) => { type: GGMLType; data: Uint8Array } | undefined;
  },
): string {
  const f = GgufFile.open(src);
  try {
    const w = new GgufWriter();
    w.copyMetadataFrom(f.header);
    edit.metadata?.(w);
    for (const t of f.header.tensors) {
      const replaced = edit.tensor?.(t.name, t.dims);
      if (replaced) w.addTensor(t.name, t.dims, replaced.type, replaced.data);
      else w.addTensor(t.name, t.dims, t.type, f.readTensor(t));
    }
    const path = join(dir, name);
    w.write(path);
    return path;
  } finally {
    f.close();
  }
}

/** Byte position of the offset field of tensor `name`'s info in the header of `bytes`. */
function tensorOffsetField(bytes: Uint8Array, name: string): number {
  const at = Buffer.from(bytes).lastIndexOf(Buffer.from(name, "utf8"));
  expect(at).toBeGreaterThan(0);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let p = at + name.length;
  const nDims = view.getUint32(p, true);
  p += 4 + 8 * nDims + 4; // dimensions, then the type
  return p;
}

/** Runs the commands that read a model file and expects each to fail naming the file. */
async function expectFileRejected(
  path: string,
  says: RegExp,
  commands: ("inspect" | "generate" | "quantize")[],
) {
  for (const command of commands) {
    const out = join(dir, "never-written.gguf");
    const args =
      command === "inspect"
        ? ["inspect", path]
        : command === "generate"
          ? ["generate", "-m", path, "-p", "hello", "-n", "2", "-t", "1"]
          : ["quantize", path, out, "--type", "q8_0"];
    const r = await runCli(args);
    expectUserError(r, path, says);
    expect(r.stdout).toBe("");
    if (command === "quantize") expect(() => readFileSync(out)).toThrow();
  }
}

const ALL = ["inspect", "generate", "quantize"] as const;

describe("broken model files", () => {
  it("a file cut in the middle of the tensor data", async () => {
    const bytes = readFileSync(tiny);
    const path = file("cut-data.gguf", bytes.subarray(0, bytes.length >> 1));
    await expectFileRejected(path, /outside the file .*truncated/, [...ALL]);
  });

  it("a file cut inside the header", async () => {
    const bytes = readFileSync(tiny);
    const dataOffset = readGgufHeader(tiny).dataOffset;
    for (const at of [0, 3, 10, 20, 100, 2000, dataOffset - 40]) {
      const path = file(`cut-header-${at}.gguf`, bytes.subarray(0, at));
      await expectFileRejected(path, /truncated|too short|past the end of the file|cannot fit/i, [
        "inspect",
        "generate",
      ]);
    }
  });

  it("wrong magic", async () => {
    const bytes = readFileSync(tiny);
    bytes.write("GGUX", 0, "latin1");
    await expectFileRejected(file("magic.gguf", bytes), /GGUF/, [...ALL]);
    await expectFileRejected(
      file("text.gguf", Buffer.from("just some text, not a model\n".repeat(10))),
      /GGUF/,
      ["inspect"],
    );
  });

  it("an unknown version", async () => {
    const bytes = readFileSync(tiny);
    bytes.writeUInt32LE(99, 4);
    await expectFileRejected(file("version.gguf", bytes), /version 99/, [...ALL]);
  });

  it("a weight in a tensor type smallhammer cannot run (iq2_xxs)", async () => {
    // iq2_xxs rows hold 256 weights, so this model is 256 wide.
    const wide = join(dir, "wide.gguf");
    writeTinyLlama(wide, { dim: 256, layers: 1, heads: 4, ffn: 256 });
    const path = rewrite(wide, "q2k.gguf", {
      tensor: (name, dims) =>
        name === "blk.0.attn_q.weight"
          ? { type: GGMLType.IQ2_XXS, data: new Uint8Array((dims[0]! / 256) * 66 * dims[1]!) }
          : undefined,
    });
    // inspect shows it; running or converting it fails, naming the tensor and its type.
    const r = await runCli(["inspect", path, "--json"]);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).tensors).toContainEqual(
      expect.objectContaining({ name: "blk.0.attn_q.weight", type: "iq2_xxs" }),
    );
    await expectFileRejected(path, /blk\.0\.attn_q\.weight .*iq2_xxs/, ["generate", "quantize"]);
  });

  it("an unknown tensor type id", async () => {
    const bytes = readFileSync(tiny);
    const field = tensorOffsetField(bytes, "output.weight");
    bytes.writeUInt32LE(1000, field - 4);
    await expectFileRejected(file("type-1000.gguf", bytes), /output\.weight.*type/, [...ALL]);
  });

  for (const arch of ["falcon", "mamba"]) {
    it(`an unsupported architecture (${arch})`, async () => {
      const path = rewrite(tiny, `${arch}.gguf`, {
        metadata: (w) => w.setString("general.architecture", arch),
      });
      // inspect reports it as not runnable; generate refuses it.
      const r = await runCli(["inspect", path]);
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^runnable +no: .*"${arch}" is not supported`, "m"));
      await expectFileRejected(path, new RegExp(`architecture "${arch}" is not supported`), ["generate"]);
    });
  }

  it("tensor data outside the file", async () => {
    const bytes = readFileSync(tiny);
    const field = tensorOffsetField(bytes, "output.weight");
    bytes.writeBigUInt64LE(1n << 30n, field);
    await expectFileRejected(file("outside.gguf", bytes), /output\.weight.* outside the file/, [...ALL]);
  });

  it("a missing file, a directory, an empty file", async () => {
    await expectFileRejected(join(dir, "missing.gguf"), /cannot open \(ENOENT\)/, [...ALL]);
    const sub = join(dir, "a-directory.gguf");
    mkdirSync(sub);
    await expectFileRejected(sub, /not a regular file/, [...ALL]);
    await expectFileRejected(file("empty.gguf", new Uint8Array(0)), /./, [...ALL]);
  });

  it("quantize onto an output that cannot be written leaves the input alone", async () => {
    const copy = join(dir, "copy.gguf");
    copyFileSync(tiny, copy);
    const r = await runCli(["quantize", copy, join(dir, "no-such-dir", "out.gguf"), "--type", "q4_0"]);
    expectUserError(r, join(dir, "no-such-dir", "out.gguf"));
    expect(readFileSync(copy).equals(readFileSync(tiny))).toBe(true);
  });
});

describe("bad flags and prompts", () => {
  it("a prompt longer than the context", async () => {
    const r = await runCli(["generate", "-m", tiny, "--ctx", "16", "-p", "the world is hello ".repeat(20)]);
    expectUserError(r, "context of 16 tokens", /the prompt is \d+ tokens/);
  });

  const flags: [string, string[], string][] = [
    ["--threads 0", ["generate", "-m", "MODEL", "-p", "hi", "--threads", "0"], "--threads"],
    ["--temp abc", ["generate", "-m", "MODEL", "-p", "hi", "--temp", "abc"], "--temp"],
    ["-n -5", ["generate", "-m", "MODEL", "-p", "hi", "-n", "-5"], "-n"],
    ["--ctx 0", ["generate", "-m", "MODEL", "-p", "hi", "--ctx", "0"], "--ctx"],
    ["--top-p 2", ["generate", "-m", "MODEL", "-p", "hi", "--top-p", "2"], "--top-p"],
    ["--seed -1", ["chat", "-m", "MODEL", "--seed", "-1"], "--seed"],
    ["an unknown option", ["generate", "-m", "MODEL", "-p", "hi", "--frobnicate"], "--frobnicate"],
    ["a missing -m", ["generate", "-p", "hi"], "--model"],
    ["a missing --type", ["quantize", "MODEL", "out.gguf"], "--type"],
    ["an unknown --template", ["generate", "-m", "MODEL", "-p", "hi", "--template", "nope"], "nope"],
    ["an unknown command", ["frobnicate", "x"], "frobnicate"],
  ];
  for (const [what, args, mention] of flags) {
    it(what, async () => {
      const r = await runCli(args.map((a) => (a === "MODEL" ? tiny : a)));
      expectUserError(r, mention);
      expect(r.stdout).toBe("");
    });
  }

  it("--help and --version still print and exit 0", async () => {
    const help = await runCli(["generate", "--help"]);
    expect(help.status).toBe(0);
    expect(help.stdout).toContain("Usage: smallhammer generate");
    const version = await runCli(["--version"]);
    expect(version.status).toBe(0);
    expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });
});

describe("file-system mistakes and oversized input are one line, never a stack trace", () => {
  const records = (n: number) =>
    Array.from({ length: n }, (_, i) =>
      JSON.stringify({ instruction: `Say the number ${i}.`, input: "", output: `${i}` }),
    ).join("\n") + "\n";

  it("pretrain and finetune --out naming an existing file", async () => {
    const taken = file("taken.txt", Buffer.from("a file, not a run directory\n"));
    const data = file("records.jsonl", Buffer.from(records(4)));
    const pre = await runCli(["pretrain", "--model", "tiny", "--data", dir, "--out", taken, "--steps", "1"]);
    expectUserError(pre, `--out ${taken}`, /exists and is not a directory$/);
    const fine = await runCli(["finetune", "--base", tiny, "--data", data, "--out", taken, "--steps", "1"]);
    expectUserError(fine, `--out ${taken}`, /exists and is not a directory$/);
    expect(readFileSync(taken, "utf8")).toBe("a file, not a run directory\n");
  });

  it("data convert --out a directory, data split with one path for both outputs", async () => {
    const data = file("split-me.jsonl", Buffer.from(records(20)));
    const folder = join(dir, "out-folder");
    mkdirSync(folder);
    expectUserError(
      await runCli(["data", "convert", data, "--to", "sharegpt", "--out", folder]),
      folder,
      /is a directory; give a file path$/,
    );
    const both = join(dir, "both.jsonl");
    expectUserError(
      await runCli(["data", "split", data, "--train-out", both, "--validation-out", both]),
      both,
      /are the same file/,
    );
    expect(existsSync(both)).toBe(false);
  });

  it("--threads far above the cores is refused for every command that takes it", async () => {
    const data = file("threads.jsonl", Buffer.from(records(4)));
    const too = String(4 * availableParallelism() + 1);
    for (const args of [
      ["generate", "-m", tiny, "-p", "hi", "-t", "1000"],
      ["chat", "-m", tiny, "--threads", too],
      ["eval", "tasks", "-m", tiny, "-t", "1000"],
      ["pretrain", "--model", "tiny", "--data", dir, "--out", join(dir, "r"), "--steps", "1", "-t", "1000"],
      ["finetune", "--base", tiny, "--data", data, "--out", join(dir, "r"), "-t", too],
    ]) {
      const r = await runCli(args);
      expectUserError(
        r,
        "--threads",
        /is more than this machine's \d+ cores? can use \(at most \d+, 4 per core\)/,
      );
      expect(r.stdout).toBe("");
    }
    // At the bound it is accepted.
    const ok = await runCli([
      "generate",
      "-m",
      tiny,
      "-p",
      "hi",
      "-n",
      "1",
      "-t",
      String(4 * availableParallelism()),
    ]);
    expect(ok.stderr).toBe("");
    expect(ok.status).toBe(0);
  });

  it("a file-system error about a user's path (here ENOTDIR from creating the run directory)", async () => {
    const corpus = file(
      "corpus.txt",
      Buffer.from("the world is hello and the cat sat on the mat.\n\n".repeat(200)),
    );
    const cache = join(dir, "cache");
    const t = await runCli(["data", "tokenize", corpus, "--tokenizer", tiny, "--out", cache]);
    expect(t.stderr).toBe("");
    expect(t.status).toBe(0);
    const blocker = file("blocker.txt", Buffer.from("in the way\n"));
    const r = await runCli([
      ...["pretrain", "--model", "tiny", "--data", cache, "--out", join(blocker, "run")],
      ...["--steps", "1", "--batch", "1", "--seq", "16", "-t", "1"],
    ]);
    expectUserError(r, join(blocker, "run"), /ENOTDIR/);
  });

  it("turns the file-system errors a path can cause into one line naming the path", () => {
    const cases: [() => unknown, RegExp][] = [
      [() => readFileSync(join(dir, "absent.txt")), /absent\.txt: no such file or directory \(ENOENT\)$/],
      // Reading a directory fails in read(), which knows no path: the call is named instead.
      [() => readFileSync(dir), /^a path given is a directory \(EISDIR in read\)$/],
      [() => writeFileSync(dir, "x"), /: is a directory \(EISDIR\)$/],
      [() => mkdirSync(dir), /: exists already \(EEXIST\)$/],
      [
        () => readFileSync(join(tiny, "x")),
        /tiny\.gguf\/x: a part of the path is not a directory \(ENOTDIR\)$/,
      ],
    ];
    for (const [action, says] of cases) {
      let thrown: unknown;
      try {
        action();
      } catch (e) {
        thrown = e;
      }
      const e = userErrorOfSystemError(thrown);
      expect(e).toBeInstanceOf(UserError);
      expect(e!.message).toMatch(says);
    }
    expect(userErrorOfSystemError(new Error("a bug"))).toBeUndefined();
    expect(userErrorOfSystemError(new RangeError("Invalid string length"))).toBeUndefined();
  });
});

describe("a JSONL line over 512 MB", () => {
  // V8's longest string is about 2^29 characters: a line past it used to end in a RangeError.
  const LINE_CHARS = 540_000_000;
  let big: string;
  beforeAll(() => {
    big = join(dir, "huge-line.jsonl");
    const fd = openSync(big, "w");
    try {
      writeSync(fd, `${JSON.stringify({ instruction: "First.", input: "", output: "one" })}\n`);
      writeSync(fd, '{"instruction": "');
      const block = Buffer.alloc(1 << 20, "a");
      for (let left = LINE_CHARS; left > 0; left -= block.length) {
        writeSync(fd, block, 0, Math.min(block.length, left));
      }
      writeSync(fd, '", "input": "", "output": "x"}\n');
      writeSync(fd, `${JSON.stringify({ instruction: "Third.", input: "", output: "three" })}\n`);
    } finally {
      closeSync(fd);
    }
  });
  afterAll(() => {
    if (big) rmSync(big, { force: true });
  });

  it("data stats and data dedup stop at line 2 with the corpus reader's limit, in one line", async () => {
    const limit = `${big}:2: line longer than ${MAX_LINE_CHARS} characters`;
    expectUserError(await runCli(["data", "stats", big]), limit);
    const out = join(dir, "huge-dedup.jsonl");
    expectUserError(await runCli(["data", "dedup", big, "--out", out]), limit);
    expect(existsSync(out)).toBe(false);
  });

  it("with --skip-invalid the line is skipped and counted, the others read", async () => {
    const r = await runCli(["data", "stats", big, "--skip-invalid", "--json"]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      records: 2,
      skipped: { total: 1, byReason: { "too long": 1 } },
    });
  });

  it("a JSON array element over the limit is one line too", async () => {
    const array = join(dir, "huge-element.json");
    const fd = openSync(array, "w");
    try {
      writeSync(
        fd,
        `[${JSON.stringify({ instruction: "First.", input: "", output: "one" })},\n{"instruction": "`,
      );
      const block = Buffer.alloc(1 << 20, "b");
      for (let left = MAX_LINE_CHARS + (1 << 20); left > 0; left -= block.length) writeSync(fd, block);
      writeSync(fd, '", "output": "x"}]\n');
    } finally {
      closeSync(fd);
    }
    expectUserError(
      await runCli(["data", "stats", array]),
      `${array}:2 (array index 1): record longer than ${MAX_LINE_CHARS} characters`,
    );
    rmSync(array);
  });
});

describe("fuzzed model headers", () => {
  it("every mutation of the header either loads or fails with a UserError", async () => {
    const original = readFileSync(tiny);
    const header = readGgufHeader(tiny);
    const region = header.dataOffset; // magic, version, counts, metadata and the tensor infos
    const path = join(dir, "fuzzed.gguf");
    const rng = new Rng(20240611);
    const below = (n: number) => Math.floor(rng.nextFloat() * n);
    const interesting32 = [0, 1, 2, 3, 31, 32, 33, 255, 0x7fff, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff];
    const interesting64 = [0n, 1n, 32n, 1n << 31n, 1n << 32n, 1n << 53n, 1n << 62n, (1n << 64n) - 1n];
    const counts = { loaded: 0, rejected: 0 };
    const failures: string[] = [];
    const MUTATIONS = 1500;
    for (let i = 0; i < MUTATIONS; i++) {
      let bytes = Buffer.from(original);
      const kind = below(6);
      const edits = 1 + below(4);
      for (let e = 0; e < edits; e++) {
        const p = below(region - 8);
        if (kind === 0) bytes[p] = bytes[p]! ^ (1 << below(8));
        else if (kind === 1) bytes[p] = below(256);
        else if (kind === 2) bytes.writeUInt32LE(interesting32[below(interesting32.length)]!, p);
        else if (kind === 3) bytes.writeBigUInt64LE(interesting64[below(interesting64.length)]!, p);
        else if (kind === 4) {
          // Insert or delete a few bytes: everything after shifts.
          const n = 1 + below(8);
          bytes =
            rng.nextFloat() < 0.5
              ? Buffer.concat([bytes.subarray(0, p), Buffer.alloc(n, below(256)), bytes.subarray(p)])
              : Buffer.concat([bytes.subarray(0, p), bytes.subarray(p + n)]);
        } else bytes = bytes.subarray(0, p);
      }
      writeFileSync(path, bytes);
      try {
        const model = await loadModel(path, { threads: 1 });
        try {
          // A file that loads also runs a few tokens (or refuses as a user error).
          for await (const _ of model.generate("hello world", { maxTokens: 2, temperature: 0 })) {
            // drain
          }
        } finally {
          await model.dispose();
        }
        counts.loaded++;
      } catch (e) {
        if (e instanceof UserError) {
          counts.rejected++;
          expect(e.message).not.toContain("\n");
        } else {
          failures.push(`mutation ${i} (kind ${kind}): ${(e as Error)?.stack ?? String(e)}`);
        }
      }
    }
    expect(failures.slice(0, 5)).toEqual([]);
    expect(counts.loaded + counts.rejected).toBe(MUTATIONS);
    // Both outcomes occur: the mutations reach past the first checks.
    expect(counts.loaded).toBeGreaterThan(50);
    expect(counts.rejected).toBeGreaterThan(500);
  });
});
