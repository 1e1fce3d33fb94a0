/**
 * A grammar as a pushdown automaton over UTF-8 bytes, built lazily and cached.
 *
 * The rules are flattened into one array of elements, every alternative ending in END. A parse in
 * progress is a stack: its top points at the character class to match next, the frames below at
 * where to go on once the rules they called end. Stacks are immutable linked lists, interned, so
 * equal stacks are one object and share their tails. A state is the set of stacks of every parse
 * still possible (an ambiguous grammar keeps several) plus the bytes of a UTF-8 character not yet
 * complete; states are interned too, and each remembers where every byte takes it. Matching text
 * is then a walk through memoized transitions, and a state reached again (a JSON string's next
 * character) costs a map lookup per byte.
 *
 * The sizes are bounded: a state with more open parses than MAX_STACKS is refused (a grammar that
 * ambiguous would make every step slow), and the caches are dropped and rebuilt when they hold
 * more than MAX_STATES states.
 */
import { type Grammar, GrammarError } from "./gbnf.js";

const END = -1;
/** Element codes: >= 0 a character class index, END, and <= -2 a reference to rule -(code + 2). */
const ref = (rule: number) => -(rule + 2);

/** The most parses one state may keep open at once. */
const MAX_STACKS = 4096;
/** The most expansion steps one transition may take. */
const MAX_EXPANSION_STEPS = 1 << 20;
/** Interned states kept before the caches are dropped. */
const MAX_STATES = 100_000;

class CharClass {
  /** Whether each ASCII character matches. */
  private readonly ascii = new Uint8Array(128);

  constructor(
    /** Sorted, merged inclusive ranges [lo, hi, ...]. */
    private readonly ranges: Uint32Array,
    private readonly negated: boolean,
  ) {
    for (let c = 0; c < 128; c++) this.ascii[c] = this.scan(c) ? 1 : 0;
  }

  matches(cp: number): boolean {
    return cp < 128 ? this.ascii[cp] === 1 : this.scan(cp);
  }

  /** Whether some code point in [lo, hi] matches. */
  matchesSome(lo: number, hi: number): boolean {
    const r = this.ranges;
    if (!this.negated) {
      for (let i = 0; i < r.length; i += 2) if (r[i]! <= hi && lo <= r[i + 1]!) return true;
      return false;
    }
    // Negated: some code point of [lo, hi] lies outside every range (they are sorted and merged).
    let next = lo;
    for (let i = 0; i < r.length && next <= hi; i += 2) {
      if (r[i + 1]! < next) continue;
      if (r[i]! > next) return true;
      next = r[i + 1]! + 1;
    }
    return next <= hi;
  }

  private scan(cp: number): boolean {
    const r = this.ranges;
    let inside = false;
    for (let i = 0; i < r.length && r[i]! <= cp; i += 2) {
      if (cp <= r[i + 1]!) {
        inside = true;
        break;
      }
    }
    return inside !== this.negated;
  }
}

/** A parse in progress (see the file comment); `pos` -1 with no parent is the finished parse. */
export class Stack {
  /** The stacks after this one's top matched a character (computed once). */
  after?: Stack[];
  constructor(
    readonly id: number,
    readonly pos: number,
    readonly parent: Stack | null,
  ) {}
}

export class State {
  /** Byte -> next state (null: the byte is refused). */
  readonly next = new Map<number, State | null>();
  /** Cached data of the token layer (see token-constraint.ts). */
  tokenData?: unknown;
  constructor(
    readonly id: number,
    /** Open parses, sorted by id. */
    readonly stacks: readonly Stack[],
    /** The bits of a UTF-8 character whose last `remain` bytes are still to come. */
    readonly partial: number,
    readonly remain: number,
  ) {}

  /** The text so far is a whole sentence of the grammar. */
  get complete(): boolean {
    return this.remain === 0 && this.stacks[0]!.pos === -1;
  }

  /** The grammar is complete and nothing may follow. */
  get onlyEnd(): boolean {
    return this.remain === 0 && this.stacks.length === 1 && this.stacks[0]!.pos === -1;
  }
}

