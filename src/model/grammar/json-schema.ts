/**
 * JSON Schema to GBNF: a grammar whose sentences are JSON texts that validate against the schema.
 *
 * Covered: type (one or a list), enum, const, object properties with required and optional ones
 * (written in the schema's order), additionalProperties (false, or a schema for objects that
 * declare no properties; otherwise only the declared properties are written), arrays with items,
 * prefixItems, minItems and maxItems, nested schemas, anyOf and oneOf (as alternatives), allOf of
 * one schema, $ref to "#" or a JSON pointer into the same document ($defs, definitions), strings
 * with minLength and maxLength, pattern (see regex.ts) or format date, time, date-time and uuid
 * (other formats are annotations, as JSON Schema defines them), integers within minimum and
 * maximum (exclusive ones too), numbers with minimum 0. A keyword that constrains values in a way
 * the grammar cannot follow (not, if, patternProperties, multipleOf, uniqueItems, ...) is refused
 * with a GrammarError naming it and where it is: the grammar never accepts more than the schema
 * silently.
 *
 * Whitespace: the grammar allows what pretty-printed JSON has between tokens (a space, or one or
 * two line breaks and up to 20 spaces or tabs of indentation, as llama.cpp's converter allows)
 * and none after the whole value, so generation ends as soon as the value is complete. Numbers
 * have at most 16 integer digits, as llama.cpp's have, so that no value is endless.
 */
import { GrammarError } from "./gbnf.js";
import { classChar, regexToGbnf } from "./regex.js";

export type JsonSchema = boolean | { [keyword: string]: unknown };

const LIMITS = { depth: 64, rules: 10_000, enumValues: 10_000 };

const PRIMITIVES: Record<string, string> = {
  space: '| " " | "\\n"{1,2} [ \\t]{0,20}',
  char: '[^"\\\\\\x00-\\x1f] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
  // A character that JavaScript also counts as one: the basic plane, escapes of it included. JSON
  // Schema counts a string's length in code points, JavaScript validators such as zod in UTF-16
  // units; where a length is bounded, characters beyond U+FFFF would count differently.
  "bmp-char":
    '[^"\\\\\\x00-\\x1f\\U00010000-\\U0010FFFF] | "\\\\" (["\\\\/bfnrt] | "u" ([0-9a-cA-CeEfF] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}))',
  string: '"\\"" char* "\\""',
  integer: '"-"? ("0" | [1-9] [0-9]{0,15})',
  number: '"-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?',
  "nonnegative-number": '("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?',
  boolean: '"true" | "false"',
  null: '"null"',
  value: "object | array | string | number | boolean | null",
  object:
    '"{" space (string space ":" space value space ("," space string space ":" space value space)*)? "}"',
  array: '"[" space (value space ("," space value space)*)? "]"',
  date: '[0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [1-2] [0-9] | "3" [0-1])',
  time: '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? ("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])',
  "date-time": 'date "T" time',
  uuid: '[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12}',
};
const DEPENDS: Record<string, string[]> = {
  string: ["char"],
  value: ["object", "array", "string", "number", "boolean", "null"],
  object: ["space", "string", "value"],
  array: ["space", "value"],
  "date-time": ["date", "time"],
};
const FORMATS = new Set(["date", "time", "date-time", "uuid"]);

/** Keywords that constrain values and that the grammar cannot follow. */
const UNSUPPORTED = [
  "not",
  "if",
  "then",
  "else",
  "patternProperties",
  "dependentRequired",
  "dependentSchemas",
  "dependencies",
  "contains",
  "minContains",
  "maxContains",
  "minProperties",
  "maxProperties",
  "multipleOf",
  "unevaluatedProperties",
  "unevaluatedItems",
  "$dynamicRef",
  "$recursiveRef",
];

/** The GBNF grammar (root rule "root") of the JSON texts that validate against `schema`. */
export function jsonSchemaToGbnf(schema: unknown): string {
  return new SchemaConverter(schema).convert();
}

