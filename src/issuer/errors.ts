// The issuer's errors: one class for every refusal of the issuing service (its code is its kind, which decides the
// HTTP status in server/problem.ts), the card-state refusal the lifecycle checks raise (card-lifecycle.ts), and a
// card login's refusals (card-login.ts). Their own module so that issuer.ts and card-lifecycle.ts, which use each
// other's functions, do not import each other for them.

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

export type CardLoginCheck = "not_found" | "relay_failed" | "card_not_proven" | "key_set_changed" | "login_crossed" | "card_rollback" | "not_flagged";

/**
 * Each login refusal's kind, problem type and title. Only card_rollback's answer shows its check: the others are
 * answered as they were before the one error model (no check member).
 */
const CARD_LOGIN_PROBLEMS: Readonly<Record<CardLoginCheck, [kind: "not_found" | "refused" | "unauthenticated" | "conflict", type: string, title: string]>> = {
  not_found: ["not_found", "not-found", "Not found"],
  relay_failed: ["refused", "relay-failed", "The relayed card session failed"],
  card_not_proven: ["unauthenticated", "card-not-proven", "The card did not prove itself"],
  key_set_changed: ["conflict", "conflict", "Conflict"],
  login_crossed: ["conflict", "conflict", "Conflict"],
  card_rollback: ["conflict", "card-rollback", "The card went back to an older state"],
  not_flagged: ["conflict", "conflict", "Conflict"],
};

/**
 * A refusal of a card's login or of its state counter's clearing (card-login.ts): not_found 404 (no active card, or
 * no open handshake: `title` says which), relay_failed 422, card_not_proven 401, key_set_changed and login_crossed
 * 409 (start again), card_rollback 409 (the card's state counter did not go up, or the card is flagged), not_flagged
 * 409 (nothing to clear).
 */
export class CardLoginError extends DomainError {
  constructor(
    override readonly check: CardLoginCheck,
    message: string,
    /** The not_found answer's title ("card not found", "authentication session not found"). */
    private readonly title?: string,
  ) {
    super(CARD_LOGIN_PROBLEMS[check][0], check, message);
    this.name = "CardLoginError";
  }

  override problem(): ProblemShape {
    const [, type, title] = CARD_LOGIN_PROBLEMS[this.check];
    return { type, title: this.title ?? title, ...(this.check === "card_rollback" ? {} : { check: false as const }) };
  }
}
