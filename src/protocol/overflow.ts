// The overflow store's card side (seed 000 embodiment 2, claim 9): moving a slot's {Sk[PRk], Ct} out of a card as
// the card's own export package and loading it back, against any store of such packages (OverflowEntries). What a
// store keeps is the export sealed under the card key, so the pair is never in clear outside the card. The terminal's
// store on disk is src/terminal/overflow.ts; the rotation's terminal side (src/issuer/rotation-terminal.ts) uses it
// through this interface.
//
// No files and no network here: the card's commands (through a PivClient) and the store's four calls.

import type { PivClient } from "./piv/client.ts";

export interface OverflowEntry {
  cardId: string;
  keyRef: string;
  seq: number;
  bytes: Uint8Array;
}

/** A store of export packages, one per (card, slot). */
export interface OverflowEntries {
  /** Keeps an export package (replacing an older one of the same slot); refuses anything but a card's export. */
  put(bytes: Uint8Array): OverflowEntry;
  get(cardId: string, keyRef: string): OverflowEntry | undefined;
  list(cardId: string): OverflowEntry[];
  remove(cardId: string, keyRef: string): void;
}

/**
 * Moves a slot's key and certificate out of the card: EXPORT KEY WRAPPED, keep the package, then DELETE KEY.
 * The PIN must have been verified on `piv`. If the delete fails the package is still kept (the card holds the key).
 */
export async function moveOut(piv: PivClient, store: OverflowEntries, keyRef: number): Promise<OverflowEntry> {
  const bytes = await piv.exportKey(keyRef);
  const entry = store.put(bytes);
  await piv.apdu.check({ cla: 0x80, ins: 0xf6, p1: 0, p2: keyRef }, "DELETE KEY");
  return entry;
}

/** Loads a slot back from the overflow store on demand. */
export async function bringBack(piv: PivClient, store: OverflowEntries, cardId: string, keyRef: number): Promise<void> {
  const ref = keyRef.toString(16).padStart(2, "0");
  const e = store.get(cardId, ref);
  if (!e) throw new Error(`no overflow entry for card ${cardId} slot ${ref}`);
  await piv.loadPackage(e.bytes);
}
