import { describe, expect, it } from "vitest";
import { UserError } from "../src/errors.js";
import { argmax, Sampler, type SamplerOptions } from "../src/model/sampler.js";
import { Rng } from "../src/util/random.js";

/** Options with every filter off, so a test turns on only what it checks. */
const PLAIN: SamplerOptions = { temperature: 1, topK: 0, topP: 1, minP: 0, repeatPenalty: 1 };

/** Logits whose softmax is exactly the given probabilities. */
function logitsOf(probs: number[]): Float32Array {
  return Float32Array.from(probs, (p) => Math.log(p));
}

/** Frequencies of each token over `draws` samples. */
function frequencies(sampler: Sampler, logits: Float32Array, draws: number): number[] {
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < draws; i++) counts[sampler.sample(logits, [])]!++;
  return counts.map((c) => c / draws);
}

/** Expects empirical frequencies to match `expected` within `tol` (about 6 standard deviations here). */
function expectDistribution(freq: number[], expected: number[], tol = 0.02): void {
  expect(freq.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    if (expected[i] === 0) expect(freq[i], `token ${i} must never be drawn`).toBe(0);
    else
      expect(Math.abs(freq[i]! - expected[i]!), `token ${i}: ${freq[i]} vs ${expected[i]}`).toBeLessThan(tol);
  }
}

function normalize(w: number[]): number[] {
  const s = w.reduce((a, b) => a + b, 0);
  return w.map((x) => x / s);
}

const PROBS = [0.5, 0.3, 0.15, 0.05];
const DRAWS = 20_000;

describe("greedy", () => {
  it("temperature 0 picks the argmax, ties to the lowest id", () => {
    const s = new Sampler({ temperature: 0, seed: 1 });
    expect(s.sample(Float32Array.from([1, 3, 3, 2]), [])).toBe(1);
    expect(s.sample(Float32Array.from([-5, -1, -2, -1]), [])).toBe(1);
    expect(s.sample(Float32Array.from([7]), [])).toBe(0);
    expect(argmax(Float32Array.from([0, 0, 0]))).toBe(0);
  });

  it("top-k = 1 equals greedy, whatever the temperature", () => {
    const rng = new Rng(7);
    const s = new Sampler({ topK: 1, temperature: 1.5, seed: 3 });
    for (let t = 0; t < 50; t++) {
      const logits = new Float32Array(1000);
      rng.fillNormal(logits, 2);
      expect(s.sample(logits, [])).toBe(argmax(logits));
    }
  });

  it("a very peaked distribution is sampled like greedy", () => {
    const logits = Float32Array.from([0, 50, 0, 0]);
    const s = new Sampler({ seed: 5 });
    for (let i = 0; i < 100; i++) expect(s.sample(logits, [])).toBe(1);
  });
});

