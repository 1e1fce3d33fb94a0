/**
 * Grammar constraints at the token level: which tokens of a vocabulary may come next.
 *
 * The vocabulary's token texts (their UTF-8 bytes, as generation writes them) are held in a byte
 * trie, built once per tokenizer. The tokens a state allows are found by walking the trie and the
 * automaton together: a subtree whose prefix the grammar refuses is skipped whole, and tokens
 * that share a prefix share its steps. The result is cached on the state as a bit set, so a state
 * met again (the inside of a JSON string, a number's next digit) costs nothing more.
 *
 * Sampling asks first whether the token it drew from the free distribution is allowed (a walk of
 * that token's bytes alone) and computes the whole set only when it is not, as llama.cpp's
 * sampler does: a model that mostly follows the grammar by itself pays almost nothing.
 *
 * Control tokens (<s>, <|im_end|>) never match grammar text; end-of-generation tokens are allowed
 * exactly when the text so far is a whole sentence of the grammar.
 */

import type { Tokenizer } from "../../tokenizer/index.js";
import { TokenType } from "../../tokenizer/index.js";
import type { TokenConstraint } from "../sampler.js";
import type { GrammarAutomaton, State } from "./automaton.js";
import { GrammarError } from "./gbnf.js";

/** The byte trie of a vocabulary's token texts. */
export class VocabularyTrie {
  readonly vocabSize: number;
  /** Each token's bytes (empty: the token never matches grammar text). */
  readonly pieces: Uint8Array[];
  readonly eogIds: number[];
  /** Children of node n: childStart[n] .. childStart[n] + childCount[n] (node 0 is the root). */
  readonly childStart: Int32Array;
  readonly childCount: Int32Array;
  readonly byte: Uint8Array;
  /** Tokens ending at node n: tokenIds[tokenStart[n] .. tokenStart[n + 1]). */
  readonly tokenStart: Int32Array;
  readonly tokenIds: Int32Array;

  constructor(tokenizer: Tokenizer) {
    const n = tokenizer.vocabSize;
    this.vocabSize = n;
    this.eogIds = tokenizer.eogTokenIds;
    this.pieces = new Array(n);
    type Node = { children: Map<number, Node>; tokens: number[] };
    const root: Node = { children: new Map(), tokens: [] };
    for (let id = 0; id < n; id++) {
      const type = tokenizer.tokenType(id);
      const usable = type !== TokenType.Control && type !== TokenType.Unknown && !tokenizer.isEog(id);
      const piece = usable ? tokenizer.piece(id, false) : new Uint8Array(0);
      this.pieces[id] = piece;
      if (piece.length === 0) continue;
      let node = root;
      for (const b of piece) {
        let child = node.children.get(b);
        if (!child) {
          child = { children: new Map(), tokens: [] };
          node.children.set(b, child);
        }
        node = child;
      }
      node.tokens.push(id);
    }
    // Flatten breadth first, so that every node's children are contiguous.
    const order: Node[] = [root];
    const childStart: number[] = [];
    const childCount: number[] = [];
    const bytes: number[] = [0];
    for (let i = 0; i < order.length; i++) {
      const node = order[i]!;
      childStart.push(order.length);
      childCount.push(node.children.size);
      for (const [b, child] of [...node.children].sort((a, c) => a[0] - c[0])) {
        order.push(child);
        bytes.push(b);
      }
    }
    this.childStart = Int32Array.from(childStart);
    this.childCount = Int32Array.from(childCount);
    this.byte = Uint8Array.from(bytes);
    const tokenStart = new Int32Array(order.length + 1);
    const ids: number[] = [];
    order.forEach((node, i) => {
      tokenStart[i] = ids.length;
      ids.push(...node.tokens);
    });
    tokenStart[order.length] = ids.length;
    this.tokenStart = tokenStart;
    this.tokenIds = Int32Array.from(ids);
  }

  private static readonly cache = new WeakMap<Tokenizer, VocabularyTrie>();

  /** The trie of `tokenizer`'s vocabulary, built once. */
  static of(tokenizer: Tokenizer): VocabularyTrie {
    let trie = VocabularyTrie.cache.get(tokenizer);
    if (!trie) {
      trie = new VocabularyTrie(tokenizer);
      VocabularyTrie.cache.set(tokenizer, trie);
    }
    return trie;
  }
}

/** Allowed tokens of a state, as a bit set over the vocabulary. */
interface TokenSet {
  bits: Uint32Array;
  count: number;
}

/**
 * One generation's position in a grammar: what may come next, and the tokens taken so far.
 * Create one per generation from a compiled grammar (GrammarAutomaton); the automaton and its
 * caches may be shared by any number of generations over the same vocabulary.
 */
export class GrammarConstraint implements TokenConstraint {
  private state: State;

  constructor(
    private readonly automaton: GrammarAutomaton,
    private readonly vocab: VocabularyTrie,
  ) {
    this.state = automaton.start();
  }

  /** The text so far is a whole sentence and nothing may follow: generation is over. */
  get done(): boolean {
    return this.state.onlyEnd;
  }

  /** The text so far is a whole sentence (an end-of-generation token may come next). */
  get complete(): boolean {
    return this.state.complete;
  }

  allows(id: number): boolean {
    return this.after(id) !== null;
  }

  /** Takes token `id` as the next one; a GrammarError when the grammar does not allow it. */
  accept(id: number): void {
    const next = this.after(id);
    if (next === null) throw new GrammarError(`token ${id} does not continue the grammar here`);
    this.state = next;
  }

