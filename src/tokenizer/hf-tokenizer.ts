/**
 * Hugging Face tokenizer.json / tokenizer_config.json to and from a TokenizerDescription (the
 * `tokenizer.ggml.*` keys).
 *
 * Two families are recognised:
 *  - SentencePiece-style BPE with byte fallback (Llama 1/2, Mistral, TinyLlama): model BPE with
 *    `byte_fallback`, "▁" for space. GGUF keeps scores instead of merges, so a piece made by merge
 *    number r scores -r: the best-ranked merge wins in both tokenizers. The other way, merges are
 *    every split of a piece into two pieces, ordered by the merged piece's score, as transformers
 *    builds them from a SentencePiece model.
 *  - byte-level BPE (GPT-2, Llama 3, Qwen 2): merges copied as they are; the pre-tokenizer name is
 *    chosen from the split regex the file declares (llama.cpp hashes a tokenization instead; the
 *    regex is what decides that tokenization, and no Python tokenizer runs here).
 */
import { UserError } from "../errors.js";
import type { TokenizerDescription } from "./index.js";
import { TokenType } from "./index.js";

/** Split regexes of the pre-tokenizers written in tokenizer.json, by tokenizer.ggml.pre name. */
const PRE_REGEX: Record<string, string> = {
  "llama-bpe":
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  qwen2:
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};

/** Canonical name of each family the tokenizer reads (aliases in pretokenize.ts). */
const PRE_CANONICAL: Record<string, string> = {
  default: "gpt-2",
  "gpt-2": "gpt-2",
  gpt2: "gpt-2",
  llama3: "llama-bpe",
  "llama-v3": "llama-bpe",
  "llama-bpe": "llama-bpe",
  qwen2: "qwen2",
};

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The pre-tokenizers of a tokenizer.json, flattened out of any Sequence. */
function preTokenizers(json: Json): Json[] {
  const out: Json[] = [];
  const walk = (p: unknown) => {
    if (!isObject(p)) return;
    if (p.type === "Sequence" && Array.isArray(p.pretokenizers)) for (const q of p.pretokenizers) walk(q);
    else out.push(p);
  };
  walk(json.pre_tokenizer);
  return out;
}

/** tokenizer.ggml.pre for a byte-level BPE tokenizer.json, from its split regex. */
function detectPre(file: string, json: Json): string {
  const parts = preTokenizers(json);
  const splits = parts.filter((p) => p.type === "Split");
  const byteLevel = parts.find((p) => p.type === "ByteLevel");
  if (!byteLevel)
    throw new UserError(`${file}: a BPE tokenizer without byte fallback needs a ByteLevel pre-tokenizer`);
  if (splits.length === 0 && byteLevel.use_regex !== false) return "gpt-2";
  if (splits.length === 1) {
    const pattern = (splits[0]!.pattern as Json | undefined)?.Regex;
    for (const [name, regex] of Object.entries(PRE_REGEX)) if (pattern === regex) return name;
  }
  throw new UserError(
    `${file}: the pre-tokenizer is not one convert knows (known: gpt-2, llama-bpe, qwen2 split regexes)`,
  );
}

/** Content of a special token as tokenizer_config.json gives it: a string or an AddedToken object. */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (isObject(v) && typeof v.content === "string") return v.content;
  return undefined;
}

export interface HfTokenizerFiles {
  /** Parsed tokenizer.json. */
  tokenizer: unknown;
  /** Parsed tokenizer_config.json, when the directory has one. */
  config?: unknown;
  /** Token ids config.json or generation_config.json give, used when tokenizer_config.json names none. */
  bosId?: number;
  eosId?: number;
  /** Name for messages ("dir/tokenizer.json"). */
  path: string;
}

