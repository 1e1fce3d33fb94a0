/**
 * GBNF, llama.cpp's grammar format, parsed into rules of alternatives of element sequences.
 *
 *     root  ::= item ("," item)*          # a rule: alternatives of sequences
 *     item  ::= [a-z_] [a-z0-9_]{0,31} | "\"" [^"]* "\""
 *
 * Elements: "literal" strings, [character classes] with ranges and [^negation], `.` (any
 * character), rule names, (groups), and the postfix repetitions * + ? {m} {m,} {m,n}. Escapes:
 * \x.. \u.... \U........ \t \r \n \\ \" \[ \] \-. `#` starts a comment; a rule ends at a line end
 * (inside parentheses, line ends are spaces). Rule names are letters, digits and '-', as llama.cpp
 * reads them. Repetitions are rewritten into helper rules as llama.cpp rewrites them
 * (S{2,4} = S S S'2, S'2 ::= S S'1 |, S'1 ::= S |), so both accept the same strings.
 *
 * A grammar is untrusted input: its text, nesting, repetition counts and size after repetitions
 * are bounded, and left recursion (which would loop a pushdown matcher forever) is refused, each
 * with a one-line GrammarError.
 */
import { UserError } from "../../errors.js";

/** A grammar that cannot be used: one line naming what is wrong (and where, for a parse error). */
export class GrammarError extends UserError {
  override name = "GrammarError";
}

export type GrammarElement =
  /** One character out of inclusive code point ranges [lo0, hi0, lo1, hi1, ...], or outside them. */
  | { kind: "chars"; ranges: number[]; negated: boolean }
  /** Any character. */
  | { kind: "any" }
  | { kind: "ref"; rule: number };

export interface Grammar {
  /** Rule names by rule id; helper rules of groups and repetitions are named `<rule>_<id>`. */
  names: string[];
  /** By rule id: the alternatives, each a sequence of elements (possibly empty). */
  rules: GrammarElement[][][];
  /** The id of the start rule. */
  root: number;
}

export const GRAMMAR_LIMITS = {
  /** Characters of grammar text. */
  chars: 1 << 20,
  /** Parentheses nested in one another. */
  nesting: 128,
  /** The largest count in {m,n}, llama.cpp's (a larger upper bound means "no upper bound", as there). */
  repetition: 2000,
  /** Elements of all rules once repetitions are written out. */
  elements: 1 << 20,
};

