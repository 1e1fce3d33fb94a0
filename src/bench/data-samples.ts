// Seeded inputs for the data bench: a ShareGPT dump with the flaws real ones have, instruction
// sentences built from a shared vocabulary (so that many pairs come close in ROUGE-L), and
// self-instruct replies in the numbered format. The same seed gives the same bytes.
import { closeSync, openSync, writeSync } from "node:fs";
import { formatTask, type InstructionTask } from "../data/instruction-filters.js";
import { Rng } from "../util/random.js";

// ---------------------------------------------------------------------------------------------
// Words

const FUNCTION_WORDS =
  "the of and to a in is it that for you with on as are be this can by or from at an your if not will more which have all one their they we its when also use there how so each other these some what but about do into than may them then only most like over such many time make first well way new because any both very just while after before where should could would between through without".split(
    " ",
  );

const CONTENT_WORDS =
  "system data model function value user process example number result problem method code team project market customer product service price cost energy water health food travel city country history science research study student teacher school book story language word question answer idea plan goal step business company money budget report email meeting schedule design feature test error server network database query table list string array object class module package version update change support security password account message request response client browser page website content article title summary review feedback quality performance speed memory file record field type format tool library framework application device phone computer software hardware program script command option setting config build release deploy cloud cluster node image video audio music game sport team player coach season weather climate forest river ocean mountain garden plant animal bird tree flower recipe kitchen dinner breakfast coffee tea bread cheese fruit vegetable exercise sleep stress habit routine morning evening weekend holiday friend family child parent house room office window door street car train flight hotel museum art painting poem novel film character scene chapter author reader writer editor line paragraph sentence grammar tone style voice argument reason evidence theory law rule policy government election economy inflation interest loan tax income salary career job interview resume skill experience training course lesson exam grade university degree research paper journal source reference quote definition concept principle strategy analysis risk benefit advantage problem solution approach option choice decision priority deadline task list item order size level rate percent average total share growth trend pattern signal noise sample group category label score rank".split(
    " ",
  );

const SYLLABLES =
  "ka ro ven tal mi sho dra pel qui nor ba zi lu fen tor ga wes ri do ham cy bel tis mor ne ul os ap tri kle vo sar gin pa bre lo sem yu fla dor".split(
    " ",
  );

/** Words drawn by a Zipf law over a fixed list: common words often, a long tail of rare made-up ones. */
class WordSource {
  readonly words: string[];
  private readonly cumulative: Float64Array;

  constructor(seed: number, tail = 20_000) {
    const rng = new Rng(seed);
    const made = new Set<string>();
    while (made.size < tail) {
      const n = 2 + rng.nextInt(3);
      let w = "";
      for (let i = 0; i < n; i++) w += SYLLABLES[rng.nextInt(SYLLABLES.length)];
      made.add(w);
    }
    this.words = [...FUNCTION_WORDS, ...new Set(CONTENT_WORDS), ...made];
    this.cumulative = new Float64Array(this.words.length);
    let sum = 0;
    for (let r = 0; r < this.words.length; r++) {
      sum += 1 / (r + 2.7);
      this.cumulative[r] = sum;
    }
  }

  word(rng: Rng): string {
    return this.draw(rng, 0);
  }

  /** A word drawn as by `word`, but never a function word. */
  content(rng: Rng): string {
    return this.draw(rng, FUNCTION_WORDS.length);
  }

  /** A word of rank `first` or later, with probability proportional to its weight. */
  private draw(rng: Rng, first: number): string {
    const c = this.cumulative;
    const from = first > 0 ? c[first - 1]! : 0;
    const x = from + rng.nextFloat() * (c[c.length - 1]! - from);
    let lo = first;
    let hi = c.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (c[mid]! < x) lo = mid + 1;
      else hi = mid;
    }
    return this.words[lo]!;
  }

  /** A made-up rare word, for identifiers and ids. */
  rare(rng: Rng): string {
    return this.words[FUNCTION_WORDS.length + CONTENT_WORDS.length + rng.nextInt(10_000)]!;
  }

  sentence(rng: Rng, end = "."): string {
    const n = 6 + rng.nextInt(17);
    const words: string[] = [];
    for (let i = 0; i < n; i++) {
      words.push(this.word(rng));
      if (i > 2 && i < n - 2 && rng.nextFloat() < 0.06) words[i] += ",";
    }
    const s = words.join(" ");
    return s[0]!.toUpperCase() + s.slice(1) + end;
  }

  paragraph(rng: Rng, sentences = 2 + rng.nextInt(5)): string {
    return Array.from({ length: sentences }, () => this.sentence(rng)).join(" ");
  }
}

