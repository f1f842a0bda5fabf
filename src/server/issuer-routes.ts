// HTTP routes of the issuing flows (seed 000 ST11-ST25): users, card issue and personalisation, the card lifecycle
// (POST /cards/{id}/suspend | resume | retire | report-destroyed {reason}: card-lifecycle.ts), distribution
// requests (credentials), online delivery, the relay endpoint the terminal or card issuing machine forwards
// APDUs through, revocation, the CRL and the audit log. Every route that acts for a card checks the card's state
// on each call (requireCardState; a relay round of a card script too, on whichever server takes it): 409 check
// card_state. The relay sessions are in the system DB (relay-sessions.ts, issue 16 §1): personalisation and online
// delivery open them by recipe ("personalisation" {cardId}, "online-delivery" {cardId, keyPairId}), registered here,
// so that any server rebuilds the script, its card-state gate and its outcome for the round it takes. Thin: the domain is
// src/issuer/issuer.ts; this file validates (every body, query and params schema is closed: unknown fields are
// 400s) and authorises (roles in route config, card binding for terminals); the domain's errors reach problem.ts,
// the one mapper.
//
// Never in a response: a key value, a custody reference, Sk[PRk] or a token. Register after `installAuth`:
//   await app.register(issuerRoutes, { prefix: "/v1", issuer, relays });

import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { Type } from "typebox";
import { toPem } from "../ca/pem.ts";
import { Issuer } from "../issuer/issuer.ts";
import { requireCardState, type CardTransition } from "../issuer/card-lifecycle.ts";
import { auditEntries, verifyAuditLog } from "../store/audit.ts";
import type { Card, Store, User } from "../store/store.ts";
import { requireCardAccess, type Principal, type Role } from "./auth.ts";
import { API_CRL_PATHS, CrlUrlError } from "./crl-url.ts";
import { ApiProblem, problemSchema } from "./problem.ts";
import { RelaySessions, SESSION_ID_PATTERN } from "./relay-sessions.ts";
export { fromHex, toHex } from "../util/bytes.ts";
import { fromHex, toHex } from "../util/bytes.ts";
import type { TSchema } from "typebox";
import { Closed, Hex64 } from "../util/wire.ts";
import {
  ApduHex,
  CardDetailJson,
  CardId,
  CardRecordJson,
  CardTransitionRequest,
  CredentialRequest,
  Id,
  IssueCardRequest,
  IssuedCardJson,
  IssuedCredentialJson,
  RegisterUserRequest,
  RelayRequest,
  RelayRoundJson,
  RelayStepJson,
  RevokeCertificateRequest,
  RevokedCertificateJson,
  UserJson,
} from "../issuer/wire.ts";
import { AuditPageJson, AuditVerifyJson } from "../issuer/wire-audit.ts";

export interface IssuerRoutesOptions {
  issuer: Issuer<Store>;
  relays: RelaySessions;
}

// ---- shared schema pieces (terminal-routes.ts uses them too) --------------------------------------------------

/** A record ID, a card ID, a whole APDU in hex (issuer/wire.ts). */
export const ID = Id;
export const CARD_ID = CardId;
export const APDU_HEX = ApduHex;
export const SESSION_ID = Type.String({ pattern: SESSION_ID_PATTERN });
/**
 * problem+json of these routes and of every route about a card: the RFC 9457 members, the check of a domain refusal
 * (problem.ts) and, for a refusal for the card's state (card-lifecycle.ts), the card and its state.
 */
export const CARD_PROBLEM = {
  type: "object",
  required: problemSchema.required,
  properties: {
    ...problemSchema.properties,
    check: {
      type: "string",
      description:
        "the named check that refused: card_state (the card's state does not allow this), card_transition_not_allowed (the lifecycle has no such transition from the card's state), " +
        "or another domain refusal's check (e.g. not_found, conflict, a CA check such as personal-data)",
    },
    cardId: { type: "string" },
    state: { type: "string", description: "the card's lifecycle state: issued, active, suspended, retired, destroyed" },
    allowed: { type: "array", items: { type: "string" }, description: "the states that allow what was refused" },
    act: { type: "string" },
    transition: { type: "string" },
    to: { type: "string" },
  },
} as const;
export const problems = { "4xx": CARD_PROBLEM, "5xx": { $ref: "Problem#" } } as const;
/** Query integers arrive as strings (the server does not coerce), so they are matched as digit strings. */
export const digits = (max: number) => Type.String({ pattern: `^[0-9]{1,${max}}$` });
/** A POST without a meaningful body: nothing, or `{}`. */
export const EMPTY_BODY = { type: ["object", "null"], additionalProperties: false, properties: {} } as const;
/** Path parameters: every one required, no other (a TypeBox object, so a route on the type provider reads their types). */
export const params = <P extends Record<string, TSchema>>(properties: P) => Closed(properties);

