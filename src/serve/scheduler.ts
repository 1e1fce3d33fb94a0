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
 */
import type { LlamaModel } from "../model/llama.js";
import { type GenerationInfo, StoppingDecoder } from "../model/model.js";
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
  sampling: SamplerOptions;
}

export type SchedulerEvent =
  /** The generation got a sequence and starts evaluating its prompt. */
  | { id: number; type: "started" }
  | { id: number; type: "text"; text: string }
  | { id: number; type: "done"; info: GenerationInfo };

interface Slot {
  seq: number;
  /** The tokens whose keys and values are in this sequence's cache, in order. */
  cached: number[];
  running?: Running;
  /** Step counter at the last use, to pick the least recently used free slot. */
  lastUsed: number;
}

interface Running {
  job: GenerationJob;
  slot: Slot;
  sampler: Sampler;
  text: StoppingDecoder;
  /** Prompt and generated tokens, for the repetition penalty. */
  history: number[];
  maxTokens: number;
  produced: number;
  evaluated: number;
  /** The last sampled token, to be fed in the next step; undefined while the prompt is prefilled. */
  next?: number;
}

export class BatchScheduler {
  private readonly slots: Slot[];
  private readonly queue: GenerationJob[] = [];
  private readonly running: Running[] = [];
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

  /** Generations holding a sequence. */
  get busy(): number {
    return this.running.length;
  }

  /** Generations waiting for a sequence. */
  get waiting(): number {
    return this.queue.length;
  }

  /** Queues a generation; it starts at a later step. */
  submit(job: GenerationJob): void {
    const ctx = this.llama.contextSize;
    if (job.prompt.length === 0 || job.prompt.length >= ctx) {
      throw new Error(`job ${job.id}: a prompt of ${job.prompt.length} tokens does not fit ${ctx}`);
    }
    this.queue.push(job);
  }

  /** Ends a generation now (finish reason "abort"), queued or running; its sequence is free again. */
  cancel(id: number): void {
    const events: SchedulerEvent[] = [];
    const q = this.queue.findIndex((j) => j.id === id);
    if (q >= 0) {
      const [job] = this.queue.splice(q, 1);
      events.push({
        id,
        type: "done",
        info: {
          promptTokens: job!.prompt.length,
          evaluatedPromptTokens: 0,
          completionTokens: 0,
          finishReason: "abort",
        },
      });
    }
    const r = this.running.find((x) => x.job.id === id);
    if (r) this.finish(r, "abort", events);
    if (events.length > 0) this.emit(events);
  }

  /** Runs one forward pass over every running generation; returns false when there was no work. */
  step(): boolean {
    const events: SchedulerEvent[] = [];
    this.admit(events);
    if (this.running.length === 0) {
      if (events.length > 0) this.emit(events);
      return false;
    }
    this.steps++;
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
      if (r.next !== undefined || room === 0) continue;
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
      if (decoding || r.slot.cached.length === r.job.prompt.length) this.sampleNext(r, logits[i]!, events);
    });
    this.emit(events);
    return true;
  }

  /** Gives free sequences to queued generations, reusing the longest cached prefix. */
  private admit(events: SchedulerEvent[]): void {
    while (this.queue.length > 0) {
      const free = this.slots.filter((s) => s.running === undefined);
      if (free.length === 0) return;
      const job = this.queue.shift()!;
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
      const r: Running = {
        job,
        slot: best,
        sampler: new Sampler(job.sampling),
        text: new StoppingDecoder(this.tokenizer, job.stop),
        history: [...job.prompt],
        maxTokens: Math.min(job.maxTokens, this.llama.contextSize - job.prompt.length),
        produced: 0,
        evaluated: job.prompt.length - bestKeep,
      };
      best.running = r;
      this.running.push(r);
      events.push({ id: job.id, type: "started" });
    }
  }

  /** Samples the next token from `logits`; ends the generation or queues the token for the next step. */
  private sampleNext(r: Running, logits: Float32Array, events: SchedulerEvent[]): void {
    r.next = undefined;
    const id = r.sampler.sample(logits, r.history);
    r.produced++;
    if (this.tokenizer.isEog(id)) {
      this.finish(r, "stop", events);
      return;
    }
    r.history.push(id);
    const piece = r.text.push(id);
    if (piece) events.push({ id: r.job.id, type: "text", text: piece });
    if (r.text.stopped) this.finish(r, "stop", events);
    else if (r.produced >= r.maxTokens || r.slot.cached.length + 1 > this.llama.contextSize) {
      this.finish(r, "length", events);
    } else r.next = id;
  }

  private finish(r: Running, reason: GenerationInfo["finishReason"], events: SchedulerEvent[]): void {
    if (reason !== "stop") {
      const rest = r.text.flush();
      if (rest && reason !== "abort") events.push({ id: r.job.id, type: "text", text: rest });
    }
    events.push({
      id: r.job.id,
      type: "done",
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
