import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { AbortError, UserError } from "../errors.js";
import { type GgufHeader, readGgufHeader } from "../formats/gguf.js";
import { StreamDecoder, Tokenizer } from "../tokenizer/index.js";
import { type ChatPromptOptions, chatPromptPieces, encodePieces, templateTokens } from "./chat-prompt.js";
import { type LlamaConfig, metadataGetter } from "./config.js";
import { Pooler, type PoolingType, poolingProblem, poolingTypeOf } from "./embedding.js";
import {
  type ConstraintOptions,
  createConstraint,
  type GrammarConstraint,
  LazyGrammarConstraint,
} from "./grammar/index.js";
import { type LlamaLoadOptions, LlamaModel } from "./llama.js";
import type { WorkerModel } from "./model-worker.js";
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
  /**
   * Run the model in a worker thread (default true), so that prompt evaluation and generation
   * never block the event loop; false runs it on the calling thread (the `Model` class).
   */
  worker?: boolean;
}

export interface GenerateOptions extends SamplerOptions, ConstraintOptions {
  /** Most tokens to generate (default 256); generation also stops at end-of-generation tokens. */
  maxTokens?: number;
  /** Generation stops before any of these strings; they are not returned. */
  stop?: string[];
  /**
   * Strings that end the text as `stop` does, except where a grammar constrains it: there the
   * grammar decides where the text ends. `chat` adds its template's turn ends here (a JSON
   * string that a grammar has the model write may well contain one).
   */
  turnEnds?: string[];
  /**
   * Stops the work between two prompt batches or two tokens: the iterator then rejects with an
   * AbortError (name "AbortError", code "ABORT_ERR"), after onDone with finish reason "abort".
   */
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

export interface EmbedOptions {
  /** Stops the work between two batches of the input: the promise rejects with an AbortError. */
  signal?: AbortSignal;
}

export interface GenerationInfo {
  promptTokens: number;
  /** Prompt tokens that had to be evaluated (the rest were already in the KV cache). */
  evaluatedPromptTokens: number;
  completionTokens: number;
  finishReason: "stop" | "length" | "abort";
}

/**
 * What every loaded model offers, on the calling thread (`Model`) or in a worker thread
 * (`WorkerModel`, what loadModel gives by default): tokenizer, chat formatting, generation as an
 * async iterator of text pieces, embeddings.
 */
export abstract class ModelBase {
  readonly path: string;
  readonly tokenizer: Tokenizer;
  readonly header: GgufHeader;
  protected readonly templateName?: string;

  protected constructor(path: string, header: GgufHeader, tokenizer: Tokenizer, template?: string) {
    this.path = path;
    this.header = header;
    this.tokenizer = tokenizer;
    this.templateName = template;
  }

  abstract get config(): LlamaConfig;
  /** Tokens the KV cache holds: prompt and reply together. */
  abstract get contextSize(): number;
  /** Compute threads. */
  abstract get threads(): number;

  /** A model name for display: general.name, else the file name. */
  get name(): string {
    const n = metadataGetter(this.header)("general.name");
    return typeof n === "string" && n ? n : (this.path.split("/").pop() ?? this.path);
  }

  /** How `embed` pools the tokens' states: the file's `<arch>.pooling_type`, else mean. */
  get poolingType(): PoolingType {
    return poolingTypeOf(metadataGetter(this.header), this.path);
  }

  tokenize(text: string, options: { addSpecial?: boolean; parseSpecial?: boolean } = {}): number[] {
    return this.tokenizer.encode(text, options);
  }

  detokenize(ids: readonly number[]): string {
    return this.tokenizer.decode(ids);
  }