/**
 * GBNF rules named `name` for each schema (each its own document for $ref), with the rules they
 * use, among them `space` (the whitespace between JSON tokens), to combine into a larger grammar.
 * The names must not be "root", "space" or the JSON rules' own (string, number, value, ...).
 */
export function jsonSchemaRules(entries: readonly { name: string; schema: unknown }[]): string {
  const c = new SchemaConverter(undefined);
  const lines = entries.map(({ name, schema }) => `${name} ::= ${c.add(schema, name)}`);
  return `${[...lines, ...c.ruleLines()].join("\n")}\n`;
}

class SchemaConverter {
  private readonly rules = new Map<string, string>();
  private readonly byBody = new Map<string, string>();
  private readonly refs = new Map<string, string>();

  constructor(private root: unknown) {}

  convert(): string {
    const expr = this.visit(this.root, "#", "root", 0);
    return `${[`root ::= ${expr}`, ...this.ruleLines()].join("\n")}\n`;
  }

  /** The expression of one more document, `schema`; its rules are named after `hint`. */
  add(schema: unknown, hint: string): string {
    this.root = schema;
    this.refs.clear();
    this.primitive("space");
    return this.visit(schema, "#", `${hint}-x`, 0);
  }

  ruleLines(): string[] {
    return [...this.rules].map(([name, body]) => `${name} ::= ${body}`);
  }

  /** A rule for `body`, named after `hint`; the same body gets the same rule. */
  private rule(hint: string, body: string): string {
    const known = this.byBody.get(body);
    if (known) return known;
    const name = this.freeName(hint);
    this.rules.set(name, body);
    this.byBody.set(body, name);
    return name;
  }

  private freeName(hint: string): string {
    const base = hint.replace(/[^A-Za-z0-9-]+/g, "-").slice(0, 40) || "rule";
    let name = base;
    for (let i = 1; this.rules.has(name) || PRIMITIVES[name] !== undefined || name === "root"; i++) {
      name = `${base}-${i}`;
    }
    if (this.rules.size >= LIMITS.rules) {
      throw new GrammarError(`the JSON Schema needs more than ${LIMITS.rules} grammar rules`);
    }
    return name;
  }

  private primitive(name: string): string {
    if (!this.rules.has(name)) {
      this.rules.set(name, PRIMITIVES[name]!);
      for (const dep of DEPENDS[name] ?? []) this.primitive(dep);
    }
    return name;
  }

