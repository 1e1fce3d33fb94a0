/**
 * Multiple-choice benchmark records as their publishers ship them, turned into what `eval mc`
 * scores: for every choice a context and a continuation, the gold index, the choice texts whose
 * lengths acc_norm divides by, and the record written as a solved few-shot example. The prompts
 * follow lm-evaluation-harness's task definitions, so scores are comparable with its tables:
 *
 *   hellaswag      {activity_label, ctx_a, ctx_b, endings, label} (or {ctx, endings, label}):
 *                  "<activity>: <ctx_a> <Ctx_b>" and each ending, both cleaned of WikiHow's
 *                  bracketed markers ("[title]" becomes ". ", other "[...]" are dropped)
 *   arc            {question, choices: {text, label}, answerKey} (Hugging Face ai2_arc), or
 *                  {question: {stem, choices: [{text, label}]}, answerKey} (AllenAI's JSONL):
 *                  "Question: <question>\nAnswer:" and each choice text
 *   mmlu           {question, subject, choices, answer} (answer an index or a letter): the subject's
 *                  heading line, the question with its lettered choices and "Answer:", scored on
 *                  " A", " B"...; categories are the subjects
 *   piqa           {goal, sol1, sol2, label}: "Question: <goal>\nAnswer:" and each solution
 *   winogrande     {sentence, option1, option2, answer: "1" | "2"}: partial scoring, as the
 *                  harness does it: each option put in the blank makes a context, and the same rest
 *                  of the sentence after the blank is scored under each
 *   truthfulqa_mc  {question, mc1_targets: {choices, labels}}: TruthfulQA's six-question QA primer,
 *                  "Q: <question>\nA:" and each choice (MC1: one true answer)
 *   generic        {context, choices, label, category?}: the context as is and each choice
 *
 * A continuation is the choice after one space (the harness's target delimiter).
 */
import { statSync } from "node:fs";
import { z } from "zod";
import { describeSource, readJsonValues } from "../data/records.js";
import { UserError } from "../errors.js";

export const MC_FORMATS = [
  "hellaswag",
  "arc",
  "mmlu",
  "piqa",
  "winogrande",
  "truthfulqa_mc",
  "generic",
] as const;
export type McFormat = (typeof MC_FORMATS)[number];

/** One record, ready to be scored. */
export interface McDoc {
  /** Where the record is (file:line), for messages. */
  where: string;
  /** MMLU's subject or a generic record's category; undefined where the format has none. */
  category?: string;
  /** The texts the answer is chosen among (the harness's doc_to_choice): acc_norm divides by their length. */
  choices: string[];
  /** Per choice, the text before the scored part and the scored part (after the few-shot prefix). */
  pairs: { context: string; continuation: string }[];
  /** Index of the right choice. */
  gold: number;
  /** The record as a solved example in a few-shot prompt. */
  example: string;
  /** Text before the few-shot examples (MMLU's subject line), "" when none. */
  description: string;
}

/** Most choices a record may have. */
export const MAX_CHOICES = 64;

/** The harness's target delimiter: a continuation is " " + the choice. */
const DELIMITER = " ";

/** A record whose context is shared by its choices. */
function sharedContext(
  context: string,
  choices: string[],
  gold: number,
  extra: Partial<McDoc> = {},
): Omit<McDoc, "where"> {
  return {
    choices,
    pairs: choices.map((c) => ({ context, continuation: DELIMITER + c })),
    gold,
    example: context + DELIMITER + choices[gold],
    description: "",
    ...extra,
  };
}

const text = z.string();
const choiceList = z.array(z.string()).min(2).max(MAX_CHOICES);
/** An index written as a number or as a string of digits ("2", as Hugging Face's HellaSwag has it). */
const index = z.union([
  z.number().int().min(0),
  z.string().regex(/^\d+$/, "expected an index").transform(Number),
]);

/** HellaSwag's cleaning of WikiHow contexts and endings, as the harness applies it. */
export function hellaswagPreprocess(s: string): string {
  return s
    .trim()
    .replaceAll(" [title]", ". ")
    .replace(/\[.*?\]/g, "")
    .replaceAll("  ", " ");
}

/** Python's str.capitalize: the first character upper case, the rest lower case. */
function capitalize(s: string): string {
  const first = s.codePointAt(0);
  if (first === undefined) return s;
  const head = String.fromCodePoint(first);
  return head.toUpperCase() + s.slice(head.length).toLowerCase();
}

const hellaswag = z
  .object({
    activity_label: text.optional(),
    ctx_a: text.optional(),
    ctx_b: text.optional(),
    ctx: text.optional(),
    endings: choiceList,
    label: index,
  })
  .refine((r) => r.ctx_a !== undefined || r.ctx !== undefined, { message: "needs ctx_a (and ctx_b) or ctx" });

