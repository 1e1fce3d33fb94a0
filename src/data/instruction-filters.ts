/**
 * The prompt that asks a teacher for new tasks, the parser of its replies, and the filters a
 * generated task must pass before it is kept: the self-instruct recipe as Stanford Alpaca ran it
 * (the facts carried over: the reply format, the word blacklist, the length and punctuation checks,
 * ROUGE-L below 0.7 against every kept instruction).
 */

/** One instruction-following example, as Alpaca data holds it ("" input when there is none). */
export interface InstructionTask {
  instruction: string;
  input: string;
  output: string;
}

// ---------------------------------------------------------------------------------------------
// The prompt

/** Marks a task with no input, in the prompt and in replies. */
export const NO_INPUT = "<noinput>";

/** One task in the numbered reply format. */
export function formatTask(task: InstructionTask, n: number): string {
  const input = task.input.trim() === "" ? NO_INPUT : task.input.trim();
  return `${n}. Instruction: ${task.instruction.trim()}\n${n}. Input:\n${input}\n${n}. Output:\n${task.output.trim()}`;
}

/**
 * The request for a batch: the rules, the format, `examples` as tasks 1..k, and the ask to go on
 * up to task `total`.
 */
export function selfInstructPrompt(examples: readonly InstructionTask[], total: number): string {
  const k = examples.length;
  const lines = [
    `You are helping to build a training set that teaches a language model to follow instructions. Write a list of ${total} varied tasks; each has an instruction, an optional input, and an output.`,
    "",
    "Rules for the tasks:",
    "1. Vary the kind of task: open questions, classification, rewriting, summarizing, extraction, brainstorming, arithmetic, reasoning, short programs, explanations, advice, and more.",
    "2. Vary the wording too: some instructions ask a question, some give a command; do not start them all with the same verb.",
    "3. A language model must be able to do each task with text alone: nothing that needs seeing or hearing something, opening a document, browsing, or acting in the world.",
    "4. Write in English. An instruction is one or two sentences.",
    `5. When a task needs material to work on (a paragraph to summarize, a list to sort, a sentence to correct), put real, specific material in the input, not a placeholder. Otherwise the input is exactly ${NO_INPUT}.`,
    "6. The output is a correct, complete answer to the instruction and its input, at most about 100 words when the task allows.",
    "",
    "Write every task in exactly this format and put a line with ### between tasks:",
    "",
    "N. Instruction: the instruction",
    "N. Input:",
    `the input or ${NO_INPUT}`,
    "N. Output:",
    "the output",
    "",
    `Here are tasks 1 to ${k}. Reply with tasks ${k + 1} to ${total} only, in the same format.`,
    "",
    examples.map((task, i) => formatTask(task, i + 1)).join("\n###\n"),
    "###",
  ];
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------
// Parsing a reply

/**
 * A field marker at the start of a line: `3. Instruction:`, also with markdown decoration
 * (`**3. Instruction:**`, `### 3. Input:`) or `3)`.
 */
const FIELD_MARKER =
  /^[ \t]*(?:#{1,6}[ \t]*)?(?:[*_]{1,2})?[ \t]*(\d+)[ \t]*[.):][ \t]*(?:[*_]{1,2})?(instruction|input|output)[ \t]*(?:[*_]{1,2})?[ \t]*:[ \t]*(?:[*_]{1,2}(?!\S*[*_]))?/gim;

/** Tasks in a teacher's reply: the numbered format, or a JSON array of {instruction, input, output}. */
export function parseTasks(reply: string): InstructionTask[] {
  const text = reply.replace(/\r\n?/g, "\n");
  const json = parseJsonTasks(text);
  if (json !== undefined && json.length > 0) return json;
  return parseNumberedTasks(text);
}

function cleanField(s: string): string {
  // Separator lines and a dangling separator go; so does markdown bold around the whole field.
  let t = s
    .split("\n")
    .filter((line) => !/^\s*#{3,}\s*$/.test(line))
    .join("\n")
    .trim();
  t = t.replace(/\n?#{3,}\s*$/, "").trim();
  const bold = /^\*\*([\s\S]*)\*\*$/.exec(t);
  if (bold && !bold[1]!.includes("**")) t = bold[1]!.trim();
  return t;
}

function normalizeInput(s: string): string {
  const t = s.trim();
  return /^<\s*no\s*-?\s*input\s*>$/i.test(t) || /^(n\/a|none)\.?$/i.test(t) ? "" : t;
}

function parseNumberedTasks(text: string): InstructionTask[] {
  const markers = [...text.matchAll(FIELD_MARKER)];
  const tasks: InstructionTask[] = [];
  let current: { n: string; instruction?: string; input?: string; output?: string } | undefined;
  const flush = () => {
    if (current?.instruction !== undefined && current.output !== undefined) {
      tasks.push({
        instruction: current.instruction,
        input: normalizeInput(current.input ?? ""),
        output: current.output,
      });
    }
    current = undefined;
  };
  for (let i = 0; i < markers.length; i++) {
    const m = markers[i]!;
    const n = m[1]!;
    const field = m[2]!.toLowerCase() as "instruction" | "input" | "output";
    const end = i + 1 < markers.length ? markers[i + 1]!.index! : text.length;
    const value = cleanField(text.slice(m.index! + m[0].length, end));
    if (field === "instruction") {
      flush();
      current = { n, instruction: value };
      continue;
    }
    if (current === undefined || current.n !== n) {
      // An input or output with no instruction of its own number: the reply skipped the first
      // marker (the instruction is the text before it) or the numbering broke; start afresh.
      flush();
      const before = i === 0 ? cleanField(text.slice(0, m.index!)) : "";
      current = { n, instruction: before !== "" ? before : undefined };
    }
    if (current[field] === undefined) current[field] = value;
  }
  flush();
  return tasks;
}

/** Tasks from a JSON array in the reply (fenced or bare), or undefined when there is none. */
function parseJsonTasks(text: string): InstructionTask[] | undefined {
  const fenced = /```(?:json)?\s*\n([\s\S]*?)```/i.exec(text);
  const body = (fenced ? fenced[1]! : text).trim();
  const start = body.search(/[[{]/);
  if (start < 0) return undefined;
  const end = Math.max(body.lastIndexOf("]"), body.lastIndexOf("}"));
  if (end <= start) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(body.slice(start, end + 1));
  } catch {
    return undefined;
  }
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    // {"tasks": [...]} or any object holding one array.
    const arrays = Object.values(value).filter(Array.isArray);
    value = arrays.length === 1 ? arrays[0] : undefined;
  }
  if (!Array.isArray(value)) return undefined;
  const tasks: InstructionTask[] = [];
  for (const item of value) {
    if (item === null || typeof item !== "object") continue;
    const o = item as Record<string, unknown>;
    if (typeof o["instruction"] !== "string" || typeof o["output"] !== "string") continue;
    tasks.push({
      instruction: o["instruction"].trim(),
      input: normalizeInput(typeof o["input"] === "string" ? o["input"] : ""),
      output: o["output"].trim(),
    });
  }
  return tasks;
}

// ---------------------------------------------------------------------------------------------
// Filters

/** Words that point at tasks a text-only model cannot do (Alpaca's list). */
export const BLACKLISTED_WORDS = [
  "image",
  "images",
  "graph",
  "graphs",
  "picture",
  "pictures",
  "file",
  "files",
  "map",
  "maps",
  "draw",
  "plot",
  "go to",
  "video",
  "audio",
  "music",
  "flowchart",
  "diagram",
] as const;

const BLACKLIST_PATTERN = new RegExp(
  `\\b(?:${BLACKLISTED_WORDS.map((w) => w.replace(/ /g, "\\s+")).join("|")})\\b`,
  "i",
);

/** Why a generated task was not kept. */
export type RejectReason =
  | "similar"
  | "too short"
  | "too long"
  | "blacklisted word"
  | "starts with punctuation"
  | "starts with non-ASCII"
  | "program without output"
  | "empty output"
  | "truncated";

export interface TaskFilterOptions {
  /** Fewest words in an instruction (Alpaca: more than 3). */
  minWords?: number;
  /** Most words in an instruction (Alpaca: 150). */
  maxWords?: number;
}

/**
 * Why `task` fails the checks that need no other task (everything but ROUGE-L), or undefined when
 * it passes.
 */
export function checkTask(task: InstructionTask, options: TaskFilterOptions = {}): RejectReason | undefined {
  const instruction = task.instruction.trim();
  const words = instruction === "" ? 0 : instruction.split(/\s+/).length;
  if (words < (options.minWords ?? 4)) return "too short";
  if (words > (options.maxWords ?? 150)) return "too long";
  if (BLACKLIST_PATTERN.test(instruction)) return "blacklisted word";
  const first = instruction[0]!;
  if (/[!-/:-@[-`{-~]/.test(first)) return "starts with punctuation";
  if (first.charCodeAt(0) > 0x7f) return "starts with non-ASCII";
  // Asked for a program but given no output: the teacher wrote a task it did not do.
  if (/^write a program\b/i.test(instruction) && task.output.trim() === "") return "program without output";
  if (task.output.trim() === "") return "empty output";
  return undefined;
}
