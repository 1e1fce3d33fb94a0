import { homedir } from "node:os";
import { isAbsolute, join } from "node:path";

/**
 * The user's cache directory for smallhammer: `$XDG_CACHE_HOME/smallhammer` when that is an
 * absolute path (the XDG rule: a relative one is ignored), else `~/.cache/smallhammer`. Files that
 * commands can make again (demo models, benchmark models) live here, never in the working directory.
 */
export function userCacheDir(...parts: string[]): string {
  const xdg = process.env.XDG_CACHE_HOME;
  const base = xdg && isAbsolute(xdg) ? xdg : join(homedir(), ".cache");
  return join(base, "smallhammer", ...parts);
}
