import type { Command } from "commander";
import { chooseIndices, DatasetWriter, isChosen } from "../data/dataset-io.js";
import { checkOutputs } from "../util/output-path.js";
import { Progress } from "../util/progress.js";
import { openDataset } from "./data-options.js";
import {
  addTransformOptions,
  forEachRecord,
  report,
  sameFormat,
  skippedSummary,
  skippedText,
  type TransformFlags,
} from "./data-transform.js";
import { intArg } from "./options.js";

interface SampleFlags extends TransformFlags {
  out: string;
  num: number;
  seed: number;
}

export function registerDataSample(data: Command): void {
  const cmd = data
    .command("sample")
    .description("pick records at random by seed (the same seed, the same sample); order is kept")
    .argument("<file>", "JSONL or JSON array of alpaca, sharegpt, messages or completion records")
    .requiredOption("--num <n>", "records to pick (all when the dataset has fewer)", intArg("--num", 1))
    .requiredOption("--out <file>", "output, in the input's format (.json: one JSON array; otherwise JSONL)")
    .option("--seed <n>", "seed of the choice", intArg("--seed", 0, 2 ** 32 - 1), 0);
  addTransformOptions(cmd).action(async (file: string, flags: SampleFlags) => {
    checkOutputs({ inputs: [file], outputs: [{ path: flags.out, flag: "--out" }], force: flags.force });
    const first = await openDataset(file, flags);
    const megabytes = Math.max(1, Math.ceil(first.size / 1e6));
    const progress = new Progress(
      "sample",
      2 * megabytes,
      "MB",
      process.stderr.isTTY === true && !flags.json,
    );
    const writer = DatasetWriter.create(flags.out);
    try {
      const n = await forEachRecord(first, "sample", flags, () => {}, progress);
      const chosen = chooseIndices(n, Math.min(flags.num, n), flags.seed);
      const reader = await openDataset(file, flags);
      await forEachRecord(
        reader,
        "sample",
        flags,
        async (r, i) => {
          if (isChosen(chosen, i)) await writer.write(sameFormat(r, reader));
        },
        progress,
      );
      progress.done();
      await writer.commit();
      report(
        flags,
        {
          file,
          out: flags.out,
          format: reader.format,
          records: n,
          written: writer.count,
          seed: flags.seed,
          skipped: skippedSummary(reader),
        },
        `${flags.out}: ${writer.count} of ${n} records (seed ${flags.seed})` + skippedText(reader),
      );
    } finally {
      progress.done();
      await writer.abort();
    }
  });
}
