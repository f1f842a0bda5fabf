// Reproduction requests (S5-S7) on the recovery routes (recovery-routes.ts lists the routes): file one — it names
// the card that will receive the key, which every approval signs over — list and read them, withdraw one, and put
// one stuck "reproducing" back to "satisfied" once its reproduction's lease passed.

import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "typebox";
import { policyParties } from "../../recovery/policy.ts";
import type { RecoveryService } from "../../recovery/service.ts";
import { FileRequestBody, ReasonBody, RecoveryCardId, REQUEST_STATUSES, RequestId, RequestJson, requestJson } from "../../recovery/wire.ts";
import { Closed, Cursor, Enum } from "../../util/wire.ts";
import { principalOf } from "../issuer-routes.ts";
import { admit } from "./access.ts";
import { NO_QUERY, nextOf, PAGE, pageOf, problems } from "./schemas.ts";

export interface RequestRoutesOptions {
  recovery: RecoveryService;
}

export const requestRoutes: FastifyPluginAsyncTypebox<RequestRoutesOptions> = async (app, o) => {
  const { recovery } = o;

  // ---- requests (S5-S7) -----------------------------------------------------------------------------------------

  app.post(
    "/recovery/requests",
    {
      config: { roles: ["operator"] },
      schema: {
        summary:
          "File a reproduction request (S5): key-lost (the same card comes back) or card-destroyed (a new card receives the key: `replacementCardId`, required, " +
          "a card record issued to the same user, active, with an empty slot). The request names the card that will receive the key; every approval signs over it",
        tags: ["recovery"],
        querystring: NO_QUERY,
        body: FileRequestBody,
        response: { 201: RequestJson, ...problems },
      },
    },
    async (req, reply) => reply.code(201).send(requestJson(await recovery.fileRequest(req.body, principalOf(req).name))),
  );

  app.get(
    "/recovery/requests",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "Reproduction requests, newest first (filing time, then id), a page at a time",
        tags: ["recovery"],
        querystring: Closed({ status: Type.Optional(Enum(REQUEST_STATUSES)), cardId: Type.Optional(RecoveryCardId), ...PAGE }),
        response: { 200: Closed({ requests: Type.Array(RequestJson), next: Type.Optional(Cursor) }), ...problems },
      },
    },
    async (req) => {
      const page = await recovery.listPage({ status: req.query.status, cardId: req.query.cardId, ...pageOf(req.query) });
      return { requests: page.items.map(requestJson), ...nextOf(page) };
    },
  );

  app.get(
    "/recovery/requests/:id",
    {
      config: { roles: ["operator", "auditor", "arbitrator"] },
      schema: {
        summary: "A request with its signed chain and the policy's judgement (an arbitrator token: requests it is a party of)",
        tags: ["recovery"],
        params: Closed({ id: RequestId }),
        querystring: NO_QUERY,
        response: { 200: RequestJson, ...problems },
      },
    },
    async (req) => {
      const v = await recovery.status(req.params.id);
      admit(req, ["operator", "auditor"], (a) => policyParties(v.request.policy).includes(a) || v.request.policy.author === a);
      return requestJson(v);
    },
  );

  app.post(
    "/recovery/requests/:id/withdraw",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Withdraw an unfinished request (not one being reproduced)",
        tags: ["recovery"],
        params: Closed({ id: RequestId }),
        querystring: NO_QUERY,
        body: ReasonBody,
        response: { 200: RequestJson, ...problems },
      },
    },
    async (req) => requestJson(await recovery.withdraw(req.params.id, req.body.reason, principalOf(req).name)),
  );

  app.post(
    "/recovery/requests/:id/reset-reproduction",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Put a request stuck in reproducing (its reproduction's process is gone) back to satisfied; refused while the reproduction's lease is live",
        tags: ["recovery"],
        params: Closed({ id: RequestId }),
        querystring: NO_QUERY,
        body: ReasonBody,
        response: { 200: RequestJson, ...problems },
      },
    },
    async (req) => requestJson(await recovery.resetReproduction(req.params.id, req.body.reason, principalOf(req).name)),
  );
};