/** Reads a tokenizer.json (and tokenizer_config.json) into the tokenizer's GGUF description. */
export function tokenizerFromHf(files: HfTokenizerFiles): TokenizerDescription {
  const file = files.path;
  const bad = (what: string): never => {
    throw new UserError(`${file}: ${what}`);
  };
  const json = isObject(files.tokenizer) ? files.tokenizer : bad("not a JSON object");
  const model = isObject(json.model) ? json.model : bad("has no model object");
  if (model.type !== "BPE")
    bad(`tokenizer model ${JSON.stringify(model.type)} is not supported yet (supported: BPE)`);
  const vocab = isObject(model.vocab) ? model.vocab : bad("model.vocab is not an object");
  const rawMerges = Array.isArray(model.merges) ? model.merges : bad("model.merges is not an array");

  // Ids: the vocabulary plus added tokens, with no gaps.
  const byId = new Map<number, string>();
  const put = (text: string, id: unknown) => {
    if (!Number.isSafeInteger(id) || (id as number) < 0 || (id as number) >= 1 << 24) {
      bad(`token ${JSON.stringify(text.slice(0, 40))} has id ${String(id)}`);
    }
    const prev = byId.get(id as number);
    if (prev !== undefined && prev !== text)
      bad(`id ${id} names both ${JSON.stringify(prev)} and ${JSON.stringify(text)}`);
    byId.set(id as number, text);
  };
  for (const [text, id] of Object.entries(vocab)) put(text, id);
  const special = new Set<number>();
  const userDefined = new Set<number>();
  for (const added of Array.isArray(json.added_tokens) ? json.added_tokens : []) {
    if (!isObject(added) || typeof added.content !== "string") bad("an added_tokens entry has no content");
    const a = added as Json;
    put(a.content as string, a.id);
    (a.special ? special : userDefined).add(a.id as number);
  }
  const n = byId.size;
  const tokens: string[] = new Array(n);
  for (const [id, text] of byId) {
    if (id >= n) bad(`token ids are not 0..${n - 1} (id ${id} is beyond)`);
    tokens[id] = text;
  }
  const idOf = new Map(tokens.map((t, i) => [t, i]));

  const merges: string[] = rawMerges.map((m, i) => {
    if (typeof m === "string") return m;
    if (Array.isArray(m) && m.length === 2 && typeof m[0] === "string" && typeof m[1] === "string")
      return `${m[0]} ${m[1]}`;
    return bad(`merge ${i} is neither "a b" nor ["a", "b"]`);
  });

  const cfg = isObject(files.config) ? files.config : {};
  // A padding token outside the vocabulary is dropped (some configs name one never added).
  const specialId = (key: string, fallback?: number): number | undefined => {
    const text = tokenContent(cfg[key]);
    if (text !== undefined) {
      const id = idOf.get(text);
      if (id === undefined && key !== "pad_token")
        bad(`tokenizer_config.json ${key} ${JSON.stringify(text)} is not in the vocabulary`);
      return id;
    }
    return fallback !== undefined && fallback >= 0 && fallback < n ? fallback : undefined;
  };
  const unkText = typeof model.unk_token === "string" ? model.unk_token : undefined;
  const unkId = unkText !== undefined ? idOf.get(unkText) : specialId("unk_token");
  const bosId = specialId("bos_token", files.bosId);
  const eosId = specialId("eos_token", files.eosId);
  const padId = specialId("pad_token");

  const types = new Int32Array(n).fill(TokenType.Normal);
  for (const id of userDefined) types[id] = TokenType.UserDefined;
  for (const id of special) types[id] = TokenType.Control;
  if (unkId !== undefined) types[unkId] = TokenType.Unknown;

  if (model.byte_fallback === true) {
    // SentencePiece-style: byte tokens, scores from merge ranks.
    const scores = new Float32Array(n).fill(-(merges.length + 1));
    for (let i = 0; i < n; i++) {
      if (/^<0x[0-9A-F]{2}>$/.test(tokens[i]!) && types[i] === TokenType.Normal) types[i] = TokenType.Byte;
    }
    for (let r = merges.length - 1; r >= 0; r--) {
      const id = idOf.get(merges[r]!.replace(" ", ""));
      if (id !== undefined) scores[id] = -r;
    }
    for (let i = 0; i < n; i++) if (types[i] !== TokenType.Normal) scores[i] = 0;
    return {
      model: "llama",
      tokens,
      scores,
      tokenTypes: types,
      bosId,
      eosId,
      unkId,
      padId,
      addBos: cfg.add_bos_token !== undefined ? cfg.add_bos_token === true : true,
      addEos: cfg.add_eos_token === true,
      addSpacePrefix: addsSpacePrefix(json),
    };
  }
  return {
    model: "gpt2",
    pre: detectPre(file, json),
    tokens,
    tokenTypes: types,
    merges,
    bosId,
    eosId,
    unkId,
    padId,
    addBos:
      cfg.add_bos_token !== undefined
        ? cfg.add_bos_token === true
        : postProcessorAddsBos(json, tokens, bosId),
    addEos: cfg.add_eos_token === true,
  };
}

