/**
 * What the judge is asked, and how its verdict is read back.
 *
 * Single-answer grading asks for a whole-number grade from 1 to 10 on a last line `Score: [[N]]`;
 * pairwise comparison for `Verdict: [[A]]`, `[[B]]` or `[[tie]]`. A later turn is judged with the
 * whole conversation before it in view, and only its last answer graded. Where a reference answer is
 * given (categories with a right answer), the judge is told to check the answer against it.
 *
 * Parsing takes the last verdict in the reply (the prompt asks for it at the end, and a judge may
 * quote the format while reasoning), with fallbacks for common near-misses (`Score: 7`, `7/10`,
 * `[7]`, `Verdict: A`, FastChat's `[[C]]` for a tie). A last line naming two different verdicts is
 * not a verdict.
 */

import type { TeacherMessage } from "../data/teacher.js";

export const JUDGE_SYSTEM =
  "You are an impartial judge of answers written by AI assistants. You read closely, check facts " +
  "and reasoning, and give your verdict in exactly the form you are asked for.";

const CRITERIA =
  "Weigh how helpful, relevant, accurate and thorough it is, with creativity and detail where the " +
  "question calls for them. Length is no merit in itself.";

const REFERENCE_NOTE =
  "A reference answer known to be right is given: check the answer against it, name any mistakes, " +
  "and let correctness count above all else.";

const SCORE_FORMAT =
  'First explain your grade in a few sentences. Then give the grade on a last line of its own, exactly as "Score: [[N]]", ' +
  'where N is a whole number from 1 (worst) to 10 (best); for example "Score: [[4]]".';

const VERDICT_FORMAT =
  "First compare the two in a few sentences. Then give your verdict on a last line of its own, exactly one of " +
  '"Verdict: [[A]]" when A\'s answer is better, "Verdict: [[B]]" when B\'s answer is better, or "Verdict: [[tie]]" when neither is.';

export const SCORE_REASK =
  'Your reply did not end with a grade in the form asked for. Reply now with the grade alone, as "Score: [[N]]" with N a whole number from 1 to 10.';

export const VERDICT_REASK =
  'Your reply did not end with a verdict in the form asked for. Reply now with the verdict alone: "Verdict: [[A]]", "Verdict: [[B]]" or "Verdict: [[tie]]".';

/** A question's turns up to `turn` (0-based) with one assistant's answers, as the judge reads them. */
function conversation(
  turns: readonly string[],
  answers: readonly string[],
  turn: number,
  who: string,
): string {
  const parts: string[] = [];
  for (let t = 0; t <= turn; t++) {
    parts.push(`### User (question ${t + 1})\n${turns[t]}`, `### ${who}\n${answers[t]}`);
  }
  return parts.join("\n\n");
}

/** The reference answers up to `turn`, or nothing. */
function referenceBlock(reference: readonly string[] | undefined, turn: number): string {
  if (!reference) return "";
  if (turn === 0) return `[Reference answer]\n${reference[0]}\n[End of reference answer]\n\n`;
  const parts = reference.slice(0, turn + 1).map((r, t) => `### Reference answer to question ${t + 1}\n${r}`);
  return `[Reference answers]\n${parts.join("\n\n")}\n[End of reference answers]\n\n`;
}

/**
 * The judge's messages for grading one assistant's answer to turn `turn` (0-based) of a question;
 * `reference` holds right answers to the turns up to `turn` when there are any.
 */
export function scorePrompt(
  turns: readonly string[],
  answers: readonly string[],
  turn: number,
  reference?: readonly string[],
): TeacherMessage[] {
  const note = reference ? ` ${REFERENCE_NOTE}` : "";
  let content: string;
  if (turn === 0) {
    content =
      `Grade the answer an AI assistant gave to the question below. ${CRITERIA}${note} ${SCORE_FORMAT}\n\n` +
      `[Question]\n${turns[0]}\n[End of question]\n\n${referenceBlock(reference, 0)}` +
      `[The assistant's answer]\n${answers[0]}\n[End of the assistant's answer]`;
  } else {
    content =
      `Below is a conversation between a user and an AI assistant. Grade only the assistant's last answer, ` +
      `to question ${turn + 1}, in the light of what came before it. ${CRITERIA}${note} ${SCORE_FORMAT}\n\n` +
      `${referenceBlock(reference, turn)}[Conversation]\n${conversation(turns, answers, turn, "Assistant")}\n[End of conversation]`;
  }
  return [
    { role: "system", content: JUDGE_SYSTEM },
    { role: "user", content },
  ];
}

