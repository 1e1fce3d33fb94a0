/**
 * Structured output and tools in OpenAI's shapes: `response_format` (json_object, json_schema),
 * `grammar` (GBNF, as llama.cpp's server takes it), `tools`, `tool_choice`, `parallel_tool_calls`
 * and the tool messages of a conversation. Each becomes a grammar the generation follows (see
 * model/grammar) or a tool-call format the reply is read in (model/tool-calls.ts); what cannot be
 * honoured is a 400 naming the field.
 */
import { randomBytes, randomInt } from "node:crypto";
import type { z } from "zod";
import { GrammarAutomaton, GrammarError, jsonSchemaToGbnf, parseGbnf } from "../model/grammar/index.js";
import type { ChatMessage } from "../model/templates.js";
import {
  type ToolCall,
  type ToolChoice,
  type ToolDefinition,
  type ToolFormat,
  templateTakesTools,
  toolCallGrammar,
  toolConversation,
  toolFormatOf,
} from "../model/tool-calls.js";
import { ApiError } from "./openai.js";
import type { responseFormat, toolDefinition, toolFields } from "./structured-schema.js";

type StructuredRequest = {
  response_format?: z.infer<typeof responseFormat> | null;
  grammar?: string | null;
};
type ToolRequest = {
  tools?: z.infer<typeof toolDefinition>[] | null;
  tool_choice?: z.infer<typeof toolFields.tool_choice>;
  parallel_tool_calls?: boolean | null;
};

/** What a request constrains its generation to. */
export interface GenerationGrammar {
  grammar: string;
  /** The grammar applies from the first of these on (tool choice auto). */
  grammarTriggers?: string[];
}

/**
 * The grammar of `response_format` or `grammar`, checked (parsed, its start expanded) so that a
 * bad one is a 400 here, before anything is queued.
 */
export function requestGrammar(req: StructuredRequest): GenerationGrammar | undefined {
  const format = req.response_format;
  let grammar: string | undefined;
  let param = "grammar";
  if (req.grammar != null) {
    if (format != null && format.type !== "text") {
      throw new ApiError(400, "give either grammar or response_format, not both", "invalid_value", "grammar");
    }
    grammar = req.grammar;
  } else if (format != null && format.type !== "text") {
    param = "response_format";
    const schema =
      format.type === "json_object"
        ? (format.schema ?? { type: "object" })
        : (format.json_schema.schema ?? {});
    grammar = fromSchema(schema, param);
  }
  if (grammar === undefined) return undefined;
  checkGrammar(grammar, param);
  return { grammar };
}

function fromSchema(schema: unknown, param: string): string {
  try {
    return jsonSchemaToGbnf(schema);
  } catch (e) {
    if (e instanceof GrammarError) throw new ApiError(400, `${param}: ${e.message}`, "invalid_value", param);
    throw e;
  }
}

function checkGrammar(grammar: string, param: string): void {
  try {
    new GrammarAutomaton(parseGbnf(grammar)).start();
  } catch (e) {
    if (e instanceof GrammarError) throw new ApiError(400, `${param}: ${e.message}`, "invalid_value", param);
    throw e;
  }
}

/** How a chat request's tools work with the template: the prompt's messages and tools, the grammar, the format. */
export interface ToolSetup {
  messages: ChatMessage[];
  /** The `tools` the template renders (templates that take them). */
  tools?: unknown[];
  grammar?: GenerationGrammar;
  /** Set when the reply is read for tool calls. */
  format?: ToolFormat;
}

/**
 * Tools of a chat request against the template (its Jinja source): the conversation to render,
 * and, unless tool choice is "none", the grammar of the calls and the format to read them in.
 * Messages with tool calls or results need this even without tools.
 */
