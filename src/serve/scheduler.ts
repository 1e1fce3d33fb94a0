/**
 * Continuous batching: up to `sequences` generations share each forward pass. A generation waits
 * in a FIFO queue until a sequence (a KV cache) is free, joins the running ones between two steps,
 * prefills its prompt in chunks alongside the others' decoding tokens, and leaves the step after
 * its last token, freeing its sequence for the next in line.
 *
 * Each step feeds one token per decoding generation, then as many prompt tokens of the prefilling
 * ones as the batch has room for, in arrival order. LlamaModel.forwardBatch computes every
 * sequence on its own, so a generation's tokens do not depend on which others share its steps:
 * with the same seed it writes the same text alone or in a crowd.
 *
 * A free sequence keeps the tokens in its cache; a new generation takes the free sequence whose
 * cache shares the longest prefix with its prompt and evaluates only the rest (a chat's next turn
 * does not re-read its history).
 *
 * A job with n > 1 replies takes n sequences at once: the first evaluates the prompt, its KV cache
 * is then copied to the others, and each reply draws its own tokens from there (reply i with seed
 * + i). An embedding job takes one sequence and evaluates its inputs one after the other on it;
 * the running embedding jobs share one pass per step (the next part of each one's current input),
 * beside the generations' pass. The batched pass computes every token on its own, so an input's
 * vector does not depend on which others share its steps.
 */
import { Pooler, type PoolingType } from "../model/embedding.js";
import {
  createConstraint,
  type GrammarConstraint,
  GrammarError,
  type LazyGrammarConstraint,
} from "../model/grammar/index.js";
import type { LlamaModel } from "../model/llama.js";
import { type TokenLogprob, tokenLogprob } from "../model/logprobs.js";
import { constrains, type GenerationInfo, StoppingDecoder } from "../model/model.js";
import { Sampler, type SamplerOptions } from "../model/sampler.js";
import type { Tokenizer } from "../tokenizer/index.js";

export interface GenerationJob {
  id: number;
  /** Prompt token ids: at least one, fewer than the context size. */
  prompt: number[];
  /** Most tokens to generate (also bounded by the room left in the context). */
  maxTokens: number;
  /** Generation ends before the first of these strings, which is not returned. */
  stop: string[];
  /** Strings that end a reply as `stop` does, except where the grammar constrains it (the chat template's turn ends). */
  turnEnds?: string[];
  sampling: SamplerOptions;
  /** Replies to the prompt, each on a sequence of its own (default 1). */
  n?: number;
  /**
   * Return each generated token's log-probability with this many most likely alternatives (0:
   * none); undefined: no log-probabilities.
   */
  logprobs?: number;
  /** A GBNF grammar every reply follows (checked before the job is submitted). */
  grammar?: string;
  /** The grammar applies from the first of these texts on (tool choice auto). */
  grammarTriggers?: string[];
}

/** Inputs to embed, each evaluated on its own from position 0 and pooled into one vector. */
export interface EmbeddingJob {
  id: number;
  inputs: number[][];
  pooling: PoolingType;
}

export type SchedulerEvent =
  /** The job got its sequences and starts evaluating its prompt (or inputs). */
  | { id: number; type: "started" }
  /** Text of reply `index`, with the log-probabilities of the tokens it completes when asked for. */
  | { id: number; type: "text"; index: number; text: string; logprobs?: TokenLogprob[] }
  /** Reply `index` ended; the job ends when all its replies have. */
  | { id: number; type: "done"; index: number; info: GenerationInfo }
  /** An embedding job ended: one unit vector per input (none when cancelled). */
  | { id: number; type: "embeddings"; vectors: Float32Array[]; promptTokens: number }
  /** The job failed (its grammar could not go on): it ends with no more events. */
  | { id: number; type: "error"; message: string };

interface Slot {
  seq: number;
  /** The tokens whose keys and values are in this sequence's cache, in order. */
  cached: number[];
  running?: Running;
  /** Held by an embedding job. */
  embedding?: boolean;
  /** Step counter at the last use, to pick the least recently used free slot. */
  lastUsed: number;
}

interface Running {
  job: GenerationJob;
  /** Which reply of the job (0 to n - 1). */
  index: number;
  slot: Slot;
  /** Replies 1 to n - 1, waiting for this one (reply 0) to evaluate the prompt. */
  followers: Running[];
  /** A follower before the prompt's cache is copied to its sequence. */
  waiting: boolean;
  /** Log-probabilities of tokens whose text has not been sent yet. */
  logprobs: TokenLogprob[];
  sampler: Sampler;
  /** The job's grammar, in this reply's state. */
  constraint?: GrammarConstraint | LazyGrammarConstraint;
  text: StoppingDecoder;
  /** Prompt and generated tokens, for the repetition penalty. */
  history: number[];
  maxTokens: number;
  produced: number;
  evaluated: number;
  /** The last sampled token, to be fed in the next step; undefined while the prompt is prefilled. */
  next?: number;
}

