/**
 * The server's log: fastify's logger (pino) writing JSON lines, or with format "pretty" one
 * readable line per record, made here from the JSON line (no extra dependency).
 */
import type { FastifyServerOptions } from "fastify";

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ["json", "pretty"] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

export interface LogOptions {
  /** Least severe level written; default info. */
  level?: LogLevel;
  /** JSON lines (default) or one readable line per record. */
  format?: LogFormat;
  /** Where lines go; default stderr. */
  destination?: { write(line: string): unknown };
}

const LEVEL_NAMES: Record<number, string> = {
  10: "TRACE",
  20: "DEBUG",
  30: "INFO",
  40: "WARN",
  50: "ERROR",
  60: "FATAL",
};

/** Fields pino adds that a reader of one line does not need. */
const HIDDEN = new Set(["level", "time", "msg", "pid", "hostname", "reqId"]);

/** One pino JSON line as "HH:MM:SS.mmm LEVEL message key=value ...". */
export function prettyLine(json: string): string {
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(json);
  } catch {
    return json.endsWith("\n") ? json : `${json}\n`;
  }
  const time = typeof record.time === "number" ? new Date(record.time).toISOString().slice(11, 23) : "";
  const level = LEVEL_NAMES[record.level as number] ?? String(record.level);
  const extra = Object.entries(record)
    .filter(([k]) => !HIDDEN.has(k))
    .map(([k, v]) => `${k}=${typeof v === "string" && !/\s/.test(v) ? v : JSON.stringify(v)}`);
  return `${[time, level.padEnd(5), String(record.msg ?? ""), ...extra].join(" ").trim()}\n`;
}

/** fastify's `logger` option for these settings (false: no log). */
export function loggerOptions(log: LogOptions | undefined): FastifyServerOptions["logger"] {
  if (!log || log.level === "silent") return false;
  const out = log.destination ?? process.stderr;
  const stream =
    log.format === "pretty" ? { write: (line: string) => out.write(prettyLine(line.trimEnd())) } : out;
  return { level: log.level ?? "info", stream };
}