  /** A GBNF expression for the values `schema` (found at JSON pointer `at`) accepts. */
  private visit(schema: unknown, at: string, hint: string, depth: number): string {
    if (depth > LIMITS.depth) fail(at, `schemas nest deeper than ${LIMITS.depth} levels`);
    if (schema === true) return this.primitive("value");
    if (schema === false) fail(at, "the schema false accepts no value");
    if (schema === null || typeof schema !== "object" || Array.isArray(schema)) {
      fail(at, "a schema must be an object or a boolean");
    }
    const s = schema as Record<string, unknown>;
    for (const k of UNSUPPORTED) {
      if (s[k] !== undefined) fail(at, `the keyword "${k}" is not supported`);
    }
    if (s.uniqueItems === true) fail(at, 'the keyword "uniqueItems" is not supported');
    if (s.propertyNames !== undefined && !isPlainStringSchema(s.propertyNames)) {
      fail(at, 'the keyword "propertyNames" is supported only as {"type": "string"}');
    }

    if (typeof s.$ref === "string") return this.ref(s.$ref, at, depth);
    if (s.const !== undefined) return jsonLiteral(s.const);
    if (s.enum !== undefined) {
      if (!Array.isArray(s.enum) || s.enum.length === 0) fail(at, "enum must be a non-empty array");
      if (s.enum.length > LIMITS.enumValues) fail(at, `enum has more than ${LIMITS.enumValues} values`);
      return this.rule(hint, s.enum.map(jsonLiteral).join(" | "));
    }
    const alternatives = s.anyOf ?? s.oneOf;
    if (alternatives !== undefined) {
      const key = s.anyOf !== undefined ? "anyOf" : "oneOf";
      if (!Array.isArray(alternatives) || alternatives.length === 0) {
        fail(at, `${key} must be a non-empty array`);
      }
      const { anyOf: _a, oneOf: _o, ...rest } = s;
      const base = Object.keys(rest).some((k) => !ANNOTATIONS.has(k)) ? rest : undefined;
      const options = alternatives.map((alt, i) =>
        this.visit(
          base ? { ...base, ...(alt as object) } : alt,
          `${at}/${key}/${i}`,
          `${hint}-${i}`,
          depth + 1,
        ),
      );
      return this.rule(hint, options.join(" | "));
    }
    if (s.allOf !== undefined) {
      if (!Array.isArray(s.allOf) || s.allOf.length !== 1) {
        fail(at, 'the keyword "allOf" is supported only with one schema');
      }
      const { allOf: _all, ...rest } = s;
      return this.visit({ ...rest, ...(s.allOf[0] as object) }, `${at}/allOf/0`, hint, depth + 1);
    }

    let types = s.type;
    if (types === undefined) {
      if (s.properties !== undefined || s.additionalProperties !== undefined || s.required !== undefined) {
        types = "object";
      } else if (s.items !== undefined || s.prefixItems !== undefined) types = "array";
      else if (s.minLength !== undefined || s.maxLength !== undefined || s.pattern !== undefined) {
        types = "string";
      } else return this.primitive("value");
    }
    if (Array.isArray(types)) {
      if (types.length === 0) fail(at, "type must not be an empty list");
      const options = types.map((t) => this.typed({ ...s, type: t }, String(t), at, `${hint}-${t}`, depth));
      return this.rule(hint, options.join(" | "));
    }
    return this.typed(s, String(types), at, hint, depth);
  }

  private typed(s: Record<string, unknown>, type: string, at: string, hint: string, depth: number): string {
    switch (type) {
      case "string":
        return this.string(s, at, hint);
      case "integer":
        return this.integer(s, at, hint);
      case "number":
        return this.number(s, at);
      case "boolean":
        return this.primitive("boolean");
      case "null":
        return this.primitive("null");
      case "object":
        return this.object(s, at, hint, depth);
      case "array":
        return this.array(s, at, hint, depth);
      default:
        return fail(at, `unknown type "${type}"`);
    }
  }

  private string(s: Record<string, unknown>, at: string, hint: string): string {
    const min = count(s.minLength, at, "minLength");
    const max = s.maxLength === undefined ? -1 : count(s.maxLength, at, "maxLength");
    if (max >= 0 && max < min) fail(at, "maxLength is below minLength");
    if (typeof s.pattern === "string") {
      if (s.minLength !== undefined || s.maxLength !== undefined) {
        fail(at, "pattern together with minLength or maxLength is not supported");
      }
      this.primitive("char");
      return this.rule(hint, `"\\"" ${regexToGbnf(s.pattern, "char")} "\\""`);
    }
    if (typeof s.format === "string" && FORMATS.has(s.format)) {
      return this.rule(`${s.format}-string`, `"\\"" ${this.primitive(s.format)} "\\""`);
    }
    if (min === 0 && max < 0) return this.primitive("string");
    this.primitive("bmp-char");
    const reps = max < 0 ? `{${min},}` : min === max ? `{${min}}` : `{${min},${max}}`;
    return this.rule(hint, `"\\"" bmp-char${reps} "\\""`);
  }

  private integer(s: Record<string, unknown>, at: string, hint: string): string {
    let lo = bound(s.minimum, s.exclusiveMinimum, "min", at);
    let hi = bound(s.maximum, s.exclusiveMaximum, "max", at);
    if (lo !== undefined) lo = Math.ceil(lo);
    if (hi !== undefined) hi = Math.floor(hi);
    if (lo === undefined && hi === undefined) return this.primitive("integer");
    if (lo !== undefined && hi !== undefined && lo > hi) fail(at, "no integer lies within its bounds");
    return this.rule(hint, integerRange(lo, hi));
  }

