// The issuer's errors: one class for every refusal of the issuing service (code -> HTTP status in the routes), and
// the card-state refusal the lifecycle checks raise (card-lifecycle.ts). Their own module so that issuer.ts and
// card-lifecycle.ts, which use each other's functions, do not import each other for them.

import type { CardStatus } from "../store/db.ts";
import type { JsonValue } from "../store/store.ts";

export class IssuerError extends Error {
  constructor(
    readonly code: "not_found" | "conflict" | "invalid" | "refused",
    message: string,
  ) {
    super(message);
    this.name = "IssuerError";
  }
}

export type CardStateCheck = "card_state" | "card_transition_not_allowed";

/**
 * A refusal for a card's state (card-lifecycle.ts; 409 naming `check`): the act needs another state, or the
 * transition does not leave the card's state.
 */
export class CardStateError extends IssuerError {
  constructor(
    readonly check: CardStateCheck,
    message: string,
    readonly details: { cardId: string; state: CardStatus; [k: string]: JsonValue },
  ) {
    super("conflict", message);
  }
}
