/**
 * Renders a parsed Jinja template within limits, so that a hostile template (a model file is
 * untrusted input) ends with a clear error instead of running for hours or exhausting memory.
 *
 * @huggingface/jinja's Interpreter has no limits of its own: `range(1000000000)` builds a billion
 * element array and kills the process, nested loops run for hours on the calling thread, and
 * string doubling grows without bound. The renderer keeps the library's interpreter (the same
 * semantics as before) and wraps its one public dispatch method, `evaluate`, through which every
 * statement and expression goes:
 *
 *   steps     one per statement or expression evaluated, four per item a `for` loop walks, one per
 *             item `range()` makes (both charged before the list is walked or built), and one per
 *             16 items a builtin walks (`in`, `+`, `sort`, `join`, `tojson`, slices...);
 *   size      every value an expression yields (a string, or a list or mapping as its JSON text)
 *             is at most `maxChars` long, and a list at most `maxItems` items;
 *   traffic   the lengths of all strings expressions yield, summed (string operations cost time in
 *             proportion to the strings they read);
 *   depth     nested evaluations (deeply nested expressions, macros calling macros);
 *   time      a wall-clock deadline, checked as steps are counted: a last resort, since the
 *             counts above stop the known attacks long before it.
 *
 * The few operations whose result can be far larger than their operands are checked before they
 * run: `range`, the `indent`, `join`, `replace` and `tojson(indent=...)` filters, and a string's
 * `replace` and `split` methods. Their operands are evaluated here first and handed to the
 * library's own code as already computed values (`presets`), so nothing is evaluated twice.
 *
 * The wrapping relies on how @huggingface/jinja 0.5.11 evaluates nodes (the version is pinned in
 * package.json); test/template-budget.test.ts fails if a new version changes it.
 */

import * as jinja from "@huggingface/jinja";

// The package's declaration files import their siblings without extensions, which NodeNext
// resolution does not follow; these are the parts of its runtime the renderer uses.
/** A syntax tree node (ast.ts Statement). */
interface Node {
  type: string;
}
/** A runtime value (runtime.ts RuntimeValue). */
interface Value {
  type: string;
  value: unknown;
}
interface Environment {
  set(name: string, value: unknown): unknown;
}
interface Interpreter {
  run(program: unknown): Value;
  evaluate(statement: Node | undefined, environment: Environment): Value;
}
type NativeFunction = (args: Value[], scope: Environment) => Value;
const InterpreterBase = jinja.Interpreter as unknown as new (env: Environment) => Interpreter;
const EnvironmentClass = jinja.Environment as unknown as new () => Environment;
type Template = jinja.Template;

/** How far one rendering may go. */
export interface RenderLimits {
  /** Statements and expressions evaluated, plus the items of every list walked or built by range(). */
  maxSteps: number;
  /** Longest string (or list/mapping as JSON text) any expression may yield, in UTF-16 units. */
  maxChars: number;
  /** Most items in one list or mapping. */
  maxItems: number;
  /** Sum of the lengths of all strings expressions yield. */
  maxTraffic: number;
  /** Deepest nesting of evaluations. */
  maxDepth: number;
  /** Wall-clock time, in milliseconds. */
  maxMs: number;
}

/** A template went past one of its limits; the message says which. */
export class TemplateBudgetError extends Error {
  override name = "TemplateBudgetError";
}

/**
 * Limits for rendering `inputChars` characters of messages in `inputItems` messages. They grow
 * with the input, so any conversation a real template renders in milliseconds fits, while a
 * template that loops or grows on its own stops within a fraction of a second.
 */
export function renderLimits(inputChars: number, inputItems: number): RenderLimits {
  return {
    // Real templates take 20 to 50 steps per message.
    maxSteps: 100_000 + 200 * inputItems + Math.ceil(inputChars / 4),
    maxChars: 4 * 2 ** 20 + 8 * inputChars + 64 * inputItems,
    maxItems: 100_000 + 4 * inputItems + Math.ceil(inputChars / 8),
    maxTraffic: 64 * 2 ** 20 + 64 * inputChars,
    maxDepth: 1_000,
    maxMs: 1_000 + Math.ceil(inputItems / 10),
  };
}