// ---------------------------------------------------------------------------------------------
// Assistant replies: markdown, or the HTML of a rendered chat answer as ShareGPT scraped it

type Block =
  | { kind: "paragraph"; text: string }
  | { kind: "list"; ordered: boolean; items: string[] }
  | { kind: "code"; language: string; lines: string[] };

function codeLines(words: WordSource, rng: Rng, language: string): string[] {
  const name = () => words.rare(rng);
  const n = 3 + rng.nextInt(10);
  const lines: string[] = [];
  if (language === "python") {
    lines.push(`def ${name()}(${name()}, ${name()}):`);
    for (let i = 0; i < n; i++) {
      const pick = rng.nextInt(3);
      if (pick === 0) lines.push(`    ${name()} = ${name()}(${name()}, ${rng.nextInt(100)})`);
      else if (pick === 1) lines.push(`    if ${name()} > ${rng.nextInt(1000)}:\n        return ${name()}`);
      else lines.push(`    print(f"${words.word(rng)} {${name()}}")`);
    }
    lines.push(`    return ${name()}`);
  } else {
    lines.push(`function ${name()}(${name()}, ${name()}) {`);
    for (let i = 0; i < n; i++) {
      const pick = rng.nextInt(3);
      if (pick === 0) lines.push(`  const ${name()} = ${name()}.${name()}(${rng.nextInt(100)});`);
      else if (pick === 1) lines.push(`  if (${name()} > ${rng.nextInt(1000)}) return ${name()};`);
      else lines.push(`  console.log("${words.word(rng)}", ${name()});`);
    }
    lines.push("}");
  }
  return lines;
}

function replyBlocks(words: WordSource, rng: Rng, scale: number): Block[] {
  const blocks: Block[] = [{ kind: "paragraph", text: words.paragraph(rng) }];
  const n = Math.max(1, Math.round((1 + rng.nextInt(4)) * scale));
  for (let i = 0; i < n; i++) {
    const pick = rng.nextFloat();
    if (pick < 0.55) blocks.push({ kind: "paragraph", text: words.paragraph(rng) });
    else if (pick < 0.85) {
      const items = Array.from({ length: 2 + rng.nextInt(5) }, () => words.sentence(rng));
      blocks.push({ kind: "list", ordered: rng.nextFloat() < 0.5, items });
    } else {
      const language = rng.nextFloat() < 0.5 ? "python" : "javascript";
      blocks.push({ kind: "code", language, lines: codeLines(words, rng, language) });
    }
  }
  return blocks;
}

function markdownReply(blocks: Block[]): string {
  return blocks
    .map((b) => {
      if (b.kind === "paragraph") return b.text;
      if (b.kind === "list") return b.items.map((t, i) => `${b.ordered ? `${i + 1}.` : "-"} ${t}`).join("\n");
      return `\`\`\`${b.language}\n${b.lines.join("\n")}\n\`\`\``;
    })
    .join("\n\n");
}

const escapeHtml = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** A word or two of a paragraph in <code> or <strong>, as rendered answers have. */
function inlineHtml(text: string, rng: Rng): string {
  const words = escapeHtml(text).split(" ");
  if (words.length > 4 && rng.nextFloat() < 0.4) {
    const at = 1 + rng.nextInt(words.length - 2);
    words[at] = rng.nextFloat() < 0.5 ? `<code>${words[at]}</code>` : `<strong>${words[at]}</strong>`;
  }
  return words.join(" ");
}

