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
 */

import { Template } from "@huggingface/jinja";
import { UserError } from "../errors.js";

export type ChatRole = "system" | "user" | "assistant";

export type ChatMessage = {
  role: ChatRole;
  content: string;
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

/** Renders a conversation with a built-in (`name`) or the file's template (`template`). */
export function renderChat(messages: readonly ChatMessage[], options: RenderChatOptions): string {
  const { name, template, bosToken, eosToken, addGenerationPrompt = true } = options;
  let source: string;
  let label: string;
  if (name !== undefined) {
    source = BUILTIN_SOURCES[name];
    label = name;
    if (source === undefined) parseTemplateName(name);
  } else if (template !== undefined && template.trim() !== "") {
    source = template;
    label = FILE_LABEL;
  } else {
    throw noTemplateError();
  }
  const compiled = compile(source, label);
  const keepInput = source.includes("message['input']");
  const plain = messages.map((m) => toTemplateMessage(m, keepInput));
  try {
    return compiled.render({
      messages: plain,
      bos_token: bosToken,
      eos_token: eosToken,
      add_generation_prompt: addGenerationPrompt,
    });
  } catch (e) {
    throw new UserError(`${describe(label)} failed to render: ${oneLine(e)}`);
  }
}

function toTemplateMessage(m: ChatMessage, keepInput: boolean): Record<string, string> {
  if (keepInput) {
    return m.input === undefined
      ? { role: m.role, content: m.content }
      : { role: m.role, content: m.content, input: m.input };
  }
  const content = m.input ? `${m.content}\n\n${m.input}` : m.content;
  return { role: m.role, content };
}

const compiledCache = new Map<string, Template>();
const MAX_CACHED = 16;

function compile(source: string, label: string): Template {
  const hit = compiledCache.get(source);
  if (hit !== undefined) return hit;
  let t: Template;
  try {
    t = new Template(source);
  } catch (e) {
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
  const message = e instanceof Error ? e.message : String(e);
  return message.replace(/\s*\n\s*/g, " ").trim();
}
