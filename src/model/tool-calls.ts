/**
 * Tool calling: how a model writes a call, the grammar that makes it write a valid one, and the
 * parser that reads calls back out of its reply, also while the reply streams.
 *
 * The format follows the model's chat template, recognised by the markup it holds:
 *   hermes  (Hermes-style ChatML, Qwen2.5):  <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>
 *   mistral (Mistral's [TOOL_CALLS] token):  [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
 *   llama3  (Llama 3.1 and later, JSON calls): {"name": ..., "parameters": {...}}
 *   generic (any other template):            {"tool_calls": [{"name": ..., "arguments": {...}}, ...]}
 * A template that renders `tools` and tool messages itself gets them as they are; for any other,
 * the tools and the call format are described in the system message, earlier calls are written
 * into the assistant messages in the format, and tool results become user messages.
 *
 * The grammar writes each call's name before its arguments, and the arguments as JSON that the
 * tool's parameter schema accepts. With tool choice "auto" the grammar is lazy: the reply is free
 * text until the format's opening (the trigger) appears, and constrained from there.
 */
import { gbnfLiteral, type JsonSchema, jsonSchemaRules } from "./grammar/index.js";
import type { ChatMessage } from "./templates.js";

export type ToolFormat = "hermes" | "mistral" | "llama3" | "generic";

export interface ToolDefinition {
  name: string;
  description?: string;
  /** JSON Schema of the arguments object (default: any object). */
  parameters?: JsonSchema;
}

/** auto: text or calls; none: text only; required: one call or more; a name: that tool's call. */
export type ToolChoice = "auto" | "none" | "required" | { name: string };

export interface ToolCall {
  id: string;
  name: string;
  /** The arguments as the JSON text the model wrote. */
  arguments: string;
}

interface FormatInfo {
  /** The text that starts the calls (the lazy grammar's trigger). */
  open: string;
  /** The key of the arguments in a call object. */
  argumentsKey: string;
  /** Containers around the call objects: 0 (hermes, llama3), 1 (a list), 2 (an object's list). */
  depth: number;
}

const FORMATS: Record<ToolFormat, FormatInfo> = {
  hermes: { open: "<tool_call>", argumentsKey: "arguments", depth: 0 },
  mistral: { open: "[TOOL_CALLS]", argumentsKey: "arguments", depth: 1 },
  llama3: { open: '{"name"', argumentsKey: "parameters", depth: 0 },
  generic: { open: '{"tool_calls"', argumentsKey: "arguments", depth: 2 },
};

/** The tool-call format of a chat template's Jinja source (see the file comment). */
export function toolFormatOf(templateSource: string): ToolFormat {
  if (templateSource.includes("<tool_call>")) return "hermes";
  if (templateSource.includes("[TOOL_CALLS]")) return "mistral";
  if (templateSource.includes("<|start_header_id|>") && templateSource.includes("ipython")) return "llama3";
  return "generic";
}

/** Whether a template renders the tools and the tool calls and results itself. */
export function templateTakesTools(templateSource: string): boolean {
  return /\btools\b/.test(templateSource) && templateSource.includes("tool_call");
}

/** The text of calls as the model writes them in `format`. */
export function formatToolCalls(format: ToolFormat, calls: readonly ToolCall[]): string {
  const key = FORMATS[format].argumentsKey;
  const objects = calls.map(
    (c) => `{"name": ${JSON.stringify(c.name)}, "${key}": ${argumentsJson(c.arguments)}}`,
  );
  switch (format) {
    case "hermes":
      return objects.map((o) => `<tool_call>\n${o}\n</tool_call>`).join("\n");
    case "mistral":
      return `[TOOL_CALLS][${objects.join(", ")}]`;
    case "llama3":
      return objects.join("\n");
    case "generic":
      return `{"tool_calls": [${objects.join(", ")}]}`;
  }
}

function argumentsJson(text: string): string {
  try {
    return JSON.stringify(JSON.parse(text));
  } catch {
    return JSON.stringify(text);
  }
}

/**
 * The conversation and the `tools` value a template renders for a request with tools. A template
 * that takes tools gets them; for another, the tools are described in the system message and the
 * calls and results written as text.
 */
