// The PyTorch peer of the training benchmarks: bench/llama_torch.py (one Llama in plain PyTorch,
// float32, CPU; "pretrain" and "lora" modes) run by a Python that imports torch. The script lives
// in the source checkout, next to src/, not in the npm package.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { UserError } from "../errors.js";
import type { LoraTarget } from "../model/lora.js";
import { runChild } from "./child.js";

/** A Python that imports torch. */
export interface TorchPeer {
  /** The interpreter (sys.executable). */
  python: string;
  torchVersion: string;
  /** The BLAS library torch multiplies matrices with. */
  blas: string;
  /** Whether that is the reference BLAS (several times slower than OpenBLAS or MKL). */
  referenceBlas: boolean;
}

/** What bench/llama_torch.py measures: the model's shape, the run and its timing. */
export interface TorchPeerRequest {
  mode: "pretrain" | "lora";
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffn: number;
  vocab: number;
  batch: number;
  seq: number;
  threads: number;
  /** Untimed steps first. */
  warmup: number;
  steps: number;
  /** "best": tokens/s of the fastest timed step; "mean": of all timed steps together. */
  timing: "best" | "mean";
  lr: number;
  /** Decoupled weight decay of the trained matrices. */
  weightDecay: number;
  gradClip: number;
  normEps: number;
  ropeBase: number;
  /** lora mode only. */
  rank?: number;
  alpha?: number;
  dropout?: number;
  targets?: LoraTarget[];
}

export interface TorchPeerResult {
  tokensPerSecond: number;
  stepSeconds: number[];
  losses: number[];
  /** Elements of every tensor, frozen or not. */
  parameters: number;
  trainable: number;
  peakRssBytes: number;
  torchVersion: string;
  blas: string;
  threads: number;
}

/** Path of bench/llama_torch.py: dist/bench/ (or src/bench/) → ../../bench/. */
export function torchPeerScript(): string {
  return fileURLToPath(new URL("../../bench/llama_torch.py", import.meta.url));
}

function probe(python: string, script: string): { peer?: TorchPeer; error: string } {
  const r = spawnSync(python, [script, "--probe"], { encoding: "utf8", timeout: 120_000 });
  const line = r.status === 0 ? r.stdout.split("\n").find((l) => l.startsWith("PROBE ")) : undefined;
  if (line) return { peer: JSON.parse(line.slice(6)) as TorchPeer, error: "" };
  const lastLine = (r.stderr ?? "").trim().split("\n").pop();
  return { error: r.error ? r.error.message : lastLine || `exit status ${r.status}` };
}

function peerScript(): string {
  const script = torchPeerScript();
  if (!existsSync(script))
    throw new Error(`the PyTorch peer ${script} is missing (it is part of the source checkout)`);
  return script;
}

/**
 * The Python the peer runs with: SMALLHAMMER_PYTHON when set (a user error when it cannot import
 * torch), else the first of python3 and /usr/bin/python3 that imports torch; undefined when none
 * does.
 */
export function findTorchPeer(): TorchPeer | undefined {
  const script = peerScript();
  const chosen = process.env.SMALLHAMMER_PYTHON;
  if (chosen) {
    const { peer, error } = probe(chosen, script);
    if (!peer) throw new UserError(`SMALLHAMMER_PYTHON=${chosen} cannot import torch: ${error}`);
    return peer;
  }
  for (const python of ["python3", "/usr/bin/python3"]) {
    const { peer } = probe(python, script);
    if (peer) return peer;
  }
  return undefined;
}

/** A line naming the peer, and a second with a warning when its BLAS is the reference one. */
export function describeTorchPeer(peer: TorchPeer | undefined): string {
  if (!peer)
    return "PyTorch is not installed (no Python here imports torch; see SMALLHAMMER_PYTHON): no ratio";
  const line = `PyTorch ${peer.torchVersion}, ${peer.blas}, ${peer.python} bench/llama_torch.py`;
  return peer.referenceBlas
    ? `${line}\nWARNING: this PyTorch multiplies matrices with the reference BLAS, several times slower than OpenBLAS: the ratios flatter smallhammer (on Debian: apt-get install libopenblas0-pthread)`
    : line;
}

/** Runs bench/llama_torch.py on `request` and returns its result. */
export function runTorchPeer(
  peer: TorchPeer,
  request: TorchPeerRequest,
  timeoutSeconds = 3600,
): Promise<TorchPeerResult> {
  return runChild<TorchPeerResult>(peer.python, [peerScript(), JSON.stringify(request)], timeoutSeconds);
}

/**
 * Throws unless the peer's model has as many parameters (and trainable ones) as ours: the peer
 * must compute the same model for its figures to compare.
 */
export function checkSameModel(
  peer: TorchPeerResult,
  ours: { parameters: number; trainable: number },
  what: string,
): void {
  if (peer.parameters !== ours.parameters || peer.trainable !== ours.trainable) {
    throw new Error(
      `${what}: the PyTorch peer's model has ${peer.parameters} parameters (${peer.trainable} trainable), smallhammer's ${ours.parameters} (${ours.trainable} trainable): bench/llama_torch.py does not compute the same model`,
    );
  }
}