interface Embedding {
  job: EmbeddingJob;
  slot: Slot;
  /** The input being evaluated, and how far. */
  input: number;
  pos: number;
  pooler: Pooler;
  vectors: Float32Array[];
}

const isEmbedding = (job: GenerationJob | EmbeddingJob): job is EmbeddingJob => "inputs" in job;

export class BatchScheduler {
  private readonly slots: Slot[];
  private readonly queue: (GenerationJob | EmbeddingJob)[] = [];
  private readonly running: Running[] = [];
  private readonly embedding: Embedding[] = [];
  private steps = 0;

  constructor(
    private readonly llama: LlamaModel,
    private readonly tokenizer: Tokenizer,
    private readonly emit: (events: SchedulerEvent[]) => void,
  ) {
    if (llama.batchSize < llama.sequences) {
      throw new Error(`batch size ${llama.batchSize} is below the ${llama.sequences} sequences`);
    }
    this.slots = Array.from({ length: llama.sequences }, (_, seq) => ({ seq, cached: [], lastUsed: -1 }));
  }

  /** Sequences in use. */
  get busy(): number {
    return this.running.length + this.embedding.length;
  }

  /** Jobs waiting for sequences. */
  get waiting(): number {
    return this.queue.length;
  }

  /** Queues a generation or an embedding job; it starts at a later step. */
  submit(job: GenerationJob | EmbeddingJob): void {
    const ctx = this.llama.contextSize;
    if (isEmbedding(job)) {
      if (job.inputs.length === 0 || job.inputs.some((t) => t.length === 0 || t.length > ctx)) {
        throw new Error(`job ${job.id}: inputs must have 1 to ${ctx} tokens`);
      }
      new Pooler(1, job.pooling); // refuses a pooling it cannot do
    } else {
      if (job.prompt.length === 0 || job.prompt.length >= ctx) {
        throw new Error(`job ${job.id}: a prompt of ${job.prompt.length} tokens does not fit ${ctx}`);
      }
      const n = job.n ?? 1;
      if (!Number.isInteger(n) || n < 1 || n > this.slots.length) {
        throw new Error(`job ${job.id}: ${n} replies need as many of the ${this.slots.length} sequences`);
      }
    }
    this.queue.push(job);
  }

  /** Ends a generation now (finish reason "abort"), queued or running; its sequence is free again. */
  cancel(id: number): void {
    const events: SchedulerEvent[] = [];
    const q = this.queue.findIndex((j) => j.id === id);
    if (q >= 0) {
      const [job] = this.queue.splice(q, 1);
      if (isEmbedding(job!)) events.push({ id, type: "embeddings", vectors: [], promptTokens: 0 });
      else {
        for (let index = 0; index < (job!.n ?? 1); index++) {
          events.push({
            id,
            type: "done",
            index,
            info: {
              promptTokens: job!.prompt.length,
              evaluatedPromptTokens: 0,
              completionTokens: 0,
              finishReason: "abort",
            },
          });
        }
      }
    }
    for (const r of this.running.filter((x) => x.job.id === id)) this.finish(r, "abort", events);
    const e = this.embedding.find((x) => x.job.id === id);
    if (e) this.endEmbedding(e, [], events);
    if (events.length > 0) this.emit(events);
  }

  /** Runs one forward pass over every running generation; returns false when there was no work. */
  step(): boolean {
    const events: SchedulerEvent[] = [];
    this.admit(events);
    if (this.running.length === 0 && this.embedding.length === 0) {
      if (events.length > 0) this.emit(events);
      return false;
    }
    this.steps++;
    if (this.running.some((r) => !r.waiting)) this.generationPass(events);
    if (this.embedding.length > 0) this.embeddingPass(events);
    this.emit(events);
    return true;
  }

