// The chat page: talks to this server's OpenAI-compatible API, streams replies (server-sent
// events) into the conversation as markdown, and keeps conversations and settings in the browser.
// Its libraries (marked, DOMPurify, highlight.js) are served from /vendor/, copied there by the
// package's build.

import { renderMarkdown, StreamingMarkdown } from "/markdown.js";
import {
  deleteConversation,
  exportConversation,
  importConversation,
  listConversations,
  loadSettings,
  newId,
  saveConversation,
  saveSettings,
  titleOf,
} from "/store.js";

const $ = (id) => document.getElementById(id);
const els = {
  model: $("model"),
  context: $("context"),
  messages: $("messages"),
  empty: $("empty"),
  status: $("status"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  newChat: $("new-chat"),
  theme: $("theme"),
  menu: $("menu"),
  closeDrawer: $("close-drawer"),
  sidebar: $("sidebar"),
  backdrop: $("backdrop"),
  search: $("search"),
  conversations: $("conversations"),
  noConversations: $("no-conversations"),
  exportButton: $("export"),
  importButton: $("import"),
  importFile: $("import-file"),
  system: $("system"),
  temperature: $("temperature"),
  temperatureValue: $("temperature-value"),
  maxTokens: $("max-tokens"),
  apiKey: $("api-key"),
};

/**
 * The conversation on the page: {id, title, created, updated, messages}, each message {role,
 * content} with, on the page's side, `state` (a reply's: streaming, done, stopped, error), `note`,
 * `stats` (a reply's figures), `dropped` (left out: no longer fits the context) and `unanswered`
 * (a message whose reply failed or was stopped before its first token: not sent again). Null
 * until the first message of a new chat.
 */
let conversation = null;
/** Every conversation kept, the most recently changed first. */
let conversations = [];
/** The element of each message shown. */
const views = new Map();
/** The model id the server serves (sent with every request). */
let modelId = "";
/** The context size of the server's sequences, in tokens (0 until known). */
let contextSize = 0;
/** Room kept for a reply when no max tokens are set: at most this, and half the context. */
const REPLY_ROOM = 512;
/** Aborts the reply being streamed. */
let controller = null;
/** Whether the message list follows the end of the conversation as replies grow. */
let following = true;

// Settings, kept in the browser.
const KEY_STORE = "smallhammer.apiKey";
const THEME_STORE = "smallhammer.theme";
const settings = loadSettings();
els.system.value = settings.system ?? "";
if (settings.temperature !== undefined) els.temperature.value = String(settings.temperature);
els.temperatureValue.textContent = els.temperature.value;
els.maxTokens.value = settings.maxTokens ?? "";
els.apiKey.value = localStorage.getItem(KEY_STORE) ?? "";

function keepSettings() {
  saveSettings({
    system: els.system.value,
    temperature: els.temperature.value,
    maxTokens: els.maxTokens.value,
  });
}
for (const input of [els.system, els.temperature, els.maxTokens])
  input.addEventListener("input", keepSettings);
els.temperature.addEventListener("input", () => {
  els.temperatureValue.textContent = els.temperature.value;
});
els.apiKey.addEventListener("change", () => {
  localStorage.setItem(KEY_STORE, els.apiKey.value.trim());
  connect();
});

// The colour scheme: as the system's, or chosen here (theme.js applies it before the page shows).
const THEMES = ["", "light", "dark"];
const themeName = (t) => (t ? t : "as the system's");
function showTheme() {
  const current = document.documentElement.dataset.theme ?? "";
  const next = THEMES[(THEMES.indexOf(current) + 1) % THEMES.length];
  const label = `Colour scheme: ${themeName(current)} (switch to ${themeName(next)})`;
  els.theme.setAttribute("aria-label", label);
  els.theme.title = label;
}
els.theme.addEventListener("click", () => {
  const current = document.documentElement.dataset.theme ?? "";
  const next = THEMES[(THEMES.indexOf(current) + 1) % THEMES.length];
  if (next) {
    document.documentElement.dataset.theme = next;
    localStorage.setItem(THEME_STORE, next);
  } else {
    delete document.documentElement.dataset.theme;
    localStorage.removeItem(THEME_STORE);
  }
  showTheme();
});
showTheme();

// On a narrow screen the conversations and settings are a drawer.
const narrow = matchMedia("(max-width: 720px)");
const drawerOpen = () => els.sidebar.classList.contains("open");
function openDrawer() {
  if (!narrow.matches || drawerOpen()) return;
  els.sidebar.classList.add("open");
  els.backdrop.hidden = false;
  els.menu.setAttribute("aria-expanded", "true");
  for (const el of [document.querySelector("header"), document.querySelector("main")]) el.inert = true;
  els.closeDrawer.focus();
}
function closeDrawer(refocus = true) {
  if (!drawerOpen()) return;
  els.sidebar.classList.remove("open");
  els.backdrop.hidden = true;
  els.menu.setAttribute("aria-expanded", "false");
  for (const el of [document.querySelector("header"), document.querySelector("main")]) el.inert = false;
  if (refocus) els.menu.focus();
}
els.menu.addEventListener("click", () => (drawerOpen() ? closeDrawer() : openDrawer()));
els.closeDrawer.addEventListener("click", () => closeDrawer());
els.backdrop.addEventListener("click", () => closeDrawer());
narrow.addEventListener("change", () => closeDrawer(false));

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
    setStatus("This server needs an API key: enter it under Settings.");
    openDrawer();
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
  showContext(lastContextUsed());
}

