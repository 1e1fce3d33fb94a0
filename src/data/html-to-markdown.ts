/**
 * HTML to markdown, for chat replies scraped from a web page (ShareGPT's assistant turns are the
 * HTML of the rendered answer: paragraphs, lists, tables, and code blocks with a language label and
 * a "Copy code" button). A small tolerant parser builds a tree (unclosed tags close with their
 * parent, stray end tags are ignored) and a renderer writes CommonMark: headings, emphasis, inline
 * code and fenced code blocks with their language, links, lists (nested, numbered from `start`),
 * block quotes, rules and pipe tables. Scripts, styles, inline SVG and buttons are dropped. Text is
 * not escaped: the aim is readable training text.
 *
 *   htmlToMarkdown('<p>Use <code>ls -l</code>:</p><pre><code class="language-sh">ls -l\n</code></pre>')
 *   // "Use `ls -l`:\n\n```sh\nls -l\n```"
 */

interface Element {
  tag: string;
  attrs: Record<string, string>;
  children: Node[];
}
type Node = Element | string;

const VOID = new Set(["br", "hr", "img", "input", "meta", "link", "wbr", "area", "base", "col", "source"]);
const DROPPED = new Set(["script", "style", "svg", "button", "head", "title", "noscript", "template"]);
const BLOCK = new Set([
  "p",
  "div",
  "section",
  "article",
  "header",
  "footer",
  "main",
  "nav",
  "aside",
  "figure",
  "figcaption",
  "details",
  "summary",
  "h1",
  "h2",
  "h3",
  "h4",
  "h5",
  "h6",
  "ul",
  "ol",
  "li",
  "dl",
  "dt",
  "dd",
  "pre",
  "blockquote",
  "table",
  "hr",
]);

/** Tags whose presence marks a text as HTML rather than prose that mentions a tag. */
const HTML_HINT =
  /<(?:p|div|pre|code|ul|ol|li|h[1-6]|strong|em|b|i|br|hr|table|tr|td|th|span|a|blockquote)(?:\s[^<>]*)?\/?>/i;
const CLOSING_HINT = /<\/(?:p|div|pre|code|ul|ol|li|h[1-6]|strong|em|b|i|table|span|a|blockquote)>/i;

/** True when a text looks like HTML markup (an opening and a closing tag of common elements). */
export function looksLikeHtml(text: string): boolean {
  return HTML_HINT.test(text) && CLOSING_HINT.test(text);
}

const ENTITIES: Record<string, string> = {
  amp: "&",
  lt: "<",
  gt: ">",
  quot: '"',
  apos: "'",
  nbsp: " ",
  ndash: "–",
  mdash: "—",
  hellip: "…",
  lsquo: "‘",
  rsquo: "’",
  ldquo: "“",
  rdquo: "”",
  laquo: "«",
  raquo: "»",
  middot: "·",
  bull: "•",
  times: "×",
  divide: "÷",
  deg: "°",
  copy: "©",
  reg: "®",
  trade: "™",
  euro: "€",
  pound: "£",
  yen: "¥",
  cent: "¢",
  sect: "§",
  para: "¶",
  plusmn: "±",
  larr: "←",
  rarr: "→",
  uarr: "↑",
  darr: "↓",
};

/** Decodes character references; unknown names stay as written. */
export function decodeEntities(text: string): string {
  return text.replace(/&(#x[0-9a-f]+|#\d+|[a-z][a-z0-9]*);/gi, (whole, name: string) => {
    if (name[0] === "#") {
      const code =
        name[1] === "x" || name[1] === "X" ? Number.parseInt(name.slice(2), 16) : Number(name.slice(1));
      return code > 0 && code <= 0x10ffff && !(code >= 0xd800 && code <= 0xdfff)
        ? String.fromCodePoint(code)
        : whole;
    }
    return ENTITIES[name.toLowerCase()] ?? whole;
  });
}

