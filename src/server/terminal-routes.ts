// The user terminal's side of the API (seed 000 ST22-ST25, issue 3 §8: "a terminal acts for a card only after
// the card proves itself"). A terminal holds no credential of its own: it relays an SCP03 handshake between
// the server and the card, and the server, after checking the card cryptogram with the card's CURRENT key set
// in custody, issues a short-lived token bound to that card. With it the terminal fetches the card's packages
// and acknowledges them; a token bound to another card is refused (403).
//
//   POST /cards/{id}/auth              (public)  -> 201 {sessionId, apdus: [SELECT ISD, INITIALIZE UPDATE,
//                                                    GET DATA DF23 (state counter report)]} | 404 no active card
//                                                    of that ID (unknown and inactive alike)
//   POST /cards/{id}/auth/{sessionId}  {responses: [3 hex]}
//                                      -> 200 {token, expiresAt, apdus: [EXTERNAL AUTHENTICATE]} | 401 wrong cryptogram
//                                         or state counter MAC | 409 check card_rollback
//
// The proof carries the card's state counter (issue 17 §6, src/protocol/state-counter.ts): MACed under the session
// keys custody derives from the card key, so the terminal cannot change it. It must be above the highest counter
// the card reported at an earlier login (src/store/state-counter-repository.ts); when it is not, the card image
// went back to an older copy (or a clone logged in): the login is refused (409, check "card_rollback"), audited,
// notified (event card.rollback) and the card flagged — later logins are refused at once, before any APDU reaches
// the card, until an operator clears the flag:
//   GET  /cards/{id}/state-counter           (operator, auditor) the remembered counter and the flag
//   POST /cards/{id}/state-counter/clear     (operator) {reason}: removes the flag and forgets the counter
//   GET  /rollbacks                          (operator, auditor) the flagged cards
//
// The terminal must forward the EXTERNAL AUTHENTICATE: it completes the handshake on the card, which resets
// the card's authentication failure counter. Tokens live in memory, stored as SHA-256 hashes, never logged.
//
// The card lifecycle (issue 15 §5, src/issuer/card-lifecycle.ts): a token is bound to its card AND to the card's
// status_version at login, and on every request the card's row is read from the system DB: a card suspended,
// retired or destroyed — through any server on the same database — stops its live tokens at once (409 check
// card_state), and a card resumed since does not bring them back (401 check card_state_changed: the card logs in
// again). The package routes check the card's state too (packages.fetch, packages.ack).
//
// Nobody can lock the others out (issue 9 §2). The two login routes are public, so app.ts rate-limits them per
// client address and they take small bodies. A card has at most `perCard` pending handshakes, and at most
// `perCardClient` from one client address: a new one retires that card's (or that client's for that card) oldest,
// so a flood against one card retires only the flooder's handshakes and never fills the table for other cards;
// the table as a whole retires its oldest when full. A card has at most `perCard` live terminal tokens, a new one
// retiring its oldest. An unknown card and one that is not active are answered alike (404): the public route tells
// nobody which card IDs exist.

import { randomBytes } from "node:crypto";
import { normalizeIP } from "@fastify/rate-limit";
import type { FastifyPluginAsync } from "fastify";
import { encodeCommand, parseResponse } from "../protocol/apdu.ts";
import { Scp03Error, Scp03HostSession } from "../protocol/scp03/host.ts";
import { ISD_AID } from "../protocol/scp03/sm.ts";
import { checkStateCounterReport, STATE_COUNTER_COMMAND, StateCounterError } from "../protocol/state-counter.ts";
import { LEVEL_FULL } from "../issuer/card-keys.ts";
import type { Issuer } from "../issuer/issuer.ts";
import { appendAudit } from "../store/audit.ts";
import type { Db } from "../store/db.ts";
import { StateCounterRepository, type CardStateCounter } from "../store/state-counter-repository.ts";
import type { Card, CardKeySet, Store } from "../store/store.ts";
import { requireCardState } from "../issuer/card-lifecycle.ts";
import { hashToken, requireCardAccess, type Principal, type TokenLookup } from "./auth.ts";
import { CardAuthenticationJson, PackagesJson } from "../issuer/wire.ts";
import { APDU_HEX, CARD_ID, digits, EMPTY_BODY, fromHex, params, principalOf, problems, relayRoundSchema, SESSION_ID, toHex } from "./issuer-routes.ts";
import type { Metrics } from "./metrics.ts";
import { ApiProblem, problemSchema } from "./problem.ts";
import { TtlMap } from "./relay-sessions.ts";