describe("filters keep the right candidates", () => {
  const logits = logitsOf(PROBS);

  it("no filter, temperature 1: the softmax itself", () => {
    expectDistribution(frequencies(new Sampler({ ...PLAIN, seed: 11 }), logits, DRAWS), PROBS);
  });

  it("top-k keeps the k most likely", () => {
    const f = frequencies(new Sampler({ ...PLAIN, topK: 2, seed: 12 }), logits, DRAWS);
    expectDistribution(f, normalize([0.5, 0.3, 0, 0]));
  });

  it("ties at a cut go to the lowest ids", () => {
    const tiedK = frequencies(
      new Sampler({ ...PLAIN, topK: 2, seed: 24 }),
      Float32Array.from([1, 2, 2, 2, 0]),
      4000,
    );
    expectDistribution(tiedK, [0, 0.5, 0.5, 0, 0], 0.05);
    const tiedP = frequencies(
      new Sampler({ ...PLAIN, topP: 0.5, seed: 25 }),
      logitsOf([0.4, 0.2, 0.2, 0.2]),
      4000,
    );
    expectDistribution(tiedP, normalize([0.4, 0.2, 0, 0]), 0.05);
  });

  it("top-p keeps the smallest prefix reaching p", () => {
    const f75 = frequencies(new Sampler({ ...PLAIN, topP: 0.75, seed: 13 }), logits, DRAWS);
    expectDistribution(f75, normalize([0.5, 0.3, 0, 0]));
    const f85 = frequencies(new Sampler({ ...PLAIN, topP: 0.85, seed: 14 }), logits, DRAWS);
    expectDistribution(f85, normalize([0.5, 0.3, 0.15, 0]));
    const f40 = frequencies(new Sampler({ ...PLAIN, topP: 0.4, seed: 15 }), logits, 100);
    expectDistribution(f40, [1, 0, 0, 0]);
  });

  it("top-p works on the probabilities after top-k", () => {
    // After top-k 3 the kept probabilities are 0.5/0.95, 0.3/0.95, 0.15/0.95: 0.526 + 0.316 >= 0.8.
    const f = frequencies(new Sampler({ ...PLAIN, topK: 3, topP: 0.8, seed: 16 }), logits, DRAWS);
    expectDistribution(f, normalize([0.5, 0.3, 0, 0]));
  });

  it("min-p keeps tokens at least minP times as likely as the best", () => {
    const f2 = frequencies(new Sampler({ ...PLAIN, minP: 0.2, seed: 17 }), logits, DRAWS);
    expectDistribution(f2, normalize([0.5, 0.3, 0.15, 0]));
    const f5 = frequencies(new Sampler({ ...PLAIN, minP: 0.5, seed: 18 }), logits, DRAWS);
    expectDistribution(f5, normalize([0.5, 0.3, 0, 0]));
  });

  it("top-p and min-p together keep the shorter prefix", () => {
    const a = frequencies(new Sampler({ ...PLAIN, topP: 0.85, minP: 0.5, seed: 19 }), logits, DRAWS);
    expectDistribution(a, normalize([0.5, 0.3, 0, 0]));
    const b = frequencies(new Sampler({ ...PLAIN, topP: 0.75, minP: 0.05, seed: 20 }), logits, DRAWS);
    expectDistribution(b, normalize([0.5, 0.3, 0, 0]));
  });

  it("temperature reshapes only what the filters kept (llama.cpp's order)", () => {
    // Filters see the untempered distribution: a hot temperature must not let token 2 or 3 back in.
    const hot = frequencies(new Sampler({ ...PLAIN, topP: 0.75, temperature: 10, seed: 21 }), logits, DRAWS);
    const w = [0.5 ** 0.1, 0.3 ** 0.1, 0, 0];
    expectDistribution(hot, normalize(w));
    const cold = frequencies(new Sampler({ ...PLAIN, temperature: 0.5, seed: 22 }), logits, DRAWS);
    expectDistribution(cold, normalize(PROBS.map((p) => p * p)));
  });
});

describe("repetition penalty", () => {
  const greedy: SamplerOptions = { temperature: 0, repeatPenalty: 1.1, seed: 1 };

  it("divides positive logits of recent tokens", () => {
    const logits = Float32Array.from([2.0, 1.9, -1, -1]);
    expect(new Sampler({ ...greedy, repeatPenalty: 1 }).sample(logits, [0])).toBe(0);
    expect(new Sampler(greedy).sample(logits, [0])).toBe(1); // 2.0 / 1.1 = 1.82 < 1.9
    expect(logits[0]).toBe(2); // the caller's logits are untouched
  });

  it("multiplies negative logits of recent tokens", () => {
    const logits = Float32Array.from([-1.0, -1.05, -3]);
    expect(new Sampler(greedy).sample(logits, [])).toBe(0);
    expect(new Sampler(greedy).sample(logits, [0])).toBe(1); // -1.0 * 1.1 = -1.1 < -1.05
  });

  it("looks only at the last N tokens and counts each token once", () => {
    const logits = Float32Array.from([2.0, 1.9, 1.7]);
    expect(new Sampler({ ...greedy, repeatLastN: 2 }).sample(logits, [0, 2, 2])).toBe(0);
    expect(new Sampler({ ...greedy, repeatLastN: 3 }).sample(logits, [0, 2, 2])).toBe(1);
    expect(new Sampler({ ...greedy, repeatLastN: 0 }).sample(logits, [0])).toBe(0);
    expect(new Sampler({ ...greedy, repeatLastN: -1 }).sample(logits, [0, 2, 2, 2, 2])).toBe(1);
    // Penalized once even when repeated: 2.0 / 1.1 = 1.82 > 1.7 (three times would be 1.50).
    expect(new Sampler(greedy).sample(Float32Array.from([2.0, 1.7]), [0, 0, 0])).toBe(0);
  });

  it("changes the sampled distribution", () => {
    const logits = logitsOf([0.5, 0.5]);
    // Token 0's logit ln 0.5 < 0 is multiplied by 2: probability ratio 0.25 : 0.5.
    const f = new Array<number>(2).fill(0);
    const s = new Sampler({ ...PLAIN, repeatPenalty: 2, seed: 23 });
    for (let i = 0; i < DRAWS; i++) f[s.sample(logits, [0])]! += 1 / DRAWS;
    expectDistribution(f, normalize([0.25, 0.5]));
  });

  it("ignores history ids outside the vocabulary", () => {
    const logits = Float32Array.from([2.0, 1.9]);
    expect(new Sampler(greedy).sample(logits, [-1, 5, 2.5])).toBe(0);
  });
});