  /** Takes bytes written without sampling (text before the constraint began); false if refused. */
  acceptBytes(bytes: Uint8Array): boolean {
    const next = this.automaton.walk(bytes, this.state);
    if (next === null) return false;
    this.state = next;
    return true;
  }

  mask(logits: Float32Array): void {
    const { bits, count } = this.allowed();
    if (count === 0) {
      throw new GrammarError(
        "the grammar allows no token of this vocabulary here (no token writes what it needs next)",
      );
    }
    for (let i = 0; i < logits.length; i++) {
      if (((bits[i >>> 5]! >>> (i & 31)) & 1) === 0) logits[i] = Number.NEGATIVE_INFINITY;
    }
  }

  /** The number of tokens allowed next. */
  allowedCount(): number {
    return this.allowed().count;
  }

  private after(id: number): State | null {
    if (this.vocab.eogIds.includes(id)) return this.state.complete ? this.state : null;
    const piece = this.vocab.pieces[id];
    if (piece === undefined || piece.length === 0) return null;
    return this.automaton.walk(piece, this.state);
  }

  private allowed(): TokenSet {
    const cached = this.state.tokenData as TokenSet | undefined;
    if (cached) return cached;
    const set = allowedTokens(this.automaton, this.vocab, this.state);
    this.state.tokenData = set;
    return set;
  }
}

/** Walks the trie and the automaton together from `start`; returns the tokens whose bytes it allows. */
function allowedTokens(automaton: GrammarAutomaton, trie: VocabularyTrie, start: State): TokenSet {
  const bits = new Uint32Array((trie.vocabSize + 31) >>> 5);
  let count = 0;
  const nodes: number[] = [0];
  const states: State[] = [start];
  const { childStart, childCount, byte, tokenStart, tokenIds } = trie;
  while (nodes.length > 0) {
    const node = nodes.pop()!;
    const state = states.pop()!;
    const first = childStart[node]!;
    const end = first + childCount[node]!;
    for (let c = first; c < end; c++) {
      const next = automaton.step(state, byte[c]!);
      if (next === null) continue;
      for (let t = tokenStart[c]!; t < tokenStart[c + 1]!; t++) {
        const id = tokenIds[t]!;
        bits[id >>> 5] = bits[id >>> 5]! | (1 << (id & 31));
        count++;
      }
      if (childCount[c]! > 0) {
        nodes.push(c);
        states.push(next);
      }
    }
  }
  if (start.complete) {
    for (const id of trie.eogIds) {
      bits[id >>> 5] = bits[id >>> 5]! | (1 << (id & 31));
      count++;
    }
  }
  return { bits, count };
}

/**
 * A grammar that applies from a trigger on, as llama.cpp's lazy grammars do: the text is free
 * until one of the `triggers` appears in it, and from the trigger's first character on it must
 * match the grammar (whose sentences therefore start with a trigger). A reply that may call a
 * tool uses it: free text, or a tool call that the tools' schemas constrain once it begins.
 */
export class LazyGrammarConstraint implements TokenConstraint {
  private inner?: GrammarConstraint;
  private readonly triggers: Uint8Array[];
  private readonly longest: number;
  /** The bytes written so far, until a trigger appears. */
  private written = new Uint8Array(256);
  private length = 0;
  /** A trigger appeared and the text after it left the grammar: nothing more may be written. */
  private broken = false;

  constructor(
    private readonly automaton: GrammarAutomaton,
    private readonly vocab: VocabularyTrie,
    private readonly tokenizer: Tokenizer,
    triggers: readonly string[],
  ) {
    const encoder = new TextEncoder();
    this.triggers = triggers.filter((t) => t !== "").map((t) => encoder.encode(t));
    this.longest = Math.max(0, ...this.triggers.map((t) => t.length));
  }

  /** Whether the grammar applies yet. */
  get active(): boolean {
    return this.inner !== undefined;
  }

  get done(): boolean {
    return this.broken || (this.inner?.done ?? false);
  }

  /** The text may end here: before the trigger, or with the grammar complete. */
  get complete(): boolean {
    return this.inner ? this.inner.complete : !this.broken;
  }

  allows(id: number): boolean {
    return this.inner ? this.inner.allows(id) : true;
  }

  mask(logits: Float32Array): void {
    this.inner?.mask(logits);
  }

  accept(id: number): void {
    if (this.inner) {
      this.inner.accept(id);
      return;
    }
    if (this.vocab.eogIds.includes(id)) return;
    const piece = this.tokenizer.piece(id, true);
    if (this.length + piece.length > this.written.length) {
      const grown = new Uint8Array(Math.max(2 * this.written.length, this.length + piece.length));
      grown.set(this.written.subarray(0, this.length));
      this.written = grown;
    }
    this.written.set(piece, this.length);
    // Only where the new bytes could complete a trigger.
    const from = Math.max(0, this.length - this.longest + 1);
    this.length += piece.length;
    const at = this.findTrigger(from);
    if (at < 0) return;
    const inner = new GrammarConstraint(this.automaton, this.vocab);
    if (inner.acceptBytes(this.written.subarray(at, this.length))) this.inner = inner;
    else this.broken = true;
  }

  private findTrigger(from: number): number {
    const w = this.written;
    let best = -1;
    for (const t of this.triggers) {
      for (let i = from; i + t.length <= this.length; i++) {
        let j = 0;
        while (j < t.length && w[i + j] === t[j]) j++;
        if (j === t.length) {
          if (best < 0 || i < best) best = i;
          break;
        }
      }
    }
    return best;
  }
}
