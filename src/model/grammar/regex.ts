/**
 * A JSON Schema `pattern` (an ECMAScript regular expression) as a GBNF expression for the
 * characters of a JSON string: what the string's text matches is written with JSON's escapes
 * (a `"` in the text is `\"` in the JSON). The subset that has a grammar: literals, `.`, classes
 * with ranges and negation, \d \w \s and their negations, groups, alternation, and the
 * quantifiers * + ? {m} {m,} {m,n}. Back-references, look-arounds and word boundaries have none
 * and are refused. A pattern matches anywhere in the string unless anchored with ^ and $, as in
 * JSON Schema.
 */
import { GrammarError } from "./gbnf.js";

type Node =
  | { kind: "chars"; ranges: number[] }
  | { kind: "seq"; items: Node[] }
  | { kind: "alt"; options: Node[] }
  | { kind: "repeat"; node: Node; min: number; max: number };

const MAX_CP = 0x10ffff;
const DIGIT = [0x30, 0x39];
const WORD = [0x30, 0x39, 0x41, 0x5a, 0x5f, 0x5f, 0x61, 0x7a];
const SPACE = [0x09, 0x0d, 0x20, 0x20, 0xa0, 0xa0, 0x2028, 0x2029, 0xfeff, 0xfeff];
/** The most nested groups of a pattern. */
const MAX_DEPTH = 64;

/** The GBNF expression, for the inside of a JSON string, of the strings `pattern` matches. */
export function regexToGbnf(pattern: string, jsonChar: string): string {
  let body = pattern;
  const start = body.startsWith("^");
  if (start) body = body.slice(1);
  const end = body.endsWith("$") && !body.endsWith("\\$");
  if (end) body = body.slice(0, -1);
  const node = new RegexParser(body, pattern).parse();
  const core = emit(node);
  return `${start ? "" : `${jsonChar}* `}${core}${end ? "" : ` ${jsonChar}*`}`;
}

class RegexParser {
  private pos = 0;
  private depth = 0;
  constructor(
    private readonly src: string,
    private readonly whole: string,
  ) {}

  parse(): Node {
    const node = this.alternation();
    if (this.pos < this.src.length) this.fail(`unexpected "${this.src[this.pos]}"`);
    return node;
  }

  private fail(what: string): never {
    throw new GrammarError(`pattern ${JSON.stringify(this.whole.slice(0, 80))}: ${what}`);
  }

  private alternation(): Node {
    const options = [this.sequence()];
    while (this.src[this.pos] === "|") {
      this.pos++;
      options.push(this.sequence());
    }
    return options.length === 1 ? options[0]! : { kind: "alt", options };
  }

  private sequence(): Node {
    const items: Node[] = [];
    while (this.pos < this.src.length && this.src[this.pos] !== "|" && this.src[this.pos] !== ")") {
      let atom = this.atom();
      for (;;) {
        const q = this.quantifier();
        if (!q) break;
        atom = { kind: "repeat", node: atom, min: q[0], max: q[1] };
      }
      items.push(atom);
    }
    return items.length === 1 ? items[0]! : { kind: "seq", items };
  }

  private quantifier(): [number, number] | undefined {
    const c = this.src[this.pos];
    let q: [number, number] | undefined;
    if (c === "*") q = [0, -1];
    else if (c === "+") q = [1, -1];
    else if (c === "?") q = [0, 1];
    else if (c === "{") {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(this.src.slice(this.pos));
      if (!m) return undefined; // a literal "{", as ECMAScript reads it
      const min = Number(m[1]);
      const max = m[2] === undefined ? min : m[3] === "" ? -1 : Number(m[3]);
      if (max >= 0 && max < min) this.fail(`the repetition ${m[0]} has its bounds reversed`);
      this.pos += m[0].length;
      if (this.src[this.pos] === "?") this.pos++; // lazy: the same strings
      return [min, max];
    }
    if (!q) return undefined;
    this.pos++;
    if (this.src[this.pos] === "?") this.pos++;
    return q;
  }

