import type { Command } from "commander";
import { OUTPUT_FORMATS, toFormat } from "../data/dataset-io.js";
import { type DatasetFormat, parseFormatName } from "../data/records.js";
import { UserError } from "../errors.js";
import { checkOutputs } from "../util/output-path.js";
import {
  addTransformOptions,
  Counts,
  describeCounts,
  report,
  skippedSummary,
  skippedText,
  type TransformFlags,
  transformDataset,
} from "./data-transform.js";

interface ConvertFlags extends TransformFlags {
  to: string;
  out: string;
}

export function registerDataConvert(data: Command): void {
  const cmd = data
    .command("convert")
    .description(
      "rewrite a dataset in another format: alpaca, sharegpt, messages (OpenAI chat), completion; records the target cannot hold are counted and left out",
    )
    .argument("<file>", "JSONL or JSON array of alpaca, sharegpt, messages or completion records")
    .requiredOption("--to <format>", "alpaca, sharegpt, messages or completion")
    .requiredOption("--out <file>", "output (.json: one JSON array; otherwise JSONL)");
  addTransformOptions(cmd).action(async (file: string, flags: ConvertFlags) => {
    checkOutputs({ inputs: [file], outputs: [{ path: flags.out, flag: "--out" }], force: flags.force });
    const to = parseFormatName(flags.to);
    if (!(OUTPUT_FORMATS as readonly DatasetFormat[]).includes(to))
      throw new UserError(`--to: cannot write ${to}`);
    const left = new Counts();
    const { reader, records, written } = await transformDataset(
      file,
      flags.out,
      "convert",
      flags,
      async (r, write) => {
        const converted = toFormat(r, to);
        if (converted.ok) await write(converted.value);
        else left.add(converted.reason);
      },
    );
    report(
      flags,
      {
        file,
        out: flags.out,
        from: reader.format,
        to,
        records,
        written,
        notConverted: left,
        skipped: skippedSummary(reader),
      },
      `${flags.out}: ${written} of ${records} records as ${to} (from ${reader.format})` +
        (left.total > 0 ? `; ${left.total} not converted (${describeCounts(left.byReason)})` : "") +
        skippedText(reader),
    );
  });
}
