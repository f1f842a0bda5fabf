// Reproduction through the terminal (S8-S9, FIG. 10) on the recovery routes (recovery-routes.ts lists the routes):
// the reproduction device's public key, which arbitrators release their shares to, and the live relay (live-relay.ts)
// that carries the reproduction's APDUs to the card the request names through the user's terminal.

import { createPublicKey } from "node:crypto";
import type { FastifyPluginAsync } from "fastify";
import type { RecoveryService, ReproductionResult } from "../../recovery/service.ts";
import { APDU_HEX, fromHex, params, principalOf, toHex } from "../issuer-routes.ts";
import { LiveRelaySessions, type LiveStep } from "../live-relay.ts";
import { SESSION_ID_PATTERN, type TtlMapOptions } from "../relay-sessions.ts";
import { b64, BOOL, closed, INT, NO_QUERY, problems, RCARD_ID, REQUEST_ID, STR, strings } from "./schemas.ts";

export interface ReproductionRoutesOptions {
  recovery: RecoveryService;
  /** Bounds of the live relay sessions of reproductions (default 5 min, 100 at once). */
  liveRelays?: Partial<TtlMapOptions>;
}

// ---- schema pieces ------------------------------------------------------------------------------------------------

const RESULT = closed(
  {
    requestId: STR,
    cardId: STR,
    kind: STR,
    approvers: strings(),
    author: STR,
    chainHead: STR,
    slot: STR,
    serial: STR,
    targetCardId: STR,
    deviceReplaced: BOOL,
    deviceGeneration: INT,
  },
  ["requestId", "cardId", "kind", "approvers", "author", "chainHead", "slot", "serial", "targetCardId", "deviceReplaced", "deviceGeneration"],
);

const LIVE_STEP = closed({ sessionId: STR, apdus: strings(16), result: RESULT });

// ---- outputs -------------------------------------------------------------------------------------------------

const stepOut = (s: LiveStep<ReproductionResult>) => ("apdus" in s ? { apdus: s.apdus.map(toHex) } : { result: s.result });

// ---- the routes ----------------------------------------------------------------------------------------------

export const reproductionRoutes: FastifyPluginAsync<ReproductionRoutesOptions> = async (app, o) => {
  const { recovery } = o;
  const lives = new LiveRelaySessions<ReproductionResult>(o.liveRelays);
  app.addHook("onClose", async () => lives.close());

  app.get(
    "/recovery/device-key",
    {
      config: { roles: ["operator", "auditor", "arbitrator"] },
      schema: {
        summary: "The reproduction device's P-256 public key, which arbitrators release their shares to",
        tags: ["recovery"],
        querystring: NO_QUERY,
        response: { 200: closed({ spki: { type: "string", description: "base64 DER SubjectPublicKeyInfo" }, pem: STR, keyId: STR }, ["spki", "pem", "keyId"]), ...problems },
      },
    },
    async () => {
      const k = recovery.deviceKey();
      const pem = createPublicKey({ key: Buffer.from(k.spki), format: "der", type: "spki" }).export({ format: "pem", type: "spki" }) as string;
      return { spki: b64(k.spki), pem, keyId: k.keyId };
    },
  );

  // ---- reproduction through the terminal (S8-S9, FIG. 10) -----------------------------------------------------------

  app.post<{ Params: { id: string }; Body: { cardId?: string } | null }>(
    "/recovery/requests/:id/reproduce",
    {
      config: { roles: ["operator"] },
      schema: {
        summary:
          "Reproduce the key of a satisfied request into the card at the terminal: the card the request names and the arbitrators approved (key-lost: the registered card; " +
          "card-destroyed: the replacement card named at filing), reached with that card record's key set; `cardId`, when given, must be it (else 422 target_not_approved). " +
          "Relay each APDU to the card and POST its response to /recovery/sessions/{sessionId}",
        tags: ["recovery"],
        params: params({ id: REQUEST_ID }),
        querystring: NO_QUERY,
        body: { type: ["object", "null"], additionalProperties: false, properties: { cardId: RCARD_ID } },
        response: { 201: LIVE_STEP, ...problems },
      },
    },
    async (req, reply) => {
      const actor = principalOf(req).name;
      const view = await recovery.status(req.params.id);
      const cardId = req.body?.cardId;
      // the service picks the card record (the request's target) and its key set; a cardId given must be that one
      const { sessionId, step } = await lives.open(actor, (transmit) => recovery.reproduce(view.requestId, { transmit, ...(cardId !== undefined ? { cardId } : {}) }, actor));
      return reply.code(201).send({ sessionId, ...stepOut(step) });
    },
  );

  app.post<{ Params: { sessionId: string }; Body: { responses: string[] } }>(
    "/recovery/sessions/:sessionId",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "The card's response to the last APDU of a reproduction; answers the next APDU, the result, or the refusal naming its check",
        tags: ["recovery"],
        params: params({ sessionId: { type: "string", pattern: SESSION_ID_PATTERN } }),
        querystring: NO_QUERY,
        body: closed({ responses: { type: "array", minItems: 1, maxItems: 16, items: APDU_HEX } }, ["responses"]),
        response: { 200: LIVE_STEP, ...problems },
      },
    },
    async (req) => stepOut(await lives.next(req.params.sessionId, principalOf(req).name, req.body.responses.map(fromHex))),
  );
};
