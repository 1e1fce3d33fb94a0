import { describe, expect, it } from "vitest";
import { lcsLength, RougeIndex, rougeL, rougeTokens } from "../src/data/rouge.js";
import { Rng } from "../src/util/random.js";

/** The textbook full-table LCS, as the reference. */
function lcsTable(a: string[], b: string[]): number {
  const t = Array.from({ length: a.length + 1 }, () => new Array<number>(b.length + 1).fill(0));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      t[i]![j] = a[i - 1] === b[j - 1] ? t[i - 1]![j - 1]! + 1 : Math.max(t[i - 1]![j]!, t[i]![j - 1]!);
    }
  }
  return t[a.length]![b.length]!;
}

describe("ROUGE-L", () => {
  it("tokenizes as lowercase letters and digits", () => {
    expect(rougeTokens("Write a Python-3 function, QUICKLY!")).toEqual([
      "write",
      "a",
      "python",
      "3",
      "function",
      "quickly",
    ]);
    expect(rougeTokens("¿¡!")).toEqual([]);
  });

  it("scores F = 2 LCS / (m + n)", () => {
    expect(rougeL("the cat sat on the mat", "the cat sat on the mat")).toBe(1);
    // LCS "the cat the mat" = 4 of 6 and 5 tokens.
    expect(rougeL("the cat sat on the mat", "the cat ate the mat")).toBeCloseTo((2 * 4) / 11, 12);
    expect(rougeL("alpha beta", "gamma delta")).toBe(0);
    expect(rougeL("", "anything")).toBe(0);
  });

  it("the two-row LCS equals the full table on random sequences", () => {
    const rng = new Rng(7);
    for (let k = 0; k < 300; k++) {
      const a = Array.from({ length: rng.nextInt(15) }, () => String(rng.nextInt(6)));
      const b = Array.from({ length: rng.nextInt(15) }, () => String(rng.nextInt(6)));
      const ids = (s: string[]) => Int32Array.from(s, Number);
      expect(lcsLength(ids(a), ids(b))).toBe(lcsTable(a, b));
    }
  });
});

/** Instructions over a small vocabulary so that many pairs are near the threshold. */
function randomInstructions(rng: Rng, count: number, vocabulary: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    if (i > 0 && rng.nextFloat() < 0.4) {
      // An edited copy of an earlier one: a word changed, dropped or added.
      const words = out[rng.nextInt(out.length)]!.split(" ");
      const at = rng.nextInt(words.length);
      const edit = rng.nextInt(3);
      if (edit === 0) words[at] = `w${rng.nextInt(vocabulary)}`;
      else if (edit === 1 && words.length > 1) words.splice(at, 1);
      else words.splice(at, 0, `w${rng.nextInt(vocabulary)}`);
      out.push(words.join(" "));
    } else {
      out.push(Array.from({ length: 1 + rng.nextInt(12) }, () => `w${rng.nextInt(vocabulary)}`).join(" "));
    }
  }
  return out;
}

describe("RougeIndex", () => {
  for (const threshold of [0.7, 0.5, 0.9]) {
    it(`finds exactly the matches a comparison with every kept instruction finds (threshold ${threshold})`, () => {
      const rng = new Rng(threshold * 100);
      const index = new RougeIndex(threshold);
      const kept: string[] = [];
      let matches = 0;
      for (const candidate of randomInstructions(rng, 600, 25)) {
        let best = -1;
        let bestScore = 0;
        kept.forEach((k, i) => {
          const score = rougeL(candidate, k);
          if (score >= threshold && score > bestScore) {
            best = i;
            bestScore = score;
          }
        });
        const found = index.findMatch(candidate);
        if (best < 0) {
          expect(found).toBeUndefined();
          index.add(candidate);
          kept.push(candidate);
        } else {
          matches++;
          expect(found?.score).toBeCloseTo(bestScore, 12);
          expect(rougeL(candidate, kept[found!.index]!)).toBeCloseTo(bestScore, 12);
        }
      }
      // The random set has both outcomes in numbers.
      expect(matches).toBeGreaterThan(50);
      expect(kept.length).toBeGreaterThan(50);
    });
  }

  it("with 50,000 kept instructions, computes the LCS for only a few of them per query", () => {
    // Instructions like real ones: a few very common words and a long tail (Zipf-like).
    const rng = new Rng(3);
    const vocabulary = 20_000;
    const word = () => `w${Math.floor(vocabulary ** rng.nextFloat()) - 1}`;
    const sentence = () => Array.from({ length: 6 + rng.nextInt(14) }, word).join(" ");
    const index = new RougeIndex(0.7);
    const kept: string[] = [];
    for (let i = 0; i < 50_000; i++) {
      const s = sentence();
      kept.push(s);
      index.add(s);
    }
    const before = index.getStats();
    let hits = 0;
    const queries = 300;
    for (let q = 0; q < queries; q++) {
      // Half are edited copies of kept instructions (must be found), half are new.
      if (q % 2 === 0) {
        const words = kept[rng.nextInt(kept.length)]!.split(" ");
        words[rng.nextInt(words.length)] = word();
        if (index.findMatch(words.join(" "))) hits++;
      } else {
        index.findMatch(sentence());
      }
    }
    const after = index.getStats();
    const lcsPerQuery = (after.lcsComputed - before.lcsComputed) / queries;
    const candidatesPerQuery = (after.candidates - before.candidates) / queries;
    // One changed word in 6..19 keeps F >= 0.7 for most copies (a word of 6 can drop it below).
    expect(hits).toBeGreaterThan(0.8 * (queries / 2));
    // A comparison with everything would be 50,000 LCS per query.
    expect(lcsPerQuery).toBeLessThan(10);
    expect(candidatesPerQuery).toBeLessThan(5000);
  });
});
