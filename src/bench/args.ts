// Flag parsing shared by the benches: node:util parseArgs with a UserError for a bad flag, --help
// printing the bench's usage, and the number and list readers every bench uses.
import { parseArgs } from "node:util";
import { UserError } from "../errors.js";

export type BenchFlagSpec = Record<string, { type: "string" | "boolean"; short?: string }>;

export interface BenchArgs {
  values: Record<string, string | boolean | undefined>;
  /** A string flag's value, undefined when not given. */
  str(name: string): string | undefined;
}

/** Parses `argv` against `options` plus --help; undefined when --help printed `usage`. */
export function parseBenchArgs(argv: string[], options: BenchFlagSpec, usage: string): BenchArgs | undefined {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: { ...options, help: { type: "boolean", short: "h" } },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw new UserError((e as Error).message.split("\n")[0]!);
  }
  if (values.help) {
    process.stdout.write(usage);
    return undefined;
  }
  return { values, str: (name) => values[name] as string | undefined };
}

/** `--name`'s value as an integer >= 1, or `fallback` when not given. */
export function positiveInt(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1)
    throw new UserError(`--${name}: expected a positive integer, got "${value}"`);
  return n;
}

/** A comma-separated list (or `fallback`'s), trimmed, without empty items. */
export function list(value: string | undefined, fallback: string): string[] {
  return (value ?? fallback)
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}
