/**
 * An error the user caused (bad file, flag, record or request). Its message is one line that
 * names the input and says what is wrong; the CLI prints it and exits 2, the server answers 4xx.
 */
export class UserError extends Error {
  override name = "UserError";
  /** HTTP status the server answers with for this error. */
  readonly status: number;
  constructor(message: string, status = 400) {
    super(message);
    this.status = status;
  }
}

export function isUserError(e: unknown): e is UserError {
  return e instanceof UserError;
}
