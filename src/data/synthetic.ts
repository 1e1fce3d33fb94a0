/**
 * A small synthetic world for the quickstart: instruction tasks whose answers can be checked
 * exactly, and a plain-text corpus that states the same facts and skills in prose.
 *
 * Pretraining on the corpus teaches a small model the facts (which town has which river) and the
 * skills (adding, reversing, sorting, counting, converting); instruction tuning on the tasks
 * teaches it to answer them in a prompt format. Held-out tasks ask about the same facts and
 * skills with instances the tuning set never showed, so exact-match accuracy measures whether the
 * tuned model learned to follow instructions rather than to recall tuning examples.
 *
 * Everything is generated from one integer seed with the project's Rng, so the world, the corpus
 * and the task sets are the same on every machine.
 */

import { UserError } from "../errors.js";
import { Rng } from "../util/random.js";

/** One instruction with its exact answer, in Alpaca's fields. */
export interface SyntheticTask {
  family: TaskFamily;
  instruction: string;
  input: string;
  output: string;
}

export const TASK_FAMILIES = [
  "add",
  "subtract",
  "next",
  "reverse",
  "sort",
  "length",
  "first-letter",
  "convert",
  "lookup",
] as const;
export type TaskFamily = (typeof TASK_FAMILIES)[number];

/** A town of the world and its facts. */
export interface Town {
  name: string;
  country: string;
  river: string;
  colour: string;
  animal: string;
}

export interface World {
  seed: number;
  towns: Town[];
  /** Common words used by the word tasks. */
  words: string[];
}

const SYLLABLES = [
  "ba",
  "dor",
  "el",
  "fen",
  "gar",
  "hal",
  "is",
  "ka",
  "lin",
  "mor",
  "na",
  "or",
  "pel",
  "ra",
  "sil",
  "tor",
  "ul",
  "ven",
  "wyn",
  "zar",
];
const COUNTRIES = ["Avaria", "Brenland", "Castory", "Dunmark", "Estova"];
const COLOURS = ["red", "blue", "green", "yellow", "white", "black", "orange", "purple"];
const ANIMALS = ["fox", "owl", "bear", "wolf", "hare", "deer", "crow", "otter", "lynx", "heron"];
const RIVERS = ["Ash", "Brook", "Clear", "Dell", "Elm", "Fall", "Glen", "Holt", "Ivy", "Jade"];
const WORDS = [
  "apple",
  "river",
  "stone",
  "cloud",
  "bread",
  "garden",
  "lamp",
  "music",
  "ocean",
  "pencil",
  "tiger",
  "window",
  "candle",
  "forest",
  "honey",
  "island",
  "jacket",
  "kettle",
  "lemon",
  "mirror",
  "needle",
  "orange",
  "pillow",
  "rabbit",
  "silver",
  "table",
  "violin",
  "wagon",
  "yellow",
  "zebra",
  "bridge",
  "castle",
  "dragon",
  "feather",
  "guitar",
  "hammer",
];

const UNITS: { from: string; to: string; factor: number }[] = [
  { from: "kilometers", to: "meters", factor: 1000 },
  { from: "kilograms", to: "grams", factor: 1000 },
  { from: "hours", to: "minutes", factor: 60 },
  { from: "minutes", to: "seconds", factor: 60 },
  { from: "days", to: "hours", factor: 24 },
  { from: "weeks", to: "days", factor: 7 },
  { from: "meters", to: "centimeters", factor: 100 },
];

/** Builds the world's table of towns: `townCount` distinct names, facts drawn from the seed. */
export function makeWorld(seed = 1, townCount = 24): World {
  const rng = new Rng(seed);
  const names = new Set<string>();
  while (names.size < townCount) {
    const n = 2 + (rng.nextU32() % 2);
    let name = "";
    for (let i = 0; i < n; i++) name += pick(rng, SYLLABLES);
    names.add(name[0].toUpperCase() + name.slice(1));
  }
  const towns = [...names].map((name) => ({
    name,
    country: pick(rng, COUNTRIES),
    river: pick(rng, RIVERS),
    colour: pick(rng, COLOURS),
    animal: pick(rng, ANIMALS),
  }));
  return { seed, towns, words: WORDS };
}

/** A task together with the same instance stated as a fact in prose, for the corpus. */
interface Instance {
  task: SyntheticTask;
  statement: string;
}

/** One random task of `family`. */
export function makeTask(world: World, family: TaskFamily, rng: Rng): SyntheticTask {
  return makeInstance(world, family, rng).task;
}

