// Reproduction requests (S5-S7) on the recovery routes (recovery-routes.ts lists the routes): file one — it names
// the card that will receive the key, which every approval signs over — list and read them, withdraw one, and put
// one stuck "reproducing" back to "satisfied" once its reproduction's lease passed.

import type { FastifyPluginAsync } from "fastify";
import { policyParties } from "../../recovery/policy.ts";
import type { RecoveryService, RequestKind, RequestStatus } from "../../recovery/service.ts";
import { params, principalOf } from "../issuer-routes.ts";
import { admit } from "./access.ts";
import { closed, CURSOR, NO_QUERY, nextOf, PAGE, pageOf, problems, RCARD_ID, REQUEST_ID, REQUEST_VIEW, requestOut, TEXT } from "./schemas.ts";

export interface RequestRoutesOptions {
  recovery: RecoveryService;
}

const REQUEST_KINDS: RequestKind[] = ["key-lost", "card-destroyed"];
const REQUEST_STATUSES: RequestStatus[] = ["open", "satisfied", "reproducing", "reproduced", "ended", "withdrawn"];

export const requestRoutes: FastifyPluginAsync<RequestRoutesOptions> = async (app, o) => {
  const { recovery } = o;

  // ---- requests (S5-S7) -----------------------------------------------------------------------------------------

  app.post<{ Body: { cardId: string; kind: RequestKind; requester: string; reason?: string; replacementCardId?: string } }>(
    "/recovery/requests",
    {
      config: { roles: ["operator"] },
      schema: {
        summary:
          "File a reproduction request (S5): key-lost (the same card comes back) or card-destroyed (a new card receives the key: `replacementCardId`, required, " +
          "a card record issued to the same user, active, with an empty slot). The request names the card that will receive the key; every approval signs over it",
        tags: ["recovery"],
        querystring: NO_QUERY,
        body: closed(
          {
            cardId: RCARD_ID,
            kind: { type: "string", enum: REQUEST_KINDS },
            requester: { type: "string", minLength: 1, maxLength: 128 },
            reason: TEXT(1024),
            replacementCardId: { ...RCARD_ID, description: "card-destroyed only: the card record issued to the user to receive the key" },
          },
          ["cardId", "kind", "requester"],
        ),
        response: { 201: REQUEST_VIEW, ...problems },
      },
    },
    async (req, reply) => reply.code(201).send(requestOut(await recovery.fileRequest(req.body, principalOf(req).name))),
  );

  app.get<{ Querystring: { status?: RequestStatus; cardId?: string; after?: string; limit?: string } }>(
    "/recovery/requests",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "Reproduction requests, newest first (filing time, then id), a page at a time",
        tags: ["recovery"],
        querystring: closed({ status: { type: "string", enum: REQUEST_STATUSES }, cardId: RCARD_ID, ...PAGE }),
        response: { 200: closed({ requests: { type: "array", items: REQUEST_VIEW }, next: CURSOR }, ["requests"]), ...problems },
      },
    },
    async (req) => {
      const page = await recovery.listPage({ status: req.query.status, cardId: req.query.cardId, ...pageOf(req.query) });
      return { requests: page.items.map(requestOut), ...nextOf(page) };
    },
  );

  app.get<{ Params: { id: string } }>(
    "/recovery/requests/:id",
    {
      config: { roles: ["operator", "auditor", "arbitrator"] },
      schema: {
        summary: "A request with its signed chain and the policy's judgement (an arbitrator token: requests it is a party of)",
        tags: ["recovery"],
        params: params({ id: REQUEST_ID }),
        querystring: NO_QUERY,
        response: { 200: REQUEST_VIEW, ...problems },
      },
    },
    async (req) => {
      const v = await recovery.status(req.params.id);
      admit(req, ["operator", "auditor"], (a) => policyParties(v.request.policy).includes(a) || v.request.policy.author === a);
      return requestOut(v);
    },
  );

  app.post<{ Params: { id: string }; Body: { reason: string } }>(
    "/recovery/requests/:id/withdraw",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Withdraw an unfinished request (not one being reproduced)",
        tags: ["recovery"],
        params: params({ id: REQUEST_ID }),
        querystring: NO_QUERY,
        body: closed({ reason: { type: "string", minLength: 1, maxLength: 1024 } }, ["reason"]),
        response: { 200: REQUEST_VIEW, ...problems },
      },
    },
    async (req) => requestOut(await recovery.withdraw(req.params.id, req.body.reason, principalOf(req).name)),
  );

  app.post<{ Params: { id: string }; Body: { reason: string } }>(
    "/recovery/requests/:id/reset-reproduction",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Put a request stuck in reproducing (its reproduction's process is gone) back to satisfied; refused while the reproduction's lease is live",
        tags: ["recovery"],
        params: params({ id: REQUEST_ID }),
        querystring: NO_QUERY,
        body: closed({ reason: { type: "string", minLength: 1, maxLength: 1024 } }, ["reason"]),
        response: { 200: REQUEST_VIEW, ...problems },
      },
    },
    async (req) => requestOut(await recovery.resetReproduction(req.params.id, req.body.reason, principalOf(req).name)),
  );
};
