// The repository stands alone and the package carries what it needs: a clone with nothing beside
// it runs every test, and the published tarball holds no bench code and no source maps that
// point at sources it lacks.
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ensureBuilt, ROOT } from "./helpers/cli.js";

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...filesUnder(path));
    else out.push(path);
  }
  return out;
}

it("no source, test, bench or CI file reads outside the repository", () => {
  const roots = ["src", "test", "bench", "scripts", ".ci"].map((d) => join(ROOT, d));
  const files = [...roots.flatMap(filesUnder), join(ROOT, "README.md"), join(ROOT, "package.json")];
  // A sibling directory of the clone, or an absolute path of one machine's file system.
  const outside = /\.\.\/shared\b|"\.\.",\s*"shared"|(?<![\w.])\/(?:work|home|root|Users|farm|mnt)\/[A-Za-z]/;
  const offenders: string[] = [];
  for (const file of files) {
    if (file.includes(`${join("test", "fixtures")}`) || statSync(file).size > 2_000_000) continue;
    readFileSync(file, "utf8")
      .split("\n")
      .forEach((line, i) => {
        // This file's own pattern is the one line allowed to spell what it looks for.
        if (outside.test(line) && !line.includes("const outside =")) {
          offenders.push(`${relative(ROOT, file)}:${i + 1}: ${line.trim()}`);
        }
      });
  }
  expect(offenders).toEqual([]);
});

it("every fixture has its origin and licence in test/fixtures/NOTICE", () => {
  const dir = join(ROOT, "test", "fixtures");
  const notice = readFileSync(join(dir, "NOTICE"), "utf8");
  for (const name of readdirSync(dir).filter((n) => n !== "NOTICE")) {
    expect(notice, name).toContain(`${name}\n  Origin:`);
  }
});

describe("the package", () => {
  let files: string[];
  beforeAll(() => {
    ensureBuilt();
    const r = spawnSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], {
      cwd: ROOT,
      encoding: "utf8",
    });
    expect(r.status, r.stderr).toBe(0);
    files = (JSON.parse(r.stdout)[0].files as { path: string }[]).map((f) => f.path);
  });

  it("holds the CLI, the library, the kernels, the licence and the README", () => {
    for (const f of ["LICENSE", "README.md", "dist/cli/main.js", "dist/index.js", "dist/index.d.ts"]) {
      expect(files).toContain(f);
    }
    expect(files).toContain("build/kernels.wasm");
    expect(files).toContain("build/kernels-relaxed.wasm");
  });

  it("holds no bench code and no source maps", () => {
    expect(files.filter((f) => f.startsWith("dist/bench/") || f.endsWith(".map"))).toEqual([]);
  });

  it("every relative import in the shipped JavaScript resolves inside the package", () => {
    const shipped = new Set(files);
    const missing: string[] = [];
    for (const f of files.filter((p) => p.endsWith(".js") && p.startsWith("dist/"))) {
      const text = readFileSync(join(ROOT, f), "utf8");
      for (const m of text.matchAll(/(?:from|import)\s*\(?\s*"(\.{1,2}\/[^"]+)"/g)) {
        const target = join(f, "..", m[1]!);
        if (!shipped.has(target)) missing.push(`${f} -> ${m[1]}`);
      }
    }
    expect(missing).toEqual([]);
  });
});
