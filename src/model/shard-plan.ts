// Which memory shard each group of tensors (a layer, the embedding and head) goes to: groups in
// order, a new shard whenever the next one does not fit (wasm32 memories stop at 4 GiB).
import { UserError } from "../errors.js";

export interface TensorGroup {
  tensors: string[];
  /** Bytes of the group's tensors, alignment included. */
  tensorBytes: number;
  /** Bytes the group needs besides its tensors (KV caches, LoRA updates), alignment included. */
  extraBytes: number;
  /** The output head (its shard also holds the logits). */
  head?: boolean;
}

export interface ShardPlan {
  /** Shard of each group, in order. */
  shardOf: number[];
  /** Bytes each shard needs. */
  shardBytes: number[];
}

/**
 * Packs `groups` into shards of at most `maxShard` bytes; every shard also holds activations of
 * `actBytes(head)` bytes (more in the shard holding the head). `file` names the model in errors.
 */
export function planShards(
  groups: readonly TensorGroup[],
  actBytes: (head: boolean) => number,
  maxShard: number,
  file: string,
): ShardPlan {
  const shardOf: number[] = [];
  const shardBytes: number[] = [];
  const headExtra = actBytes(true) - actBytes(false);
  let used = -1;
  for (const grp of groups) {
    const bytes = grp.tensorBytes + grp.extraBytes;
    const more = grp.head ? headExtra : 0;
    const cur = shardBytes.length - 1;
    if (cur >= 0 && used + bytes + more <= maxShard) {
      used += bytes + more;
      shardBytes[cur] = used;
    } else {
      used = actBytes(Boolean(grp.head)) + bytes;
      if (used > maxShard) {
        throw new UserError(
          `${file}: ${grp.tensors[0]} and its layer need ${used} bytes, more than one memory shard`,
        );
      }
      shardBytes.push(used);
    }
    shardOf.push(shardBytes.length - 1);
  }
  return { shardOf, shardBytes };
}
