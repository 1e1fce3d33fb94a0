/**
 * The OpenAI API surface: request schemas (zod), the error shape, and response and stream chunk
 * builders for chat completions and completions.
 */
import { z } from "zod";
import { MAX_TOP_LOGPROBS, type TokenLogprob } from "../model/logprobs.js";
import type { ChatMessage } from "../model/model.js";
import type { SamplerOptions } from "../model/sampler.js";
import { messageToolFields, structuredFields, toolFields } from "./structured-schema.js";

/** An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}. */
export class ApiError extends Error {
  override name = "ApiError";
  constructor(
    readonly status: number,
    message: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message);
  }

  get type(): string {
    return errorType(this.status);
  }

  body() {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export function errorType(status: number): string {
  if (status === 401) return "authentication_error";
  if (status === 429) return "rate_limit_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

/** Sampling fields both endpoints take; top_k, min_p and repeat_penalty go beyond OpenAI's. */
const samplingFields = {
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  top_k: z.number().int().min(0).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  repeat_penalty: z.number().gt(0).nullish(),
  seed: z.number().int().min(Number.MIN_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER).nullish(),
  max_tokens: z.number().int().min(1).nullish(),
  stop: z
    .union([z.string(), z.array(z.string()).max(4)], { error: "stop must be a string or up to 4 strings" })
    .nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
  // Replies to one prompt; at most the server's --parallel (checked where that is known).
  n: z.number().int().min(1).max(128).nullish(),
  presence_penalty: z
    .literal(0, { error: "presence_penalty is not supported (use repeat_penalty)" })
    .nullish(),
  frequency_penalty: z
    .literal(0, { error: "frequency_penalty is not supported (use repeat_penalty)" })
    .nullish(),
  user: z.string().nullish(),
};

const textPart = z.object({ type: z.literal("text"), text: z.string() });

const message = z.object({
  role: z.enum(["system", "developer", "user", "assistant", "tool"], {
    error: "role must be system, developer, user, assistant or tool",
  }),
  // null only in an assistant message that carries tool_calls
  content: z.union([z.string(), z.array(textPart), z.null()], {
    error: "content must be a string or an array of text parts",
  }),
  name: z.string().nullish(),
  ...messageToolFields,
});

export const chatRequestSchema = z.object({
  model: z.string(),
  messages: z.array(message).min(1),
  max_completion_tokens: z.number().int().min(1).nullish(),
  ...toolFields,
  ...structuredFields,
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(MAX_TOP_LOGPROBS).nullish(),
  ...samplingFields,
});

export const completionRequestSchema = z.object({
  model: z.string(),
  prompt: z.union([z.string(), z.array(z.string()).length(1)], {
    error: "prompt must be a string (or an array holding one string)",
  }),
  echo: z.literal(false, { error: "echo is not supported" }).nullish(),
  suffix: z.null({ error: "suffix is not supported" }).optional(),
  best_of: z.literal(1, { error: "only best_of = 1 is supported" }).nullish(),
  ...samplingFields,
  ...structuredFields,
  // The legacy shape: the number of alternatives to list with each token's log-probability.
  logprobs: z.number().int().min(0).max(MAX_TOP_LOGPROBS).nullish(),
});

const tokenIds = z.array(z.number().int().min(0)).min(1);

/** POST /v1/embeddings: texts or token ids, one vector each. */
export const embeddingRequestSchema = z.object({
  model: z.string(),
  input: z.union(
    [z.string(), z.array(z.string()).min(1).max(2048), tokenIds, z.array(tokenIds).min(1).max(2048)],
    {
      error: "input must be a string, an array of strings, an array of token ids, or an array of such arrays",
    },
  ),
  encoding_format: z
    .enum(["float", "base64"], { error: "encoding_format must be float or base64" })
    .nullish(),
  // Only the model's own width: vectors are not cut to fewer dimensions.
  dimensions: z.number().int().min(1).nullish(),
  user: z.string().nullish(),
});

/** POST /detokenize, llama.cpp server's shape: token ids to text. */
export const detokenizeRequestSchema = z.object({
  tokens: z.array(z.number().int()),
});

/**
 * POST /tokenize, beyond OpenAI's API (vLLM's shape): the messages of a chat, rendered as a chat
 * completion renders them, or a prompt, as a completion reads it.
 */
export const tokenizeRequestSchema = z
  .object({
    model: z.string().nullish(),
    messages: z.array(message).min(1).optional(),
    prompt: z.string().optional(),
  })
  .refine((r) => (r.messages === undefined) !== (r.prompt === undefined), {
    error: "give either messages or prompt",
  });

export type ChatRequest = z.infer<typeof chatRequestSchema>;
export type EmbeddingRequest = z.infer<typeof embeddingRequestSchema>;
export type CompletionRequest = z.infer<typeof completionRequestSchema>;

/** Validates a request body; a 400 ApiError naming the first bad field otherwise. */
export function parseRequest<S extends z.ZodType>(schema: S, body: unknown): z.infer<S> {
  if (body === undefined || body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new ApiError(400, "the request body must be a JSON object", "invalid_request_body");
  }
  // A field the schema does not know would be dropped without a word: refuse it by name instead.
  if (schema instanceof z.ZodObject) {
    for (const key of Object.keys(body)) {
      if (!Object.hasOwn(schema.shape, key)) {
        throw new ApiError(400, `${key}: this field is not supported`, "unsupported_field", key);
      }
    }
  }
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const param = issue.path.map(String).join(".");
  throw new ApiError(
    400,
    param ? `${param}: ${issue.message}` : issue.message,
    "invalid_value",
    param || null,
  );
}

/** The messages of a chat request as the chat template takes them. */
export function chatMessages(req: Pick<ChatRequest, "messages">): ChatMessage[] {
  return req.messages.map((m, i) => {
    if (m.content === null && !(m.role === "assistant" && m.tool_calls?.length)) {
      throw new ApiError(
        400,
        `messages.${i}.content: null is only for an assistant message with tool_calls`,
        "invalid_value",
        `messages.${i}.content`,
      );
    }
    const out: ChatMessage = {
      role: m.role === "developer" ? "system" : m.role,
      content:
        m.content === null
          ? ""
          : typeof m.content === "string"
            ? m.content
            : m.content.map((p) => p.text).join(""),
    };
    if (m.tool_calls?.length) {
      out.toolCalls = m.tool_calls.map((c) => ({
        id: c.id,
        name: c.function.name,
        arguments: c.function.arguments,
      }));
    }
    if (m.tool_call_id != null) out.toolCallId = m.tool_call_id;
    if (m.role === "tool" && m.name != null) out.name = m.name;
    return out;
  });
}

/** Sampler options from a request; fields it leaves out keep the sampler's defaults. */
export function samplerOptionsOf(req: ChatRequest | CompletionRequest): SamplerOptions {
  return {
    temperature: req.temperature ?? undefined,
    topP: req.top_p ?? undefined,
    topK: req.top_k ?? undefined,
    minP: req.min_p ?? undefined,
    repeatPenalty: req.repeat_penalty ?? undefined,
    // Any integer seed; the sampler's seed is 32 bits.
    seed: req.seed == null ? undefined : ((req.seed % 2 ** 32) + 2 ** 32) % 2 ** 32,
  };
}

export function stopStringsOf(req: ChatRequest | CompletionRequest): string[] {
  if (req.stop == null) return [];
  return typeof req.stop === "string" ? [req.stop] : req.stop;
}

export type FinishReason = "stop" | "length" | "tool_calls";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usage(promptTokens: number, completionTokens: number): Usage {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
  };
}

export interface ResponseIds {
  id: string;
  created: number;
  model: string;
}

/** One reply of a response; `logprobs` in the endpoint's shape (see LogprobWriter), or null. */
export interface Choice<L> {
  text: string;
  finish: FinishReason;
  logprobs: L | null;
  /** Tool calls the reply made (chat), in OpenAI's message shape. */
  toolCalls?: ChatToolCall[];
}

export interface ChatToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

export function chatCompletion(ids: ResponseIds, text: string, finish: FinishReason, u: Usage) {
  return chatCompletionOf(ids, [{ text, finish, logprobs: null }], u);
}

/** A chat completion with one choice per reply, by index. */
export function chatCompletionOf(ids: ResponseIds, choices: Choice<ChatLogprobs>[], u: Usage) {
  return {
    ...ids,
    object: "chat.completion",
    choices: choices.map((c, index) => ({
      index,
      message: c.toolCalls?.length
        ? { role: "assistant", content: c.text || null, tool_calls: c.toolCalls }
        : { role: "assistant", content: c.text },
      logprobs: c.logprobs,
      finish_reason: c.finish,
    })),
    usage: u,
  };
}

export function chatChunk(
  ids: ResponseIds,
  delta: {
    role?: "assistant";
    content?: string;
    tool_calls?: {
      index: number;
      id?: string;
      type?: "function";
      function: { name?: string; arguments: string };
    }[];
  },
  finish: FinishReason | null,
  index = 0,
  logprobs: ChatLogprobs | null = null,
) {
  return {
    ...ids,
    object: "chat.completion.chunk",
    choices: [{ index, delta, logprobs, finish_reason: finish }],
  };
}

export function completion(ids: ResponseIds, text: string, finish: FinishReason, u: Usage) {
  return completionOf(ids, [{ text, finish, logprobs: null }], u);
}

/** A completion with one choice per reply, by index. */
export function completionOf(ids: ResponseIds, choices: Choice<CompletionLogprobs>[], u: Usage) {
  return {
    ...ids,
    object: "text_completion",
    choices: choices.map((c, index) => ({
      index,
      text: c.text,
      logprobs: c.logprobs,
      finish_reason: c.finish,
    })),
    usage: u,
  };
}

export function completionChunk(
  ids: ResponseIds,
  text: string,
  finish: FinishReason | null,
  index = 0,
  logprobs: CompletionLogprobs | null = null,
) {
  return {
    ...ids,
    object: "text_completion",
    choices: [{ index, text, logprobs, finish_reason: finish }],
  };
}

/** A token in OpenAI's chat logprobs: its text, log-probability and UTF-8 bytes. */
export interface ChatTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

export interface ChatLogprobs {
  content: ChatTokenLogprob[];
  refusal: null;
}

/** The legacy completions shape: parallel arrays, alternatives as token -> logprob maps. */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[];
  text_offset: number[];
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * A token's text for logprobs: its bytes as UTF-8, or, for a piece of a character cut between
 * tokens, "bytes:\\xe2\\x80" as OpenAI writes such tokens.
 */
export function tokenString(bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return `bytes:${Array.from(bytes, (b) => `\\x${b.toString(16).padStart(2, "0")}`).join("")}`;
  }
}

