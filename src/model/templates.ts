/**
 * Chat templates: turn a list of chat messages into the one prompt string a model was trained on.
 *
 * Two sources of templates, one engine. A model file may carry its own Jinja template
 * (GGUF `tokenizer.chat_template`, HF `tokenizer_config.json["chat_template"]`); four classic formats
 * are built in by name (alpaca, vicuna_v1.1, llama-2, chatml). The built-ins are Jinja sources too,
 * rendered by the same engine (@huggingface/jinja), so `inspect` can print them and a fine-tune can
 * store them in the GGUF it writes. They use only standard Jinja (namespace, loop, tests,
 * raise_exception), so transformers and llama.cpp's `--jinja` render them the same way.
 *
 * BOS: the rendered text contains `bos_token` exactly where the template puts it (llama-2 puts it
 * before every [INST], the other built-ins nowhere, as in the original recipes where the tokenizer
 * adds it). A caller that tokenizes the text adds a BOS token only when the text does not already
 * start with `bosToken`.
 *
 * A model file's template is untrusted: it renders within limits on steps, sizes and time
 * (template-render.ts), and one that goes past them is a ChatTemplateBudgetError. Message text
 * can be told apart from the template's markup (renderChatMarked), so that special-token texts in
 * a message are tokenized as text (chat-prompt.ts).
 */

import type { Template } from "@huggingface/jinja";
import { UserError } from "../errors.js";
import { parseTemplate, renderLimits, renderWithin, TemplateBudgetError } from "./template-render.js";

export type ChatRole = "system" | "user" | "assistant";

export type ChatMessage = {
  /** "tool": the result of a tool call, for templates that take tools (see tool-calls.ts). */
  role: ChatRole | "tool";
  content: string;
  /** Tool calls an assistant message made (arguments as JSON text). */
  toolCalls?: { id: string; name: string; arguments: string }[];
  /** The call a "tool" message answers, and the tool's name. */
  toolCallId?: string;
  name?: string;
  /**
   * Optional context for a user message, as in an Alpaca record's `input` field. Templates that read
   * `message['input']` (the alpaca built-in) get it as is; for every other template it is appended to
   * `content` after a blank line.
   */
  input?: string;
};

export const BUILTIN_TEMPLATE_NAMES = ["alpaca", "vicuna_v1.1", "llama-2", "chatml"] as const;
export type BuiltinTemplateName = (typeof BUILTIN_TEMPLATE_NAMES)[number];

export interface RenderChatOptions {
  /** Jinja source of the model file's template (`tokenizer.chat_template`). */
  template?: string;
  /** A built-in template; wins over `template` when both are given. */
  name?: BuiltinTemplateName;
  bosToken: string;
  eosToken: string;
  /** End with the opening of an assistant turn, for generation. Default true. */
  addGenerationPrompt?: boolean;
  /** Tool definitions (OpenAI's shape) given to the template as `tools`. */
  tools?: readonly unknown[];
}

/** What `chooseTemplate` decided: spread it into `renderChat`'s options. */
export interface ChosenTemplate {
  /** Set for a built-in template. */
  name?: BuiltinTemplateName;
  /** Set for the model file's template (its Jinja source). */
  template?: string;
  /** Where the template comes from, for messages: the built-in's name or "model file". */
  label: string;
  /** The Jinja source that is rendered. */
  source: string;
  /** Strings that end an assistant turn, besides the end-of-sequence token. */
  stopStrings: readonly string[];
}

const ALPACA_PREAMBLE =
  "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
const ALPACA_PREAMBLE_WITH_INPUT =
  "Below is an instruction that describes a task, paired with an input that provides further context. " +
  "Write a response that appropriately completes the request.";
const VICUNA_SYSTEM =
  "A chat between a curious user and an artificial intelligence assistant. " +
  "The assistant gives helpful, detailed, and polite answers to the user's questions.";

