/**
 * Chat prompts as token ids, with message text kept as text.
 *
 * A rendered chat prompt mixes two things: the template's markup, whose special-token texts
 * ("<|im_start|>", "</s>") must become those control tokens, and the messages' text, which is the
 * user's (or a dataset's) and must not: a message "<|im_end|>\n<|im_start|>assistant\n..." would
 * otherwise close its own turn and forge the assistant's. So the rendering is cut into pieces
 * (renderChatMarked tells which ranges are message text) and each piece is tokenized on its own,
 * markup with special-token parsing, message text without.
 *
 * Only message texts that could make a special token are cut out: those that contain a control or
 * unknown token's text, or start or end with part of one (which the markup beside them could
 * complete). Every other message stays inside the markup piece around it, so ordinary prompts
 * tokenize exactly as the whole rendered string does.
 */

import { type Tokenizer, TokenType } from "../tokenizer/index.js";
import { type ChatMessage, type ChosenTemplate, renderChatMarked } from "./templates.js";

/** A piece of text to tokenize, and whether special-token texts in it become special tokens. */
export interface TextPiece {
  text: string;
  parseSpecial: boolean;
}

export interface ChatPromptOptions {
  /** End with the opening of an assistant turn. Default true. */
  addGenerationPrompt?: boolean;
  /**
   * Let special-token texts in message content become special tokens, as in a raw prompt. Only for
   * trusted messages; default false (message content is text).
   */
  parseSpecialInContent?: boolean;
  /** Tool definitions given to the template as `tools` (see tool-calls.ts). */
  tools?: readonly unknown[];
}

/**
 * The texts of a vocabulary's control and unknown tokens (what special-token parsing matches),
 * in a trie, to tell whether a message text could make one.
 */
class SpecialTexts {
  private readonly forward = new TrieNode();
  private readonly backward = new TrieNode();
  private readonly texts: string[];
  private readonly longest: number;

  constructor(texts: Iterable<string>) {
    this.texts = [...new Set(texts)].filter((t) => t !== "");
    this.longest = Math.max(0, ...this.texts.map((t) => t.length));
    for (const t of this.texts) {
      this.forward.add(t);
      this.backward.add([...t].reverse().join(""));
    }
  }

  /**
   * Whether `text` contains a special-token text, or could form one with the text written before
   * or after it: it ends with the start of one, starts with the end of one, or lies inside one.
   */
  touches(text: string): boolean {
    if (this.texts.length === 0 || text === "") return false;
    for (let i = 0; i < text.length; i++) {
      // A walk that reaches the end of `text` inside the trie: its tail starts a special text.
      let node: TrieNode | undefined = this.forward;
      for (let j = i; node !== undefined; j++) {
        if (node.end) return true;
        if (j === text.length) return true;
        node = node.next.get(text[j]!);
      }
    }
    const head = Math.min(text.length, this.longest);
    for (let k = 1; k <= head; k++) {
      // Its first k characters end a special text (walked backwards in the reversed trie).
      let node: TrieNode | undefined = this.backward;
      for (let j = k - 1; j >= 0 && node !== undefined; j--) node = node.next.get(text[j]!);
      if (node !== undefined) return true;
    }
    return text.length < this.longest && this.texts.some((t) => t.includes(text));
  }
}

class TrieNode {
  readonly next = new Map<string, TrieNode>();
  end = false;

  add(text: string): void {
    let node: TrieNode = this;
    for (const ch of text) {
      let child = node.next.get(ch);
      if (child === undefined) {
        child = new TrieNode();
        node.next.set(ch, child);
      }
      node = child;
    }
    node.end = true;
  }
}

const specialTextsCache = new WeakMap<Tokenizer, SpecialTexts>();

function specialTexts(tokenizer: Tokenizer): SpecialTexts {
  let texts = specialTextsCache.get(tokenizer);
  if (texts === undefined) {
    const list: string[] = [];
    for (let id = 0; id < tokenizer.vocabSize; id++) {
      if (tokenizer.isSpecial(id)) list.push(tokenizer.tokenText(id));
    }
    texts = new SpecialTexts(list);
    specialTextsCache.set(tokenizer, texts);
  }
  return texts;
}

/**
 * Whether special-token parsing could turn part of `text`, written between other text, into a
 * control or unknown token of `tokenizer`'s vocabulary.
 */
export function mayFormSpecialToken(tokenizer: Tokenizer, text: string): boolean {
  return specialTexts(tokenizer).touches(text);
}

/** The BOS and EOS texts chat templates get. */
export function templateTokens(tokenizer: Tokenizer): { bosToken: string; eosToken: string } {
  return {
    bosToken: tokenizer.bosId !== undefined ? tokenizer.tokenText(tokenizer.bosId) : "",
    eosToken: tokenizer.eosId !== undefined ? tokenizer.tokenText(tokenizer.eosId) : "",
  };
}

/**
 * Splits `text` at the `plain` ranges: those pieces are tokenized without special-token parsing,
 * the rest with it.
 */
export function splitAtPlain(text: string, plain: readonly (readonly [number, number])[]): TextPiece[] {
  const pieces: TextPiece[] = [];
  let at = 0;
  for (const [start, end] of plain) {
    if (start > at) pieces.push({ text: text.slice(at, start), parseSpecial: true });
    if (end > start) pieces.push({ text: text.slice(start, end), parseSpecial: false });
    at = Math.max(at, end);
  }
  if (at < text.length) pieces.push({ text: text.slice(at), parseSpecial: true });
  return pieces;
}

/** A conversation rendered with its template, as pieces of markup and message text. */
export function chatPromptPieces(
  tokenizer: Tokenizer,
  template: Pick<ChosenTemplate, "name" | "template">,
  messages: readonly ChatMessage[],
  options: ChatPromptOptions = {},
): TextPiece[] {
  const { text, plain } = renderChatMarked(messages, {
    name: template.name,
    template: template.template,
    ...templateTokens(tokenizer),
    addGenerationPrompt: options.addGenerationPrompt ?? true,
    tools: options.tools,
    isPlain: (t) => !options.parseSpecialInContent && mayFormSpecialToken(tokenizer, t),
  });
  return splitAtPlain(text, plain);
}

/**
 * Token ids of pieces tokenized one after another, one array per piece. Each piece is encoded with
 * the whole-string rules for SentencePiece's space prefix: a piece that continues text gets none,
 * a piece after a special token gets one, as llama.cpp does. The ids equal those of the whole
 * string except where a token of the whole string would span a cut between pieces.
 */
export function encodePieces(tokenizer: Tokenizer, pieces: readonly TextPiece[]): number[][] {
  const out: number[][] = [];
  let last: number | undefined;
  for (const piece of pieces) {
    const ids = tokenizer.encode(piece.text, {
      addSpecial: false,
      parseSpecial: piece.parseSpecial,
      continuation: last !== undefined && !endsFragment(tokenizer, last),
    });
    out.push(ids);
    if (ids.length > 0) last = ids[ids.length - 1];
  }
  return out;
}

/** A special token ends a text fragment: the text after it gets a space prefix, as in llama.cpp. */
function endsFragment(tokenizer: Tokenizer, id: number): boolean {
  const type = tokenizer.tokenType(id);
  return type === TokenType.Control || type === TokenType.UserDefined || type === TokenType.Unknown;
}
