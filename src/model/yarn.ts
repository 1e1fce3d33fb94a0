/**
 * YaRN rope scaling as ggml's rope computes it (ggml_rope_yarn_corr_dims and rope_yarn). Pair i
 * turns by a blend of the interpolated angle (θ·freqScale) and the original one (θ): pairs that
 * turn fast (many turns within the original context) keep θ, slow ones are interpolated, and a
 * linear ramp between the two correction dimensions mixes them. cos and sin are also scaled by
 * 1 + 0.1·ln(1/freqScale), so both q and k grow by that much.
 *
 * Both fit the plain rope kernel: the blend is a per-pair divisor of the angle, like Llama 3.1's
 * rope_freqs, and the scale of q and k is a scale of the attention scores, taken by q alone.
 */
import type { RopeConfig } from "./config.js";

/** ggml's defaults; llama.cpp reads other values for other architectures only. */
const BETA_FAST = 32;
const BETA_SLOW = 1;

/** The dimension whose pair turns `turns` times over the original context (ggml_rope_yarn_corr_dim). */
function correctionDim(ropeDim: number, originalContext: number, turns: number, freqBase: number): number {
  return (ropeDim * Math.log(originalContext / (turns * 2 * Math.PI))) / (2 * Math.log(freqBase));
}

/**
 * The per-pair angle divisors that make the rope kernel's angle pos·freqScale·base^(−2i/dim)/d_i
 * equal YaRN's, combined with the file's rope_freqs (`fileFactors`) when it has them. Undefined
 * when the model has neither.
 */
export function ropePairFactors(rope: RopeConfig, fileFactors?: Float32Array): Float32Array | undefined {
  if (rope.yarnOriginalContext === undefined) return fileFactors;
  const half = rope.dim / 2;
  const low = Math.max(
    0,
    Math.floor(correctionDim(rope.dim, rope.yarnOriginalContext, BETA_FAST, rope.freqBase)),
  );
  const high = Math.min(
    rope.dim - 1,
    Math.ceil(correctionDim(rope.dim, rope.yarnOriginalContext, BETA_SLOW, rope.freqBase)),
  );
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    // 1 below `low` (keep θ), 0 above `high` (interpolate), linear between
    const extrapolate = 1 - Math.min(1, Math.max(0, (i - low) / Math.max(0.001, high - low)));
    // θ·(freqScale·(1 − r) + r) = θ·freqScale / d  ⇒  d = 1 / ((1 − r) + r / freqScale)
    const divisor = 1 / (1 - extrapolate + extrapolate / rope.freqScale);
    out[i] = (fileFactors?.[i] ?? 1) * divisor;
  }
  return out;
}

/**
 * The scale of cos and sin (ggml's mscale): rope.scaling.attn_factor, times YaRN's
 * 1 + 0.1·ln(factor) when it stretches the context (llama.cpp cancels it when factor <= 1).
 */
export function ropeMagnitude(rope: RopeConfig): number {
  const attnFactor = rope.attnFactor ?? 1;
  const factor = 1 / rope.freqScale;
  if (rope.yarnOriginalContext === undefined || factor <= 1) return attnFactor;
  return attnFactor * (1 + 0.1 * Math.log(factor));
}
