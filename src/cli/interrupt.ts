// Ctrl-C (SIGINT) and SIGTERM during long work: the first one aborts a signal the work watches
// (it saves what it has and returns), a second one exits at once. Either way the exit status is
// 128 + the signal's number (130, 143), as shells report a command a signal stopped, so a script
// can tell an interrupted run from a finished one.
import { constants } from "node:os";

const HANDLED = ["SIGINT", "SIGTERM"] as const;

export class Interruption {
  private readonly controller = new AbortController();
  private received: NodeJS.Signals | undefined;

  private readonly onSignal = (name: NodeJS.Signals) => {
    if (this.received !== undefined) process.exit(exitStatusOf(name));
    this.received = name;
    this.controller.abort();
  };

  /** Starts listening; call `dispose` when the work has returned. */
  constructor() {
    for (const name of HANDLED) process.on(name, this.onSignal);
  }

  /** Aborts on the first SIGINT or SIGTERM. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** The signal that stopped the work, if one came. */
  get stoppedBy(): NodeJS.Signals | undefined {
    return this.received;
  }

  /** Stops listening (a later Ctrl-C ends the process as usual). */
  dispose(): void {
    for (const name of HANDLED) process.off(name, this.onSignal);
  }

  /** Sets the exit status for work that stopped early: 128 + the signal's number (130 when none came). */
  setExitStatus(): void {
    process.exitCode = exitStatusOf(this.received ?? "SIGINT");
  }
}

function exitStatusOf(name: NodeJS.Signals): number {
  return 128 + constants.signals[name];
}