  private number(s: Record<string, unknown>, at: string): string {
    const lo = bound(s.minimum, s.exclusiveMinimum, "min", at);
    const hi = bound(s.maximum, s.exclusiveMaximum, "max", at);
    if (lo === undefined && hi === undefined) return this.primitive("number");
    if (s.minimum === 0 && s.exclusiveMinimum === undefined && hi === undefined) {
      return this.primitive("nonnegative-number");
    }
    return fail(at, 'bounds on "number" are supported only as minimum 0; use "integer" for other bounds');
  }

  private object(s: Record<string, unknown>, at: string, hint: string, depth: number): string {
    const props = (s.properties ?? {}) as Record<string, unknown>;
    if (typeof props !== "object" || props === null || Array.isArray(props)) {
      fail(at, "properties must be an object");
    }
    const required = new Set<string>();
    if (s.required !== undefined) {
      if (!Array.isArray(s.required) || s.required.some((r) => typeof r !== "string")) {
        fail(at, "required must be a list of property names");
      }
      for (const r of s.required as string[]) required.add(r);
    }
    const names = Object.keys(props);
    for (const r of required) if (!(r in props)) names.push(r);
    const extra = s.additionalProperties;
    this.primitive("space");
    if (names.length === 0) {
      if (extra !== undefined && extra !== true && extra !== false) {
        // A map: any keys, every value of the one schema.
        const value = this.visit(extra, `${at}/additionalProperties`, `${hint}-value`, depth + 1);
        const kv = this.rule(`${hint}-kv`, `${this.primitive("string")} space ":" space ${value}`);
        return this.rule(hint, `"{" space (${kv} space ("," space ${kv} space)*)? "}"`);
      }
      if (extra === false) return '"{" space "}"';
      return this.primitive("object");
    }
    const kvs = names.map((name) => {
      const value =
        name in props
          ? this.visit(props[name], `${at}/properties/${escapePointer(name)}`, `${hint}-${name}`, depth + 1)
          : this.primitive("value");
      return this.rule(`${hint}-${name}-kv`, `${jsonLiteral(name)} space ":" space ${value}`);
    });
    // rest(i, first): the properties from i on; `first` when nothing was written before them.
    const memo = new Map<string, string>();
    const rest = (i: number, first: boolean): string => {
      if (i === names.length) return "";
      const key = `${i}:${first}`;
      const known = memo.get(key);
      if (known !== undefined) return known;
      const take = `${first ? "" : '"," space '}${kvs[i]} space ${rest(i + 1, false)}`.trim();
      let expr: string;
      if (required.has(names[i]!)) expr = take;
      else {
        const skip = rest(i + 1, first);
        expr = skip === "" ? `(${take})?` : `(${take} | ${skip})`;
      }
      const name = this.rule(`${hint}-rest-${i}${first ? "" : "-more"}`, expr);
      memo.set(key, name);
      return name;
    };
    return this.rule(hint, `"{" space ${rest(0, true)} "}"`.replace(/ {2,}/g, " "));
  }

