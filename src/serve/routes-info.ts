/**
 * The routes that run no model: the health check, the model list, the props the chat page reads,
 * /tokenize and /detokenize, and the Prometheus metrics.
 */
import type { FastifyInstance } from "fastify";
import { UserError } from "../errors.js";
import { chatPromptTokens } from "../model/model.js";
import { type ServerContext, unknownModel } from "./context.js";
import {
  ApiError,
  type ChatRequest,
  chatMessages,
  detokenizeRequestSchema,
  parseRequest,
  tokenizeRequestSchema,
} from "./openai.js";

export function registerInfoRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const { modelId, tokenizer } = ctx;

  app.get("/health", { config: { open: true } }, (_req, reply) => {
    const engine = ctx.engine;
    if (!engine || engine.state === "loading") {
      return reply.code(503).send(new ApiError(503, "the model is loading", "model_loading").body());
    }
    if (engine.state !== "ready") {
      return reply.code(500).send(new ApiError(500, `the model is not available: ${engine.failure}`).body());
    }
    return {
      status: "ok",
      model: modelId,
      slots: { total: ctx.parallel, busy: engine.busy },
      queue: { waiting: engine.waiting, limit: ctx.queueLimit },
      requests: ctx.active.size,
      generations: { ...ctx.generations },
    };
  });

  const modelCard = () => ({ id: modelId, object: "model", created: ctx.created, owned_by: "smallhammer" });
  app.get("/v1/models", () => ({ object: "list", data: [modelCard()] }));
  app.get<{ Params: { id: string } }>("/v1/models/:id", (req) => {
    if (req.params.id !== modelId) throw unknownModel(req.params.id, modelId);
    return modelCard();
  });

  // What a client needs to fit a conversation to the context (the chat page reads it).
  app.get("/props", () => ({
    model: modelId,
    n_ctx: ctx.engine!.info!.contextSize,
    slots: ctx.parallel,
    chat_template: ctx.template?.label ?? null,
  }));

  // Counts the tokens of a chat (as the chat template renders it) or of a prompt, as vLLM's
  // /tokenize does, so that a client can drop old turns before the context overflows.
  app.post("/tokenize", (request) => {
    const req = parseRequest(tokenizeRequestSchema, request.body);
    if (req.model != null && req.model !== modelId) throw unknownModel(req.model, modelId);
    let tokens: number[];
    if (req.messages) {
      if (!ctx.template) throw new ApiError(400, ctx.templateProblem, "no_chat_template");
      tokens = renderChatTokens(ctx, req.messages);
    } else {
      tokens = tokenizer.encode(req.prompt!, { addSpecial: true, parseSpecial: true });
    }
    return { count: tokens.length, max_model_len: ctx.engine!.info!.contextSize, tokens };
  });

  // llama.cpp server's /detokenize: token ids back to text, as the library's detokenize gives it.
  app.post("/detokenize", (request) => {
    const req = parseRequest(detokenizeRequestSchema, request.body);
    const bad = req.tokens.findIndex((t) => t < 0 || t >= tokenizer.vocabSize);
    if (bad >= 0) {
      throw new ApiError(
        400,
        `tokens[${bad}]: token id ${req.tokens[bad]} is outside the vocabulary of ${tokenizer.vocabSize} tokens`,
        "invalid_value",
        `tokens[${bad}]`,
      );
    }
    return { content: tokenizer.decode(req.tokens) };
  });

  app.get("/metrics", async (_req, reply) => {
    reply.type(ctx.metrics.contentType);
    return ctx.metrics.text();
  });
}

function renderChatTokens(ctx: ServerContext, messages: ChatRequest["messages"]): number[] {
  try {
    return chatPromptTokens(ctx.tokenizer, ctx.template!, chatMessages({ messages }));
  } catch (e) {
    if (e instanceof UserError) throw new ApiError(400, e.message, "invalid_value", "messages");
    throw e;
  }
}
