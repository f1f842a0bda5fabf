// The terminal's part of a card-key rotation (seed 000 embodiments 3, 4 and 5, FIG. 15, columns "new card" and
// "HD"): what the user terminal does with the old card, the new card and its overflow store (the seed's hard disk HD)
// for each strategy, once the issuer's side (rotation.ts) has distributed. rotation.ts re-exports it.
//
// Mechanism for "the new card holds Sk1 and Sk2" (embodiments 4, 5): the new card holds, as its KVN 1, the old card's
// key set Sk1 bound to the old card's ID (a predecessor key set, isd.ts), so it opens the old card's Sk1[PRk] exports
// that the terminal hands it (para 0088-0089); its own Sk2, KVN 2, seals its own exports (embodiment 5, FIG. 22-24).
//
// What it must never do: see a private key in clear (the pairs move as the cards' own export packages), or remove a
// pair from the store before the new card holds it or the store holds its Sk2 replacement.

import { ApduError } from "../protocol/apdu-client.ts";
import { moveOut, type OverflowEntries } from "../protocol/overflow.ts";
import { packageHeader } from "../protocol/package.ts";
import type { PivClient } from "../protocol/piv/client.ts";
import { IssuerError } from "./errors.ts";
import type { RotationStrategy } from "./records.ts";

export interface TerminalRotateInput {
  strategy: RotationStrategy;
  /** The old card (PIN verified); needed for embodiments 4 and 5, whose old pairs leave it through the terminal. */
  oldCard?: { piv: PivClient; cardId: string };
  /** The new card (PIN verified). */
  newCard: { piv: PivClient; cardId: string };
  /** The terminal's overflow store (the seed's HD; src/terminal/overflow.ts). */
  store: OverflowEntries;
  /** The packages fetched for the new card, in sequence order (what crossed the network). */
  packages: Uint8Array[];
  /** Slots that live in the overflow store rather than on the new card afterwards (para 0071, 0088). */
  offCard: string[];
  /** Slots the old card holds (default: those with a certificate object, 9A 9C 9D 9E). */
  oldSlots?: string[];
}

export interface TerminalRotateResult {
  /** Slots the new card holds. */
  onCard: string[];
  /** Overflow store entries afterwards: card, slot and the KVN the pair is sealed under. */
  inStore: { cardId: string; slot: string; kvn: number }[];
  /**
   * Old pairs the new card refused, left in the store as the old card's Sk1[PRk]: 6982 from a new card that
   * holds no key set bound to the old card (personalised without its predecessor), 6985 for an export older
   * than one of the same slot it already took.
   */
  stranded: { slot: string; sw: number }[];
}

/**
 * The user terminal's part of a rotation (FIG. 15, columns "new card" and "HD"):
 *   3: each {Sk2[PRk], Ct} goes into the new card; the pairs the store held come back out of the new card as its
 *      exports under Sk2, replacing the old card's Sk1 entries (para 0069-0071).
 *   4: every pair moves out of the old card into the store as the old card's Sk1[PRk] (para 0083); those meant
 *      for the new card go into it, which opens them with its predecessor key set Sk1 (para 0088-0089), and leave
 *      the store; those meant for the store stay there as Sk1[PRk] (HD: only the added pairs are updated), and
 *      the new card takes them on demand the same way. The added pairs are loaded, the ones for the store moved
 *      out again under Sk2.
 *   5: as 4, but every old Sk1[PRk] goes into the new card, and each one meant for the store is re-exported by it
 *      under Sk2, its newest own key set, and replaces the old entry: the store holds Sk2[PRk] only (FIG. 22-24).
 * Each pair is at every step on a card or in the store: an old entry is removed only once the new card holds the
 * pair or the store holds its Sk2 replacement.
 */
export async function terminalRotate(input: TerminalRotateInput): Promise<TerminalRotateResult> {
  const { store, newCard } = input;
  const oldId = input.oldCard?.cardId;
  const off = new Set(input.offCard);
  const stranded: TerminalRotateResult["stranded"] = [];
  const onCard = new Set<string>();
  const slotNum = (s: string) => parseInt(s, 16);

  if (input.strategy !== "embodiment3") {
    const old = input.oldCard;
    if (!old) throw new IssuerError("invalid", `${input.strategy} moves the old card's pairs through the terminal: the old card is needed`);
    // Para 0083: out of the old card into the store, as the old card's Sk1[PRk].
    for (const s of input.oldSlots ?? (await slotsOn(old.piv))) await moveOut(old.piv, store, slotNum(s));
    for (const e of store.list(old.cardId)) {
      // Embodiment 4 leaves the store's old entries as they are (FIG. 15: HD updates only the added ones).
      if (input.strategy === "embodiment4" && off.has(e.keyRef)) continue;
      try {
        await newCard.piv.loadPackage(e.bytes);
      } catch (err) {
        if (!(err instanceof ApduError)) throw err;
        stranded.push({ slot: e.keyRef, sw: err.sw });
        continue;
      }
      // Embodiment 5, FIG. 22-24: what lives in the store goes back there re-exported by the new card under Sk2.
      if (off.has(e.keyRef)) await moveOut(newCard.piv, store, slotNum(e.keyRef));
      else onCard.add(e.keyRef);
      store.remove(old.cardId, e.keyRef);
    }
  }
  for (const p of input.packages) {
    const h = packageHeader(p);
    await newCard.piv.loadPackage(p);
    onCard.add(h.keyRef);
    if (off.has(h.keyRef)) {
      // Para 0071 / 0088: the pair for the store, now as the new card's export under Sk2 (it replaces the old
      // card's Sk1 entry of that slot in embodiment 3).
      await moveOut(newCard.piv, store, slotNum(h.keyRef));
      onCard.delete(h.keyRef);
      if (oldId && input.strategy === "embodiment3") store.remove(oldId, h.keyRef);
    }
  }
  const inStore = [...(oldId ? store.list(oldId) : []), ...store.list(newCard.cardId)].map((e) => ({ cardId: e.cardId, slot: e.keyRef, kvn: packageHeader(e.bytes).kvn }));
  return { onCard: [...onCard].sort(), inStore, stranded };
}

/** Slots of a card that hold a certificate (what a terminal can see of them without a secure channel). */
async function slotsOn(piv: PivClient): Promise<string[]> {
  const out: string[] = [];
  for (const s of ["9a", "9c", "9d", "9e"]) if (await piv.readCertificate(parseInt(s, 16))) out.push(s);
  return out;
}
