/**
 * Chat templates are rendered within limits: real templates (Llama 3, Qwen2.5 with tools, Mistral,
 * Gemma, Phi-3, ChatML and the built-ins) render exactly as @huggingface/jinja renders them, long
 * conversations included, while hostile templates (huge ranges, nested loops, growing strings and
 * lists, size bombs in filters and methods) end quickly with one line: in renderChat, in `chat` and
 * `data preview` (exit 2), and in `serve`, which answers 400 and keeps answering /health.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { tokenizeRecord } from "../src/data/chat-tokens.js";
import type { DatasetRecord } from "../src/data/records.js";
import { UserError } from "../src/errors.js";
import {
  parseTemplate,
  renderLimits,
  renderWithin,
  TemplateBudgetError,
} from "../src/model/template-render.js";
import {
  builtinTemplateSource,
  type ChatMessage,
  ChatTemplateBudgetError,
  renderChat,
  templateNames,
} from "../src/model/templates.js";
import { CLI, ensureBuilt, ROOT, runCli } from "./helpers/cli.js";
import { bpeDescription, bpeTokenizer, writeVocabGguf } from "./helpers/shakespeare-vocab.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

// --- real templates, written from each format's documented shape ---------------------------------

const LLAMA_3 =
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

const QWEN_2_5 = `{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
`;

const MISTRAL = `{{- bos_token }}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {{- '[INST] ' + message['content'] + ' [/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported!') }}
    {%- endif %}
{%- endfor %}
`;

const GEMMA =
  "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}";

const PHI_3 =
  "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}";

const CHATML =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** Llama 3.2's header: today's date from strftime_now, and a namespace. */
const LLAMA_3_2_DATE = `{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(system='') %}
{%- if messages[0]['role'] == 'system' %}
    {%- set ns.system = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- ns.system }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
`;

const BOS = "<s>";
const EOS = "</s>";

const withSystem: ChatMessage[] = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "  Hi there  " },
  { role: "assistant", content: "Hello." },
  { role: "user", content: "Name a colour." },
];
const alternating = withSystem.slice(1);

/** What @huggingface/jinja renders with no limits: the reference. */
function libraryRender(
  source: string,
  messages: readonly ChatMessage[],
  extra: Record<string, unknown> = {},
) {
  return new Template(source).render({
    messages: messages.map((m) => ({ ...m })),
    bos_token: BOS,
    eos_token: EOS,
    add_generation_prompt: true,
    ...extra,
  });
}

function longConversation(n: number): ChatMessage[] {
  return Array.from({ length: n }, (_, i) => ({
    role: i % 2 === 0 ? ("user" as const) : ("assistant" as const),
    content: `message ${i}: ${"some words of text ".repeat(10)}`,
  }));
}

describe("real templates render as the library renders them, within the limits", () => {
  const cases: [string, string, ChatMessage[]][] = [
    ["Llama 3", LLAMA_3, withSystem],
    ["Qwen2.5", QWEN_2_5, withSystem],
    ["Mistral", MISTRAL, alternating],
    ["Gemma", GEMMA, alternating],
    ["Phi-3", PHI_3, withSystem],
    ["ChatML", CHATML, withSystem],
    ...templateNames().map((n): [string, string, ChatMessage[]] => [n, builtinTemplateSource(n), withSystem]),
  ];

  it.each(cases)("%s", (_name, source, messages) => {
    const ours = renderChat(messages, { template: source, bosToken: BOS, eosToken: EOS });
    expect(ours).toBe(libraryRender(source, messages));
    expect(ours).toContain("Name a colour.");
  });

  it("Llama 3: the exact prompt", () => {
    expect(renderChat(withSystem, { template: LLAMA_3, bosToken: "<|begin_of_text|>", eosToken: EOS })).toBe(
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>" +
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>" +
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>" +
        "<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>" +
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    );
  });

  it("Qwen2.5 with tools and tool calls: tojson, nested loops and lookbehind all work", () => {
    const tools = [
      {
        type: "function",
        function: {
          name: "get_weather",
          description: "Weather of a city",
          parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
        },
      },
    ];
    const messages = [
      { role: "user", content: "Weather in Paris?" },
      {
        role: "assistant",
        content: "",
        tool_calls: [{ type: "function", function: { name: "get_weather", arguments: { city: "Paris" } } }],
      },
      { role: "tool", content: '{"temp": 21}' },
      { role: "tool", content: '{"wind": 3}' },
    ];
    const context = { messages, tools, bos_token: BOS, eos_token: EOS, add_generation_prompt: true };
    const ours = renderWithin(parseTemplate(QWEN_2_5), context, renderLimits(200, messages.length));
    expect(ours).toBe(new Template(QWEN_2_5).render(context));
    expect(ours).toContain('"name": "get_weather"');
    expect(ours).toContain(
      '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    );
    expect(ours).toContain(
      '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>\n<tool_response>',
    );
  });

  it("Llama 3.2's header: strftime_now writes today's date; a namespace carries the system text", () => {
    const out = renderChat(withSystem, { template: LLAMA_3_2_DATE, bosToken: BOS, eosToken: EOS });
    expect(out).toMatch(
      /Today Date: \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4}\n\nYou are terse\.<\|eot_id\|>/,
    );
    expect(out).toContain("<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>");
  });

  it("a long conversation (4000 messages) renders as the library renders it, and quickly", () => {
    const messages = longConversation(4000);
    for (const source of [
      QWEN_2_5,
      LLAMA_3,
      builtinTemplateSource("alpaca"),
      builtinTemplateSource("llama-2"),
    ]) {
      const started = performance.now();
      const ours = renderChat(messages, { template: source, bosToken: BOS, eosToken: EOS });
      // A generous bound: the limits grow with the conversation, so its size alone never fails it.
      expect(performance.now() - started).toBeLessThan(20_000);
      expect(ours).toBe(libraryRender(source, messages));
    }
  });
});

