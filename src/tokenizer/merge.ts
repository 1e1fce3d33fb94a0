/**
 * The merge loop shared by both tokenizers: symbols in a doubly linked list, candidate pairs in
 * a binary min-heap ordered by (priority, left index). This is llama.cpp's llm_tokenizer_spm /
 * llm_tokenizer_bpe session loop: pop the best pair, skip it if either side has changed since it
 * was queued, merge right into left, queue the new neighbours.
 */

/** Priority of merging `left` + `right` (lower merges first), or undefined when they don't merge. */
export type PairPriority = (left: string, right: string) => number | undefined;

// Scratch space reused across calls (the loop is synchronous and not re-entered).
let prev = new Int32Array(64);
let next = new Int32Array(64);
// Heap of pairs in parallel arrays: priority, left index, right index, combined length.
let hp = new Float64Array(192);
let hl = new Int32Array(192);
let hr = new Int32Array(192);
let hs = new Int32Array(192);

function reserve(n: number): void {
  if (prev.length >= n) return;
  const size = Math.max(n, prev.length * 2);
  prev = new Int32Array(size);
  next = new Int32Array(size);
  // At most n - 1 initial pairs plus two per merge (at most n - 1 merges) are ever queued.
  hp = new Float64Array(3 * size);
  hl = new Int32Array(3 * size);
  hr = new Int32Array(3 * size);
  hs = new Int32Array(3 * size);
}

function less(a: number, b: number): boolean {
  return hp[a]! < hp[b]! || (hp[a] === hp[b] && hl[a]! < hl[b]!);
}

function swap(a: number, b: number): void {
  let t = hp[a]!;
  hp[a] = hp[b]!;
  hp[b] = t;
  t = hl[a]!;
  hl[a] = hl[b]!;
  hl[b] = t;
  t = hr[a]!;
  hr[a] = hr[b]!;
  hr[b] = t;
  t = hs[a]!;
  hs[a] = hs[b]!;
  hs[b] = t;
}

/**
 * Merge `symbols` (each a non-empty string, in order) in place and return the surviving symbols.
 * Ties on priority go to the leftmost pair, as llama.cpp's comparators do.
 */
export function mergeSymbols(symbols: string[], priority: PairPriority): string[] {
  const n = symbols.length;
  if (n < 2) return symbols;
  reserve(n);
  const text = symbols;
  for (let i = 0; i < n; i++) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  let size = 0;

  const push = (left: number, right: number): void => {
    if (left < 0 || right < 0) return;
    const p = priority(text[left]!, text[right]!);
    if (p === undefined) return;
    let i = size++;
    hp[i] = p;
    hl[i] = left;
    hr[i] = right;
    hs[i] = text[left]!.length + text[right]!.length;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!less(i, parent)) break;
      swap(i, parent);
      i = parent;
    }
  };

  for (let i = 1; i < n; i++) push(i - 1, i);

  while (size > 0) {
    const left = hl[0]!;
    const right = hr[0]!;
    const pairSize = hs[0]!;
    // pop
    size--;
    if (size > 0) {
      swap(0, size);
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < size && less(l, m)) m = l;
        if (r < size && less(r, m)) m = r;
        if (m === i) break;
        swap(i, m);
        i = m;
      }
    }
    const lt = text[left]!;
    const rt = text[right]!;
    // A side that was merged away is empty; a side that grew no longer adds up to the queued size.
    if (lt.length === 0 || rt.length === 0 || lt.length + rt.length !== pairSize) continue;
    text[left] = lt + rt;
    text[right] = "";
    const after = next[right]!;
    next[left] = after;
    if (after >= 0) prev[after] = left;
    push(prev[left]!, left);
    push(left, after);
  }

  const out: string[] = [];
  for (let i = 0; i !== -1; i = next[i]!) out.push(text[i]!);
  return out;
}