export interface TerminalTokensOptions {
  /** Lifetime of a token (default 10 min). */
  ttlMs?: number;
  /** Most live tokens in all (default 10,000); beyond, a login is refused (429) until some expire. */
  max?: number;
  /** Most live tokens of one card (default 4): a new one retires the card's oldest. */
  perCard?: number;
  now?: () => number;
  /** Told when a token is retired for a newer one of its card. */
  onRetire?: (bound: string) => void;
}

/** What a terminal token needs to know of its card on every request (read from the system DB). */
export type CardStateReader = (cardId: string) => Promise<Pick<Card, "status" | "statusVersion"> | undefined>;

interface TokenEntry {
  principal: Principal;
  /** The card's status_version when the token was issued. */
  statusVersion: number;
}

/**
 * Card-bound terminal tokens, in memory, by hash. A token acts for its card only while the card is active under the
 * status_version it was issued with, read from the system DB on every request (card-lifecycle.ts): a card suspended,
 * retired or destroyed on any server stops its live tokens at once (409 check card_state), and one resumed since does
 * not bring them back (401 check card_state_changed: log the card in again). Until terminalRoutes tells it where the
 * cards are (checkCardsWith), no token acts for anything.
 */
export class TerminalTokens {
  readonly #tokens: TtlMap<TokenEntry>;
  readonly #perCard: number;
  #cards: CardStateReader | undefined;
  readonly ttlMs: number;

  constructor(o: TerminalTokensOptions = {}) {
    this.ttlMs = o.ttlMs ?? 10 * 60_000;
    this.#perCard = o.perCard ?? 4;
    this.#tokens = new TtlMap({ ttlMs: this.ttlMs, max: o.max ?? 10_000, now: o.now, onRetire: o.onRetire });
  }

  /** Where the tokens read their card's state on every request (terminalRoutes: the issuer's store). */
  checkCardsWith(read: CardStateReader): void {
    this.#cards = read;
  }

  /**
   * A fresh token for a terminal acting for `cardId`, whose status_version is `statusVersion` now; only its hash is
   * kept. The card's oldest beyond `perCard` is retired.
   */
  issue(cardId: string, statusVersion: number): { token: string; expiresAt: number } {
    const token = `ckmt_${randomBytes(32).toString("base64url")}`;
    const principal: Principal = { name: `terminal:${cardId}`, roles: ["terminal"], cardId };
    const { expiresAt } = this.#tokens.add({ principal, statusVersion }, "terminal token", {
      key: hashToken(token),
      groups: [{ name: "card", key: cardId, max: this.#perCard, whenFull: "retire-oldest" }],
    });
    return { token, expiresAt };
  }

