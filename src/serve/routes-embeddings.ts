/**
 * POST /v1/embeddings: each input (a text, or token ids) pooled into one unit vector, as floats or
 * base64. The inputs are checked against the vocabulary and the context here; the engine embeds
 * them beside the generations, and the request is cancelled as a generation is.
 */
import { basename } from "node:path";
import type { FastifyInstance, FastifyReply } from "fastify";
import { poolingProblem } from "../model/embedding.js";
import { checkQueueRoom, type ServerContext, shuttingDown, unknownModel, watchRequest } from "./context.js";
import type { Generation } from "./engine.js";
import {
  ApiError,
  type EmbeddingRequest,
  embeddingList,
  embeddingRequestSchema,
  parseRequest,
} from "./openai.js";

export function registerEmbeddingRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.post("/v1/embeddings", async (request, reply) => {
    const req = parseRequest(embeddingRequestSchema, request.body);
    if (req.model !== ctx.modelId) throw unknownModel(req.model, ctx.modelId);
    const problem = poolingProblem(ctx.pooling);
    if (problem) throw new ApiError(400, `${basename(ctx.modelFile)}: ${problem}`, "unsupported_pooling");
    if (req.dimensions != null && req.dimensions !== ctx.embeddingWidth) {
      throw new ApiError(
        400,
        `dimensions: this model's embeddings have ${ctx.embeddingWidth} dimensions, not ${req.dimensions}`,
        "invalid_value",
        "dimensions",
      );
    }
    const inputs = embeddingInputs(ctx, req.input);
    if (ctx.cancelling) throw shuttingDown();
    checkQueueRoom(ctx);
    return embed(ctx, reply, inputs, req.encoding_format === "base64");
  });
}

/** The inputs of an embedding request as token ids, each checked against the vocabulary and the context. */
function embeddingInputs(ctx: ServerContext, input: EmbeddingRequest["input"]): number[][] {
  const { tokenizer } = ctx;
  const list: (string | number[])[] =
    typeof input === "string"
      ? [input]
      : typeof input[0] === "number"
        ? [input as number[]]
        : (input as (string | number[])[]);
  const contextSize = ctx.engine!.info!.contextSize;
  const at = (i: number) => (typeof input === "string" ? "input" : `input[${i}]`);
  return list.map((x, i) => {
    if (x === "") throw new ApiError(400, `${at(i)}: an input must not be empty`, "invalid_value", at(i));
    const ids = typeof x === "string" ? tokenizer.encode(x, { addSpecial: true, parseSpecial: true }) : x;
    const bad = ids.find((t) => t >= tokenizer.vocabSize);
    if (bad !== undefined) {
      throw new ApiError(400, `${at(i)}: token id ${bad} is outside the vocabulary`, "invalid_value", at(i));
    }
    if (ids.length > contextSize) {
      throw new ApiError(
        400,
        `${at(i)} is ${ids.length} tokens, more than the context of ${contextSize} tokens`,
        "context_length_exceeded",
        at(i),
      );
    }
    return ids;
  });
}

/** Runs an embedding job for one request, cancelled like a generation (client gone, timeout, shutdown). */
function embed(
  ctx: ServerContext,
  reply: FastifyReply,
  inputs: number[][],
  base64: boolean,
): Promise<unknown> {
  const req = reply.request.raw;
  return new Promise((resolve, reject) => {
    let job: Generation | undefined;
    const watch = watchRequest(ctx, reply.raw, (reason) => {
      job?.cancel();
      if (reason !== "client") reject(watch.error());
    });
    job = ctx.engine!.embed(
      { inputs, pooling: ctx.pooling },
      {
        onDone: (vectors, promptTokens) => {
          watch.ended();
          if (watch.reason) return;
          if (vectors.length === 0) return reject(new ApiError(500, "the embedding was stopped"));
          ctx.countTokens(req, promptTokens, 0);
          resolve(embeddingList(ctx.modelId, vectors, base64, promptTokens));
        },
        onError: (message) => {
          watch.ended();
          reject(new ApiError(500, message));
        },
      },
    );
  });
}
