/**
 * Records to token ids and a loss mask: which tokens a fine-tune trains on.
 *
 * The mask is built from token positions, never by searching a rendered string after the fact.
 * A conversation is rendered with its chat template one message at a time: the rendering of the
 * first k messages must be a prefix of the rendering of the first k+1 (with the generation prompt
 * where an assistant message follows), so every character of the final text is known to belong to
 * the prompt or to an assistant reply. The text is then cut into pieces and each piece is
 * tokenized on its own:
 *
 *   prompt   template text that is not a trained reply: role markers, separators, the generation
 *            prompt (`ASSISTANT:`, `<|im_start|>assistant\n`), and the text of messages that
 *            cannot make a special token. Special-token texts in it become special tokens.
 *   message  the text of a system, user or untrained assistant message that contains a special
 *            token's text (or part of one at its edges): tokenized as plain text, so that a "</s>"
 *            or "<|im_end|>" in a dataset stays text and cannot end or forge a turn (see
 *            model/chat-prompt.ts). With `parseSpecialInContent` such text is prompt.
 *   reply    the assistant's span up to its end marker: the reply text and any template text
 *            around it (vicuna's and llama-2's leading space). Tokenized as plain text: a "</s>"
 *            written inside a reply stays text and does not end the example.
 *   end      the end marker that closes the reply: the EOS token, or a turn end such as
 *            `<|im_end|>`/`<|eot_id|>` (any end-of-generation token of the vocabulary). What the
 *            template writes after it (chatml's newline) is prompt.
 *
 * reply and end are trained on (`lossMask` 1); prompt and message tokens are not, unless
 * `trainOnPrompt`. Position 0 is never trained on (nothing precedes it to predict it from).
 *
 * Agreement with tokenizing the whole rendered string: pieces are encoded with the whole-string
 * rules for SentencePiece's space prefix (model/chat-prompt.ts encodePieces), so the ids equal
 * `encode(renderedText)` except where a token of the whole-string encoding would span a cut
 * between pieces, or special-token text in a message stays text; there the pieces keep the cut as
 * a token boundary (test/data-chat-tokens.test.ts shows both). That is intended: the prompt tokens
 * are then exactly what chat inference feeds the model for the same prompt, and the trained tokens
 * are exactly the reply and its end marker.
 *
 * BOS: as in chat inference, the rendered text's own BOS (llama-2 writes `<s>`) is kept, and
 * otherwise the vocabulary's BOS is put in front when it adds one.
 *
 * Completion records (prompt/completion) get no template: BOS as the vocabulary wants, the prompt
 * and the completion tokenized as plain text one after the other, then EOS; the completion and EOS
 * are trained on.
 */

import { UserError } from "../errors.js";
import { readGgufHeader } from "../formats/gguf.js";
import { encodePieces, mayFormSpecialToken, templateTokens } from "../model/chat-prompt.js";
import { metadataGetter } from "../model/config.js";
import {
  type BuiltinTemplateName,
  ChatTemplateBudgetError,
  KNOWN_TURN_ENDS,
  renderChatMarked,
} from "../model/templates.js";
import { Tokenizer } from "../tokenizer/index.js";
import {
  type DatasetMessage,
  type DatasetRecord,
  InvalidRecordError,
  type RecordReader,
  type RecordSource,
} from "./records.js";

/** A chat template as renderChat takes it (what chooseTemplate returns fits). */
export interface TemplateChoice {
  /** A built-in template. */
  name?: BuiltinTemplateName;
  /** Jinja source of the model file's template. */
  template?: string;
  /** Where the template comes from, for display: the built-in's name or "model file". */
  label?: string;
}

export interface TokenizeOptions {
  tokenizer: Tokenizer;
  /** The chat template; needed for chat records, unused for completion records. */
  template?: TemplateChoice;
  /** Train on the prompt tokens too (every token but the first). Default false. */
  trainOnPrompt?: boolean;
  /**
   * Let special-token texts in message content and completion prompts become special tokens (for
   * data whose text deliberately holds them). Default false: a dataset's text is text.
   */
  parseSpecialInContent?: boolean;
}