  /** For installAuth: the card-bound principal of a live token, while its card is active under the token's version. */
  readonly lookup: TokenLookup = async (hash) => {
    const entry = this.#tokens.get(hash);
    if (!entry || !this.#cards) return undefined;
    const cardId = entry.principal.cardId!;
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
    return entry.principal;
  };
}

interface AuthSession {
  cardId: string;
  keySet: CardKeySet;
  host: Scp03HostSession;
  /** When the handshake began (store clock): a lower counter from a login that crossed another is not a rollback. */
  startedAt: number;
}

/** problem+json of the login routes: RFC 9457 members, and the check of a refusal for the card's state. */
const LOGIN_PROBLEM = {
  type: "object",
  required: problemSchema.required,
  properties: {
    ...problemSchema.properties,
    check: { type: "string", description: "card_rollback: the card's state counter did not go up since its last login, or the card is flagged for it" },
  },
} as const;
const loginProblems = { "4xx": LOGIN_PROBLEM, "5xx": { $ref: "Problem#" } } as const;

const stateCounterSchema = {
  type: "object",
  required: ["cardId", "counter", "updatedAt", "rollback"],
  properties: {
    cardId: { type: "string" },
    counter: { type: ["integer", "null"], description: "the highest state counter the card reported at an accepted login; null: none since the last clear" },
    updatedAt: { type: ["integer", "null"] },
    rollback: {
      type: ["object", "null"],
      description: "set while the card is flagged: when a login reported a counter not above `counter`, and that counter",
      properties: { at: { type: "integer" }, reported: { type: "integer" } },
    },
  },
} as const;

const counterOut = (cardId: string, r: CardStateCounter | undefined) => ({ cardId, counter: r?.counter ?? null, updatedAt: r?.updatedAt ?? null, rollback: r?.rollback ?? null });

/** The refusal of a login of a card whose state went back (now, or flagged before). */
function rollbackProblem(cardId: string, r: CardStateCounter, now: boolean): ApiProblem {
  const flag = r.rollback!;
  const detail = now
    ? `card ${cardId} reported state counter ${flag.reported}, not above ${r.counter} it reported at an earlier login: its image went back to an older copy, or a clone logged in. The card is flagged; an operator must clear it.`
    : `card ${cardId} is flagged since ${new Date(flag.at).toISOString()}: a login reported state counter ${flag.reported}, not above ${r.counter}. An operator must clear the flag (POST /v1/cards/${cardId}/state-counter/clear).`;
  return new ApiProblem(409, "card-rollback", "The card went back to an older state", detail, { check: "card_rollback" });
}

export interface TerminalRoutesOptions {
  issuer: Issuer<Store>;
  tokens: TerminalTokens;
  /**
   * Pending handshakes, each for `ttlMs` (default 5 min): at most `perCard` of one card (default 16) and `perCardClient`
   * of one card from one client address (default 4), a new one retiring the oldest; at most `max` in all (default
   * 10,000), the oldest retired when full.
   */
  authSessions?: { ttlMs?: number; max?: number; perCard?: number; perCardClient?: number };
  /** Counts the handshakes retired for newer ones (cardkms_sessions_retired_total). */
  metrics?: Metrics;
}

/** Largest bodies of the login routes: {} to start; three short card responses in hex to finish. */
export const AUTH_START_BODY_LIMIT = 1024;
export const AUTH_FINISH_BODY_LIMIT = 8192;

export const terminalRoutes: FastifyPluginAsync<TerminalRoutesOptions> = async (app, o) => {
  const { issuer, tokens } = o;
  const store = issuer.store;
  // every request of a terminal token reads its card's state here (one primary-key read): see TerminalTokens
  tokens.checkCardsWith((cardId) => store.getCard(cardId));
  const counters = new StateCounterRepository(store.db as Db, { now: () => store.now() });
  const bounds = o.authSessions ?? {};
  const handshakes = new TtlMap<AuthSession>({
    ttlMs: bounds.ttlMs ?? 5 * 60_000,
    max: bounds.max ?? 10_000,
    whenFull: "retire-oldest",
    onRetire: (bound) => o.metrics?.retired.inc({ table: "handshakes", bound }),
  });
  const perCard = bounds.perCard ?? 16;
  const perCardClient = bounds.perCardClient ?? 4;
  /** The same answer for a card that does not exist and one that is not active: no oracle of card IDs. */
  const noActiveCard = (id: string) => new ApiProblem(404, "not-found", "card not found", `no active card with id ${id}`);

  app.post<{ Params: { id: string } }>(
    "/cards/:id/auth",
    {
      bodyLimit: AUTH_START_BODY_LIMIT,
      schema: {
        summary: "Start a card's proof for its terminal: forward SELECT ISD, INITIALIZE UPDATE and GET DATA DF23 (the state counter report) to the card",
        params: params({ id: CARD_ID }),
        body: EMPTY_BODY,
        response: { 201: relayRoundSchema, ...loginProblems },
      },
    },
    async (req, reply) => {
      const card = await store.getCard(req.params.id);
      if (!card || card.status !== "active") throw noActiveCard(req.params.id);
      // A flagged card gets no INITIALIZE UPDATE: each one the login does not complete counts against the
      // card's secure-channel failure limit, which a terminal retrying in a loop would otherwise reach.
      const remembered = await counters.get(card.id);
      if (remembered?.rollback) throw rollbackProblem(card.id, remembered, false);
      const keySet = await issuer.currentKeySet(card);
      const host = new Scp03HostSession(null, { level: LEVEL_FULL, kvn: keySet.kvn });
      const select = encodeCommand({ cla: 0x00, ins: 0xa4, p1: 0x04, p2: 0x00, data: ISD_AID, le: 256 });
      const apdus = [select, host.initializeUpdate(), STATE_COUNTER_COMMAND];
      const client = normalizeIP(req.ip);
      const { id } = handshakes.add({ cardId: card.id, keySet, host, startedAt: store.now() }, "card authentication", {
        groups: [
          { name: "card", key: card.id, max: perCard, whenFull: "retire-oldest" },
          { name: "card-client", key: `${card.id} ${client}`, max: perCardClient, whenFull: "retire-oldest" },
        ],
      });
      return reply.code(201).send({ sessionId: id, apdus: apdus.map(toHex) });
    },
  );

  app.post<{ Params: { id: string; sessionId: string }; Body: { responses: string[] } }>(
    "/cards/:id/auth/:sessionId",
    {
      bodyLimit: AUTH_FINISH_BODY_LIMIT,
      schema: {
        summary:
          "The card's answers to SELECT, INITIALIZE UPDATE and GET DATA DF23: a card-bound token once its cryptogram and its state counter report verify and the counter went up; forward the EXTERNAL AUTHENTICATE",
        params: params({ id: CARD_ID, sessionId: SESSION_ID }),
        body: { type: "object", additionalProperties: false, required: ["responses"], properties: { responses: { type: "array", minItems: 3, maxItems: 3, items: APDU_HEX } } },
        response: {
          200: CardAuthenticationJson,
          ...loginProblems,
        },
      },
    },
    async (req) => {
      const { id: cardId, sessionId } = req.params;
      const hs = handshakes.get(sessionId);
      if (!hs || hs.cardId !== cardId) throw new ApiProblem(404, "not-found", "authentication session not found", `no open authentication session ${sessionId} for card ${cardId}`);
      handshakes.delete(sessionId); // one attempt per handshake
      const [sel, iu, report] = req.body.responses.map(fromHex);
      const swSel = parseResponse(sel).sw;
      if (swSel !== 0x9000) throw new ApiProblem(422, "relay-failed", "The relayed card session failed", `the card refused SELECT (SW ${swHex(swSel)})`);
      const swIu = parseResponse(iu).sw;
      if (swIu !== 0x9000) throw new ApiProblem(422, "relay-failed", "The relayed card session failed", `the card refused INITIALIZE UPDATE (SW ${swHex(swIu)})`);
      let challenges: { hostChallenge: Uint8Array; cardChallenge: Uint8Array };
      try {
        challenges = hs.host.challenges(iu);
      } catch (e) {
        if (e instanceof Scp03Error) throw new ApiProblem(422, "relay-failed", "The relayed card session failed", e.message);
        throw e;
      }
      // The key set may have been rotated since the handshake started: the proof must be for the current one.
      // The card may have left active meanwhile: no token then (the same answer as at the start: no oracle).
      const now = await issuer.card(cardId);
      if (now.status !== "active") throw noActiveCard(cardId);
      const current = await issuer.currentKeySet(now);
      if (current.id !== hs.keySet.id) throw new ApiProblem(409, "conflict", "Conflict", "the card's key set changed during authentication; start again");
      const keys = issuer.keysOf(current);
      if (!("custody" in keys)) throw new Error("card keys must be in custody");
      const material = await keys.custody.scp03Session(keys.ref, challenges.hostChallenge, challenges.cardChallenge);
      const refused = async (reason: string, detail: string) => {
        await appendAudit(store.db, { actor: `card:${cardId}`, action: "terminal.refused", subject: cardId, details: { reason, kvn: current.kvn } });
        return new ApiProblem(401, "card-not-proven", "The card did not prove itself", detail);
      };
      let externalAuthenticate: Uint8Array;
      let counter: number;
      try {
        try {
          externalAuthenticate = hs.host.authenticateWith(iu, material);
        } catch (e) {
          if (!(e instanceof Scp03Error)) throw e;
          throw await refused("wrong card cryptogram", "wrong card cryptogram: this is not the card, or not its current key set");
        }
        try {
          counter = checkStateCounterReport(report, { sMac: material.sMac, ...challenges });
        } catch (e) {
          if (!(e instanceof StateCounterError)) throw e;
          if (e.reason === "mac") throw await refused("state counter report does not verify", "the state counter report does not verify under the card's session: it was changed on the way");
          throw new ApiProblem(422, "relay-failed", "The relayed card session failed", `the card did not report its state counter: ${e.message}`);
        }
      } finally {
        material.sEnc.fill(0);
        material.sMac.fill(0);
        material.sRmac.fill(0);
        hs.host.end();
      }
      const outcome = await counters.recordLogin(cardId, counter, { since: hs.startedAt, actor: `card:${cardId}`, details: { kvn: current.kvn } });
      if (!outcome.accepted) {
        if (outcome.reason === "raced") throw new ApiProblem(409, "conflict", "Conflict", "another login of this card crossed this one; start again");
        if (outcome.reason === "flagged")
          await appendAudit(store.db, {
            actor: `card:${cardId}`,
            action: "terminal.refused",
            subject: cardId,
            details: { reason: "card flagged for a rollback", kvn: current.kvn, stateCounter: counter },
          });
        throw rollbackProblem(cardId, outcome.record, outcome.reason === "rollback");
      }
      const { token, expiresAt } = tokens.issue(cardId, now.statusVersion);
      await appendAudit(store.db, { actor: `card:${cardId}`, action: "terminal.authenticated", subject: cardId, details: { kvn: current.kvn, expiresAt, stateCounter: counter } });
      return { token, expiresAt: new Date(expiresAt).toISOString(), apdus: [toHex(externalAuthenticate)] };
    },
  );

  app.get<{ Params: { id: string } }>(
    "/cards/:id/state-counter",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "The state counter the card reported at its last accepted login, and its rollback flag",
        params: params({ id: CARD_ID }),
        response: { 200: stateCounterSchema, ...problems },
      },
    },
    async (req) => {
      const card = await issuer.card(req.params.id);
      return counterOut(card.id, await counters.get(card.id));
    },
  );

  app.post<{ Params: { id: string }; Body: { reason: string } }>(
    "/cards/:id/state-counter/clear",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "An operator's decision on a card flagged for a rollback: clears the flag and forgets the counter, so the next login starts over (audited)",
        params: params({ id: CARD_ID }),
        body: { type: "object", additionalProperties: false, required: ["reason"], properties: { reason: { type: "string", minLength: 1, maxLength: 500 } } },
        response: { 200: { type: "object", required: ["cardId", "cleared"], properties: { cardId: { type: "string" }, cleared: stateCounterSchema } }, ...problems },
      },
    },
    async (req) => {
      const card = await issuer.card(req.params.id);
      const cleared = await counters.clear(card.id, { actor: principalOf(req).name, reason: req.body.reason });
      if (!cleared) throw new ApiProblem(409, "conflict", "Conflict", `card ${card.id} is not flagged for a rollback`);
      return { cardId: card.id, cleared: counterOut(card.id, cleared) };
    },
  );

  app.get(
    "/rollbacks",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "The cards flagged for a rollback, the oldest flag first",
        response: { 200: { type: "object", required: ["cards"], properties: { cards: { type: "array", items: stateCounterSchema } } }, ...problems },
      },
    },
    async () => ({ cards: (await counters.listFlagged()).map((r) => counterOut(r.cardId, r)) }),
  );

  app.get<{ Params: { id: string }; Querystring: { after?: string } }>(
    "/cards/:id/packages",
    {
      config: { roles: ["terminal", "operator"] },
      schema: {
        summary: "The card's delivery packages after ?after=<seq>, oldest first (ST22); a terminal's fetch marks them fetched",
        params: params({ id: CARD_ID }),
        querystring: { type: "object", additionalProperties: false, properties: { after: digits(9) } },
        response: {
          200: PackagesJson,
          ...problems,
        },
      },
    },
    async (req) => {
      const cardId = req.params.id;
      const who = requireCardAccess(req.principal, cardId, { operators: true });
      const after = Number(req.query.after ?? 0);
      // Only the card's own terminal moves packages to "fetched", while the card is active; an operator looking
      // (at a card in any state) does not.
      if (who.cardId === cardId) await requireCardState(store, cardId, "packages.fetch");
      const list = who.cardId === cardId ? await issuer.packagesFor(cardId, after) : (await issuer.card(cardId), await store.listPackages(cardId, { afterSeq: after }));
      return { packages: list.map((p) => ({ seq: p.seq, status: p.status, createdAt: p.createdAt, body: p.body.toString("base64") })) };
    },
  );

  app.post<{ Params: { id: string; seq: string } }>(
    "/cards/:id/packages/:seq/ack",
    {
      config: { roles: ["terminal"] },
      schema: {
        summary: "The card accepted the package (ST24-ST25)",
        params: params({ id: CARD_ID, seq: digits(9) }),
        body: EMPTY_BODY,
        response: { 204: { type: "null" }, ...problems },
      },
    },
    async (req, reply) => {
      const cardId = req.params.id;
      const who = requireCardAccess(req.principal, cardId, { operators: false });
      await requireCardState(store, cardId, "packages.ack");
      await issuer.acknowledgePackage(cardId, Number(req.params.seq), who.name);
      return reply.code(204).send();
    },
  );
};

const swHex = (sw: number) => sw.toString(16).toUpperCase().padStart(4, "0");