/** Shows how many tokens of the context the conversation takes. */
function showContext(used) {
  els.context.textContent = contextSize ? `context used: ${used} / ${contextSize}` : "";
}

/** The context the conversation took at its last reply (0 for a new one). */
function lastContextUsed() {
  const last = conversation?.messages.findLast((m) => m.stats);
  return last?.stats.context ?? 0;
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

/** Whether a message is sent with the next request. */
const sendable = (m) => m.content !== "" && !m.dropped && !m.unanswered && m.state !== "streaming";

/** The messages of a request: the system prompt, then the conversation still sent. */
function requestMessages(messages) {
  const system = els.system.value.trim();
  const turns = messages.filter(sendable).map(({ role, content }) => ({ role, content }));
  return system ? [{ role: "system", content: system }, ...turns] : turns;
}

function markDropped(message) {
  message.dropped = true;
  const view = views.get(message);
  if (view) {
    view.classList.add("dropped");
    view.title = "left out: no longer fits the model's context";
  }
}

/**
 * Drops the oldest turns (a user message and the reply to it) until the prompt leaves `reserve`
 * tokens for the reply, keeping the system prompt and the newest message, as the terminal chat
 * does. Returns the prompt's token count, or null when the server cannot count.
 */
async function fitContext(messages, reserve, signal) {
  let dropped = 0;
  for (;;) {
    const count = await countTokens(requestMessages(messages), signal);
    const live = messages.filter(sendable);
    if (count === null || count + reserve <= contextSize || live.length <= 1) {
      if (dropped) {
        setStatus(
          `${dropped} earlier message${dropped > 1 ? "s" : ""} no longer fit the context of ${contextSize} tokens and ${dropped > 1 ? "are" : "is"} left out (faded).`,
        );
      }
      return count;
    }
    const n = live[1]?.role === "assistant" && live.length > 2 ? 2 : 1;
    for (const m of live.slice(0, n)) {
      markDropped(m);
      dropped++;
    }
  }
}

function button(text, className, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  if (label) b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

/** The shortest time over which tokens arriving make a speed worth showing (a burst makes none). */
const MIN_SPAN = 0.05;
/** A reply's figures: tokens, tokens per second while they were written, context taken. */
function statsText(stats) {
  const parts = [`${stats.tokens} token${stats.tokens === 1 ? "" : "s"}`];
  if (stats.tokens > 1 && stats.seconds >= MIN_SPAN)
    parts.push(`${((stats.tokens - 1) / stats.seconds).toFixed(1)} tokens/s`);
  if (stats.contextSize) parts.push(`context ${stats.context} / ${stats.contextSize}`);
  return parts.join(" · ");
}

/** Shows a message's note, figures and actions (again, as they change). */
function decorate(message) {
  const view = views.get(message);
  if (!view) return;
  if (message.state) view.dataset.state = message.state;
  view.classList.toggle("error", message.state === "error");
  view.classList.toggle("dropped", !!message.dropped);
  view.querySelector(".note")?.remove();
  view.querySelector(".meta")?.remove();
  if (message.note) {
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = message.note;
    view.append(note);
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  if (message.stats) {
    const stats = document.createElement("span");
    stats.className = "stats";
    stats.textContent = statsText(message.stats);
    meta.append(stats);
  }
  const actions = document.createElement("div");
  actions.className = "actions";
  if (message.state !== "streaming") {
    if (message.role === "user") {
      actions.append(
        button("Edit", "action edit", "Edit this message and go on from it", () => editMessage(message)),
      );
    } else {
      if (message.content) {
        actions.append(
          button("Copy", "action copy", "Copy this reply as markdown", (e) =>
            copyText(message.content, e.target),
          ),
        );
      }
      if (message === conversation?.messages.at(-1)) {
        actions.append(
          button("Regenerate", "action regenerate", "Regenerate this reply", () => regenerate()),
        );
      }
    }
  }
  meta.append(actions);
  view.append(meta);
}

/** Shows a message at the end of the list. */
function addView(message) {
  const view = document.createElement("article");
  view.className = `message ${message.role}`;
  view.setAttribute("aria-label", message.role === "user" ? "You" : "Assistant");
  const content = document.createElement("div");
  content.className = message.role === "user" ? "content plain" : "content markdown";
  if (message.role === "user") content.textContent = message.content;
  else renderMarkdown(content, message.content);
  view.append(content);
  els.messages.append(view);
  views.set(message, view);
  els.empty.hidden = true;
  decorate(message);
  return view;
}

/** Shows the current conversation's messages. */
function showConversation() {
  views.clear();
  els.messages.replaceChildren(els.empty);
  els.empty.hidden = false;
  for (const message of conversation?.messages ?? []) addView(message);
  following = true;
  els.messages.scrollTop = els.messages.scrollHeight;
  els.exportButton.disabled = !conversation;
  showContext(lastContextUsed());
}

/** The actions of the last messages (Regenerate is on the last reply only). */
function redecorateEnd() {
  for (const m of conversation?.messages.slice(-3) ?? []) decorate(m);
}

els.messages.addEventListener("scroll", () => {
  const m = els.messages;
  following = m.scrollHeight - m.scrollTop - m.clientHeight < 48;
});
function follow() {
  if (following) els.messages.scrollTop = els.messages.scrollHeight;
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

/** Keeps a conversation in the browser, first in the list. */
async function keep(conv) {
  conv.updated = Date.now();
  const at = conversations.indexOf(conv);
  if (at >= 0) conversations.splice(at, 1);
  conversations.unshift(conv);
  renderList();
  try {
    await saveConversation(stored(conv));
  } catch (e) {
    setStatus(`This conversation could not be kept in the browser: ${e instanceof Error ? e.message : e}`);
  }
}

/** A conversation as stored: its messages without what only streaming needs. */
function stored(conv) {
  return {
    ...conv,
    messages: conv.messages.map((m) => ({ ...m, state: m.state === "streaming" ? "stopped" : m.state })),
  };
}

/** Streams a reply to the conversation's last message into a new assistant message. */
async function generate() {
  const conv = conversation;
  const reply = { role: "assistant", content: "", state: "streaming" };
  conv.messages.push(reply);
  redecorateEnd();
  const view = addView(reply);
  const content = view.querySelector(".content");
  // The reply being written is the page's one live region: screen readers read it as it grows.
  content.setAttribute("aria-live", "polite");
  const markdown = new StreamingMarkdown(content);
  markdown.onRender = follow;
  following = true;
  follow();
  setStreaming(true);
  setStatus("");
  controller = new AbortController();
  const signal = controller.signal;
  const maxTokens = Number.parseInt(els.maxTokens.value, 10);
  let finish = null;
  let usage = null;
  let first = 0;
  let last = 0;
  try {
    const earlier = conv.messages.slice(0, -1);
    // Without max tokens the reply may run to the end of the context; keep room for one.
    if (contextSize) {
      const reserve = maxTokens > 0 ? maxTokens : Math.min(REPLY_ROOM, Math.floor(contextSize / 2));
      const used = await fitContext(earlier, reserve, signal);
      if (used !== null) showContext(used);
    }
    const body = {
      model: modelId,
      messages: requestMessages(earlier),
      temperature: Number(els.temperature.value),
      stream: true,
      stream_options: { include_usage: true },
    };
    if (maxTokens > 0) body.max_tokens = maxTokens;
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(body),
      signal,
    });
    if (!res.ok) throw new Error(await errorOf(res));
    await readEvents(res.body, (data) => {
      if (data === "[DONE]") return false;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) {
        usage = chunk.usage;
        showContext(usage.total_tokens);
      }
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) {
        last = performance.now();
        if (!first) first = last;
        reply.content += choice.delta.content;
        markdown.update(reply.content);
      }
      if (choice?.finish_reason) finish = choice.finish_reason;
    });
    reply.state = "done";
    if (finish === "length") {
      reply.note = maxTokens > 0 ? "(stopped at the token limit)" : "(stopped: the context is full)";
    }
    if (usage) {
      reply.stats = {
        tokens: usage.completion_tokens,
        seconds: (last - first) / 1000,
        context: usage.total_tokens,
        contextSize,
      };
    }
  } catch (e) {
    if (signal.aborted) {
      reply.state = "stopped";
      reply.note = "(stopped)";
    } else {
      reply.state = "error";
      reply.note = e instanceof Error ? e.message : String(e);
    }
  } finally {
    markdown.finish(reply.content);
    content.removeAttribute("aria-live");
    if (controller?.signal === signal) controller = null;
    setStreaming(!!controller);
    // Keep what was written, stopped or not, so the conversation goes on from it. A message
    // with no reply is not sent again.
    if (!reply.content) {
      const asked = conv.messages.at(-2);
      if (asked?.role === "user") asked.unanswered = true;
    }
    if (conv === conversation) {
      redecorateEnd();
      follow();
      if (document.activeElement === document.body || !document.activeElement) els.prompt.focus();
    }
    await keep(conv);
  }
}

