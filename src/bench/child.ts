// Child processes of the benchmarks: workers that print one line "RESULT <json>" on stdout, and
// the built CLI run as a user runs it, with its peak RSS.
import { spawn } from "node:child_process";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";

/**
 * Runs `command args` and resolves with the JSON of its "RESULT " line; rejects with its stderr
 * (alone when it exits with status 2, a one-line refusal) otherwise, or when it runs past
 * timeoutSeconds.
 */
export function runChild<T>(command: string, args: string[], timeoutSeconds: number): Promise<T> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      out += d;
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      err = (err + d).slice(-4000);
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutSeconds * 1000);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const line = out.split("\n").find((l) => l.startsWith("RESULT "));
      if (code === 0 && line) resolvePromise(JSON.parse(line.slice(7)) as T);
      else
        reject(
          new Error(
            code === 2
              ? err.trim()
              : `${signal ? `killed by ${signal}` : `exit status ${code}`}: ${err.trim()}`,
          ),
        );
    });
  });
}

export interface CliRun {
  /** The command's --json output. */
  report: unknown;
  peakRssBytes: number;
}

/**
 * Runs the built CLI with `args` (ending in --json) and returns its report and peak RSS, which
 * report-rusage.js, loaded into the child, writes to its file descriptor 3 at exit.
 */
export function runCli(args: string[]): Promise<CliRun> {
  const cli = fileURLToPath(new URL("../cli/main.js", import.meta.url));
  const hook = new URL("./report-rusage.js", import.meta.url).href;
  const child = spawn(process.execPath, ["--import", hook, cli, ...args], {
    stdio: ["ignore", "pipe", "pipe", "pipe"],
  });
  const collect = (stream: Readable) => {
    let text = "";
    stream.setEncoding("utf8").on("data", (d: string) => {
      text += d;
    });
    return () => text;
  };
  const stdout = collect(child.stdout!);
  const stderr = collect(child.stderr!);
  const usage = collect(child.stdio[3] as Readable);
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code, signal) => {
      if (code !== 0) {
        const why = signal ? `killed by ${signal}` : `exit status ${code}`;
        reject(new Error(`smallhammer ${args.slice(0, 2).join(" ")}: ${why}\n${stderr().trim()}`));
        return;
      }
      resolve({
        report: JSON.parse(stdout()),
        peakRssBytes: (JSON.parse(usage()) as NodeJS.ResourceUsage).maxRSS * 1024,
      });
    });
  });
}
