// Loaded with `node --import` into a command the data bench runs: at exit, writes the process's
// resource usage (peak RSS, CPU time) as JSON to file descriptor 3, which the bench reads.
import { writeSync } from "node:fs";

process.on("exit", () => {
  writeSync(3, JSON.stringify(process.resourceUsage()));
});