/** The judge's messages for comparing assistant A's and B's answers to turn `turn` (0-based). */
export function pairPrompt(
  turns: readonly string[],
  answersA: readonly string[],
  answersB: readonly string[],
  turn: number,
  reference?: readonly string[],
): TeacherMessage[] {
  const fair =
    "Neither the order in which the answers appear, nor their length, nor the assistants' names may sway you.";
  const note = reference ? ` ${REFERENCE_NOTE}` : "";
  let content: string;
  if (turn === 0) {
    content =
      `Compare the answers two AI assistants, A and B, gave to the question below, and decide which answers it better. ` +
      `${CRITERIA} ${fair}${note} ${VERDICT_FORMAT}\n\n` +
      `[Question]\n${turns[0]}\n[End of question]\n\n${referenceBlock(reference, 0)}` +
      `[Assistant A's answer]\n${answersA[0]}\n[End of assistant A's answer]\n\n` +
      `[Assistant B's answer]\n${answersB[0]}\n[End of assistant B's answer]`;
  } else {
    content =
      `Below are two conversations of a user with AI assistants, A and B, on the same questions. Compare only the ` +
      `assistants' last answers, to question ${turn + 1}, in the light of what came before them, and decide which is better. ` +
      `${CRITERIA} ${fair}${note} ${VERDICT_FORMAT}\n\n${referenceBlock(reference, turn)}` +
      `[Conversation with assistant A]\n${conversation(turns, answersA, turn, "Assistant A")}\n[End of conversation with assistant A]\n\n` +
      `[Conversation with assistant B]\n${conversation(turns, answersB, turn, "Assistant B")}\n[End of conversation with assistant B]`;
  }
  return [
    { role: "system", content: JUDGE_SYSTEM },
    { role: "user", content },
  ];
}

// Every pattern reads in time linear in the reply: no two unbounded repeats can share characters
// (a reply of spaces after "Score" must not take polynomial time to refuse).
const NUMBER = String.raw`(\d{1,2}(?:\.\d+)?)`;
const SCORE_PATTERNS = [
  new RegExp(String.raw`\[\[\s*${NUMBER}\s*(?:/\s*10\s*)?\]\]`, "g"),
  new RegExp(String.raw`\b(?:score|rating|grade)(?:\s+(?:is|of))?[\s:=*]*${NUMBER}\b`, "gi"),
  new RegExp(String.raw`\[\s*${NUMBER}\s*\]`, "g"),
  new RegExp(String.raw`\b${NUMBER}\s*/\s*10\b`, "g"),
];

/** The 1–10 grade in a judge's reply, or undefined when it gives none (or one out of range). */
export function parseScore(reply: string): number | undefined {
  for (const pattern of SCORE_PATTERNS) {
    const matches = [...reply.matchAll(pattern)];
    const last = matches.at(-1);
    if (!last) continue;
    const lineValues = new Set(onLastLine(reply, matches).map((m) => Number(m[1])));
    if (lineValues.size > 1) return undefined;
    const score = Number(last[1]);
    return score >= 1 && score <= 10 ? score : undefined;
  }
  return undefined;
}

export type PairVerdict = "A" | "B" | "tie";

const VERDICT_PATTERNS = [
  /\[\[\s*(A|B|C|tie)\s*\]\]/gi,
  // The letters are matched in capitals only: "the verdict is a tie" must not read as A.
  /\b[Vv]erdict(?:\s+is)?[\s:=*]*(?:[Aa]ssistant\s+)?(A|B|(?:a\s+)?[Tt]ie)\b/g,
];

/** The verdict in a judge's pairwise reply, or undefined when it gives none or names two. */
export function parsePairVerdict(reply: string): PairVerdict | undefined {
  for (const pattern of VERDICT_PATTERNS) {
    const matches = [...reply.matchAll(pattern)];
    const last = matches.at(-1);
    if (!last) continue;
    const lineVerdicts = new Set(onLastLine(reply, matches).map((m) => verdictOf(m[1]!)));
    if (lineVerdicts.size > 1) return undefined;
    return verdictOf(last[1]!);
  }
  return undefined;
}

function verdictOf(s: string): PairVerdict {
  const v = s.toUpperCase();
  // "C" is FastChat's tie; "a tie" comes from the fallback pattern.
  return v === "A" || v === "B" ? v : "tie";
}

/** The matches on the line of the last one. */
function onLastLine(text: string, matches: RegExpExecArray[]): RegExpExecArray[] {
  const lineStart = text.lastIndexOf("\n", matches.at(-1)!.index);
  return matches.filter((m) => m.index > lineStart);
}
