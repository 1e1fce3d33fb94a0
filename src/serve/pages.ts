/**
 * The web chat page: its files served as they are (index.html at /, the others at /<name>, its
 * libraries at /vendor/<name>), open routes with a strict content security policy.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { extname } from "node:path";
import { fileURLToPath } from "node:url";
import type { FastifyInstance } from "fastify";

/** The chat page: index.html at /, the other files at /<name>. */
const PUBLIC_DIR = new URL("../../src/serve/public/", import.meta.url);
/** The page's libraries (markdown, sanitising, highlighting), copied there by `npm run build`, at /vendor/<name>. */
const VENDOR_DIR = new URL("../../build/public/vendor/", import.meta.url);
const PAGE_TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
};
const PAGE_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "cache-control": "no-cache",
};

interface PageFile {
  body: Buffer;
  type: string;
  status: number;
}

/**
 * The files of the chat page by route, read once. Without its libraries (a checkout not built
 * with `npm run build`) the page says so at /, and the API works all the same.
 */
export function pageFiles(): Map<string, PageFile> {
  const pages = new Map<string, PageFile>();
  const add = (dir: URL, name: string, route: string) => {
    const type = PAGE_TYPES[extname(name)];
    if (type) pages.set(route, { body: readFileSync(new URL(name, dir)), type, status: 200 });
  };
  for (const name of readdirSync(PUBLIC_DIR)) add(PUBLIC_DIR, name, name === "index.html" ? "/" : `/${name}`);
  if (existsSync(VENDOR_DIR)) {
    for (const name of readdirSync(VENDOR_DIR)) add(VENDOR_DIR, name, `/vendor/${name}`);
  } else {
    const text = `The chat page's libraries are missing from ${fileURLToPath(VENDOR_DIR)}: run npm run build.\n`;
    pages.set("/", { body: Buffer.from(text), type: "text/plain; charset=utf-8", status: 500 });
  }
  return pages;
}

/** Serves `pages` (from pageFiles) on open routes. */
export function registerPages(app: FastifyInstance, pages: Map<string, PageFile>): void {
  for (const [route, page] of pages) {
    app.get(route, { config: { open: true } }, (_req, reply) => {
      reply.code(page.status).headers(PAGE_HEADERS).type(page.type).send(page.body);
    });
  }
}