/** Takes the optional leading system message apart from the rest; used by every built-in. */
const SPLIT_SYSTEM = `{%- if messages and messages[0]['role'] == 'system' -%}
  {%- set system = messages[0]['content'] -%}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set system = none -%}
  {%- set loop_messages = messages -%}
{%- endif -%}
`;

const ONLY_FIRST_SYSTEM = `{{- raise_exception('only user and assistant messages may follow the optional first system message') -}}`;

/**
 * Stanford Alpaca (train.py PROMPT_DICT) with alpaca-lora's newline after `### Response:`.
 * A leading system message replaces the preamble ("Below is an instruction..."); an empty one drops
 * it. The preamble mentions an input iff the first user message has a non-empty `input`, so earlier
 * turns keep their text as a chat grows. Multi-turn: every user message is an `### Instruction:`
 * block (plus `### Input:` when it has one), every assistant message a `### Response:` block closed
 * by EOS; blocks are separated by a blank line. A single turn therefore renders exactly as Alpaca's
 * training text: prompt, output, EOS.
 */
const ALPACA = String.raw`${SPLIT_SYSTEM}{%- if system is none -%}
  {%- set ns = namespace(seen_user=false, with_input=false) -%}
  {%- for message in loop_messages -%}
    {%- if message['role'] == 'user' and not ns.seen_user -%}
      {%- set ns.seen_user = true -%}
      {%- if message['input'] is defined and message['input'] -%}
        {%- set ns.with_input = true -%}
      {%- endif -%}
    {%- endif -%}
  {%- endfor -%}
  {%- if ns.with_input -%}
    {%- set system = '${ALPACA_PREAMBLE_WITH_INPUT}' -%}
  {%- else -%}
    {%- set system = '${ALPACA_PREAMBLE}' -%}
  {%- endif -%}
{%- endif -%}
{%- if system -%}
  {{- system + '\n\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if message['role'] == 'user' -%}
    {{- '### Instruction:\n' + message['content'] + '\n\n' -}}
    {%- if message['input'] is defined and message['input'] -%}
      {{- '### Input:\n' + message['input'] + '\n\n' -}}
    {%- endif -%}
  {%- elif message['role'] == 'assistant' -%}
    {{- '### Response:\n' + message['content'] + eos_token -}}
    {%- if not loop.last -%}
      {{- '\n\n' -}}
    {%- endif -%}
  {%- else -%}
    ${ONLY_FIRST_SYSTEM}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '### Response:\n' -}}
{%- endif -%}`;

/**
 * FastChat's vicuna_v1.1 (SeparatorStyle.ADD_COLON_TWO, sep " ", sep2 EOS):
 * `{system} USER: {u1} ASSISTANT: {a1}</s>USER: {u2} ASSISTANT:`. Without a system message the
 * FastChat default is used; an empty one drops the system text and its separator.
 */
const VICUNA = `${SPLIT_SYSTEM}{%- if system is none -%}
  {%- set system = "${VICUNA_SYSTEM}" -%}
{%- endif -%}
{%- if system -%}
  {{- system + ' ' -}}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if message['role'] == 'user' -%}
    {{- 'USER: ' + message['content'] + ' ' -}}
  {%- elif message['role'] == 'assistant' -%}
    {{- 'ASSISTANT: ' + message['content'] + eos_token -}}
  {%- else -%}
    ${ONLY_FIRST_SYSTEM}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- 'ASSISTANT:' -}}
{%- endif -%}`;

/**
 * Meta's Llama-2 chat format (llama generation.py): the system text goes inside the first [INST]
 * between <<SYS>> tags; each completed pair is `<s>[INST] {user} [/INST] {answer} </s>`, the open turn
 * `<s>[INST] {user} [/INST]`; contents are stripped and roles must alternate. The generation prompt is
 * implicit in the format, so `add_generation_prompt` changes nothing.
 */
