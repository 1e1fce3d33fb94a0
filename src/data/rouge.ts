/**
 * ROUGE-L between instructions, and an index that finds whether a new instruction is too close to
 * any kept one without comparing it to all of them.
 *
 * Tokens are lowercase runs of ASCII letters and digits (every other character separates them), as
 * the usual ROUGE scorer tokenizes English without stemming. ROUGE-L's F-measure of a candidate with
 * m tokens against a reference with n tokens whose longest common subsequence has l tokens is
 * 2l / (m + n) (precision l/m and recall l/n, weighted equally).
 *
 * The index answers "is there a kept instruction with F >= threshold?" exactly, but computes the LCS
 * only for the few references that can still reach the threshold:
 *   - F >= θ needs l >= θ(m + n) / 2, and l <= min(m, n), so n lies in [θm / (2 - θ), (2 - θ)m / θ];
 *     hence l >= t = θm / (2 - θ) for every possible n (the bound is tightest at the smallest n).
 *   - l is at most the number of tokens the two share (counted with repetition). If they share at
 *     least t tokens, then any m - t + 1 of the candidate's tokens include one of the shared ones.
 *     So only references that contain one of the candidate's m - t + 1 rarest tokens are looked at
 *     ("prefix filtering"); rare tokens have short lists of references.
 *   - For each such reference, the length range and the exact shared-token count are checked
 *     before the O(mn) LCS.
 */

/** Lowercase alphanumeric tokens of a text. */
export function rougeTokens(text: string): string[] {
  return text.toLowerCase().match(/[a-z0-9]+/g) ?? [];
}

/** Length of the longest common subsequence of two token sequences (ids). */
export function lcsLength(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length === 0 || b.length === 0) return 0;
  // Keep the shorter sequence as the row to use less memory.
  if (b.length > a.length) [a, b] = [b, a];
  const n = b.length;
  let prev = new Int32Array(n + 1);
  let row = new Int32Array(n + 1);
  for (let i = 0; i < a.length; i++) {
    const ai = a[i];
    for (let j = 0; j < n; j++) {
      row[j + 1] = ai === b[j] ? prev[j]! + 1 : Math.max(prev[j + 1]!, row[j]!);
    }
    [prev, row] = [row, prev];
  }
  return prev[n]!;
}

/** ROUGE-L F-measure of two token sequences. */
export function rougeLFromTokens(a: ArrayLike<number> | string[], b: ArrayLike<number> | string[]): number {
  if (a.length === 0 || b.length === 0) return 0;
  const ids = new Map<string | number, number>();
  const toIds = (s: ArrayLike<number> | string[]) =>
    Int32Array.from(Array.from(s as ArrayLike<string | number>), (t) => {
      const known = ids.get(t);
      if (known !== undefined) return known;
      ids.set(t, ids.size);
      return ids.size - 1;
    });
  return (2 * lcsLength(toIds(a), toIds(b))) / (a.length + b.length);
}

/** ROUGE-L F-measure of two texts. */
export function rougeL(a: string, b: string): number {
  return rougeLFromTokens(rougeTokens(a), rougeTokens(b));
}

export interface RougeMatch {
  /** Index of the kept instruction (in the order they were added). */
  index: number;
  score: number;
}

/** Counters that show how much work the filters saved. */
export interface RougeIndexStats {
  /** Instructions in the index. */
  size: number;
  /** Queries answered. */
  queries: number;
  /** References that shared a prefix token with a query. */
  candidates: number;
  /** LCS computations done (candidates that passed the length and shared-token bounds). */
  lcsComputed: number;
}

/**
 * Kept instructions, indexed by token, for ROUGE-L near-duplicate checks. Memory: the token ids of
 * every kept instruction plus one posting per distinct token of each.
 */
export class RougeIndex {
  readonly threshold: number;
  private readonly vocabulary = new Map<string, number>();
  /** Per token id: indices of the instructions that contain it (each once, ascending). */
  private readonly postings: number[][] = [];
  /** Per instruction: its token ids. */
  private readonly sequences: Int32Array[] = [];
  private readonly stats = { queries: 0, candidates: 0, lcsComputed: 0 };
  // Scratch space reused across queries.
  private seen = new Int32Array(0);
  private queryStamp = 0;

