// The card lifecycle (issue 15 §5): what state a card record is in, who may move it to which other, and the check
// every route that acts for a card makes on every call.
//
//   issued ──personalise──▶ active ──suspend──▶ suspended
//                             ▲                    │
//                             └───────resume───────┘
//   issued, active, suspended ──retire──▶ retired                       (final)
//   issued, active, suspended, retired ──report-destroyed──▶ destroyed  (final)
//
//   personalise        the personalisation flow only, once the card itself confirmed SECURED (issuer.ts)
//   suspend            an operator (or admin), or the card's own terminal (a holder who lost the card may stop it)
//   resume             an operator (or admin): never a terminal, which may be the one that was lost
//   retire             an operator (or admin)
//   report-destroyed   an operator (or admin); and a card-destroyed key reproduction (seed 001 FIG. 11-12), which marks
//                      the destroyed card in the same transaction that records the reproduction (recovery/destroyed-card.ts)
//   auditors read a card's state (GET /cards/{id}) and its history (the audit log); they move nothing
//
// Every transition is one transaction: the card's row held, its status checked against the transition's sources,
// changed (status_version bumped), audited (actor, reason, from, to) and, but for personalise, notified (events
// card.suspended, card.resumed, card.retired, card.destroyed). A
// transition from a state it does not leave is refused by name (CardStateError, check card_transition_not_allowed,
// 409); a retired or destroyed card never comes back.
//
// The state lives in the system DB and is read there on every call (requireCardState): several servers on one
// PostgreSQL agree at once, with nothing to invalidate in memory. A terminal token carries the card's
// status_version at issue and acts only while the card is active under that same version (terminal-routes.ts): a
// suspension stops every live token at once, and tokens from before it stay dead after a resume (the card logs in
// again). Inside a transaction, requireCardState holds the card's row until the transaction ends, so a transition
// waits for an act in flight and the act commits under the state it checked.

import { isKind } from "../util/errors.ts";
import type { IssuerStore } from "./ports.ts";
import type { Card, CardStatus, JsonValue } from "./records.ts";
import { CardStateError, IssuerError } from "./errors.ts";

export { CardStateError, type CardStateCheck } from "./errors.ts";

export type CardTransition = "personalise" | "suspend" | "resume" | "retire" | "report-destroyed";

/** Who moves a card: an operator (or admin), or the card's own terminal (a token from the card's proof). */
export type CardActor = "operator" | "terminal";

export interface TransitionRule {
  to: CardStatus;
  from: readonly CardStatus[];
  who: readonly CardActor[];
  /** The audit action (and event type) the transition records. */
  action: string;
  /** Also an event (webhooks): the transitions an issuer's other systems act on. */
  notify: boolean;
}

export const CARD_TRANSITIONS: Readonly<Record<CardTransition, TransitionRule>> = {
  personalise: { to: "active", from: ["issued"], who: ["operator"], action: "card.personalised", notify: false },
  suspend: { to: "suspended", from: ["active"], who: ["operator", "terminal"], action: "card.suspended", notify: true },
  resume: { to: "active", from: ["suspended"], who: ["operator"], action: "card.resumed", notify: true },
  retire: { to: "retired", from: ["issued", "active", "suspended"], who: ["operator"], action: "card.retired", notify: true },
  "report-destroyed": { to: "destroyed", from: ["issued", "active", "suspended", "retired"], who: ["operator"], action: "card.destroyed", notify: true },
};

/** What the routes do for a card, and the states that allow it. */
export const CARD_ACTS = {
  /** A card logs in through its terminal, and every request of the token it got. */
  "terminal.login": ["active"],
  "packages.fetch": ["active"],
  "packages.ack": ["active"],
  /** A backup written or read through the card (its terminal), or written through it by an operator. */
  backup: ["active"],
  /** A key pair and certificate for the card; packages wait for it, so a card not yet personalised may have them. */
  "credential.request": ["issued", "active"],
  "credential.online": ["active"],
  keygen: ["active"],
  personalisation: ["issued"],
  "rotation.propose": ["active"],
  "rotation.distribute": ["active"],
  /** The card a reproduced key is written into. */
  "recovery.target": ["active"],
} as const satisfies Record<string, readonly CardStatus[]>;

export type CardAct = keyof typeof CARD_ACTS;

const allowedFor = (act: CardAct | readonly CardStatus[]): readonly CardStatus[] => (typeof act === "string" ? CARD_ACTS[act] : act);