/** Whether a SentencePiece-style tokenizer.json puts "▁" before the text (normalizer or Metaspace). */
function addsSpacePrefix(json: Json): boolean {
  const normalizers: Json[] = [];
  const walk = (p: unknown) => {
    if (!isObject(p)) return;
    if (p.type === "Sequence" && Array.isArray(p.normalizers)) for (const q of p.normalizers) walk(q);
    else normalizers.push(p);
  };
  walk(json.normalizer);
  if (normalizers.some((p) => p.type === "Prepend" && p.prepend === "\u2581")) return true;
  const meta = preTokenizers(json).find((p) => p.type === "Metaspace");
  if (meta)
    return meta.prepend_scheme !== undefined
      ? meta.prepend_scheme !== "never"
      : meta.add_prefix_space !== false;
  return false;
}

/** Whether a TemplateProcessing post-processor starts a single sequence with the BOS token. */
function postProcessorAddsBos(json: Json, tokens: string[], bosId: number | undefined): boolean {
  const pp = json.post_processor;
  if (bosId === undefined || !isObject(pp)) return false;
  const list: Json[] = pp.type === "Sequence" && Array.isArray(pp.processors) ? pp.processors : [pp];
  for (const p of list) {
    if (p.type !== "TemplateProcessing" || !Array.isArray(p.single)) continue;
    const first = p.single[0] as Json | undefined;
    const sp = isObject(first?.SpecialToken) ? first.SpecialToken : undefined;
    if (sp && sp.id === tokens[bosId]) return true;
  }
  return false;
}

/**
 * tokenizer.json and tokenizer_config.json for a description, in the form transformers' fast
 * tokenizers load (LlamaTokenizerFast for SentencePiece-style, PreTrainedTokenizerFast otherwise).
 */