/** One tokenized record. */
export interface TokenizedExample {
  ids: Int32Array;
  /** 1 where the token is trained on (the model learns to predict it from the tokens before it). */
  lossMask: Uint8Array;
  source?: RecordSource;
}

/** A piece of the rendered text and what it is (see the file comment). */
export type PieceKind = "prompt" | "message" | "reply" | "end";

/** The template cannot render a record (it raised an error for these messages). */
class TemplateRenderError extends UserError {}

function eosText(tok: Tokenizer): string {
  return tok.eosId !== undefined ? tok.tokenText(tok.eosId) : "";
}

const markerCache = new WeakMap<Tokenizer, string[]>();

/** Texts that close an assistant reply: EOS, the vocabulary's end-of-generation tokens, turn ends. */
function endMarkers(tok: Tokenizer): string[] {
  let markers = markerCache.get(tok);
  if (markers === undefined) {
    const set = new Set<string>([eosText(tok), ...KNOWN_TURN_ENDS]);
    for (const id of tok.eogTokenIds) set.add(tok.tokenText(id));
    set.delete("");
    markers = [...set];
    markerCache.set(tok, markers);
  }
  return markers;
}

/**
 * Splits an assistant's span (the text its message added to the rendering) into the reply, the
 * end marker after the reply text, and what follows the marker.
 */
function splitReply(span: string, content: string, markers: readonly string[]) {
  let from = 0;
  let at = span.indexOf(content);
  if (at >= 0) from = at + content.length;
  else {
    const trimmed = content.trim();
    at = trimmed === "" ? -1 : span.indexOf(trimmed);
    if (at >= 0) from = at + trimmed.length;
  }
  let best = -1;
  let bestLength = 0;
  for (const marker of markers) {
    const p = span.indexOf(marker, from);
    if (p >= 0 && (best < 0 || p < best || (p === best && marker.length > bestLength))) {
      best = p;
      bestLength = marker.length;
    }
  }
  if (best < 0) return { reply: span, end: "", rest: "" };
  return {
    reply: span.slice(0, best),
    end: span.slice(best, best + bestLength),
    rest: span.slice(best + bestLength),
  };
}

/**
 * Cuts a conversation's rendering into prompt, message, reply and end pieces (see the file
 * comment). Their texts concatenated are the template's rendering of the whole conversation.
 */
export function chatPieces(
  messages: readonly DatasetMessage[],
  tokenizer: Tokenizer,
  template: TemplateChoice,
  options: { parseSpecialInContent?: boolean } = {},
): { kind: PieceKind; text: string }[] {
  const label =
    template.name !== undefined
      ? `chat template "${template.name}"`
      : "the model file's chat template (tokenizer.chat_template)";
  const tokens = templateTokens(tokenizer);
  // Every message is rendered once per later message: remember what was found about each text.
  const found = new Map<string, boolean>();
  const isPlain = (text: string) => {
    if (options.parseSpecialInContent) return false;
    let plain = found.get(text);
    if (plain === undefined) {
      plain = mayFormSpecialToken(tokenizer, text);
      found.set(text, plain);
    }
    return plain;
  };
  /** Message text ranges of the latest rendering; each rendering extends the one before. */
  let plain: [number, number][] = [];
  const render = (count: number, addGenerationPrompt: boolean): string => {
    try {
      const r = renderChatMarked(messages.slice(0, count), {
        name: template.name,
        template: template.template,
        ...tokens,
        addGenerationPrompt,
        isPlain,
      });
      plain = r.plain;
      return r.text;
    } catch (e) {
      // A template past its budget is broken for every record: that stops the run.
      if (e instanceof UserError && !(e instanceof ChatTemplateBudgetError))
        throw new TemplateRenderError(e.message);
      throw e;
    }
  };
  let rendered = "";
  const advance = (next: string, count: number): string => {
    if (!next.startsWith(rendered)) {
      throw new UserError(
        `${label}: the rendering of the first ${count} messages does not start with the rendering of the ones before; ` +
          "loss masks need a template that renders a conversation message by message (choose a built-in with --template)",
      );
    }
    const added = next.slice(rendered.length);
    rendered = next;
    return added;
  };
  const markers = endMarkers(tokenizer);
  const pieces: { kind: PieceKind; text: string }[] = [];
  let prompt = "";
  for (let k = 0; k < messages.length; k++) {
    const m = messages[k]!;
    if (m.role === "assistant" && m.train !== false) {
      prompt += advance(render(k, true), k);
      const span = advance(render(k + 1, false), k + 1);
      const { reply, end, rest } = splitReply(span, m.content, markers);
      pieces.push(
        { kind: "prompt", text: prompt },
        { kind: "reply", text: reply },
        { kind: "end", text: end },
      );
      prompt = rest;
    } else {
      prompt += advance(render(k + 1, false), k + 1);
    }
  }
  pieces.push({ kind: "prompt", text: prompt });
  return cutMessages(pieces, plain).filter((p) => p.text !== "");
}