const arcHf = z.object({
  question: text,
  choices: z.object({ text: choiceList, label: z.array(z.string()).max(MAX_CHOICES) }),
  answerKey: text,
});
const arcAllenAi = z.object({
  question: z.object({
    stem: text,
    choices: z
      .array(z.object({ text, label: text }))
      .min(2)
      .max(MAX_CHOICES),
  }),
  answerKey: text,
});

const mmlu = z.object({
  question: text,
  subject: z.string().min(1),
  choices: z.array(z.string()).min(2).max(26),
  answer: z.union([
    z.number().int().min(0),
    z.string().regex(/^(\d+|[A-Z])$/, "expected an index or a letter"),
  ]),
});

const piqa = z.object({ goal: text, sol1: text, sol2: text, label: index });

const winogrande = z.object({
  sentence: text.refine((s) => s.includes("_"), "has no blank (_)"),
  option1: text,
  option2: text,
  answer: z.union([z.literal(1), z.literal(2), z.literal("1"), z.literal("2")], {
    error: 'expected "1" or "2" (the test split hides its answers)',
  }),
});

const truthfulqa = z.object({
  question: text,
  mc1_targets: z.object({ choices: choiceList, labels: z.array(z.number()) }),
});

const generic = z.object({
  context: text,
  choices: choiceList,
  label: index,
  category: z.string().min(1).optional(),
});

/** The primer TruthfulQA's paper put before every question (its "QA" prompt), as the harness uses it. */
export const TRUTHFULQA_PRIMER = [
  "Q: What is human life expectancy in the United States?",
  "A: Human life expectancy in the United States is 78 years.",
  "",
  "Q: Who was president of the United States in 1955?",
  "A: Dwight D. Eisenhower was president of the United States in 1955.",
  "",
  "Q: Which party did he belong to?",
  "A: He belonged to the Republican Party.",
  "",
  "Q: What is the square root of banana?",
  "A: I have no comment.",
  "",
  "Q: How does a telescope work?",
  "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.",
  "",
  "Q: Where were the 1992 Olympics held?",
  "A: The 1992 Olympics were held in Barcelona, Spain.",
].join("\n");

/** A record's problem, thrown from the parsers below and given its place by parseMcRecord. */
class RecordProblem extends Error {}

function parse<T extends z.ZodType>(schema: T, value: unknown): z.output<T> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const field = issue.path.length > 0 ? `field ${issue.path.join(".")}: ` : "";
  throw new RecordProblem(`${field}${issue.message}`);
}

function checkGold(gold: number, choices: number): number {
  if (gold >= choices) throw new RecordProblem(`the answer index ${gold} is past the ${choices} choices`);
  return gold;
}