describe("seeding", () => {
  function run(seed: number | undefined, steps = 200): number[] {
    const rng = new Rng(99);
    const s = new Sampler({ seed, temperature: 1, topK: 20, topP: 0.95, minP: 0.01 });
    const history: number[] = [];
    for (let t = 0; t < steps; t++) {
      const logits = new Float32Array(500);
      rng.fillNormal(logits, 1.5);
      history.push(s.sample(logits, history));
    }
    return history;
  }

  it("same seed and logits give the same tokens; another seed other tokens", () => {
    expect(run(42)).toEqual(run(42));
    expect(run(42)).not.toEqual(run(43));
  });

  it("without a seed, picks a random one and reports it", () => {
    const a = new Sampler();
    const b = new Sampler();
    expect(Number.isInteger(a.seed)).toBe(true);
    expect(a.seed).not.toBe(b.seed);
    expect(run(a.seed)).toEqual(run(a.seed));
    expect(new Sampler({ seed: undefined }).options.temperature).toBe(0.8);
  });
});

describe("large vocabularies", () => {
  /** Straightforward reference: full sort, then the same chain. Returns the kept ids in sorted order. */
  function referenceKept(logits: Float32Array, o: Required<Omit<SamplerOptions, "seed">>): number[] {
    const ids = Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]! || a - b);
    let kept = o.topK > 0 ? ids.slice(0, o.topK) : ids;
    const max = logits[kept[0]!]!;
    const z = kept.reduce((s, id) => s + Math.exp(logits[id]! - max), 0);
    if (o.topP < 1) {
      let cum = 0;
      const cut = kept.findIndex((id) => {
        cum += Math.exp(logits[id]! - max) / z;
        return cum >= o.topP;
      });
      if (cut >= 0) kept = kept.slice(0, cut + 1);
    }
    if (o.minP > 0) kept = kept.filter((id) => Math.exp(logits[id]! - max) >= o.minP);
    return kept;
  }

  const configs = [
    { topK: 40, topP: 0.95, minP: 0.05 },
    { topK: 0, topP: 0.9, minP: 0 },
    { topK: 0, topP: 0.5, minP: 0.05 },
    { topK: 100, topP: 1, minP: 0 },
    { topK: 0, topP: 1, minP: 0.1 },
    { topK: 0, topP: 0.99, minP: 0 },
  ];

  for (const c of configs) {
    it(`draws only what the reference keeps, and everything it keeps is reachable (${JSON.stringify(c)})`, () => {
      const rng = new Rng(1234);
      const logits = new Float32Array(32000);
      rng.fillNormal(logits, 2.5);
      const o = { temperature: 1.5, repeatPenalty: 1, repeatLastN: 64, ...c };
      const kept = referenceKept(logits, o);
      const allowed = new Set(kept);
      const s = new Sampler({ ...o, seed: 77 });
      const seen = new Set<number>();
      const draws = kept.length <= 100 ? Math.max(1_000, kept.length * 50) : 500;
      let outside = 0;
      for (let i = 0; i < draws; i++) {
        const t = s.sample(logits, []);
        if (!allowed.has(t)) outside++;
        seen.add(t);
      }
      expect(outside).toBe(0);
      if (kept.length <= 100) expect(seen.size).toBe(kept.length);
    });
  }
});