  private array(s: Record<string, unknown>, at: string, hint: string, depth: number): string {
    const min = count(s.minItems, at, "minItems");
    const max = s.maxItems === undefined ? -1 : count(s.maxItems, at, "maxItems");
    if (max >= 0 && max < min) fail(at, "maxItems is below minItems");
    this.primitive("space");
    const tuple = Array.isArray(s.prefixItems) ? s.prefixItems : Array.isArray(s.items) ? s.items : undefined;
    if (tuple) {
      if (s.minItems !== undefined || s.maxItems !== undefined) {
        fail(at, "minItems and maxItems with a tuple (prefixItems) are not supported");
      }
      const key = Array.isArray(s.prefixItems) ? "prefixItems" : "items";
      const items = tuple.map((t, i) => this.visit(t, `${at}/${key}/${i}`, `${hint}-${i}`, depth + 1));
      if (items.length === 0) return '"[" space "]"';
      return this.rule(hint, `"[" space ${items.join(' space "," space ')} space "]"`);
    }
    const item =
      s.items === undefined || s.items === true
        ? this.primitive("value")
        : this.visit(s.items, `${at}/items`, `${hint}-item`, depth + 1);
    if (max === 0) return '"[" space "]"';
    const more = `("," space ${item} space)`;
    const tail =
      max < 0
        ? min <= 1
          ? `${more}*`
          : `${more}{${min - 1},}`
        : `${more}{${Math.max(0, min - 1)},${max - 1}}`;
    const list = `${item} space ${tail}`;
    return this.rule(hint, `"[" space ${min === 0 ? `(${list})?` : list} "]"`);
  }

  private ref(target: string, at: string, depth: number): string {
    const known = this.refs.get(target);
    if (known) return known;
    if (target !== "#" && !target.startsWith("#/")) {
      fail(at, `$ref "${target}" is not supported (only references into the same schema, "#/...")`);
    }
    let node: unknown = this.root;
    const parts = target === "#" ? [] : target.slice(2).split("/");
    for (const raw of parts) {
      const part = decodeURIComponent(raw).replace(/~1/g, "/").replace(/~0/g, "~");
      if (node === null || typeof node !== "object" || !Object.hasOwn(node, part)) {
        fail(at, `$ref "${target}" points at nothing`);
      }
      node = (node as Record<string, unknown>)[part];
    }
    // Named before its body is converted, so that a recursive schema refers to itself.
    const name = this.freeName(`ref-${parts[parts.length - 1] ?? "root"}`);
    this.refs.set(target, name);
    this.rules.set(name, "");
    const body = this.visit(node, target, name, depth + 1);
    this.rules.set(name, body);
    return name;
  }
}

const ANNOTATIONS = new Set([
  "title",
  "description",
  "default",
  "examples",
  "$schema",
  "$id",
  "$comment",
  "$defs",
  "definitions",
  "deprecated",
  "readOnly",
  "writeOnly",
]);

function isPlainStringSchema(s: unknown): boolean {
  return (
    typeof s === "object" &&
    s !== null &&
    (s as { type?: unknown }).type === "string" &&
    Object.keys(s).length === 1
  );
}

function fail(at: string, what: string): never {
  throw new GrammarError(`JSON Schema at ${at}: ${what}`);
}

function count(v: unknown, at: string, key: string): number {
  if (v === undefined) return 0;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) fail(at, `${key} must be an integer >= 0`);
  return v;
}

/** The effective bound of minimum/exclusiveMinimum (or the maximums); undefined when none. */
function bound(inclusive: unknown, exclusive: unknown, side: "min" | "max", at: string): number | undefined {
  const num = (v: unknown, key: string) => {
    if (typeof v !== "number" || !Number.isFinite(v)) fail(at, `${key} must be a number`);
    return v;
  };
  let b: number | undefined;
  if (inclusive !== undefined) b = num(inclusive, side === "min" ? "minimum" : "maximum");
  if (exclusive !== undefined && typeof exclusive !== "boolean") {
    // An exclusive bound on integers: the next integer inside.
    const e = num(exclusive, side === "min" ? "exclusiveMinimum" : "exclusiveMaximum");
    const inside = side === "min" ? Math.floor(e) + 1 : Math.ceil(e) - 1;
    b = b === undefined ? inside : side === "min" ? Math.max(b, inside) : Math.min(b, inside);
  } else if (exclusive === true && b !== undefined) {
    // Draft 4: exclusiveMinimum/exclusiveMaximum are flags on minimum/maximum.
    b = side === "min" ? Math.floor(b) + 1 : Math.ceil(b) - 1;
  }
  return b;
}

