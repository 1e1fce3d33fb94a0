// Runs the CLI on a pseudo-terminal (util-linux `script`, which Debian ships in the essential
// bsdutils package) so its TTY output (progress bars) is exercised, and replays what it wrote
// the way a terminal would, to assert on the lines a user sees.
import { spawn, spawnSync } from "node:child_process";
import { CLI, ROOT } from "./cli.js";

/** Whether util-linux `script` is there to make a pseudo-terminal. */
export const HAS_SCRIPT = spawnSync("sh", ["-c", "command -v script && script --version"], {
  encoding: "utf8",
}).stdout.includes("util-linux");

const quote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/**
 * `smallhammer ARGS` with stdout and stderr on one pseudo-terminal `columns` wide. Resolves with
 * the exit status and everything the terminal received.
 */
export function runCliOnTerminal(
  args: string[],
  options: { columns?: number; timeoutMs?: number } = {},
): Promise<{ status: number | null; output: string }> {
  const command = `stty cols ${options.columns ?? 200} rows 50 && exec ${[process.execPath, CLI, ...args].map(quote).join(" ")}`;
  return new Promise((resolve, reject) => {
    const child = spawn("script", ["-qfec", command, "/dev/null"], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      output += d;
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      output += d;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 120_000);
    child.on("error", reject);
    child.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status, output });
    });
  });
}

/**
 * The lines a terminal shows after receiving `output`: characters overwrite at the cursor; CR,
 * LF, cursor moves (CSI A/B/C/D/G/H), line and screen clears (CSI K/J) and cursor save/restore
 * (ESC 7 / ESC 8) act as on a terminal with no height limit; mode switches (CSI ? ... h/l) and
 * colours are ignored. Trailing spaces are dropped.
 */
export function screenLines(output: string): string[] {
  const screen: string[][] = [[]];
  let row = 0;
  let col = 0;
  let saved = { row: 0, col: 0 };
  const line = (r: number) => {
    while (screen.length <= r) screen.push([]);
    return screen[r]!;
  };
  const chars = Array.from(output);
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    if (c === "\r") col = 0;
    else if (c === "\n") row++;
    else if (c === "\b") col = Math.max(0, col - 1);
    else if (c === "\x1b") {
      const next = chars[i + 1];
      if (next === "7") {
        saved = { row, col };
        i++;
      } else if (next === "8") {
        ({ row, col } = saved);
        i++;
      } else if (next === "[") {
        let j = i + 2;
        let params = "";
        while (j < chars.length && !/[@-~]/.test(chars[j]!)) params += chars[j++];
        const final = chars[j];
        i = j;
        if (params.startsWith("?")) continue;
        const n = params.split(";").map((p) => (p === "" ? undefined : Number(p)));
        const count = n[0] ?? 1;
        const l = line(row);
        switch (final) {
          case "A":
            row = Math.max(0, row - count);
            break;
          case "B":
            row += count;
            break;
          case "C":
            col += count;
            break;
          case "D":
            col = Math.max(0, col - count);
            break;
          case "G":
            col = count - 1;
            break;
          case "H":
            row = (n[0] ?? 1) - 1;
            col = (n[1] ?? 1) - 1;
            break;
          case "K":
            if ((n[0] ?? 0) === 0) l.length = Math.min(l.length, col);
            else if (n[0] === 1) for (let k = 0; k <= col && k < l.length; k++) l[k] = " ";
            else l.length = 0;
            break;
          case "J":
            l.length = Math.min(l.length, col);
            screen.length = row + 1;
            break;
        }
      }
    } else if (c >= " ") {
      const l = line(row);
      while (l.length < col) l.push(" ");
      l[col++] = c;
    }
  }
  const lines = screen.map((l) => l.join("").trimEnd());
  while (lines.length > 0 && lines.at(-1) === "") lines.pop();
  return lines;
}

/** `output` without its escape sequences. */
export function withoutEscapes(output: string): string {
  return output.replace(/\x1b(\[[0-?]*[ -/]*[@-~]|[78])/g, "");
}