function parseAttrs(text: string): Record<string, string> {
  const attrs: Record<string, string> = {};
  for (const m of text.matchAll(/([^\s=/"'<>]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?/g)) {
    attrs[m[1]!.toLowerCase()] = decodeEntities(m[2] ?? m[3] ?? m[4] ?? "");
  }
  return attrs;
}

function lastIndex<T>(items: T[], test: (item: T) => boolean): number {
  for (let i = items.length - 1; i >= 0; i--) if (test(items[i]!)) return i;
  return -1;
}

/** The tree of an HTML fragment. */
function parseHtml(html: string): Element {
  const root: Element = { tag: "#root", attrs: {}, children: [] };
  const stack: Element[] = [root];
  const tokens =
    /<!--[\s\S]*?(?:-->|$)|<!\w[^>]*>|<(\/?)([a-zA-Z][a-zA-Z0-9:-]*)((?:"[^"]*"|'[^']*'|[^'">])*)>/g;
  let last = 0;
  const text = (s: string) => {
    if (s !== "") stack[stack.length - 1]!.children.push(s);
  };
  for (let m = tokens.exec(html); m !== null; m = tokens.exec(html)) {
    text(html.slice(last, m.index));
    last = tokens.lastIndex;
    if (m[2] === undefined) continue; // a comment or a doctype
    const tag = m[2].toLowerCase();
    if (m[1] === "/") {
      // Close the nearest open element with this tag and everything left open inside it.
      for (let i = stack.length - 1; i > 0; i--) {
        if (stack[i]!.tag === tag) {
          stack.length = i;
          break;
        }
      }
      continue;
    }
    const element: Element = { tag, attrs: parseAttrs(m[3]!), children: [] };
    // A new <p> or <li> closes an open one, as browsers do.
    if (tag === "p" || tag === "li") {
      const open = lastIndex(stack, (e) => e.tag === tag);
      const boundary = lastIndex(stack, (e) => ["ul", "ol", "div", "blockquote", "td", "th"].includes(e.tag));
      if (open > 0 && open > boundary) stack.length = open;
    }
    stack[stack.length - 1]!.children.push(element);
    if (!VOID.has(tag) && !m[3]!.trimEnd().endsWith("/")) {
      if (DROPPED.has(tag)) {
        // Skip to the end tag without parsing the content.
        const end = html.toLowerCase().indexOf(`</${tag}`, last);
        const close = end < 0 ? -1 : html.indexOf(">", end);
        last = tokens.lastIndex = close < 0 ? html.length : close + 1;
        continue;
      }
      stack.push(element);
    }
  }
  text(html.slice(last));
  return root;
}

/** Text of a subtree as written (for code), without dropped elements. */
function rawText(node: Node): string {
  if (typeof node === "string") return decodeEntities(node);
  if (DROPPED.has(node.tag)) return "";
  if (node.tag === "br") return "\n";
  return node.children.map(rawText).join("");
}

function findFirst(node: Element, tag: string): Element | undefined {
  for (const child of node.children) {
    if (typeof child === "string") continue;
    if (child.tag === tag) return child;
    const found = findFirst(child, tag);
    if (found) return found;
  }
  return undefined;
}

function languageOf(element: Element | undefined): string {
  const cls = element?.attrs["class"] ?? "";
  return /(?:^|\s)(?:language|lang)-([\w+#.-]+)/.exec(cls)?.[1] ?? "";
}

/** A fence longer than any run of backticks in the code. */
function fence(code: string, min = 3): string {
  let longest = 0;
  for (const m of code.matchAll(/`+/g)) longest = Math.max(longest, m[0].length);
  return "`".repeat(Math.max(min, longest + 1));
}

// Code blocks are rendered once and put back at the end, so that whitespace clean-up never touches
// them; a CODE_MARK-delimited index stands in their place meanwhile.
const CODE_MARK = "\u0000";
// A <br> line break and the indentation of list items survive whitespace clean-up as these marks.
const BREAK_MARK = "\u0001";
const INDENT_MARK = "\u0002";

class Renderer {
  readonly code: string[] = [];

  blocks(nodes: Node[]): string {
    return nodes.map((n) => this.node(n)).join("");
  }

  node(node: Node): string {
    if (typeof node === "string") return decodeEntities(node).replace(/\s+/g, " ");
    const { tag } = node;
    if (DROPPED.has(tag)) return "";
    const inner = () => this.blocks(node.children);
    const block = (s: string) => `\n\n${s}\n\n`;
    switch (tag) {
      case "br":
        return BREAK_MARK;
      case "hr":
        return block("---");
      case "h1":
      case "h2":
      case "h3":
      case "h4":
      case "h5":
      case "h6": {
        const text = flatten(inner());
        return text === "" ? "" : block(`${"#".repeat(Number(tag[1]))} ${text}`);
      }
      case "strong":
      case "b":
        return wrapInline(inner(), "**");
      case "em":
      case "i":
        return wrapInline(inner(), "*");
      case "del":
      case "s":
      case "strike":
        return wrapInline(inner(), "~~");
      case "code": {
        const text = rawText(node).replace(/\s+/g, " ");
        if (text.trim() === "") return text;
        const ticks = fence(text, 1);
        const pad = text.startsWith("`") || text.endsWith("`") ? " " : "";
        return `${ticks}${pad}${text}${pad}${ticks}`;
      }
      case "pre": {
        const code = findFirst(node, "code");
        const language = languageOf(code) || languageOf(node);
        const text = rawText(code ?? node).replace(/^\n+|\s+$/g, "");
        const ticks = fence(text);
        this.code.push(`${ticks}${language}\n${text}\n${ticks}`);
        return block(`${CODE_MARK}${this.code.length - 1}${CODE_MARK}`);
      }
      case "a": {
        const text = inner().trim();
        const href = node.attrs["href"];
        if (!href || href.startsWith("javascript:") || href === text) return text;
        return text === "" ? "" : `[${text}](${href})`;
      }
      case "img": {
        const alt = node.attrs["alt"] ?? "";
        const src = node.attrs["src"];
        return src ? `![${alt}](${src})` : alt;
      }
      case "ul":
      case "ol":
        return block(this.list(node));
      case "blockquote": {
        const text = clean(inner());
        return text === "" ? "" : block(text.replace(/^/gm, "> ").replace(/^> $/gm, ">"));
      }
      case "table":
        return block(this.table(node));
      default:
        return BLOCK.has(tag) ? block(inner()) : inner();
    }
  }

  private list(node: Element): string {
    const ordered = node.tag === "ol";
    let n = Number.parseInt(node.attrs["start"] ?? "1", 10);
    if (!Number.isFinite(n)) n = 1;
    const items: string[] = [];
    for (const child of node.children) {
      if (typeof child === "string") continue; // whitespace between items
      const content = child.tag === "li" ? child.children : [child];
      let text = clean(this.blocks(content));
      // A tight item (no paragraphs of its own) keeps its nested list on the next line.
      if (!content.some((c) => typeof c !== "string" && c.tag === "p")) text = text.replace(/\n{2,}/g, "\n");
      const marker = ordered ? `${n++}. ` : "- ";
      const indent = INDENT_MARK.repeat(marker.length);
      items.push(marker + text.replace(/\n(?!\n|$)/g, `\n${indent}`));
    }
    return items.join("\n");
  }

  private table(node: Element): string {
    const rows: string[][] = [];
    const collect = (el: Element) => {
      for (const child of el.children) {
        if (typeof child === "string") continue;
        if (child.tag === "tr") {
          const cells = child.children.filter(
            (c): c is Element => typeof c !== "string" && (c.tag === "td" || c.tag === "th"),
          );
          rows.push(cells.map((c) => flatten(this.blocks(c.children)).replace(/\|/g, "\\|")));
        } else if (["thead", "tbody", "tfoot"].includes(child.tag)) collect(child);
      }
    };
    collect(node);
    if (rows.length === 0) return "";
    const width = Math.max(...rows.map((r) => r.length));
    const line = (cells: string[]) =>
      `| ${Array.from({ length: width }, (_, i) => cells[i] ?? "").join(" | ")} |`;
    return [line(rows[0]!), `|${" --- |".repeat(width)}`, ...rows.slice(1).map(line)].join("\n");
  }
}

function wrapInline(text: string, mark: string): string {
  const trimmed = text.trim();
  if (trimmed === "") return text;
  // Keep the spaces outside the markers: "a<b> b </b>c" -> "a **b** c".
  const lead = text.startsWith(" ") ? " " : "";
  const trail = text.endsWith(" ") ? " " : "";
  return `${lead}${mark}${trimmed}${mark}${trail}`;
}

/** One line of inline text. */
function flatten(text: string): string {
  return text.replaceAll(BREAK_MARK, " ").replace(/\s+/g, " ").trim();
}

/** Lines trimmed, blank runs reduced to one blank line, line breaks restored. */
function clean(text: string): string {
  return text
    .split("\n")
    .map((line) => line.replace(/^ +| +$/g, "").replaceAll(BREAK_MARK, "\n"))
    .join("\n")
    .replace(/[ \t]+\n/g, "\n")
    .replace(/\n{3,}/g, "\n\n")
    .trim();
}

/** Markdown for an HTML fragment. */
export function htmlToMarkdown(html: string): string {
  const renderer = new Renderer();
  const text = clean(renderer.blocks(parseHtml(html).children));
  if (renderer.code.length === 0) return text.replaceAll(INDENT_MARK, " ");
  // Put the code blocks back, indented like the line their mark is on (list items, quotes).
  return text
    .replace(new RegExp(`^(.*?)${CODE_MARK}(\\d+)${CODE_MARK}`, "gm"), (_, prefix: string, i: string) => {
      const indent = prefix.startsWith(">") ? prefix : " ".repeat(prefix.length);
      return prefix + renderer.code[Number(i)]!.replace(/\n/g, `\n${indent}`);
    })
    .replaceAll(INDENT_MARK, " ");
}
