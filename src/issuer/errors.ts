// The issuer's errors: one class for every refusal of the issuing service (its code is its kind, which decides the
// HTTP status in server/problem.ts), and
// the card-state refusal the lifecycle checks raise (card-lifecycle.ts). Their own module so that issuer.ts and
// card-lifecycle.ts, which use each other's functions, do not import each other for them.

import { DomainError, type ProblemShape } from "../util/errors.ts";
import type { CardStatus, JsonValue } from "./records.ts";

/** The issuing service's refusal: a DomainError (src/util/errors.ts) of kind `code`, its check the kind unless a subclass names one. */
export class IssuerError extends DomainError {
  constructor(
    readonly code: "not_found" | "conflict" | "invalid" | "refused",
    message: string,
    check: string = code,
    details: Readonly<Record<string, unknown>> = {},
  ) {
    super(code, check, message, details);
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
    override readonly check: CardStateCheck,
    message: string,
    override readonly details: { cardId: string; state: CardStatus; [k: string]: JsonValue },
  ) {
    super("conflict", message, check, details);
  }

  /** Answered as the check itself (card-state, card-transition-not-allowed), naming the card and its state. */
  override problem(): ProblemShape {
    const title = this.check === "card_transition_not_allowed" ? "The card's lifecycle does not allow this transition" : "The card's state does not allow this";
    return { type: this.check.replace(/_/g, "-"), title };
  }
}
