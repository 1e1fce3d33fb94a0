/**
 * Tool calling through the server, over real HTTP, with random-weight models whose calls only the
 * grammar makes valid: a Hermes-style template (its own <tool_call> format, tools and tool messages
 * rendered by the template), a Mistral-style one (its [TOOL_CALLS] format, whose templates take
 * only 9-character call ids) and a built-in template (the generic JSON format). The `openai` SDK's
 * tool loop, streamed tool_calls deltas, the AI SDK's generateText with tools, tool_choice
 * none/required/named, and the 400s; the formats' recognition and parsing on their own.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateText, tool } from "ai";
import OpenAI, { type APIError } from "openai";
import type { ChatCompletionMessageParam, ChatCompletionTool } from "openai/resources/chat/completions";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import {
  formatToolCalls,
  parseToolCalls,
  ToolCallStream,
  type ToolFormat,
  toolFormatOf,
} from "../src/model/tool-calls.js";
import { type RunningServer, startServer } from "../src/serve/server.js";
import { ensureBuilt } from "./helpers/cli.js";
import { writeTinyLlama } from "./helpers/tiny-llama.js";

/** A ChatML template in the Hermes style, written for this test: tools in the system turn. */
const HERMES_TEMPLATE = `{%- if tools -%}
{{- '<|im_start|>system\\n' -}}
{%- if messages[0]['role'] == 'system' -%}{{- messages[0]['content'] + '\\n\\n' -}}{%- endif -%}
{{- 'Functions you may call:\\n<tools>\\n' -}}
{%- for t in tools -%}{{- t | tojson -}}{{- '\\n' -}}{%- endfor -%}
{{- '</tools>\\nCall one as <tool_call>\\n{"name": NAME, "arguments": ARGS}\\n</tool_call><|im_end|>\\n' -}}
{%- elif messages[0]['role'] == 'system' -%}
{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{%- elif message['role'] == 'tool' -%}
{{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' -}}
{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined -%}
{{- '<|im_start|>assistant\\n' + message['content'] -}}
{%- for call in message['tool_calls'] -%}
{{- '<tool_call>\\n{"name": "' + call['function']['name'] + '", "arguments": ' + (call['function']['arguments'] | tojson) + '}\\n</tool_call>' -}}
{%- endfor -%}
{{- '<|im_end|>\\n' -}}
{%- else -%}
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}`;

/**
 * A template in Mistral's style, written for this test: [TOOL_CALLS] and, as Mistral's own
 * templates do, a refusal of any tool call id that is not 9 characters.
 */
const MISTRAL_TEMPLATE = `{%- for message in messages -%}
{%- if message['role'] == 'user' -%}
{%- if loop.last and tools -%}{{- '[AVAILABLE_TOOLS]' + (tools | tojson) + '[/AVAILABLE_TOOLS]' -}}{%- endif -%}
{{- '[INST]' + message['content'] + '[/INST]' -}}
{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined -%}
{{- '[TOOL_CALLS][' -}}
{%- for call in message['tool_calls'] -%}
{%- if call['id'] is not defined or call['id'] | length != 9 -%}
{{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') -}}
{%- endif -%}
{{- '{"name": "' + call['function']['name'] + '", "arguments": ' + (call['function']['arguments'] | tojson) + ', "id": "' + call['id'] + '"}' -}}
{%- if not loop.last -%}{{- ', ' -}}{%- endif -%}
{%- endfor -%}
{{- ']</s>' -}}
{%- elif message['role'] == 'tool' -%}
{%- if message['tool_call_id'] | length != 9 -%}
{{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') -}}
{%- endif -%}
{{- '[TOOL_RESULTS]{"call_id": "' + message['tool_call_id'] + '", "content": ' + (message['content'] | tojson) + '}[/TOOL_RESULTS]' -}}
{%- else -%}
{{- message['content'] + '</s>' -}}
{%- endif -%}
{%- endfor -%}`;

const Weather = z.object({ city: z.string().max(10), unit: z.enum(["c", "f"]) });
const Time = z.object({ zone: z.enum(["utc", "cet"]), hours: z.number().int().min(0).max(23) });

const TOOLS: ChatCompletionTool[] = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "The weather in a city",
      parameters: z.toJSONSchema(Weather),
    },
  },
  { type: "function", function: { name: "get_time", parameters: z.toJSONSchema(Time) } },
];
const SCHEMAS: Record<string, z.ZodType> = { get_weather: Weather, get_time: Time };