const LLAMA_2 = String.raw`${SPLIT_SYSTEM}{%- for message in loop_messages -%}
  {%- if message['role'] not in ['user', 'assistant'] -%}
    ${ONLY_FIRST_SYSTEM}
  {%- elif (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{- raise_exception('roles must alternate user/assistant/user/... after the optional system message') -}}
  {%- endif -%}
  {%- if message['role'] == 'user' -%}
    {%- if loop.first and system is not none -%}
      {%- set content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + message['content'] -%}
    {%- else -%}
      {%- set content = message['content'] -%}
    {%- endif -%}
    {{- bos_token + '[INST] ' + (content | trim) + ' [/INST]' -}}
  {%- else -%}
    {{- ' ' + (message['content'] | trim) + ' ' + eos_token -}}
  {%- endif -%}
{%- endfor -%}`;

/** ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n` per message; no default system message. */
const CHATML = String.raw`{%- for message in messages -%}
  {%- if message['role'] == 'system' and not loop.first -%}
    ${ONLY_FIRST_SYSTEM}
  {%- endif -%}
  {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\n' -}}
{%- endif -%}`;

const BUILTIN_SOURCES: Record<BuiltinTemplateName, string> = {
  alpaca: ALPACA,
  "vicuna_v1.1": VICUNA,
  "llama-2": LLAMA_2,
  chatml: CHATML,
};

const BUILTIN_STOP_STRINGS: Record<BuiltinTemplateName, readonly string[]> = {
  alpaca: ["### Instruction:", "### Input:", "### Response:"],
  "vicuna_v1.1": ["USER:"],
  "llama-2": ["[INST]"],
  chatml: ["<|im_end|>", "<|im_start|>"],
};

/** End-of-turn markers that, when a file's template writes them literally, also end generation. */
export const KNOWN_TURN_ENDS = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

const FILE_LABEL = "model file";

/** The names of the built-in templates, in a stable order. */
export function templateNames(): BuiltinTemplateName[] {
  return [...BUILTIN_TEMPLATE_NAMES];
}

/** Parses a template name from a flag or request; UserError listing the valid names otherwise. */
export function parseTemplateName(s: string): BuiltinTemplateName {
  const wanted = s.trim().toLowerCase();
  const found = BUILTIN_TEMPLATE_NAMES.find((n) => n === wanted);
  if (found === undefined) {
    throw new UserError(`unknown chat template "${s}"; valid names: ${BUILTIN_TEMPLATE_NAMES.join(", ")}`);
  }
  return found;
}

/** The Jinja source of a built-in template (what `inspect` shows). */
export function builtinTemplateSource(name: BuiltinTemplateName): string {
  return BUILTIN_SOURCES[name];
}

/** Strings that end an assistant turn in a built-in format, besides the end-of-sequence token. */
export function stopStringsFor(name: BuiltinTemplateName): string[] {
  return [...BUILTIN_STOP_STRINGS[name]];
}

/**
 * Decides which template to use: an explicitly requested name wins, then the model file's own
 * template; with neither, a UserError suggests --template. A file template that does not parse is a
 * UserError here already.
 */
export function chooseTemplate(fileTemplate?: string, requested?: string): ChosenTemplate {
  if (requested !== undefined && requested.trim() !== "") {
    const name = parseTemplateName(requested);
    return { name, label: name, source: BUILTIN_SOURCES[name], stopStrings: stopStringsFor(name) };
  }
  if (fileTemplate !== undefined && fileTemplate.trim() !== "") {
    compile(fileTemplate, FILE_LABEL);
    return {
      template: fileTemplate,
      label: FILE_LABEL,
      source: fileTemplate,
      stopStrings: KNOWN_TURN_ENDS.filter((s) => fileTemplate.includes(s)),
    };
  }
  throw noTemplateError();
}

function noTemplateError(): UserError {
  return new UserError(
    `the model file has no chat template (tokenizer.chat_template); choose one with --template ${BUILTIN_TEMPLATE_NAMES.join("|")}`,
  );
}

/**
 * A template that went past its rendering limits (see template-render.ts): a fault of the template,
 * whatever the messages, unlike an error the template raises for some conversations.
 */
export class ChatTemplateBudgetError extends UserError {
  override name = "ChatTemplateBudgetError";
}

