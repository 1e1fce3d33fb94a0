import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { UserError } from "../errors.js";
import {
  type ConstraintOptions,
  constraintGrammar,
  GrammarAutomaton,
  GrammarError,
  parseGbnf,
} from "../model/grammar/index.js";

export interface ConstraintFlags {
  grammar?: string;
  jsonSchema?: string;
}

/** --grammar FILE and --json-schema FILE: text that follows a GBNF grammar or a JSON Schema. */
export function addConstraintOptions(cmd: Command): Command {
  return cmd
    .option("--grammar <file>", "constrain the text to a GBNF grammar (llama.cpp's format) read from FILE")
    .option(
      "--json-schema <file>",
      "constrain the text to JSON that validates against the JSON Schema in FILE",
    );
}

/** The constraint the flags ask for, read and checked now: a bad file is one line and exit 2. */
export function constraintOptions(flags: ConstraintFlags): ConstraintOptions {
  if (flags.grammar !== undefined && flags.jsonSchema !== undefined) {
    throw new UserError("give either --grammar or --json-schema, not both");
  }
  const options: ConstraintOptions = {};
  if (flags.grammar !== undefined) options.grammar = readText(flags.grammar, "--grammar");
  if (flags.jsonSchema !== undefined) {
    const text = readText(flags.jsonSchema, "--json-schema");
    try {
      options.jsonSchema = JSON.parse(text);
    } catch (e) {
      throw new UserError(`--json-schema ${flags.jsonSchema}: not JSON (${(e as Error).message})`);
    }
  }
  const file = flags.grammar ?? flags.jsonSchema;
  try {
    const text = constraintGrammar(options);
    if (text !== undefined) new GrammarAutomaton(parseGbnf(text)).start();
  } catch (e) {
    if (e instanceof GrammarError) throw new UserError(`${file}: ${e.message}`);
    throw e;
  }
  return options;
}

function readText(path: string, flag: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (e) {
    throw new UserError(
      `${flag} ${path}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`,
    );
  }
}