// --- hostile templates ---------------------------------------------------------------------------

/** A string of 2^k "x" characters made by doubling, in a namespace `ns.s`. */
const doubled = (k: number, char = "x") =>
  `{% set ns = namespace(s='${char}') %}{% for i in range(${k}) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}`;

const HOSTILE: [string, string][] = [
  ["a loop over range(1000000000)", "{% for i in range(1000000000) %}{% endfor %}x"],
  [
    "nested range(100000) loops",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x",
  ],
  ["a string doubled 64 times", `${doubled(64)}{{ ns.s }}`],
  [
    "a list doubled 64 times",
    "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | length }}",
  ],
  [
    "a list that holds itself twice, 64 levels deep, printed",
    "{% set ns = namespace(a=[1]) %}{% for i in range(64) %}{% set ns.a = [ns.a, ns.a] %}{% endfor %}{{ ns.a | tojson }}",
  ],
  ["indent by a billion spaces", "{{ 'a\\nb' | indent(1000000000, true) }}"],
  [
    "a million-character string put between every character of itself",
    `${doubled(20)}{{ ns.s.replace('', ns.s) }}`,
  ],
  ["the replace filter with a growing replacement", `${doubled(20)}{{ ns.s | replace('x', ns.s) }}`],
  ["join with a million-character separator", `${doubled(20)}{{ range(50000) | join(ns.s) }}`],
  ["tojson indented by a billion", "{{ [[[[1]]]] | tojson(indent=1000000000) }}"],
  ["split into two million parts", `${doubled(21, ",")}{{ ns.s.split(',') | length }}`],
  [
    "a filter block over a huge loop",
    `${doubled(20)}{% filter upper %}{% for i in range(100000) %}{{ ns.s }}{% endfor %}{% endfilter %}`,
  ],
  [
    "searching a long list in a long loop",
    "{% set l = range(90000) | list %}{% for i in range(90000) %}{% if i in l %}{% endif %}{% endfor %}",
  ],
  [
    "searching a long string in a long loop",
    `${doubled(21)}{% for i in range(20000) %}{% if 'zz' in ns.s %}{% endif %}{% endfor %}`,
  ],
  ["a namespace that holds itself, printed", "{% set ns = namespace() %}{% set ns.self = ns %}{{ ns }}"],
  [
    "lists nested 50000 deep, printed",
    "{% set ns = namespace(a=[]) %}{% for i in range(50000) %}{% set ns.a = [ns.a] %}{% endfor %}{{ ns.a }}",
  ],
];

const user: ChatMessage[] = [{ role: "user", content: "hi" }];

function budgetError(source: string): { error: unknown; ms: number } {
  const started = performance.now();
  try {
    renderChat(user, { template: source, bosToken: BOS, eosToken: EOS });
    return { error: undefined, ms: performance.now() - started };
  } catch (error) {
    return { error, ms: performance.now() - started };
  }
}