function makeInstance(world: World, family: TaskFamily, rng: Rng): Instance {
  const int = (lo: number, hi: number) => lo + (rng.nextU32() % (hi - lo + 1));
  const instance = (instruction: string, input: string, output: string, statement: string): Instance => ({
    task: { family, instruction, input, output },
    statement,
  });
  switch (family) {
    case "add": {
      const a = int(0, 20);
      const b = int(0, 20);
      return instance(`What is ${a} + ${b}?`, "", String(a + b), `${a} plus ${b} is ${a + b}.`);
    }
    case "subtract": {
      const a = int(5, 30);
      const b = int(0, Math.min(a, 20));
      return instance(`What is ${a} - ${b}?`, "", String(a - b), `${a} minus ${b} is ${a - b}.`);
    }
    case "next": {
      const a = int(0, 98);
      return instance(`What number comes after ${a}?`, "", String(a + 1), `After ${a} comes ${a + 1}.`);
    }
    case "reverse": {
      const w = words(world, rng, int(2, 4));
      const r = [...w].reverse().join(" ");
      return instance(
        "Reverse the order of these words.",
        w.join(" "),
        r,
        `The words ${w.join(" ")} in reverse order are ${r}.`,
      );
    }
    case "sort": {
      const w = words(world, rng, int(2, 4));
      const sorted = [...w].sort().join(" ");
      return instance(
        "Sort these words alphabetically.",
        w.join(" "),
        sorted,
        `Sorted alphabetically, ${w.join(" ")} becomes ${sorted}.`,
      );
    }
    case "length": {
      const w = pick(rng, world.words);
      return instance(
        `How many letters are in the word "${w}"?`,
        "",
        String(w.length),
        `The word "${w}" has ${w.length} letters.`,
      );
    }
    case "first-letter": {
      const w = pick(rng, world.words);
      return instance(
        `What is the first letter of the word "${w}"?`,
        "",
        w[0],
        `The word "${w}" starts with "${w[0]}".`,
      );
    }
    case "convert": {
      const u = pick(rng, UNITS);
      const n = int(1, 9);
      return instance(
        `Convert ${n} ${u.from} to ${u.to}.`,
        "",
        String(n * u.factor),
        `${n} ${u.from} is ${n * u.factor} ${u.to}.`,
      );
    }
    case "lookup": {
      const t = pick(rng, world.towns);
      switch (rng.nextU32() % 4) {
        case 0:
          return instance(
            `In which country is ${t.name}?`,
            "",
            t.country,
            `${t.name} is a town in ${t.country}.`,
          );
        case 1:
          return instance(
            `Which river flows through ${t.name}?`,
            "",
            t.river,
            `The river ${t.river} flows through ${t.name}.`,
          );
        case 2:
          return instance(
            `What colour are the roofs of ${t.name}?`,
            "",
            t.colour,
            `The roofs of ${t.name} are ${t.colour}.`,
          );
        default:
          return instance(
            `What animal is the symbol of ${t.name}?`,
            "",
            t.animal,
            `The symbol of ${t.name} is the ${t.animal}.`,
          );
      }
    }
  }
}

export interface TaskSetOptions {
  /** Number of tasks. */
  count: number;
  seed: number;
  families?: readonly TaskFamily[];
  /** Tasks whose key (instruction + input) is in this set are never produced. */
  exclude?: ReadonlySet<string>;
  /** No task twice (default true); a tuning set may repeat the small families' tasks. */
  distinct?: boolean;
}

/** The identity of a task for deduplication and held-out checks. */
export function taskKey(t: Pick<SyntheticTask, "instruction" | "input">): string {
  return `${t.instruction}\n${t.input}`;
}

/**
 * `count` tasks cycling through the families in order, so every family gets the same share.
 * A user error when the families cannot supply that many distinct tasks.
 */
export function makeTasks(world: World, options: TaskSetOptions): SyntheticTask[] {
  const families = options.families ?? TASK_FAMILIES;
  const distinct = options.distinct ?? true;
  const rng = new Rng(options.seed);
  const excluded = new Set<string>(options.exclude);
  const tasks: SyntheticTask[] = [];
  let misses = 0;
  while (tasks.length < options.count) {
    const t = makeTask(world, families[tasks.length % families.length], rng);
    const key = taskKey(t);
    if (excluded.has(key)) {
      if (++misses > 100_000) {
        throw new UserError(
          `cannot make ${options.count} ${distinct ? "distinct " : ""}tasks from families ${families.join(", ")}`,
        );
      }
      continue;
    }
    if (distinct) excluded.add(key);
    tasks.push(t);
  }
  return tasks;
}

