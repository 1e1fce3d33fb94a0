// Memory a GGUF header takes to read, measured in child processes: the reader must refuse a file
// whose metadata would decode to much more than the file's size (millions of empty arrays, of
// booleans, of tiny keys...), or read it within a few times its size, for every metadata shape.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GgufWriter, METADATA_MEMORY_BASE, METADATA_MEMORY_PER_FILE_BYTE } from "../src/formats/gguf.js";
import { Rng } from "../src/util/random.js";
import { type CliResult, ensureBuilt, ROOT, runCli, runNode } from "./helpers/cli.js";
import {
  MEMORY_SHAPES,
  type MemoryShape,
  randomMetadataGguf,
  writeMemoryShape,
} from "./helpers/gguf-bytes.js";

const MIB = 1 << 20;
/**
 * What V8 adds to a process's peak RSS beyond the live objects while it builds many of them: the
 * young generation's semi-spaces and the old generation's growth ahead of use.
 */
const GC_HEADROOM = 64 * MIB;

let dir: string;
let baselineRss: number;

beforeAll(async () => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "smallhammer-gguf-limits-"));
  const tiny = join(dir, "tiny.gguf");
  new GgufWriter().setString("general.architecture", "llama").write(tiny);
  const r = await inspectWithPeakRss(tiny);
  expect(r.status, r.stderr).toBe(0);
  baselineRss = r.peakRss;
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** `smallhammer inspect FILE` in a child process, with that process's peak resident set size. */
async function inspectWithPeakRss(file: string): Promise<CliResult & { peakRss: number }> {
  const rssFile = join(dir, "max-rss.txt");
  rmSync(rssFile, { force: true });
  const r = await runCli(["inspect", file], {
    nodeArgs: ["--import", join(ROOT, "test", "helpers", "max-rss.mjs")],
    env: { ...process.env, SMALLHAMMER_TEST_MAX_RSS_FILE: rssFile },
  });
  return { ...r, peakRss: Number(readFileSync(rssFile, "utf8")) };
}

/** Exit 0, or exit 2 with one line on stderr naming the file; never a stack trace or a signal. */
function expectReadOrRefused(r: CliResult, file: string): "read" | "refused" {
  expect(r.signal, r.stderr).toBeNull();
  expect(r.stderr).not.toContain("    at ");
  if (r.status === 0) return "read";
  const lines = r.stderr.replace(/\n$/, "").split("\n");
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^smallhammer: /);
  expect(lines[0]).toContain(file);
  expect(r.status).toBe(2);
  return "refused";
}

describe("GGUF header memory", () => {
  it("refuses a 25 MB metadata array of empty arrays at once, in a few MB", async () => {
    const file = join(dir, "empty-arrays.gguf");
    const size = writeMemoryShape(file, "empty-u8-arrays", 25e6);
    expect(size).toBeGreaterThan(24e6);
    const r = await inspectWithPeakRss(file);
    expect(expectReadOrRefused(r, file)).toBe("refused");
    expect(r.stderr).toContain('metadata key "shape"');
    expect(r.stderr).toMatch(/memory/);
    // Counts are charged before anything is built: the refusal costs no more than the file's size
    // over a run on a tiny file (reading all 2 million arrays took 870 MB).
    expect(r.peakRss - baselineRss).toBeLessThan(size);
  });

  for (const shape of MEMORY_SHAPES) {
    it(`reads or refuses a 16 MB file of ${shape} within ${METADATA_MEMORY_PER_FILE_BYTE}x its size and the GC headroom`, async () => {
      const file = join(dir, `${shape}.gguf`);
      const size = writeMemoryShape(file, shape as MemoryShape, 16e6);
      const r = await inspectWithPeakRss(file);
      const outcome = expectReadOrRefused(r, file);
      if (outcome === "refused") expect(r.stderr).toMatch(/memory/);
      expect(r.peakRss - baselineRss).toBeLessThan(METADATA_MEMORY_PER_FILE_BYTE * size + GC_HEADROOM);
      rmSync(file);
    });
  }

  it("keeps the decoded header within its budget for every generated shape, and never crashes", async () => {
    // Small random files of every shape, and larger ones of the costly shapes, read in one child
    // that measures what each parsed header keeps in memory.
    const rng = new Rng(20240601);
    const files: string[] = [];
    for (let i = 0; i < 400; i++) {
      const file = join(dir, `random-${i}.gguf`);
      writeFileSync(file, randomMetadataGguf(rng));
      files.push(file);
    }
    for (const shape of MEMORY_SHAPES) {
      const file = join(dir, `small-${shape}.gguf`);
      writeMemoryShape(file, shape as MemoryShape, 2e6);
      files.push(file);
    }
    const list = join(dir, "files.json");
    writeFileSync(list, JSON.stringify(files));
    const r = await runNode(["--expose-gc", join(ROOT, "test", "helpers", "gguf-read-memory.mjs"), list]);
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines).toHaveLength(files.length + 1);
    let parsed = 0;
    for (const [i, line] of lines.slice(0, -1).entries()) {
      const o = JSON.parse(line) as {
        file: string;
        ok: boolean;
        error?: string;
        message?: string;
        retained: number;
      };
      expect(o.file).toBe(files[i]);
      if (o.ok) parsed++;
      else {
        expect(o.error, `${o.file}: ${o.message}`).toBe("UserError");
        expect(o.message).toContain(o.file);
        expect(o.message).not.toContain("\n");
      }
      const size = readFileSync(o.file).length;
      // What a parsed header keeps stays within the reader's own limit (1 MiB for measuring noise).
      expect(o.retained, o.file).toBeLessThan(
        METADATA_MEMORY_PER_FILE_BYTE * size + METADATA_MEMORY_BASE + MIB,
      );
    }
    expect(parsed).toBeGreaterThan(0);
    expect(parsed).toBeLessThan(files.length);
  });
});