export function tokenizerToHf(
  d: TokenizerDescription,
  options: { chatTemplate?: string; contextLength?: number } = {},
): { tokenizer: Json; config: Json } {
  const n = d.tokens.length;
  const type = (i: number) => (d.tokenTypes ? d.tokenTypes[i]! : TokenType.Normal);
  const vocab: Json = {};
  const added: Json[] = [];
  for (let i = 0; i < n; i++) {
    const t = type(i);
    vocab[d.tokens[i]!] = i;
    if (t === TokenType.Control || t === TokenType.UserDefined || t === TokenType.Unknown) {
      added.push({
        id: i,
        content: d.tokens[i],
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: t === TokenType.UserDefined,
        special: t !== TokenType.UserDefined,
      });
    }
  }
  const text = (id: number | undefined) => (id === undefined ? null : d.tokens[id]!);
  const bos = text(d.bosId);
  const eos = text(d.eosId);
  const single: Json[] = [];
  const pair: Json[] = [];
  if (d.addBos && bos !== null) {
    single.push({ SpecialToken: { id: bos, type_id: 0 } });
    pair.push({ SpecialToken: { id: bos, type_id: 0 } });
  }
  single.push({ Sequence: { id: "A", type_id: 0 } });
  pair.push({ Sequence: { id: "A", type_id: 0 } });
  if (d.addEos && eos !== null) {
    single.push({ SpecialToken: { id: eos, type_id: 0 } });
    pair.push({ SpecialToken: { id: eos, type_id: 0 } });
  }
  pair.push({ Sequence: { id: "B", type_id: 1 } });
  const specialTokens: Json = {};
  for (const id of [d.bosId, d.eosId]) {
    if (id !== undefined)
      specialTokens[d.tokens[id]!] = { id: d.tokens[id], ids: [id], tokens: [d.tokens[id]] };
  }
  const postProcessor = { type: "TemplateProcessing", single, pair, special_tokens: specialTokens };

  let tokenizer: Json;
  if (d.model === "llama") {
    const scores = d.scores ?? new Float32Array(n);
    const mergeList: [number, number, string][] = [];
    for (let i = 0; i < n; i++) {
      if (type(i) !== TokenType.Normal) continue;
      const piece = d.tokens[i]!;
      const chars = Array.from(piece);
      for (let k = 1; k < chars.length; k++) {
        const left = chars.slice(0, k).join("");
        const right = chars.slice(k).join("");
        const l = vocab[left] as number | undefined;
        const r = vocab[right] as number | undefined;
        if (
          l === undefined ||
          r === undefined ||
          type(l) === TokenType.Control ||
          type(r) === TokenType.Control
        )
          continue;
        mergeList.push([scores[i]!, i, `${left} ${right}`]);
      }
    }
    mergeList.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    const prefix = d.addSpacePrefix ?? true;
    tokenizer = {
      version: "1.0",
      truncation: null,
      padding: null,
      added_tokens: added,
      normalizer: {
        type: "Sequence",
        normalizers: [
          ...(prefix ? [{ type: "Prepend", prepend: "\u2581" }] : []),
          { type: "Replace", pattern: { String: " " }, content: "\u2581" },
        ],
      },
      pre_tokenizer: null,
      post_processor: postProcessor,
      decoder: {
        type: "Sequence",
        decoders: [
          { type: "Replace", pattern: { String: "\u2581" }, content: " " },
          { type: "ByteFallback" },
          { type: "Fuse" },
          ...(prefix ? [{ type: "Strip", content: " ", start: 1, stop: 0 }] : []),
        ],
      },
      model: {
        type: "BPE",
        dropout: null,
        unk_token: text(d.unkId),
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: true,
        byte_fallback: true,
        ignore_merges: false,
        vocab,
        merges: mergeList.map((m) => m[2]),
      },
    };
  } else {
    const pre = PRE_CANONICAL[d.pre ?? "default"];
    if (!pre)
      throw new UserError(`tokenizer.ggml.pre "${d.pre}": no tokenizer.json pre-tokenizer is known for it`);
    const byteLevel = {
      type: "ByteLevel",
      add_prefix_space: false,
      trim_offsets: true,
      use_regex: pre === "gpt-2",
    };
    tokenizer = {
      version: "1.0",
      truncation: null,
      padding: null,
      added_tokens: added,
      normalizer: null,
      pre_tokenizer:
        pre === "gpt-2"
          ? byteLevel
          : {
              type: "Sequence",
              pretokenizers: [
                { type: "Split", pattern: { Regex: PRE_REGEX[pre] }, behavior: "Isolated", invert: false },
                byteLevel,
              ],
            },
      post_processor: postProcessor,
      decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: {
        type: "BPE",
        dropout: null,
        unk_token: text(d.unkId),
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: false,
        byte_fallback: false,
        ignore_merges: pre === "llama-bpe",
        vocab,
        merges: [...(d.merges ?? [])],
      },
    };
  }
  const config: Json = {
    tokenizer_class: d.model === "llama" ? "LlamaTokenizerFast" : "PreTrainedTokenizerFast",
    bos_token: bos,
    eos_token: eos,
    unk_token: text(d.unkId),
    pad_token: text(d.padId),
    add_bos_token: d.addBos,
    add_eos_token: d.addEos,
    clean_up_tokenization_spaces: false,
    model_max_length: options.contextLength ?? 2048,
  };
  if (d.model === "llama") config.legacy = false;
  if (options.chatTemplate !== undefined) config.chat_template = options.chatTemplate;
  return { tokenizer, config };
}