export class GrammarAutomaton {
  private readonly seq: Int32Array;
  private readonly altStarts: Int32Array[];
  private readonly classes: CharClass[] = [];
  private readonly rootAlts: Int32Array;
  private stacks = new Map<number, Stack>();
  private states = new Map<string, State>();
  private nextStackId = 1;
  private nextStateId = 0;
  private readonly done = new Stack(0, -1, null);
  /** The state before any text; rebuilt after the caches are dropped. */
  private startState: State;

  constructor(readonly grammar: Grammar) {
    const seq: number[] = [];
    const classIds = new Map<string, number>();
    const classOf = (ranges: number[], negated: boolean): number => {
      const merged = mergeRanges(ranges);
      const key = `${negated ? "^" : ""}${merged.join(",")}`;
      let id = classIds.get(key);
      if (id === undefined) {
        id = this.classes.length;
        this.classes.push(new CharClass(Uint32Array.from(merged), negated));
        classIds.set(key, id);
      }
      return id;
    };
    this.altStarts = grammar.rules.map((alts) => {
      const starts: number[] = [];
      for (const alt of alts) {
        starts.push(seq.length);
        for (const e of alt) {
          if (e.kind === "ref") seq.push(ref(e.rule));
          else if (e.kind === "any") seq.push(classOf([], true));
          else seq.push(classOf(e.ranges, e.negated));
        }
        seq.push(END);
      }
      return Int32Array.from(starts);
    });
    if (seq.length >= 1 << 21) throw new GrammarError("the grammar is too large");
    this.seq = Int32Array.from(seq);
    this.rootAlts = this.altStarts[grammar.root]!;
    this.startState = this.makeStart();
  }

  /** The state before any text. */
  start(): State {
    return this.startState;
  }

  /** The state after `byte`, or null when the grammar refuses it. */
  step(state: State, byte: number): State | null {
    const hit = state.next.get(byte);
    if (hit !== undefined) return hit;
    if (this.states.size > MAX_STATES) this.dropCaches();
    const result = this.computeStep(state, byte);
    state.next.set(byte, result);
    return result;
  }

  /** The state after the UTF-8 bytes of `text` from `state` (default: the start), or null. */
  walk(text: string | Uint8Array, state: State | null = this.startState): State | null {
    const bytes = typeof text === "string" ? new TextEncoder().encode(text) : text;
    for (let i = 0; i < bytes.length && state; i++) state = this.step(state, bytes[i]!);
    return state;
  }

  /** Whether `text` is a whole sentence of the grammar. */
  accepts(text: string): boolean {
    return this.walk(text)?.complete ?? false;
  }

  private makeStart(): State {
    const out = new Set<Stack>();
    for (const a of this.rootAlts) this.expand(a, null, out);
    return this.stateOf([...out], 0, 0)!;
  }

  private computeStep(state: State, byte: number): State | null {
    if (state.remain > 0) {
      if ((byte & 0xc0) !== 0x80) return null;
      const value = (state.partial << 6) | (byte & 0x3f);
      if (state.remain === 1) return this.advance(state.stacks, value);
      return this.partialState(state.stacks, value, state.remain - 1);
    }
    if (byte < 0x80) return this.advance(state.stacks, byte);
    if ((byte & 0xe0) === 0xc0) return byte < 0xc2 ? null : this.partialState(state.stacks, byte & 0x1f, 1);
    if ((byte & 0xf0) === 0xe0) return this.partialState(state.stacks, byte & 0x0f, 2);
    if ((byte & 0xf8) === 0xf0 && byte <= 0xf4) return this.partialState(state.stacks, byte & 0x07, 3);
    return null;
  }

  /** A state inside a character, kept only if some open parse can match a character it may become. */
  private partialState(stacks: readonly Stack[], value: number, remain: number): State | null {
    let lo = value << (6 * remain);
    const hi = Math.min(lo | ((1 << (6 * remain)) - 1), 0x10ffff); // F4 90.. would pass the last code point
    if (remain === 2 && lo < 0x800) lo = 0x800; // no overlong forms
    if (remain === 3 && lo < 0x10000) lo = 0x10000;
    if (hi < lo || lo > 0x10ffff) return null;
    // Surrogates are not characters: a class that matches only those cannot complete one (a
    // negated class such as JSON's [^"\\] would otherwise let ED A0 in and then refuse every byte).
    const matches = (c: CharClass) =>
      (lo < 0xd800 && c.matchesSome(lo, Math.min(hi, 0xd7ff))) ||
      (hi > 0xdfff && c.matchesSome(Math.max(lo, 0xe000), hi));
    const live = stacks.filter((s) => s.pos >= 0 && matches(this.classes[this.seq[s.pos]!]!));
    return live.length === 0 ? null : this.stateOf(live, value, remain);
  }