let dir: string;
let hermes: RunningServer;
let generic: RunningServer;
let mistral: RunningServer;

async function serve(template: string | undefined, name: string): Promise<RunningServer> {
  const model = join(dir, `${name}.gguf`);
  writeTinyLlama(model, {
    dim: 32,
    layers: 1,
    heads: 2,
    contextLength: 4096,
    controlTokens: ["<|im_start|>", "<|im_end|>"],
    ...(template ? { chatTemplate: template } : {}),
  });
  const s = await startServer({
    model,
    port: 0,
    parallel: 2,
    threads: 1,
    contextSize: 4096,
    ...(template ? {} : { template: "chatml" }),
  });
  await s.ready;
  return s;
}

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "sh-tools-"));
  [hermes, generic, mistral] = await Promise.all([
    serve(HERMES_TEMPLATE, "hermes"),
    serve(undefined, "generic"),
    serve(MISTRAL_TEMPLATE, "mistral"),
  ]);
});

afterAll(async () => {
  await Promise.all([hermes?.close(0), generic?.close(0), mistral?.close(0)]);
  rmSync(dir, { recursive: true, force: true });
});

// A random model writes whatever whitespace the grammar allows between JSON tokens (up to 22
// characters each time), so its calls take a few hundred tokens: max_tokens leaves room for that.
const clientOf = (s: RunningServer) =>
  new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "unused", maxRetries: 0 });

function expectValidCall(call: { function: { name: string; arguments: string } }) {
  const schema = SCHEMAS[call.function.name];
  expect(schema, call.function.name).toBeDefined();
  expect(schema!.safeParse(JSON.parse(call.function.arguments)).success, call.function.arguments).toBe(true);
}

