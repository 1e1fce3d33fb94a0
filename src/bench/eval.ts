// `npm run bench -- eval`: the evaluation tools' own speed. Each part is a function of its own
// (eval-judge.ts: `eval judge` against a zero-latency judge; eval-mc.ts: `eval mc`'s scoring with and
// without KV reuse) called in turn with the shared
// measurement, its markdown printed and its numbers gathered under its name in the JSON.
import { writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { UserError } from "../errors.js";
import { SHAPES } from "../model/random-llama.js";
import { parseBenchArgs, positiveInt } from "./args.js";
import { benchJudge } from "./eval-judge.js";
import { benchMc } from "./eval-mc.js";
import { cpuSample, foreignCores, waitForQuiet } from "./infer.js";

export const evalUsage = `usage: npm run bench -- eval [options]

The evaluation tools' own speed: \`eval judge\` against a zero-latency local judge (requests/s and
its own work per request, next to a plain \`openai\` SDK loop of the same requests); \`eval mc\`'s
questions/s on a random-weight Llama, with the KV cache reused between a question's choices and without.

  --requests N      judge requests per client (default 400)
  --concurrency N   requests in flight (default 4, as \`eval judge\`)
  --mc-shape NAME   shape of the eval mc model: 15M, 110M, 1.1B (default 110M, Q4_0)
  --mc-questions N  multiple-choice questions per mode (default 16; 4 choices, a context of 96
                    tokens, endings of 24, as a zero-shot HellaSwag question)
  --threads N       compute threads of eval mc (default 2)
  --dir PATH        model cache (default .tmp/bench-models)
  --quiet-wait S    seconds to wait for an idle machine before each measurement (default 120)
  --json            machine-readable results on stdout
  --save PATH       also write the machine-readable results to PATH
`;

/** Foreign CPU load (in cores) above which a measurement is marked disturbed. */
const QUIET_CORES = 0.1;

export async function runEvalBench(argv: string[]): Promise<void> {
  const args = parseBenchArgs(
    argv,
    {
      requests: { type: "string" },
      concurrency: { type: "string" },
      "mc-shape": { type: "string" },
      "mc-questions": { type: "string" },
      threads: { type: "string" },
      dir: { type: "string" },
      "quiet-wait": { type: "string" },
      json: { type: "boolean" },
      save: { type: "string" },
    },
    evalUsage,
  );
  if (!args) return;
  const { values, str } = args;
  const quietWait = Number(str("quiet-wait") ?? 120);
  if (!(quietWait >= 0)) throw new UserError(`--quiet-wait: expected seconds, got "${str("quiet-wait")}"`);
  const json = values.json === true;
  const say = (s: string) => {
    if (process.stderr.isTTY) process.stderr.write(`${s}\n`);
  };
  const measure = async <T>(work: () => Promise<T>) => {
    const waited = await waitForQuiet(QUIET_CORES, quietWait, say);
    const before = cpuSample();
    const t0 = performance.now();
    const value = await work();
    const seconds = (performance.now() - t0) / 1000;
    const foreign = Math.max(waited, foreignCores(before, cpuSample()));
    return { value, seconds, foreignCores: foreign, disturbed: foreign > QUIET_CORES };
  };

  const load = loadavg();
  if (!json) {
    process.stdout.write(`bench eval: load average ${load.map((l) => l.toFixed(2)).join(" ")}\n`);
  }
  const judge = await benchJudge({
    requests: positiveInt("requests", str("requests"), 400),
    concurrency: positiveInt("concurrency", str("concurrency"), 4),
    measure,
    say,
  });
  if (!json) {
    process.stdout.write(
      `${judge.text}\n"disturbed": other processes used more than ${QUIET_CORES} cores during the measurement (from /proc/stat).\n`,
    );
  }

  const shapeName = str("mc-shape") ?? "110M";
  const shape = SHAPES[shapeName];
  if (!shape)
    throw new UserError(`--mc-shape: expected one of ${Object.keys(SHAPES).join(", ")}, got "${shapeName}"`);
  const mc = await benchMc({
    shape,
    type: "q4_0",
    dir: str("dir") ?? ".tmp/bench-models",
    threads: positiveInt("threads", str("threads"), 2),
    questions: positiveInt("mc-questions", str("mc-questions"), 16),
    contextTokens: 96,
    endingTokens: 24,
    choices: 4,
    measure,
    say,
  });
  if (!json) process.stdout.write(`\n${mc.text}\n`);

  const save = str("save");
  if (json || save !== undefined) {
    const { text: _, ...judgeNumbers } = judge;
    const { text: __, ...mcNumbers } = mc;
    const text = `${JSON.stringify({ started: new Date().toISOString(), loadAverage: load, quietCores: QUIET_CORES, judge: judgeNumbers, mc: mcNumbers }, null, 2)}\n`;
    if (json) process.stdout.write(text);
    if (save !== undefined) writeFileSync(save, text);
  }
}
