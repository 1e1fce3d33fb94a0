import type { Command } from "commander";
import { DatasetWriter, toFormat } from "../data/dataset-io.js";
import type { DatasetRecord, RecordReader } from "../data/records.js";
import { Progress } from "../util/progress.js";
import { addDatasetOptions, type DatasetFlags, describeSkipped, openDataset } from "./data-options.js";
import { FORCE_HELP } from "./options.js";

/** Flags of the commands that read one dataset and write records. */
export interface TransformFlags extends DatasetFlags {
  json?: boolean;
  force?: boolean;
}

/** --format, --skip-invalid, --json and --force. */
export function addTransformOptions(cmd: Command): Command {
  return addDatasetOptions(cmd).option("--json", "print a JSON summary").option("--force", FORCE_HELP);
}

/** `a 1, b 2` for counts by reason, largest first. */
export function describeCounts(counts: Record<string, number>): string {
  return describeSkipped(new Map(Object.entries(counts)));
}

/** Counts by reason. */
export class Counts {
  readonly byReason: Record<string, number> = {};
  total = 0;
  add(reason: string): void {
    this.byReason[reason] = (this.byReason[reason] ?? 0) + 1;
    this.total++;
  }
}

/**
 * Reads every record of `file` once (`passes` > 1 when the command reads it again, for the progress
 * total), calling `each` with the record and its index; shows progress by megabytes read.
 */
export async function forEachRecord(
  reader: RecordReader,
  label: string,
  flags: TransformFlags,
  each: (record: DatasetRecord, index: number) => Promise<void> | void,
  progress?: Progress,
): Promise<number> {
  const megabytes = Math.max(1, Math.ceil(reader.size / 1e6));
  const bar = progress ?? new Progress(label, megabytes, "MB", process.stderr.isTTY === true && !flags.json);
  let shown = 0;
  let index = 0;
  try {
    for await (const record of reader) {
      await each(record, index++);
      const mb = Math.floor(reader.bytesRead / 1e6);
      if (mb > shown) {
        bar.tick(mb - shown);
        shown = mb;
      }
    }
  } finally {
    await reader.close();
    if (!progress) bar.done();
  }
  return index;
}

/** Opens `file`, writes what `each` returns to `out` (temp file, renamed at the end). */
export async function transformDataset(
  file: string,
  out: string,
  label: string,
  flags: TransformFlags,
  each: (
    record: DatasetRecord,
    write: (value: unknown) => Promise<void>,
    reader: RecordReader,
  ) => Promise<void> | void,
): Promise<{ reader: RecordReader; records: number; written: number }> {
  const reader = await openDataset(file, flags);
  const writer = DatasetWriter.create(out);
  try {
    const records = await forEachRecord(reader, label, flags, (record) =>
      each(record, (value) => writer.write(value), reader),
    );
    await writer.commit();
    return { reader, records, written: writer.count };
  } finally {
    await writer.abort();
  }
}

/** A record in the shape of the format it was read in. */
export function sameFormat(record: DatasetRecord, reader: RecordReader): unknown {
  const converted = toFormat(record, reader.format);
  if (!converted.ok) throw new Error(`a ${reader.format} record cannot be written as ${reader.format}`);
  return converted.value;
}

/** The skipped-invalid part of a summary. */
export function skippedSummary(reader: RecordReader) {
  return { total: reader.skippedCount, byReason: Object.fromEntries(reader.skipped) };
}

/** `; 2 invalid skipped (missing field 2)` or nothing. */
export function skippedText(reader: RecordReader): string {
  return reader.skippedCount > 0
    ? `; ${reader.skippedCount} invalid skipped (${describeSkipped(reader.skipped)})`
    : "";
}

/** Prints the summary as JSON or as one line of text. */
export function report(flags: TransformFlags, summary: object, line: string): void {
  process.stdout.write(flags.json ? `${JSON.stringify(summary)}\n` : `${line}\n`);
}
