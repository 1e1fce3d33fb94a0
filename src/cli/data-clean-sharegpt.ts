import { statSync } from "node:fs";
import type { Command } from "commander";
import { readTokenizerFile } from "../data/chat-tokens.js";
import { cleanShareGpt } from "../data/sharegpt-clean.js";
import { DETECTABLE_LANGUAGES } from "../data/text-checks.js";
import { UserError } from "../errors.js";
import { checkOutputs } from "../util/output-path.js";
import { Progress } from "../util/progress.js";
import { describeCounts } from "./data-transform.js";
import { FORCE_HELP, intArg } from "./options.js";

interface CleanFlags {
  out: string;
  maxTokens?: number;
  tokenizer?: string;
  lang?: string;
  dropRefusals?: boolean;
  json?: boolean;
  force?: boolean;
}

export function registerDataCleanShareGpt(data: Command): void {
  data
    .command("clean-sharegpt")
    .description(
      "clean ShareGPT conversations: HTML replies to markdown; drop empty, duplicate and out-of-order ones; optionally drop refusals and other languages; split long ones at turn boundaries",
    )
    .argument("<file>", "ShareGPT conversations, JSONL or one JSON array")
    .requiredOption("--out <file>", "cleaned ShareGPT (.json: one JSON array; otherwise JSONL)")
    .option(
      "--max-tokens <n>",
      "split conversations longer than n tokens (needs --tokenizer)",
      intArg("--max-tokens", 8),
    )
    .option("--tokenizer <model>", "GGUF file (a model or vocabulary only) whose tokenizer counts tokens")
    .option(
      "--lang <code>",
      `drop conversations detected to be in another language (${DETECTABLE_LANGUAGES.join(", ")}); text too short to tell is kept`,
    )
    .option(
      "--drop-refusals",
      'drop conversations whose replies hold refusal boilerplate ("As an AI language model", ...)',
    )
    .option("--json", "print a JSON report")
    .option("--force", FORCE_HELP)
    .action(async (file: string, flags: CleanFlags) => {
      checkOutputs({
        inputs: [
          file,
          ...(flags.tokenizer === undefined ? [] : [{ path: flags.tokenizer, name: "--tokenizer" }]),
        ],
        outputs: [{ path: flags.out, flag: "--out" }],
        force: flags.force,
      });
      if (flags.maxTokens !== undefined && flags.tokenizer === undefined) {
        throw new UserError("--max-tokens needs --tokenizer (token counts come from a tokenizer)");
      }
      if (flags.lang !== undefined && !DETECTABLE_LANGUAGES.includes(flags.lang)) {
        throw new UserError(
          `--lang: unknown language "${flags.lang}"; known: ${DETECTABLE_LANGUAGES.join(", ")}`,
        );
      }
      const tokenizer =
        flags.tokenizer === undefined ? undefined : readTokenizerFile(flags.tokenizer).tokenizer;
      let size = 0;
      try {
        size = statSync(file).size;
      } catch {
        // cleanShareGpt reports a missing file as one line.
      }
      const progress = new Progress(
        "clean",
        Math.max(1, Math.ceil(size / 1e6)),
        "MB",
        process.stderr.isTTY === true && !flags.json,
      );
      let shown = 0;
      let cleaned: Awaited<ReturnType<typeof cleanShareGpt>>;
      try {
        cleaned = await cleanShareGpt(file, flags.out, {
          maxTokens: flags.maxTokens,
          tokenizer,
          lang: flags.lang,
          dropRefusals: flags.dropRefusals,
          onBytes: (bytes) => {
            const mb = Math.floor(bytes / 1e6);
            if (mb > shown) {
              progress.tick(mb - shown);
              shown = mb;
            }
          },
        });
      } finally {
        progress.done();
      }
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(cleaned)}\n`);
        return;
      }
      const droppedTotal = Object.values(cleaned.dropped).reduce((a, b) => a + (b ?? 0), 0);
      const fixes =
        Object.keys(cleaned.fixed).length > 0
          ? `; changed: ${describeCounts(cleaned.fixed as Record<string, number>)}`
          : "";
      process.stdout.write(
        `${flags.out}: kept ${cleaned.kept} of ${cleaned.conversations} conversations, wrote ${cleaned.written}` +
          (droppedTotal > 0
            ? `; dropped ${droppedTotal} (${describeCounts(cleaned.dropped as Record<string, number>)})`
            : "") +
          `${fixes}\n`,
      );
    });
}
