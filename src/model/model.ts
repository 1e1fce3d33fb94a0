import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { UserError } from "../errors.js";
import { StreamDecoder, Tokenizer } from "../tokenizer/index.js";
import { metadataGetter } from "./config.js";
import { type LlamaLoadOptions, LlamaModel } from "./llama.js";
import { Sampler, type SamplerOptions } from "./sampler.js";
import { type ChatMessage, type ChosenTemplate, chooseTemplate, renderChat } from "./templates.js";

export type { ChatMessage } from "./templates.js";

export interface LoadModelOptions extends LlamaLoadOptions {
  /** Built-in chat template name used by `chat` instead of the file's own template. */
  template?: string;
}

export interface GenerateOptions extends SamplerOptions {
  /** Most tokens to generate (default 256); generation also stops at end-of-generation tokens. */
  maxTokens?: number;
  /** Generation stops before any of these strings; they are not returned. */
  stop?: string[];
  /** Aborts generation between tokens. */
  signal?: AbortSignal;
  /** Add the tokenizer's BOS/EOS (default true for prompts). */
  addSpecial?: boolean;
  /** Called once when generation ends, with token counts and the reason. */
  onDone?: (info: GenerationInfo) => void;
}

export interface GenerationInfo {
  promptTokens: number;
  /** Prompt tokens that had to be evaluated (the rest were already in the KV cache). */
  evaluatedPromptTokens: number;
  completionTokens: number;
  finishReason: "stop" | "length" | "abort";
}

/**
 * A loaded model: tokenizer, weights, one KV cache, sampling and chat formatting.
 * `generate` and `chat` are async iterators of text pieces; consecutive calls reuse the KV cache
 * for the prompt prefix they share with the previous call (so a chat does not re-read its history).
 */
export class Model {
  readonly path: string;
  readonly tokenizer: Tokenizer;
  readonly llama: LlamaModel;
  private cached: number[] = [];
  private busy = false;
  private readonly templateName?: string;

  private constructor(path: string, llama: LlamaModel, tokenizer: Tokenizer, template?: string) {
    this.path = path;
    this.llama = llama;
    this.tokenizer = tokenizer;
    this.templateName = template;
  }

  static async load(path: string, options: LoadModelOptions = {}): Promise<Model> {
    const llama = await LlamaModel.load(path, options);
    try {
      const tokenizer = Tokenizer.fromGgufMetadata(metadataGetter(llama.header));
      if (tokenizer.vocabSize !== llama.config.vocab) {
        throw new UserError(
          `${path}: tokenizer has ${tokenizer.vocabSize} tokens but token_embd.weight has ${llama.config.vocab} rows`,
        );
      }
      const m = new Model(path, llama, tokenizer, options.template);
      if (options.template !== undefined) m.template(); // validate the name now
      return m;
    } catch (e) {
      await llama.dispose();
      throw e;
    }
  }

  get config() {
    return this.llama.config;
  }

  get contextSize(): number {
    return this.llama.contextSize;
  }

  /** A model name for display: general.name, else the file name. */
  get name(): string {
    const n = metadataGetter(this.llama.header)("general.name");
    return typeof n === "string" && n ? n : (this.path.split("/").pop() ?? this.path);
  }

  tokenize(text: string, options: { addSpecial?: boolean; parseSpecial?: boolean } = {}): number[] {
    return this.tokenizer.encode(text, options);
  }

  detokenize(ids: readonly number[]): string {
    return this.tokenizer.decode(ids);
  }

  /** The chat template `chat` uses: --template, else the file's tokenizer.chat_template. */
  template(): ChosenTemplate {
    const file = metadataGetter(this.llama.header)("tokenizer.chat_template");
    return chooseTemplate(typeof file === "string" ? file : undefined, this.templateName);
  }

  /** Renders messages with the chat template, ready to be generated from. */
  formatChat(messages: readonly ChatMessage[]): string {
    const t = this.tokenizer;
    const chosen = this.template();
    return renderChat(messages, {
      name: chosen.name,
      template: chosen.template,
      bosToken: t.bosId !== undefined ? t.tokenText(t.bosId) : "",
      eosToken: t.eosId !== undefined ? t.tokenText(t.eosId) : "",
      addGenerationPrompt: true,
    });
  }

  /** Streams the reply to a conversation, formatted with the chat template. */
  chat(messages: readonly ChatMessage[], options: GenerateOptions = {}): AsyncGenerator<string> {
    const prompt = this.formatChat(messages);
    const stop = [...(options.stop ?? []), ...this.template().stopStrings];
    // The template already holds BOS where the model wants it; special tokens in it are parsed.
    const ids = this.tokenizer.encode(prompt, { addSpecial: false, parseSpecial: true });
    const bos = this.tokenizer.bosId;
    if (this.tokenizer.addBos && bos !== undefined && ids[0] !== bos) ids.unshift(bos);
    return this.generateFromTokens(ids, { ...options, stop });
  }

