// The user terminal's side of the API (seed 000 ST22-ST25, issue 3 §8: "a terminal acts for a card only after
// the card proves itself"). A terminal holds no credential of its own: it relays an SCP03 handshake between
// the server and the card, and the server, after checking the card cryptogram with the card's CURRENT key set
// in custody, issues a short-lived token bound to that card. With it the terminal fetches the card's packages
// and acknowledges them; a token bound to another card is refused (403). The login itself is the issuer's
// (src/issuer/card-login.ts: the handshake, the checks, the state counter, the token and the audit entries): the
// routes here decode, call it and encode; the tables it is handed (terminal tokens, pending handshakes) are in the
// system DB (terminal-sessions.ts, issue 16 §1: a login begun on one server finishes on another, a token issued by one
// server is accepted by every server on the database); this file never does the login's domain work or appends to
// the audit log itself.
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
// the card reported at an earlier login (src/store/state-counter-repository.ts, the issuer's StateCounterRecords); when it is not, the card image
// went back to an older copy (or a clone logged in): the login is refused (409, check "card_rollback"), audited,
// notified (event card.rollback) and the card flagged — later logins are refused at once, before any APDU reaches
// the card, until an operator clears the flag:
//   GET  /cards/{id}/state-counter           (operator, auditor) the remembered counter and the flag
//   POST /cards/{id}/state-counter/clear     (operator) {reason}: removes the flag and forgets the counter
//   GET  /rollbacks                          (operator, auditor) the flagged cards
//
// The terminal must forward the EXTERNAL AUTHENTICATE: it completes the handshake on the card, which resets
// the card's authentication failure counter. Tokens are stored as SHA-256 hashes only (system DB), never logged.
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

import { normalizeIP } from "@fastify/rate-limit";
import type { FastifyPluginAsync } from "fastify";
import { CardLogin } from "../issuer/card-login.ts";
import type { Issuer } from "../issuer/issuer.ts";
import type { CardStateCounter, StateCounterRecords } from "../issuer/ports.ts";
import type { Store } from "../store/store.ts";
import { requireCardState } from "../issuer/card-lifecycle.ts";
import { requireCardAccess } from "./auth.ts";
import { CardAuthenticationJson, PackagesJson } from "../issuer/wire.ts";
import { APDU_HEX, CARD_ID, digits, EMPTY_BODY, fromHex, params, principalOf, problems, relayRoundSchema, SESSION_ID, toHex } from "./issuer-routes.ts";
import type { Metrics } from "./metrics.ts";
import { problemSchema } from "./problem.ts";
import type { SessionRepository } from "../store/relay-session-repository.ts";
import { DbHandshakes, TerminalTokens } from "./terminal-sessions.ts";

export { TerminalTokens, type CardStateReader, type TerminalTokensOptions } from "./terminal-sessions.ts";

/** problem+json of the login routes: RFC 9457 members, and the check of a refusal for the card's state (CardLoginError, src/issuer/errors.ts). */
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

export interface TerminalRoutesOptions {
  issuer: Issuer<Store>;
  tokens: TerminalTokens;
  /** Where the pending handshakes are kept: the system DB shared by every server (terminal-sessions.ts). */
  sessions: SessionRepository;
  /** The cards' state counters in the system DB (the wiring: src/store/state-counter-repository.ts). */
  counters: StateCounterRecords;
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
  const bounds = o.authSessions ?? {};
  const handshakes = new DbHandshakes(o.sessions, { ttlMs: bounds.ttlMs ?? 5 * 60_000, max: bounds.max ?? 10_000, perCard: bounds.perCard ?? 16, perCardClient: bounds.perCardClient ?? 4 }, (bound) =>
    o.metrics?.retired.inc({ table: "handshakes", bound }),
  );
  const login = new CardLogin({ issuer, counters: o.counters, handshakes, tokens });

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
      const { sessionId, apdus } = await login.begin(req.params.id, normalizeIP(req.ip));
      return reply.code(201).send({ sessionId, apdus: apdus.map(toHex) });
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
      const { token, expiresAt, apdus } = await login.finish(req.params.id, req.params.sessionId, req.body.responses.map(fromHex));
      return { token, expiresAt: new Date(expiresAt).toISOString(), apdus: apdus.map(toHex) };
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
      const { cardId, record } = await login.stateCounter(req.params.id);
      return counterOut(cardId, record);
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
      const cleared = await login.clearRollback(req.params.id, { actor: principalOf(req).name, reason: req.body.reason });
      return { cardId: cleared.cardId, cleared: counterOut(cleared.cardId, cleared) };
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
    async () => ({ cards: (await login.flagged()).map((r) => counterOut(r.cardId, r)) }),
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
