import type { Command } from "commander";
import { instructionOf, recordKey } from "../data/dataset-io.js";
import { hashString64, NearDuplicateIndex, U64Set } from "../data/minhash.js";
import { checkOutputs } from "../util/output-path.js";
import {
  addTransformOptions,
  Counts,
  describeCounts,
  report,
  sameFormat,
  skippedSummary,
  skippedText,
  type TransformFlags,
  transformDataset,
} from "./data-transform.js";
import { intArg, numArg } from "./options.js";

interface DedupFlags extends TransformFlags {
  out: string;
  exactOnly?: boolean;
  threshold: number;
  numPerm: number;
}

export function registerDataDedup(data: Command): void {
  const cmd = data
    .command("dedup")
    .description(
      "drop exact duplicate records, and records whose instruction is a near duplicate of a kept one (MinHash and LSH on word 3-grams); the first of each group is kept",
    )
    .argument("<file>", "JSONL or JSON array of alpaca, sharegpt, messages or completion records")
    .requiredOption("--out <file>", "output, in the input's format (.json: one JSON array; otherwise JSONL)")
    .option("--exact-only", "only drop records identical to a kept one")
    .option(
      "--threshold <j>",
      "Jaccard similarity of instruction word 3-grams from which records are near duplicates",
      numArg("--threshold", 0.05, 0.99),
      0.8,
    )
    .option("--num-perm <n>", "MinHash functions per instruction", intArg("--num-perm", 16, 1024), 128);
  addTransformOptions(cmd).action(async (file: string, flags: DedupFlags) => {
    checkOutputs({ inputs: [file], outputs: [{ path: flags.out, flag: "--out" }], force: flags.force });
    const exact = new U64Set();
    const near = flags.exactOnly
      ? undefined
      : new NearDuplicateIndex({ threshold: flags.threshold, numPerm: flags.numPerm });
    const dropped = new Counts();
    const { reader, records, written } = await transformDataset(
      file,
      flags.out,
      "dedup",
      flags,
      async (r, write, reader) => {
        const [hi, lo] = hashString64(recordKey(r));
        if (exact.has(hi, lo)) return dropped.add("exact duplicate");
        if (near && !near.addIfNew(instructionOf(r))) return dropped.add("near duplicate");
        exact.add(hi, lo);
        await write(sameFormat(r, reader));
      },
    );
    report(
      flags,
      {
        file,
        out: flags.out,
        format: reader.format,
        records,
        written,
        dropped,
        lsh: near
          ? { threshold: flags.threshold, numPerm: flags.numPerm, bands: near.bands, rows: near.rows }
          : null,
        skipped: skippedSummary(reader),
      },
      `${flags.out}: kept ${written} of ${records} records` +
        (dropped.total > 0 ? `; dropped ${dropped.total} (${describeCounts(dropped.byReason)})` : "") +
        skippedText(reader),
    );
  });
}
