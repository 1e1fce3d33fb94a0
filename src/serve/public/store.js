// What the page keeps in the browser: conversations in IndexedDB (one record each: id, title,
// created, updated, messages), settings and the current conversation's id in localStorage.

const DB_NAME = "smallhammer";
const STORE = "conversations";

let opened;
function database() {
  opened ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id" });
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  return opened;
}

/** Runs `work` on the store in one transaction; resolves with its request's result once committed. */
async function transaction(mode, work) {
  const db = await database();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const request = work(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(request.result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

/** Every conversation kept, the most recently changed first. */
export async function listConversations() {
  const all = await transaction("readonly", (s) => s.getAll());
  return all.sort((a, b) => b.updated - a.updated);
}

export function saveConversation(conversation) {
  return transaction("readwrite", (s) => s.put(conversation));
}

export function deleteConversation(id) {
  return transaction("readwrite", (s) => s.delete(id));
}

/** An id unique enough for this browser (crypto.randomUUID needs a secure context). */
export function newId() {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

const SETTINGS = "smallhammer.settings";

export function loadSettings() {
  try {
    return JSON.parse(localStorage.getItem(SETTINGS) ?? "{}") ?? {};
  } catch {
    return {};
  }
}

export function saveSettings(settings) {
  localStorage.setItem(SETTINGS, JSON.stringify(settings));
}

/** A conversation as a file: its title and messages (role, content, and a reply's figures). */
export function exportConversation(conversation) {
  return JSON.stringify(
    {
      format: "smallhammer-conversation",
      version: 1,
      title: conversation.title,
      created: new Date(conversation.created).toISOString(),
      messages: conversation.messages
        .filter((m) => m.content)
        .map(({ role, content, stats }) => (stats ? { role, content, stats } : { role, content })),
    },
    null,
    2,
  );
}

/**
 * A conversation read from a file: this page's export, or any JSON with a `messages` array (or an
 * array) of {role, content} as the chat API takes them. Throws with a reason when it is neither.
 */
export function importConversation(text, fileName) {
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    throw new Error(`${fileName} is not JSON`);
  }
  const list = Array.isArray(data) ? data : data?.messages;
  if (!Array.isArray(list)) throw new Error(`${fileName} has no list of messages`);
  const messages = [];
  let skipped = 0;
  for (const m of list) {
    if ((m?.role === "user" || m?.role === "assistant") && typeof m.content === "string" && m.content) {
      const message = { role: m.role, content: m.content };
      if (m.role === "assistant") message.state = "done";
      messages.push(message);
    } else skipped++;
  }
  if (messages.length === 0) throw new Error(`${fileName} has no user or assistant message`);
  const now = Date.now();
  const title =
    typeof data?.title === "string" && data.title.trim() ? data.title.trim() : titleOf(messages[0].content);
  return { conversation: { id: newId(), title, created: now, updated: now, messages }, skipped };
}

/** A title from a conversation's first message. */
export function titleOf(text) {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > 60 ? `${line.slice(0, 59)}…` : line || "New chat";
}
