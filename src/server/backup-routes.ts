// HTTP routes of the back-up device 8 (seed 001 FIG. 11-12, claims 41 and 48): step S10, the user's terminal backs
// up the personal enciphered data; step S12, after the card was destroyed and reissued with the same key (S11), it
// fetches the latest versions back. Thin: the domain is src/backup/ (its storage port BackupStore, which
// src/store/backup-repository.ts implements: versioned, audit-logged, envelopes only; its refusals; its wire
// shapes); this file validates (closed schemas) and authorises. Refusals are DomainErrors answered by problem.ts.
//
//   PUT /cards/{id}/backups/{objectId}   {envelope: base64}  -> 201 {backup, created: true}: a new version
//                                                            -> 200 {backup, created: false}: already the latest
//                                                                                  [terminal of this card, operator]
//   GET /cards/{id}/backups[?objectId=]                      -> {cardId, userId, backups}: every version, no
//                                                               envelopes        [terminal of this card, operator, auditor]
//   GET /cards/{id}/backups?latest=true[&objectId=]          -> {cardId, userId, backups}: the latest version of each
//                                                               object WITH its envelope (what S12 restores)
//                                                                                  [terminal of this card, operator]
//   GET /cards/{id}/backups/{objectId}[?version=n]           -> the latest version (or version n) with its envelope
//                                                                                  [terminal of this card, operator]
//
// Backups are the USER's: the card in the path names the user (its record's user), and every route works on that
// user's backups. So a card reissued to the same user (a new card record after a card-destroyed key reproduction
// or a card-key rotation) reaches what was backed up through the old card. A terminal token (role terminal,
// bound to one card by the card's own proof: terminal-routes.ts) acts for its card only, and only while that
// card is active (409 check card_state otherwise, read on every call: card-lifecycle.ts); another card's token is
// 403. A backup is written through a card only while it is active, whoever writes it. Operators and admins read
// through any card; auditors see the version lists only — never an envelope. A put records the card it came through and the actor (the
// principal's name) in the audit log (backup.stored: IDs, version, hashes, never the envelope).
//
// What crosses these routes is ciphertext: envelopes (src/protocol/enciphered.ts) enciphered under the card's
// key management key, which only that card — or one reissued with the same key — opens. A body that is not an
// envelope (plaintext handed over by mistake) is refused with 400 and nothing is stored; refusals never echo the
// body. Envelopes go back to the card's terminal and operators as they are: the server never deciphers.
//
// Body size: the PUT route takes up to PUT_BODY_LIMIT bytes — the base64 of MAX_ENVELOPE_BYTES (24 MiB, the
// envelope format's 16 MiB of plaintext and its encoding) plus 4 KiB of JSON around it — instead of the server's
// default (1 MiB). The bearer token and the role are checked in onRequest and the card binding in this route's
// own onRequest hook, both before the body is read, so only a caller allowed to write this card's backups can
// send a body that large. Larger bodies are 413 problem+json.

import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import type { Issuer } from "../issuer/issuer.ts";
import { Type } from "typebox";
import { BackupError } from "../backup/errors.ts";
import { OBJECT_ID_PATTERN } from "../backup/objects.ts";
import type { BackupInfo, BackupRecord, BackupStore } from "../backup/repository.ts";
import { BackupInfoJson, BackupRecordJson, EnvelopeB64, MAX_ENVELOPE_BASE64 } from "../backup/wire.ts";
import type { Card } from "../store/store.ts";
import { requireCardAccess, type Principal } from "./auth.ts";
import { CARD_ID, digits, params, principalOf, problems } from "./issuer-routes.ts";
import { checkCardState } from "../issuer/card-lifecycle.ts";
import { toB64 as b64 } from "../util/bytes.ts";
import { ApiProblem } from "./problem.ts";

export { MAX_ENVELOPE_BASE64, OBJECT_ID_PATTERN };

export interface BackupRoutesOptions {
  /** The issuer: card records (which user a card is) and their status. */
  issuer: Issuer;
  /** The back-up device's store (BackupRepository, on the system DB). */
  backups: BackupStore;
}

// ---- schema pieces ------------------------------------------------------------------------------------------------

/** Object IDs (src/backup/objects.ts): also safe as one path segment, unescaped. */
const OBJECT_ID = { type: "string", minLength: 1, maxLength: 128, pattern: OBJECT_ID_PATTERN } as const;
/** The PUT route's body limit: the largest envelope in base64 and the JSON around it. */
export const PUT_BODY_LIMIT = MAX_ENVELOPE_BASE64 + 4096;
const closed = (properties: Record<string, unknown>, required: string[] = []) => ({ type: "object", additionalProperties: false, required, properties }) as const;

/** An item of a list: with its envelope only for ?latest=true. */
const LIST_ITEM = Type.Object({ ...BackupInfoJson.properties, envelope: Type.Optional(EnvelopeB64) }, { additionalProperties: false });
const LIST = Type.Object({ cardId: Type.String(), userId: Type.String(), backups: Type.Array(LIST_ITEM) }, { additionalProperties: false });

// ---- helpers ------------------------------------------------------------------------------------------------------

const infoOut = (b: BackupInfo): BackupInfoJson => ({
  id: b.id,
  userId: b.userId,
  cardId: b.cardId,
  objectId: b.objectId,
  version: b.version,
  sha256: b.sha256,
  recipientKid: b.recipientKid,
  size: b.size,
  createdAt: b.createdAt,
});
const recordOut = (b: BackupRecord): BackupRecordJson => ({ ...infoOut(b), envelope: b64(b.envelope) });

const isStaff = (p: Principal) => p.roles.includes("admin") || p.roles.includes("operator");

