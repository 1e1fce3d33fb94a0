import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { UserError } from "../errors.js";
import { readGgufHeader } from "../formats/gguf.js";
import { StreamDecoder, Tokenizer } from "../tokenizer/index.js";
import { type ChatPromptOptions, chatPromptPieces, encodePieces, templateTokens } from "./chat-prompt.js";
import { metadataGetter } from "./config.js";
import { type LlamaLoadOptions, LlamaModel } from "./llama.js";
import { Sampler, type SamplerOptions } from "./sampler.js";
import {
  type ChatMessage,
  ChatTemplateBudgetError,
  type ChosenTemplate,
  chooseTemplate,
  renderChat,
} from "./templates.js";

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

export interface ChatOptions extends GenerateOptions {
  /**
   * Let special-token texts in the messages (such as "<|im_end|>") become special tokens. Only for
   * trusted messages: by default message content is text, so a message cannot end its turn early
   * or forge another one; the template's own markup always makes its special tokens.
   */
  parseSpecialInContent?: boolean;
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

  /**
   * The chat template `chat` uses: --template, else the file's tokenizer.chat_template. Without
   * either, a UserError naming the file.
   */
  template(): ChosenTemplate {
    const file = metadataGetter(this.llama.header)("tokenizer.chat_template");
    try {
      return chooseTemplate(typeof file === "string" ? file : undefined, this.templateName);
    } catch (e) {
      if (e instanceof UserError) throw new UserError(`${this.path}: ${e.message}`);
      throw e;
    }
  }

  /** Renders messages with the chat template, ready to be generated from. */
  formatChat(messages: readonly ChatMessage[]): string {
    return formatChatPrompt(this.tokenizer, this.template(), messages);
  }

  /** The prompt tokens `chat` feeds the model for `messages` (see chatPromptTokens). */
  chatPromptTokens(messages: readonly ChatMessage[], options: ChatPromptOptions = {}): number[] {
    return chatPromptTokens(this.tokenizer, this.template(), messages, options);
  }

  /** Streams the reply to a conversation, formatted with the chat template. */
  chat(messages: readonly ChatMessage[], options: ChatOptions = {}): AsyncGenerator<string> {
    const template = this.template();
    const stop = [...(options.stop ?? []), ...template.stopStrings];
    const prompt = chatPromptTokens(this.tokenizer, template, messages, {
      parseSpecialInContent: options.parseSpecialInContent,
    });
    return this.generateFromTokens(prompt, { ...options, stop });
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
    const text = new StoppingDecoder(this.tokenizer, options.stop ?? []);
    const history = [...ids];
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
        const piece = text.push(id);
        if (piece) yield piece;
        if (text.stopped) {
          reason = "stop";
          break;
        }
        if (produced >= maxTokens || this.cached.length + 1 > ctx) break;
        logits = this.llama.forward([id], this.cached.length);
        this.cached.push(id);
        await yieldToEventLoop();
      }
      if (reason !== "stop") {
        const rest = text.flush();
        if (rest) yield rest;
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

/**
 * The text of a generation, token by token: a StreamDecoder that ends at the first of the `stop`
 * strings, which is not returned. Text that may be the start of a stop string is held back until
 * the next tokens show it is not.
 */
export class StoppingDecoder {
  private readonly decoder: StreamDecoder;
  private readonly stop: string[];
  private pending = "";
  /** Set once a stop string has appeared; nothing more is returned after it. */
  stopped = false;

  constructor(tokenizer: Tokenizer, stop: readonly string[]) {
    this.decoder = new StreamDecoder(tokenizer, { continuation: true });
    this.stop = stop.filter((s) => s.length > 0);
  }

  /** Adds one generated token; returns the text that became final (possibly ""). */
  push(id: number): string {
    if (this.stopped) return "";
    this.pending += this.decoder.push(id);
    const hit = firstStop(this.pending, this.stop);
    if (hit >= 0) {
      const out = this.pending.slice(0, hit);
      this.pending = "";
      this.stopped = true;
      return out;
    }
    const safe = this.pending.length - longestStopPrefix(this.pending, this.stop);
    const out = this.pending.slice(0, safe);
    this.pending = this.pending.slice(safe);
    return out;
  }

  /** The end of generation: returns the text held back (nothing after a stop string). */
  flush(): string {
    if (this.stopped) return "";
    const out = this.pending + this.decoder.flush();
    this.pending = "";
    return out;
  }
}

/** Renders a conversation with a chosen chat template, the tokenizer's BOS and EOS filled in. */
export function formatChatPrompt(
  tokenizer: Tokenizer,
  template: ChosenTemplate,
  messages: readonly ChatMessage[],
): string {
  return renderChat(messages, {
    name: template.name,
    template: template.template,
    ...templateTokens(tokenizer),
    addGenerationPrompt: true,
  });
}

/**
 * The prompt tokens of a conversation. Special-token texts in the template's markup become special
 * tokens; message content is text unless `parseSpecialInContent` (see chat-prompt.ts). The
 * template already holds BOS where the model wants it; BOS is added only when the tokenizer adds
 * one and the prompt does not start with it.
 */
export function chatPromptTokens(
  tokenizer: Tokenizer,
  template: ChosenTemplate,
  messages: readonly ChatMessage[],
  options: ChatPromptOptions = {},
): number[] {
  const ids = encodePieces(tokenizer, chatPromptPieces(tokenizer, template, messages, options)).flat();
  const bos = tokenizer.bosId;
  if (tokenizer.addBos && bos !== undefined && ids[0] !== bos) ids.unshift(bos);
  return ids;
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

/**
 * Why chat cannot work on the model file at `path` with the `requested` built-in template (or
 * none): the one-line reason (it has no chat template, one that does not parse, or one that goes
 * past its rendering budget on a one-message conversation), or undefined when it can. Reads only
 * the file's header.
 */
export function chatTemplateProblem(path: string, requested?: string): string | undefined {
  const get = metadataGetter(readGgufHeader(path));
  const file = get("tokenizer.chat_template");
  let template: ChosenTemplate;
  try {
    template = chooseTemplate(typeof file === "string" ? file : undefined, requested);
  } catch (e) {
    if (e instanceof UserError) return `${path}: ${e.message}`;
    throw e;
  }
  try {
    formatChatPrompt(Tokenizer.fromGgufMetadata(get), template, [{ role: "user", content: "Hello" }]);
  } catch (e) {
    // An error the template raises may be about this conversation only; a budget error is not.
    if (e instanceof ChatTemplateBudgetError) return `${path}: ${e.message}`;
    if (!(e instanceof UserError)) throw e;
  }
  return undefined;
}

/** Loads a GGUF model for generation and chat. */
export function loadModel(path: string, options: LoadModelOptions = {}): Promise<Model> {
  return Model.load(path, options);
}