/** Integers have at most this many digits when a side has no bound (as the plain integer rule). */
const MAX_DIGITS = 16;

/** A GBNF expression for the decimal integers from lo to hi (either side may be open). */
export function integerRange(lo: number | undefined, hi: number | undefined): string {
  const options: string[] = [];
  const top = 10 ** MAX_DIGITS - 1;
  // Negative part: "-" and the magnitudes.
  if (lo === undefined || lo < 0) {
    const magLo = hi !== undefined && hi < 0 ? -hi : 1;
    const magHi = lo === undefined ? top : -lo;
    if (magLo <= magHi) options.push(`"-" ${naturalRange(magLo, magHi)}`);
  }
  if (hi === undefined || hi >= 0) {
    options.push(naturalRange(Math.max(lo ?? 0, 0), hi ?? top));
  }
  return options.length === 1 ? options[0]! : `(${options.join(" | ")})`;
}

/** The decimal numbers from a to b (0 <= a <= b), without leading zeros. */
function naturalRange(a: number, b: number): string {
  if (!Number.isSafeInteger(b) && b !== 10 ** MAX_DIGITS - 1) b = Math.min(b, 10 ** MAX_DIGITS - 1);
  const options: string[] = [];
  const la = String(a).length;
  const lb = String(b).length;
  for (let len = la; len <= lb; len++) {
    const from = Math.max(a, len === 1 ? 0 : 10 ** (len - 1));
    const to = Math.min(b, 10 ** len - 1);
    if (from <= to) options.push(sameLength(String(from), String(to)));
  }
  return options.length === 1 ? options[0]! : `(${options.join(" | ")})`;
}

/** Digit strings of one length from x to y (x <= y), digit by digit. */
function sameLength(x: string, y: string): string {
  if (x === y) return `"${x}"`;
  const n = x.length;
  const digits = (lo: string, hi: string) => (lo === hi ? `"${lo}"` : `[${lo}-${hi}]`);
  if (n === 1) return digits(x, y);
  if (x[0] === y[0]) return `"${x[0]}" ${sameLength(x.slice(1), y.slice(1))}`;
  const any = (k: number) => (k === 1 ? "[0-9]" : `[0-9]{${k}}`);
  const options: string[] = [];
  const xRest = x.slice(1);
  const yRest = y.slice(1);
  const x0 = Number(x[0]);
  const y0 = Number(y[0]);
  let lowStart = x0;
  if (!/^0*$/.test(xRest)) {
    options.push(`"${x0}" ${sameLength(xRest, "9".repeat(n - 1))}`);
    lowStart = x0 + 1;
  }
  let highEnd = y0;
  let highPart: string | undefined;
  if (!/^9*$/.test(yRest)) {
    highPart = `"${y0}" ${sameLength("0".repeat(n - 1), yRest)}`;
    highEnd = y0 - 1;
  }
  if (lowStart <= highEnd) options.push(`${digits(String(lowStart), String(highEnd))} ${any(n - 1)}`);
  if (highPart) options.push(highPart);
  return options.length === 1 ? options[0]! : `(${options.join(" | ")})`;
}

/** A GBNF literal for the JSON text of `value`. */
export function jsonLiteral(value: unknown): string {
  return gbnfLiteral(JSON.stringify(value));
}

/** `text` as a GBNF string literal. */
export function gbnfLiteral(text: string): string {
  let out = '"';
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (ch === '"' || ch === "\\") out += `\\${ch}`;
    else if (cp === 0x0a) out += "\\n";
    else if (cp === 0x0d) out += "\\r";
    else if (cp === 0x09) out += "\\t";
    else if (cp < 0x20 || cp === 0x7f) out += classChar(cp);
    else out += ch;
  }
  return `${out}"`;
}

function escapePointer(name: string): string {
  return name.replace(/~/g, "~0").replace(/\//g, "~1");
}