  private advance(stacks: readonly Stack[], cp: number): State | null {
    if (cp >= 0xd800 && cp <= 0xdfff) return null;
    const out = new Set<Stack>();
    for (const s of stacks) {
      if (s.pos < 0 || !this.classes[this.seq[s.pos]!]!.matches(cp)) continue;
      if (s.after === undefined) {
        const after = new Set<Stack>();
        this.expand(s.pos + 1, s.parent, after);
        s.after = [...after];
      }
      for (const t of s.after) out.add(t);
    }
    if (out.size > MAX_STACKS) this.tooAmbiguous();
    return out.size === 0 ? null : this.stateOf([...out], 0, 0);
  }

  /**
   * Adds to `out` every stack whose top is a character class reachable from position `pos` with
   * return frames `parent`, following rule references and rule ends without consuming text.
   */
  private expand(pos: number, parent: Stack | null, out: Set<Stack>): void {
    const seen = new Set<number>();
    const work: [number, Stack | null][] = [[pos, parent]];
    let steps = 0;
    while (work.length > 0) {
      if (++steps > MAX_EXPANSION_STEPS) this.tooAmbiguous();
      let [p, frame] = work.pop()!;
      const key = (frame ? frame.id : 0) * (1 << 21) + p;
      if (seen.has(key)) continue;
      seen.add(key);
      let code = this.seq[p]!;
      while (code === END && frame !== null) {
        p = frame.pos;
        frame = frame.parent;
        code = this.seq[p]!;
      }
      if (code === END) out.add(this.done);
      else if (code >= 0) out.add(this.stackOf(p, frame));
      else {
        // A call: return to the next element unless the call is the alternative's last (no frame).
        const back = this.seq[p + 1] === END ? frame : this.stackOf(p + 1, frame);
        for (const a of this.altStarts[-code - 2]!) work.push([a, back]);
      }
      if (out.size > MAX_STACKS) this.tooAmbiguous();
    }
  }

  private stackOf(pos: number, parent: Stack | null): Stack {
    const key = (parent ? parent.id : 0) * (1 << 21) + pos;
    let s = this.stacks.get(key);
    if (s === undefined) {
      s = new Stack(this.nextStackId++, pos, parent);
      this.stacks.set(key, s);
    }
    return s;
  }

  private stateOf(stacks: Stack[], partial: number, remain: number): State {
    stacks.sort((a, b) => a.id - b.id);
    let key = `${remain}:${partial}`;
    for (const s of stacks) key += `,${s.id}`;
    let state = this.states.get(key);
    if (state === undefined) {
      state = new State(this.nextStateId++, stacks, partial, remain);
      this.states.set(key, state);
    }
    return state;
  }

  /** Forgets every interned state's transitions (states in use stay valid, only slower once). */
  private dropCaches(): void {
    for (const s of this.states.values()) {
      s.next.clear();
      s.tokenData = undefined;
    }
    this.states = new Map();
    this.stacks = new Map();
    this.startState = this.makeStart();
  }

  private tooAmbiguous(): never {
    throw new GrammarError(
      `the grammar is too ambiguous: more than ${MAX_STACKS} parses are open at once (rewrite it so that fewer alternatives match the same text)`,
    );
  }
}

/** Sorted, merged copies of inclusive ranges [lo, hi, ...] (a reversed range is empty). */
function mergeRanges(ranges: readonly number[]): number[] {
  const pairs: [number, number][] = [];
  for (let i = 0; i < ranges.length; i += 2) {
    if (ranges[i]! <= ranges[i + 1]!) pairs.push([ranges[i]!, ranges[i + 1]!]);
  }
  pairs.sort((a, b) => a[0] - b[0]);
  const out: number[] = [];
  for (const [lo, hi] of pairs) {
    const n = out.length;
    if (n > 0 && lo <= out[n - 1]! + 1) out[n - 1] = Math.max(out[n - 1]!, hi);
    else out.push(lo, hi);
  }
  return out;
}
