// Collecting an importance matrix as llama-imatrix does (tools/imatrix/imatrix.cpp): the text is
// evaluated in the chunks perplexity uses (BOS first, `ctx` tokens each, from an empty cache), and
// for every matrix of the transformer blocks (and output.weight when asked) the squares of its
// input activations are summed per column over all tokens of all chunks, with the token count.
import type { Model } from "../model/model.js";
import type { Imatrix } from "../quant/imatrix.js";
import { openForScoring, type PerplexityOptions, type PerplexityResult, perplexity } from "./perplexity.js";

export interface CollectImatrixOptions extends Omit<PerplexityOptions, "klDivergenceBase"> {
  /** Also collect the inputs of output.weight (llama.cpp's --process-output); default false. */
  processOutput?: boolean;
  /** The calibration file's name, recorded in the imatrix's datasets. */
  dataset?: string;
}

/**
 * The importance matrix of `model` (a path, or a Model loaded with logitsAll and a context of at
 * least `ctx`) on `text`, and the perplexity measured on the way.
 */
export async function collectImatrix(
  model: Model | string,
  text: string,
  options: CollectImatrixOptions = {},
): Promise<{ imatrix: Imatrix; perplexity: PerplexityResult }> {
  const sums = new Map<string, { squares: Float64Array; tokens: number }>();
  const wanted = (name: string) =>
    name.startsWith("blk.") || (options.processOutput === true && name === "output.weight");
  const observe = (tensors: readonly string[], x: Float32Array, n: number, cols: number) => {
    const names = tensors.filter(wanted);
    if (names.length === 0) return;
    // Tensors that read the same input (q, k and v; gate and up) get the same sums.
    const squares = new Float64Array(cols);
    for (let t = 0; t < n; t++) {
      for (let j = 0; j < cols; j++) squares[j]! += x[t * cols + j]! ** 2;
    }
    for (const name of names) {
      let e = sums.get(name);
      if (!e) {
        e = { squares: new Float64Array(cols), tokens: 0 };
        sums.set(name, e);
      }
      for (let j = 0; j < cols; j++) e.squares[j]! += squares[j]!;
      e.tokens += n;
    }
  };
  const ctx = options.ctx ?? 512;
  const { model: m, owned } = await openForScoring(model, ctx, options);
  m.llama.observeMatmulInputs(observe);
  try {
    const result = await perplexity(m, text, options);
    const entries = new Map(
      [...sums].map(([name, e]) => [name, { sums: Float32Array.from(e.squares), counts: [e.tokens] }]),
    );
    return {
      imatrix: {
        entries,
        datasets: options.dataset !== undefined ? [options.dataset] : [],
        chunkCount: result.chunks,
        chunkSize: result.ctx,
        legacy: false,
      },
      perplexity: result,
    };
  } finally {
    m.llama.observeMatmulInputs(undefined);
    if (owned) await m.dispose();
  }
}