  /** Streams a continuation of `prompt`. */
  generate(prompt: string, options: GenerateOptions = {}): AsyncGenerator<string> {
    const ids = this.tokenizer.encode(prompt, { addSpecial: options.addSpecial ?? true, parseSpecial: true });
    return this.generateFromTokens(ids, options);
  }

  /** Evaluates `ids` after reusing the cached prefix; returns the logits of the last token. */
  private evaluate(ids: number[]): { logits: Float32Array; evaluated: number } {
    let keep = 0;
    const max = Math.min(this.cached.length, ids.length - 1);
    while (keep < max && this.cached[keep] === ids[keep]) keep++;
    this.cached.length = keep;
    let logits: Float32Array | undefined;
    for (let p = keep; p < ids.length; p += this.llama.batchSize) {
      const chunk = ids.slice(p, Math.min(ids.length, p + this.llama.batchSize));
      logits = this.llama.forward(chunk, p);
      this.cached.push(...chunk);
    }
    return { logits: logits!, evaluated: ids.length - keep };
  }

  async *generateFromTokens(ids: number[], options: GenerateOptions = {}): AsyncGenerator<string> {
    if (this.busy)
      throw new Error("this model is already generating; wait for the other generation to finish");
    if (ids.length === 0) throw new UserError("the prompt is empty (no tokens)");
    const ctx = this.contextSize;
    if (ids.length >= ctx) {
      throw new UserError(
        `the prompt is ${ids.length} tokens, more than the context of ${ctx} tokens allows`,
      );
    }
    this.busy = true;
    const maxTokens = Math.min(options.maxTokens ?? 256, ctx - ids.length);
    const sampler = new Sampler(options);
    const decoder = new StreamDecoder(this.tokenizer, { continuation: true });
    const stop = (options.stop ?? []).filter((s) => s.length > 0);
    const history = [...ids];
    let pending = ""; // text held back because it may be the start of a stop string
    let produced = 0;
    let reason: GenerationInfo["finishReason"] = "length";
    let evaluated = 0;
    try {
      const first = this.evaluate(ids);
      evaluated = first.evaluated;
      let logits = first.logits;
      while (produced < maxTokens) {
        if (options.signal?.aborted) {
          reason = "abort";
          break;
        }
        const id = sampler.sample(logits, history);
        produced++;
        if (this.tokenizer.isEog(id)) {
          reason = "stop";
          break;
        }
        history.push(id);
        pending += decoder.push(id);
        const hit = firstStop(pending, stop);
        if (hit >= 0) {
          pending = pending.slice(0, hit);
          if (pending) yield pending;
          pending = "";
          reason = "stop";
          break;
        }
        const safe = pending.length - longestStopPrefix(pending, stop);
        if (safe > 0) {
          yield pending.slice(0, safe);
          pending = pending.slice(safe);
        }
        if (produced >= maxTokens || this.cached.length + 1 > ctx) break;
        logits = this.llama.forward([id], this.cached.length);
        this.cached.push(id);
        await yieldToEventLoop();
      }
      if (reason !== "stop") {
        pending += decoder.flush();
        if (pending) yield pending;
      }
    } finally {
      this.busy = false;
      options.onDone?.({
        promptTokens: ids.length,
        evaluatedPromptTokens: evaluated,
        completionTokens: produced,
        finishReason: reason,
      });
    }
  }

  /** Forgets the cached prefix (the next call evaluates its whole prompt). */
  reset(): void {
    this.cached = [];
  }

  async dispose(): Promise<void> {
    await this.llama.dispose();
  }
}

/** Index of the earliest complete stop string in `text`, or -1. */
function firstStop(text: string, stop: string[]): number {
  let best = -1;
  for (const s of stop) {
    const i = text.indexOf(s);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

/** Length of the longest suffix of `text` that is a proper prefix of some stop string. */
function longestStopPrefix(text: string, stop: string[]): number {
  let best = 0;
  for (const s of stop) {
    for (let k = Math.min(s.length - 1, text.length); k > best; k--) {
      if (text.endsWith(s.slice(0, k))) {
        best = k;
        break;
      }
    }
  }
  return best;
}

/** Loads a GGUF model for generation and chat. */
export function loadModel(path: string, options: LoadModelOptions = {}): Promise<Model> {
  return Model.load(path, options);
}
