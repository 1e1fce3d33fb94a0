/**
 * POST /v1/chat/completions and /v1/completions: the request checked and turned into a job for
 * the engine (the prompt rendered and counted against the context, sampling, replies, log
 * probabilities, stop strings, a grammar from structured output or tools, queue room), then
 * answered by respond.ts.
 */
import type { FastifyInstance } from "fastify";
import { UserError } from "../errors.js";
import { chatPromptTokens } from "../model/model.js";
import { Sampler, type SamplerOptions } from "../model/sampler.js";
import type { ChatMessage } from "../model/templates.js";
import { checkQueueRoom, type ServerContext, shuttingDown, unknownModel } from "./context.js";
import {
  ApiError,
  type ChatRequest,
  type CompletionRequest,
  chatMessages,
  chatRequestSchema,
  completionRequestSchema,
  parseRequest,
  samplerOptionsOf,
  stopStringsOf,
} from "./openai.js";
import { type PreparedJob, respond } from "./respond.js";
import { requestGrammar, toolSetup } from "./structured.js";

/** Default max_tokens of /v1/completions, as OpenAI's. */
const COMPLETION_MAX_TOKENS = 16;

export function registerGenerationRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.post("/v1/chat/completions", async (request, reply) => {
    const req = parseRequest(chatRequestSchema, request.body);
    const template = ctx.template;
    if (!template) throw new ApiError(400, ctx.templateProblem, "no_chat_template");
    if (req.model !== ctx.modelId) throw unknownModel(req.model, ctx.modelId);
    // Tools and structured output: the conversation the template renders, and the grammar.
    const tools = toolSetup(req, chatMessages(req), template.source);
    const structured = requestGrammar(req);
    if (structured && tools.grammar) {
      throw new ApiError(
        400,
        'response_format (or grammar) together with tools is not supported; give tool_choice "none" or leave one out',
        "invalid_value",
        "response_format",
      );
    }
    if (tools.format && req.logprobs === true) {
      throw new ApiError(400, "logprobs together with tools is not supported", "invalid_value", "logprobs");
    }
    const prompt = renderToolChat(ctx, tools.messages, tools.tools);
    const job = {
      ...prepare(ctx, req, prompt, undefined, stopStringsOf(req)),
      // The template's turn ends stop a reply, but not while a grammar constrains it.
      turnEnds: [...template.stopStrings],
      ...(structured ?? tools.grammar),
    };
    return respond(ctx, reply, job, {
      kind: "chat",
      stream: req.stream === true,
      includeUsage: req.stream_options?.include_usage === true,
      toolFormat: tools.format,
    });
  });

  app.post("/v1/completions", async (request, reply) => {
    const req = parseRequest(completionRequestSchema, request.body);
    if (req.model !== ctx.modelId) throw unknownModel(req.model, ctx.modelId);
    const text = typeof req.prompt === "string" ? req.prompt : req.prompt[0]!;
    const prompt = ctx.tokenizer.encode(text, { addSpecial: true, parseSpecial: true });
    if (prompt.length === 0) throw new ApiError(400, "the prompt is empty", "invalid_value", "prompt");
    const job = {
      ...prepare(ctx, req, prompt, COMPLETION_MAX_TOKENS, stopStringsOf(req)),
      ...requestGrammar(req),
    };
    return respond(ctx, reply, job, {
      kind: "completion",
      stream: req.stream === true,
      includeUsage: req.stream_options?.include_usage === true,
    });
  });
}

/** A conversation with tool calls and results, and the tools a template that takes them renders. */
function renderToolChat(ctx: ServerContext, messages: ChatMessage[], tools: unknown[] | undefined): number[] {
  try {
    return chatPromptTokens(ctx.tokenizer, ctx.template!, messages, { tools });
  } catch (e) {
    if (e instanceof UserError) throw new ApiError(400, e.message, "invalid_value", "messages");
    throw e;
  }
}

/** Checks what every generation request needs and turns it into a job. */
function prepare(
  ctx: ServerContext,
  req: ChatRequest | CompletionRequest,
  prompt: number[],
  defaultMaxTokens: number | undefined,
  stop: string[],
): PreparedJob {
  const contextSize = ctx.engine!.info!.contextSize;
  const asked = req.max_tokens ?? ("max_completion_tokens" in req ? req.max_completion_tokens : undefined);
  if (prompt.length >= contextSize) {
    throw new ApiError(
      400,
      `the prompt is ${prompt.length} tokens; the context of ${contextSize} tokens leaves room for a prompt of at most ${contextSize - 1}`,
      "context_length_exceeded",
      "messages" in req ? "messages" : "prompt",
    );
  }
  if (asked != null && prompt.length + asked > contextSize) {
    throw new ApiError(
      400,
      `the prompt is ${prompt.length} tokens and max_tokens asks for ${asked} more: ${prompt.length + asked} tokens, over the context of ${contextSize} tokens`,
      "context_length_exceeded",
      "max_tokens",
    );
  }
  if (ctx.cancelling) throw shuttingDown();
  const sampling: SamplerOptions = samplerOptionsOf(req);
  try {
    new Sampler(sampling); // the sampler's own checks, before anything is queued
  } catch (e) {
    if (e instanceof UserError) throw new ApiError(400, e.message, "invalid_value");
    throw e;
  }
  const n = req.n ?? 1;
  if (n > ctx.parallel) {
    throw new ApiError(
      400,
      `n = ${n} replies need ${n} sequences at once; this server decodes at most ${ctx.parallel} (--parallel)`,
      "invalid_value",
      "n",
    );
  }
  let logprobs: number | undefined;
  if ("messages" in req) {
    if (req.top_logprobs != null && req.logprobs !== true) {
      throw new ApiError(400, "top_logprobs needs logprobs: true", "invalid_value", "top_logprobs");
    }
    if (req.logprobs === true) logprobs = req.top_logprobs ?? 0;
  } else if (req.logprobs != null) logprobs = req.logprobs;
  checkQueueRoom(ctx);
  const room = contextSize - prompt.length;
  return {
    prompt,
    maxTokens: Math.min(asked ?? defaultMaxTokens ?? room, room),
    stop,
    sampling,
    n,
    logprobs,
  };
}
