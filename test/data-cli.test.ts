// `smallhammer data stats` and `data preview` as a user runs them: the built CLI as a child process
// with pipes, on the shared samples and files written here.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { renderExample, tokenLabel } from "../src/cli/data-preview.js";
import { readTokenizerFile, tokenizeRecords } from "../src/data/chat-tokens.js";
import { fitExample } from "../src/data/packing.js";
import { RecordReader } from "../src/data/records.js";
import { renderChat } from "../src/model/templates.js";
import { ensureBuilt, expectOk, runCli } from "./helpers/cli.js";
import { spmDescription, writeVocabGguf } from "./helpers/shakespeare-vocab.js";

const SHAREGPT = new URL("./fixtures/sharegpt_dummy_conversation.json", import.meta.url).pathname;
const SEEDS = new URL("./fixtures/alpaca_seed_tasks.jsonl", import.meta.url).pathname;
const ZEPHYR =
  "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

let dir: string;
let vocab: string;
let vocabWithTemplate: string;

beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "smallhammer-data-cli-"));
  vocab = join(dir, "vocab.gguf");
  writeVocabGguf(vocab, spmDescription(), { contextLength: 128 });
  vocabWithTemplate = join(dir, "vocab-zephyr.gguf");
  writeVocabGguf(vocabWithTemplate, spmDescription(), { chatTemplate: ZEPHYR });
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

/** Exit 2 with exactly one line on stderr: `smallhammer: <line>`. */
function expectUserError(r: { status: number | null; stderr: string }, line: string | RegExp) {
  expect(r.status).toBe(2);
  const lines = r.stderr.replace(/\n$/, "").split("\n");
  expect(lines).toHaveLength(1);
  if (typeof line === "string") expect(lines[0]).toBe(`smallhammer: ${line}`);
  else expect(lines[0]).toMatch(line);
}

const ALPACA_OK = JSON.stringify({ instruction: "Say hi.", output: "Hi!" });

