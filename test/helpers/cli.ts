import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, rmdirSync, rmSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { expect } from "vitest";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
/** The built CLI, as `npm test` and the package's bin run it. */
export const CLI = join(ROOT, "dist", "cli", "main.js");
const KERNELS = join(ROOT, "build", "kernels.wasm");

function newestMtime(dir: string, skip: (path: string) => boolean): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (skip(path)) continue;
    if (entry.isDirectory()) newest = Math.max(newest, newestMtime(path, skip));
    else newest = Math.max(newest, statSync(path).mtimeMs);
  }
  return newest;
}

function mtime(path: string): number {
  return existsSync(path) ? statSync(path).mtimeMs : 0;
}

const assemblyDir = join(ROOT, "src", "kernels", "assembly");

function cliStale(): boolean {
  return mtime(CLI) < newestMtime(join(ROOT, "src"), (p) => p === assemblyDir || p.endsWith(".md"));
}

function run(command: string, args: string[]) {
  const r = spawnSync(command, args, { cwd: ROOT, encoding: "utf8", stdio: "pipe" });
  if (r.status !== 0) {
    throw new Error(`${command} ${args.join(" ")} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  }
}

/**
 * Builds the CLI with tsc when dist is older than the sources, and the kernels when
 * build/kernels.wasm is missing (kernel sources are rebuilt on purpose, with `npm run build`).
 * `npm test` builds first, so this only works when a test file runs on its own; a lock directory
 * keeps two test files that start together from building at the same time.
 */
export function ensureBuilt(): void {
  if (!cliStale() && existsSync(KERNELS)) return;
  const lock = join(ROOT, ".tmp", "cli-build.lock");
  mkdirSync(dirname(lock), { recursive: true });
  const deadline = Date.now() + 300_000;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch {
      // Another test file is building; a lock older than five minutes is left over from a crash.
      if (Date.now() - mtime(lock) > 300_000) rmSync(lock, { recursive: true, force: true });
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${lock}`);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
    }
  }
  try {
    if (!existsSync(KERNELS)) run("npm", ["run", "build:kernels"]);
    if (cliStale()) run("npx", ["tsc", "-p", "."]);
  } finally {
    rmdirSync(lock);
  }
}

export interface CliResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `smallhammer ARGS` as a child process with pipes (not a TTY) and waits for it without
 * blocking the test worker's event loop (a worker blocked for a minute misses the test runner's
 * RPC deadline). `input` is written to its stdin; without it stdin is empty; `nodeArgs` go to
 * node before the script; `env` replaces the environment; `cwd` defaults to the repository.
 */
export function runCli(
  args: string[],
  options: {
    input?: string;
    timeoutMs?: number;
    nodeArgs?: string[];
    env?: NodeJS.ProcessEnv;
    cwd?: string;
  } = {},
): Promise<CliResult> {
  return runNode([...(options.nodeArgs ?? []), CLI, ...args], options);
}

/** Runs `node ARGS` as runCli runs the CLI. */
export function runNode(
  args: string[],
  options: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      cwd: options.cwd ?? ROOT,
      env: options.env,
      stdio: ["pipe", "pipe", "pipe"],
    });
    child.stdin.on("error", () => {}); // a command that exits without reading its input
    child.stdin.end(options.input ?? "");
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 120_000);
    child.on("error", reject);
    child.on("close", (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
  });
}

/** Exit 0 and nothing on stderr: progress and timings stay off when stderr is a pipe. */
export function expectOk(r: { status: number | null; stderr: string }): void {
  expect(r.stderr).toBe("");
  expect(r.status).toBe(0);
}

/** Exit 2 with exactly one line on stderr that starts "smallhammer:" and contains `mention`, no stack. */
export function expectUserError(r: { status: number | null; stderr: string }, mention: string): void {
  expect(r.status).toBe(2);
  expect(r.stderr).not.toContain("    at ");
  const lines = r.stderr.replace(/\n$/, "").split("\n");
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^smallhammer: /);
  expect(lines[0]).toContain(mention);
}