/**
 * A tokenizer.model's description with what the directory's JSON files add: added tokens
 * (tokenizer.json's added_tokens, else tokenizer_config.json's added_tokens_decoder) appended or
 * re-typed as control / user-defined, and the special tokens and BOS/EOS flags of
 * tokenizer_config.json.
 */
export function withHfSpecials(d: TokenizerDescription, files: HfTokenizerFiles): TokenizerDescription {
  const file = files.path;
  const tokens = [...d.tokens];
  const types = Array.from({ length: tokens.length }, (_, i) => d.tokenTypes?.[i] ?? TokenType.Normal);
  const scores = Array.from({ length: tokens.length }, (_, i) => d.scores?.[i] ?? 0);
  const cfg = isObject(files.config) ? files.config : {};
  const added: [number, string, boolean][] = [];
  const fromJson =
    isObject(files.tokenizer) && Array.isArray(files.tokenizer.added_tokens)
      ? files.tokenizer.added_tokens
      : undefined;
  if (fromJson) {
    for (const a of fromJson)
      if (isObject(a)) added.push([a.id as number, a.content as string, a.special === true]);
  } else if (isObject(cfg.added_tokens_decoder)) {
    for (const [id, a] of Object.entries(cfg.added_tokens_decoder)) {
      if (isObject(a)) added.push([Number(id), a.content as string, a.special === true]);
    }
  }
  added.sort((a, b) => a[0] - b[0]);
  for (const [id, content, special] of added) {
    if (!Number.isSafeInteger(id) || id < 0 || typeof content !== "string") {
      throw new UserError(`${file}: an added token has id ${id} and content ${JSON.stringify(content)}`);
    }
    if (id === tokens.length) {
      tokens.push(content);
      scores.push(0);
      types.push(special ? TokenType.Control : TokenType.UserDefined);
    } else if (id < tokens.length) {
      if (tokens[id] !== content) {
        throw new UserError(
          `${file}: added token ${id} ${JSON.stringify(content)} is ${JSON.stringify(tokens[id])} in tokenizer.model`,
        );
      }
      if (types[id] === TokenType.Normal) types[id] = special ? TokenType.Control : TokenType.UserDefined;
    } else {
      throw new UserError(`${file}: added token id ${id} leaves a gap after the ${tokens.length} tokens`);
    }
  }
  const idOf = (key: string, fallback: number | undefined): number | undefined => {
    const text = tokenContent(cfg[key]);
    if (text === undefined) return fallback;
    const id = tokens.indexOf(text);
    if (id < 0 && key === "pad_token") return fallback;
    if (id < 0)
      throw new UserError(
        `${file}: tokenizer_config.json ${key} ${JSON.stringify(text)} is not in the vocabulary`,
      );
    return id;
  };
  return {
    ...d,
    tokens,
    scores: Float32Array.from(scores),
    tokenTypes: Int32Array.from(types),
    bosId: idOf("bos_token", d.bosId),
    eosId: idOf("eos_token", d.eosId),
    unkId: idOf("unk_token", d.unkId),
    padId: idOf("pad_token", d.padId),
    addBos: typeof cfg.add_bos_token === "boolean" ? cfg.add_bos_token : d.addBos,
    addEos: typeof cfg.add_eos_token === "boolean" ? cfg.add_eos_token : d.addEos,
  };
}