/** Cuts the message text ranges (of the whole rendering) out of the prompt pieces. */
function cutMessages(
  pieces: readonly { kind: PieceKind; text: string }[],
  plain: readonly [number, number][],
): { kind: PieceKind; text: string }[] {
  if (plain.length === 0) return [...pieces];
  const out: { kind: PieceKind; text: string }[] = [];
  let offset = 0;
  for (const piece of pieces) {
    const start = offset;
    const end = offset + piece.text.length;
    offset = end;
    if (piece.kind !== "prompt") {
      out.push(piece);
      continue;
    }
    let at = start;
    for (const [from, to] of plain) {
      const a = Math.max(from, start);
      const b = Math.min(to, end);
      if (a >= b) continue;
      if (a > at) out.push({ kind: "prompt", text: piece.text.slice(at - start, a - start) });
      out.push({ kind: "message", text: piece.text.slice(a - start, b - start) });
      at = b;
    }
    if (at < end) out.push({ kind: "prompt", text: piece.text.slice(at - start) });
  }
  return out;
}

/** Token ids and loss mask of text pieces, each tokenized on its own (see the file comment). */
function tokenizePieces(
  tok: Tokenizer,
  pieces: readonly { kind: PieceKind; text: string }[],
  trainOnPrompt: boolean,
): { ids: Int32Array; lossMask: Uint8Array } {
  const encoded = encodePieces(
    tok,
    pieces.map((p) => ({ text: p.text, parseSpecial: p.kind === "prompt" || p.kind === "end" })),
  );
  const ids: number[] = [];
  const mask: number[] = [];
  pieces.forEach((piece, i) => {
    const trained = piece.kind === "reply" || piece.kind === "end" || trainOnPrompt ? 1 : 0;
    for (const id of encoded[i]!) {
      ids.push(id);
      mask.push(trained);
    }
  });
  const bos = tok.bosId;
  if (tok.addBos && bos !== undefined && ids[0] !== bos) {
    ids.unshift(bos);
    mask.unshift(0);
  }
  const lossMask = Uint8Array.from(mask);
  if (lossMask.length > 0) lossMask[0] = 0;
  return { ids: Int32Array.from(ids), lossMask };
}

/** Token ids and loss mask of a conversation rendered with a chat template. */
export function tokenizeChat(
  messages: readonly DatasetMessage[],
  options: TokenizeOptions,
): TokenizedExample {
  if (options.template === undefined) {
    throw new UserError("a chat template is needed to tokenize conversations; choose one with --template");
  }
  const pieces = chatPieces(messages, options.tokenizer, options.template, options);
  return tokenizePieces(options.tokenizer, pieces, options.trainOnPrompt ?? false);
}