function htmlReply(blocks: Block[], rng: Rng): string {
  const body = blocks
    .map((b) => {
      if (b.kind === "paragraph") return `<p>${inlineHtml(b.text, rng)}</p>`;
      if (b.kind === "list") {
        const tag = b.ordered ? "ol" : "ul";
        return `<${tag}>${b.items.map((t) => `<li>${inlineHtml(t, rng)}</li>`).join("")}</${tag}>`;
      }
      const code = b.lines
        .map(escapeHtml)
        .join("\n")
        .replace(/\b(def|return|if|const|function)\b/g, '<span class="hljs-keyword">$1</span>');
      return (
        '<pre><div class="bg-black mb-4 rounded-md"><div class="flex items-center relative text-gray-200 bg-gray-800 px-4 py-2 text-xs font-sans">' +
        `<span class="">${b.language}</span><button class="flex ml-auto gap-2"><svg stroke="currentColor" fill="none" stroke-width="2" viewBox="0 0 24 24" class="h-4 w-4"><path d="M16 4h2a2 2 0 0 1 2 2v14a2 2 0 0 1-2 2H6a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2h2"></path></svg>Copy code</button></div>` +
        `<div class="p-4 overflow-y-auto"><code class="!whitespace-pre hljs language-${b.language}">${code}\n</code></div></div></pre>`
      );
    })
    .join("");
  return `<div class="markdown prose w-full break-words dark:prose-invert light">${body}</div>`;
}

// ---------------------------------------------------------------------------------------------
// ShareGPT

/** What a generated ShareGPT file holds, by the fate cleaning and dedup should give each record. */
export interface ShareGptPlan {
  bytes: number;
  conversations: number;
  /** Copies of an earlier conversation (another id): cleaning drops them as duplicates. */
  exactDuplicates: number;
  /** An earlier conversation's user turns in other case and punctuation, with new replies: cleaning keeps them, dedup drops them. */
  nearDuplicates: number;
  /** Two user turns in a row, or a system turn in the middle. */
  badOrder: number;
  /** No turns, a lone user or assistant turn, or a blank first turn. */
  empty: number;
  /** Kept after cutting a leading assistant turn. */
  leadingAssistant: number;
  /** Kept after cutting a trailing user turn. */
  trailingUser: number;
  /** Conversations of 30 to 60 turn pairs. */
  long: number;
  /** HTML assistant turns in the conversations cleaning keeps (each is converted to markdown). */
  htmlTurns: number;
}

interface Turn {
  from: "human" | "gpt" | "system";
  value: string;
}

/** Records cleaning keeps as they are; the sources of duplicates. */
const RECENT_SOURCES = 256;

/**
 * Writes a ShareGPT dump of about `bytes` bytes to `path` as one JSON array (a conversation per
 * line, as the public dumps are): replies in HTML for most conversations and markdown for the
 * rest, with exact and near duplicates, out-of-order, empty and long conversations mixed in.
 */