  /** `threshold`: a candidate matches a kept instruction when its ROUGE-L F >= threshold. */
  constructor(threshold = 0.7) {
    if (!(threshold > 0 && threshold <= 1)) throw new RangeError(`RougeIndex: threshold ${threshold}`);
    this.threshold = threshold;
  }

  get size(): number {
    return this.sequences.length;
  }

  getStats(): RougeIndexStats {
    return { size: this.size, ...this.stats };
  }

  /** Adds an instruction (its text or its tokens); returns its index. */
  add(instruction: string | string[]): number {
    const tokens = typeof instruction === "string" ? rougeTokens(instruction) : instruction;
    const ids = new Int32Array(tokens.length);
    const index = this.sequences.length;
    for (let i = 0; i < tokens.length; i++) {
      let id = this.vocabulary.get(tokens[i]!);
      if (id === undefined) {
        id = this.postings.length;
        this.vocabulary.set(tokens[i]!, id);
        this.postings.push([]);
      }
      ids[i] = id;
      const list = this.postings[id]!;
      if (list[list.length - 1] !== index) list.push(index);
    }
    this.sequences.push(ids);
    return index;
  }

  /**
   * The first kept instruction whose ROUGE-L with `instruction` is at least the threshold (the one
   * with the highest score among those, so the report can show it), or undefined when there is none.
   */
  findMatch(instruction: string | string[]): RougeMatch | undefined {
    this.stats.queries++;
    const tokens = typeof instruction === "string" ? rougeTokens(instruction) : instruction;
    const m = tokens.length;
    if (m === 0 || this.sequences.length === 0) return undefined;
    const theta = this.threshold;
    const eps = 1e-9;
    // Unknown tokens get ids no kept instruction has (-1, -2, ...), so they never match.
    const query = new Int32Array(m);
    const counts = new Map<number, number>();
    let unknown = 0;
    for (let i = 0; i < m; i++) {
      const id = this.vocabulary.get(tokens[i]!) ?? -1 - unknown++;
      query[i] = id;
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    const minShared = Math.max(1, Math.ceil((theta * m) / (2 - theta) - eps));
    const minLength = Math.ceil((theta * m) / (2 - theta) - eps);
    const maxLength = Math.floor(((2 - theta) * m) / theta + eps);
    // The candidate's m - minShared + 1 rarest tokens (unknown ones are the rarest of all).
    const byRarity = Array.from(query).sort((a, b) => this.frequency(a) - this.frequency(b));
    const prefix = new Set(byRarity.slice(0, m - minShared + 1));

    if (this.seen.length < this.sequences.length) {
      const grown = new Int32Array(Math.max(1024, this.sequences.length * 2));
      grown.set(this.seen);
      this.seen = grown;
    }
    const stamp = ++this.queryStamp;
    let best: RougeMatch | undefined;
    for (const id of prefix) {
      if (id < 0) continue;
      for (const ref of this.postings[id]!) {
        if (this.seen[ref] === stamp) continue;
        this.seen[ref] = stamp;
        this.stats.candidates++;
        const seq = this.sequences[ref]!;
        const n = seq.length;
        if (n < minLength || n > maxLength) continue;
        const needed = (theta * (m + n)) / 2 - eps;
        if (sharedTokens(counts, seq) < needed) continue;
        this.stats.lcsComputed++;
        const l = lcsLength(query, seq);
        if (l < needed) continue;
        const score = (2 * l) / (m + n);
        if (!best || score > best.score || (score === best.score && ref < best.index)) {
          best = { index: ref, score };
        }
      }
    }
    return best;
  }

  private frequency(id: number): number {
    return id < 0 ? -1 : this.postings[id]!.length;
  }
}

/** Tokens two sequences share, counted with repetition (multiset intersection size). */
function sharedTokens(queryCounts: Map<number, number>, seq: Int32Array): number {
  const left = new Map(queryCounts);
  let shared = 0;
  for (let i = 0; i < seq.length; i++) {
    const c = left.get(seq[i]!);
    if (c) {
      shared++;
      left.set(seq[i]!, c - 1);
    }
  }
  return shared;
}
