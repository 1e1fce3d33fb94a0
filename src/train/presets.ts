// Model shapes to pretrain: named presets and config.json files.
import { readFileSync } from "node:fs";
import { UserError } from "../errors.js";
import type { LlamaConfig } from "../model/config.js";

/** A model shape before the vocabulary is known (it comes from the data's tokenizer). */
export interface ModelShape {
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffn: number;
  contextLength: number;
  /** Vocabulary size; must equal the tokenizer's when given. */
  vocab?: number;
  normEps?: number;
  ropeFreqBase?: number;
  /** The output head reuses the token embedding. */
  tiedEmbeddings?: boolean;
}

/**
 * Named shapes: tiny (~1M parameters with a 1k vocabulary), small (~5M), and llama2.c's
 * stories 15M, 42M and 110M shapes.
 */
export const PRESETS: Record<string, ModelShape> = {
  tiny: { dim: 128, layers: 4, heads: 4, kvHeads: 4, ffn: 384, contextLength: 512 },
  small: { dim: 256, layers: 6, heads: 8, kvHeads: 4, ffn: 688, contextLength: 512 },
  "15m": { dim: 288, layers: 6, heads: 6, kvHeads: 6, ffn: 768, contextLength: 256 },
  "42m": { dim: 512, layers: 8, heads: 8, kvHeads: 8, ffn: 1376, contextLength: 1024 },
  "110m": { dim: 768, layers: 12, heads: 12, kvHeads: 12, ffn: 2048, contextLength: 1024 },
};

const SHAPE_KEYS: Record<string, string> = {
  dim: "number",
  layers: "number",
  heads: "number",
  kvHeads: "number",
  ffn: "number",
  contextLength: "number",
  vocab: "number",
  normEps: "number",
  ropeFreqBase: "number",
  tiedEmbeddings: "boolean",
};

/** A preset name, or the path of a JSON file with the ModelShape fields (kvHeads defaults to heads). */
export function readModelShape(spec: string): ModelShape {
  const preset = PRESETS[spec.toLowerCase()];
  if (preset) return { ...preset };
  if (!spec.endsWith(".json")) {
    throw new UserError(
      `--model ${spec}: not a preset (${Object.keys(PRESETS).join(", ")}) or a .json config file`,
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(spec, "utf8"));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(`${spec}: ${code ? `cannot read (${code})` : "not valid JSON"}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new UserError(`${spec}: expected a JSON object`);
  const o = raw as Record<string, unknown>;
  for (const [k, v] of Object.entries(o)) {
    const want = SHAPE_KEYS[k];
    if (!want)
      throw new UserError(`${spec}: unknown key "${k}" (known: ${Object.keys(SHAPE_KEYS).join(", ")})`);
    if (typeof v !== want) throw new UserError(`${spec}: "${k}" must be a ${want}`);
  }
  for (const k of ["dim", "layers", "heads", "ffn", "contextLength"]) {
    if (o[k] === undefined) throw new UserError(`${spec}: "${k}" is missing`);
  }
  return {
    ...(o as unknown as ModelShape),
    kvHeads: (o.kvHeads as number | undefined) ?? (o.heads as number),
  };
}

/** The full config of a shape for a vocabulary of `vocab` tokens. */
export function configOfShape(s: ModelShape, vocab: number, what: string): LlamaConfig {
  if (s.vocab !== undefined && s.vocab !== vocab) {
    throw new UserError(`${what}: the config says vocab ${s.vocab} but the tokenizer has ${vocab} tokens`);
  }
  if (!Number.isInteger(s.heads) || s.heads < 1 || s.dim % s.heads !== 0) {
    throw new UserError(`${what}: dim ${s.dim} is not divisible by ${s.heads} heads`);
  }
  const headDim = s.dim / s.heads;
  return {
    architecture: "llama",
    dim: s.dim,
    layers: s.layers,
    heads: s.heads,
    kvHeads: s.kvHeads,
    headDim,
    ffn: s.ffn,
    vocab,
    contextLength: s.contextLength,
    normEps: s.normEps ?? 1e-5,
    rope: { dim: headDim, freqBase: s.ropeFreqBase ?? 10000, freqScale: 1, neox: false },
  };
}
