import type { Command } from "commander";
import { MAX_RUNS, REFRESH_SECONDS, writeRunReport } from "../eval/report.js";
import { FORCE_HELP } from "./options.js";

export function registerReport(program: Command) {
  program
    .command("report")
    .description(
      "write an HTML page of training runs: losses, learning rate, gradient norm, tokens/s, samples, config",
    )
    .argument("<runs...>", `run directories of \`pretrain\` or \`finetune\` (up to ${MAX_RUNS}, overlaid)`)
    .option("-o, --out <file>", "the page (default: <run>/report.html; several runs need --out)")
    .option("--json", "print a JSON summary")
    .option("--force", FORCE_HELP)
    .addHelpText(
      "after",
      `\npretrain and finetune keep <run>/report.html up to date while they run; that page reloads itself every ${REFRESH_SECONDS} s until the run ends.`,
    )
    .action(async (runs: string[], flags: { out?: string; json?: boolean; force?: boolean }) => {
      const written = await writeRunReport(runs, flags.out, {
        force: flags.force,
        outFlag: flags.out === undefined ? undefined : "--out",
      });
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(written)}\n`);
        return;
      }
      for (const r of written.runs) {
        const of = r.steps !== undefined ? ` of ${r.steps}` : "";
        process.stdout.write(`${r.run}: ${r.finished ? "finished, " : ""}step ${r.step}${of}\n`);
      }
      process.stdout.write(`report: ${written.path}\n`);
    });
}
