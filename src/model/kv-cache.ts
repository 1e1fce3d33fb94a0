// The KV cache: per layer and sequence, contextSize rows of kvHeads · headDim f32 keys and values
// in the layer's memory shard; and the token tables a pass over several sequences addresses them by.
import { type Backend, type Buf, TOKEN_ENTRY_BYTES } from "../runtime/backend.js";
import type { Runtime } from "../runtime/runtime.js";

/** One sequence's part of a batched forward pass: `tokens` of sequence `seq` at positions pos0... */
export interface BatchSegment {
  seq: number;
  tokens: ArrayLike<number>;
  pos0: number;
}

export interface KvGeometry {
  contextSize: number;
  /** Floats per cache row: kvHeads · headDim. */
  rowFloats: number;
  sequences: number;
  /** Most tokens of one pass (the size of a token table). */
  batchSize: number;
}

/** One layer's caches. */
export interface LayerKv {
  /** K and V caches, one per sequence. */
  k: Buf[];
  v: Buf[];
  /** Token table of a pass over several sequences (TOKEN_ENTRY_BYTES per token), when there are several. */
  tokens?: Buf;
}

const align = (n: number) => Math.ceil(n / 64) * 64;

/** Bytes one layer's caches (and token table) take in its shard, alignment included. */
export function layerKvBytes(g: KvGeometry): number {
  return (
    2 * g.sequences * align(g.contextSize * g.rowFloats * 4) +
    (g.sequences > 1 ? align(g.batchSize * TOKEN_ENTRY_BYTES) : 0)
  );
}

/** Allocates one layer's caches in `shard`. */
export function allocateLayerKv(rt: Runtime, shard: number, g: KvGeometry): LayerKv {
  const bytes = g.contextSize * g.rowFloats * 4;
  const k: Buf[] = [];
  const v: Buf[] = [];
  for (let s = 0; s < g.sequences; s++) {
    k.push({ shard, offset: rt.alloc(shard, bytes) });
    v.push({ shard, offset: rt.alloc(shard, bytes) });
  }
  const tokens =
    g.sequences > 1 ? { shard, offset: rt.alloc(shard, g.batchSize * TOKEN_ENTRY_BYTES) } : undefined;
  return { k, v, tokens };
}

/** Where row `pos` of cache `buf` lies. */
export function cacheRow(buf: Buf, pos: number, rowFloats: number): Buf {
  return { shard: buf.shard, offset: buf.offset + pos * rowFloats * 4 };
}

/** Copies the first `tokens` rows of sequence `from`'s caches to sequence `to` in every layer. */
export function copyKvRows(b: Backend, layers: readonly LayerKv[], from: number, to: number, bytes: number) {
  b.phase(() => {
    for (const L of layers) {
      b.copy(L.k[to]!, L.k[from]!, bytes);
      b.copy(L.v[to]!, L.v[from]!, bytes);
    }
  });
}

/**
 * Fills layer `kv`'s token table for the `n` tokens of `segments` and returns it: each token's
 * position, the cache rows its key and value go to, and its sequence's caches.
 */
export function fillTokenTable(
  rt: Runtime,
  kv: LayerKv,
  segments: readonly BatchSegment[],
  n: number,
  rowFloats: number,
): Buf {
  const table = kv.tokens!;
  const e = rt.u32(table.shard, table.offset, n * (TOKEN_ENTRY_BYTES / 4));
  const rowBytes = rowFloats * 4;
  let t = 0;
  for (const s of segments) {
    const k = kv.k[s.seq]!.offset;
    const v = kv.v[s.seq]!.offset;
    for (let j = 0; j < s.tokens.length; j++, t++) {
      const pos = s.pos0 + j;
      e.set([pos, k + pos * rowBytes, v + pos * rowBytes, k, v], t * 5);
    }
  }
  return table;
}