export function toolConversation(
  messages: readonly ChatMessage[],
  tools: readonly ToolDefinition[],
  format: ToolFormat,
  native: boolean,
  choice: ToolChoice,
): { messages: ChatMessage[]; tools?: unknown[] } {
  const definitions = tools.map((t) => ({
    type: "function",
    function: {
      name: t.name,
      ...(t.description !== undefined ? { description: t.description } : {}),
      parameters: t.parameters ?? { type: "object" },
    },
  }));
  if (native) return { messages: [...messages], tools: definitions };
  const out: ChatMessage[] = messages.map((m) => {
    if (m.role === "tool") {
      const who = m.name ? ` of ${m.name}` : "";
      const id = m.toolCallId ? ` (call ${m.toolCallId})` : "";
      return { role: "user", content: `Result${who}${id}:\n${m.content}` };
    }
    if (m.toolCalls && m.toolCalls.length > 0) {
      const calls = formatToolCalls(format, m.toolCalls);
      return { role: m.role, content: m.content ? `${m.content}\n${calls}` : calls };
    }
    return m;
  });
  if (choice !== "none" && tools.length > 0) {
    const example = formatToolCalls(format, [{ id: "", name: "NAME", arguments: '{"ARGUMENT": "VALUE"}' }]);
    const text =
      `You can call these tools (JSON Schema of each one's arguments):\n${JSON.stringify(definitions)}\n` +
      `To call tools, reply with only this, one object per call:\n${example}`;
    if (out[0]?.role === "system") out[0] = { ...out[0], content: `${out[0].content}\n\n${text}` };
    else out.unshift({ role: "system", content: text });
  }
  return { messages: out };
}

/**
 * The grammar of the calls a reply may make, and for "auto" its triggers (the grammar applies
 * from the format's opening on). None for tool choice "none".
 */
export function toolCallGrammar(
  format: ToolFormat,
  tools: readonly ToolDefinition[],
  choice: ToolChoice,
  parallel: boolean,
): { grammar: string; triggers?: string[] } | undefined {
  if (choice === "none") return undefined;
  const chosen = typeof choice === "object" ? tools.filter((t) => t.name === choice.name) : tools;
  const info = FORMATS[format];
  const schemaRules = jsonSchemaRules(
    chosen.map((t, i) => ({ name: `args-${i}`, schema: t.parameters ?? { type: "object" } })),
  );
  // The call object of llama3 starts with its trigger text exactly ({"name"), so that the reply
  // is read by the same text that starts the grammar.
  const calls = chosen.map(
    (t, i) =>
      `call-${i} ::= "{\\"name\\"" space ":" space ${gbnfLiteral(JSON.stringify(t.name))} space "," space ${gbnfLiteral(`"${info.argumentsKey}"`)} space ":" space args-${i} space "}"`,
  );
  const call = `call ::= ${chosen.map((_, i) => `call-${i}`).join(" | ")}`;
  const many = (one: string, sep: string) => (parallel ? `${one} (${sep} ${one})*` : one);
  let root: string;
  switch (format) {
    case "hermes":
      // One line break between calls: the reply ends or goes on, with nothing else to choose.
      root = many('"<tool_call>" space call space "</tool_call>"', '"\\n"');
      break;
    case "mistral":
      root = `"[TOOL_CALLS]" "[" space ${many("call space", '"," space')} "]"`;
      break;
    case "llama3":
      root = "call";
      break;
    case "generic":
      root = `"{\\"tool_calls\\"" space ":" space "[" space ${many("call space", '"," space')} "]" space "}"`;
      break;
  }
  const grammar = [`root ::= ${root}`, call, ...calls, schemaRules].join("\n");
  return choice === "auto" ? { grammar, triggers: [info.open] } : { grammar };
}

export type ToolEvent =
  | { type: "content"; text: string }
  /** A call began: its name is known, its arguments follow. */
  | { type: "call"; index: number; id: string; name: string }
  | { type: "arguments"; index: number; text: string };

/**
 * Reads a reply as it streams: text before the calls as content, then each call's name and its
 * arguments' JSON text as it is written. What follows the calls' markup is not content.
 */
export class ToolCallStream {
  private readonly info: FormatInfo;
  private content = "";
  /** The reply from the calls' opening on, once it appeared. */
  private calls?: string;
  private readonly sent: { id: string; name: string; argumentsSent: number }[] = [];
  /** Whole arguments text by call, once scanned. */
  private readonly args: string[] = [];

  constructor(
    format: ToolFormat,
    private readonly newId: () => string,
  ) {
    this.info = FORMATS[format];
  }

