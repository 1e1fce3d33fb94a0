/**
 * The request fields of structured output and tools, as zod schemas (structured.ts reads them):
 * kept apart so that openai.ts can build its request schemas from them without a cycle.
 */
import { z } from "zod";

const jsonObject = z.record(z.string(), z.unknown());

export const responseFormat = z.discriminatedUnion(
  "type",
  [
    z.object({ type: z.literal("text") }),
    // `schema` beyond OpenAI's shape, as llama.cpp's server takes it.
    z.object({ type: z.literal("json_object"), schema: jsonObject.nullish() }),
    z.object({
      type: z.literal("json_schema"),
      json_schema: z.object({
        name: z.string().max(64).nullish(),
        description: z.string().nullish(),
        schema: z.union([jsonObject, z.boolean()]).nullish(),
        strict: z.boolean().nullish(),
      }),
    }),
  ],
  { error: "response_format.type must be text, json_object or json_schema" },
);

/** Fields of both endpoints: response_format, and grammar beyond OpenAI's API. */
export const structuredFields = {
  response_format: responseFormat.nullish(),
  grammar: z.string().nullish(),
};

export const toolDefinition = z.object({
  type: z.literal("function", { error: 'only tools of type "function" are supported' }),
  function: z.object({
    name: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, {
      error: "a tool's name must be 1 to 64 letters, digits, _ or -",
    }),
    description: z.string().nullish(),
    parameters: jsonObject.nullish(),
    strict: z.boolean().nullish(),
  }),
});

/** Fields of chat completions: tools, tool_choice, parallel_tool_calls. */
export const toolFields = {
  tools: z.array(toolDefinition).max(128).nullish(),
  tool_choice: z
    .union(
      [
        z.enum(["none", "auto", "required"]),
        z.object({ type: z.literal("function"), function: z.object({ name: z.string() }) }),
      ],
      {
        error: 'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name"}}',
      },
    )
    .nullish(),
  parallel_tool_calls: z.boolean().nullish(),
};

/** Fields of a message that carry tool calls and results. */
export const messageToolFields = {
  tool_calls: z
    .array(
      z.object({
        id: z.string(),
        type: z.literal("function"),
        function: z.object({ name: z.string(), arguments: z.string() }),
      }),
    )
    .nullish(),
  tool_call_id: z.string().nullish(),
};
