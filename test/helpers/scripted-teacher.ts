import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/** What the scripted teacher does with one request. */
export interface TeacherStep {
  status?: number;
  headers?: Record<string, string>;
  /** The assistant text (for 200 replies). */
  text?: string;
  /** A raw body instead of a chat completion. */
  body?: string;
  /** Send the headers and this start of a body, then nothing more until the client leaves. */
  stallBody?: string;
  /** Send the whole reply's first this-many characters, then drop the connection (a proxy failing). */
  dropAfter?: number;
  /** Send the whole reply's first this-many characters as a complete response (a body cut short). */
  cutAt?: number;
  /** Wait before answering. */
  delayMs?: number;
  finishReason?: string;
  /** Leave usage out of the reply. */
  noUsage?: boolean;
}

export interface ReceivedRequest {
  n: number;
  body: {
    model?: string;
    messages?: { role: string; content: string }[];
    max_tokens?: number;
    temperature?: number;
  };
  authorization?: string;
}

/**
 * An OpenAI-compatible chat completions endpoint on 127.0.0.1 whose every answer comes from a script:
 * `script(n, request)` for the n-th request (from 0) says what to send back.
 */
export class ScriptedTeacher {
  readonly requests: ReceivedRequest[] = [];
  private server?: Server;
  url = "";

  constructor(private readonly script: (n: number, request: ReceivedRequest) => TeacherStep) {}

  async start(): Promise<this> {
    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/v1`;
    return this;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    if (req.method !== "POST" || req.url !== "/v1/chat/completions") {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: `no route ${req.method} ${req.url}`, type: "not_found" } }));
      return;
    }
    const request: ReceivedRequest = {
      n: this.requests.length,
      body: JSON.parse(Buffer.concat(chunks).toString("utf8")),
      authorization: req.headers.authorization,
    };
    this.requests.push(request);
    const step = this.script(request.n, request);
    if (step.delayMs) {
      const closed = new Promise<void>((resolve) => res.once("close", () => resolve()));
      await Promise.race([new Promise((r) => setTimeout(r, step.delayMs)), closed]);
      if (res.destroyed || res.writableEnded) return;
    }
    const status = step.status ?? 200;
    res.writeHead(status, { "content-type": "application/json", ...step.headers });
    if (step.stallBody !== undefined) {
      res.write(step.stallBody);
      return;
    }
    if (step.body !== undefined) {
      res.end(step.body);
      return;
    }
    if (status !== 200) {
      res.end(JSON.stringify({ error: { message: `scripted ${status}`, type: "scripted_error" } }));
      return;
    }
    const text = step.text ?? "";
    const promptChars = (request.body.messages ?? []).reduce((n, m) => n + m.content.length, 0);
    const reply = JSON.stringify({
      id: `chatcmpl-${request.n}`,
      object: "chat.completion",
      created: 0,
      model: request.body.model,
      choices: [
        {
          index: 0,
          message: { role: "assistant", content: text },
          finish_reason: step.finishReason ?? "stop",
        },
      ],
      ...(step.noUsage
        ? {}
        : {
            usage: {
              prompt_tokens: Math.ceil(promptChars / 4),
              completion_tokens: Math.ceil(text.length / 4),
              total_tokens: Math.ceil(promptChars / 4) + Math.ceil(text.length / 4),
            },
          }),
    });
    if (step.dropAfter !== undefined) {
      // Chunked encoding: the client sees the start of the body, then the connection close.
      res.write(reply.slice(0, step.dropAfter));
      setTimeout(() => res.socket?.destroy(), 20);
      return;
    }
    res.end(step.cutAt === undefined ? reply : reply.slice(0, step.cutAt));
  }
}

const WORDS = (
  "amber basket cactus dolphin eagle falcon garden harbor island jungle kettle lantern meadow " +
  "nectar orchard pepper quartz river saddle timber umbrella velvet walnut yarrow zephyr anchor " +
  "bramble candle desert ember feather glacier hammock igloo jasmine kayak lemon marble nutmeg " +
  "oyster pebble quilt rocket sparrow tulip urchin violet willow xylem yogurt zinnia acorn beacon " +
  "copper dune echo fjord granite hazel ivory juniper koala lilac mango nickel olive prism quiver " +
  "raven silver thistle tundra utopia vapor whisker yonder zenith apricot blossom cobalt dragon"
).split(" ");

/** A deterministic generator of tasks that share few words with each other. */
export function distinctTask(n: number): { instruction: string; input: string; output: string } {
  let x = (n + 1) * 2654435761;
  const word = () => {
    x = (Math.imul(x ^ (x >>> 15), 2246822519) + 0x6b43a9b5) >>> 0;
    return WORDS[x % WORDS.length]!;
  };
  const words = Array.from({ length: 9 }, word);
  return {
    instruction: `Explain how ${words.slice(0, 7).join(" ")} connect (task ${n}).`,
    input: n % 3 === 0 ? `${word()} ${word()} ${word()}` : "",
    output: `They connect through ${words[7]} and ${words[8]}.`,
  };
}

/** A reply in the numbered format, tasks numbered from `first`. */
export function numberedReply(
  tasks: { instruction: string; input: string; output: string }[],
  first = 4,
): string {
  return tasks
    .map(
      (t, i) =>
        `${first + i}. Instruction: ${t.instruction}\n${first + i}. Input:\n${t.input === "" ? "<noinput>" : t.input}\n${first + i}. Output:\n${t.output}`,
    )
    .join("\n###\n");
}