describe("data stats", () => {
  it("counts the ShareGPT sample: format, records, messages, turns, characters", async () => {
    const r = await runCli(["data", "stats", SHAREGPT]);
    expectOk(r);
    expect(r.stdout).toMatch(/^format +sharegpt \(detected\)$/m);
    expect(r.stdout).toMatch(/^records +500$/m);
    expect(r.stdout).toMatch(/^messages +2000: 0 system, 1000 user, 1000 assistant$/m);
    expect(r.stdout).toMatch(/^turns +per record: mean 2, max 3 /m);
    expect(r.stdout).toMatch(
      /^characters +per record: mean [\d.]+, p50 \d+, p90 \d+, p95 \d+, p99 \d+, max 305$/m,
    );
    expect(r.stdout).not.toMatch(/^tokens/m);
  });

  it("--json on the Alpaca seeds", async () => {
    const r = await runCli(["data", "stats", SEEDS, "--json"]);
    expectOk(r);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({
      format: "alpaca",
      detected: true,
      records: 175,
      skipped: { total: 0, byReason: {} },
      messages: { system: 0, user: 175, assistant: 175 },
      turns: { mean: 1, max: 1 },
      tokens: null,
      maxLength: null,
    });
  });

  it("--tokenizer: token lengths, trained tokens and what a maximum length cuts, as the library counts them", async () => {
    const r = await runCli([
      "data",
      "stats",
      SHAREGPT,
      "--tokenizer",
      vocab,
      "--template",
      "chatml",
      "--max-length",
      "64",
      "--json",
    ]);
    expectOk(r);
    const j = JSON.parse(r.stdout);
    const tokenizer = readTokenizerFile(vocab).tokenizer;
    const examples = await tokenizeRecords(await RecordReader.open(SHAREGPT), {
      tokenizer,
      template: { name: "chatml" },
    });
    const lengths = examples.map((e) => e.ids.length).sort((a, b) => a - b);
    const fits = examples.map((e) => fitExample(e, 64));
    expect(j.template).toBe("chatml");
    expect(j.maxLength).toBe(64);
    expect(j.tokens.total).toBe(lengths.reduce((a, b) => a + b, 0));
    expect(j.tokens.trained).toBe(examples.reduce((n, e) => n + e.lossMask.reduce((a, b) => a + b, 0), 0));
    expect(j.tokens.max).toBe(lengths[lengths.length - 1]);
    expect(j.tokens.p50).toBe(lengths[249]);
    expect(j.truncated).toBe(fits.filter((f) => f.truncated).length);
    expect(j.truncated).toBeGreaterThan(0);
    expect(j.dropped).toBe(fits.filter((f) => f.example === undefined).length);
    expect(j.trainedTokensCut).toBe(fits.reduce((n, f) => n + f.trainedCut, 0));

    // Text output; the default maximum length is the file's context length (128).
    const text = await runCli(["data", "stats", SHAREGPT, "--tokenizer", vocab, "--template", "chatml"]);
    expectOk(text);
    expect(text.stdout).toMatch(/^tokens +per record: mean [\d.]+, p50 \d+, /m);
    expect(text.stdout).toMatch(/^ +total \d+, trained on \d+ \([\d.]+%\), template chatml$/m);
    expect(text.stdout).toMatch(/^max length +128: \d+ records \([\d.]+%\) longer, cut; \d+ dropped/m);
  });

  it("the file's own chat template is used when --template is absent; without one, --template is asked for", async () => {
    const r = await runCli(["data", "stats", SEEDS, "--tokenizer", vocabWithTemplate, "--json"]);
    expectOk(r);
    expect(JSON.parse(r.stdout).template).toBe("model file");
    expectUserError(
      await runCli(["data", "stats", SEEDS, "--tokenizer", vocab]),
      /has no chat template .*--template/,
    );
  });

  it("a bad record stops with one line naming file:line, field and problem, exit 2", async () => {
    const path = file(
      "bad.jsonl",
      [ALPACA_OK, ALPACA_OK, JSON.stringify({ instruction: "x" }), ALPACA_OK].join("\n"),
    );
    expectUserError(await runCli(["data", "stats", path]), `${path}:3: field output: missing`);
    const array = file(
      "bad.json",
      JSON.stringify([
        {
          conversations: [
            { from: "human", value: "a" },
            { from: "gpt", value: "b" },
          ],
        },
        {
          conversations: [
            { from: "human", value: "a" },
            { from: "robot", value: "b" },
          ],
        },
      ]),
    );
    expectUserError(
      await runCli(["data", "stats", array]),
      `${array}:1 (array index 1): field conversations[1].from: "robot" is not one of human, gpt, system`,
    );
  });

  it("--skip-invalid goes on and counts the skipped records by reason", async () => {
    const path = file(
      "mixed.jsonl",
      [
        ALPACA_OK,
        "{oops",
        JSON.stringify({ instruction: "x" }),
        ALPACA_OK,
        JSON.stringify({ instruction: "y", output: 1 }),
        JSON.stringify({ instruction: "z" }),
      ].join("\n"),
    );
    const r = await runCli(["data", "stats", path, "--skip-invalid"]);
    expectOk(r);
    expect(r.stdout).toMatch(/^records +2$/m);
    expect(r.stdout).toMatch(/^skipped +4: missing field 2, invalid JSON 1, wrong type 1$/m);
    const j = JSON.parse((await runCli(["data", "stats", path, "--skip-invalid", "--json"])).stdout);
    expect(j.skipped).toEqual({
      total: 4,
      byReason: { "invalid JSON": 1, "missing field": 2, "wrong type": 1 },
    });
  });

  it("flag mistakes are one-line errors", async () => {
    expectUserError(
      await runCli(["data", "stats", SEEDS, "--format", "csv"]),
      /unknown dataset format "csv"; valid formats: alpaca, sharegpt, messages, completion/,
    );
    expectUserError(
      await runCli(["data", "stats", SEEDS, "--format", "sharegpt"]),
      `${SEEDS}:1: field conversations: missing`,
    );
    expectUserError(
      await runCli(["data", "stats", SEEDS, "--max-length", "64"]),
      /--max-length needs --tokenizer/,
    );
    expectUserError(
      await runCli(["data", "stats", SEEDS, "--tokenizer", SEEDS]),
      new RegExp(`^smallhammer: ${SEEDS}`),
    );
    expectUserError(
      await runCli(["data", "stats", join(dir, "absent.jsonl")]),
      /absent\.jsonl: cannot read the file/,
    );
    expectUserError(
      await runCli(["data", "stats", SEEDS, "--tokenizer", vocab, "--template", "nope"]),
      /unknown chat template "nope"/,
    );
  });
});