/** Largest template source accepted (real chat templates are a few kilobytes). */
export const MAX_TEMPLATE_CHARS = 1 << 20;

/**
 * Parses a template: the library's error for a syntax error, a TemplateBudgetError for a source
 * longer than MAX_TEMPLATE_CHARS.
 */
export function parseTemplate(source: string): Template {
  if (source.length > MAX_TEMPLATE_CHARS) {
    throw new TemplateBudgetError(
      `the template is ${source.length} characters long; at most ${MAX_TEMPLATE_CHARS} are accepted`,
    );
  }
  return new jinja.Template(source);
}

/**
 * Renders `template` with `context` as its variables (plain JSON-like values) within `limits`.
 * Throws TemplateBudgetError past a limit, and the template's own error (raise_exception, a type
 * error) otherwise.
 */
export function renderWithin(
  template: Template,
  context: Record<string, unknown>,
  limits: RenderLimits,
): string {
  const env = new EnvironmentClass();
  const interpreter = new BudgetedInterpreter(env, limits);
  setGlobals(env, interpreter);
  for (const [key, value] of Object.entries(context)) env.set(key, value);
  let result: Value;
  try {
    result = interpreter.run(template.parsed);
  } catch (e) {
    throw asBudgetError(e, limits) ?? e;
  }
  return String(result.value);
}

/** The JavaScript engine's own limits, reached inside the library, as budget errors. */
function asBudgetError(e: unknown, limits: RenderLimits): TemplateBudgetError | undefined {
  if (e instanceof TemplateBudgetError) return e;
  if (e instanceof RangeError) {
    if (/call stack/i.test(e.message)) return new TemplateBudgetError(`nesting deeper than the stack allows`);
    if (/invalid (string|array) length/i.test(e.message)) {
      return new TemplateBudgetError(`a value longer than ${limits.maxChars} characters`);
    }
  }
  return undefined;
}

/** The globals Jinja chat templates use, with a range() that counts against the budget. */
function setGlobals(env: Environment, interpreter: BudgetedInterpreter): void {
  env.set("false", false);
  env.set("true", true);
  env.set("none", null);
  env.set("False", false);
  env.set("True", true);
  env.set("None", null);
  env.set("raise_exception", (message: unknown) => {
    throw new Error(String(message));
  });
  env.set("range", (start: unknown, stop?: unknown, step?: unknown) => interpreter.range(start, stop, step));
  env.set("strftime_now", (format: unknown) => strftime(new Date(), String(format)));
}

const MONTHS = [
  "January",
  "February",
  "March",
  "April",
  "May",
  "June",
  "July",
  "August",
  "September",
  "October",
  "November",
  "December",
];

/** The strftime directives chat templates use (Llama 3.x writes today's date with "%d %b %Y"). */
function strftime(date: Date, format: string): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  return format.replace(/%[YmdbBHMS%]/g, (directive) => {
    switch (directive) {
      case "%Y":
        return String(date.getFullYear());
      case "%m":
        return pad(date.getMonth() + 1);
      case "%d":
        return pad(date.getDate());
      case "%b":
        return MONTHS[date.getMonth()]!.slice(0, 3);
      case "%B":
        return MONTHS[date.getMonth()]!;
      case "%H":
        return pad(date.getHours());
      case "%M":
        return pad(date.getMinutes());
      case "%S":
        return pad(date.getSeconds());
      default:
        return "%";
    }
  });
}

/** Filters whose result may be much larger than their operand, checked before they run. */
const SIZED_FILTERS = new Set(["indent", "join", "replace", "tojson"]);
/** String methods whose result may be much larger than the string. */
const SIZED_METHODS = new Set(["replace", "split"]);
/** Filters that walk every item of a list or mapping. */
const WALKING_FILTERS = new Set([
  "dictsort",
  "items",
  "join",
  "map",
  "rejectattr",
  "reverse",
  "selectattr",
  "sort",
  "string",
  "tojson",
  "unique",
]);
/** Operators that walk a list operand (`in` searches it, `+` and `~` copy it). */
const WALKING_OPERATORS = new Set(["in", "not in", "+", "~"]);
/** Steps charged per item a `for` loop walks: the library builds a scope and a loop object for each. */
const STEPS_PER_LOOP_ITEM = 4;
/** Items a builtin walks per step charged. */
const ITEMS_PER_STEP = 16;
/** Steps between two looks at the clock. */
const CLOCK_EVERY = 32;