/**
 * Turns one reply's token log-probabilities into the API's shapes, keeping the running text
 * offset of the legacy shape across stream chunks.
 */
export class LogprobWriter {
  private offset = 0;
  private readonly utf8 = new TextDecoder("utf-8");

  constructor(private readonly bytesOf: (id: number) => Uint8Array) {}

  chat(entries: readonly TokenLogprob[]): ChatLogprobs {
    const token = (id: number, logprob: number) => {
      const bytes = this.bytesOf(id);
      return { token: tokenString(bytes), logprob, bytes: Array.from(bytes) };
    };
    return {
      content: entries.map((e) => ({
        ...token(e.id, e.logprob),
        top_logprobs: e.top.map((t) => token(t.id, t.logprob)),
      })),
      refusal: null,
    };
  }

  /** The legacy shape; each map holds the alternatives and the chosen token. */
  completion(entries: readonly TokenLogprob[]): CompletionLogprobs {
    const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    for (const e of entries) {
      const bytes = this.bytesOf(e.id);
      out.tokens.push(tokenString(bytes));
      out.token_logprobs.push(e.logprob);
      const top: Record<string, number> = {};
      for (const t of e.top) top[tokenString(this.bytesOf(t.id))] = t.logprob;
      top[tokenString(bytes)] = e.logprob;
      out.top_logprobs.push(top);
      // Offsets into the reply's text: a character cut between tokens counts once it is whole.
      out.text_offset.push(this.offset);
      this.offset += this.utf8.decode(bytes, { stream: true }).length;
    }
    return out;
  }
}