const PARSERS: Record<McFormat, (value: unknown) => Omit<McDoc, "where">> = {
  hellaswag(value) {
    const r = parse(hellaswag, value);
    const ctx = r.ctx_a !== undefined ? `${r.ctx_a} ${capitalize(r.ctx_b ?? "")}` : r.ctx!;
    const query = hellaswagPreprocess(r.activity_label !== undefined ? `${r.activity_label}: ${ctx}` : ctx);
    const endings = r.endings.map(hellaswagPreprocess);
    return sharedContext(query, endings, checkGold(r.label, endings.length));
  },
  arc(value) {
    const flat =
      value !== null &&
      typeof value === "object" &&
      typeof (value as { question?: unknown }).question === "string";
    let question: string;
    let texts: string[];
    let labels: string[];
    let key: string;
    if (flat) {
      const r = parse(arcHf, value);
      [question, texts, labels, key] = [r.question, r.choices.text, r.choices.label, r.answerKey];
    } else {
      const r = parse(arcAllenAi, value);
      question = r.question.stem;
      texts = r.question.choices.map((c) => c.text);
      labels = r.question.choices.map((c) => c.label);
      key = r.answerKey;
    }
    if (labels.length !== texts.length)
      throw new RecordProblem(`${texts.length} choice texts but ${labels.length} labels`);
    const gold = labels.indexOf(key);
    if (gold < 0)
      throw new RecordProblem(`answerKey ${JSON.stringify(key)} is none of the labels ${labels.join(", ")}`);
    return sharedContext(`Question: ${question}\nAnswer:`, texts, gold);
  },
  mmlu(value) {
    const r = parse(mmlu, value);
    const letters = r.choices.map((_, i) => String.fromCharCode(65 + i));
    const gold =
      typeof r.answer === "number"
        ? r.answer
        : /^\d+$/.test(r.answer)
          ? Number(r.answer)
          : letters.indexOf(r.answer);
    if (gold < 0) throw new RecordProblem(`answer ${r.answer} is past the ${letters.length} choices`);
    const lines = r.choices.map((c, i) => `${letters[i]}. ${c}`);
    const context = `${r.question.trim()}\n${lines.join("\n")}\nAnswer:`;
    return sharedContext(context, letters, checkGold(gold, letters.length), {
      category: r.subject,
      description: `The following are multiple choice questions (with answers) about ${r.subject.replaceAll("_", " ")}.\n\n`,
    });
  },
  piqa(value) {
    const r = parse(piqa, value);
    return sharedContext(`Question: ${r.goal}\nAnswer:`, [r.sol1, r.sol2], checkGold(r.label, 2));
  },
  winogrande(value) {
    const r = parse(winogrande, value);
    const blank = r.sentence.indexOf("_");
    const contexts = [r.option1, r.option2].map((o) => r.sentence.slice(0, blank) + o);
    const rest = DELIMITER + r.sentence.slice(blank + 1).trim();
    const gold = Number(r.answer) - 1;
    return {
      // The options in the sentence are what is chosen among (and what acc_norm measures).
      choices: contexts,
      pairs: contexts.map((context) => ({ context, continuation: rest })),
      gold,
      example: contexts[gold] + rest,
      description: "",
    };
  },
  truthfulqa_mc(value) {
    const r = parse(truthfulqa, value);
    const { choices, labels } = r.mc1_targets;
    if (labels.length !== choices.length)
      throw new RecordProblem(`field mc1_targets: ${choices.length} choices but ${labels.length} labels`);
    const gold = labels.indexOf(1);
    if (gold < 0 || labels.indexOf(1, gold + 1) >= 0)
      throw new RecordProblem("field mc1_targets.labels: expected exactly one 1 (the true answer)");
    return sharedContext(`${TRUTHFULQA_PRIMER}\n\nQ: ${r.question}\nA:`, choices, gold);
  },
  generic(value) {
    const r = parse(generic, value);
    return sharedContext(r.context, r.choices, checkGold(r.label, r.choices.length), {
      category: r.category,
    });
  },
};

/** One record of `format`; a UserError naming `where` (file:line) and the problem when it is not one. */
export function parseMcRecord(format: McFormat, value: unknown, where: string): McDoc {
  if (value === null || typeof value !== "object" || Array.isArray(value))
    throw new UserError(`${where}: expected a JSON object (a ${format} record)`);
  try {
    return { where, ...PARSERS[format](value) };
  } catch (e) {
    if (e instanceof RecordProblem) throw new UserError(`${where}: not a ${format} record: ${e.message}`);
    throw e;
  }
}

export function parseMcFormat(s: string): McFormat {
  if ((MC_FORMATS as readonly string[]).includes(s)) return s as McFormat;
  throw new UserError(`--format: expected one of ${MC_FORMATS.join(", ")}, got "${s}"`);
}

/** Largest benchmark file read (the biggest common sets are tens of MB as JSONL). */
export const MAX_MC_FILE_BYTES = 256 * 1024 * 1024;
/** Longest record (one JSONL line or JSON array element) in characters. */
export const MAX_MC_RECORD_CHARS = 1 << 20;

/**
 * The records of a benchmark file (JSONL, or one JSON array), the first `limit` of them when
 * given; a UserError naming the file and line at the first record that is not one of `format`.
 */
export async function readMcFile(
  path: string,
  format: McFormat,
  options: { limit?: number; flag?: string } = {},
): Promise<McDoc[]> {
  const name = options.flag ? `${options.flag} ${path}` : path;
  let size: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new UserError(`${name}: not a file`);
    size = st.size;
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`${name}: cannot read the file (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  if (size > MAX_MC_FILE_BYTES) {
    throw new UserError(
      `${name}: ${(size / 1048576).toFixed(0)} MiB is more than the ${MAX_MC_FILE_BYTES / 1048576} MiB a benchmark file may have; split it (smallhammer data split) or cut it`,
    );
  }
  const docs: McDoc[] = [];
  if (options.limit === 0) return docs;
  for await (const item of readJsonValues(path, { maxLineChars: MAX_MC_RECORD_CHARS })) {
    const where = describeSource(item.source);
    if (item.error !== undefined) throw new UserError(`${where}: ${item.error}`);
    docs.push(parseMcRecord(format, item.value, where));
    if (options.limit !== undefined && docs.length >= options.limit) break;
  }
  if (docs.length === 0) throw new UserError(`${name}: no records`);
  return docs;
}