  private atom(): Node {
    const c = this.src[this.pos]!;
    if (c === "(") {
      if (++this.depth > MAX_DEPTH) this.fail(`groups nest deeper than ${MAX_DEPTH} levels`);
      this.pos++;
      if (this.src.startsWith("?:", this.pos)) this.pos += 2;
      else if (/^\?<[A-Za-z_$][\w$]*>/.test(this.src.slice(this.pos))) {
        this.pos = this.src.indexOf(">", this.pos) + 1;
      } else if (this.src[this.pos] === "?") this.fail("look-arounds are not supported");
      const inner = this.alternation();
      if (this.src[this.pos] !== ")") this.fail('expecting ")"');
      this.pos++;
      this.depth--;
      return inner;
    }
    if (c === "[") return this.charClass();
    if (c === ".") {
      this.pos++;
      return { kind: "chars", ranges: complement([0x0a, 0x0a, 0x0d, 0x0d, 0x2028, 0x2029]) };
    }
    if (c === "\\") return { kind: "chars", ranges: this.escape(false) };
    if (c === "^" || c === "$") this.fail(`"${c}" is supported only at the start and the end`);
    if (c === "*" || c === "+" || c === "?") this.fail(`"${c}" follows nothing it could repeat`);
    const cp = this.src.codePointAt(this.pos)!;
    this.pos += cp > 0xffff ? 2 : 1;
    return { kind: "chars", ranges: [cp, cp] };
  }

  private charClass(): Node {
    this.pos++;
    let negated = false;
    if (this.src[this.pos] === "^") {
      negated = true;
      this.pos++;
    }
    const ranges: number[] = [];
    let first = true;
    while (this.src[this.pos] !== "]" || first) {
      first = false;
      if (this.pos >= this.src.length) this.fail("unterminated character class");
      const lo = this.classChar();
      if (typeof lo !== "number") {
        ranges.push(...lo);
        continue;
      }
      if (this.src[this.pos] === "-" && this.src[this.pos + 1] !== "]" && this.pos + 1 < this.src.length) {
        this.pos++;
        const hi = this.classChar();
        if (typeof hi !== "number") this.fail("a class escape cannot end a range");
        if (hi < lo) this.fail("a character range is reversed");
        ranges.push(lo, hi);
      } else ranges.push(lo, lo);
    }
    this.pos++;
    return { kind: "chars", ranges: negated ? complement(ranges) : ranges };
  }

  /** One character of a class, or the ranges of a class escape (\d, \w, ...). */
  private classChar(): number | number[] {
    if (this.src[this.pos] === "\\") {
      const r = this.escape(true);
      return r.length === 2 && r[0] === r[1] ? r[0]! : r;
    }
    const cp = this.src.codePointAt(this.pos)!;
    this.pos += cp > 0xffff ? 2 : 1;
    return cp;
  }

  private escape(inClass: boolean): number[] {
    const e = this.src[this.pos + 1];
    this.pos += 2;
    const one = (cp: number) => [cp, cp];
    switch (e) {
      case "d":
        return DIGIT;
      case "D":
        return complement(DIGIT);
      case "w":
        return WORD;
      case "W":
        return complement(WORD);
      case "s":
        return SPACE;
      case "S":
        return complement(SPACE);
      case "t":
        return one(0x09);
      case "n":
        return one(0x0a);
      case "r":
        return one(0x0d);
      case "f":
        return one(0x0c);
      case "v":
        return one(0x0b);
      case "0":
        return one(0);
      case "x":
      case "u": {
        const m = (e === "x" ? /^[0-9a-fA-F]{2}/ : /^[0-9a-fA-F]{4}/).exec(this.src.slice(this.pos));
        if (!m) this.fail(`\\${e} needs hexadecimal digits`);
        this.pos += m[0].length;
        return one(Number.parseInt(m[0], 16));
      }
      case "b":
        if (inClass) return one(0x08);
        return this.fail("word boundaries (\\b) are not supported");
      case undefined:
        return this.fail("the pattern ends with a backslash");
      default:
        if (/[1-9kBpP]/.test(e)) this.fail(`\\${e} is not supported`);
        if (/[A-Za-z0-9]/.test(e)) this.fail(`unknown escape \\${e}`);
        return one(e.codePointAt(0)!);
    }
  }
}