describe("data preview", () => {
  it("prints the first records token by token; the marks removed, it is the text the model sees", async () => {
    const r = await runCli([
      "data",
      "preview",
      SEEDS,
      "--tokenizer",
      vocab,
      "--template",
      "alpaca",
      "-n",
      "2",
    ]);
    expectOk(r);
    const out = r.stdout;
    expect(out).toContain(`${SEEDS}: alpaca (detected); tokenizer ${vocab} (llama, `);
    expect(out).toContain("template alpaca");
    const headers = [...out.matchAll(/^── (.+): (\d+) tokens, (\d+) trained on ──$/gm)];
    expect(headers.map((h) => h[1])).toEqual([`${SEEDS}:1`, `${SEEDS}:2`]);
    const first = out.slice(
      out.indexOf(headers[0]![0]) + headers[0]![0].length + 1,
      out.indexOf(headers[1]![0]) - 1,
    );
    const seed = JSON.parse(readFileSync(SEEDS, "utf8").split("\n")[0]!);
    const rendered = renderChat(
      [
        { role: "user", content: seed.instruction },
        { role: "assistant", content: seed.instances[0].output },
      ],
      { name: "alpaca", bosToken: "<s>", eosToken: "</s>", addGenerationPrompt: false },
    );
    const unmarked = first
      .replace(/\n$/, "")
      .replaceAll("·", "")
      .replaceAll("⟦", "")
      .replaceAll("⟧", "")
      .replaceAll("↵\n", "\n");
    // SentencePiece's space prefix shows as the first text token's leading space.
    expect(unmarked).toBe(`<s> ${rendered}`);
    // Exactly one trained run: the output and its end token.
    const runs = [...first.matchAll(/⟦([^⟧]*)⟧/g)].map((m) => m[1]!.replaceAll("·", ""));
    expect(runs).toEqual([`${seed.instances[0].output}</s>`]);
    expect(Number(headers[0]![3])).toBeGreaterThan(10);
  });

  it("uses the file's chat template, shows completion records as plain text, and skips invalid records on request", async () => {
    const r = await runCli(["data", "preview", SHAREGPT, "--tokenizer", vocabWithTemplate, "-n", "1"]);
    expectOk(r);
    expect(r.stdout).toContain("template model file");
    expect(r.stdout).toContain("⟦I·");
    const completion = file(
      "completion.jsonl",
      [
        JSON.stringify({ prompt: "To be", completion: " or not" }),
        "{broken",
        JSON.stringify({ prompt: "a", completion: "b" }),
      ].join("\n"),
    );
    const c = await runCli([
      "data",
      "preview",
      completion,
      "--tokenizer",
      vocab,
      "--skip-invalid",
      "-n",
      "5",
    ]);
    expectOk(c);
    expect(c.stdout).toContain("template none (plain text)");
    expect(c.stdout).toMatch(
      /── .*completion\.jsonl:1: \d+ tokens, \d+ trained on ──\n<s>·[^\n]*⟦[^\n]*or[^\n]*·<\/s>⟧\n/,
    );
    expect(c.stdout).toContain("skipped 1: invalid JSON 1");
    expectUserError(
      await runCli(["data", "preview", completion, "--tokenizer", vocab]),
      new RegExp(`${completion}:2: invalid JSON`),
    );
  });

  it("--tokenizer is required", async () => {
    expectUserError(await runCli(["data", "preview", SEEDS]), /--tokenizer <model>' not specified/);
  });

  it("on a terminal, trained-on tokens are colored instead of bracketed", () => {
    const tokenizer = readTokenizerFile(vocab).tokenizer;
    const ids = tokenizer.encode("Hello there");
    const example = {
      ids: Int32Array.from(ids),
      lossMask: Uint8Array.from(ids.map((_, i) => (i >= 2 ? 1 : 0))),
    };
    const colored = renderExample(tokenizer, example, true);
    expect(colored).toContain("\u001b[1;32m");
    expect(colored).not.toContain("⟦");
    const plain = renderExample(tokenizer, example, false);
    expect(plain).not.toContain("\u001b[");
    expect(plain.replace(/[·⟦⟧]/g, "")).toBe(`<s> Hello there\n`);
  });

  it("renders exactly as the token-by-token string building it replaces", () => {
    const tokenizer = readTokenizerFile(vocab).tokenizer;
    const texts = ["Hello there", "To be,\nor not\n\nto be:\tthat is the question.\n", "\n", "é ü ☃ 😀 x"];
    let compared = 0;
    for (const text of texts) {
      const ids = tokenizer.encode(text);
      const masks = [
        ids.map(() => 0),
        ids.map(() => 1),
        ids.map((_, i) => (i % 3 === 1 ? 1 : 0)),
        ids.map((_, i) => (i >= ids.length >> 1 ? 1 : 0)),
      ];
      for (const mask of masks) {
        const example = { ids: Int32Array.from(ids), lossMask: Uint8Array.from(mask) };
        for (const color of [false, true]) {
          expect(renderExample(tokenizer, example, color)).toBe(renderByAppending(tokenizer, example, color));
          compared++;
        }
      }
    }
    const empty = { ids: new Int32Array(0), lossMask: new Uint8Array(0) };
    expect(renderExample(tokenizer, empty, false)).toBe(renderByAppending(tokenizer, empty, false));
    expect(compared).toBe(32);
  });

  it("previews a 1 MB record in seconds: the time grows with the record, not its square", async () => {
    const words = "the king spoke to the people of the city\nand they listened to every word he said".split(
      " ",
    );
    const parts: string[] = [];
    let length = 0;
    for (let i = 0; length < 1_000_000; i++) {
      const word = words[i % words.length]!;
      parts.push(word);
      length += word.length + 1;
    }
    const output = parts.join(" ");
    const path = file("long-record.jsonl", `${JSON.stringify({ instruction: "Tell it all.", output })}\n`);
    const started = performance.now();
    const r = await runCli([
      "data",
      "preview",
      path,
      "--tokenizer",
      vocab,
      "--template",
      "alpaca",
      "-n",
      "1",
    ]);
    const seconds = (performance.now() - started) / 1000;
    expectOk(r);
    const header = /── .*long-record\.jsonl:1: (\d+) tokens, (\d+) trained on ──\n/.exec(r.stdout);
    expect(header).not.toBeNull();
    expect(Number(header![1])).toBeGreaterThan(100_000);
    // Every token is shown: the text comes back whole once the marks are taken out.
    const body = r.stdout.slice(header!.index + header![0].length);
    expect(body.replace(/[·⟦⟧]/g, "").replaceAll("↵\n", "\n")).toContain(output);
    // A generous bound (the issue asked for about a second); the old rendering took minutes.
    expect(seconds).toBeLessThan(5);
  });
});

/**
 * The rendering data preview had before it was made linear, kept as the reference: it appends to
 * one string and asks it for its last character at every token.
 */
function renderByAppending(
  tok: ReturnType<typeof readTokenizerFile>["tokenizer"],
  example: { ids: Int32Array; lossMask: Uint8Array },
  color: boolean,
): string {
  const green = (s: string) => `\u001b[1;32m${s}\u001b[0m`;
  const dim = (s: string) => `\u001b[2m${s}\u001b[0m`;
  let out = "";
  let open = false;
  for (let i = 0; i < example.ids.length; i++) {
    const trained = example.lossMask[i] === 1;
    if (open && !trained) {
      out += "⟧";
      open = false;
    }
    if (i > 0 && !out.endsWith("\n")) out += color ? dim("·") : "·";
    if (!color && trained && !open) {
      out += "⟦";
      open = true;
    }
    const label = tokenLabel(tok, example.ids[i]!);
    out +=
      color && trained
        ? label
            .split("\n")
            .map((s) => (s ? green(s) : s))
            .join("\n")
        : label;
  }
  if (open) out += "⟧";
  return out.endsWith("\n") ? out : `${out}\n`;
}