/** The first round of a relay session (issuer/wire.ts). */
export const relayRoundSchema = RelayRoundJson;

/** The principal a role-checked route runs for (installAuth sets it). */
export function principalOf(req: FastifyRequest): Principal {
  if (!req.principal) throw new ApiProblem(401, "unauthenticated", "Authentication required", "send Authorization: Bearer <API token>");
  return req.principal;
}

// ---- response shapes ------------------------------------------------------------------------------------------

const userOut = (u: User): UserJson => ({ id: u.id, personalData: u.personalData, createdAt: u.createdAt });
const cardOut = (c: Card): CardRecordJson => ({
  id: c.id,
  userId: c.userId,
  status: c.status,
  validFrom: c.validFrom,
  validUntil: c.validUntil,
  currentKeySetId: c.currentKeySetId,
  lastPackageSeq: c.lastPackageSeq,
  createdAt: c.createdAt,
  updatedAt: c.updatedAt,
  statusChangedAt: c.statusChangedAt,
  statusChangedBy: c.statusChangedBy,
  statusReason: c.statusReason,
});

const crlRoute = (summary: string) =>
  ({
    schema: {
      summary,
      produces: ["application/pkix-crl"],
      response: { 200: { description: "DER CRL (RFC 5280)", type: "string", format: "binary" }, ...problems },
    },
  }) as const;
const crlHandler = (issuer: Issuer) => async (_req: FastifyRequest, reply: FastifyReply) => reply.type("application/pkix-crl").send(Buffer.from(await issuer.ca.crl()));

/**
 * Serves the CRL also at `path`, the path of the distribution point the CA writes into certificates (config crlUrl,
 * crl-url.ts), on the root app: public like /v1/crl. The API's own CRL paths are served already; any other route
 * of the server at that path is refused by name, so the server does not start with certificates pointing at it.
 */
export function serveCrlAt(app: FastifyInstance, path: string, issuer: Issuer): void {
  if (API_CRL_PATHS.includes(path)) return;
  if (app.hasRoute({ method: "GET", url: path })) throw new CrlUrlError(`crlUrl: its path ${path} is already the server's route GET ${path}; choose another, such as /crl or /v1/crl`);
  app.get(path, crlRoute("The CA's current CRL at the distribution point its certificates name (config crlUrl)"), crlHandler(issuer));
}