/** The code points outside `ranges` (inclusive pairs). */
function complement(ranges: readonly number[]): number[] {
  const pairs: [number, number][] = [];
  for (let i = 0; i < ranges.length; i += 2) pairs.push([ranges[i]!, ranges[i + 1]!]);
  pairs.sort((a, b) => a[0] - b[0]);
  const out: number[] = [];
  let next = 0;
  for (const [lo, hi] of pairs) {
    if (lo > next) out.push(next, lo - 1);
    next = Math.max(next, hi + 1);
  }
  if (next <= MAX_CP) out.push(next, MAX_CP);
  return out;
}

function emit(node: Node): string {
  switch (node.kind) {
    case "chars":
      return jsonChars(node.ranges);
    case "seq":
      return node.items.length === 0 ? '""' : node.items.map(emit).join(" ");
    case "alt":
      return `(${node.options.map(emit).join(" | ")})`;
    case "repeat": {
      const inner = `(${emit(node.node)})`;
      if (node.max < 0)
        return node.min === 0 ? `${inner}*` : node.min === 1 ? `${inner}+` : `${inner}{${node.min},}`;
      return node.min === node.max ? `${inner}{${node.min}}` : `${inner}{${node.min},${node.max}}`;
    }
  }
}

/**
 * A GBNF expression for one character out of `ranges`, as a JSON string writes it: printable
 * characters as themselves, `"` and `\` escaped; control characters are left out.
 */
function jsonChars(ranges: readonly number[]): string {
  const plain: string[] = [];
  const options: string[] = [];
  let quote = false;
  let backslash = false;
  for (let i = 0; i < ranges.length; i += 2) {
    let lo = Math.max(ranges[i]!, 0x20);
    const hi = ranges[i + 1]!;
    if (lo > hi) continue;
    // Cut the range around '"' (0x22) and '\' (0x5C).
    for (const special of [0x22, 0x5c]) {
      if (lo <= special && special <= hi) {
        if (special === 0x22) quote = true;
        else backslash = true;
        if (lo < special) plain.push(classRange(lo, special - 1));
        lo = special + 1;
      }
    }
    if (lo <= hi) plain.push(classRange(lo, hi));
  }
  if (plain.length > 0) options.push(`[${plain.join("")}]`);
  if (quote) options.push('"\\\\\\""');
  if (backslash) options.push('"\\\\\\\\"');
  if (options.length === 0)
    throw new GrammarError("the pattern needs a character a JSON string cannot hold as text");
  return options.length === 1 ? options[0]! : `(${options.join(" | ")})`;
}

function classRange(lo: number, hi: number): string {
  return lo === hi ? classChar(lo) : `${classChar(lo)}-${classChar(hi)}`;
}

/** A character as GBNF writes it inside [...]. */
export function classChar(cp: number): string {
  if (cp === 0x5c || cp === 0x5d || cp === 0x5b || cp === 0x2d || cp === 0x22) {
    return `\\${String.fromCharCode(cp)}`;
  }
  if (cp < 0x20 || cp === 0x5e || cp === 0x7f || (cp >= 0x80 && cp <= 0x9f))
    return `\\x${cp.toString(16).padStart(2, "0")}`;
  if (cp > 0xffff) return `\\U${cp.toString(16).padStart(8, "0")}`;
  if (cp >= 0xd800 && cp <= 0xdfff) return `\\u${cp.toString(16).padStart(4, "0")}`;
  return String.fromCodePoint(cp);
}
