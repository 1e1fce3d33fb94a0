#!/usr/bin/env node
import { CommanderError } from "commander";
import { isUserError, userErrorOfSystemError } from "../errors.js";
import { buildProgram } from "./program.js";

const program = buildProgram();

/**
 * Prints a user error as one line and exits 2 (a file-system error about a path the user gave
 * counts as one); anything else is a bug and keeps its stack.
 */
function fail(thrown: unknown): never {
  const e = userErrorOfSystemError(thrown) ?? thrown;
  if (isUserError(e)) {
    process.stderr.write(`smallhammer: ${e.message}\n`);
    process.exit(2);
  }
  if (e instanceof CommanderError) {
    // Help and version output (also the help shown for a bare `smallhammer`) are already printed.
    if (e.exitCode === 0 || e.code === "commander.help" || e.code === "commander.helpDisplayed") {
      process.exit(e.exitCode === 0 ? 0 : 2);
    }
    const message = e.message.replace(/^error: /, "");
    process.stderr.write(`smallhammer: ${message} (see --help)\n`);
    process.exit(2);
  }
  throw e;
}

try {
  await program.parseAsync(process.argv);
} catch (e) {
  fail(e);
}
