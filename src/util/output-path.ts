/**
 * The check every writing command makes before it writes anything, so that no command destroys
 * what it reads:
 *
 *   checkOutputs({
 *     inputs: [{ path: file }, { path: flags.tokenizer, name: "--tokenizer" }],
 *     outputs: [{ path: flags.out, flag: "--out" }],
 *     force: flags.force,
 *   });
 *
 * The rules, each broken one a UserError of one line naming the paths:
 *  - an output that is the same file as an input is refused, even with `force`. "The same" means
 *    the same path once `.`, `..`, symbolic links and the directory are resolved, or the same
 *    device and inode (a hard link, or another spelling on a case-insensitive disk);
 *  - two outputs that are the same file are refused;
 *  - an existing output file is replaced only with `force` (the writers replace by rename, so the
 *    old file stays whole until the new one is complete). Outputs marked `existing: "caller"` leave
 *    an existing one to the command: self-instruct appends to its own output, a run directory may
 *    exist (the trainer refuses one that holds a run), a token cache replaces an earlier cache;
 *  - a file output that is a directory, or a directory output that is a file, is refused, and so
 *    is a file output whose directory does not exist;
 *  - an input file inside a directory output is refused (the command would write over it), unless
 *    the input says `readFirst` (read whole before anything is written there).
 */

import { type BigIntStats, realpathSync, statSync } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve } from "node:path";
import { UserError } from "../errors.js";

export interface CheckedInput {
  path: string;
  /** How messages name it: "--base", "the checkpoint" (default "the input"). */
  name?: string;
  /** Read whole before anything is written, so it may lie inside a directory output. */
  readFirst?: boolean;
}

export interface CheckedOutput {
  path: string;
  /** The flag that named it, for messages ("--out"); a positional output is "the output". */
  flag?: string;
  /** A file (default) or a directory the command fills. */
  kind?: "file" | "directory";
  /** "force" (default): an existing output is replaced only with `force`; "caller": the command decides. */
  existing?: "force" | "caller";
}

export interface OutputCheck {
  inputs: readonly (string | CheckedInput)[];
  outputs: readonly (string | CheckedOutput)[];
  /** Replace existing output files (the command's --force). */
  force?: boolean;
}

/** Where a path leads: its resolved path and, when it exists, what is there. */
interface Resolved {
  /** Absolute, with symbolic links resolved as far as the path exists. */
  path: string;
  stats?: BigIntStats;
}

function resolvePath(path: string): Resolved {
  const absolute = resolve(path);
  let stats: BigIntStats | undefined;
  try {
    stats = statSync(absolute, { bigint: true });
  } catch {
    // Missing (or unreachable): resolve the nearest existing folder above it instead.
  }
  if (stats) {
    try {
      return { path: realpathSync(absolute), stats };
    } catch {
      return { path: absolute, stats };
    }
  }
  const rest: string[] = [];
  for (let dir = absolute; ; ) {
    rest.unshift(basename(dir));
    const parent = dirname(dir);
    if (parent === dir) return { path: absolute };
    try {
      return { path: join(realpathSync(parent), ...rest) };
    } catch {
      dir = parent;
    }
  }
}

function sameFile(a: Resolved, b: Resolved): boolean {
  if (a.stats && b.stats) return a.stats.dev === b.stats.dev && a.stats.ino === b.stats.ino;
  return a.path === b.path;
}

function isInside(child: string, dir: string): boolean {
  const r = relative(dir, child);
  return r !== "" && !r.startsWith("..") && !isAbsolute(r);
}

function outputLabel(o: CheckedOutput): string {
  return `${o.flag ?? "the output"} ${o.path}`;
}

/** Checks the outputs of one command against its inputs and each other; see the file comment. */
export function checkOutputs(check: OutputCheck): void {
  const inputs = check.inputs.map((i) => (typeof i === "string" ? { path: i } : i));
  const outputs = check.outputs.map((o) => (typeof o === "string" ? { path: o } : o));
  const resolvedInputs = inputs.map((i) => resolvePath(i.path));
  const resolvedOutputs = outputs.map((o) => resolvePath(o.path));
  outputs.forEach((output, k) => {
    const out = resolvedOutputs[k]!;
    const label = outputLabel(output);
    inputs.forEach((input, j) => {
      const source = resolvedInputs[j]!;
      if (!source.stats) return; // a missing input is the reader's error, and nothing to lose
      if (sameFile(out, source)) {
        throw new UserError(
          `${label} would overwrite ${input.name ?? "the input"} ${input.path}; write to another path`,
        );
      }
      const file = !source.stats.isDirectory();
      if (output.kind === "directory" && file && !input.readFirst && isInside(source.path, out.path)) {
        throw new UserError(
          `${label} holds ${input.name ?? "the input"} ${input.path}, which writing there could replace; choose another directory`,
        );
      }
    });
    for (let m = 0; m < k; m++) {
      if (sameFile(out, resolvedOutputs[m]!)) {
        throw new UserError(
          `${outputLabel(outputs[m]!)} and ${label} are the same file; give each output its own path`,
        );
      }
    }
    if (output.kind === "directory") {
      if (out.stats && !out.stats.isDirectory()) {
        throw new UserError(`${label} exists and is not a directory`);
      }
      return;
    }
    if (out.stats?.isDirectory()) throw new UserError(`${label} is a directory; give a file path`);
    if (out.stats && output.existing !== "caller" && !check.force) {
      throw new UserError(`${label} exists; add --force to replace it`);
    }
    if (!out.stats) {
      const parent = dirname(resolve(output.path));
      let folder: BigIntStats | undefined;
      try {
        folder = statSync(parent, { bigint: true });
      } catch {
        // reported below
      }
      const where = dirname(output.path);
      if (!folder) throw new UserError(`${label}: cannot write, the directory ${where} does not exist`);
      if (!folder.isDirectory()) throw new UserError(`${label}: cannot write, ${where} is not a directory`);
    }
  });
}
