// Loaded with `node --import ./test/helpers/max-rss.mjs ...`: when the process exits (also through
// process.exit), writes its peak resident set size in bytes to the file named by
// SMALLHAMMER_TEST_MAX_RSS_FILE, leaving stdout and stderr to the program under test.
import { writeFileSync } from "node:fs";

const out = process.env.SMALLHAMMER_TEST_MAX_RSS_FILE;
if (out) {
  process.on("exit", () => {
    writeFileSync(out, String(process.resourceUsage().maxRSS * 1024));
  });
}
