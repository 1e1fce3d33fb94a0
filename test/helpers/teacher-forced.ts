// The teacher-forced logit comparison with llama.cpp (node-llama-cpp): llama.cpp's greedy
// continuation of a prompt, and our engine's argmax and logit gap at each step along it.
import type { Llama } from "node-llama-cpp";
import { expect } from "vitest";
import { loadModel } from "../../src/model/model.js";

/** llama.cpp's greedy continuation of `prompt`, `n` tokens, with an f32 KV cache. */
export async function llamaCppGreedy(
  llama: Llama,
  path: string,
  prompt: number[],
  n: number,
): Promise<number[]> {
  const model = await llama.loadModel({ modelPath: path });
  try {
    const ctx = await model.createContext({
      contextSize: 256,
      threads: 2,
      experimentalKvCacheKeyType: "F32",
      experimentalKvCacheValueType: "F32",
    });
    const seq = ctx.getSequence();
    const out: number[] = [];
    for await (const t of seq.evaluate(prompt as never, { temperature: 0 })) {
      out.push(t as number);
      if (out.length >= n) break;
    }
    await ctx.dispose();
    return out;
  } finally {
    await model.dispose();
  }
}

export interface Step {
  /** Our argmax. */
  ours: number;
  /** How far below our top logit llama.cpp's choice lies (0 when they agree). */
  gap: number;
  /** Largest |logit| of the step. */
  scale: number;
}

/** Runs our engine teacher-forced along llama.cpp's continuation `ref`. */
export async function ourSteps(path: string, prompt: number[], ref: number[], threads = 1): Promise<Step[]> {
  const model = await loadModel(path, { worker: false, threads, contextSize: 128 });
  try {
    const steps: Step[] = [];
    let logits = model.llama.forward(prompt, 0);
    for (let i = 0; i < ref.length; i++) {
      let best = 0;
      let scale = 0;
      for (let v = 0; v < logits.length; v++) {
        if (logits[v]! > logits[best]!) best = v;
        scale = Math.max(scale, Math.abs(logits[v]!));
      }
      steps.push({ ours: best, gap: logits[best]! - logits[ref[i]!]!, scale });
      if (i + 1 < ref.length) logits = model.llama.forward([ref[i]!], prompt.length + i);
    }
    return steps;
  } finally {
    await model.dispose();
  }
}

/**
 * Compares the two engines on `path` along llama.cpp's greedy continuation of `prompt`: f32 files
 * must agree on every step; quantized ones within the rounding noise interop-llama.test.ts
 * explains (our choice at most 3% of the logit range above llama.cpp's, 80% identical). Returns
 * llama.cpp's tokens.
 */
export async function expectSameAsLlamaCpp(
  llama: Llama,
  path: string,
  prompt: number[],
  quantized: boolean,
  tokens = 24,
  threads = 1,
): Promise<number[]> {
  const ref = await llamaCppGreedy(llama, path, prompt, tokens);
  expect(ref.length).toBe(tokens);
  const steps = await ourSteps(path, prompt, ref, threads);
  let same = 0;
  steps.forEach((s, i) => {
    if (s.ours === ref[i]) same++;
    expect(s.gap, `step ${i}: ours ${s.ours}, llama.cpp ${ref[i]}`).toBeLessThanOrEqual(
      (quantized ? 0.03 : 0) * s.scale,
    );
  });
  expect(same / ref.length).toBeGreaterThanOrEqual(quantized ? 0.8 : 1);
  return ref;
}
