import type { Command } from "commander";
import { MAX_MODELS, MAX_RESULTS, writeEvalReport } from "../eval/eval-report.js";
import { readEvalResult } from "../eval/results.js";

export function registerEvalReport(evalCmd: Command) {
  evalCmd
    .command("report")
    .description(
      "write one HTML page of eval results: scores by benchmark and category, models against each other, win/tie/loss, score distributions",
    )
    .argument(
      "<results...>",
      `result files of eval mc, eval judge and eval tasks --summary-out (up to ${MAX_RESULTS}, ${MAX_MODELS} models)`,
    )
    .requiredOption("-o, --out <file>", "the page")
    .option("--json", "print a JSON summary")
    .option(
      "--force",
      "replace a file at --out that is not an evaluation report (an earlier report is replaced without it; never an input)",
    )
    .action((files: string[], flags: { out: string; json?: boolean; force?: boolean }) => {
      const results = files.map(readEvalResult);
      const path = writeEvalReport(results, flags.out, {
        sources: files,
        force: flags.force,
        outFlag: "--out",
      });
      if (flags.json) {
        process.stdout.write(`${JSON.stringify({ path, results: results.length })}\n`);
        return;
      }
      process.stdout.write(`report: ${path}\n`);
    });
}