/** Token ids and loss mask of a prompt/completion pair: plain text, no template, EOS at the end. */
export function tokenizeCompletion(
  prompt: string,
  completion: string,
  options: TokenizeOptions,
): TokenizedExample {
  const tok = options.tokenizer;
  const promptKind: PieceKind = options.parseSpecialInContent ? "prompt" : "message";
  const pieces: { kind: PieceKind; text: string }[] = [
    { kind: promptKind, text: prompt },
    { kind: "reply" as const, text: completion },
  ].filter((p) => p.text !== "");
  const { ids, lossMask } = tokenizePieces(tok, pieces, options.trainOnPrompt ?? false);
  if (tok.eosId === undefined) return { ids, lossMask };
  const withEos = new Int32Array(ids.length + 1);
  withEos.set(ids);
  withEos[ids.length] = tok.eosId;
  const maskWithEos = new Uint8Array(ids.length + 1);
  maskWithEos.set(lossMask);
  maskWithEos[ids.length] = ids.length > 0 ? 1 : 0;
  return { ids: withEos, lossMask: maskWithEos };
}

/**
 * Tokenizes one record (chat or completion). A template that raises an error for the record's
 * messages gives an InvalidRecordError naming the record (reason "template error").
 */
export function tokenizeRecord(record: DatasetRecord, options: TokenizeOptions): TokenizedExample {
  try {
    const example =
      record.kind === "completion"
        ? tokenizeCompletion(record.messages[0]!.content, record.messages[1]!.content, options)
        : tokenizeChat(record.messages, options);
    example.source = record.source;
    return example;
  } catch (e) {
    if (e instanceof TemplateRenderError) {
      throw new InvalidRecordError({ source: record.source, problem: e.message, reason: "template error" });
    }
    throw e;
  }
}

/**
 * Reads and tokenizes every record of a reader, in file order. Records the template cannot render
 * are handled like invalid records: counted in `reader.skipped` with skipInvalid, thrown otherwise.
 * Memory: the examples are kept (ids as Int32Array, mask as Uint8Array: 5 bytes per token).
 */
export async function tokenizeRecords(
  reader: RecordReader,
  options: TokenizeOptions & { onExample?: (example: TokenizedExample) => void },
): Promise<TokenizedExample[]> {
  const examples: TokenizedExample[] = [];
  for await (const record of reader) {
    let example: TokenizedExample;
    try {
      example = tokenizeRecord(record, options);
    } catch (e) {
      if (e instanceof InvalidRecordError) {
        reader.reject(e.issue);
        continue;
      }
      throw e;
    }
    examples.push(example);
    options.onExample?.(example);
  }
  return examples;
}

/** What a GGUF file (a model or a vocabulary-only file) offers for tokenizing a dataset. */
export interface TokenizerFile {
  tokenizer: Tokenizer;
  /** `tokenizer.chat_template`, when the file has one. */
  chatTemplate?: string;
  /** `{architecture}.context_length`, when the file has it. */
  contextLength?: number;
}

/** Builds the tokenizer from a GGUF file's metadata; tensors are not read. */
export function readTokenizerFile(path: string): TokenizerFile {
  const header = readGgufHeader(path);
  const get = metadataGetter(header);
  let tokenizer: Tokenizer;
  try {
    tokenizer = Tokenizer.fromGgufMetadata(get);
  } catch (e) {
    if (e instanceof UserError) throw new UserError(`${path}: ${e.message}`);
    throw e;
  }
  const template = get("tokenizer.chat_template");
  const arch = get("general.architecture");
  const context = typeof arch === "string" ? get(`${arch}.context_length`) : undefined;
  const contextLength =
    typeof context === "number" || typeof context === "bigint" ? Number(context) : undefined;
  return {
    tokenizer,
    chatTemplate: typeof template === "string" && template.trim() !== "" ? template : undefined,
    contextLength:
      contextLength !== undefined && Number.isSafeInteger(contextLength) && contextLength > 0
        ? contextLength
        : undefined,
  };
}
