// Does a log still extend a checkpoint taken of it earlier? (issue 15 §3; RFC 9162 §2.1.4). Given the log's leaves
// as they are now, a checkpoint kept outside the server and, when the auditor has one, its own copy of the leaves
// the checkpoint covered (a mirror, `cardkms audit pull`), this says which of these happened:
//   - the log is shorter than the checkpoint: cut short; the first missing entry is the one after the last left;
//   - its first `size` leaves no longer hash to the checkpoint's root: replaced or rewritten; with a mirror the first
//     leaf that differs names the entry, without one only that one of the first `size` entries changed;
//   - neither: it extends the checkpoint (the proof of it is the consistency proof from `size` to the log's size).
// Entries are numbered from 1 (the leaf at index i is entry i + 1), as the audit log numbers them.

import { equalHash, treeHead, type Hash } from "./merkle.ts";
import type { Checkpoint } from "./note.ts";

export type ExtendsResult =
  | { ok: true; size: number; checkpointSize: number }
  | {
      ok: false;
      problem: "truncated" | "rewritten";
      /** The first missing or changed entry, when it can be named. */
      firstEntry?: number;
      message: string;
    };

export function extendsCheckpoint(leaves: readonly Hash[], checkpoint: Checkpoint, mirror?: readonly Hash[]): ExtendsResult {
  const n = checkpoint.size;
  // With a mirror, the earliest leaf the log and the mirror disagree on (within what both hold) comes first.
  if (mirror) {
    if (mirror.length < n) throw new RangeError(`the mirror holds ${mirror.length} entries, fewer than the checkpoint's ${n}`);
    const common = Math.min(leaves.length, n);
    for (let i = 0; i < common; i++)
      if (!equalHash(leaves[i], mirror[i]))
        return {
          ok: false,
          problem: "rewritten",
          firstEntry: i + 1,
          message: `entry ${i + 1} is not the entry the checkpoint covered: replaced or rewritten (and every entry after it, by the hash chain)`,
        };
  }
  if (leaves.length < n)
    return {
      ok: false,
      problem: "truncated",
      firstEntry: leaves.length + 1,
      message: `the log ends at entry ${leaves.length}, before the checkpoint's ${n}: entries ${leaves.length + 1}..${n} were removed`,
    };
  if (!equalHash(treeHead(leaves, n), checkpoint.rootHash))
    return {
      ok: false,
      problem: "rewritten",
      message: `the first ${n} entries no longer hash to the checkpoint's root: one or more of them was replaced or rewritten (an auditor's mirror of the entries, cardkms audit pull, names the first)`,
    };
  return { ok: true, size: leaves.length, checkpointSize: n };
}
