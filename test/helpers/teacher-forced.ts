// The teacher-forced logit comparison with llama.cpp (node-llama-cpp): llama.cpp's greedy
// continuation of a prompt, and our engine's argmax and logit gap at each step along it.
import type { Llama } from "node-llama-cpp";
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
