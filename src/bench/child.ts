// Child processes of the benchmarks: each prints one line "RESULT <json>" on stdout.
import { spawn } from "node:child_process";

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
