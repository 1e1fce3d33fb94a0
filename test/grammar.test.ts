/**
 * Grammars: the GBNF parser and its bounds on hostile input, JSON Schema to grammar (texts the
 * grammar writes validate against the schema with zod; texts the schema refuses, the grammar
 * refuses), regular-expression patterns, and the token-level constraint over real vocabularies
 * (SentencePiece with byte fallback, byte-level BPE), driven by random logits.
 */
import { describe, expect, it } from "vitest";
import { z } from "zod";
import {
  createConstraint,
  GrammarAutomaton,
  GrammarError,
  jsonSchemaToGbnf,
  parseGbnf,
} from "../src/model/grammar/index.js";
import { Sampler } from "../src/model/sampler.js";
import type { Tokenizer } from "../src/tokenizer/index.js";
import { Rng } from "../src/util/random.js";
import { bpeTokenizer, spmTokenizer } from "./helpers/shakespeare-vocab.js";

// The vocabularies are learned when asked for (seconds): once for the file.
let tokenizers: { spm: Tokenizer; bpe: Tokenizer } | undefined;
const vocab = () => (tokenizers ??= { spm: spmTokenizer(), bpe: bpeTokenizer() });

const automaton = (g: string) => new GrammarAutomaton(parseGbnf(g));
const schemaAutomaton = (s: unknown) => automaton(jsonSchemaToGbnf(s));

/**
 * Generates with a constraint over `tokenizer` from random logits: each step draws from the
 * allowed tokens; returns the text and whether the grammar completed (only end allowed, or an
 * end-of-generation token drawn).
 */
function randomSentence(tokenizer: Tokenizer, grammar: string, seed: number, maxTokens = 400) {
  const constraint = createConstraint(tokenizer, { grammar })!;
  const sampler = new Sampler({ seed, temperature: 1, topK: 0, topP: 1, minP: 0 });
  const rng = new Rng(seed);
  const logits = new Float32Array(tokenizer.vocabSize);
  const ids: number[] = [];
  for (let i = 0; i < maxTokens; i++) {
    if (constraint.done) return { text: tokenizer.decode(ids), complete: true };
    rng.fillNormal(logits, 3);
    // End of text is likely once allowed, so that sentences stay short.
    for (const e of tokenizer.eogTokenIds) logits[e] = 8;
    const id = sampler.sample(logits, [], constraint);
    if (tokenizer.isEog(id)) return { text: tokenizer.decode(ids), complete: constraint.complete };
    constraint.accept(id);
    ids.push(id);
  }
  return { text: tokenizer.decode(ids), complete: false };
}

