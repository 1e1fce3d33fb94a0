// The chat page: talks to this server's OpenAI-compatible API and streams replies
// (server-sent events) into the conversation. No dependencies, no build step.

const $ = (id) => document.getElementById(id);
const els = {
  model: $("model"),
  context: $("context"),
  messages: $("messages"),
  status: $("status"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  newChat: $("new-chat"),
  system: $("system"),
  temperature: $("temperature"),
  temperatureValue: $("temperature-value"),
  maxTokens: $("max-tokens"),
  apiKey: $("api-key"),
};

/**
 * The conversation still sent with each request: {role, content, el}, el being the message on the
 * page. Turns that no longer fit the context leave it (and stay on the page, faded).
 */
let history = [];
/** The model id the server serves (sent with every request). */
let modelId = "";
/** The context size of the server's sequences, in tokens (0 until known). */
let contextSize = 0;
/** Room kept for a reply when no max tokens are set: at most this, and half the context. */
const REPLY_ROOM = 512;
/** Aborts the reply being streamed. */
let controller = null;

const KEY_STORE = "smallhammer.apiKey";
els.apiKey.value = localStorage.getItem(KEY_STORE) ?? "";
els.apiKey.addEventListener("change", () => {
  localStorage.setItem(KEY_STORE, els.apiKey.value.trim());
  connect();
});
els.temperature.addEventListener("input", () => {
  els.temperatureValue.textContent = els.temperature.value;
});

function headers() {
  const h = { "content-type": "application/json" };
  const key = els.apiKey.value.trim();
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

function setStatus(text) {
  els.status.textContent = text;
}

/** The message of an OpenAI-shaped error response, or the status line. */
async function errorOf(res) {
  try {
    const body = await res.json();
    if (body?.error?.message) return body.error.message;
  } catch {}
  return `${res.status} ${res.statusText}`;
}

/** Finds the served model; waits while it loads and asks for a key when one is needed. */
async function connect() {
  let res;
  try {
    res = await fetch("/v1/models", { headers: headers() });
  } catch {
    setStatus("cannot reach the server; retrying…");
    setTimeout(connect, 2000);
    return;
  }
  if (res.status === 503) {
    els.model.textContent = "loading…";
    setTimeout(connect, 1000);
    return;
  }
  if (res.status === 401) {
    els.model.textContent = "API key needed";
    setStatus("This server needs an API key: enter it in the panel.");
    els.apiKey.focus();
    return;
  }
  if (!res.ok) {
    setStatus(await errorOf(res));
    return;
  }
  const list = await res.json();
  modelId = list.data?.[0]?.id ?? "";
  els.model.textContent = modelId;
  setStatus("");
  try {
    const props = await fetch("/props", { headers: headers() });
    if (props.ok) contextSize = (await props.json()).n_ctx ?? 0;
  } catch {}
  showContext(0);
}

/** Shows how many tokens of the context the conversation takes. */
function showContext(used) {
  els.context.textContent = contextSize ? `context used: ${used} / ${contextSize}` : "";
}

/** The tokens `messages` take as a prompt (the server renders the chat template), or null. */
async function countTokens(messages, signal) {
  try {
    const res = await fetch("/tokenize", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ model: modelId, messages }),
      signal,
    });
    if (!res.ok) return null;
    return (await res.json()).count ?? null;
  } catch (e) {
    if (signal.aborted) throw e;
    return null;
  }
}

/** The messages of a request: the system prompt, then the conversation. */
function requestMessages() {
  const system = els.system.value.trim();
  const turns = history.map(({ role, content }) => ({ role, content }));
  return system ? [{ role: "system", content: system }, ...turns] : turns;
}

/**
 * Drops the oldest turns (a user message and the reply to it) until the prompt leaves `reserve`
 * tokens for the reply, keeping the system prompt and the newest message, as the terminal chat
 * does. Returns the prompt's token count, or null when the server cannot count.
 */