export function toolSetup(req: ToolRequest, messages: ChatMessage[], templateSource: string): ToolSetup {
  const tools: ToolDefinition[] = (req.tools ?? []).map((t) => ({
    name: t.function.name,
    ...(t.function.description != null ? { description: t.function.description } : {}),
    ...(t.function.parameters != null ? { parameters: t.function.parameters } : {}),
  }));
  const names = new Set<string>();
  for (const t of tools) {
    if (names.has(t.name))
      throw new ApiError(400, `tools: the name "${t.name}" is given twice`, "invalid_value", "tools");
    names.add(t.name);
  }
  const asked = req.tool_choice;
  let choice: ToolChoice =
    asked == null
      ? tools.length > 0
        ? "auto"
        : "none"
      : typeof asked === "string"
        ? asked
        : { name: asked.function.name };
  if (tools.length === 0 && choice !== "none") {
    if (asked != null)
      throw new ApiError(
        400,
        `tool_choice "${describeChoice(choice)}" needs tools`,
        "invalid_value",
        "tool_choice",
      );
    choice = "none";
  }
  if (typeof choice === "object" && !names.has(choice.name)) {
    throw new ApiError(
      400,
      `tool_choice: there is no tool named "${choice.name}"`,
      "invalid_value",
      "tool_choice",
    );
  }
  checkToolMessages(messages);
  const hasToolMessages = messages.some((m) => m.role === "tool" || (m.toolCalls?.length ?? 0) > 0);
  const format = toolFormatOf(templateSource);
  const native = templateTakesTools(templateSource);
  if (tools.length === 0 && !hasToolMessages) return { messages };
  const conversation = toolConversation(withToolNames(messages), tools, format, native, choice);
  const setup: ToolSetup = { messages: conversation.messages, tools: conversation.tools };
  if (choice === "none") return setup;
  let calls: ReturnType<typeof toolCallGrammar>;
  try {
    calls = toolCallGrammar(format, tools, choice, req.parallel_tool_calls ?? true);
  } catch (e) {
    if (e instanceof GrammarError) throw new ApiError(400, `tools: ${e.message}`, "invalid_value", "tools");
    throw e;
  }
  if (calls) {
    checkGrammar(calls.grammar, "tools");
    setup.grammar = { grammar: calls.grammar, grammarTriggers: calls.triggers };
    setup.format = format;
  }
  return setup;
}

/** Every tool message answers a call an earlier assistant message made, as OpenAI requires. */
function checkToolMessages(messages: readonly ChatMessage[]): void {
  const calls = new Set<string>();
  messages.forEach((m, i) => {
    for (const c of m.toolCalls ?? []) calls.add(c.id);
    if (m.role !== "tool") return;
    if (m.toolCallId === undefined) {
      throw new ApiError(
        400,
        `messages.${i}: a tool message needs tool_call_id`,
        "invalid_value",
        `messages.${i}.tool_call_id`,
      );
    }
    if (!calls.has(m.toolCallId)) {
      throw new ApiError(
        400,
        `messages.${i}: a tool message must answer a tool call of an earlier assistant message (no call "${m.toolCallId}")`,
        "invalid_value",
        `messages.${i}.role`,
      );
    }
  });
}

function describeChoice(choice: ToolChoice): string {
  return typeof choice === "string" ? choice : choice.name;
}

/** Tool results named after the call they answer (OpenAI's tool messages carry only its id). */
function withToolNames(messages: ChatMessage[]): ChatMessage[] {
  const names = new Map<string, string>();
  for (const m of messages) for (const c of m.toolCalls ?? []) names.set(c.id, c.name);
  return messages.map((m) =>
    m.role === "tool" && m.name === undefined && m.toolCallId !== undefined && names.has(m.toolCallId)
      ? { ...m, name: names.get(m.toolCallId) }
      : m,
  );
}

const ALPHANUMERIC = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/**
 * How new tool call ids look for calls read in `format`: Mistral's templates refuse any id that
 * is not 9 letters and digits (a conversation sent back with another would not render), the
 * others get OpenAI's look.
 */
export function toolCallIdFor(format: ToolFormat | undefined): () => string {
  if (format === "mistral") {
    return () => Array.from({ length: 9 }, () => ALPHANUMERIC[randomInt(ALPHANUMERIC.length)]).join("");
  }
  return () => `call_${randomBytes(12).toString("hex")}`;
}

/** Calls in OpenAI's message shape. */
export function toolCallsOf(calls: readonly ToolCall[]) {
  return calls.map((c) => ({
    id: c.id,
    type: "function" as const,
    function: { name: c.name, arguments: c.arguments },
  }));
}
