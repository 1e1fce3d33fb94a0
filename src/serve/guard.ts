/**
 * Who may talk to the server: the API key, the Host header (DNS rebinding) and the Origin header
 * (web pages on other sites), with the origins `--cors` lets in.
 *
 * A browser lets any page send requests to 127.0.0.1; what protects a local server is that the
 * browser says where the request comes from. A page on another site carries its Origin, which
 * must be the server's own or one allowed by --cors. A page that rebinds its own host name to
 * 127.0.0.1 is same-origin for the browser but carries its host name in Host, which a server
 * bound to loopback does not answer to.
 */
import { timingSafeEqual } from "node:crypto";
import { UserError } from "../errors.js";

/** Constant-time comparison of a Bearer token with the key. */
export function keyMatches(authorization: string | undefined, key: Buffer): boolean {
  const m = /^Bearer\s+(.+)$/i.exec(authorization?.trim() ?? "");
  if (!m) return false;
  const given = Buffer.from(m[1]!.trim());
  return given.length === key.length && timingSafeEqual(given, key);
}

export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, "$1");
  return h === "localhost" || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h) || /^::ffff:127\./.test(h);
}

/**
 * The host names a server bound to `bindHost` answers to: for a loopback address, the loopback
 * names and the address itself; otherwise undefined, meaning any (clients reach a server bound to
 * every interface by whatever address or name routes to it).
 */
export function allowedHostNames(bindHost: string): Set<string> | undefined {
  if (!isLoopbackHost(bindHost)) return undefined;
  return new Set(["localhost", "127.0.0.1", "::1", bindHost.toLowerCase().replace(/^\[(.*)\]$/, "$1")]);
}

/** The host name of a Host header ("name", "name:port", "[v6]" or "[v6]:port"), lowercased. */
export function hostNameOf(hostHeader: string): string | undefined {
  const h = hostHeader.trim().toLowerCase();
  const v6 = /^\[([0-9a-f:.]+)\](?::\d{1,5})?$/.exec(h);
  if (v6) return v6[1];
  const m = /^([^:[\]/\s@]+)(?::\d{1,5})?$/.exec(h);
  return m?.[1];
}

/** The origins --cors allows: a list of scheme://host[:port], or any with "*". */
export class CorsPolicy {
  readonly any: boolean;
  private readonly origins: Set<string>;

  /** `entries` are origins or comma-separated lists of them; "*" allows every origin. */
  constructor(entries: readonly string[]) {
    const list = entries
      .flatMap((e) => e.split(","))
      .map((e) => e.trim())
      .filter(Boolean);
    this.any = list.includes("*");
    this.origins = new Set(list.filter((o) => o !== "*").map(normalOrigin));
  }

  allows(origin: string): boolean {
    if (this.any) return true;
    const o = origin.trim().toLowerCase();
    return this.origins.has(o === "null" ? "null" : (tryOrigin(o) ?? ""));
  }
}

/** An origin as browsers send it (scheme://host[:port], lowercase, default port left out), or "null". */
function normalOrigin(origin: string): string {
  if (origin.toLowerCase() === "null") return "null";
  const o = tryOrigin(origin);
  if (!o) {
    throw new UserError(`--cors: "${origin}" is not an origin (like http://localhost:3000), "null" or "*"`);
  }
  return o;
}

function tryOrigin(origin: string): string | undefined {
  try {
    const u = new URL(origin);
    if (!/^https?:$/.test(u.protocol) || u.username || u.password) return undefined;
    if ((u.pathname !== "/" && u.pathname !== "") || u.search || u.hash) return undefined;
    return u.origin.toLowerCase();
  } catch {
    return undefined;
  }
}

/** True when `origin` is the origin of the server the request was sent to (its Host header). */
export function isSameOrigin(origin: string, hostHeader: string | undefined): boolean {
  if (hostHeader === undefined || /[@/\\?#\s]/.test(hostHeader.trim())) return false;
  try {
    const u = new URL(origin);
    // The scheme is left out: a proxy in front may speak https to the browser.
    return /^https?:$/.test(u.protocol) && u.host.toLowerCase() === new URL(`http://${hostHeader}`).host;
  } catch {
    return false;
  }
}
