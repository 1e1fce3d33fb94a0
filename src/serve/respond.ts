/**
 * Runs a generation for one HTTP request and answers it in the endpoint's shape (chat or legacy
 * completion): whole, or streamed as server-sent events (one chunk per piece of text, then a chunk
 * with the finish reason, the usage when asked for, and [DONE]). With tools, each reply is read
 * for calls, sent as tool_calls. A client that disconnects has its generation cancelled at the
 * engine's next step; a timeout or shutdown answers at once (504, 503, or an error event).
 */
import { randomBytes } from "node:crypto";
import type { OutgoingHttpHeaders } from "node:http";
import type { FastifyReply } from "fastify";
import type { TokenLogprob } from "../model/logprobs.js";
import type { GenerationInfo } from "../model/model.js";
import { parseToolCalls, ToolCallStream, type ToolEvent, type ToolFormat } from "../model/tool-calls.js";
import { type ServerContext, type Watch, watchRequest } from "./context.js";
import type { Generation } from "./engine.js";
import {
  ApiError,
  type ChatLogprobs,
  type Choice,
  type CompletionLogprobs,
  chatChunk,
  chatCompletionOf,
  completionChunk,
  completionOf,
  concatLogprobs,
  type FinishReason,
  LogprobWriter,
  type ResponseIds,
  usage,
  usageChunk,
} from "./openai.js";
import type { GenerationJob } from "./scheduler.js";
import { toolCallIdFor, toolCallsOf } from "./structured.js";

/** A generation ready for the engine, with its number of replies. */
export type PreparedJob = Omit<GenerationJob, "id"> & { n: number };

export interface AnswerOptions {
  kind: "chat" | "completion";
  stream: boolean;
  /** Streamed: a last chunk with the usage (stream_options.include_usage). */
  includeUsage: boolean;
  /** Read the replies for tool calls written in this format (chat with tools). */
  toolFormat?: ToolFormat;
}

/** What answering whole and answering streamed share: ids, shapes, timing and cancellation. */
interface Answer {
  ctx: ServerContext;
  reply: FastifyReply;
  job: PreparedJob;
  options: AnswerOptions;
  ids: ResponseIds;
  watch: Watch;
  /** The generation once submitted (a cancel may come before). */
  generation?: Generation;
  /** Writes the answer to a cancelled request (set by the way of answering). */
  answerCancelled(e: ApiError): void;
  /** Log-probabilities of reply `index` in the endpoint's shape, or null when not asked for. */
  shaped(index: number, entries: TokenLogprob[] | undefined): ChatLogprobs | CompletionLogprobs | null;
  /** Notes the time of reply `index`'s text, for the time to the first token. */
  timeText(index: number): void;
  /** Notes the end of reply `index`, for the time per token. */
  timeDone(index: number, info: GenerationInfo): void;
  /** Counts the generation's end and its tokens. */
  counted(info: GenerationInfo): void;
}

/**
 * Runs `job` for the request of `reply`: resolves to the whole answer, or (streamed) writes the
 * answer itself and returns undefined.
 */
export function respond(
  ctx: ServerContext,
  reply: FastifyReply,
  job: PreparedJob,
  options: AnswerOptions,
): Promise<unknown> | undefined {
  const { kind } = options;
  const { n } = job;
  const { metrics } = ctx;
  const ids: ResponseIds = {
    id: `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomBytes(12).toString("hex")}`,
    created: Math.floor(Date.now() / 1000),
    model: ctx.modelId,
  };
  // Log-probabilities in the endpoint's shape, one writer per reply (the legacy shape keeps
  // text offsets across chunks).
  const writers = Array.from({ length: n }, () => new LogprobWriter((id) => ctx.tokenizer.tokenToPiece(id)));
  const req = reply.request.raw;
  const t0 = ctx.started.get(req) ?? performance.now();
  /** When each reply's first text came, for the time-per-token histogram. */
  const firstText: (number | undefined)[] = Array(n).fill(undefined);
  const answer: Answer = {
    ctx,
    reply,
    job,
    options,
    ids,
    watch: watchRequest(ctx, reply.raw, (reason) => {
      answer.generation?.cancel();
      if (reason !== "client") answer.answerCancelled(answer.watch.error());
    }),
    answerCancelled: () => {},
    shaped(index, entries) {
      if (job.logprobs === undefined) return null;
      const w = writers[index]!;
      return kind === "chat" ? w.chat(entries ?? []) : w.completion(entries ?? []);
    },
    timeText(index) {
      if (firstText[index] !== undefined) return;
      const now = performance.now();
      if (firstText.every((t) => t === undefined)) metrics.timeToFirstToken.observe((now - t0) / 1000);
      firstText[index] = now;
    },
    timeDone(index, info) {
      const first = firstText[index];
      if (first !== undefined && info.completionTokens > 1 && info.finishReason !== "abort") {
        metrics.timePerToken.observe((performance.now() - first) / 1000 / (info.completionTokens - 1));
      }
    },
    counted(info) {
      ctx.generations[info.finishReason === "abort" ? "cancelled" : "finished"]++;
      ctx.countTokens(req, info.promptTokens, info.completionTokens);
    },
  };
  if (!options.stream) return answerWhole(answer);
  answerStreamed(answer);
  return undefined;
}

