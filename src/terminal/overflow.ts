// The terminal's overflow store (seed 000 embodiment 2, claim 9): when a card is full, {Sk[PRk], Ct} pairs move
// out of the card into a local store and come back on demand. What is stored is the card's own export package:
// the private key and its certificate sealed under the card key, so the pair is never in clear outside the card.
// The card accepts an export back into the same card while it is that slot's newest export, or into a successor card
// that holds the old card's key set bound to the old card ID (rotation, embodiments 4 and 5; docs/card-protocol.md).
//
// Files (issue 15 §6): the directory is created 0700 and refused when other users may write it; each package is
// written 0600 to a fresh temporary name (O_EXCL | O_NOFOLLOW) and renamed into place, so a symlink planted at the
// package's name or at a temporary name is never written through (src/util/files.ts), and read without following one.
// Moving a slot out of a card and back (moveOut, bringBack) is src/protocol/overflow.ts's, re-exported here.

import { readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { packageHeader } from "../protocol/package.ts";
import { ensurePrivateDirectory, readFileNoFollow, writeFileAtomic } from "../util/files.ts";
import type { OverflowEntries, OverflowEntry } from "../protocol/overflow.ts";

export { bringBack, moveOut, type OverflowEntry } from "../protocol/overflow.ts";

export class OverflowStore implements OverflowEntries {
  /** Creates `dir` (0700) when missing; throws UnsafeFileError when other users may write it. */
  constructor(readonly dir: string) {
    ensurePrivateDirectory(dir);
  }

  private file(cardId: string, keyRef: string): string {
    if (!/^[0-9a-f]{2,32}$/.test(cardId) || !/^[0-9a-f]{2}$/.test(keyRef)) throw new Error("bad card ID or key reference");
    return join(this.dir, `${cardId}-${keyRef}.pkg`);
  }

  /** Keeps an export package (atomically replacing an older one of the same slot). */
  put(bytes: Uint8Array): OverflowEntry {
    const h = packageHeader(bytes);
    if (h.kind !== "export") throw new Error("only packages exported by a card belong in the overflow store");
    writeFileAtomic(this.file(h.cardId, h.keyRef), bytes);
    return { cardId: h.cardId, keyRef: h.keyRef, seq: h.seq, bytes };
  }

  get(cardId: string, keyRef: string): OverflowEntry | undefined {
    const read = readFileNoFollow(this.file(cardId, keyRef));
    if (!read) return undefined;
    const bytes = new Uint8Array(read);
    const h = packageHeader(bytes);
    return { cardId: h.cardId, keyRef: h.keyRef, seq: h.seq, bytes };
  }

  list(cardId: string): OverflowEntry[] {
    return readdirSync(this.dir)
      .filter((n) => n.startsWith(`${cardId}-`) && n.endsWith(".pkg"))
      .map((n) => this.get(cardId, n.slice(cardId.length + 1, -4))!)
      .filter(Boolean);
  }

  remove(cardId: string, keyRef: string): void {
    rmSync(this.file(cardId, keyRef), { force: true });
  }
}