export function writeShareGptFile(path: string, bytes: number, seed = 1): ShareGptPlan {
  const rng = new Rng(seed);
  const words = new WordSource(seed ^ 0x5eed);
  const plan: ShareGptPlan = {
    bytes: 0,
    conversations: 0,
    exactDuplicates: 0,
    nearDuplicates: 0,
    badOrder: 0,
    empty: 0,
    leadingAssistant: 0,
    trailingUser: 0,
    long: 0,
    htmlTurns: 0,
  };
  const recent: Turn[][] = [];
  const question = () => {
    const n = 1 + rng.nextInt(3);
    const text = Array.from({ length: n }, (_, i) => words.sentence(rng, i === n - 1 ? "?" : ".")).join(" ");
    return rng.nextFloat() < 0.1 ? `${text}\n\n${markdownReply(replyBlocks(words, rng, 0.5))}` : text;
  };
  const pairs = (count: number, html: boolean, scale = 1): Turn[] => {
    const turns: Turn[] = [];
    for (let i = 0; i < count; i++) {
      const blocks = replyBlocks(words, rng, scale);
      turns.push({ from: "human", value: question() });
      turns.push({ from: "gpt", value: html ? htmlReply(blocks, rng) : markdownReply(blocks) });
    }
    return turns;
  };
  const htmlCount = (turns: Turn[]) =>
    turns.filter((t) => t.from === "gpt" && t.value.startsWith("<div")).length;

  const fd = openSync(path, "w");
  let chunk = "[\n";
  const flush = () => {
    plan.bytes += Buffer.byteLength(chunk);
    writeSync(fd, chunk);
    chunk = "";
  };
  try {
    while (plan.bytes + chunk.length < bytes) {
      const html = rng.nextFloat() < 0.7;
      const pick = rng.nextFloat();
      let turns: Turn[];
      if (pick < 0.04 && recent.length > 0) {
        turns = recent[rng.nextInt(recent.length)]!;
        plan.exactDuplicates++;
      } else if (pick < 0.08 && recent.length > 0) {
        // The same questions asked again (other case and punctuation), answered anew. Each source
        // is used once, so no two near duplicates are identical.
        const source = recent.splice(rng.nextInt(recent.length), 1)[0]!;
        const first = source.findIndex((t) => t.from === "human");
        turns = source.map((t, i) => {
          if (t.from === "gpt") return { from: "gpt", value: markdownReply(replyBlocks(words, rng, 1)) };
          return i === first ? { from: "human", value: resurface(t.value) } : t;
        });
        plan.nearDuplicates++;
      } else if (pick < 0.1) {
        turns = pairs(1 + rng.nextInt(3), html);
        if (rng.nextFloat() < 0.5) turns.splice(1, 0, { from: "human", value: question() });
        else turns.splice(2, 0, { from: "system", value: words.sentence(rng) });
        plan.badOrder++;
      } else if (pick < 0.11) {
        const kind = rng.nextInt(4);
        const one = pairs(1, html);
        turns =
          kind === 0
            ? []
            : kind === 1
              ? [one[0]!]
              : kind === 2
                ? [one[1]!]
                : [{ from: "human", value: "  " }, ...one];
        plan.empty++;
      } else if (pick < 0.13) {
        turns = [...pairs(1, html).slice(1), ...pairs(1 + rng.nextInt(3), html)];
        plan.leadingAssistant++;
        plan.htmlTurns += htmlCount(turns);
      } else if (pick < 0.15) {
        turns = [...pairs(1 + rng.nextInt(3), html), { from: "human", value: question() }];
        plan.trailingUser++;
        plan.htmlTurns += htmlCount(turns);
      } else if (pick < 0.153) {
        turns = pairs(30 + rng.nextInt(31), html, 1.5);
        plan.long++;
        plan.htmlTurns += htmlCount(turns);
      } else {
        turns = pairs(1 + Math.min(rng.nextInt(6), rng.nextInt(6)), html);
        if (rng.nextFloat() < 0.03) turns.unshift({ from: "system", value: words.sentence(rng) });
        recent.push(turns);
        if (recent.length > RECENT_SOURCES) recent.splice(rng.nextInt(recent.length), 1);
        plan.htmlTurns += htmlCount(turns);
      }
      const id = `${words.rare(rng)}${rng.nextInt(1e6).toString(36)}_${rng.nextInt(4)}`;
      chunk += `${plan.conversations > 0 ? ",\n" : ""}${JSON.stringify({ id, conversations: turns })}`;
      plan.conversations++;
      if (chunk.length > 1 << 20) flush();
    }
    chunk += "\n]\n";
    flush();
  } finally {
    closeSync(fd);
  }
  return plan;
}

/** The same words in other case and punctuation. */
function resurface(text: string): string {
  const lower = text[0]!.toLowerCase() + text.slice(1);
  return /[?.]$/.test(lower) ? lower.slice(0, -1) : `${lower}?`;
}

// ---------------------------------------------------------------------------------------------
// Instructions

const WRITE_VERBS = "Write|Compose|Draft|Create|Generate|Give me|Produce|Come up with".split("|");
const LIST_VERBS = "List|Give|Suggest|Name|Brainstorm|Propose|Recommend|Share|Offer|Collect".split("|");
const EXPLAIN_VERBS =
  "Explain|Describe|Summarize|Outline|Clarify|Analyze|Discuss|Illustrate|Show|Evaluate".split("|");
