import type { Command } from "commander";
import { chooseIndices, DatasetWriter, isChosen } from "../data/dataset-io.js";
import { UserError } from "../errors.js";
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
import { intArg, numArg } from "./options.js";

interface SplitFlags extends TransformFlags {
  trainOut: string;
  validationOut: string;
  validation: number;
  seed: number;
}

/** Records for validation: a fraction (below 1) of n, or a count. */
export function validationCount(validation: number, n: number): number {
  if (validation < 1) return Math.round(validation * n);
  if (!Number.isInteger(validation)) {
    throw new UserError(
      `--validation: ${validation} is neither a fraction below 1 nor a whole number of records`,
    );
  }
  if (validation > n) throw new UserError(`--validation: ${validation} records asked, the dataset has ${n}`);
  return validation;
}

export function registerDataSplit(data: Command): void {
  const cmd = data
    .command("split")
    .description(
      "split a dataset into training and validation records, chosen at random by seed (the same seed, the same split); order is kept",
    )
    .argument("<file>", "JSONL or JSON array of alpaca, sharegpt, messages or completion records")
    .requiredOption("--train-out <file>", "training records, in the input's format")
    .requiredOption("--validation-out <file>", "validation records, in the input's format")
    .option(
      "--validation <n>",
      "validation share (below 1, e.g. 0.05) or number of records",
      numArg("--validation", 0),
      0.05,
    )
    .option("--seed <n>", "seed of the choice", intArg("--seed", 0, 2 ** 32 - 1), 0);
  addTransformOptions(cmd).action(async (file: string, flags: SplitFlags) => {
    checkOutputs({
      inputs: [file],
      outputs: [
        { path: flags.trainOut, flag: "--train-out" },
        { path: flags.validationOut, flag: "--validation-out" },
      ],
      force: flags.force,
    });
    // Two passes: count, then choose exactly that many and write.
    const first = await openDataset(file, flags);
    const megabytes = Math.max(1, Math.ceil(first.size / 1e6));
    const progress = new Progress("split", 2 * megabytes, "MB", process.stderr.isTTY === true && !flags.json);
    const train = DatasetWriter.create(flags.trainOut);
    let validation: DatasetWriter;
    try {
      validation = DatasetWriter.create(flags.validationOut);
    } catch (e) {
      await train.abort();
      throw e;
    }
    try {
      const n = await forEachRecord(first, "split", flags, () => {}, progress);
      const k = validationCount(flags.validation, n);
      const chosen = chooseIndices(n, k, flags.seed);
      const reader = await openDataset(file, flags);
      await forEachRecord(
        reader,
        "split",
        flags,
        (r, i) => (isChosen(chosen, i) ? validation : train).write(sameFormat(r, reader)),
        progress,
      );
      progress.done();
      await train.commit();
      await validation.commit();
      report(
        flags,
        {
          file,
          format: reader.format,
          records: n,
          train: { out: flags.trainOut, records: train.count },
          validation: { out: flags.validationOut, records: validation.count },
          seed: flags.seed,
          skipped: skippedSummary(reader),
        },
        `${flags.trainOut}: ${train.count} records, ${flags.validationOut}: ${validation.count} records (seed ${flags.seed})` +
          skippedText(reader),
      );
    } finally {
      progress.done();
      await train.abort();
      await validation.abort();
    }
  });
}