interface Arguments {
  positional: Value[];
  keyword: Map<string, Value>;
  /** Every argument node evaluated, with its value, to hand to the library. */
  evaluated: [Node, Value][];
}

class BudgetedInterpreter extends InterpreterBase {
  private steps = 0;
  private untilClock = CLOCK_EVERY;
  private traffic = 0;
  private depth = 0;
  private readonly deadline: number;
  /** Values already computed for nodes the library is about to evaluate (see the file comment). */
  private readonly presets = new Map<Node, Value>();
  /** Nodes whose value a `for` loop walks: their length is charged as steps. */
  private readonly loopIterables = new WeakSet<Node>();
  /** JSON length of lists and mappings that hold no namespace (those never change). */
  private readonly sizes = new WeakMap<object, number>();

  constructor(
    env: Environment,
    private readonly limits: RenderLimits,
  ) {
    super(env);
    this.deadline = performance.now() + limits.maxMs;
  }

  override evaluate(statement: Node | undefined, environment: Environment): Value {
    if (statement === undefined) return super.evaluate(statement, environment);
    const preset = this.presets.get(statement);
    if (preset !== undefined) {
      this.presets.delete(statement);
      return preset;
    }
    this.charge(1);
    if (++this.depth > this.limits.maxDepth) {
      throw new TemplateBudgetError(`evaluation nested more than ${this.limits.maxDepth} deep`);
    }
    try {
      const value = this.dispatch(statement, environment);
      this.checkValue(value);
      if (this.loopIterables.has(statement)) this.charge(STEPS_PER_LOOP_ITEM * itemCount(value));
      return value;
    } finally {
      this.depth--;
    }
  }

  /** range() as Python's, refusing a range longer than the limits allow before building it. */
  range(start: unknown, stop?: unknown, step?: unknown): number[] {
    let from = Number(start);
    let to = Number(stop);
    if (stop === undefined) {
      to = from;
      from = 0;
    }
    const by = step === undefined ? 1 : Number(step);
    if (![from, to, by].every(Number.isFinite)) throw new Error("range() arguments must be numbers");
    if (by === 0) throw new Error("range() step must not be zero");
    const count = Math.max(0, Math.ceil((to - from) / by));
    this.checkItems(count, "range()");
    this.charge(count);
    const out = new Array<number>(count);
    for (let i = 0; i < count; i++) out[i] = from + i * by;
    return out;
  }

  private dispatch(node: Node, environment: Environment): Value {
    switch (node.type) {
      case "For": {
        const iterable = (node as unknown as { iterable: Node }).iterable;
        this.loopIterables.add(
          iterable.type === "SelectExpression" ? (iterable as unknown as { lhs: Node }).lhs : iterable,
        );
        return super.evaluate(node, environment);
      }
      case "BinaryExpression": {
        const binary = node as unknown as BinaryExpressionNode;
        if (!WALKING_OPERATORS.has(binary.operator.value)) return super.evaluate(node, environment);
        // Both operands are evaluated (no short circuit for these operators), left first.
        const left = this.evaluate(binary.left, environment);
        const right = this.evaluate(binary.right, environment);
        this.chargeWalk(left);
        this.chargeWalk(right);
        return this.withPresets(
          [
            [binary.left, left],
            [binary.right, right],
          ],
          node,
          environment,
        );
      }
      case "FilterExpression":
        return this.filterExpression(node as unknown as FilterExpressionNode, environment);
      case "FilterStatement":
        return this.filterStatement(node as unknown as FilterStatementNode, environment);
      case "MemberExpression":
        return this.memberExpression(node as unknown as MemberExpressionNode, environment);
      default:
        return super.evaluate(node, environment);
    }
  }

  /** Evaluates `node` with the library, which first asks for the preset nodes' values. */
  private withPresets(presets: [Node, Value][], node: Node, environment: Environment): Value {
    for (const [n, v] of presets) this.presets.set(n, v);
    try {
      return super.evaluate(node, environment);
    } finally {
      for (const [n] of presets) this.presets.delete(n);
    }
  }