describe("tool calls with the openai SDK", () => {
  for (const [label, server] of [
    ["Hermes-style template", () => hermes],
    ["built-in template, generic format", () => generic],
  ] as const) {
    it(`${label}: required calls validate, and the loop goes on with the results`, async () => {
      const client = clientOf(server());
      const messages: ChatCompletionMessageParam[] = [{ role: "user", content: "Weather in Oslo?" }];
      for (let seed = 1; seed <= 3; seed++) {
        const r = await client.chat.completions.create({
          model: server().modelId,
          messages,
          tools: TOOLS,
          tool_choice: "required",
          seed,
          temperature: 1,
          max_tokens: 1200,
        });
        const choice = r.choices[0]!;
        expect(choice.finish_reason).toBe("tool_calls");
        const calls = choice.message.tool_calls ?? [];
        expect(calls.length).toBeGreaterThanOrEqual(1);
        for (const c of calls) {
          expect(c.type).toBe("function");
          expect(c.id).toMatch(/^call_/);
          if (c.type === "function") expectValidCall(c);
        }
      }
      // The tool loop: the call and its result go back into the conversation; "none" answers in text.
      const first = await client.chat.completions.create({
        model: server().modelId,
        messages,
        tools: TOOLS,
        tool_choice: { type: "function", function: { name: "get_time" } },
        seed: 9,
        max_tokens: 1200,
      });
      const call = first.choices[0]!.message.tool_calls![0]!;
      expect(call.type === "function" && call.function.name).toBe("get_time");
      const followUp = await client.chat.completions.create({
        model: server().modelId,
        messages: [
          ...messages,
          first.choices[0]!.message,
          { role: "tool", tool_call_id: call.id, content: '{"time": "12:00"}' },
        ],
        tools: TOOLS,
        tool_choice: "none",
        seed: 9,
        max_tokens: 8,
      });
      expect(followUp.choices[0]!.message.tool_calls ?? []).toEqual([]);
      expect(typeof followUp.choices[0]!.message.content).toBe("string");
    });
  }

  it("streams tool calls as deltas that add up to the whole reply's calls", async () => {
    const client = clientOf(hermes);
    const request = {
      model: hermes.modelId,
      messages: [{ role: "user" as const, content: "Weather?" }],
      tools: TOOLS,
      tool_choice: "required" as const,
      seed: 4,
      max_tokens: 1200,
    };
    const whole = await client.chat.completions.create(request);
    const stream = await client.chat.completions.create({ ...request, stream: true });
    const calls: { id?: string; name?: string; arguments: string }[] = [];
    let finish: string | null = null;
    for await (const chunk of stream) {
      const delta = chunk.choices[0]?.delta;
      for (const d of delta?.tool_calls ?? []) {
        calls[d.index] ??= { arguments: "" };
        const c = calls[d.index]!;
        if (d.id) c.id = d.id;
        if (d.function?.name) c.name = d.function.name;
        c.arguments += d.function?.arguments ?? "";
      }
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(finish).toBe("tool_calls");
    const expected = whole.choices[0]!.message.tool_calls!.map((c) => c.type === "function" && c.function);
    expect(calls.map((c) => ({ name: c.name, arguments: c.arguments }))).toEqual(expected);
    for (const c of calls) expect(c.id).toMatch(/^call_/);
  });

  it("answers 400 naming the field for tool requests it cannot honour", async () => {
    const client = clientOf(generic);
    const base = { model: generic.modelId, messages: [{ role: "user" as const, content: "x" }] };
    const cases: [object, string, RegExp][] = [
      [
        { tools: TOOLS, tool_choice: { type: "function", function: { name: "nope" } } },
        "tool_choice",
        /no tool named "nope"/,
      ],
      [{ tool_choice: "required" }, "tool_choice", /needs tools/],
      [{ tools: TOOLS, response_format: { type: "json_object" } }, "response_format", /together with tools/],
      [{ tools: [{ type: "retrieval" }] }, "tools.0.type", /only tools of type "function"/],
      [{ tools: [TOOLS[0], TOOLS[0]] }, "tools", /given twice/],
      [
        {
          tools: [
            {
              type: "function",
              function: { name: "f", parameters: { type: "object", properties: { a: { not: {} } } } },
            },
          ],
        },
        "tools",
        /"not" is not supported/,
      ],
      [{ tools: TOOLS, logprobs: true }, "logprobs", /logprobs together with tools/],
    ];
    for (const [extra, param, message] of cases) {
      let error: APIError | undefined;
      try {
        await client.chat.completions.create({ ...base, ...extra } as never);
      } catch (e) {
        error = e as APIError;
      }
      expect(error?.status, JSON.stringify(extra)).toBe(400);
      expect(error?.param).toBe(param);
      expect(error?.message).toMatch(message);
    }
  });
});

describe("tool calls in Mistral's format", () => {
  it("get ids of 9 letters and digits, which Mistral's templates take back", async () => {
    const client = clientOf(mistral);
    const request = {
      model: mistral.modelId,
      messages: [{ role: "user" as const, content: "Weather in Oslo?" }],
      tools: TOOLS,
      tool_choice: "required" as const,
      seed: 2,
      max_tokens: 1200,
    };
    const r = await client.chat.completions.create(request);
    const message = r.choices[0]!.message;
    expect(r.choices[0]!.finish_reason).toBe("tool_calls");
    expect(message.tool_calls?.length).toBeGreaterThanOrEqual(1);
    for (const c of message.tool_calls!) {
      expect(c.id).toMatch(/^[A-Za-z0-9]{9}$/);
      if (c.type === "function") expectValidCall(c);
    }
    const ids = new Set(message.tool_calls!.map((c) => c.id));
    expect(ids.size).toBe(message.tool_calls!.length);
    const streamedIds: string[] = [];
    for await (const chunk of await client.chat.completions.create({ ...request, stream: true })) {
      for (const d of chunk.choices[0]?.delta.tool_calls ?? []) if (d.id) streamedIds.push(d.id);
    }
    expect(streamedIds.length).toBe(message.tool_calls!.length);
    for (const id of streamedIds) expect(id).toMatch(/^[A-Za-z0-9]{9}$/);

    // The conversation goes on with the calls and their results: the template renders it.
    const call = message.tool_calls![0]!;
    const followUp = (id: string) =>
      client.chat.completions.create({
        model: mistral.modelId,
        messages: [
          ...request.messages,
          { ...message, tool_calls: [{ ...call, id }] },
          { role: "tool", tool_call_id: id, content: '{"temperature": 12}' },
        ],
        tools: TOOLS,
        tool_choice: "none",
        max_tokens: 4,
      });
    expect((await followUp(call.id)).choices[0]!.finish_reason).toMatch(/^(stop|length)$/);
    // OpenAI's look of id is what the template refuses.
    const refused = (await followUp("call_0123456789abcdef").catch((e: unknown) => e)) as APIError;
    expect(refused.status).toBe(400);
    expect(refused.message).toMatch(/length 9/);
  });
});

describe("tool calls with the AI SDK", () => {
  it("generateText with tools and toolChoice required gives calls that validate", async () => {
    const provider = createOpenAICompatible({ name: "smallhammer", baseURL: `${hermes.url}/v1` });
    for (let seed = 1; seed <= 2; seed++) {
      const result = await generateText({
        model: provider(hermes.modelId),
        prompt: "What is the weather in Oslo?",
        tools: {
          get_weather: tool({ description: "The weather in a city", inputSchema: Weather }),
          get_time: tool({ inputSchema: Time }),
        },
        toolChoice: "required",
        seed,
        maxOutputTokens: 1200,
        maxRetries: 0,
      });
      expect(result.finishReason).toBe("tool-calls");
      expect(result.toolCalls.length).toBeGreaterThanOrEqual(1);
      for (const c of result.toolCalls)
        expect(SCHEMAS[c.toolName]!.safeParse(c.input).success, JSON.stringify(c)).toBe(true);
    }
  });
});

describe("tool-call formats", () => {
  it("are recognised from the chat template", () => {
    expect(toolFormatOf(HERMES_TEMPLATE)).toBe("hermes");
    expect(toolFormatOf("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}")).toBe("mistral");
    expect(toolFormatOf("<|start_header_id|>ipython<|end_header_id|>{{ tools }}")).toBe("llama3");
    expect(toolFormatOf("{{ '<|im_start|>' }}")).toBe("generic");
  });

  it("are parsed whole and streamed piece by piece alike", () => {
    const calls = [
      { id: "a", name: "get_weather", arguments: '{"city": "Oslo", "unit": "c"}' },
      { id: "b", name: "get_time", arguments: '{"zone": "utc", "hours": 3}' },
    ];
    for (const format of ["hermes", "mistral", "llama3", "generic"] as ToolFormat[]) {
      const written = `Let me see. ${formatToolCalls(format, format === "llama3" ? calls.slice(0, 1) : calls)}`;
      let n = 0;
      const whole = parseToolCalls(format, written, () => `id${n++}`);
      const expected = (format === "llama3" ? calls.slice(0, 1) : calls).map((c) => [
        c.name,
        JSON.parse(c.arguments),
      ]);
      expect(
        whole.calls.map((c) => [c.name, JSON.parse(c.arguments)]),
        format,
      ).toEqual(expected);
      expect(whole.content.trim()).toBe("Let me see.");
      // Three characters at a time.
      const stream = new ToolCallStream(format, () => "id");
      const args: string[] = [];
      let content = "";
      for (let i = 0; i < written.length; i += 3) {
        for (const e of stream.push(written.slice(i, i + 3))) {
          if (e.type === "content") content += e.text;
          else if (e.type === "arguments") args[e.index] = (args[e.index] ?? "") + e.text;
        }
      }
      stream.end();
      expect(content.trim()).toBe("Let me see.");
      expect(args.map((a) => JSON.parse(a))).toEqual(expected.map((e) => e[1]));
    }
  });

  it("puts tool calls and results into a template that does not take tools", async () => {
    const { toolConversation } = await import("../src/model/tool-calls.js");
    const { messages } = toolConversation(
      [
        { role: "user", content: "Weather?" },
        {
          role: "assistant",
          content: "",
          toolCalls: [{ id: "c1", name: "get_weather", arguments: '{"city":"Oslo","unit":"c"}' }],
        },
        { role: "tool", content: "12 degrees", toolCallId: "c1", name: "get_weather" },
      ],
      [{ name: "get_weather", parameters: z.toJSONSchema(Weather) as never }],
      "generic",
      false,
      "auto",
    );
    expect(messages[0]!.role).toBe("system");
    expect(messages[0]!.content).toContain('"get_weather"');
    expect(messages[2]!.content).toBe(
      '{"tool_calls": [{"name": "get_weather", "arguments": {"city":"Oslo","unit":"c"}}]}',
    );
    expect(messages[3]).toEqual({ role: "user", content: "Result of get_weather (call c1):\n12 degrees" });
    expect(messages.every((m) => m.role !== "tool")).toBe(true);
  });
});