describe("hostile templates end with one line, in bounded time", () => {
  it.each(HOSTILE)("%s", (_name, source) => {
    const { error, ms } = budgetError(source);
    expect(error).toBeInstanceOf(ChatTemplateBudgetError);
    const message = (error as Error).message;
    expect(message).toMatch(
      /^the model file's chat template \(tokenizer\.chat_template\) exceeded its rendering budget \(.+\)$/,
    );
    expect(message).not.toContain("\n");
    // The limits stop each of these within a fraction of a second; the bound is generous.
    expect(ms).toBeLessThan(5_000);
  });

  it("a template source over 1 MiB is refused before parsing", () => {
    const huge = "{{ 'x' }}".repeat(200_000);
    expect(() => renderChat(user, { template: huge, bosToken: BOS, eosToken: EOS })).toThrow(
      /^the model file's chat template \(tokenizer\.chat_template\) is refused: the template is 1800000 characters long; at most 1048576 are accepted$/,
    );
  });

  it("the limits count: a loop just inside them renders, one just past them does not", () => {
    const limits = renderLimits(0, 0);
    const loop = (n: number) => parseTemplate(`{% for i in range(${n}) %}{% endfor %}ok`);
    expect(renderWithin(loop(10_000), {}, limits)).toBe("ok");
    expect(() => renderWithin(loop(limits.maxSteps), {}, limits)).toThrow(TemplateBudgetError);
    const text = (n: number) => parseTemplate(`${doubled(n)}{{ ns.s | length }}`);
    expect(renderWithin(text(21), {}, limits)).toBe(String(2 ** 21));
    expect(() => renderWithin(text(23), {}, limits)).toThrow(/longer than 4194304 characters/);
  });

  it("an error the template raises stays its own one-line error, not a budget error", () => {
    let caught: unknown;
    try {
      renderChat([{ role: "system", content: "s" }, ...user], {
        template: GEMMA,
        bosToken: BOS,
        eosToken: EOS,
      });
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(UserError);
    expect(caught).not.toBeInstanceOf(ChatTemplateBudgetError);
    expect((caught as Error).message).toBe(
      "the model file's chat template (tokenizer.chat_template) failed to render: System role not supported",
    );
  });

  it("tokenizing a dataset stops at a hostile template instead of skipping every record", () => {
    const record: DatasetRecord = {
      kind: "chat",
      messages: [
        { role: "user", content: "hi" },
        { role: "assistant", content: "hello" },
      ],
      source: { file: "data.jsonl", line: 1 },
    };
    expect(() =>
      tokenizeRecord(record, {
        tokenizer: bpeTokenizer("llama-bpe"),
        template: { template: HOSTILE[1]![1] },
      }),
    ).toThrow(ChatTemplateBudgetError);
  });
});

// --- through the command line and the server ---------------------------------------------------------

let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "sh-template-budget-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** The three hostile templates of the report: a 1e9 range, nested range(100000) loops, a huge output. */
const REPORTED = [HOSTILE[0]!, HOSTILE[1]!, HOSTILE[2]!];

function hostileModel(name: string, template: string): string {
  const path = join(dir, `${name}.gguf`);
  writeTinyLlama(path, { contextLength: 256, chatTemplate: template });
  return path;
}

describe("command line", () => {
  it.each(REPORTED)("chat with %s: one line, exit 2", async (name, template) => {
    ensureBuilt();
    const model = hostileModel(`chat-${name.replace(/\W+/g, "-")}`, template);
    const r = await runCli(["chat", "-m", model, "-n", "4", "-t", "1"], { input: "hello\n" });
    expect(r.status).toBe(2);
    const lines = r.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /^smallhammer: the model file's chat template \(tokenizer\.chat_template\) exceeded its rendering budget \(.+\)$/,
    );
  });

  it("finetune with a hostile template: one line, exit 2, before any training", async () => {
    ensureBuilt();
    const model = hostileModel("finetune-hostile", HOSTILE[0]![1]);
    const data = join(dir, "finetune-chat.jsonl");
    const record = {
      messages: [
        { role: "user", content: "hi" },
        { role: "assistant", content: "hello" },
      ],
    };
    writeFileSync(data, `${JSON.stringify(record)}\n`.repeat(4));
    const out = join(dir, "finetune-run");
    const r = await runCli([
      "finetune",
      "--base",
      model,
      "--data",
      data,
      "--steps",
      "1",
      "--seq",
      "64",
      "--out",
      out,
    ]);
    expect(r.status).toBe(2);
    const lines = r.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/exceeded its rendering budget \(.+\)$/);
  });

  it.each(REPORTED)("data preview with %s: one line, exit 2", async (name, template) => {
    ensureBuilt();
    const vocab = join(dir, `vocab-${name.replace(/\W+/g, "-")}.gguf`);
    writeVocabGguf(vocab, bpeDescription("llama-bpe"), { chatTemplate: template });
    const data = join(dir, "chat.jsonl");
    writeFileSync(
      data,
      `${JSON.stringify({
        messages: [
          { role: "user", content: "hi" },
          { role: "assistant", content: "hello" },
        ],
      })}\n`,
    );
    for (const extra of [[], ["--skip-invalid"]]) {
      const r = await runCli(["data", "preview", data, "--tokenizer", vocab, ...extra]);
      expect(r.status).toBe(2);
      const lines = r.stderr.trim().split("\n");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/exceeded its rendering budget \(.+\)$/);
    }
  });
});