  /** One forward pass over the running generations. */
  private generationPass(events: SchedulerEvent[]): void {
    // Decoding tokens first (one each), then prompt chunks in arrival order with the room left.
    const parts: { r: Running; tokens: number[] }[] = [];
    let room = this.llama.batchSize;
    for (const r of this.running) {
      if (r.next !== undefined) {
        parts.push({ r, tokens: [r.next] });
        room--;
      }
    }
    for (const r of this.running) {
      if (r.next !== undefined || r.waiting || room === 0) continue;
      const from = r.slot.cached.length;
      const take = Math.min(room, r.job.prompt.length - from);
      parts.push({ r, tokens: r.job.prompt.slice(from, from + take) });
      room -= take;
    }
    const logits = this.llama.forwardBatch(
      parts.map(({ r, tokens }) => ({ seq: r.slot.seq, tokens, pos0: r.slot.cached.length })),
    );
    parts.forEach(({ r, tokens }, i) => {
      r.slot.cached.push(...tokens);
      r.slot.lastUsed = this.steps;
      const decoding = r.next !== undefined;
      if (decoding) this.sampleNext(r, logits[i]!, events);
      else if (r.slot.cached.length === r.job.prompt.length) {
        // The prompt is in: the other replies start from a copy of its cache, and every reply
        // draws its first token from the same logits.
        for (const f of r.followers) {
          this.llama.copySequence(r.slot.seq, f.slot.seq, r.job.prompt.length);
          f.slot.cached = [...r.job.prompt];
          f.slot.lastUsed = this.steps;
          f.waiting = false;
          this.sampleNext(f, logits[i]!, events);
        }
        r.followers = [];
        this.sampleNext(r, logits[i]!, events);
      }
    });
  }

  /**
   * One forward pass over the running embedding jobs: the next part of each one's current input,
   * in arrival order, as much as the batch has room for.
   */
  private embeddingPass(events: SchedulerEvent[]): void {
    const parts: { e: Embedding; end: number }[] = [];
    let room = this.llama.batchSize;
    for (const e of this.embedding) {
      if (room === 0) break;
      const end = Math.min(e.job.inputs[e.input]!.length, e.pos + room);
      parts.push({ e, end });
      room -= end - e.pos;
    }
    const states = this.llama.hiddenStatesBatch(
      parts.map(({ e, end }) => ({
        seq: e.slot.seq,
        tokens: e.job.inputs[e.input]!.slice(e.pos, end),
        pos0: e.pos,
      })),
    );
    parts.forEach(({ e, end }, i) => {
      e.pooler.add(states[i]!, end - e.pos);
      e.pos = end;
      e.slot.lastUsed = this.steps;
      if (e.pos < e.job.inputs[e.input]!.length) return;
      e.vectors.push(e.pooler.result());
      e.input++;
      e.pos = 0;
      e.pooler = new Pooler(this.llama.config.dim, e.job.pooling);
      if (e.input === e.job.inputs.length) this.endEmbedding(e, e.vectors, events);
    });
  }

  private endEmbedding(e: Embedding, vectors: Float32Array[], events: SchedulerEvent[]): void {
    const promptTokens = vectors.length > 0 ? e.job.inputs.reduce((s, t) => s + t.length, 0) : 0;
    events.push({ id: e.job.id, type: "embeddings", vectors, promptTokens });
    // Its cache holds the last input's keys and values, not a prompt's: not reused.
    e.slot.cached = [];
    e.slot.running = undefined;
    e.slot.embedding = false;
    this.embedding.splice(this.embedding.indexOf(e), 1);
  }

  /**
   * Gives free sequences to queued jobs in order, reusing the longest cached prefix for a
   * generation's prompt. A job that needs more sequences than are free waits, and so do the jobs
   * behind it.
   */
  private admit(events: SchedulerEvent[]): void {
    while (this.queue.length > 0) {
      const free = this.slots.filter((s) => s.running === undefined && !s.embedding);
      const head = this.queue[0]!;
      const need = isEmbedding(head) ? 1 : (head.n ?? 1);
      if (free.length < need) return;
      this.queue.shift();
      if (isEmbedding(head)) {
        const slot = free.reduce((a, b) => (b.lastUsed < a.lastUsed ? b : a));
        slot.embedding = true;
        slot.cached = [];
        this.embedding.push({
          job: head,
          slot,
          input: 0,
          pos: 0,
          pooler: new Pooler(this.llama.config.dim, head.pooling),
          vectors: [],
        });
        events.push({ id: head.id, type: "started" });
        continue;
      }
      const job = head;
      let best = free[0]!;
      let bestKeep = -1;
      for (const s of free) {
        const keep = commonPrefix(s.cached, job.prompt, job.prompt.length - 1);
        if (keep > bestKeep || (keep === bestKeep && s.lastUsed < best.lastUsed)) {
          best = s;
          bestKeep = keep;
        }
      }
      best.cached.length = bestKeep;
      const r = this.start(job, 0, best);
      r.evaluated = job.prompt.length - bestKeep;
      // The other replies take the least recently used free sequences.
      const rest = free.filter((s) => s !== best).sort((a, b) => a.lastUsed - b.lastUsed);
      for (let index = 1; index < (job.n ?? 1); index++) {
        const slot = rest[index - 1]!;
        slot.cached = [];
        const f = this.start(job, index, slot);
        f.waiting = true;
        r.followers.push(f);
      }
      events.push({ id: job.id, type: "started" });
    }
  }

