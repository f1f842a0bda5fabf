// The terminal side's tables, in the system DB (issue 16 §1: several servers on one database act as one, so a login
// begun on one server finishes on another and a token issued by one works on all; the rows:
// src/store/relay-session-repository.ts): CardLogin's pending handshakes (HandshakeTable) and the card-bound terminal
// tokens (TerminalTokenTable, and installAuth's TokenLookup for them). The bounds and their meaning are
// terminal-routes.ts's header's, now counted in the DB.
//
// Never stored: a token (only its SHA-256, hashToken), a key or session key (a pending handshake is kept as the SCP03
// host's state before the card answered: its key version and host challenge, both sent in clear to the card).

import { randomBytes } from "node:crypto";
import type { HandshakeTable, PendingLogin, TerminalTokenTable } from "../issuer/card-login.ts";
import { Scp03HostSession, type Scp03SessionState } from "../protocol/scp03/host.ts";
import type { SessionRepository } from "../store/relay-session-repository.ts";
import type { Card } from "../store/store.ts";
import { hashToken, type Principal, type TokenLookup } from "./auth.ts";
import { ApiProblem } from "./problem.ts";

export interface TerminalTokensOptions {
  /** Where the tokens are kept: the system DB shared by every server. */
  repository: SessionRepository;
  /** Lifetime of a token (default 10 min, the store's clock). */
  ttlMs?: number;
  /** Most live tokens in all (default 10,000); beyond, a login is refused (429) until some expire. */
  max?: number;
  /** Most live tokens of one card (default 4): a new one retires the card's oldest. */
  perCard?: number;
  /** Told when a token is retired for a newer one of its card ("card"). */
  onRetire?: (bound: string) => void;
}

/** What a terminal token needs to know of its card on every request (read from the system DB). */
export type CardStateReader = (cardId: string) => Promise<Pick<Card, "status" | "statusVersion"> | undefined>;

/**
 * Card-bound terminal tokens, in the system DB, by hash. A token acts for its card only while the card is active under
 * the status_version it was issued with, read from the system DB on every request (card-lifecycle.ts): a card
 * suspended, retired or destroyed on any server stops its live tokens at once (409 check card_state), and one resumed
 * since does not bring them back (401 check card_state_changed: log the card in again). The token row is read on
 * every request too (no cache: a token retired or expired is refused at once on every server). Until terminalRoutes
 * tells it where the cards are (checkCardsWith), no token acts for anything.
 */
export class TerminalTokens implements TerminalTokenTable {
  readonly #repo: SessionRepository;
  readonly #perCard: number;
  readonly #max: number;
  readonly #onRetire: ((bound: string) => void) | undefined;
  #cards: CardStateReader | undefined;
  readonly ttlMs: number;

  constructor(o: TerminalTokensOptions) {
    this.#repo = o.repository;
    this.ttlMs = o.ttlMs ?? 10 * 60_000;
    this.#perCard = o.perCard ?? 4;
    this.#max = o.max ?? 10_000;
    this.#onRetire = o.onRetire;
  }

  /** Where the tokens read their card's state on every request (terminalRoutes: the issuer's store). */
  checkCardsWith(read: CardStateReader): void {
    this.#cards = read;
  }

  /**
   * A fresh token for a terminal acting for `cardId`, whose status_version is `statusVersion` now; only its hash is
   * kept. The card's oldest beyond `perCard` is retired.
   */
  async issue(cardId: string, statusVersion: number): Promise<{ token: string; expiresAt: number }> {
    const token = `ckmt_${randomBytes(32).toString("base64url")}`;
    const r = await this.#repo.addToken({ tokenHash: hashToken(token), cardId, statusVersion, ttlMs: this.ttlMs, perCard: this.#perCard, max: this.#max });
    if ("refused" in r) throw new ApiProblem(429, "too-many-sessions", "Too many open sessions", `at most ${this.#max} terminal token sessions are open at once; retry when some finish or expire`);
    for (let i = 0; i < r.retired; i++) this.#onRetire?.("card");
    return { token, expiresAt: r.expiresAt };
  }

  /** For installAuth: the card-bound principal of a live token, while its card is active under the token's version. */
  readonly lookup: TokenLookup = async (hash) => {
    if (!this.#cards) return undefined;
    const entry = await this.#repo.getToken(hash);
    if (!entry) return undefined;
    const cardId = entry.cardId;
    const card = await this.#cards(cardId);
    if (!card) return undefined;
    if (card.status !== "active")
      throw new ApiProblem(409, "card-state", "The card's state does not allow this", `card ${cardId} is ${card.status}: its terminal tokens no longer act for it`, {
        check: "card_state",
        cardId,
        state: card.status,
        allowed: ["active"],
      });
    if (card.statusVersion !== entry.statusVersion)
      throw new ApiProblem(401, "unauthenticated", "Authentication required", `card ${cardId}'s state changed since this token was issued (it was suspended): log the card in again`, {
        check: "card_state_changed",
        cardId,
        state: card.status,
      });
    const principal: Principal = { name: `terminal:${cardId}`, roles: ["terminal"], cardId };
    return principal;
  };
}

export interface HandshakeBounds {
  /** Lifetime of a pending handshake, ms. */
  ttlMs: number;
  /** Most pending in all: the oldest is retired when full. */
  max: number;
  /** Most pending of one card: a new one retires the card's oldest. */
  perCard: number;
  /** Most pending of one card from one client address: a new one retires that client's oldest for the card. */
  perCardClient: number;
}

/**
 * The pending handshakes of card logins (CardLogin's HandshakeTable), in the system DB, each for `ttlMs`: at most
 * `perCard` of one card and `perCardClient` of one card from one client address, a new one retiring the oldest; at most
 * `max` in all, the oldest retired when full. `onRetire` is told the bound of each one retired.
 */
export class DbHandshakes implements HandshakeTable {
  constructor(
    private readonly repo: SessionRepository,
    private readonly bounds: HandshakeBounds,
    private readonly onRetire?: (bound: string) => void,
  ) {}

  async add(login: PendingLogin, client: string): Promise<string> {
    const id = randomBytes(16).toString("hex");
    const retired = await this.repo.addHandshake({
      id,
      cardId: login.cardId,
      client,
      keySetId: login.keySetId,
      host: JSON.stringify(login.host.snapshot()),
      startedAt: login.startedAt,
      ...this.bounds,
    });
    for (const bound of retired) this.onRetire?.(bound);
    return id;
  }

  async take(sessionId: string, cardId: string): Promise<PendingLogin | undefined> {
    const row = await this.repo.takeHandshake(sessionId, cardId);
    if (!row) return undefined;
    // the card's key stays in custody: the host is restored without keys, before the card's answer
    return { cardId: row.cardId, keySetId: row.keySetId, startedAt: row.startedAt, host: Scp03HostSession.restore(JSON.parse(row.host) as Scp03SessionState, null) };
  }
}