interface Answer {
  status: number;
  body: string;
}

function httpCall(port: number, method: string, path: string, body?: object): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = httpRequest(
      {
        host: "127.0.0.1",
        port,
        path,
        method,
        agent: false,
        headers:
          payload === undefined
            ? {}
            : { "content-type": "application/json", "content-length": Buffer.byteLength(payload) },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => {
          text += d;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

async function startServe(
  model: string,
): Promise<{ child: ChildProcess; port: number; stderr: () => string }> {
  const child = spawn(process.execPath, [CLI, "serve", "-m", model, "--port", "0", "-t", "1"], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  const port = await new Promise<number>((resolve, reject) => {
    child.stderr!.on("data", (d: Buffer) => {
      stderr += d;
      const m = /on http:\/\/127\.0\.0\.1:(\d+)/.exec(stderr);
      if (m && /loaded in/.test(stderr)) resolve(Number(m[1]));
    });
    child.on("exit", () => reject(new Error(`serve exited early: ${stderr}`)));
  });
  return { child, port, stderr: () => stderr };
}

describe("serve", () => {
  it("answers a hostile template's chat request with 400 while /health keeps answering within a second", async () => {
    ensureBuilt();
    const model = hostileModel("serve-hostile", HOSTILE[1]![1]);
    const { child, port, stderr } = await startServe(model);
    try {
      // It says so at start, in one line.
      expect(
        stderr()
          .split("\n")
          .filter((l) => l.includes("chat template")),
      ).toEqual([
        expect.stringMatching(
          /^smallhammer serve: .*serve-hostile\.gguf: the model file's chat template \(tokenizer\.chat_template\) exceeded its rendering budget \(.+\); \/v1\/chat\/completions will answer 400, \/v1\/completions works$/,
        ),
      ]);
      const chat = { model: "serve-hostile", messages: [{ role: "user", content: "hello" }], max_tokens: 4 };
      for (let round = 0; round < 3; round++) {
        let done = false;
        const answer = httpCall(port, "POST", "/v1/chat/completions", chat).finally(() => {
          done = true;
        });
        let slowest = 0;
        let checks = 0;
        while (!done || checks === 0) {
          const started = performance.now();
          const health = await httpCall(port, "GET", "/health");
          slowest = Math.max(slowest, performance.now() - started);
          checks++;
          expect(health.status).toBe(200);
        }
        expect(slowest).toBeLessThan(1_000);
        const r = await answer;
        expect(r.status).toBe(400);
        const body = JSON.parse(r.body) as { error: Record<string, unknown> };
        expect(Object.keys(body.error).sort()).toEqual(["code", "message", "param", "type"]);
        expect(body.error.message).toMatch(/exceeded its rendering budget \(.+\)$/);
      }
      // Still serving: a plain completion works.
      const completion = await httpCall(port, "POST", "/v1/completions", {
        model: "serve-hostile",
        prompt: "hello",
        max_tokens: 2,
      });
      expect(completion.status).toBe(200);
      expect(child.exitCode).toBeNull();
    } finally {
      child.kill("SIGKILL");
    }
  });
});