/**
 * Who may act on card `cardId`'s backups: admins, operators, the terminal bound to this card; auditors too when
 * no envelope is returned. Checked before the body is read (onRequest) and again in the handler.
 */
function admit(p: Principal, cardId: string, envelopes: boolean): Principal {
  if (!envelopes && p.roles.includes("auditor")) return p;
  if (p.roles.includes("auditor") && !isStaff(p) && !p.roles.includes("terminal")) {
    throw new ApiProblem(403, "forbidden", "Forbidden", "auditors see the list of backed-up versions, never an envelope");
  }
  return requireCardAccess(p, cardId, { operators: true });
}

// ---- the routes ---------------------------------------------------------------------------------------------------

export const backupRoutes: FastifyPluginAsync<BackupRoutesOptions> = async (app, o) => {
  const { issuer, backups } = o;

  /**
   * The card (404 when unknown) as the principal may use it, its state read on every call (card-lifecycle.ts): its
   * terminal only while it is active, and a backup written through it (by anyone) only while it is active (409 check
   * card_state). Operators and auditors read the user's backups through a card in any state (after a card was
   * destroyed, that is what S12 restores from).
   */
  const cardFor = async (req: FastifyRequest, cardId: string, envelopes: boolean, writes = false): Promise<{ card: Card; actor: Principal }> => {
    const actor = admit(principalOf(req), cardId, envelopes);
    const card = await issuer.store.getCard(cardId);
    if (!card) throw new ApiProblem(404, "not-found", "Not found", `no card ${cardId}`);
    if (writes || (!isStaff(actor) && actor.cardId === cardId)) checkCardState(card, "backup");
    return { card, actor };
  };

  app.put<{ Params: { id: string; objectId: string }; Body: { envelope: string } }>(
    "/cards/:id/backups/:objectId",
    {
      config: { roles: ["terminal", "operator"] },
      bodyLimit: PUT_BODY_LIMIT,
      // The card binding before the body is read (the global auth hook ran first and set the principal).
      onRequest: async (req) => {
        admit(principalOf(req), (req.params as { id: string }).id, true);
      },
      schema: {
        summary: "Back up an enciphered object of the card's user (seed 001 S10): a new version unless it already is the latest",
        description: `The body carries an envelope (cardkms-enciphered v1), base64; anything else is refused (400) and nothing is stored. Bodies up to ${PUT_BODY_LIMIT} bytes.`,
        tags: ["backups"],
        params: params({ id: CARD_ID, objectId: OBJECT_ID }),
        querystring: closed({}),
        body: closed({ envelope: EnvelopeB64 }, ["envelope"]),
        response: {
          200: closed({ backup: BackupInfoJson, created: { type: "boolean" } }, ["backup", "created"]),
          201: closed({ backup: BackupInfoJson, created: { type: "boolean" } }, ["backup", "created"]),
          ...problems,
        },
      },
    },
    async (req, reply) => {
      const { card, actor } = await cardFor(req, req.params.id, true, true);
      const text = req.body.envelope;
      const envelope = Buffer.from(text, "base64");
      if (text.length % 4 !== 0 || envelope.toString("base64") !== text) throw new BackupError("invalid", "envelope: not canonical base64 (standard alphabet, padded)");
      const r = await backups.put(
        { userId: card.userId, cardId: card.id, objectId: req.params.objectId, envelope: new Uint8Array(envelope.buffer, envelope.byteOffset, envelope.byteLength) },
        actor.name,
      );
      return reply.code(r.created ? 201 : 200).send({ backup: infoOut(r.backup), created: r.created });
    },
  );

  app.get<{ Params: { id: string }; Querystring: { objectId?: string; latest?: "true" | "false" } }>(
    "/cards/:id/backups",
    {
      config: { roles: ["terminal", "operator", "auditor"] },
      schema: {
        summary: "The card's user's backups: every version without envelopes, or (latest=true) the latest version of each object with its envelope (seed 001 S12)",
        tags: ["backups"],
        params: params({ id: CARD_ID }),
        querystring: closed({ objectId: OBJECT_ID, latest: { type: "string", enum: ["true", "false"] } }),
        response: { 200: LIST, ...problems },
      },
    },
    async (req) => {
      const latest = req.query.latest === "true";
      const { card } = await cardFor(req, req.params.id, latest);
      const objectId = req.query.objectId;
      const list = latest
        ? (await backups.latestAll(card.userId)).filter((b) => objectId === undefined || b.objectId === objectId).map(recordOut)
        : (await backups.list(card.userId, { objectId })).map(infoOut);
      return { cardId: card.id, userId: card.userId, backups: list };
    },
  );

  app.get<{ Params: { id: string; objectId: string }; Querystring: { version?: string } }>(
    "/cards/:id/backups/:objectId",
    {
      config: { roles: ["terminal", "operator"] },
      schema: {
        summary: "One backed-up object of the card's user with its envelope: the latest version, or ?version=n",
        tags: ["backups"],
        params: params({ id: CARD_ID, objectId: OBJECT_ID }),
        querystring: closed({ version: digits(9) }),
        response: { 200: BackupRecordJson, ...problems },
      },
    },
    async (req) => {
      const { card } = await cardFor(req, req.params.id, true);
      const { objectId } = req.params;
      const v = req.query.version;
      const r = v === undefined ? await backups.latest(card.userId, objectId) : await backups.get(card.userId, objectId, Number(v));
      if (!r) throw new ApiProblem(404, "not-found", "Not found", v === undefined ? `no backup of object ${objectId}` : `no version ${Number(v)} of object ${objectId}`);
      return recordOut(r);
    },
  );
};