  /**
   * The chat template `chat` uses: --template, else the file's tokenizer.chat_template. Without
   * either, a UserError naming the file (code ERR_NO_CHAT_TEMPLATE).
   */
  template(): ChosenTemplate {
    const file = metadataGetter(this.header)("tokenizer.chat_template");
    try {
      return chooseTemplate(typeof file === "string" ? file : undefined, this.templateName);
    } catch (e) {
      if (e instanceof UserError)
        throw new UserError(`${this.path}: ${e.message}`, 400, "ERR_NO_CHAT_TEMPLATE");
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
    const turnEnds = [...(options.turnEnds ?? []), ...template.stopStrings];
    const prompt = chatPromptTokens(this.tokenizer, template, messages, {
      parseSpecialInContent: options.parseSpecialInContent,
    });
    return this.generateFromTokens(prompt, { ...options, turnEnds });
  }

  /** Streams a continuation of `prompt`. */
  generate(prompt: string, options: GenerateOptions = {}): AsyncGenerator<string> {
    const ids = this.tokenizer.encode(prompt, { addSpecial: options.addSpecial ?? true, parseSpecial: true });
    return this.generateFromTokens(ids, options);
  }

  /** Streams a continuation of the prompt `ids`. */
  abstract generateFromTokens(ids: number[], options?: GenerateOptions): AsyncGenerator<string>;

  /**
   * The embedding of a text (tokenized with BOS/EOS as a prompt) or of token ids: the hidden
   * states after the output norm, pooled as `poolingType` says and scaled to unit length.
   * It takes the KV cache: the next generation evaluates its whole prompt.
   */
  embed(input: string | readonly number[], options: EmbedOptions = {}): Promise<Float32Array> {
    const ids = typeof input === "string" ? this.tokenizer.encode(input, { addSpecial: true }) : [...input];
    return this.embedTokens(ids, options);
  }

  protected abstract embedTokens(ids: number[], options: EmbedOptions): Promise<Float32Array>;

  /** Forgets the cached prefix (the next call evaluates its whole prompt). */
  abstract reset(): void;

  abstract dispose(): Promise<void>;
}

/** The checks every prompt passes before it is evaluated. */
export function checkPrompt(ids: readonly number[], contextSize: number, what = "prompt"): void {
  if (ids.length === 0) throw new UserError(`the ${what} is empty (no tokens)`, 400, "ERR_EMPTY_PROMPT");
  if (ids.length >= contextSize && what === "prompt") {
    throw new UserError(
      `the prompt is ${ids.length} tokens, more than the context of ${contextSize} tokens allows`,
      400,
      "ERR_CONTEXT_OVERFLOW",
    );
  }
  if (ids.length > contextSize) {
    throw new UserError(
      `the ${what} is ${ids.length} tokens, more than the context of ${contextSize} tokens`,
      400,
      "ERR_CONTEXT_OVERFLOW",
    );
  }
}

export function busyError(): UserError {
  return new UserError(
    "this model is already generating; wait for the other generation to finish",
    409,
    "ERR_MODEL_BUSY",
  );
}

function abortError(signal: AbortSignal): AbortError {
  return new AbortError("the generation was aborted", { cause: signal.reason });
}

/**
 * A loaded model on the calling thread: tokenizer, weights, one KV cache, sampling and chat
 * formatting. `generate` and `chat` are async iterators of text pieces; consecutive calls reuse
 * the KV cache for the prompt prefix they share with the previous call (so a chat does not
 * re-read its history). The forward passes run on this thread between awaits: loadModel's default,
 * WorkerModel, keeps them off the event loop.
 */
export class Model extends ModelBase {
  readonly llama: LlamaModel;
  private cached: number[] = [];
  private busy = false;

