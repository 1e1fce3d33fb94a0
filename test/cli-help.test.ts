// The CLI's help: every command ends with an example that uses only its own options, defaults are
// written one way, and no help text names a command that does not exist.
import type { Command } from "commander";
import { describe, expect, it } from "vitest";
import { allCommands, commandPath, EXAMPLES } from "../src/cli/examples.js";
import { buildProgram } from "../src/cli/program.js";

const program = buildProgram();
const commands = allCommands(program);

/** The command an argument list names, and the arguments after its name. */
function resolve(args: string[]): { cmd: Command; rest: string[] } {
  let cmd: Command = program;
  let i = 0;
  for (; i < args.length; i++) {
    const sub = cmd.commands.find((c) => c.name() === args[i]);
    if (!sub) break;
    cmd = sub;
  }
  return { cmd, rest: args.slice(i) };
}

function helpTexts(cmd: Command): string[] {
  return [cmd.description(), ...cmd.options.map((o) => o.description)];
}

describe("cli help", () => {
  it("has an example for every command, and only for commands that exist", () => {
    const paths = commands.map(commandPath);
    expect(paths.filter((p) => EXAMPLES[p] === undefined)).toEqual([]);
    expect(Object.keys(EXAMPLES).filter((p) => !paths.includes(p))).toEqual([]);
  });

  for (const [path, example] of Object.entries(EXAMPLES)) {
    it(`example of ${path} runs a command with options it has`, () => {
      const words = example.match(/"[^"]*"|\S+/g)!;
      expect(words[0]).toBe("smallhammer");
      const { cmd, rest } = resolve(words.slice(1));
      expect(commandPath(cmd).startsWith(path) || path.startsWith(commandPath(cmd))).toBe(true);
      for (const w of rest.filter((x) => x.startsWith("-"))) {
        const known = cmd.options.some((o) => o.long === w || o.short === w || (o.negate && o.long === w));
        expect(known, `${path}: ${w}`).toBe(true);
      }
    });
  }

  it("writes every default as '(default: ...)'", () => {
    const bad = commands.flatMap((c) => helpTexts(c).filter((t) => /\(default [^:]/.test(t)));
    expect(bad).toEqual([]);
  });

  it("names only commands that exist", () => {
    const top = new Set(program.commands.map((c) => c.name()));
    const paths = new Set(commands.map(commandPath));
    const wrong: string[] = [];
    for (const cmd of commands) {
      for (const text of helpTexts(cmd)) {
        for (const m of text.matchAll(/`([a-z][a-z-]*(?: [a-z][a-z-]*)?)/g)) {
          const [first, second] = m[1]!.split(" ");
          if (!top.has(first!)) continue;
          const sub = program.commands.find((c) => c.name() === first)!;
          const named = second !== undefined && sub.commands.length > 0 ? `${first} ${second}` : first!;
          if (!paths.has(named)) wrong.push(`${commandPath(cmd)}: ${m[0]}`);
        }
      }
    }
    expect(wrong).toEqual([]);
  });
});