/** Starts a conversation with its first message, or adds a message to the one shown. */
async function send(text) {
  if (!modelId) await connect();
  if (!conversation) {
    const now = Date.now();
    conversation = { id: newId(), title: titleOf(text), created: now, updated: now, messages: [] };
    localStorage.setItem(CURRENT_STORE, conversation.id);
    els.exportButton.disabled = false;
  }
  const message = { role: "user", content: text };
  conversation.messages.push(message);
  redecorateEnd();
  addView(message);
  keep(conversation);
  await generate();
}

/** Writes the last reply again: drops it and asks for a new one. */
async function regenerate() {
  if (controller || !conversation) return;
  const last = conversation.messages.at(-1);
  if (last?.role !== "assistant") return;
  conversation.messages.pop();
  views.get(last)?.remove();
  views.delete(last);
  const asked = conversation.messages.at(-1);
  if (asked) asked.unanswered = false;
  els.prompt.focus();
  await generate();
}

/** Edits a user message in place: saving drops what came after it and asks again from there. */
function editMessage(message) {
  if (controller) return;
  const view = views.get(message);
  const content = view.querySelector(".content");
  view.querySelector(".meta")?.remove();
  const form = document.createElement("form");
  form.className = "edit-form";
  const id = `edit-${Date.now().toString(36)}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.className = "visually-hidden";
  label.textContent = "Edit the message";
  const area = document.createElement("textarea");
  area.id = id;
  area.value = message.content;
  area.rows = Math.min(10, Math.max(2, message.content.split("\n").length));
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = "Send";
  save.setAttribute("aria-label", "Send the edited message");
  const cancel = () => {
    form.replaceWith(content);
    decorate(message);
    view.querySelector(".action.edit")?.focus();
  };
  const cancelButton = button("Cancel", "secondary", "Cancel editing", cancel);
  form.append(label, area, save, cancelButton);
  content.replaceWith(form);
  area.focus();
  area.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      e.preventDefault();
      cancel();
    } else if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = area.value.trim();
    if (!text || controller) return;
    const at = conversation.messages.indexOf(message);
    for (const later of conversation.messages.splice(at + 1)) {
      views.get(later)?.remove();
      views.delete(later);
    }
    message.content = text;
    message.dropped = false;
    message.unanswered = false;
    content.textContent = text;
    form.replaceWith(content);
    decorate(message);
    if (at === 0) conversation.title = titleOf(text);
    els.prompt.focus();
    await generate();
  });
}

/** Puts text on the clipboard; the button says so for a moment. */
async function copyText(text, target) {
  try {
    if (navigator.clipboard?.writeText) await navigator.clipboard.writeText(text);
    else {
      // Without a secure context (a page opened by a LAN address) there is no Clipboard API.
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.append(area);
      area.select();
      const ok = document.execCommand("copy");
      area.remove();
      if (!ok) throw new Error("the browser refused");
    }
    if (target) {
      const text = target.textContent;
      const label = target.getAttribute("aria-label");
      target.textContent = "Copied";
      if (label) target.setAttribute("aria-label", "Copied");
      setTimeout(() => {
        target.textContent = text;
        if (label) target.setAttribute("aria-label", label);
      }, 1500);
    }
  } catch (e) {
    setStatus(`Could not copy: ${e instanceof Error ? e.message : e}`);
  }
}

// Code blocks' copy buttons (made with the markdown, so handled here for them all).
els.messages.addEventListener("click", (e) => {
  const copy = e.target.closest?.(".copy-code");
  if (!copy) return;
  const code = copy.closest(".code-block")?.querySelector("code");
  if (code) copyText(code.textContent, copy);
});

// The conversation list.
const CURRENT_STORE = "smallhammer.current";

function renderList() {
  const query = els.search.value.trim().toLowerCase();
  const shown = conversations.filter((c) => c.title.toLowerCase().includes(query));
  els.conversations.replaceChildren(...shown.map(listItem));
  els.noConversations.hidden = shown.length > 0;
  els.noConversations.textContent = conversations.length
    ? "No conversation has that in its title."
    : "None kept yet: conversations are kept in this browser.";
}

function listItem(conv) {
  const li = document.createElement("li");
  li.className = "conversation";
  const open = button(conv.title, "open", null, () => openConversation(conv));
  open.title = conv.title;
  if (conv === conversation) {
    li.classList.add("current");
    open.setAttribute("aria-current", "true");
  }
  const rename = button("✎", "icon", `Rename “${conv.title}”`, () => renameConversation(conv, li));
  const remove = button("×", "icon", `Delete “${conv.title}”`, () => removeConversation(conv));
  li.append(open, rename, remove);
  return li;
}

function openConversation(conv) {
  controller?.abort();
  conversation = conv;
  localStorage.setItem(CURRENT_STORE, conv.id);
  showConversation();
  renderList();
  setStatus("");
  closeDrawer(false);
  els.prompt.focus();
}

function renameConversation(conv, li) {
  const input = document.createElement("input");
  input.type = "text";
  input.value = conv.title;
  input.className = "rename";
  input.setAttribute("aria-label", `New title for “${conv.title}”`);
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title && title !== conv.title) {
      conv.title = title;
      await keep(conv);
    } else renderList();
    els.conversations.querySelector(".current .open, .open")?.focus();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      finish(true);
    } else if (e.key === "Escape") {
      e.preventDefault();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
  li.replaceChildren(input);
  input.focus();
  input.select();
}

async function removeConversation(conv) {
  if (!confirm(`Delete the conversation “${conv.title}”?`)) return;
  conversations = conversations.filter((c) => c !== conv);
  try {
    await deleteConversation(conv.id);
  } catch (e) {
    setStatus(`Could not delete: ${e instanceof Error ? e.message : e}`);
  }
  if (conv === conversation) newChat();
  else renderList();
}

function newChat() {
  controller?.abort();
  conversation = null;
  localStorage.removeItem(CURRENT_STORE);
  showConversation();
  renderList();
  setStatus("");
  closeDrawer(false);
  els.prompt.focus();
}

els.search.addEventListener("input", renderList);

els.exportButton.addEventListener("click", () => {
  if (!conversation) return;
  const blob = new Blob([exportConversation(conversation)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  const slug = conversation.title
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-|-$/g, "");
  a.download = `${slug || "conversation"}.json`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
});
els.importButton.addEventListener("click", () => els.importFile.click());
els.importFile.addEventListener("change", async () => {
  const file = els.importFile.files?.[0];
  els.importFile.value = "";
  if (!file) return;
  try {
    const { conversation: conv, skipped } = importConversation(await file.text(), file.name);
    await keep(conv);
    openConversation(conv);
    setStatus(
      `Imported “${conv.title}”${skipped ? ` (${skipped} message${skipped > 1 ? "s" : ""} of other kinds left out)` : ""}.`,
    );
  } catch (e) {
    setStatus(`Could not import: ${e instanceof Error ? e.message : e}`);
  }
});

// Sending, stopping.
els.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = els.prompt.value.trim();
  if (!text || controller) return;
  els.prompt.value = "";
  send(text);
});
els.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    els.composer.requestSubmit();
  }
});
els.stop.addEventListener("click", () => controller?.abort());
els.newChat.addEventListener("click", newChat);
// Escape closes the drawer, or else stops the reply being written.
document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape" || e.defaultPrevented) return;
  if (drawerOpen()) {
    e.preventDefault();
    closeDrawer();
  } else if (controller) {
    e.preventDefault();
    controller.abort();
  }
});

async function start() {
  try {
    conversations = await listConversations();
  } catch (e) {
    setStatus(`Conversations cannot be kept in this browser: ${e instanceof Error ? e.message : e}`);
  }
  const current = localStorage.getItem(CURRENT_STORE);
  conversation = conversations.find((c) => c.id === current) ?? null;
  showConversation();
  renderList();
  await connect();
}

start();
