// The card lifecycle in key reproduction (issue 15 §5; seed 001 FIG. 11-12): what RecoveryService.reproduce does to
// the issuer's card records besides writing the key.
//
//   - The destroyed card is marked destroyed (card-lifecycle.ts "report-destroyed") in the same transaction that
//     records the reproduction and makes the replacement card the registered device: the old card record stops
//     acting at once — its live terminal tokens, its logins, its backups and packages — and the request cannot be
//     recorded as reproduced while the old card goes on. The destroyed card is the registered device's card record
//     before the replacement (the escrow's own card at the first reproduction, the replacement of an earlier one
//     after that). A card record already destroyed (reported by an operator before) stays as it is; an id that
//     is no card record of the issuer (an escrow made outside its records) has nothing to mark.
//   - The target card must stay active while the reproduction talks to it: read before every APDU sent to it, so a
//     target suspended, retired or reported destroyed mid-reproduction gets nothing more (target_unfit).
//
// Both go through the recovery storage port (ports.ts): the issuer's card records are read and changed by the store,
// the transition itself by the issuer's card lifecycle there.

import type { RecoveryStore, RecoveryTx } from "./ports.ts";
import type { CardRecordStatus } from "./records.ts";
import { TargetRefusal } from "./target.ts";

/**
 * Marks `cardRecordId` destroyed inside `tx` (the transaction recording the reproduction), audited as the reproducing
 * actor's act naming the request and the replacement card. Returns the state it left, or undefined when there was
 * nothing to mark (no such card record, or destroyed already).
 */
export async function markDestroyedCard(
  tx: RecoveryTx,
  o: { cardRecordId: string | undefined; requestId: string; replacementCardId: string; actor: string; at: number },
): Promise<{ cardId: string; from: CardRecordStatus } | undefined> {
  if (o.cardRecordId === undefined || o.cardRecordId === o.replacementCardId) return undefined;
  const status = await tx.holdCardStatus(o.cardRecordId);
  if (status === undefined || status === "destroyed") return undefined;
  const { from } = await tx.reportCardDestroyed(o.cardRecordId, {
    actor: o.actor,
    reason: `card-destroyed reproduction ${o.requestId}: its key was reproduced into card ${o.replacementCardId}`,
    details: { requestId: o.requestId, replacementCardId: o.replacementCardId },
    at: o.at,
  });
  return { cardId: o.cardRecordId, from };
}

/** Refuses (TargetRefusal target_unfit) unless the reproduction's target card record is still active. */
export async function requireTargetActive(store: RecoveryStore, cardId: string): Promise<void> {
  const status = await store.cardStatus(cardId);
  if (status === "active") return;
  throw new TargetRefusal("target_unfit", `card ${cardId} is ${status ?? "no longer a card record"}, not active: the reproduction sends it nothing more`, {
    target: cardId,
    status: status ?? null,
  });
}