async function fitContext(reserve, signal) {
  let dropped = 0;
  for (;;) {
    const count = await countTokens(requestMessages(), signal);
    if (count === null || count + reserve <= contextSize || history.length <= 1) {
      if (dropped) {
        setStatus(
          `${dropped} earlier message${dropped > 1 ? "s" : ""} no longer fit the context of ${contextSize} tokens and ${dropped > 1 ? "are" : "is"} left out (faded).`,
        );
      }
      return count;
    }
    const n = history[1]?.role === "assistant" && history.length > 2 ? 2 : 1;
    for (const turn of history.splice(0, n)) {
      turn.el.classList.add("dropped");
      turn.el.title = "left out: no longer fits the model's context";
      dropped++;
    }
  }
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = text;
  div.append(content);
  els.messages.append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function note(div, text) {
  const span = document.createElement("span");
  span.className = "note";
  span.textContent = text;
  div.append(span);
}

function setStreaming(on) {
  els.send.disabled = on;
  els.stop.hidden = !on;
  els.send.hidden = on;
}

/** Reads server-sent events from a response body; calls onData with each event's data. */
async function readEvents(body, onData) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut = buffer.indexOf("\n\n");
    while (cut >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ") && onData(line.slice(6)) === false) return;
      }
      cut = buffer.indexOf("\n\n");
    }
  }
}

async function send(text) {
  if (!modelId) await connect();
  history.push({ role: "user", content: text, el: addMessage("user", text) });
  const reply = addMessage("assistant", "");
  const content = reply.querySelector(".content");
  reply.dataset.state = "streaming";
  setStreaming(true);
  setStatus("");
  controller = new AbortController();
  const maxTokens = Number.parseInt(els.maxTokens.value, 10);
  let finish = null;
  try {
    // Without max tokens the reply may run to the end of the context; keep room for one.
    if (contextSize) {
      const reserve = maxTokens > 0 ? maxTokens : Math.min(REPLY_ROOM, Math.floor(contextSize / 2));
      const used = await fitContext(reserve, controller.signal);
      if (used !== null) showContext(used);
    }
    const body = {
      model: modelId,
      messages: requestMessages(),
      temperature: Number(els.temperature.value),
      stream: true,
      stream_options: { include_usage: true },
    };
    if (maxTokens > 0) body.max_tokens = maxTokens;
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!res.ok) throw new Error(await errorOf(res));
    await readEvents(res.body, (data) => {
      if (data === "[DONE]") return false;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) showContext(chunk.usage.total_tokens);
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) {
        content.textContent += choice.delta.content;
        reply.scrollIntoView({ block: "end" });
      }
      if (choice?.finish_reason) finish = choice.finish_reason;
    });
    reply.dataset.state = "done";
    if (finish === "length") {
      note(reply, maxTokens > 0 ? "(stopped at the token limit)" : "(stopped: the context is full)");
    }
  } catch (e) {
    if (controller.signal.aborted) {
      reply.dataset.state = "stopped";
      note(reply, "(stopped)");
    } else {
      reply.dataset.state = "error";
      reply.classList.add("error");
      note(reply, e instanceof Error ? e.message : String(e));
    }
  } finally {
    controller = null;
    setStreaming(false);
    // Keep what was written, stopped or not, so the conversation goes on from it.
    if (content.textContent) history.push({ role: "assistant", content: content.textContent, el: reply });
    else history.pop();
    els.prompt.focus();
  }
}

els.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = els.prompt.value.trim();
  if (!text || controller) return;
  els.prompt.value = "";
  send(text);
});
els.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    els.composer.requestSubmit();
  }
});
els.stop.addEventListener("click", () => controller?.abort());
els.newChat.addEventListener("click", () => {
  controller?.abort();
  history = [];
  els.messages.replaceChildren();
  setStatus("");
  showContext(0);
  els.prompt.focus();
});

connect();
