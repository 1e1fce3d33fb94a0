/**
 * Log-probabilities of generated tokens, as OpenAI's API and llama.cpp's server report them: the
 * log-softmax of the model's raw logits at each step (temperature 1, before the repetition
 * penalty, top-k, top-p, min-p and temperature shape the draw). That is the model's own
 * distribution, the one every sampler setting starts from; llama.cpp's server gives the same
 * unless asked for `post_sampling_probs`.
 */

export interface TopLogprob {
  id: number;
  logprob: number;
}

export interface TokenLogprob extends TopLogprob {
  /** The most likely tokens at this step, most likely first (ties: lower id first). */
  top: TopLogprob[];
}

/** Most alternatives a request may ask for (OpenAI's limit for top_logprobs). */
export const MAX_TOP_LOGPROBS = 20;

/**
 * The log-probability of token `id` under `logits`, and the `top` most likely tokens with theirs.
 * One pass for the normaliser (in float64) and one for the top tokens (insertion into a list of
 * at most `top`).
 */
export function tokenLogprob(logits: Float32Array, id: number, top: number): TokenLogprob {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  const logZ = max + Math.log(sum);
  const best: number[] = [];
  if (top > 0) {
    for (let i = 0; i < logits.length; i++) {
      const v = logits[i]!;
      if (best.length === top && !(v > logits[best[top - 1]!]!)) continue;
      let at = best.length === top ? top - 1 : best.length;
      while (at > 0 && v > logits[best[at - 1]!]!) {
        best[at] = best[at - 1]!;
        at--;
      }
      best[at] = i;
    }
  }
  return {
    id,
    logprob: logits[id]! - logZ,
    top: best.map((t) => ({ id: t, logprob: logits[t]! - logZ })),
  };
}
