/**
 * The OpenAI API surface: request schemas (zod), the error shape, and response and stream chunk
 * builders for chat completions and completions.
 */
import { z } from "zod";
import type { ChatMessage } from "../model/model.js";
import type { SamplerOptions } from "../model/sampler.js";

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

const nonNegative = z.number().min(0);

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
  n: z.literal(1, { error: "only n = 1 is supported" }).nullish(),
  presence_penalty: z
    .literal(0, { error: "presence_penalty is not supported (use repeat_penalty)" })
    .nullish(),
  frequency_penalty: z
    .literal(0, { error: "frequency_penalty is not supported (use repeat_penalty)" })
    .nullish(),
  logprobs: z.literal(false, { error: "logprobs are not supported" }).nullish(),
  user: z.string().nullish(),
};

const textPart = z.object({ type: z.literal("text"), text: z.string() });

const message = z.object({
  role: z.enum(["system", "developer", "user", "assistant"], {
    error: "role must be system, developer, user or assistant",
  }),
  content: z.union([z.string(), z.array(textPart)], {
    error: "content must be a string or an array of text parts",
  }),
  name: z.string().nullish(),
});

export const chatRequestSchema = z.object({
  model: z.string(),
  messages: z.array(message).min(1),
  max_completion_tokens: z.number().int().min(1).nullish(),
  tools: z.array(z.unknown()).max(0, { error: "tools are not supported" }).nullish(),
  top_logprobs: nonNegative.max(0, { error: "logprobs are not supported" }).nullish(),
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
  logprobs: z.null({ error: "logprobs are not supported" }).optional(),
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
export type CompletionRequest = z.infer<typeof completionRequestSchema>;

/** Validates a request body; a 400 ApiError naming the first bad field otherwise. */
export function parseRequest<S extends z.ZodType>(schema: S, body: unknown): z.infer<S> {
  if (body === undefined || body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new ApiError(400, "the request body must be a JSON object", "invalid_request_body");
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
  return req.messages.map((m) => ({
    role: m.role === "developer" ? "system" : m.role,
    content: typeof m.content === "string" ? m.content : m.content.map((p) => p.text).join(""),
  }));
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

export type FinishReason = "stop" | "length";

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

export function chatCompletion(ids: ResponseIds, text: string, finish: FinishReason, u: Usage) {
  return {
    ...ids,
    object: "chat.completion",
    choices: [
      { index: 0, message: { role: "assistant", content: text }, logprobs: null, finish_reason: finish },
    ],
    usage: u,
  };
}

export function chatChunk(
  ids: ResponseIds,
  delta: { role?: "assistant"; content?: string },
  finish: FinishReason | null,
) {
  return {
    ...ids,
    object: "chat.completion.chunk",
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
  };
}

export function completion(ids: ResponseIds, text: string, finish: FinishReason, u: Usage) {
  return {
    ...ids,
    object: "text_completion",
    choices: [{ index: 0, text, logprobs: null, finish_reason: finish }],
    usage: u,
  };
}

export function completionChunk(ids: ResponseIds, text: string, finish: FinishReason | null) {
  return {
    ...ids,
    object: "text_completion",
    choices: [{ index: 0, text, logprobs: null, finish_reason: finish }],
  };
}

/** The closing chunk of a stream whose client asked for usage (stream_options.include_usage). */
export function usageChunk(ids: ResponseIds, object: string, u: Usage) {
  return { ...ids, object, choices: [], usage: u };
}
