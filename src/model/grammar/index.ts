/**
 * Grammar-constrained generation: GBNF grammars (gbnf.ts), JSON Schema to GBNF (json-schema.ts),
 * the automaton that matches text (automaton.ts) and the token-level constraint the sampler
 * applies (token-constraint.ts).
 */
import type { Tokenizer } from "../../tokenizer/index.js";
import { GrammarAutomaton } from "./automaton.js";
import { GrammarError, parseGbnf } from "./gbnf.js";
import { type JsonSchema, jsonSchemaToGbnf } from "./json-schema.js";
import { GrammarConstraint, LazyGrammarConstraint, VocabularyTrie } from "./token-constraint.js";

export { GrammarAutomaton } from "./automaton.js";
export { type Grammar, GrammarError, parseGbnf } from "./gbnf.js";
export { gbnfLiteral, type JsonSchema, jsonSchemaRules, jsonSchemaToGbnf } from "./json-schema.js";
export { GrammarConstraint, LazyGrammarConstraint, VocabularyTrie } from "./token-constraint.js";

/** What to constrain a generation to: a GBNF grammar, or JSON that a schema accepts. */
export interface ConstraintOptions {
  /** A GBNF grammar (llama.cpp's format) whose "root" rule the text must match. */
  grammar?: string;
  /** A JSON Schema the text, one JSON value, must validate against. */
  jsonSchema?: JsonSchema;
  /**
   * The grammar applies only from the first of these texts on (the text before is free), and its
   * sentences start with one of them (see LazyGrammarConstraint).
   */
  grammarTriggers?: string[];
}

/** Compiled grammars kept per tokenizer (their caches of allowed tokens are the vocabulary's). */
const MAX_CACHED = 16;
const compiled = new WeakMap<Tokenizer, Map<string, GrammarAutomaton>>();

/** The GBNF text of a constraint (the grammar, or the schema's), or undefined for none. */
export function constraintGrammar(options: ConstraintOptions): string | undefined {
  if (options.grammar !== undefined && options.jsonSchema !== undefined) {
    throw new GrammarError("give either a grammar or a JSON Schema, not both");
  }
  if (options.grammar !== undefined) return options.grammar;
  if (options.jsonSchema !== undefined) return jsonSchemaToGbnf(options.jsonSchema);
  return undefined;
}

/** The automaton of GBNF `text` over `tokenizer`'s vocabulary, compiled once (a few kept). */
export function compileGrammar(text: string, tokenizer: Tokenizer): GrammarAutomaton {
  let byText = compiled.get(tokenizer);
  if (!byText) {
    byText = new Map();
    compiled.set(tokenizer, byText);
  }
  let automaton = byText.get(text);
  if (automaton) {
    byText.delete(text); // most recently used last
  } else {
    automaton = new GrammarAutomaton(parseGbnf(text));
    if (byText.size >= MAX_CACHED) byText.delete(byText.keys().next().value!);
  }
  byText.set(text, automaton);
  return automaton;
}

/** A fresh constraint for one generation, or undefined when `options` asks for none. */
export function createConstraint(
  tokenizer: Tokenizer,
  options: ConstraintOptions,
): GrammarConstraint | LazyGrammarConstraint | undefined {
  const text = constraintGrammar(options);
  if (text === undefined) return undefined;
  const automaton = compileGrammar(text, tokenizer);
  const vocab = VocabularyTrie.of(tokenizer);
  if (options.grammarTriggers && options.grammarTriggers.length > 0) {
    return new LazyGrammarConstraint(automaton, vocab, tokenizer, options.grammarTriggers);
  }
  return new GrammarConstraint(automaton, vocab);
}