  private start(job: GenerationJob, index: number, slot: Slot): Running {
    const seed = job.sampling.seed;
    const r: Running = {
      job,
      index,
      slot,
      followers: [],
      waiting: false,
      logprobs: [],
      // Reply i draws with seed + i: each is the reply a request with n = 1 and that seed gets.
      sampler: new Sampler({
        ...job.sampling,
        seed: seed === undefined ? undefined : (seed + index) % 2 ** 32,
      }),
      text: new StoppingDecoder(this.tokenizer, job.stop, job.turnEnds),
      history: [...job.prompt],
      maxTokens: Math.min(job.maxTokens, this.llama.contextSize - job.prompt.length),
      produced: 0,
      evaluated: 0,
    };
    slot.running = r;
    this.running.push(r);
    return r;
  }

  /** Samples the next token from `logits`; ends the generation or queues the token for the next step. */
  private sampleNext(r: Running, logits: Float32Array, events: SchedulerEvent[]): void {
    r.next = undefined;
    let id: number;
    try {
      if (r.job.grammar !== undefined && r.constraint === undefined) {
        r.constraint = createConstraint(this.tokenizer, {
          grammar: r.job.grammar,
          grammarTriggers: r.job.grammarTriggers,
        });
      }
      // A grammar that is complete with nothing allowed after it ends the reply, as EOS would.
      if (r.constraint?.done) {
        this.finish(r, "stop", events);
        return;
      }
      if (constrains(r.constraint)) r.text.constrain();
      id = r.sampler.sample(logits, r.history, r.constraint);
      if (!this.tokenizer.isEog(id)) r.constraint?.accept(id);
    } catch (e) {
      if (!(e instanceof GrammarError)) throw e;
      this.fail(r.job, e.message, events);
      return;
    }
    r.produced++;
    if (this.tokenizer.isEog(id)) {
      this.finish(r, "stop", events);
      return;
    }
    if (r.job.logprobs !== undefined) r.logprobs.push(tokenLogprob(logits, id, r.job.logprobs));
    r.history.push(id);
    const piece = r.text.push(id);
    if (piece) this.text(r, piece, events);
    if (r.text.stopped) this.finish(r, "stop", events);
    else if (r.produced >= r.maxTokens || r.slot.cached.length + 1 > this.llama.contextSize) {
      this.finish(r, "length", events);
    } else r.next = id;
  }

  /** Ends every reply of `job` with an error event (the generations in flight stop). */
  private fail(job: GenerationJob, message: string, events: SchedulerEvent[]): void {
    events.push({ id: job.id, type: "error", message });
    for (const r of this.running.filter((x) => x.job === job)) {
      r.followers = [];
      r.slot.running = undefined;
      this.running.splice(this.running.indexOf(r), 1);
    }
  }

  /** A text event of reply r, with the log-probabilities of the tokens not sent yet. */
  private text(r: Running, text: string, events: SchedulerEvent[]): void {
    const e: SchedulerEvent = { id: r.job.id, type: "text", index: r.index, text };
    if (r.job.logprobs !== undefined) {
      e.logprobs = r.logprobs;
      r.logprobs = [];
    }
    events.push(e);
  }

  private finish(r: Running, reason: GenerationInfo["finishReason"], events: SchedulerEvent[]): void {
    if (!this.running.includes(r)) return; // ended already, with the reply it follows
    // Text held back (a possible start of a stop string, a character cut between tokens) is part
    // of the reply unless a stop string came (then flush gives nothing); tokens whose text was
    // never sent (the stop string's) have their log-probabilities dropped with it.
    if (reason !== "abort") {
      const rest = r.text.flush();
      if (rest) this.text(r, rest, events);
    }
    for (const f of r.followers) this.finish(f, reason, events);
    r.followers = [];
    events.push({
      id: r.job.id,
      type: "done",
      index: r.index,
      info: {
        promptTokens: r.job.prompt.length,
        evaluatedPromptTokens: r.evaluated,
        completionTokens: r.produced,
        finishReason: reason,
      },
    });
    r.slot.running = undefined;
    this.running.splice(this.running.indexOf(r), 1);
  }
}

/** Length of the common prefix of a and b, at most `max`. */
function commonPrefix(a: readonly number[], b: readonly number[], max: number): number {
  const n = Math.min(a.length, b.length, max);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}