/** The answer as one JSON object, once every reply has ended. */
function answerWhole(a: Answer): Promise<unknown> {
  const { job, options, watch } = a;
  const { n } = job;
  const newId = toolCallIdFor(options.toolFormat);
  return new Promise((resolve, reject) => {
    const texts: string[] = Array(n).fill("");
    const logprobs: (ChatLogprobs | CompletionLogprobs)[][] = Array.from({ length: n }, () => []);
    a.answerCancelled = reject;
    a.generation = a.ctx.engine!.generate(job, {
      onText: (t, index, entries) => {
        a.timeText(index);
        texts[index] += t;
        const l = a.shaped(index, entries);
        if (l) logprobs[index]!.push(l);
      },
      onChoiceDone: a.timeDone,
      onDone: (info: GenerationInfo, choices: GenerationInfo[]) => {
        watch.ended();
        a.counted(info);
        if (watch.reason) return reject(watch.error()); // answered already, unless by the client
        if (info.finishReason === "abort") return reject(new ApiError(500, "the generation was stopped"));
        const u = usage(info.promptTokens, info.completionTokens);
        const replies = choices.map((c, i) => {
          const reply: Choice<unknown> = {
            text: texts[i]!,
            finish: c.finishReason as FinishReason,
            logprobs: job.logprobs === undefined ? null : (concatLogprobs(logprobs[i]!) ?? a.shaped(i, [])),
          };
          if (options.toolFormat) {
            const { content, calls } = parseToolCalls(options.toolFormat, reply.text, newId);
            reply.text = content;
            if (calls.length > 0) {
              reply.toolCalls = toolCallsOf(calls);
              if (reply.finish === "stop") reply.finish = "tool_calls";
            }
          }
          return reply;
        });
        resolve(
          options.kind === "chat"
            ? chatCompletionOf(a.ids, replies as Choice<ChatLogprobs>[], u)
            : completionOf(a.ids, replies as Choice<CompletionLogprobs>[], u),
        );
      },
      onError: (message) => {
        watch.ended();
        reject(new ApiError(500, message));
      },
    });
    if (watch.reason) a.generation.cancel();
  });
}

/** The answer as server-sent events, written as the replies are generated. */
function answerStreamed(a: Answer): void {
  const { job, options, watch, ids } = a;
  const { n } = job;
  const { kind, toolFormat } = options;
  const res = a.reply.raw;
  a.reply.hijack();
  res.writeHead(200, {
    ...(a.reply.getHeaders() as OutgoingHttpHeaders), // CORS headers set by the guard
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
  });
  const send = (data: unknown) => {
    if (!res.writableEnded && !res.destroyed) res.write(`data: ${JSON.stringify(data)}\n\n`);
  };
  const end = () => {
    if (!res.writableEnded && !res.destroyed) res.end("data: [DONE]\n\n");
  };
  a.answerCancelled = (e) => {
    send(e.body());
    end();
  };
  const chunk = (
    text: string,
    finish: FinishReason | null,
    index: number,
    logprobs: ChatLogprobs | CompletionLogprobs | null = null,
    first = false,
  ) =>
    kind === "chat"
      ? chatChunk(
          ids,
          first ? { role: "assistant", content: text } : finish ? {} : { content: text },
          finish,
          index,
          logprobs as ChatLogprobs | null,
        )
      : completionChunk(ids, text, finish, index, logprobs as CompletionLogprobs | null);
  if (kind === "chat") for (let i = 0; i < n; i++) send(chunk("", null, i, null, true));
  // With tools, each reply's text is read for calls, sent as tool_calls deltas.
  const newId = toolCallIdFor(toolFormat);
  const toolStreams = toolFormat
    ? Array.from({ length: n }, () => new ToolCallStream(toolFormat, newId))
    : undefined;
  const sendToolEvents = (index: number, events: ToolEvent[]) => {
    for (const e of events) {
      if (e.type === "content") send(chunk(e.text, null, index));
      else {
        const call =
          e.type === "call"
            ? {
                index: e.index,
                id: e.id,
                type: "function" as const,
                function: { name: e.name, arguments: "" },
              }
            : { index: e.index, function: { arguments: e.text } };
        send(chatChunk(ids, { tool_calls: [call] }, null, index));
      }
    }
  };
  a.generation = a.ctx.engine!.generate(job, {
    onText: (t, index, entries) => {
      a.timeText(index);
      if (toolStreams) sendToolEvents(index, toolStreams[index]!.push(t));
      else send(chunk(t, null, index, a.shaped(index, entries)));
    },
    onChoiceDone: (index, info) => {
      a.timeDone(index, info);
      if (watch.reason || info.finishReason === "abort") return;
      let finish: FinishReason = info.finishReason;
      if (toolStreams) {
        const { events, calls } = toolStreams[index]!.end();
        sendToolEvents(index, events);
        if (calls.length > 0 && finish === "stop") finish = "tool_calls";
      }
      send(chunk("", finish, index));
    },
    onDone: (info) => {
      watch.ended();
      a.counted(info);
      if (watch.reason) return; // answered already, or the client is gone
      if (info.finishReason === "abort") send(new ApiError(500, "the generation was stopped").body());
      else if (options.includeUsage) {
        const object = kind === "chat" ? "chat.completion.chunk" : "text_completion";
        send(usageChunk(ids, object, usage(info.promptTokens, info.completionTokens)));
      }
      end();
    },
    onError: (message) => {
      watch.ended();
      send(new ApiError(500, message).body());
      end();
    },
  });
  if (watch.reason) a.generation.cancel();
}