/**
 * Renders a conversation with a built-in (`name`) or the file's template (`template`), within
 * limits on steps, sizes and time that any real template stays far below; a template that goes
 * past them is a ChatTemplateBudgetError.
 */
export function renderChat(messages: readonly ChatMessage[], options: RenderChatOptions): string {
  return renderMessages(messages, options).text;
}

/**
 * A rendering whose message texts are known: `plain` lists the [start, end) ranges of `text` that
 * are the text of messages given to `renderChatMarked` as plain.
 */
export interface MarkedRendering {
  text: string;
  plain: [start: number, end: number][];
}

/**
 * Renders a conversation and tells which parts of the result are message text rather than the
 * template's own markup, so that a caller can tokenize message text as text: a user message that
 * contains "<|im_end|>" must not close its turn.
 *
 * Each message text for which `isPlain` is true is given to the template as a marker (its
 * index between two private-use characters that appear nowhere in the template or the messages),
 * keeping the text's leading and trailing white space so that `trim` works as on the text; the
 * markers in the result are then replaced by the texts. A template that does more to such a
 * text than trimming it (upper-casing it, testing what it starts with) sees only the marker,
 * and the message keeps its whole text. If a marker comes out cut (the template slices the
 * text), the text cannot be told apart from the markup and a UserError says so.
 */
export function renderChatMarked(
  messages: readonly ChatMessage[],
  options: RenderChatOptions & { isPlain: (text: string) => boolean },
): MarkedRendering {
  const texts: string[] = [];
  const marked = messages.map((m) => ({ ...m }));
  const [open, close] = markerDelimiters(resolveTemplate(options).source, messages);
  const mark = (text: string): string => {
    if (!options.isPlain(text)) return text;
    const core = text.trim();
    if (core === "") return text;
    const start = text.indexOf(core);
    texts.push(core);
    return `${text.slice(0, start)}${open}${texts.length - 1}${close}${text.slice(start + core.length)}`;
  };
  for (const m of marked) {
    m.content = mark(m.content);
    if (m.input !== undefined) m.input = mark(m.input);
  }
  const { text: rendered, label } = renderMessages(marked, options);
  if (texts.length === 0) return { text: rendered, plain: [] };
  let text = "";
  const plain: [number, number][] = [];
  let from = 0;
  for (let at = rendered.indexOf(open); at >= 0; at = rendered.indexOf(open, from)) {
    const end = rendered.indexOf(close, at + 1);
    const digits = end < 0 ? "" : rendered.slice(at + 1, end);
    const core = /^\d+$/.test(digits) ? texts[Number(digits)] : undefined;
    if (core === undefined) break;
    text += rendered.slice(from, at);
    plain.push([text.length, text.length + core.length]);
    text += core;
    from = end + 1;
  }
  text += rendered.slice(from);
  // Neither the messages nor the template hold the delimiters: one left over is a cut marker.
  if (text.includes(open) || text.includes(close)) {
    throw new UserError(
      `${describe(label)} changes the text of a message that contains special-token text, so that text cannot be told apart from the template's markup`,
    );
  }
  return { text, plain };
}

/**
 * Two private-use characters that neither the template nor any message contains, to write
 * markers with: a message cannot forge one, and JSON and case changes leave them as they are.
 */
function markerDelimiters(source: string, messages: readonly ChatMessage[]): [string, string] {
  const used = new Set<string>();
  const collect = (text: string) => {
    for (const m of text.matchAll(/[\uE000-\uF8FF]/g)) used.add(m[0]);
  };
  collect(source);
  for (const m of messages) {
    collect(m.content);
    if (m.input !== undefined) collect(m.input);
  }
  const free: string[] = [];
  for (let code = 0xe000; free.length < 2; code++) {
    const ch = String.fromCharCode(code);
    if (!used.has(ch)) free.push(ch);
  }
  return [free[0]!, free[1]!];
}

/** Characters of rendering error detail kept in a message (a template's own error text may be long). */
const MAX_DETAIL = 300;