export const issuerRoutes: FastifyPluginAsyncTypebox<IssuerRoutesOptions> = async (app, o) => {
  const { issuer, relays } = o;
  const store = issuer.store;

  // ---- relay recipes (relay-sessions.ts): any server rebuilds these scripts from the DB for the round it takes ----

  relays.register("personalisation", async (r) => {
    const cardId = String(r.cardId);
    return {
      scripts: [await issuer.personalisationScriptFor(cardId)],
      gate: () => requireCardState(store, cardId, "personalisation"),
      finish: async (_results, owner) => void (await issuer.markPersonalised(cardId, owner)),
    };
  });
  relays.register("online-delivery", async (r) => {
    const cardId = String(r.cardId);
    const keyPairId = String(r.keyPairId);
    return {
      scripts: [await issuer.onlineDeliveryScript(cardId, keyPairId)],
      gate: () => requireCardState(store, cardId, "credential.online"),
      finish: (_results, owner) => issuer.recordOnlineDelivery(cardId, keyPairId, owner),
    };
  });

  // ---- users (FIG. 4: user ID and registered data) --------------------------------------------------------

  app.post(
    "/users",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Register a user; the personal data become the subject of the user's certificates",
        body: RegisterUserRequest,
        response: { 201: UserJson, ...problems },
      },
    },
    async (req, reply) =>
      // Refused now rather than at the first certificate request (Issuer.registerUser): the data must make a valid
      // subject as it is, so the record and every certificate say the same thing; a 422 names the field.
      reply.code(201).send(userOut(await issuer.registerUser(req.body.personalData, principalOf(req).name))),
  );

  app.get(
    "/users/:id",
    {
      config: { roles: ["operator", "auditor"] },
      schema: { summary: "A registered user", params: params({ id: ID }), response: { 200: UserJson, ...problems } },
    },
    async (req) => {
      const u = await store.getUser(req.params.id);
      if (!u) throw new ApiProblem(404, "not-found", "Not found", `no user ${req.params.id}`);
      return userOut(u);
    },
  );

  // ---- ST11-ST15: issue a card ------------------------------------------------------------------------------

  app.post(
    "/cards",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Issue a card to a user (ST11-ST12): its key set is diversified in custody; personalise it next",
        body: IssueCardRequest,
        response: { 201: IssuedCardJson, ...problems },
      },
    },
    async (req, reply) => {
      const { card, keySet } = await issuer.issueCard({ userId: req.body.userId, cardId: req.body.cardId }, principalOf(req).name);
      return reply.code(201).send({ card: cardOut(card), keySet: { id: keySet.id, kvn: keySet.kvn, version: keySet.version } });
    },
  );

  app.get(
    "/cards/:id",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "A card with its key sets (references only, never key values) and key pairs (public keys, certificates)",
        params: params({ id: CARD_ID }),
        response: { 200: CardDetailJson, ...problems },
      },
    },
    async (req) => {
      const card = await issuer.card(req.params.id);
      const keySets = await store.listKeySets(card.id);
      const keyPairs = await store.listKeyPairs({ cardId: card.id });
      return {
        ...cardOut(card),
        keySets: keySets.map((k) => ({ id: k.id, kvn: k.kvn, version: k.version, status: k.status, validFrom: k.validFrom, validUntil: k.validUntil, current: k.id === card.currentKeySetId })),
        keyPairs: await Promise.all(
          keyPairs.map(async (k) => ({
            id: k.id,
            slot: k.slot,
            algorithm: k.algorithm,
            status: k.status,
            publicKey: k.publicKey.toString("base64"),
            createdAt: k.createdAt,
            certificates: (await store.listCertificates(k.id)).map((c) => ({
              serial: c.serial,
              notBefore: c.notBefore,
              notAfter: c.notAfter,
              revokedAt: c.revokedAt,
              revocationReason: c.revocationReason,
            })),
          })),
        ),
      };
    },
  );

  app.post(
    "/cards/:id/personalisation",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Personalise an issued card through a relay (ST13-ST14): forward the APDUs to the card and POST its responses to /relay/{sessionId}",
        params: params({ id: CARD_ID }),
        body: EMPTY_BODY,
        response: { 201: RelayRoundJson, ...problems },
      },
    },
    async (req, reply) => {
      const opened = await relays.open(principalOf(req).name, { kind: "personalisation", cardId: req.params.id });
      return reply.code(201).send({ sessionId: opened.sessionId, apdus: opened.apdus.map(toHex) });
    },
  );

  // ---- the card lifecycle (card-lifecycle.ts): suspend, resume, retire, report destroyed ------------------------

  const transitionRoute = (path: string, transition: Exclude<CardTransition, "personalise">, roles: Role[], summary: string) =>
    app.post(
      `/cards/:id/${path}`,
      {
        config: { roles },
        schema: { summary, params: params({ id: CARD_ID }), body: CardTransitionRequest, response: { 200: CardRecordJson, ...problems } },
      },
      async (req) => {
        // operators act for any card; a terminal only for the card it is bound to (and only where `roles` admits it)
        const who = requireCardAccess(req.principal, req.params.id, { operators: true });
        const by = who.roles.includes("admin") || who.roles.includes("operator") ? "operator" : "terminal";
        return cardOut(await issuer.changeCardState({ cardId: req.params.id, transition, reason: req.body.reason, by }, who.name));
      },
    );
  transitionRoute("suspend", "suspend", ["operator", "terminal"], "Suspend an active card (an operator, or the card's own terminal): every live terminal token of the card stops working at once");
  transitionRoute("resume", "resume", ["operator"], "Resume a suspended card (an operator): the card logs in again; tokens from before the suspension stay dead");
  transitionRoute("retire", "retire", ["operator"], "Retire a card (an operator): final, the card never comes back");
  transitionRoute("report-destroyed", "report-destroyed", ["operator"], "Report a card destroyed (an operator): final; a card-destroyed key reproduction does it too");

  // ---- ST16-ST25: distribution requests, update and addition ------------------------------------------------

  app.post(
    "/cards/:id/credentials",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "A new key pair and certificate for the card (ST16-ST22); `replace` updates a slot's key (claim 4), else it is added (claim 7)",
        params: params({ id: CARD_ID }),
        body: CredentialRequest,
        response: { 201: IssuedCredentialJson, ...problems },
      },
    },
    async (req, reply) => {
      const c = await issuer.requestCredential({ cardId: req.params.id, ...req.body }, principalOf(req).name);
      return reply.code(201).send({ keyPairId: c.keyPair.id, serial: c.certificate.serial, certificate: toPem(c.certificate.der, "CERTIFICATE"), packageSeq: c.package.seq });
    },
  );

  app.post(
    "/cards/:id/credentials/:keyPairId/online",
    {
      config: { roles: ["operator", "terminal"] },
      schema: {
        summary: "Deliver a stored credential online (ST22-ST25 over SCP03 driven by the server): relay the APDUs through /relay/{sessionId}",
        params: params({ id: CARD_ID, keyPairId: ID }),
        body: EMPTY_BODY,
        response: { 201: RelayRoundJson, ...problems },
      },
    },
    async (req, reply) => {
      const { id: cardId, keyPairId } = req.params;
      const who = requireCardAccess(req.principal, cardId, { operators: true });
      const opened = await relays.open(who.name, { kind: "online-delivery", cardId, keyPairId });
      return reply.code(201).send({ sessionId: opened.sessionId, apdus: opened.apdus.map(toHex) });
    },
  );

  app.post(
    "/relay/:sessionId",
    {
      config: { roles: ["operator", "terminal"] },
      schema: {
        summary: "The card's responses to the last round; answers the next round, or {done, results} when the script ran",
        params: params({ sessionId: SESSION_ID }),
        body: RelayRequest,
        response: { 200: RelayStepJson, ...problems },
      },
    },
    async (req) => {
      const step = await relays.next(req.params.sessionId, principalOf(req).name, req.body.responses.map(fromHex));
      if ("apdus" in step) return { apdus: step.apdus.map(toHex) };
      return { done: true, results: step.results.map((r) => ({ sw: r.sw, data: toHex(r.data) })) };
    },
  );

  // ---- revocation and the CRL ---------------------------------------------------------------------------------

  app.post(
    "/certificates/:serial/revoke",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Revoke a certificate at the CA and in the system DB",
        params: params({ serial: Type.String({ pattern: "^[0-9A-Fa-f]{2,64}$" }) }),
        body: RevokeCertificateRequest,
        response: { 200: RevokedCertificateJson, ...problems },
      },
    },
    async (req) => {
      const c = await issuer.revokeCertificate(req.params.serial.toLowerCase(), req.body.reason, principalOf(req).name);
      return { serial: c.serial, revokedAt: c.revokedAt, reason: c.revocationReason };
    },
  );

  app.get("/crl", crlRoute("The CA's current CRL (DER, application/pkix-crl)"), crlHandler(issuer));

  // ---- audit (hash-chained; verify finds any altered or removed entry) -----------------------------------------

  app.get(
    "/audit",
    {
      config: { roles: ["auditor"] },
      schema: {
        summary: "Audit entries in order; page with ?after=<last seq>",
        querystring: Closed({ after: Type.Optional(digits(15)), limit: Type.Optional(digits(4)) }),
        response: { 200: AuditPageJson, ...problems },
      },
    },
    async (req) => {
      const limit = req.query.limit === undefined ? 100 : Number(req.query.limit);
      if (limit < 1 || limit > 1000) throw new ApiProblem(400, "validation", "Request does not match the schema", "limit: expected 1..1000");
      const entries = [];
      for await (const e of auditEntries(store.db, { afterSeq: Number(req.query.after ?? 0), pageSize: limit })) {
        entries.push(e);
        if (entries.length === limit) break;
      }
      return { entries, next: entries.length === limit ? entries[entries.length - 1].seq : null };
    },
  );

  app.get(
    "/audit/verify",
    {
      config: { roles: ["auditor"] },
      schema: {
        summary: "Verify the whole chain; with an exported head (headSeq, headHash) also detects truncation and rewriting",
        querystring: Closed({ headSeq: Type.Optional(digits(15)), headHash: Type.Optional(Hex64) }),
        response: { 200: AuditVerifyJson, ...problems },
      },
    },
    async (req) => {
      const q = req.query;
      if ((q.headSeq === undefined) !== (q.headHash === undefined)) throw new ApiProblem(400, "validation", "Request does not match the schema", "headSeq and headHash go together");
      const expectedHead = q.headSeq !== undefined && q.headHash !== undefined ? { seq: Number(q.headSeq), hash: q.headHash } : undefined;
      const v = await verifyAuditLog(store.db, { expectedHead });
      if (v.ok) return { ok: true, entries: v.entries, head: v.head };
      return { ok: false, entries: v.entries, head: null, problem: v.problem, seq: v.seq, message: v.message };
    },
  );
};
