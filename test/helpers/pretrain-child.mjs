// A pretraining run in a process of its own (for tests that kill it): the built library
// (dist/), token ids from a file of little-endian int32, the last tenth held out for validation.
//   node pretrain-child.mjs IDS.bin TOKENIZER.gguf RUN_DIR SETTINGS.json [resume]
import { readFileSync } from "node:fs";
import { dirname } from "node:path";
import { pretrain, resumePretraining, TokenArray } from "../../dist/index.js";

const [idsPath, tokenizerPath, run, settingsPath, mode] = process.argv.slice(2);
const bytes = readFileSync(idsPath);
const ids = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
const cut = Math.floor(ids.length * 0.9);
const data = {
  source: dirname(idsPath),
  train: new TokenArray(ids.subarray(0, cut)),
  val: new TokenArray(ids.subarray(cut)),
  tokenizerPath,
};
if (mode === "resume") await resumePretraining(run, data, { threads: 2 });
else await pretrain(JSON.parse(readFileSync(settingsPath, "utf8")), data, run, { threads: 2 });