/**
 * The card `cardId`, refused (CardStateError "card_state", 409) unless its state allows `act` (a CardAct, or the
 * states that allow it); IssuerError "not_found" for an unknown card. Read from the DB on every call. Given a store
 * bound to a transaction, the card's row is held until it ends: a transition waits for it, so the act commits
 * under the state checked here. What routes call for every card they act for (rotation propose and distribute too).
 */
export async function requireCardState(store: IssuerStore, cardId: string, act: CardAct | readonly CardStatus[]): Promise<Card> {
  const card = await store.getCard(cardId, { hold: true });
  if (!card) throw new IssuerError("not_found", `no card ${cardId}`);
  return checkCardState(card, act);
}

/** `card` as read already, refused (CardStateError "card_state") unless its state allows `act`. */
export function checkCardState(card: Card, act: CardAct | readonly CardStatus[]): Card {
  const allowed = allowedFor(act);
  if (allowed.includes(card.status)) return card;
  const what = typeof act === "string" ? `${act}: ` : "";
  throw new CardStateError("card_state", `${what}card ${card.id} is ${card.status}, not ${allowed.join(" or ")}`, {
    cardId: card.id,
    state: card.status,
    allowed: [...allowed],
    ...(typeof act === "string" ? { act } : {}),
  });
}

/** The transitions that leave `state` (for messages and the CLI). */
export function transitionsFrom(state: CardStatus): CardTransition[] {
  return (Object.keys(CARD_TRANSITIONS) as CardTransition[]).filter((t) => CARD_TRANSITIONS[t].from.includes(state));
}

export interface TransitionInput {
  cardId: string;
  transition: CardTransition;
  /** The principal's name (audited). */
  actor: string;
  /** Operator or the card's own terminal (the route checked the binding); refused when the transition does not admit it. */
  by: CardActor;
  reason: string;
  /** More audit details (ids, never a secret). */
  details?: Record<string, JsonValue>;
}

/**
 * Moves a card through `transition` in one transaction (the store's own, or the one `store` is bound to): the card's
 * row held, its state checked (CardStateError "card_transition_not_allowed" naming from, to and what leaves the
 * state), changed, audited and notified. Returns the card as it is now and the state it left.
 */
export async function changeCardState(store: IssuerStore, input: TransitionInput): Promise<{ card: Card; from: CardStatus }> {
  const rule = CARD_TRANSITIONS[input.transition];
  if (!rule) throw new IssuerError("invalid", `no card transition ${String(input.transition)}`);
  if (!rule.who.includes(input.by)) throw new IssuerError("refused", `a card's ${input.by} may not ${input.transition} it (${rule.who.join(" or ")} may)`);
  if (typeof input.reason !== "string" || input.reason.trim() === "") throw new IssuerError("invalid", "a card transition needs a reason");
  return store.transaction(async (s) => {
    const cur = await s.getCard(input.cardId, { hold: true });
    if (!cur) throw new IssuerError("not_found", `no card ${input.cardId}`);
    if (!rule.from.includes(cur.status)) {
      const leaves = transitionsFrom(cur.status);
      throw new CardStateError(
        "card_transition_not_allowed",
        `card ${cur.id} is ${cur.status}: ${input.transition} (${rule.from.join(" or ")} -> ${rule.to}) does not leave ${cur.status}; ` +
          (leaves.length ? `from ${cur.status}: ${leaves.join(", ")}` : `${cur.status} is final`),
        { cardId: cur.id, state: cur.status, transition: input.transition, to: rule.to },
      );
    }
    let change;
    try {
      change = await s.changeCardStatus(cur.id, rule.to, { from: [cur.status], actor: input.actor, reason: input.reason });
    } catch (e) {
      if (isKind(e, "conflict")) throw new IssuerError("conflict", e.message);
      throw e;
    }
    const details: Record<string, JsonValue> = {
      ...input.details,
      transition: input.transition,
      from: change.from,
      to: rule.to,
      reason: input.reason,
      by: input.by,
      statusVersion: change.card.statusVersion,
    };
    await s.audit({ actor: input.actor, action: rule.action, subject: cur.id, details, at: s.now() });
    if (rule.notify)
      await s.enqueueEvent({
        type: rule.action,
        subject: cur.id,
        payload: { cardId: cur.id, from: change.from, to: rule.to, reason: input.reason, actor: input.actor },
        dedupKey: `${rule.action}:${cur.id}:${change.card.statusVersion}`,
      });
    return change;
  });
}