describe("GBNF parser", () => {
  it("reads rules, groups, repetitions, classes, escapes and comments", () => {
    const a = automaton(String.raw`# a comment
root ::= greeting (", " name){1,2} "!"? tail # trailing comment
greeting ::= "hi" | "hello"
name ::= [A-Z] [a-z]* | "\u00e9\x41\t\\"
tail ::= [^0-9\n]{0,3}
`);
    expect(a.accepts("hi, Bob")).toBe(true);
    expect(a.accepts("hello, Ann, Eve!xyz")).toBe(true);
    expect(a.accepts("hello, éA\t\\")).toBe(true);
    expect(a.accepts("hi")).toBe(false);
    expect(a.accepts("hi, Bob, Ann, Eve")).toBe(false);
    expect(a.accepts("hi, Bob1")).toBe(false);
  });

  it("gives parse errors in one line with their place", () => {
    const cases: [string, RegExp][] = [
      ['root ::= "abc', /line 1, column \d+: unterminated string literal/],
      ["root ::= a\nb ::= [x", /line 2, column \d+: unterminated character class/],
      ["root ::= undefined", /rule "undefined" is used but never defined/],
      ['root ::= "a"\nroot2 = "b"', /line 2, column 7: expecting "::="/],
      ['start ::= "a"', /no "root" rule/],
      ['root ::= "\\q"', /unknown escape \\q/],
      ["root ::= <[12]>", /token references/],
      ['root ::= * "a"', /follows nothing/],
      ['root ::= "a"{3,1}', /bounds reversed/],
    ];
    for (const [g, message] of cases) {
      expect(() => parseGbnf(g), g).toThrow(GrammarError);
      expect(() => parseGbnf(g), g).toThrow(message);
      try {
        parseGbnf(g);
      } catch (e) {
        expect((e as Error).message).not.toContain("\n");
      }
    }
  });

  it("refuses hostile grammars in one line, without a hang or a stack overflow", () => {
    expect(() => parseGbnf('root ::= a\na ::= b "x"\nb ::= "" | a')).toThrow(/left-recursive/);
    expect(() => parseGbnf(`root ::= ${"(".repeat(5000)}"a"${")".repeat(5000)}`)).toThrow(/nest deeper/);
    expect(() => parseGbnf('root ::= "a"{1000000}')).toThrow(/over the limit/);
    expect(() => parseGbnf(`root ::= ${Array(300).fill('"abcd"{2000}').join(" ")}`)).toThrow(/elements/);
    expect(() => parseGbnf(`root ::= "${"a".repeat(2 << 20)}"`)).toThrow(/characters/);
    // So ambiguous that the open parses multiply: refused once they pass the bound.
    const ambiguous = automaton('root ::= "a" root "b" | "a" root "c" | ""');
    expect(() => ambiguous.walk("a".repeat(40))).toThrow(/too ambiguous/);
  });

  it("matches deep non-tail recursion without growing the JavaScript stack", () => {
    const a = automaton('root ::= "(" root ")" | "x"');
    const depth = 20_000;
    expect(a.accepts(`${"(".repeat(depth)}x${")".repeat(depth)}`)).toBe(true);
    expect(a.accepts(`${"(".repeat(depth)}x${")".repeat(depth - 1)}`)).toBe(false);
  });

  it("reads characters split across UTF-8 bytes", () => {
    const a = automaton('root ::= [α-ω]+ "😀"');
    const bytes = new TextEncoder().encode("αβω😀");
    let state = a.start() as ReturnType<GrammarAutomaton["start"]> | null;
    for (const b of bytes) state = state && a.step(state, b);
    expect(state?.complete).toBe(true);
    expect(a.walk(Uint8Array.of(0xce))).not.toBeNull(); // the first byte of α..ω
    expect(a.walk(Uint8Array.of(0xd0))).toBeNull(); // Cyrillic cannot become [α-ω]
    expect(a.walk(Uint8Array.of(0xff))).toBeNull(); // never UTF-8
  });

  it("never lets a generation start a surrogate, which no byte could finish", () => {
    // JSON's string class [^"\\] covers U+D800..U+DFFF; ED A0 would begin one of those.
    const a = automaton('root ::= "\\"" [^"\\\\]* "\\""');
    expect(a.walk(Uint8Array.of(0x22, 0xed))).not.toBeNull(); // ED 80..9F: U+D000..U+D7FF
    expect(a.walk(Uint8Array.of(0x22, 0xed, 0x9f, 0xbf))).not.toBeNull(); // U+D7FF
    expect(a.walk(Uint8Array.of(0x22, 0xed, 0xa0))).toBeNull();
    expect(a.walk(Uint8Array.of(0x22, 0xed, 0xbf))).toBeNull();
    expect(a.walk(Uint8Array.of(0x22, 0xee, 0x80, 0x80))).not.toBeNull(); // U+E000
    // F4 90 and above would pass U+10FFFF: a class that matches only the planes below refuses F4.
    const bmp = automaton('root ::= "\\"" [^"\\\\\\U00010000-\\U0010FFFF]* "\\""');
    expect(bmp.walk(Uint8Array.of(0x22, 0xf4))).toBeNull();
    expect(a.walk(Uint8Array.of(0x22, 0xf4, 0x8f, 0xbf, 0xbf))).not.toBeNull(); // U+10FFFF
    expect(a.walk(Uint8Array.of(0x22, 0xf4, 0x90))).toBeNull();
  });
});

