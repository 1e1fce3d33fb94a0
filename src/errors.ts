/**
 * Machine-readable error codes of the library, on `error.code`: what a caller may want to tell
 * apart without reading the message.
 */
export type ErrorCode =
  /** Any other bad input: a file, an option, a record, a request. */
  | "ERR_INVALID_INPUT"
  /** The prompt (or an input to embed) does not fit the context. */
  | "ERR_CONTEXT_OVERFLOW"
  /** The prompt has no tokens. */
  | "ERR_EMPTY_PROMPT"
  /** The model is generating already (one generation at a time). */
  | "ERR_MODEL_BUSY"
  /** The model was disposed of, or its thread stopped. */
  | "ERR_MODEL_DISPOSED"
  /** Chat needs a chat template, and the model file has none (or a broken one). */
  | "ERR_NO_CHAT_TEMPLATE"
  /** The work was stopped through its AbortSignal (AbortError). */
  | "ABORT_ERR";

/**
 * An error the user caused (bad file, flag, record or request). Its message is one line that
 * names the input and says what is wrong; the CLI prints it and exits 2, the server answers 4xx.
 */
export class UserError extends Error {
  override name = "UserError";
  /** HTTP status the server answers with for this error. */
  readonly status: number;
  readonly code: ErrorCode;
  constructor(message: string, status = 400, code: ErrorCode = "ERR_INVALID_INPUT") {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * Work stopped through its AbortSignal. Named "AbortError" with code "ABORT_ERR", as Node's own
 * aborted operations are, so `e.name === "AbortError"` checks work; the signal's reason is the cause.
 */
export class AbortError extends Error {
  override name = "AbortError";
  readonly code = "ABORT_ERR";
  constructor(message = "the operation was aborted", options?: { cause?: unknown }) {
    super(message, options);
  }
}

export function isUserError(e: unknown): e is UserError {
  return e instanceof UserError;
}

/** What the file system said, in words, for the errors a user's path can cause. */
const PATH_ERRORS: Record<string, string> = {
  ENOENT: "no such file or directory",
  EEXIST: "exists already",
  EISDIR: "is a directory",
  ENOTDIR: "a part of the path is not a directory",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EROFS: "the file system is read-only",
  ENOSPC: "no space left on the device",
  EDQUOT: "disk quota exceeded",
  ENAMETOOLONG: "the name is too long",
  ELOOP: "too many symbolic links",
};

/**
 * A Node file-system error about a path (ENOENT, EEXIST, EISDIR, ENOTDIR, EACCES...) as a UserError
 * naming the path: `out.jsonl: is a directory (EISDIR)`; undefined for any other error. A rename
 * names its destination, the path the user gave. An error that carries no path (reading a
 * directory as a file fails in `read`, after the open) says which call failed instead.
 */
export function userErrorOfSystemError(e: unknown): UserError | undefined {
  // Not `instanceof Error`: an error from another realm (a vm context) is still one.
  if (typeof e !== "object" || e === null) return undefined;
  const { code, path, dest, syscall } = e as NodeJS.ErrnoException & { dest?: string };
  if (typeof code !== "string" || !(code in PATH_ERRORS)) return undefined;
  const named = typeof dest === "string" ? dest : path;
  if (typeof named === "string") return new UserError(`${named}: ${PATH_ERRORS[code]} (${code})`);
  if (typeof syscall !== "string") return undefined;
  const what =
    code === "EISDIR" ? "a path given is a directory" : `a file operation failed: ${PATH_ERRORS[code]}`;
  return new UserError(`${what} (${code} in ${syscall})`);
}
