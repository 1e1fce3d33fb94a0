import { describe, expect, it } from "vitest";
import {
  candidateProbability,
  estimateJaccard,
  hashString64,
  jaccard,
  lshParameters,
  MinHasher,
  NearDuplicateIndex,
  shingles,
  U64Set,
} from "../src/data/minhash.js";
import { Rng } from "../src/util/random.js";

describe("U64Set", () => {
  it("holds exactly the keys added, through many grows, including zero halves", () => {
    const set = new U64Set(4);
    const reference = new Set<string>();
    const rng = new Rng(1);
    for (let i = 0; i < 50_000; i++) {
      // Few distinct values so that repeats happen; zeros in both halves.
      const hi = rng.nextInt(300) === 0 ? 0 : rng.nextInt(5000);
      const lo = rng.nextInt(7) === 0 ? 0 : rng.nextU32();
      const key = `${hi}:${lo | 1}`;
      expect(set.add(hi, lo)).toBe(!reference.has(key));
      reference.add(key);
    }
    expect(set.size).toBe(reference.size);
    for (const key of reference) {
      const [hi, lo] = key.split(":").map(Number);
      expect(set.has(hi!, lo!)).toBe(true);
    }
    expect(set.has(123456789, 987654321)).toBe(false);
  });

  it("hashes strings to 64 bits with no collisions among 200,000 distinct ones", () => {
    const seen = new Set<string>();
    for (let i = 0; i < 200_000; i++) seen.add(hashString64(`record ${i}`).join(":"));
    expect(seen.size).toBe(200_000);
    expect(hashString64("same")).toEqual(hashString64("same"));
  });
});

function words(rng: Rng, n: number, vocabulary = 5000): string[] {
  return Array.from({ length: n }, () => `w${rng.nextInt(vocabulary)}`);
}

describe("MinHash", () => {
  it("makes word 3-gram shingles of lowercase alphanumeric tokens", () => {
    expect(shingles("The cat, the HAT; the bat!")).toEqual([
      "the cat the",
      "cat the hat",
      "the hat the",
      "hat the bat",
    ]);
    expect(shingles("Just two")).toEqual(["just two"]);
    expect(shingles("!!!")).toEqual([]);
  });

  it("estimates the Jaccard similarity within sampling error", () => {
    const rng = new Rng(2);
    const hasher = new MinHasher({ numPerm: 256 });
    let worst = 0;
    for (let k = 0; k < 40; k++) {
      const a = words(rng, 60);
      const b = [...a];
      // Replace a random share of the words.
      const changes = rng.nextInt(40);
      for (let c = 0; c < changes; c++) b[rng.nextInt(b.length)] = `x${rng.nextInt(5000)}`;
      const exact = jaccard(a.join(" "), b.join(" "));
      const estimate = estimateJaccard(hasher.signature(a.join(" "))!, hasher.signature(b.join(" "))!);
      worst = Math.max(worst, Math.abs(estimate - exact));
    }
    // The standard error at 256 functions is at most 0.5 / 16 = 0.031; 4 sigma.
    expect(worst).toBeLessThan(0.125);
    expect(hasher.signature("")).toBeUndefined();
  });

  it("picks bands and rows whose S-curve is steep at the threshold", () => {
    for (const threshold of [0.5, 0.7, 0.8, 0.9]) {
      const { bands, rows } = lshParameters(threshold, 128);
      expect(bands * rows).toBeLessThanOrEqual(128);
      expect(candidateProbability(threshold - 0.2, bands, rows)).toBeLessThan(0.15);
      expect(candidateProbability(Math.min(0.99, threshold + 0.15), bands, rows)).toBeGreaterThan(0.85);
    }
  });
});

describe("NearDuplicateIndex", () => {
  it("drops near copies and keeps distinct texts", () => {
    const rng = new Rng(3);
    const index = new NearDuplicateIndex({ threshold: 0.8 });
    const originals = Array.from({ length: 2000 }, () => words(rng, 30).join(" "));
    for (const t of originals) expect(index.addIfNew(t)).toBe(true);
    // A copy with one word changed at the end keeps 27 of 29 shingles: Jaccard 0.87.
    let caught = 0;
    for (let i = 0; i < 200; i++) {
      const w = originals[i]!.split(" ");
      w[w.length - 1] = "changed";
      expect(jaccard(w.join(" "), originals[i]!)).toBeGreaterThan(0.85);
      if (!index.addIfNew(w.join(" "))) caught++;
    }
    expect(caught).toBeGreaterThan(190);
    // Unrelated texts of the same vocabulary are kept.
    let kept = 0;
    for (let i = 0; i < 500; i++) if (index.addIfNew(words(rng, 30).join(" "))) kept++;
    expect(kept).toBe(500);
    // Exact repeats, and repeats differing only in case and punctuation, are near copies.
    expect(index.addIfNew(originals[5]!.toUpperCase().replace(/ /g, ", "))).toBe(false);
    expect(index.size).toBe(2000 + 500 + (200 - caught));
  });

  it("checks LSH candidates against the signatures: templated but different texts are all kept", () => {
    const index = new NearDuplicateIndex({ threshold: 0.8 });
    let kept = 0;
    for (let i = 0; i < 6000; i++) {
      // Five of nine shingles shared with every other: Jaccard about 0.38.
      if (index.addIfNew(`Describe item ${i} of the catalogue and its use number ${(i * 7919) % 100003}.`))
        kept++;
    }
    expect(kept).toBe(6000);
    // Band collisions happened (the S-curve is not zero at 0.38) and were all rejected by the check.
    expect(index.stats.candidates).toBeGreaterThan(0);
    expect(index.stats.duplicates).toBe(0);
  });
});