describe("JSON Schema to grammar", () => {
  const person = z.strictObject({
    name: z.string().max(8),
    age: z.number().int().min(0).max(130),
    email: z.string().email().optional(),
    kind: z.enum(["admin", "user"]),
    tags: z.array(z.string().max(3)).max(3),
    nested: z.object({ ok: z.boolean(), score: z.number().nullable() }),
    when: z.iso.date(),
    id: z.uuid().optional(),
    level: z.union([z.literal(1), z.literal(2), z.literal("three")]),
  });

  it("writes only texts that validate (zod), over SentencePiece and byte-level vocabularies", () => {
    // Without the e-mail address, whose pattern has no length bound: every value has one.
    const bounded = person.omit({ email: true });
    const grammar = jsonSchemaToGbnf(z.toJSONSchema(bounded));
    for (const tokenizer of [vocab().spm, vocab().bpe]) {
      let complete = 0;
      for (let seed = 1; seed <= 12; seed++) {
        const { text, complete: done } = randomSentence(tokenizer, grammar, seed, 1500);
        if (!done) continue;
        complete++;
        const parsed = bounded.safeParse(JSON.parse(text));
        expect(parsed.success, `${text}\n${parsed.error?.message}`).toBe(true);
      }
      expect(complete).toBeGreaterThanOrEqual(10);
    }
  });

  it("bounds a string's length in characters that JavaScript counts as one", () => {
    const bounded = z.string().min(2).max(3);
    const a = schemaAutomaton(z.toJSONSchema(bounded));
    for (const s of ["ab", "abc", "éßж", "€\\u00e9", 'a\\"']) expect(a.accepts(`"${s}"`), s).toBe(true);
    // Beyond U+FFFF (one code point, two UTF-16 units), as a character or as a surrogate escape.
    for (const s of ["a😀", "a\\ud83d\\ude00", "abcd", "a"]) expect(a.accepts(`"${s}"`), s).toBe(false);
    for (const s of ["ab", "éßж"]) expect(bounded.safeParse(s).success).toBe(true);
    // An unbounded string takes any character.
    expect(schemaAutomaton({ type: "string" }).accepts('"a😀\\ud83d\\ude00"')).toBe(true);
  });

  it("accepts what the schema accepts and refuses what it refuses", () => {
    const a = schemaAutomaton(z.toJSONSchema(person));
    const ok = {
      name: "Ann",
      age: 130,
      kind: "admin",
      tags: ["a", "bc"],
      nested: { ok: true, score: null },
      when: "2024-02-29",
      level: "three",
    };
    expect(a.accepts(JSON.stringify(ok))).toBe(true);
    expect(a.accepts(JSON.stringify(ok, null, 2))).toBe(true);
    // Properties come in the schema's order.
    const { kind, tags, nested, when, level, ...first } = ok;
    const all = {
      ...first,
      email: "a.b@example.org",
      kind,
      tags,
      nested,
      when,
      id: crypto.randomUUID(),
      level,
    };
    expect(a.accepts(JSON.stringify(all))).toBe(true);
    expect(
      a.accepts(JSON.stringify({ ...all, name: undefined, name2: "Ann" }).replace('"name2"', '"name"')),
    ).toBe(false);
    const bad = [
      { ...ok, age: 131 },
      { ...ok, age: -1 },
      { ...ok, age: 1.5 },
      { ...ok, name: "a name too long" },
      { ...ok, kind: "root" },
      { ...ok, tags: ["a", "b", "c", "d"] },
      { ...ok, tags: ["abcd"] },
      { ...ok, nested: { ok: true } },
      { ...ok, when: "2023-02-29" },
      { ...ok, email: "not an email" },
      { ...ok, extra: 1 },
      { ...ok, level: 3 },
      (({ name: _, ...rest }) => rest)(ok),
    ];
    for (const b of bad) {
      expect(person.safeParse(b).success, JSON.stringify(b)).toBe(false);
      expect(a.accepts(JSON.stringify(b)), JSON.stringify(b)).toBe(false);
    }
    expect(a.accepts(`${JSON.stringify(ok)} `)).toBe(false); // nothing after the value
  });

  it("follows $ref and $defs, recursion, optional properties, tuples and maps", () => {
    const tree = schemaAutomaton({
      $defs: {
        node: {
          type: "object",
          properties: {
            v: { type: "integer" },
            kids: { type: "array", items: { $ref: "#/$defs/node" }, maxItems: 2 },
          },
          required: ["v"],
        },
      },
      $ref: "#/$defs/node",
    });
    expect(tree.accepts('{"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": []}]}')).toBe(true);
    expect(tree.accepts('{"kids": []}')).toBe(false);
    expect(tree.accepts('{"v": 1, "kids": [{"v": 2}, {"v": 3}, {"v": 4}]}')).toBe(false);

    const optional = schemaAutomaton({
      type: "object",
      properties: { a: { type: "integer" }, b: { type: "string" }, c: { type: "boolean" } },
      additionalProperties: false,
    });
    for (const t of ["{}", '{"b": "x"}', '{"a": 1, "c": true}', '{"c": false}'])
      expect(optional.accepts(t), t).toBe(true);
    for (const t of ['{"c": true, "a": 1}', '{,"b": "x"}', '{"a": 1,}'])
      expect(optional.accepts(t), t).toBe(false);

    const tuple = schemaAutomaton({ type: "array", prefixItems: [{ type: "string" }, { const: 7 }] });
    expect(tuple.accepts('["x", 7]')).toBe(true);
    expect(tuple.accepts('["x", 8]')).toBe(false);

    const map = schemaAutomaton(z.toJSONSchema(z.record(z.string(), z.number().int())));
    expect(map.accepts('{"a": 1, "b": -2}')).toBe(true);
    expect(map.accepts('{"a": "x"}')).toBe(false);
  });

  it("writes integer ranges exactly", () => {
    const ranges: [number | undefined, number | undefined][] = [
      [0, 9],
      [7, 123],
      [-15, 15],
      [-120, -7],
      [100, undefined],
      [undefined, -3],
      [5, 5],
    ];
    for (const [lo, hi] of ranges) {
      const a = schemaAutomaton({ type: "integer", minimum: lo, maximum: hi });
      for (let v = -200; v <= 200; v++) {
        const inside = (lo === undefined || v >= lo) && (hi === undefined || v <= hi);
        expect(a.accepts(String(v)), `${v} in [${lo}, ${hi}]`).toBe(inside);
      }
      expect(a.accepts("007")).toBe(false);
    }
    const exclusive = schemaAutomaton({ type: "integer", exclusiveMinimum: 0, exclusiveMaximum: 10 });
    expect(["0", "1", "9", "10"].map((t) => exclusive.accepts(t))).toEqual([false, true, true, false]);
  });

  it("turns patterns into grammar, escaping what JSON escapes", () => {
    const a = schemaAutomaton({ type: "string", pattern: '^[A-Z]{2}-\\d{3}(x|"y)?$' });
    expect(a.accepts('"AB-123"')).toBe(true);
    expect(a.accepts('"AB-123x"')).toBe(true);
    expect(a.accepts('"AB-123\\"y"')).toBe(true);
    expect(a.accepts('"AB-12"')).toBe(false);
    expect(a.accepts('"ab-123"')).toBe(false);
    const unanchored = schemaAutomaton({ type: "string", pattern: "ab+" });
    expect(unanchored.accepts('"xxabbby"')).toBe(true);
    expect(unanchored.accepts('"xxay"')).toBe(false);
    expect(() => jsonSchemaToGbnf({ type: "string", pattern: "(?=a)b" })).toThrow(/look-arounds/);
    expect(() => jsonSchemaToGbnf({ type: "string", pattern: "(a)\\1" })).toThrow(/\\1 is not supported/);
  });

  it("refuses what it cannot follow, naming the keyword and where it is", () => {
    const cases: [unknown, RegExp][] = [
      [
        { type: "object", properties: { a: { not: { type: "string" } } } },
        /#\/properties\/a: the keyword "not"/,
      ],
      [{ type: "array", uniqueItems: true }, /uniqueItems/],
      [{ type: "number", multipleOf: 2 }, /multipleOf/],
      [{ type: "number", minimum: 1.5 }, /bounds on "number"/],
      [{ $ref: "https://example.org/s.json" }, /only references into the same schema/],
      [{ $ref: "#/$defs/missing" }, /points at nothing/],
      [{ allOf: [{ type: "string" }, { maxLength: 3 }] }, /allOf/],
      [{ type: "date" }, /unknown type "date"/],
      [false, /accepts no value/],
    ];
    for (const [schema, message] of cases)
      expect(() => jsonSchemaToGbnf(schema), JSON.stringify(schema)).toThrow(message);
  });

  it("refuses an enormous or too deeply nested schema", () => {
    let deep: unknown = { type: "string" };
    for (let i = 0; i < 100; i++) deep = { type: "array", items: deep };
    expect(() => jsonSchemaToGbnf(deep)).toThrow(/nest deeper than 64/);
    const wide = {
      type: "object",
      properties: Object.fromEntries(
        Array.from({ length: 6000 }, (_, i) => [`p${i}`, { type: "integer", minimum: i }]),
      ),
    };
    expect(() => jsonSchemaToGbnf(wide)).toThrow(/more than 10000 grammar rules/);
  });
});