  private filterExpression(node: FilterExpressionNode, environment: Environment): Value {
    const filter = node.filter;
    const name =
      filter.type === "Identifier"
        ? (filter as unknown as { value: string }).value
        : (calleeName(filter) ?? "");
    if (!WALKING_FILTERS.has(name) && !SIZED_FILTERS.has(name))
      return super.evaluate(node as unknown as Node, environment);
    // The library evaluates the operand, then the filter's arguments.
    const operand = this.evaluate(node.operand, environment);
    if (WALKING_FILTERS.has(name)) this.chargeWalk(operand);
    const presets: [Node, Value][] = [[node.operand, operand]];
    if (filter.type === "CallExpression" && SIZED_FILTERS.has(name)) {
      const args = this.argumentsOf(filter.args, environment);
      this.checkFilter(name, operand, args);
      presets.push(...args.evaluated);
    }
    return this.withPresets(presets, node as unknown as Node, environment);
  }

  /**
   * `{% filter f %}body{% endfilter %}`: the library would filter the body's text before anything
   * checks its size, so the body is rendered (and checked) here and filtered as an expression.
   */
  private filterStatement(node: FilterStatementNode, environment: Environment): Value {
    const body = this.evaluate({ type: "Program", body: node.body } as unknown as Node, environment);
    const operand = { type: "StringLiteral", value: "" } as unknown as Node;
    const expression = { type: "FilterExpression", operand, filter: node.filter } as unknown as Node;
    this.presets.set(operand, body);
    try {
      return this.evaluate(expression, environment);
    } finally {
      this.presets.delete(operand);
    }
  }

  /**
   * `text.replace` and `text.split`: the method (a function value that may be stored and called
   * later) is wrapped so that every call is checked before it runs.
   */
  private memberExpression(node: MemberExpressionNode, environment: Environment): Value {
    const property = node.property;
    const literal = !node.computed
      ? property.type === "Identifier"
        ? (property as unknown as { value: string }).value
        : undefined
      : property.type === "StringLiteral"
        ? (property as unknown as { value: string }).value
        : undefined;
    if (node.computed && property.type === "SliceExpression") {
      const sliced = this.evaluate(node.object, environment);
      this.chargeWalk(sliced);
      return this.withPresets([[node.object, sliced]], node as unknown as Node, environment);
    }
    const dynamic = node.computed && literal === undefined;
    if (!dynamic && !SIZED_METHODS.has(literal ?? ""))
      return super.evaluate(node as unknown as Node, environment);
    // The library evaluates the object, then a computed property.
    const object = this.evaluate(node.object, environment);
    const presets: [Node, Value][] = [[node.object, object]];
    if (object.type !== "StringValue") return this.withPresets(presets, node as unknown as Node, environment);
    let name = literal;
    if (dynamic) {
      const key = this.evaluate(property, environment);
      presets.push([property, key]);
      name = key.type === "StringValue" ? (key.value as string) : undefined;
    }
    const value = this.withPresets(presets, node as unknown as Node, environment);
    if (value.type !== "FunctionValue" || !SIZED_METHODS.has(name ?? "")) return value;
    const text = object.value as string;
    const native = value.value as NativeFunction;
    const FunctionValue = value.constructor as new (fn: NativeFunction) => Value;
    return new FunctionValue((args, scope) => {
      this.checkMethod(name!, text, args);
      return native(args, scope);
    });
  }

  /** The library's argument evaluation order: positional arguments first, then keyword ones. */
  private argumentsOf(nodes: readonly Node[], environment: Environment): Arguments {
    const out: Arguments = { positional: [], keyword: new Map(), evaluated: [] };
    const take = (n: Node) => {
      const v = this.evaluate(n, environment);
      out.evaluated.push([n, v]);
      return v;
    };
    for (const n of nodes) {
      if (n.type === "SpreadExpression") {
        const v = take((n as unknown as { argument: Node }).argument);
        if (v.type === "ArrayValue" || v.type === "TupleValue") out.positional.push(...(v.value as Value[]));
      } else if (n.type !== "KeywordArgumentExpression" && n.type !== "KeywordSpreadExpression") {
        out.positional.push(take(n));
      }
    }
    for (const n of nodes) {
      if (n.type === "KeywordArgumentExpression") {
        const kw = n as unknown as { key: { value: string }; value: Node };
        out.keyword.set(kw.key.value, take(kw.value));
      } else if (n.type === "KeywordSpreadExpression") {
        const v = take((n as unknown as { argument: Node }).argument);
        if (v.type === "ObjectValue")
          for (const [k, x] of v.value as Map<string, Value>) out.keyword.set(k, x);
      }
    }
    return out;
  }

