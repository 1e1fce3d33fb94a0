// Pretraining data from a token cache directory (see data/token-cache.ts).
import { openTokenCache } from "../data/token-cache.js";
import type { OpenedPretrainData } from "./pretrain.js";

/** Opens a token cache as the train and validation token streams of a pretraining run. */
export async function openPretrainData(dir: string): Promise<OpenedPretrainData> {
  const cache = await openTokenCache(dir);
  const val = cache.split("val");
  return {
    source: dir,
    train: cache.split("train"),
    val: val.tokens > 0 ? val : undefined,
    tokenizerPath: cache.tokenizerPath,
    vocab: cache.index.vocabSize,
    close: () => cache.close(),
  };
}