describe("token constraint", () => {
  it("allows only tokens that continue the grammar, and end only when it is complete", () => {
    const tokenizer = vocab().spm;
    const constraint = createConstraint(tokenizer, { grammar: 'root ::= "the king" [.!]' })!;
    const eos = tokenizer.eosId!;
    expect(constraint.allows(eos)).toBe(false);
    const logits = new Float32Array(tokenizer.vocabSize);
    constraint.mask(logits);
    for (let id = 0; id < logits.length; id++) {
      if (logits[id] === 0)
        expect(
          "the king.".startsWith(tokenizer.decode([id], { skipSpecial: true }).trimStart()) ||
            tokenizer.decode([id]).length === 1,
        ).toBe(true);
    }
    for (const id of tokenizer.encode("the king", { addSpecial: false, continuation: true }))
      constraint.accept(id);
    expect(constraint.done).toBe(false);
    expect(() => constraint.accept(tokenizer.encode("?", { addSpecial: false }).at(-1)!)).toThrow(
      GrammarError,
    );
    constraint.accept(tokenizer.encode("!", { addSpecial: false }).at(-1)!);
    expect(constraint.done).toBe(true);
  });

  it("starts constraining at a trigger (lazy grammar)", () => {
    const tokenizer = vocab().spm;
    const c = createConstraint(tokenizer, {
      grammar: 'root ::= "<call>" [0-9]',
      grammarTriggers: ["<call>"],
    })!;
    const ids = (t: string) => tokenizer.encode(t, { addSpecial: false });
    for (const id of ids("anything at all")) {
      expect(c.allows(id)).toBe(true);
      c.accept(id);
    }
    for (const id of ids(" <call>")) c.accept(id);
    expect(c.allows(ids("x").at(-1)!)).toBe(false);
    expect(c.done).toBe(false);
  });
});
