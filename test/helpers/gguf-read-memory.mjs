// Run as `node --expose-gc gguf-read-memory.mjs LIST.json`: reads the header of every GGUF file
// named in LIST.json with the built reader and prints one JSON line per file: whether it parsed,
// the error's class and message if not, and the heap the parsed header keeps (heap and external
// memory after a full collection, with the header alive, less the same before reading). The last
// line holds the process's peak resident set size.
import { readFileSync } from "node:fs";
import { readGgufHeader } from "../../dist/formats/gguf.js";

const files = JSON.parse(readFileSync(process.argv[2], "utf8"));
const used = () => {
  globalThis.gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.external;
};
for (const file of files) {
  const before = used();
  let header;
  let outcome;
  try {
    header = readGgufHeader(file);
    outcome = { file, ok: true, keys: header.metadata.size, tensors: header.tensors.length };
  } catch (e) {
    outcome = { file, ok: false, error: e?.constructor?.name ?? typeof e, message: String(e?.message ?? e) };
  }
  outcome.retained = used() - before;
  header = undefined;
  process.stdout.write(`${JSON.stringify(outcome)}\n`);
}
process.stdout.write(`${JSON.stringify({ maxRss: process.resourceUsage().maxRSS * 1024 })}\n`);
