/**
 * What the tests of `eval answers` and `eval judge` share: the fixture questions, a random-weight
 * model served as an OpenAI-compatible endpoint, and a run of the CLI killed half-way.
 */
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { type RunningServer, startServer } from "../../src/serve/server.js";
import { CLI, ROOT } from "./cli.js";

/** Eight questions in MT-bench's layout, one or two turns each. */
export const QUESTIONS = join(ROOT, "test", "fixtures", "eval", "questions.jsonl");

export interface FixtureQuestion {
  question_id: number;
  category: string;
  turns: string[];
}

export const questions: FixtureQuestion[] = readFileSync(QUESTIONS, "utf8")
  .trim()
  .split("\n")
  .map((l) => JSON.parse(l));

/**
 * Serves `model` (a GGUF file with any weights) on 127.0.0.1 as `smallhammer serve` does, with
 * the chatml template, one thread and two sequences; resolves once the model is loaded. The
 * endpoint is at `${server.url}/v1`; close it with `server.close(0)`.
 */
export async function serveEndpoint(model: string, contextSize?: number): Promise<RunningServer> {
  const server = await startServer({
    model,
    port: 0,
    template: "chatml",
    threads: 1,
    parallel: 2,
    ...(contextSize === undefined ? {} : { contextSize }),
  });
  await server.ready;
  return server;
}

/**
 * Runs the CLI with `args` until `out` holds more than `lines` lines, then stops it with SIGTERM;
 * resolves to its exit code and what it wrote to stderr.
 */
export async function killMidRun(
  args: string[],
  out: string,
  lines: number,
): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (d: string) => {
    stderr += d;
  });
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  for (let i = 0; i < 400; i++) {
    if (existsSync(out) && readFileSync(out, "utf8").split("\n").length > lines) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  child.kill("SIGTERM");
  return { code: await exited, stderr };
}
