// Reproduction through the terminal (S8-S9, FIG. 10) on the recovery routes (recovery-routes.ts lists the routes):
// the reproduction device's public key, which arbitrators release their shares to, and the live relay (live-relay.ts)
// that carries the reproduction's APDUs to the card the request names through the user's terminal. With several
// servers on one database, a round that lands on another server than the one running the reproduction is forwarded
// to it (issue 16 §3, live-relay-forward.ts), or answered 410 relay-server-gone when that server stopped: the
// request's reproduction lease then lets a new reproduction take it over once the lease has passed.

import { createPublicKey } from "node:crypto";
import { Type } from "typebox";
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import type { RecoveryService, ReproductionResult } from "../../recovery/service.ts";
import { DeviceKeyJson, ReproduceBody, ReproductionStepJson, RequestId } from "../../recovery/wire.ts";
import { Closed } from "../../util/wire.ts";
import { APDU_HEX, fromHex, principalOf, toHex } from "../issuer-routes.ts";
import { LiveRelaySessions, type LiveRelayOptions, type LiveStep } from "../live-relay.ts";
import type { LiveRelayForwarder } from "../live-relay-forward.ts";
import { SESSION_ID_PATTERN } from "../relay-sessions.ts";
import { b64, NO_QUERY, problems } from "./schemas.ts";

export interface ReproductionRoutesOptions {
  recovery: RecoveryService;
  /** Bounds and store of the live relay sessions of reproductions (default 5 min, 100 at once, in memory). */
  liveRelays?: LiveRelayOptions;
  /** Several servers on one database (issue 16 §3): a round for a session another server runs is forwarded to it. */
  forwarder?: LiveRelayForwarder;
}

// ---- outputs -------------------------------------------------------------------------------------------------

const stepOut = (s: LiveStep<ReproductionResult>) => ("apdus" in s ? { apdus: s.apdus.map(toHex) } : { result: s.result });

// ---- the routes ----------------------------------------------------------------------------------------------

export const reproductionRoutes: FastifyPluginAsyncTypebox<ReproductionRoutesOptions> = async (app, o) => {
  const { recovery } = o;
  const lives = new LiveRelaySessions<ReproductionResult>({ ...o.liveRelays, kind: "reproduction" });
  app.addHook("onClose", async () => lives.close());

  app.get(
    "/recovery/device-key",
    {
      config: { roles: ["operator", "auditor", "arbitrator"] },
      schema: {
        summary: "The reproduction device's P-256 public key, which arbitrators release their shares to",
        tags: ["recovery"],
        querystring: NO_QUERY,
        response: { 200: DeviceKeyJson, ...problems },
      },
    },
    async () => {
      const k = recovery.deviceKey();
      const pem = createPublicKey({ key: Buffer.from(k.spki), format: "der", type: "spki" }).export({ format: "pem", type: "spki" }) as string;
      return { spki: b64(k.spki), pem, keyId: k.keyId };
    },
  );

  // ---- reproduction through the terminal (S8-S9, FIG. 10) -----------------------------------------------------------

  app.post(
    "/recovery/requests/:id/reproduce",
    {
      config: { roles: ["operator"] },
      schema: {
        summary:
          "Reproduce the key of a satisfied request into the card at the terminal: the card the request names and the arbitrators approved (key-lost: the registered card; " +
          "card-destroyed: the replacement card named at filing), reached with that card record's key set; `cardId`, when given, must be it (else 422 target_not_approved). " +
          "Relay each APDU to the card and POST its response to /recovery/sessions/{sessionId}",
        tags: ["recovery"],
        params: Closed({ id: RequestId }),
        querystring: NO_QUERY,
        body: ReproduceBody,
        response: { 201: ReproductionStepJson, ...problems },
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

  app.post(
    "/recovery/sessions/:sessionId",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "The card's response to the last APDU of a reproduction; answers the next APDU, the result, or the refusal naming its check",
        tags: ["recovery"],
        params: Closed({ sessionId: Type.String({ pattern: SESSION_ID_PATTERN }) }),
        querystring: NO_QUERY,
        body: Closed({ responses: Type.Array(Type.Unsafe<string>(APDU_HEX), { minItems: 1, maxItems: 16 }) }),
        response: { 200: ReproductionStepJson, ...problems },
      },
    },
    async (req, reply) => {
      const { sessionId } = req.params;
      const principal = principalOf(req).name;
      // issue 16 §3: the reproduction runs in the server that opened it; a round that landed here goes there
      if (o.forwarder && !lives.holds(sessionId)) return o.forwarder.forward(req, reply, lives as LiveRelaySessions<unknown>, sessionId, principal);
      return stepOut(await lives.next(sessionId, principal, req.body.responses.map(fromHex)));
    },
  );
};