  private checkFilter(name: string, operand: Value, args: Arguments): void {
    const arg = (index: number, key: string) => args.positional[index] ?? args.keyword.get(key);
    switch (name) {
      case "indent": {
        if (operand.type !== "StringValue") return;
        const text = operand.value as string;
        const width = arg(0, "width");
        const spaces = width?.type === "IntegerValue" ? Math.max(0, width.value as number) : 4;
        this.checkLength(text.length + (countOf(text, "\n") + 1) * spaces, "indent");
        return;
      }
      case "join": {
        const separator = arg(0, "separator");
        const sep = separator?.type === "StringValue" ? (separator.value as string).length : 0;
        const items =
          operand.type === "StringValue"
            ? (operand.value as string).length
            : operand.type === "ArrayValue" || operand.type === "TupleValue"
              ? (operand.value as Value[]).length
              : 0;
        this.checkLength(this.sizeOf(operand) + items * sep, "join");
        return;
      }
      case "replace": {
        if (operand.type !== "StringValue") return;
        const count = arg(2, "count");
        const positional =
          count === undefined ? args.positional.slice(0, 2) : [...args.positional.slice(0, 2), count];
        this.checkMethod("replace", operand.value as string, positional);
        return;
      }
      case "tojson": {
        const indent = args.keyword.get("indent");
        const width = indent?.type === "IntegerValue" ? Math.max(0, indent.value as number) : 0;
        if (width > 0) this.checkLength(this.prettySize(operand, width, 0), "tojson");
        return;
      }
    }
  }

  private checkMethod(name: string, text: string, args: readonly Value[]): void {
    const str = (v: Value | undefined) => (v?.type === "StringValue" ? (v.value as string) : undefined);
    if (name === "split") {
      const sep = str(args[0]);
      // Without a separator the parts are the runs of non-space text: at most half the length.
      const parts = sep === undefined ? Math.ceil(text.length / 2) : sep === "" ? 0 : countOf(text, sep) + 1;
      this.checkItems(parts, "split()");
      return;
    }
    const old = str(args[0]);
    const replacement = str(args[1]);
    if (old === undefined || replacement === undefined || replacement.length <= old.length) return;
    const last = args[args.length - 1];
    const countArg =
      last?.type === "KeywordArgumentsValue" ? (last.value as Map<string, Value>).get("count") : args[2];
    const count = countArg?.type === "IntegerValue" ? (countArg.value as number) : -1;
    let n = old === "" ? text.length + 1 : countOf(text, old);
    if (count >= 0) n = Math.min(n, count);
    this.checkLength(text.length + n * (replacement.length - old.length), "replace");
  }

  private charge(steps: number): void {
    this.steps += steps;
    if (this.steps > this.limits.maxSteps) {
      throw new TemplateBudgetError(`more than ${this.limits.maxSteps} evaluation steps`);
    }
    this.untilClock -= steps;
    if (this.untilClock <= 0) {
      this.untilClock = CLOCK_EVERY;
      if (performance.now() > this.deadline) {
        throw new TemplateBudgetError(`more than ${this.limits.maxMs} ms`);
      }
    }
  }

  /** Charges a builtin's walk over a list or mapping (strings are charged as traffic). */
  private chargeWalk(value: Value): void {
    if (isContainer(value)) this.charge(Math.ceil(itemCount(value) / ITEMS_PER_STEP));
  }

  private checkLength(chars: number, what: string): void {
    if (chars > this.limits.maxChars) {
      throw new TemplateBudgetError(
        `${what} would make a text longer than ${this.limits.maxChars} characters`,
      );
    }
  }

  private checkItems(items: number, what: string): void {
    if (items > this.limits.maxItems) {
      throw new TemplateBudgetError(`${what} would make a list of more than ${this.limits.maxItems} items`);
    }
  }

