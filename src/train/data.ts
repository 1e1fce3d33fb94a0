// Where training batches come from. The trainer asks a BatchSource for micro-batches and stores
// its state in checkpoints, so a resumed run sees exactly the batches an uninterrupted run would.
import { UserError } from "../errors.js";
import { Rng, type RngState } from "../util/random.js";
import type { TokenBatch } from "./model.js";

/** A deterministic stream of micro-batches of `batch` sequences × `seq` tokens. */
export interface BatchSource {
  readonly batch: number;
  readonly seq: number;
  /** The next micro-batch (fresh arrays the caller may keep). */
  next(): TokenBatch;
  /** A JSON-serializable position in the stream, enough to continue exactly (see restore). */
  state(): unknown;
  /** Continues from a state returned by state() of a source over the same data. */
  restore(state: unknown): void;
}

/** A run of token ids that windows are read from (a token cache split, or ids in memory). */
export interface TokenSequence {
  readonly tokens: number;
  /** Copies ids start .. start + out.length − 1 into out. */
  read(start: number, out: Int32Array): void;
}

/** Token ids held in memory as a TokenSequence. */
export class TokenArray implements TokenSequence {
  constructor(readonly ids: Int32Array | Uint16Array | Uint32Array) {}

  get tokens(): number {
    return this.ids.length;
  }

  read(start: number, out: Int32Array): void {
    if (start < 0 || start + out.length > this.ids.length)
      throw new RangeError("TokenArray.read out of range");
    out.set(this.ids.subarray(start, start + out.length));
  }
}

interface WindowState {
  kind: "random-windows";
  tokens: number;
  rng: RngState;
}

/**
 * Pretraining batches: each sequence is a window of seq + 1 consecutive tokens at a start drawn
 * uniformly from a seeded generator; the inputs are its first seq tokens and the targets the
 * next token at each place. Positions run 0..seq−1 in each sequence (documents inside a window
 * see each other, as in llama2.c and nanoGPT).
 */
export class RandomWindows implements BatchSource {
  private readonly rng: Rng;
  private readonly window: Int32Array;

  constructor(
    readonly data: TokenSequence,
    readonly batch: number,
    readonly seq: number,
    seed: number,
    readonly what = "training data",
  ) {
    if (data.tokens < seq + 1) {
      throw new UserError(`${what} has ${data.tokens} tokens, fewer than one sequence of ${seq + 1} needs`);
    }
    this.rng = new Rng(seed);
    this.window = new Int32Array(seq + 1);
  }

  next(): TokenBatch {
    const { batch, seq } = this;
    const tokens = new Int32Array(batch * seq);
    const targets = new Int32Array(batch * seq);
    const starts = this.data.tokens - seq;
    for (let b = 0; b < batch; b++) {
      this.data.read(this.rng.nextInt(starts), this.window);
      tokens.set(this.window.subarray(0, seq), b * seq);
      targets.set(this.window.subarray(1), b * seq);
    }
    return { tokens, targets };
  }

  state(): WindowState {
    return { kind: "random-windows", tokens: this.data.tokens, rng: this.rng.getState() };
  }

  restore(state: unknown): void {
    const s = state as Partial<WindowState> | null;
    if (s?.kind !== "random-windows" || !s.rng)
      throw new UserError("checkpoint: the data position is not a random-window state");
    if (s.tokens !== this.data.tokens) {
      throw new UserError(
        `checkpoint: it was trained on ${s.tokens} tokens of ${this.what}, which now has ${this.data.tokens}; resume with the same data`,
      );
    }
    this.rng.setState(s.rng);
  }
}