/** Merges the logprobs of several chunks of one reply, for a reply answered whole. */
export function concatLogprobs<L extends ChatLogprobs | CompletionLogprobs>(parts: readonly L[]): L | null {
  if (parts.length === 0) return null;
  if ("content" in parts[0]!) {
    return { content: (parts as readonly ChatLogprobs[]).flatMap((p) => p.content), refusal: null } as L;
  }
  const legacy = parts as readonly CompletionLogprobs[];
  return {
    tokens: legacy.flatMap((p) => p.tokens),
    token_logprobs: legacy.flatMap((p) => p.token_logprobs),
    top_logprobs: legacy.flatMap((p) => p.top_logprobs),
    text_offset: legacy.flatMap((p) => p.text_offset),
  } as L;
}

/** A list of embeddings, floats or base64 of their little-endian float32 bytes (encoding_format). */
export function embeddingList(model: string, vectors: Float32Array[], base64: boolean, promptTokens: number) {
  return {
    object: "list",
    data: vectors.map((v, index) => ({
      object: "embedding",
      index,
      embedding: base64
        ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64")
        : Array.from(v),
    })),
    model,
    usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
  };
}

/** The closing chunk of a stream whose client asked for usage (stream_options.include_usage). */
export function usageChunk(ids: ResponseIds, object: string, u: Usage) {
  return { ...ids, object, choices: [], usage: u };
}