  private checkValue(value: Value): void {
    switch (value.type) {
      case "StringValue": {
        const length = (value.value as string).length;
        if (length > this.limits.maxChars) {
          throw new TemplateBudgetError(`a text longer than ${this.limits.maxChars} characters`);
        }
        this.traffic += length;
        if (this.traffic > this.limits.maxTraffic) {
          throw new TemplateBudgetError(`more than ${this.limits.maxTraffic} characters of text handled`);
        }
        return;
      }
      case "ArrayValue":
      case "TupleValue":
      case "ObjectValue":
      case "KeywordArgumentsValue":
      case "NamespaceValue": {
        this.checkItems(itemCount(value), "a value");
        if (this.sizeOf(value) > this.limits.maxChars) {
          throw new TemplateBudgetError(`a value longer than ${this.limits.maxChars} characters as text`);
        }
      }
    }
  }

  /**
   * The length of a value's JSON text (what printing, `~` or `tojson` make of it), stopping just
   * past maxChars. Lists and mappings are measured once; a namespace can change, so what holds one
   * is measured again each time, and one that holds itself counts as too long.
   */
  private sizeOf(value: Value, open = new Set<object>()): number {
    const limit = this.limits.maxChars + 1;
    switch (value.type) {
      case "StringValue":
        return (value.value as string).length + 2;
      case "ArrayValue":
      case "TupleValue":
      case "ObjectValue":
      case "KeywordArgumentsValue":
      case "NamespaceValue": {
        const known = this.sizes.get(value);
        if (known !== undefined) return known;
        if (open.has(value)) return limit;
        open.add(value);
        let size = 2;
        let stable = value.type !== "NamespaceValue";
        for (const [key, child] of entriesOf(value)) {
          size += key.length + (key ? 6 : 2) + this.sizeOf(child, open);
          if (stable && isContainer(child) && !this.sizes.has(child)) stable = false;
          if (size >= limit) {
            size = limit;
            break;
          }
        }
        open.delete(value);
        if (stable) this.sizes.set(value, size);
        return size;
      }
      default:
        return 24;
    }
  }

  /** JSON length with `indent`: every item on a line of its own, indented by its depth. */
  private prettySize(value: Value, indent: number, depth: number): number {
    if (!isContainer(value)) return this.sizeOf(value);
    let size = 3 + indent * depth;
    for (const [key, child] of entriesOf(value)) {
      size +=
        2 + indent * (depth + 1) + (key ? key.length + 4 : 0) + this.prettySize(child, indent, depth + 1);
      if (size > this.limits.maxChars) return size;
    }
    return size;
  }
}

interface FilterExpressionNode {
  operand: Node;
  filter: Node & { args: Node[]; callee: Node };
}

interface BinaryExpressionNode {
  operator: { value: string };
  left: Node;
  right: Node;
}

interface FilterStatementNode {
  filter: Node;
  body: Node[];
}

interface MemberExpressionNode {
  object: Node;
  property: Node;
  computed: boolean;
}

function calleeName(call: { callee: Node }): string | undefined {
  return call.callee.type === "Identifier" ? (call.callee as unknown as { value: string }).value : undefined;
}

function isContainer(value: Value): boolean {
  return (
    value.type === "ArrayValue" ||
    value.type === "TupleValue" ||
    value.type === "ObjectValue" ||
    value.type === "KeywordArgumentsValue" ||
    value.type === "NamespaceValue"
  );
}

/** A list's items (with "" keys) or a mapping's entries. */
function entriesOf(value: Value): Iterable<[string, Value]> {
  if (value.type === "ArrayValue" || value.type === "TupleValue") {
    return (value.value as Value[]).map((v): [string, Value] => ["", v]);
  }
  return (value.value as Map<string, Value>).entries();
}

function itemCount(value: Value): number {
  if (value.type === "ArrayValue" || value.type === "TupleValue") return (value.value as Value[]).length;
  if (isContainer(value)) return (value.value as Map<string, Value>).size;
  if (value.type === "StringValue") return (value.value as string).length;
  return 0;
}

/** Occurrences of `part` in `text`, not overlapping. */
function countOf(text: string, part: string): number {
  let n = 0;
  for (let at = text.indexOf(part); at >= 0; at = text.indexOf(part, at + part.length)) n++;
  return n;
}
