import type { Command } from "commander";
import { registerDataCleanShareGpt } from "./data-clean-sharegpt.js";
import { registerDataConvert } from "./data-convert.js";
import { registerDataDedup } from "./data-dedup.js";
import { registerDataFilter } from "./data-filter.js";
import { registerDataPreview } from "./data-preview.js";
import { registerDataSample } from "./data-sample.js";
import { registerDataSelfInstruct } from "./data-self-instruct.js";
import { registerDataSplit } from "./data-split.js";
import { registerDataStats } from "./data-stats.js";
import { registerDataTokenize } from "./data-tokenize.js";

/** `smallhammer data ...`: the dataset commands, one file per subcommand. */
export function registerData(program: Command): void {
  const data = program.command("data").description("make, check, convert and tokenize datasets");
  for (const register of DATA_COMMANDS) register(data);
}

const DATA_COMMANDS: ((data: Command) => void)[] = [
  registerDataStats,
  registerDataPreview,
  registerDataTokenize,
  registerDataSelfInstruct,
  registerDataCleanShareGpt,
  registerDataConvert,
  registerDataDedup,
  registerDataFilter,
  registerDataSplit,
  registerDataSample,
];
