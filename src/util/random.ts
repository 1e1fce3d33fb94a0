/**
 * A small seeded pseudo-random generator (xoshiro128**, seeded through splitmix32), so that weights,
 * data shuffles and tests are reproducible from one integer seed. Not for cryptography.
 */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  private spareNormal: number | undefined;

  constructor(seed = 0) {
    let x = seed >>> 0;
    const next = (): number => {
      // splitmix32
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** The generator's full state (four words and a pending normal sample), for checkpoints. */
  getState(): RngState {
    return {
      words: [this.s0 >>> 0, this.s1 >>> 0, this.s2 >>> 0, this.s3 >>> 0],
      spareNormal: this.spareNormal ?? null,
    };
  }

  /** Continues from a state returned by getState. */
  setState(state: RngState): void {
    const w = state.words;
    if (
      !Array.isArray(w) ||
      w.length !== 4 ||
      !w.every((x) => Number.isInteger(x) && x >= 0 && x < 2 ** 32)
    ) {
      throw new RangeError("Rng.setState: the state needs four unsigned 32-bit words");
    }
    [this.s0, this.s1, this.s2, this.s3] = w.map((x) => x | 0) as [number, number, number, number];
    this.spareNormal = state.spareNormal ?? undefined;
  }

  /** Uniform unsigned 32-bit integer. */
  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform float in [0, 1) with 32 random bits. */
  nextFloat(): number {
    return this.nextU32() / 4294967296;
  }

  /** Normally distributed number (Box-Muller), mean 0 and standard deviation 1 unless given. */
  nextNormal(mean = 0, std = 1): number {
    if (this.spareNormal !== undefined) {
      const z = this.spareNormal;
      this.spareNormal = undefined;
      return mean + std * z;
    }
    let u = 0;
    while (u === 0) u = this.nextFloat();
    const v = this.nextFloat();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spareNormal = r * Math.sin(2 * Math.PI * v);
    return mean + std * r * Math.cos(2 * Math.PI * v);
  }

  /** Uniform integer in [0, n) without modulo bias; n must be a positive integer no larger than 2^32. */
  nextInt(n: number): number {
    if (!(n > 0 && n <= 4294967296 && Number.isInteger(n)))
      throw new RangeError(`Rng.nextInt: bad bound ${n}`);
    const limit = 4294967296 - (4294967296 % n);
    let x = this.nextU32();
    while (x >= limit) x = this.nextU32();
    return x % n;
  }

  /** Fills `out` with normal samples times `std` and returns it. */
  fillNormal<T extends Float32Array | Float64Array>(out: T, std = 1, mean = 0): T {
    for (let i = 0; i < out.length; i++) out[i] = this.nextNormal(mean, std);
    return out;
  }

  /** Shuffles an array in place (Fisher-Yates) and returns it. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.nextInt(i + 1);
      const t = items[i]!;
      items[i] = items[j]!;
      items[j] = t;
    }
    return items;
  }
}

/** A serializable snapshot of an Rng. */
export interface RngState {
  words: number[];
  spareNormal: number | null;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