  private constructor(path: string, llama: LlamaModel, tokenizer: Tokenizer, template?: string) {
    super(path, llama.header, tokenizer, template);
    this.llama = llama;
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

  get config(): LlamaConfig {
    return this.llama.config;
  }

  get contextSize(): number {
    return this.llama.contextSize;
  }

  get threads(): number {
    return this.llama.threads;
  }

  /**
   * Evaluates `ids` after reusing the cached prefix, a batch at a time, yielding to the event loop
   * between batches (where an abort is seen); returns the logits of the last token.
   */
  private async evaluate(
    ids: number[],
    signal?: AbortSignal,
  ): Promise<{ logits: Float32Array; evaluated: number }> {
    let keep = 0;
    const max = Math.min(this.cached.length, ids.length - 1);
    while (keep < max && this.cached[keep] === ids[keep]) keep++;
    this.cached.length = keep;
    let logits: Float32Array | undefined;
    for (let p = keep; p < ids.length; p += this.llama.batchSize) {
      if (p > keep) {
        await yieldToEventLoop();
        if (signal?.aborted) return { logits: new Float32Array(0), evaluated: p - keep };
      }
      const chunk = ids.slice(p, Math.min(ids.length, p + this.llama.batchSize));
      logits = this.llama.forward(chunk, p);
      this.cached.push(...chunk);
    }
    return { logits: logits!, evaluated: ids.length - keep };
  }

  async *generateFromTokens(ids: number[], options: GenerateOptions = {}): AsyncGenerator<string> {
    if (this.busy) throw busyError();
    checkPrompt(ids, this.contextSize);
    const signal = options.signal;
    if (signal?.aborted) throw abortError(signal);
    const constraint = createConstraint(this.tokenizer, options);
    this.busy = true;
    const ctx = this.contextSize;
    const maxTokens = Math.min(options.maxTokens ?? 256, ctx - ids.length);
    const sampler = new Sampler(options);
    const text = new StoppingDecoder(this.tokenizer, options.stop ?? [], options.turnEnds);
    const history = [...ids];
    let produced = 0;
    let reason: GenerationInfo["finishReason"] = "length";
    let evaluated = 0;
    try {
      const first = await this.evaluate(ids, signal);
      evaluated = first.evaluated;
      let logits = first.logits;
      while (produced < maxTokens) {
        if (signal?.aborted) {
          reason = "abort";
          break;
        }
        // A grammar that is complete with nothing allowed after it ends the text, as EOS would.
        if (constraint?.done) {
          reason = "stop";
          break;
        }
        if (constrains(constraint)) text.constrain();
        const id = sampler.sample(logits, history, constraint);
        produced++;
        if (this.tokenizer.isEog(id)) {
          reason = "stop";
          break;
        }
        constraint?.accept(id);
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
      if (reason === "abort") throw abortError(signal!);
      // Text held back (a possible start of a stop string, a character cut between tokens) is
      // part of the reply unless a stop string came.
      const rest = text.flush();
      if (rest) yield rest;
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

  protected async embedTokens(ids: number[], options: EmbedOptions = {}): Promise<Float32Array> {
    if (this.busy) throw busyError();
    checkPrompt(ids, this.contextSize, "input");
    const problem = poolingProblem(this.poolingType);
    if (problem) throw new UserError(`${this.path}: ${problem}`);
    const signal = options.signal;
    if (signal?.aborted) throw abortError(signal);
    this.busy = true;
    // The states overwrite the cache: nothing of it can be reused after.
    this.cached = [];
    try {
      const pooler = new Pooler(this.config.dim, this.poolingType);
      for (let p = 0; p < ids.length; p += this.llama.batchSize) {
        if (p > 0) {
          await yieldToEventLoop();
          if (signal?.aborted) throw abortError(signal);
        }
        const chunk = ids.slice(p, Math.min(ids.length, p + this.llama.batchSize));
        pooler.add(this.llama.hiddenStates(chunk, p), chunk.length);
      }
      return pooler.result();
    } finally {
      this.busy = false;
    }
  }

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
 * the next tokens show it is not. `turnEnds` end the text as well until `constrain` is called.
 */
export class StoppingDecoder {
  private readonly decoder: StreamDecoder;
  private readonly always: string[];
  private stop: string[];
  private pending = "";
  /** Set once a stop string has appeared; nothing more is returned after it. */
  stopped = false;

  constructor(tokenizer: Tokenizer, stop: readonly string[], turnEnds: readonly string[] = []) {
    this.decoder = new StreamDecoder(tokenizer, { continuation: true });
    this.always = stop.filter((s) => s.length > 0);
    this.stop = [...this.always, ...turnEnds.filter((s) => s.length > 0)];
  }

  /**
   * A grammar constrains the text from the next token on: it decides where the text ends, so
   * the turn ends no longer do (one may be text the grammar asks for, inside a JSON string say).
   * Text held back as a possible start of one is checked again with the next token.
   */
  constrain(): void {
    this.stop = this.always;
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

/** Whether `constraint` masks the next token: always a grammar's, a lazy one's once triggered. */
export function constrains(constraint: GrammarConstraint | LazyGrammarConstraint | undefined): boolean {
  return constraint instanceof LazyGrammarConstraint ? constraint.active : constraint !== undefined;
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

/**
 * Loads a GGUF model for generation, chat and embeddings. By default the model runs in a worker
 * thread (a WorkerModel): the calling thread only tokenizes and renders chat templates, so its
 * event loop keeps running while a prompt is evaluated. `{ worker: false }` gives a Model that
 * runs on the calling thread (and exposes its LlamaModel).
 */
export function loadModel(path: string, options: LoadModelOptions & { worker: false }): Promise<Model>;
export function loadModel(path: string, options?: LoadModelOptions & { worker?: true }): Promise<WorkerModel>;
export function loadModel(path: string, options?: LoadModelOptions): Promise<Model | WorkerModel>;
export async function loadModel(path: string, options: LoadModelOptions = {}): Promise<Model | WorkerModel> {
  if (options.worker === false) return Model.load(path, options);
  // Imported here: model-worker.ts builds on this module.
  const { WorkerModel } = await import("./model-worker.js");
  return WorkerModel.load(path, options);
}
