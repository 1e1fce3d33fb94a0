// Replies as markdown, rendered safely: marked parses them (GitHub's flavour: tables, task lists,
// fenced code), HTML the model writes is shown as text, DOMPurify sanitises what marked makes
// (links to javascript: and the like), and highlight.js colours code in the languages it knows.
//
// While a reply streams, it is rendered at most once per animation frame, and only its open end
// is parsed again: the blocks before the last blank line that a later block follows are rendered
// once, added to the page and kept, so that a long reply costs no more per frame than a short one.

import hljs from "/vendor/highlight.js";
import { Marked } from "/vendor/marked.esm.js";

const DOMPurify = globalThis.DOMPurify;

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => ESCAPES[c]);

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    // HTML in a reply is text to show, never markup.
    html({ text }) {
      return escapeHtml(text);
    },
    code({ text, lang }) {
      const language = (lang ?? "").trim().split(/\s+/)[0].toLowerCase();
      const known = language !== "" && hljs.getLanguage(language) !== undefined;
      const body = known ? hljs.highlight(text, { language, ignoreIllegals: true }).value : escapeHtml(text);
      const label = language ? ` data-language="${escapeHtml(language)}"` : "";
      return `<pre><code class="hljs"${label}>${body}</code></pre>\n`;
    },
  },
});

// Links open in a new tab, telling the page they leave nothing.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

const PURIFY = {
  RETURN_DOM_FRAGMENT: true,
  FORBID_TAGS: ["style", "form", "button", "textarea", "select", "option"],
  FORBID_ATTR: ["style"],
};

/** Sanitised DOM of marked's HTML, each code block with a copy button. */
function fragmentOf(html) {
  const fragment = DOMPurify.sanitize(html, PURIFY);
  for (const pre of fragment.querySelectorAll("pre")) {
    const block = document.createElement("div");
    block.className = "code-block";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const name = document.createElement("span");
    const language = pre.querySelector("code")?.dataset.language ?? "";
    name.textContent = language || "code";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-code";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", `Copy ${language ? `the ${language} ` : "the "}code`);
    bar.append(name, copy);
    pre.replaceWith(block);
    block.append(bar, pre);
  }
  // Code and tables may scroll sideways: the keyboard can reach them to scroll them.
  for (const el of fragment.querySelectorAll("pre, table")) el.tabIndex = 0;
  return fragment;
}

/** Normalised line ends: what marked's lexer works on, so that token lengths add up to the text. */
const normalise = (text) => text.replace(/\r\n?/g, "\n");

/** Renders a whole text into `el` (a reply kept, or one that has finished). */
export function renderMarkdown(el, text) {
  el.replaceChildren(fragmentOf(marked.parse(normalise(text))));
}

/** The markdown of a reply as it streams in, rendered into `el`. */
export class StreamingMarkdown {
  constructor(el) {
    this.el = el;
    /** Blocks rendered for good, and the part still parsed again on each frame. */
    this.done = document.createElement("div");
    this.open = document.createElement("div");
    this.done.className = "md-part";
    this.open.className = "md-part";
    el.replaceChildren(this.done, this.open);
    this.text = "";
    /** How much of the text the kept blocks hold, their HTML, and the open part's. */
    this.doneLength = 0;
    this.doneHtml = "";
    this.openHtml = "";
    this.frame = 0;
    this.onRender = undefined;
  }

  /** The reply so far: rendered on the next animation frame. */
  update(text) {
    this.text = normalise(text);
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.render();
      });
    }
  }

  render() {
    const rest = this.text.slice(this.doneLength);
    let tokens = marked.lexer(rest);
    let total = 0;
    let cut = 0;
    let cutAt = 0;
    for (const [i, token] of tokens.entries()) {
      total += token.raw.length;
      // A blank line closes the blocks before it, once the block after it has a whole line.
      if (token.type === "space" && i < tokens.length - 1 && rest.indexOf("\n", total) >= 0) {
        cut = i + 1;
        cutAt = total;
      }
    }
    if (cut > 0 && total === rest.length) {
      const html = marked.parser(tokens.slice(0, cut));
      this.done.append(fragmentOf(html));
      this.doneHtml += html;
      this.doneLength += cutAt;
      tokens = tokens.slice(cut);
    }
    const html = marked.parser(tokens);
    if (html !== this.openHtml) {
      this.open.replaceChildren(fragmentOf(html));
      this.openHtml = html;
    }
    this.onRender?.();
  }

  /**
   * The reply's whole text, once it ends: rendered now. Parsed whole, the text can differ from
   * its parts (a list that a blank line interrupted, a link defined further on); only then is it
   * drawn again.
   */
  finish(text) {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.text = normalise(text);
    this.render();
    const html = marked.parse(this.text);
    if (html !== this.doneHtml + this.openHtml) this.el.replaceChildren(fragmentOf(html));
    else this.el.replaceChildren(...this.done.childNodes, ...this.open.childNodes);
  }
}
