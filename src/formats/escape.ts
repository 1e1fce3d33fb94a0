/**
 * Escaping for text read from model files before it reaches a terminal or a log: names, keys and
 * values are untrusted, and a control character or a Unicode bidi override in them could rewrite
 * what the user sees (hide text, reorder a line, move the cursor).
 */

/**
 * Characters JSON.stringify leaves alone but a terminal acts on: DEL and C1 controls, the bidi
 * marks, embeddings, overrides and isolates, the line and paragraph separators, and the byte-order
 * mark (zero-width, so it hides in the middle of a name).
 */
const UNSAFE_FOR_DISPLAY = /[\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]/g;

function hexEscape(c: string): string {
  return `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`;
}

/**
 * The text with control, bidi and separator characters written as `\uXXXX` (and `\`, `"`, `\n`,
 * `\t`... as JSON writes them), without surrounding quotes. Plain text comes back unchanged.
 */
export function escapeText(s: string): string {
  return JSON.stringify(s).slice(1, -1).replace(UNSAFE_FOR_DISPLAY, hexEscape);
}

/**
 * A double-quoted, escaped rendering of `s` cut to about `maxChars` characters (`...` marks the
 * cut), for one-line messages and listings.
 */
export function quoteText(s: string, maxChars = 80): string {
  let short = s;
  if (s.length > maxChars) {
    // Cut between code points: a surrogate pair split in two would print as two escapes.
    let end = maxChars - 3;
    const code = s.charCodeAt(end - 1);
    if (code >= 0xd800 && code <= 0xdbff) end--;
    short = `${s.slice(0, end)}...`;
  }
  return `"${escapeText(short)}"`;
}

/**
 * Escapes the display-unsafe characters inside a JSON document (they can only occur in its
 * strings, where `\uXXXX` means the same character), so `--json` output is as safe as text output.
 */
export function escapeJsonForDisplay(json: string): string {
  return json.replace(UNSAFE_FOR_DISPLAY, hexEscape);
}