const isDigit = (c: number) => c >= 0x30 && c <= 0x39;
const isWordChar = (c: number) =>
  (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || c === 0x2d || isDigit(c);

/** Parses GBNF text; `root` names the start rule (default "root"). */
export function parseGbnf(text: string, root = "root"): Grammar {
  if (text.length > GRAMMAR_LIMITS.chars) {
    throw new GrammarError(
      `the grammar is ${text.length} characters, more than the limit of ${GRAMMAR_LIMITS.chars}`,
    );
  }
  return new GbnfParser(text).parse(root);
}

class GbnfParser {
  private pos = 0;
  private depth = 0;
  private elements = 0;
  private readonly ids = new Map<string, number>();
  private readonly names: string[] = [];
  private readonly rules: (GrammarElement[][] | undefined)[] = [];
  /** Where each rule was first referenced, for the error about an undefined one. */
  private readonly firstUse = new Map<number, number>();

  constructor(private readonly src: string) {}

  parse(rootName: string): Grammar {
    this.skipSpace(true);
    while (this.pos < this.src.length) this.parseRule();
    for (let id = 0; id < this.names.length; id++) {
      if (this.rules[id] === undefined) {
        this.pos = this.firstUse.get(id) ?? 0;
        this.fail(`rule "${this.names[id]}" is used but never defined`);
      }
    }
    const root = this.ids.get(rootName);
    if (root === undefined) throw new GrammarError(`the grammar has no "${rootName}" rule`);
    const grammar: Grammar = { names: this.names, rules: this.rules as GrammarElement[][][], root };
    checkLeftRecursion(grammar);
    return grammar;
  }

  private fail(what: string): never {
    let line = 1;
    let lineStart = 0;
    for (let i = 0; i < this.pos && i < this.src.length; i++) {
      if (this.src.charCodeAt(i) === 0x0a) {
        line++;
        lineStart = i + 1;
      }
    }
    throw new GrammarError(`grammar line ${line}, column ${this.pos - lineStart + 1}: ${what}`);
  }

  private peek(offset = 0): number {
    const c = this.src.charCodeAt(this.pos + offset);
    return Number.isNaN(c) ? -1 : c;
  }

  /** Spaces, tabs and comments; line ends too when `newlines`. */
  private skipSpace(newlines: boolean): void {
    for (;;) {
      const c = this.peek();
      if (c === 0x20 || c === 0x09 || (newlines && (c === 0x0a || c === 0x0d))) this.pos++;
      else if (c === 0x23) {
        while (this.pos < this.src.length && this.peek() !== 0x0a && this.peek() !== 0x0d) this.pos++;
      } else return;
    }
  }

  private parseName(): string {
    const start = this.pos;
    while (isWordChar(this.peek())) this.pos++;
    if (this.pos === start) this.fail("expecting a rule name");
    return this.src.slice(start, this.pos);
  }

  private idOf(name: string): number {
    let id = this.ids.get(name);
    if (id === undefined) {
      id = this.names.length;
      this.ids.set(name, id);
      this.names.push(name);
      this.rules.push(undefined);
    }
    return id;
  }

  private newRule(base: string): number {
    const id = this.names.length;
    const name = `${base}_${id}`;
    this.ids.set(name, id);
    this.names.push(name);
    this.rules.push(undefined);
    return id;
  }

  private parseRule(): void {
    const name = this.parseName();
    const id = this.idOf(name);
    this.skipSpace(false);
    if (!this.src.startsWith("::=", this.pos)) this.fail('expecting "::="');
    this.pos += 3;
    this.skipSpace(true);
    this.rules[id] = this.parseAlternatives(name, false);
    const c = this.peek();
    if (c === 0x0d) this.pos += this.peek(1) === 0x0a ? 2 : 1;
    else if (c === 0x0a) this.pos++;
    else if (c !== -1) this.fail("expecting the end of the line");
    this.skipSpace(true);
  }

  private parseAlternatives(ruleName: string, nested: boolean): GrammarElement[][] {
    const alternatives = [this.parseSequence(ruleName, nested)];
    while (this.peek() === 0x7c) {
      this.pos++;
      this.skipSpace(true);
      alternatives.push(this.parseSequence(ruleName, nested));
    }
    return alternatives;
  }

  private parseSequence(ruleName: string, nested: boolean): GrammarElement[] {
    let seq: GrammarElement[] = [];
    let lastStart = -1; // where the last symbol (what a repetition repeats) starts in seq
    for (;;) {
      const c = this.peek();
      if (c === 0x22) {
        // "literal"
        this.pos++;
        lastStart = seq.length;
        while (this.peek() !== 0x22) {
          if (this.peek() === -1) this.fail("unterminated string literal");
          const ch = this.parseChar();
          seq.push({ kind: "chars", ranges: [ch, ch], negated: false });
        }
        this.pos++;
        this.count(seq.length - lastStart);
      } else if (c === 0x5b) {
        // [class]
        this.pos++;
        let negated = false;
        if (this.peek() === 0x5e) {
          negated = true;
          this.pos++;
        }
        const ranges: number[] = [];
        while (this.peek() !== 0x5d) {
          if (this.peek() === -1) this.fail("unterminated character class");
          const lo = this.parseChar();
          let hi = lo;
          if (this.peek() === 0x2d && this.peek(1) !== 0x5d) {
            this.pos++;
            if (this.peek() === -1) this.fail("unterminated character class");
            hi = this.parseChar();
          }
          ranges.push(lo, hi);
        }
        this.pos++;
        lastStart = seq.length;
        seq.push({ kind: "chars", ranges, negated });
        this.count(1);
      } else if (c === 0x3c || c === 0x21) {
        this.fail("token references (<...>, !<...>) are not supported; write the text instead");
      } else if (isWordChar(c)) {
        const at = this.pos;
        const id = this.idOf(this.parseName());
        if (!this.firstUse.has(id)) this.firstUse.set(id, at);
        lastStart = seq.length;
        seq.push({ kind: "ref", rule: id });
        this.count(1);
      } else if (c === 0x28) {
        // (group)
        if (++this.depth > GRAMMAR_LIMITS.nesting) {
          this.fail(`parentheses nest deeper than ${GRAMMAR_LIMITS.nesting} levels`);
        }
        this.pos++;
        this.skipSpace(true);
        const id = this.newRule(ruleName);
        this.rules[id] = this.parseAlternatives(ruleName, true);
        if (this.peek() !== 0x29) this.fail('expecting ")"');
        this.pos++;
        this.depth--;
        lastStart = seq.length;
        seq.push({ kind: "ref", rule: id });
        this.count(1);
      } else if (c === 0x2e) {
        this.pos++;
        lastStart = seq.length;
        seq.push({ kind: "any" });
        this.count(1);
      } else if (c === 0x2a || c === 0x2b || c === 0x3f) {
        if (lastStart < 0) this.fail(`"${String.fromCharCode(c)}" follows nothing it could repeat`);
        this.pos++;
        const [min, max] = c === 0x2a ? [0, -1] : c === 0x2b ? [1, -1] : [0, 1];
        seq = this.repeat(seq, lastStart, min, max, ruleName);
        lastStart = -1;
      } else if (c === 0x7b) {
        if (lastStart < 0) this.fail('"{" follows nothing it could repeat');
        this.pos++;
        this.skipSpace(nested);
        const min = this.parseCount();
        this.skipSpace(nested);
        let max = min;
        if (this.peek() === 0x2c) {
          this.pos++;
          this.skipSpace(nested);
          max = isDigit(this.peek()) ? this.parseCount() : -1;
          this.skipSpace(nested);
        }
        if (this.peek() !== 0x7d) this.fail('expecting "}"');
        this.pos++;
        if (min > GRAMMAR_LIMITS.repetition) {
          this.fail(`a repetition of at least ${min} is over the limit of ${GRAMMAR_LIMITS.repetition}`);
        }
        if (max > GRAMMAR_LIMITS.repetition) max = -1;
        if (max >= 0 && max < min) this.fail(`the repetition {${min},${max}} has its bounds reversed`);
        seq = this.repeat(seq, lastStart, min, max, ruleName);
        lastStart = -1;
      } else {
        return seq;
      }
      this.skipSpace(nested);
    }
  }

  private parseCount(): number {
    const start = this.pos;
    while (isDigit(this.peek())) this.pos++;
    if (this.pos === start) this.fail("expecting a number");
    const digits = this.src.slice(start, this.pos);
    return digits.length > 9 ? Number.MAX_SAFE_INTEGER : Number(digits);
  }

  /**
   * S{min,max} (max -1: no bound) as llama.cpp writes it out: S min times, then a chain of
   * optional copies (S' ::= S S' | for no bound).
   */
  private repeat(
    seq: GrammarElement[],
    start: number,
    min: number,
    max: number,
    ruleName: string,
  ): GrammarElement[] {
    const symbol = seq.slice(start);
    const optional = max < 0 ? 1 : max - min;
    this.count(symbol.length * (min + optional + 1) - symbol.length);
    // In place: copying the sequence at every repetition would be quadratic.
    const out = seq;
    out.length = start;
    for (let i = 0; i < min; i++) for (const e of symbol) out.push(e);
    let last = -1;
    for (let i = 0; i < optional; i++) {
      const id = this.newRule(ruleName);
      const next: GrammarElement[] = [...symbol];
      if (max < 0) next.push({ kind: "ref", rule: id });
      else if (i > 0) next.push({ kind: "ref", rule: last });
      this.rules[id] = [next, []];
      last = id;
    }
    if (optional > 0) out.push({ kind: "ref", rule: last });
    return out;
  }

  private count(n: number): void {
    this.elements += n;
    if (this.elements > GRAMMAR_LIMITS.elements) {
      this.fail(
        `the grammar has more than ${GRAMMAR_LIMITS.elements} elements once its repetitions are written out`,
      );
    }
  }

  private parseChar(): number {
    const c = this.peek();
    if (c === 0x5c) {
      const e = this.peek(1);
      this.pos += 2;
      switch (e) {
        case 0x78: // x
          return this.parseHex(2);
        case 0x75: // u
          return this.parseHex(4);
        case 0x55: // U
          return this.parseHex(8);
        case 0x74:
          return 0x09;
        case 0x72:
          return 0x0d;
        case 0x6e:
          return 0x0a;
        case 0x5c:
        case 0x22:
        case 0x5b:
        case 0x5d:
        case 0x2d:
          return e;
        default:
          this.pos -= 2;
          this.fail(e === -1 ? "unexpected end after \\" : `unknown escape \\${String.fromCodePoint(e)}`);
      }
    }
    if (c === -1) this.fail("unexpected end of the grammar");
    const cp = this.src.codePointAt(this.pos)!;
    this.pos += cp > 0xffff ? 2 : 1;
    return cp;
  }

  private parseHex(n: number): number {
    let v = 0;
    for (let i = 0; i < n; i++) {
      const d = Number.parseInt(this.src[this.pos] ?? "", 16);
      if (Number.isNaN(d)) this.fail(`expecting ${n} hexadecimal digits`);
      v = v * 16 + d;
      this.pos++;
    }
    if (v > 0x10ffff) this.fail(`\\U${v.toString(16)} is beyond the last code point U+10FFFF`);
    return v;
  }
}

/**
 * Refuses left recursion: a rule that can reach itself, through the first elements of its
 * alternatives (and past rules that can match nothing), without a character in between. A
 * pushdown matcher would expand it forever.
 */
function checkLeftRecursion(g: Grammar): void {
  const n = g.rules.length;
  // Rules that can match the empty string (fixed point).
  const nullable = new Uint8Array(n);
  for (let changed = true; changed; ) {
    changed = false;
    for (let r = 0; r < n; r++) {
      if (nullable[r]) continue;
      if (g.rules[r]!.some((alt) => alt.every((e) => e.kind === "ref" && nullable[e.rule]))) {
        nullable[r] = 1;
        changed = true;
      }
    }
  }
  // Edges r -> s: s can be expanded at r's start.
  const edges: number[][] = g.rules.map((alts) => {
    const out = new Set<number>();
    for (const alt of alts) {
      for (const e of alt) {
        if (e.kind !== "ref") break;
        out.add(e.rule);
        if (!nullable[e.rule]) break;
      }
    }
    return [...out];
  });
  // Iterative depth-first search for a cycle (0 new, 1 on the path, 2 done).
  const color = new Uint8Array(n);
  for (let start = 0; start < n; start++) {
    if (color[start]) continue;
    const path: [rule: number, next: number][] = [[start, 0]];
    color[start] = 1;
    while (path.length > 0) {
      const top = path[path.length - 1]!;
      const [r, i] = top;
      if (i < edges[r]!.length) {
        top[1]++;
        const s = edges[r]![i]!;
        if (color[s] === 1) {
          throw new GrammarError(
            `the grammar is left-recursive: rule "${g.names[s]}" can reach itself without matching a character`,
          );
        }
        if (color[s] === 0) {
          color[s] = 1;
          path.push([s, 0]);
        }
      } else {
        color[r] = 2;
        path.pop();
      }
    }
  }
}
