import { readFileSync, statSync } from "node:fs";
import type { Command } from "commander";
import { UserError } from "../errors.js";
import {
  type KlDivergenceResult,
  PERCENTILES,
  type PerplexityProgress,
  type PerplexityResult,
  perplexity,
} from "../eval/perplexity.js";
import { Progress } from "../util/progress.js";
import { addThreadsOption, intArg } from "./options.js";

interface PerplexityFlags {
  model: string;
  file: string;
  ctx: number;
  batch?: number;
  chunks?: number;
  threads?: number;
  klDivergenceBase?: string;
  json?: boolean;
}

/** The text is read whole and tokenized at once, as llama.cpp does; this keeps that bounded. */
const MAX_TEXT_BYTES = 256 << 20;

/** The calibration or evaluation text of `--file`, refused when it is too large to read at once. */
export function readTextFile(path: string): string {
  const st = statSync(path);
  if (!st.isFile()) throw new UserError(`${path}: not a regular file`);
  const size = st.size;
  if (size > MAX_TEXT_BYTES) {
    throw new UserError(`${path}: ${size} bytes, more than the ${MAX_TEXT_BYTES >> 20} MiB read at once`);
  }
  return readFileSync(path, "utf8");
}

/** The flags perplexity and imatrix share: the model, the text and how it is cut into chunks. */
export function addChunkOptions(cmd: Command, what: string): Command {
  return addThreadsOption(
    cmd
      .requiredOption("-m, --model <file>", "GGUF model file")
      .requiredOption("-f, --file <text>", `${what} (UTF-8 text, read whole)`)
      .option("-c, --ctx <n>", "tokens per chunk", intArg("--ctx", 3, 1 << 20), 512)
      .option(
        "-b, --batch <n>",
        "tokens per forward pass (default: --ctx, at most 512)",
        intArg("--batch", 1),
      )
      .option("--chunks <n>", "most chunks to evaluate (default: all)", intArg("--chunks", 1)),
  );
}

export function registerPerplexity(program: Command) {
  const cmd = program
    .command("perplexity")
    .description(
      "perplexity of a model on a text, as llama-perplexity measures it (chunks of --ctx tokens, BOS first, each scored on its second half); with --kl-divergence-base, how far a quantized model is from its base",
    );
  addChunkOptions(cmd, "text to measure on")
    .option(
      "--kl-divergence-base <file>",
      "the model's unquantized base: KL divergence, top-token agreement and Δppl on the same tokens",
    )
    .option("--json", "print one JSON object with the figures instead of text")
    .action(async (flags: PerplexityFlags) => {
      const text = readTextFile(flags.file);
      const bar = chunkProgress("perplexity", flags.json);
      const result = await perplexity(flags.model, text, {
        ctx: flags.ctx,
        batch: flags.batch,
        chunks: flags.chunks,
        threads: flags.threads,
        klDivergenceBase: flags.klDivergenceBase,
        onChunk: (p) => bar.chunk(p, chunkLine(p)),
      });
      bar.done();
      process.stdout.write(flags.json ? `${JSON.stringify(result)}\n` : formatPerplexity(result));
    });
}

/**
 * A progress bar over the chunks (on a terminal, not with --json), made at the first chunk, when
 * their number is known; each chunk's line is printed above it unless `json`.
 */
export function chunkProgress(label: string, json = false) {
  let progress: Progress | undefined;
  return {
    chunk(p: { chunk: number; chunks: number }, line: string) {
      // Made after the first chunk, which is counted but left out of the rate.
      if (progress) progress.tick();
      else {
        const enabled = process.stderr.isTTY === true && !json;
        progress = new Progress(label, p.chunks, "chunks", { enabled, start: p.chunk });
      }
      if (!json) progress.log(line);
    },
    done: () => progress?.done(),
  };
}

const f4 = (x: number) => x.toFixed(4);
const f6 = (x: number) => x.toFixed(6);
const pct = (x: number) => (100 * x).toFixed(2);

/** The running figures after one chunk, one line. */
export function chunkLine(p: PerplexityProgress): string {
  let s = `[${p.chunk}/${p.chunks}] ppl ${f4(p.ppl)} ± ${f4(p.pplError)}`;
  if (p.kl) {
    s += `, ln(ppl/base) ${f6(p.kl.lnRatio)} ± ${f6(p.kl.lnRatioError)}`;
    s += `, KLD ${f6(p.kl.mean)} ± ${f6(p.kl.meanError)}, same top ${pct(p.kl.sameTop)}%`;
  }
  return s;
}

/** The final figures, as text. */
export function formatPerplexity(r: PerplexityResult): string {
  const lines = [
    `${r.scoredTokens} tokens scored: ${r.chunks} chunks of ${r.ctx} tokens (of ${r.textTokens}), each on its last ${r.ctx - 1 - (r.ctx >> 1)}`,
    `perplexity: ${f4(r.ppl)} ± ${f4(r.pplError)}`,
  ];
  if (r.kl) lines.push(...klLines(r.kl));
  return `${lines.join("\n")}\n`;
}

function klLines(k: KlDivergenceResult): string[] {
  const q = k.kld.percentiles;
  return [
    `base perplexity: ${f4(k.basePpl)} ± ${f4(k.basePplError)}`,
    `Δppl: ${f6(k.deltaPpl)} ± ${f6(k.deltaPplError)}   ppl/base: ${f6(k.pplRatio)} ± ${f6(k.pplRatioError)}`,
    `ln(ppl/base): ${f6(k.lnRatio)} ± ${f6(k.lnRatioError)}   nll correlation: ${pct(k.nllCorrelation)}%`,
    `KL divergence: mean ${f6(k.kld.mean)} ± ${f6(k.kld.meanError)}, median ${f6(k.kld.median)}, max ${f6(k.kld.max)}, min ${f6(k.kld.min)}`,
    `KL divergence percentiles: ${PERCENTILES.map((p) => `${p}% ${f6(q[String(p)]!)}`).join(", ")}`,
    `same top token: ${pct(k.sameTop)} ± ${pct(k.sameTopError)}%`,
    `Δp of the next token: RMS ${pct(k.rmsDeltaP)} ± ${pct(k.rmsDeltaPError)}%, mean ${pct(k.meanDeltaP)} ± ${pct(k.meanDeltaPError)}%`,
  ];
}