  /** Adds text of the reply; returns what it adds to the message. */
  push(text: string): ToolEvent[] {
    if (this.calls === undefined) {
      this.content += text;
      const at = this.content.indexOf(this.info.open);
      if (at < 0) {
        // Hold back what may be the start of the opening.
        const keep = heldBack(this.content, this.info.open);
        const out = this.content.slice(0, this.content.length - keep);
        this.content = this.content.slice(out.length);
        return out ? [{ type: "content", text: out }] : [];
      }
      const before = this.content.slice(0, at);
      this.calls = this.content.slice(at);
      this.content = "";
      return [...(before ? [{ type: "content" as const, text: before }] : []), ...this.scan()];
    }
    this.calls += text;
    return this.scan();
  }

  /** The end of the reply: content held back, and the calls found. */
  end(): { events: ToolEvent[]; calls: ToolCall[] } {
    const events: ToolEvent[] = [];
    if (this.calls === undefined && this.content) events.push({ type: "content", text: this.content });
    this.content = "";
    return {
      events,
      calls: this.sent.map((c, i) => ({ id: c.id, name: c.name, arguments: this.args[i] ?? "" })),
    };
  }

  private scan(): ToolEvent[] {
    const events: ToolEvent[] = [];
    const found = scanCalls(this.calls!, this.info.depth, this.info.argumentsKey);
    found.forEach((c, i) => {
      if (c.name === undefined) return;
      let s = this.sent[i];
      if (!s) {
        s = { id: this.newId(), name: c.name, argumentsSent: 0 };
        this.sent.push(s);
        events.push({ type: "call", index: i, id: s.id, name: c.name });
      }
      if (c.argsStart === undefined) return;
      const args = this.calls!.slice(c.argsStart, c.argsEnd ?? this.calls!.length);
      this.args[i] = args;
      if (args.length > s.argumentsSent) {
        events.push({ type: "arguments", index: i, text: args.slice(s.argumentsSent) });
        s.argumentsSent = args.length;
      }
    });
    return events;
  }
}

/** Parses a whole reply: its content and its calls. */
export function parseToolCalls(
  format: ToolFormat,
  text: string,
  newId: () => string,
): { content: string; calls: ToolCall[] } {
  const stream = new ToolCallStream(format, newId);
  let content = "";
  for (const e of [...stream.push(text)]) if (e.type === "content") content += e.text;
  const { events, calls } = stream.end();
  for (const e of events) if (e.type === "content") content += e.text;
  return { content, calls };
}

/** Length of the longest suffix of `text` that is a proper prefix of `open`. */
function heldBack(text: string, open: string): number {
  for (let k = Math.min(open.length - 1, text.length); k > 0; k--) {
    if (text.endsWith(open.slice(0, k))) return k;
  }
  return 0;
}

interface ScannedCall {
  name?: string;
  argsStart?: number;
  argsEnd?: number;
}

/**
 * The call objects in `text` (possibly cut short): objects `depth` containers deep; in each, the
 * "name" string and where the arguments value starts and ends.
 */
function scanCalls(text: string, depth: number, argumentsKey: string): ScannedCall[] {
  const calls: ScannedCall[] = [];
  // Open containers: for objects, the key whose value comes next.
  const stack: { object: boolean; key?: string; expectKey: boolean }[] = [];
  let call: ScannedCall | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    const top = stack[stack.length - 1];
    // A value at a call object's level: its key says what it is.
    const inCall = top?.object && stack.length === depth + 1 && call !== undefined;
    if (c === '"') {
      const end = stringEnd(text, i);
      if (end < 0) break;
      const literal = text.slice(i, end + 1);
      if (top?.object && top.expectKey) {
        top.key = JSON.parse(literal) as string;
        top.expectKey = false;
      } else if (inCall && top.key === "name") call!.name = JSON.parse(literal) as string;
      else if (inCall && top.key === argumentsKey) {
        call!.argsStart = i;
        call!.argsEnd = end + 1;
      }
      i = end;
    } else if (c === "{" || c === "[") {
      if (inCall && top.key === argumentsKey) call!.argsStart = i;
      if (c === "{" && stack.length === depth) {
        call = {};
        calls.push(call);
      }
      stack.push({ object: c === "{", expectKey: c === "{" });
    } else if (c === "}" || c === "]") {
      stack.pop();
      const parent = stack[stack.length - 1];
      if (call && stack.length === depth + 1 && parent?.object && parent.key === argumentsKey) {
        call.argsEnd = i + 1;
      }
    } else if (c === "," && top?.object) top.expectKey = true;
  }
  return calls;
}

/** The index of the quote that ends the JSON string starting at `start`, or -1 when cut off. */
function stringEnd(text: string, start: number): number {
  for (let i = start + 1; i < text.length; i++) {
    if (text[i] === "\\") i++;
    else if (text[i] === '"') return i;
  }
  return -1;
}