/** Seed of the held-out evaluation tasks; tuning sets exclude them. */
export const EVAL_TASK_SEED = 7001;

/** The held-out evaluation tasks of a world: `perFamily` distinct tasks of every family. */
export function evalTasks(world: World, perFamily = 12): SyntheticTask[] {
  return makeTasks(world, { count: perFamily * TASK_FAMILIES.length, seed: EVAL_TASK_SEED });
}

/** Tuning tasks of a world: never one of `evalTasks(world, evalPerFamily)`; repeats allowed. */
export function tuningTasks(world: World, count: number, seed = 7002, evalPerFamily = 12): SyntheticTask[] {
  const exclude = new Set(evalTasks(world, evalPerFamily).map(taskKey));
  return makeTasks(world, { count, seed, exclude, distinct: false });
}

export interface CorpusOptions {
  seed?: number;
  /**
   * Task keys (`taskKey`) whose instances the corpus never states, neither as a question nor as a
   * fact (default: the held-out tasks, `evalTasks(world)`).
   */
  exclude?: ReadonlySet<string>;
}

/**
 * A plain-text corpus about the world, about `chars` characters long, one topic a paragraph,
 * paragraphs separated by blank lines: a third states the world's facts (every town's country,
 * river, roofs and symbol; every word's length and first letter), two thirds work the task skills
 * on instances of every family, half as plain statements ("6 plus 7 is 13."), half as the
 * question, its input and its answer on lines of their own ("What is 6 + 7?" then "13": the
 * answer as a reply starts, though never in a prompt format). No excluded instance appears: held-out tasks are new to the model in every form.
 */
export function worldCorpus(world: World, chars: number, options: CorpusOptions = {}): string {
  const rng = new Rng(options.seed ?? world.seed + 1);
  const exclude = options.exclude ?? new Set(evalTasks(world).map(taskKey));
  const parts: string[] = [];
  let length = 0;
  while (length < chars) {
    let p: string;
    const topic = rng.nextU32() % 12;
    if (topic < 3) {
      const t = pick(rng, world.towns);
      if (topic < 2) {
        const facts = [
          `${t.name} is a town in ${t.country}.`,
          `The river ${t.river} flows through ${t.name}.`,
          `The roofs of ${t.name} are ${t.colour}.`,
          `The symbol of ${t.name} is the ${t.animal}.`,
        ];
        shuffle(rng, facts);
        p = facts.join(" ");
      } else {
        p = `In ${t.country} lies ${t.name}, a town of ${t.colour} roofs by the river ${t.river}, whose symbol is the ${t.animal}.`;
      }
    } else if (topic === 3) {
      const w = pick(rng, world.words);
      // Quoted as the questions quote it, so the fact and the question name the word alike; the
      // letter quoted too, so that (with the quote a piece of its own) it is the piece a reply
      // starting with it is, not " b." glued to the space and the period.
      p = `The word "${w}" has ${w.length} letters and starts with "${w[0]}".`;
    } else {
      const { task, statement } = makeInstance(
        world,
        TASK_FAMILIES[rng.nextU32() % TASK_FAMILIES.length],
        rng,
      );
      if (exclude.has(taskKey(task))) continue;
      p =
        topic % 2 === 0
          ? statement
          : [task.instruction, task.input, task.output].filter((line) => line !== "").join("\n");
    }
    parts.push(p);
    length += p.length + 2;
  }
  return `${parts.join("\n\n")}\n`;
}

/**
 * Exact-match check: the reply's first line, trimmed, without a final period and case-folded,
 * equals the answer.
 */
export function isCorrect(reply: string, answer: string): boolean {
  const norm = (s: string) => s.trim().split("\n")[0].trim().replace(/\.$/, "").toLowerCase();
  return norm(reply) === norm(answer);
}

function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[rng.nextU32() % items.length];
}

function words(world: World, rng: Rng, n: number): string[] {
  const out: string[] = [];
  while (out.length < n) {
    const w = pick(rng, world.words);
    if (!out.includes(w)) out.push(w);
  }
  return out;
}

function shuffle<T>(rng: Rng, items: T[]): void {
  for (let i = items.length - 1; i > 0; i--) {
    const j = rng.nextU32() % (i + 1);
    [items[i], items[j]] = [items[j], items[i]];
  }
}
