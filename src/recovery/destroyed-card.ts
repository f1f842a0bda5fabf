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

import type { Transaction } from "kysely";
import { changeCardState } from "../issuer/card-lifecycle.ts";
import type { CardStatus, Database, Db } from "../store/db.ts";
import { Store } from "../store/store.ts";
import { TargetRefusal } from "./target.ts";

/**
 * Marks `cardRecordId` destroyed inside `trx` (the transaction recording the reproduction), audited as the reproducing
 * actor's act naming the request and the replacement card. Returns the state it left, or undefined when there was
 * nothing to mark (no such card record, or destroyed already).
 */
export async function markDestroyedCard(
  trx: Transaction<Database>,
  o: { cardRecordId: string | undefined; requestId: string; replacementCardId: string; actor: string; at: number },
): Promise<{ cardId: string; from: CardStatus } | undefined> {
  if (o.cardRecordId === undefined || o.cardRecordId === o.replacementCardId) return undefined;
  const store = new Store(trx, { now: () => o.at });
  const card = await store.getCard(o.cardRecordId, { hold: true });
  if (!card || card.status === "destroyed") return undefined;
  const { from } = await changeCardState(store, {
    cardId: card.id,
    transition: "report-destroyed",
    actor: o.actor,
    by: "operator",
    reason: `card-destroyed reproduction ${o.requestId}: its key was reproduced into card ${o.replacementCardId}`,
    details: { requestId: o.requestId, replacementCardId: o.replacementCardId },
  });
  return { cardId: card.id, from };
}

/** Refuses (TargetRefusal target_unfit) unless the reproduction's target card record is still active. */
export async function requireTargetActive(db: Db, cardId: string): Promise<void> {
  const card = await new Store(db).getCard(cardId);
  if (card?.status === "active") return;
  throw new TargetRefusal("target_unfit", `card ${cardId} is ${card?.status ?? "no longer a card record"}, not active: the reproduction sends it nothing more`, {
    target: cardId,
    status: card?.status ?? null,
  });
}
