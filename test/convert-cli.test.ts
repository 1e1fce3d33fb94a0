// `smallhammer convert` as a user runs it: GGUF → Hugging Face directory → quantized GGUF, a model
// with a tied output head, outputs that exist, and a broken directory refused in one line.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { GgufFile, readGgufHeader } from "../src/formats/gguf.js";
import { SafetensorsFile } from "../src/formats/safetensors.js";
import { writePeftAdapter } from "../src/model/lora.js";
import { ensureBuilt, expectOk, expectUserError, runCli } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

let dir: string;
let tiny: string;

beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "smallhammer-convert-cli-"));
  tiny = join(dir, "tiny.gguf");
  writeTinyLlama(tiny, { tiedEmbeddings: true, kvHeads: 2, chatTemplate: "{{ messages[0].content }}" });
}, 300_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

it("GGUF → Hugging Face (bf16) → GGUF q4_0, with a tied output head", async () => {
  const hf = join(dir, "hf");
  const r = await runCli(["convert", tiny, "-o", hf, "--type", "bf16", "--json"]);
  expectOk(r);
  expect(JSON.parse(r.stdout)).toMatchObject({ architecture: "llama", dtype: "BF16", tensors: 20 });
  const config = JSON.parse(readFileSync(join(hf, "config.json"), "utf8"));
  expect(config).toMatchObject({
    tie_word_embeddings: true,
    torch_dtype: "bfloat16",
    num_key_value_heads: 2,
  });
  const st = SafetensorsFile.open(join(hf, "model.safetensors"));
  expect(st.tensor("lm_head.weight")).toBeUndefined();
  expect(st.tensor("model.embed_tokens.weight")?.dtype).toBe("BF16");
  st.close();

  const out = join(dir, "tiny-q4_0.gguf");
  const g = await runCli(["convert", hf, "-o", out, "--type", "q4_0"]);
  expectOk(g);
  expect(g.stdout).toMatch(/tiny-q4_0\.gguf: llama q4_0, 20 tensors, tokenizer llama, chat template/);
  const h = readGgufHeader(out);
  expect(h.getNumber("general.file_type")).toBe(2);
  expect(h.tensor("output.weight")).toBeUndefined();
  expect(h.getString("tokenizer.chat_template")).toBe("{{ messages[0].content }}");
  expect(existsSync(`${out}.convert-${process.pid}.gguf`)).toBe(false);
  const f = GgufFile.open(out);
  expect(f.header.tensors.filter((t) => t.name.endsWith("attn_q.weight")).every((t) => t.type === 2)).toBe(
    true,
  );
  f.close();

  // Existing outputs are replaced only with --force.
  expectUserError(await runCli(["convert", hf, "-o", out]), "--force");
  expectUserError(await runCli(["convert", tiny, "-o", hf]), "--force");
  expectOk(await runCli(["convert", tiny, "-o", hf, "--force"]));
  expect(JSON.parse(readFileSync(join(hf, "config.json"), "utf8")).torch_dtype).toBe("float32");
}, 120_000);

it("a PEFT adapter: converted to GGUF, and applied as a directory by --lora, gives the same text", async () => {
  let seed = 5;
  const rand = (n: number) =>
    Float32Array.from({ length: n }, () => {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      return seed / 2 ** 31 - 1;
    });
  const peft = join(dir, "peft");
  writePeftAdapter(
    peft,
    {
      architecture: "llama",
      alpha: 8,
      tensors: [0, 1].flatMap((l) => [
        {
          base: `blk.${l}.attn_q.weight`,
          rank: 4,
          inFeatures: 64,
          outFeatures: 64,
          a: rand(256),
          b: rand(256),
        },
        {
          base: `blk.${l}.attn_k.weight`,
          rank: 4,
          inFeatures: 64,
          outFeatures: 32,
          a: rand(256),
          b: rand(128),
        },
        // ffn_down moves the output at once: the adapter visibly changes the text.
        {
          base: `blk.${l}.ffn_down.weight`,
          rank: 4,
          inFeatures: 160,
          outFeatures: 64,
          a: rand(640),
          b: rand(256),
        },
      ]),
    },
    { baseModel: "tiny", heads: 4, kvHeads: 2 },
  );
  const gguf = join(dir, "adapter.gguf");
  const c = await runCli(["convert", peft, "--base", tiny, "-o", gguf, "--json"]);
  expectOk(c);
  expect(JSON.parse(c.stdout)).toMatchObject({ rank: 4, alpha: 8, tensors: 6 });
  const generate = async (lora: string[]) => {
    const r = await runCli(["generate", "-m", tiny, ...lora, "-p", "the", "-n", "12", "--temp", "0"]);
    expectOk(r);
    return r.stdout;
  };
  const viaDir = await generate(["--lora", peft]);
  expect(viaDir).toBe(await generate(["--lora", gguf]));
  expect(viaDir).not.toBe(await generate([]));
  expectUserError(await runCli(["convert", peft, "-o", join(dir, "a2.gguf")]), "needs --base");
}, 120_000);

it("refuses a broken directory, a wrong --type and a missing input in one line", async () => {
  const hf = join(dir, "broken");
  expectOk(await runCli(["convert", tiny, "-o", hf]));
  writeFileSync(join(hf, "config.json"), JSON.stringify({ model_type: "llama", hidden_size: "64" }));
  expectUserError(await runCli(["convert", hf, "-o", join(dir, "x.gguf")]), "hidden_size");
  expectUserError(
    await runCli(["convert", tiny, "-o", join(dir, "y"), "--type", "q4_0"]),
    "f32, f16 or bf16",
  );
  expectUserError(await runCli(["convert", join(dir, "nothing"), "-o", join(dir, "z.gguf")]), "no such file");
  expectUserError(await runCli(["convert", hf, "-o", join(dir, "x.gguf"), "--type", "q9"]), "--type q9");
  const bin = join(dir, "model.bin");
  writeFileSync(bin, Buffer.alloc(64, 1));
  expectUserError(
    await runCli(["convert", bin, "-o", join(dir, "b.gguf")]),
    "needs --tokenizer tokenizer.bin",
  );
  expectUserError(
    await runCli(["convert", bin, "--tokenizer", bin, "-o", join(dir, "b.gguf")]),
    "not a llama2.c checkpoint",
  );
}, 60_000);