describe("with a constraint", () => {
  // A vocabulary of 2,000 where a third of the tokens are allowed: the free draw is kept when the
  // constraint allows it, else the draw is made again among the allowed tokens.
  const n = 2000;
  const logits = new Float32Array(n);
  new Rng(5).fillNormal(logits, 1.5);
  const allowedIds = (id: number) => (id * 7919) % 3 === 0;
  const masked = logits.map((v, id) => (allowedIds(id) ? v : Number.NEGATIVE_INFINITY));
  const constraint = (calls: { mask: number }) => ({
    allows: allowedIds,
    mask(l: Float32Array) {
      calls.mask++;
      for (let i = 0; i < l.length; i++) if (!allowedIds(i)) l[i] = Number.NEGATIVE_INFINITY;
    },
  });
  /** Probabilities of a top-k, temperature-only draw from logits `l` (float64 reference). */
  const topKDistribution = (l: Float32Array, k: number, t: number): number[] => {
    const ids = Array.from(l.keys())
      .sort((a, b) => l[b]! - l[a]! || a - b)
      .slice(0, k);
    const p = new Array<number>(l.length).fill(0);
    const z = ids.reduce((s, id) => s + Math.exp((l[id]! - l[ids[0]!]!) / t), 0);
    for (const id of ids) p[id] = Math.exp((l[id]! - l[ids[0]!]!) / t) / z;
    return p;
  };

  it("keeps an allowed free token, else draws from the allowed tokens' top-k, without masking the vocabulary", () => {
    const o = { temperature: 1, topK: 20, topP: 1, minP: 0, repeatPenalty: 1 };
    const free = topKDistribution(logits, 20, 1);
    const again = topKDistribution(masked, 20, 1);
    const refused = free.reduce((s, p, id) => s + (allowedIds(id) ? 0 : p), 0);
    const expected = free.map((p, id) => (allowedIds(id) ? p : 0) + refused * again[id]!);
    const calls = { mask: 0 };
    const s = new Sampler({ ...o, seed: 3 });
    const counts = new Array<number>(n).fill(0);
    for (let i = 0; i < DRAWS; i++) counts[s.sample(logits, [], constraint(calls))]!++;
    expectDistribution(
      counts.map((c) => c / DRAWS),
      expected,
    );
    expect(calls.mask).toBe(0);
  });

  it("masks the whole vocabulary when top-k does not limit the draw, or too few of the best are allowed", () => {
    const calls = { mask: 0 };
    const all = new Sampler({ ...PLAIN, seed: 1 });
    for (let i = 0; i < 50; i++) expect(allowedIds(all.sample(logits, [], constraint(calls)))).toBe(true);
    expect(calls.mask).toBeGreaterThan(0);
    // Only 10 tokens allowed, far down the order: the best 256 candidates hold none of them.
    const few = new Set(
      Array.from(logits.keys())
        .sort((a, b) => logits[a]! - logits[b]!)
        .slice(0, 10),
    );
    const fewCalls = { mask: 0 };
    const s = new Sampler({ temperature: 0.8, topK: 40, seed: 2 });
    const c = {
      allows: (id: number) => few.has(id),
      mask(l: Float32Array) {
        fewCalls.mask++;
        for (let i = 0; i < l.length; i++) if (!few.has(i)) l[i] = Number.NEGATIVE_INFINITY;
      },
    };
    for (let i = 0; i < 20; i++) expect(few.has(s.sample(logits, [], c))).toBe(true);
    expect(fewCalls.mask).toBe(20);
  });

  it("greedy: the best allowed token, ties to the lowest id", () => {
    const l = new Float32Array(n).fill(-5);
    l[4] = 3; // refused (4 * 7919 % 3 = 2)
    l[9] = 2; // allowed
    l[0] = 2; // allowed, lower id: wins the tie
    const s = new Sampler({ temperature: 0, seed: 1 });
    expect(s.sample(l, [], constraint({ mask: 0 }))).toBe(0);
  });
});

describe("options", () => {
  it("uses the documented defaults", () => {
    const o = new Sampler({ seed: 1 }).options;
    expect(o).toMatchObject({
      temperature: 0.8,
      topK: 40,
      topP: 0.95,
      minP: 0.05,
      repeatPenalty: 1,
      repeatLastN: 64,
    });
  });

  it("rejects bad values with a UserError naming the option", () => {
    const bad: [SamplerOptions, string][] = [
      [{ temperature: -1 }, "temperature"],
      [{ temperature: Number.NaN }, "temperature"],
      [{ topK: 1.5 }, "topK"],
      [{ topP: 0 }, "topP"],
      [{ topP: 1.2 }, "topP"],
      [{ minP: -0.1 }, "minP"],
      [{ repeatPenalty: 0 }, "repeatPenalty"],
      [{ repeatLastN: -2 }, "repeatLastN"],
      [{ seed: -1 }, "seed"],
    ];
    for (const [options, name] of bad) {
      expect(() => new Sampler(options)).toThrow(UserError);
      expect(() => new Sampler(options)).toThrow(name);
    }
  });
});