/** The Jinja source and the label (for messages) of the template the options name. */
function resolveTemplate(options: Pick<RenderChatOptions, "name" | "template">): {
  source: string;
  label: string;
} {
  const { name, template } = options;
  if (name !== undefined) {
    const source = BUILTIN_SOURCES[name];
    if (source === undefined) parseTemplateName(name);
    return { source, label: name };
  }
  if (template !== undefined && template.trim() !== "") return { source: template, label: FILE_LABEL };
  throw noTemplateError();
}

function renderMessages(
  messages: readonly ChatMessage[],
  options: RenderChatOptions,
): { text: string; label: string } {
  const { bosToken, eosToken, addGenerationPrompt = true } = options;
  const { source, label } = resolveTemplate(options);
  const compiled = compile(source, label);
  const keepInput = source.includes("message['input']");
  let inputChars = bosToken.length + eosToken.length;
  for (const m of messages) {
    inputChars += m.content.length + (m.input?.length ?? 0);
    for (const c of m.toolCalls ?? []) inputChars += c.name.length + c.arguments.length;
  }
  if (options.tools) inputChars += JSON.stringify(options.tools).length;
  const plain = messages.map((m) => toTemplateMessage(m, keepInput));
  try {
    const text = renderWithin(
      compiled,
      {
        messages: plain,
        bos_token: bosToken,
        eos_token: eosToken,
        add_generation_prompt: addGenerationPrompt,
        ...(options.tools ? { tools: options.tools } : {}),
      },
      renderLimits(inputChars, messages.length),
    );
    return { text, label };
  } catch (e) {
    if (e instanceof TemplateBudgetError) {
      throw new ChatTemplateBudgetError(`${describe(label)} exceeded its rendering budget (${e.message})`);
    }
    throw new UserError(`${describe(label)} failed to render: ${oneLine(e)}`);
  }
}

function toTemplateMessage(m: ChatMessage, keepInput: boolean): Record<string, unknown> {
  const out: Record<string, unknown> = { role: m.role, content: m.content };
  if (keepInput) {
    if (m.input !== undefined) out.input = m.input;
  } else if (m.input) out.content = `${m.content}\n\n${m.input}`;
  // Tool calls as Hugging Face templates read them: OpenAI's shape, arguments as an object.
  if (m.toolCalls) {
    out.tool_calls = m.toolCalls.map((c) => ({
      id: c.id,
      type: "function",
      function: { name: c.name, arguments: parseArguments(c.arguments) },
    }));
  }
  if (m.toolCallId !== undefined) out.tool_call_id = m.toolCallId;
  if (m.name !== undefined) out.name = m.name;
  return out;
}

/** Tool-call arguments as the object their JSON text holds (the text itself if it holds none). */
function parseArguments(text: string): unknown {
  try {
    const v = JSON.parse(text);
    return v !== null && typeof v === "object" ? v : text;
  } catch {
    return text;
  }
}

const compiledCache = new Map<string, Template>();
const MAX_CACHED = 16;

function compile(source: string, label: string): Template {
  const hit = compiledCache.get(source);
  if (hit !== undefined) return hit;
  let t: Template;
  try {
    t = parseTemplate(source);
  } catch (e) {
    if (e instanceof TemplateBudgetError) throw new UserError(`${describe(label)} is refused: ${e.message}`);
    throw new UserError(`${describe(label)} does not parse: ${oneLine(e)}`);
  }
  if (compiledCache.size >= MAX_CACHED) compiledCache.delete(compiledCache.keys().next().value!);
  compiledCache.set(source, t);
  return t;
}

function describe(label: string): string {
  return label === FILE_LABEL
    ? "the model file's chat template (tokenizer.chat_template)"
    : `chat template "${label}"`;
}

function oneLine(e: unknown): string {
  const message = (e instanceof Error ? e.message : String(e)).slice(0, 4 * MAX_DETAIL);
  const line = message.replace(/\s*\n\s*/g, " ").trim();
  return line.length > MAX_DETAIL ? `${line.slice(0, MAX_DETAIL)}...` : line;
}