const HOW_QUESTIONS = "How can|How should|Why do|Why would|When should|Where can|How often should".split("|");
const CONNECTIVES = "when working with|without|during|while using|despite|after|before adopting".split("|");
const WHY_QUESTIONS = "Why is|Is|How is|When is|Why might|In what way is|Why has".split("|");
const QUALITIES =
  "important|risky|useful|expensive|popular|difficult|overlooked|growing|controversial|confusing|valuable|fragile".split(
    "|",
  );
const PREPOSITIONS = "about|on|for|related to|involving|inspired by".split("|");
const FORMS =
  "story|poem|essay|email|summary|speech|review|article|letter|tweet|dialogue|headline|slogan|recipe|plan|checklist|product description|blog post|cover letter|limerick|haiku|news report|job posting|lesson plan|riddle|toast|apology|invitation|motto|biography".split(
    "|",
  );
const ADJECTIVES =
  "short|funny|formal|persuasive|simple|detailed|friendly|sad|hopeful|clear|polite|creative|brief|serious|playful|thoughtful|dramatic|cheerful|honest|practical|modern|classic|gentle|bold|quiet|strange|surprising|warm|curious|calm".split(
    "|",
  );
const TOPIC_ADJECTIVES =
  "urban|remote|ancient|digital|local|renewable|public|small|rural|online|healthy|global|personal|modern|early|quantum|coastal|medieval|electric|social|financial|mental|sustainable|competitive|domestic|wild|open|frozen|tropical|industrial|artificial|volunteer|seasonal|private|national|family|classical|minimal|autonomous|endangered".split(
    "|",
  );
const TOPIC_FRAMES =
  "the future of|the history of|the role of|the cost of|the ethics of|the science of".split("|");
const AUDIENCES =
  "beginners|students|parents|retirees|nurses|engineers|teachers|new managers|small business owners|travelers|athletes|writers|volunteers|teenagers|designers|farmers|shop owners|scientists|gamers|musicians|night owls|busy families|first-time voters|remote workers|city planners".split(
    "|",
  );
const GOAL_VERBS =
  "improve|organize|protect|plan|grow|explain|budget for|clean up|share|measure|document|simplify|repair|promote|test|choose|compare|understand".split(
    "|",
  );
const TAILS = [
  "",
  "",
  "",
  " in under 100 words",
  " using simple words",
  " for a school newsletter",
  " with one concrete example",
  " in three sentences",
  " without technical terms",
  " for a company blog",
  " as if talking to a friend",
  " in a numbered list",
  " with a catchy title",
  " that a ten-year-old could follow",
  " in the second person",
  " and end with a question",
];
const THINGS =
  "tips|ideas|questions|reasons|mistakes|habits|steps|examples|facts|rules|names|activities|exercises|strategies|tools|books".split(
    "|",
  );
const COUNTS = "two|three|four|five|six|seven|ten".split("|");
const MATERIALS =
  "paragraph|sentence|email|poem|list of numbers|product review|news headline|recipe|list of words|set of instructions|dialogue|tweet|job description|short story|quotation".split(
    "|",
  );
const MANNERS =
  "in a more formal tone|for a young child|in fewer words|in the passive voice|as a bulleted list|in a friendly tone|without any jargon|in the style of a pirate|as a single sentence|in plain English|with more vivid verbs|from the reader's point of view".split(
    "|",
  );
const TRANSFORMS = "Rewrite|Summarize|Classify|Translate|Correct|Shorten|Expand|Paraphrase|Sort|Edit".split(
  "|",
);

/**
 * Instruction sentences of the kinds self-instruct collects (writing, advice, questions,
 * rewriting, comparison), from small word pools, so that many pairs share most of their words and
 * a ROUGE-L filter has real work: the same structure with two or three slots changed.
 */
/** Instructions that follow no template. */
const FREE_FORM_SHARE = 0.6;

export class InstructionMaker {
  private readonly rng: Rng;
  private readonly words: WordSource;

  constructor(seed: number) {
    this.rng = new Rng(seed);
    this.words = new WordSource(seed ^ 0x2b1d);
  }

  private pick(list: readonly string[]): string {
    return list[this.rng.nextInt(list.length)]!;
  }

