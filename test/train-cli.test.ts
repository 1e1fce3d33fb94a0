// The training commands as a user runs them: `node dist/cli/main.js ...` as child processes.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGgufHeader } from "../src/formats/gguf.js";
import { TokenArray } from "../src/train/data.js";
import { pretrain } from "../src/train/pretrain.js";
import { ensureBuilt, ROOT, runCli } from "./helpers/cli.js";
import { spmDescription, spmTokenizer, writeVocabGguf } from "./helpers/shakespeare-vocab.js";

let dir: string;
let run: string;

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-train-cli-"));
  const tokenizerPath = join(dir, "tokenizer.gguf");
  writeVocabGguf(tokenizerPath, spmDescription());
  const text = readFileSync(join(ROOT, "..", "shared", "data", "tinyshakespeare.txt"), "utf8").slice(
    0,
    50_000,
  );
  const ids = Int32Array.from(spmTokenizer().encode(text));
  run = join(dir, "run");
  await pretrain(
    {
      shape: { dim: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 128, contextLength: 64 },
      steps: 30,
      batch: 8,
      seq: 32,
      lr: 3e-3,
    },
    { source: dir, train: new TokenArray(ids), tokenizerPath },
    run,
    { threads: 2 },
  );
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function expectUserError(r: { status: number | null; stderr: string }, mention: string) {
  expect(r.status).toBe(2);
  const lines = r.stderr.replace(/\n$/, "").split("\n");
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^smallhammer: /);
  expect(lines[0]).toContain(mention);
}

describe("export", () => {
  it("writes a q8_0 model that generate runs, and says what it wrote", () => {
    const out = join(dir, "model.gguf");
    const r = runCli(["export", run, "--out", out, "--type", "q8_0", "--json"]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ out, type: "q8_0", step: 30, tensors: 21 });
    const h = readGgufHeader(out);
    expect(h.getNumber("general.file_type")).toBe(7);
    expect(h.tensor("blk.0.attn_q.weight")!.type).toBe(8);
    const g = runCli(["generate", "-m", out, "-p", "ROMEO:", "-n", "8", "--temp", "0", "-t", "1", "--json"]);
    expect(g.stderr).toBe("");
    expect(JSON.parse(g.stdout)).toMatchObject({ completionTokens: 8 });
  });

  it("refuses what is not a training run with one line", () => {
    expectUserError(
      runCli(["export", join(dir, "nowhere"), "--out", join(dir, "x.gguf")]),
      "no checkpoint.gguf",
    );
    expectUserError(
      runCli(["export", join(dir, "tokenizer.gguf"), "--out", join(dir, "x.gguf")]),
      "not a smallhammer training checkpoint",
    );
    expectUserError(runCli(["export", run, "--out", join(dir, "x.gguf"), "--type", "q9"]), "--type q9");
    expectUserError(
      runCli(["export", run, "--out", join(run, "checkpoint.gguf")]),
      "would overwrite the checkpoint",
    );
  });
});
