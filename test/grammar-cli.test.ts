/**
 * --grammar and --json-schema on `generate` and `chat`, and the library's generate/chat with a
 * grammar or a schema, on a random-weight model: the text follows them, and a bad file is one line.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { GrammarAutomaton, parseGbnf } from "../src/model/grammar/index.js";
import { loadModel } from "../src/model/model.js";
import { ensureBuilt, expectOk, expectUserError, runCli } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

const Pet = z.object({ name: z.string().max(6), legs: z.number().int().min(0).max(8), cat: z.boolean() });
const GRAMMAR = 'root ::= "I count " [1-9] [0-9]? " " ("apples" | "pears") "."';

let dir: string;
let model: string;
beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-grammar-cli-"));
  model = join(dir, "tiny.gguf");
  writeTinyLlama(model, {
    dim: 32,
    layers: 1,
    heads: 2,
    contextLength: 1024,
    controlTokens: ["<|im_start|>", "<|im_end|>"],
  });
  writeFileSync(join(dir, "pet.json"), JSON.stringify(z.toJSONSchema(Pet)));
  writeFileSync(join(dir, "count.gbnf"), GRAMMAR);
  writeFileSync(join(dir, "bad.gbnf"), 'root ::= "a" | b\n');
  writeFileSync(join(dir, "bad.json"), JSON.stringify({ type: "object", properties: { a: { not: {} } } }));
  writeFileSync(join(dir, "broken.json"), "{");
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("CLI", () => {
  it("generate --json-schema writes JSON the schema accepts; --grammar text the grammar accepts", async () => {
    const r = await runCli([
      "generate",
      "-m",
      model,
      "-p",
      "A pet:",
      "--json-schema",
      join(dir, "pet.json"),
      "--seed",
      "1",
      "-n",
      "500",
      "--json",
    ]);
    expectOk(r);
    const out = JSON.parse(r.stdout);
    expect(out.finishReason).toBe("stop");
    expect(Pet.safeParse(JSON.parse(out.text)).success, out.text).toBe(true);
    const g = await runCli([
      "generate",
      "-m",
      model,
      "-p",
      "Fruit:",
      "--grammar",
      join(dir, "count.gbnf"),
      "--seed",
      "2",
      "--json",
    ]);
    expectOk(g);
    expect(new GrammarAutomaton(parseGbnf(GRAMMAR)).accepts(JSON.parse(g.stdout).text)).toBe(true);
  });

  it("chat --json-schema answers each message with JSON the schema accepts", async () => {
    const r = await runCli(
      ["chat", "-m", model, "--template", "chatml", "--json-schema", join(dir, "pet.json"), "--seed", "3"],
      {
        input: "a pet\nanother\n",
      },
    );
    expect(r.status).toBe(0);
    // Each reply follows the "> " prompt (and may span lines: JSON whitespace).
    const replies = r.stdout
      .split("\n> ")
      .slice(1)
      .map((t) => t.trim());
    expect(replies.length).toBe(2);
    for (const reply of replies) expect(Pet.safeParse(JSON.parse(reply)).success, reply).toBe(true);
  });

  it("refuses a bad grammar or schema in one line, exit 2", async () => {
    expectUserError(
      await runCli(["generate", "-m", model, "-p", "x", "--grammar", join(dir, "bad.gbnf")]),
      'rule "b" is used but never defined',
    );
    expectUserError(
      await runCli(["generate", "-m", model, "-p", "x", "--json-schema", join(dir, "bad.json")]),
      'the keyword "not"',
    );
    expectUserError(
      await runCli(["generate", "-m", model, "-p", "x", "--json-schema", join(dir, "broken.json")]),
      "not JSON",
    );
    expectUserError(
      await runCli(["chat", "-m", model, "--grammar", join(dir, "missing.gbnf")]),
      "no such file",
    );
    expectUserError(
      await runCli([
        "generate",
        "-m",
        model,
        "-p",
        "x",
        "--grammar",
        join(dir, "count.gbnf"),
        "--json-schema",
        join(dir, "pet.json"),
      ]),
      "either --grammar or --json-schema",
    );
  });
});

describe("library", () => {
  it("generate(prompt, { grammar }) and chat(messages, { jsonSchema }) follow them and end there", async () => {
    const m = await loadModel(model, { threads: 1, template: "chatml" });
    try {
      let text = "";
      let reason = "";
      for await (const piece of m.generate("Fruit:", {
        grammar: GRAMMAR,
        seed: 5,
        maxTokens: 200,
        onDone: (i) => (reason = i.finishReason),
      }))
        text += piece;
      expect(new GrammarAutomaton(parseGbnf(GRAMMAR)).accepts(text), text).toBe(true);
      expect(reason).toBe("stop");
      let json = "";
      for await (const piece of m.chat([{ role: "user", content: "A pet?" }], {
        jsonSchema: z.toJSONSchema(Pet),
        seed: 6,
        maxTokens: 500,
      }))
        json += piece;
      expect(Pet.safeParse(JSON.parse(json)).success, json).toBe(true);
      await expect(async () => {
        for await (const _ of m.generate("x", { grammar: "root ::= root" })) {
          /* refused before any text */
        }
      }).rejects.toThrow(/left-recursive/);
    } finally {
      await m.dispose();
    }
  });
});