  /** A content word: a common one (uniformly) or, one time in three, one of the rare made-up ones. */
  private word(): string {
    return this.rng.nextFloat() < 0.33 ? this.words.rare(this.rng) : this.pick(CONTENT_WORDS);
  }

  private topic(): string {
    const t = `${this.pick(TOPIC_ADJECTIVES)} ${this.word()}`;
    return this.rng.nextFloat() < 0.3 ? `${this.pick(TOPIC_FRAMES)} ${t}` : t;
  }

  private goal(): string {
    return `${this.pick(GOAL_VERBS)} their ${this.word()}`;
  }

  /** An opener and a few words as running text draws them (function words included), then maybe a tail. */
  private freeForm(): string {
    const words = Array.from({ length: 4 + this.rng.nextInt(8) }, () => this.words.word(this.rng));
    const question = this.rng.nextFloat() < 0.3;
    const opener = this.pick(question ? HOW_QUESTIONS : [...EXPLAIN_VERBS, ...LIST_VERBS, ...WRITE_VERBS]);
    return `${opener} ${words.join(" ")}${question ? "?" : `${this.pick(TAILS)}.`}`;
  }

  instruction(): string {
    if (this.rng.nextFloat() < FREE_FORM_SHARE) return this.freeForm();
    const tail = this.pick(TAILS);
    switch (this.rng.nextInt(7)) {
      case 0:
        return `${this.pick(WRITE_VERBS)} a ${this.pick(ADJECTIVES)} ${this.pick(FORMS)} about ${this.topic()}${tail}.`;
      case 1:
        return `${this.pick(LIST_VERBS)} ${this.pick(COUNTS)} ${this.pick(THINGS)} ${this.pick(PREPOSITIONS)} ${this.topic()} for ${this.pick(AUDIENCES)}${tail}.`;
      case 2:
        return `${this.pick(HOW_QUESTIONS)} ${this.pick(AUDIENCES)} ${this.goal()} ${this.pick(CONNECTIVES)} ${this.topic()}?`;
      case 3:
        return `${this.pick(TRANSFORMS)} the following ${this.pick(MATERIALS)} about ${this.word()} ${this.pick(MANNERS)}.`;
      case 4:
        return `${this.pick(EXPLAIN_VERBS)} the difference between ${this.topic()} and ${this.topic()}${tail}.`;
      case 5:
        return `${this.pick(WHY_QUESTIONS)} ${this.topic()} ${this.pick(QUALITIES)} for ${this.pick(AUDIENCES)}?`;
      default:
        return `${this.pick(EXPLAIN_VERBS)} how ${this.topic()} could help ${this.pick(AUDIENCES)} ${this.goal()}${tail}.`;
    }
  }
}

/**
 * `count` self-instruct replies in the numbered format (`N. Instruction:` / `N. Input:` /
 * `N. Output:`, `###` between tasks), each with tasks `firstNumber`..`lastNumber`: instructions from
 * an InstructionMaker, outputs of a few sentences, an input for some; one task in ten names a
 * blacklisted word (asks about an image) as teachers now and then do.
 */
export function selfInstructReplies(
  count: number,
  firstNumber: number,
  lastNumber: number,
  seed = 1,
): string[] {
  const rng = new Rng(seed);
  const words = new WordSource(seed ^ 0x7a5c);
  const maker = new InstructionMaker(seed ^ 0x1d57);
  const replies: string[] = [];
  for (let r = 0; r < count; r++) {
    const tasks: string[] = [];
    for (let n = firstNumber; n <= lastNumber; n++) {
      const task: InstructionTask = {
        instruction:
          rng.nextFloat() < 0.1
            ? `Describe the image of ${words.sentence(rng).toLowerCase()}`
            : maker.instruction(),
        input: rng.nextFloat() < 0.35 ? words.paragraph(rng, 1 + rng.nextInt(3)) : "",
        output: words.paragraph(rng, 2 + rng.nextInt(4)),
      };
      tasks.push(formatTask(task, n));
    }
    replies.push(`${tasks.join("\n###\n")}\n`);
  }
  return replies;
}
