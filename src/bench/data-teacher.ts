// A zero-latency OpenAI-compatible teacher for the data bench, run in a worker thread so that its
// work does not share the event loop of the client being measured: every POST to
// /v1/chat/completions is answered at once with the next of the canned replies it was given (as a
// complete chat completion with usage), in turn. The message "reset" starts again from the first.
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { parentPort, workerData } from "node:worker_threads";

const port = parentPort!;
const { replies } = workerData as { replies: string[] };
const bodies = replies.map((content, i) =>
  Buffer.from(
    JSON.stringify({
      id: `chatcmpl-${i}`,
      object: "chat.completion",
      created: 0,
      model: "canned",
      choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }],
      usage: {
        prompt_tokens: 800,
        completion_tokens: Math.ceil(content.length / 4),
        total_tokens: 800 + Math.ceil(content.length / 4),
      },
    }),
  ),
);
let next = 0;

const server = createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    if (req.method !== "POST" || !req.url?.endsWith("/chat/completions")) {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: `no route ${req.method} ${req.url}`, type: "not_found" } }));
      return;
    }
    const body = bodies[next++ % bodies.length]!;
    res.writeHead(200, { "content-type": "application/json", "content-length": body.length });
    res.end(body);
  });
});
server.keepAliveTimeout = 60_000;
server.listen(0, "127.0.0.1", () => {
  port.postMessage({ port: (server.address() as AddressInfo).port });
});
port.on("message", (message) => {
  if (message === "reset") {
    next = 0;
    port.postMessage("reset");
  }
});
