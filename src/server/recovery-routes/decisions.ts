// The arbitrators' side of a request (S6-S7) on the recovery routes (recovery-routes.ts lists the routes): what an
// arbitrator has to decide or sign (with its share envelopes, sealed to it), its signed approvals with the shares it
// releases to the reproduction device, its signed refusals, and the approver list signed by the policy's author.
// Each document is checked against the arbitrator's registered key by the service; these routes only admit the
// token bound to the arbitrator that signed it.

import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "typebox";
import type { PendingItem, RecoveryService } from "../../recovery/service.ts";
import { ApproveBody, ApproverListBody, ArbitratorId, PendingJson, RefuseBody, RequestId, RequestJson, requestJson } from "../../recovery/wire.ts";
import { Closed, Cursor, Str } from "../../util/wire.ts";
import { admit } from "./access.ts";
import { NO_QUERY, nextOf, PAGE, pageOf, problems } from "./schemas.ts";

export interface DecisionRoutesOptions {
  recovery: RecoveryService;
}

// ---- outputs -------------------------------------------------------------------------------------------------

const pendingOut = (p: PendingItem): PendingJson =>
  p.action === "decide"
    ? { action: p.action, request: requestJson(p.request), mayApproveNow: p.mayApproveNow, waitingFor: p.waitingFor, envelopes: p.envelopes }
    : { action: p.action, request: requestJson(p.request) };

// ---- the routes ----------------------------------------------------------------------------------------------

export const decisionRoutes: FastifyPluginAsyncTypebox<DecisionRoutesOptions> = async (app, o) => {
  const { recovery } = o;

  // ---- arbitrators' side (S6-S7) ---------------------------------------------------------------------------------

  app.get(
    "/recovery/arbitrators/:id/pending",
    {
      config: { roles: ["operator", "arbitrator"] },
      schema: {
        summary: "What an arbitrator has to do: requests to decide (with its share envelopes, sealed to it) and approver lists to sign, a page at a time",
        tags: ["recovery"],
        params: Closed({ id: ArbitratorId }),
        querystring: Closed(PAGE),
        response: { 200: Closed({ arbitrator: Str, pending: Type.Array(PendingJson), next: Type.Optional(Cursor) }), ...problems },
      },
    },
    async (req) => {
      admit(req, ["operator"], (a) => a === req.params.id);
      const page = await recovery.pendingPage(req.params.id, pageOf(req.query));
      return { arbitrator: req.params.id, pending: page.items.map(pendingOut), ...nextOf(page) };
    },
  );

  app.post(
    "/recovery/requests/:id/approvals",
    {
      config: { roles: ["arbitrator"] },
      schema: {
        summary: "An approval signed by the arbitrator over the request and the chain before it, with its shares released to the reproduction device",
        tags: ["recovery"],
        params: Closed({ id: RequestId }),
        querystring: NO_QUERY,
        body: ApproveBody,
        response: { 200: RequestJson, ...problems },
      },
    },
    async (req) => {
      const { approval, releases } = req.body;
      const actor = admit(req, [], (a) => a === approval.arbitrator);
      return requestJson(await recovery.approve(req.params.id, approval, releases, { actor }));
    },
  );

  app.post(
    "/recovery/requests/:id/refusals",
    {
      config: { roles: ["arbitrator"] },
      schema: {
        summary: "A refusal signed by the arbitrator, with its reason; it may end the request (indispensable party, unreachable threshold)",
        tags: ["recovery"],
        params: Closed({ id: RequestId }),
        querystring: NO_QUERY,
        body: RefuseBody,
        response: { 200: RequestJson, ...problems },
      },
    },
    async (req) => {
      const { refusal } = req.body;
      const actor = admit(req, [], (a) => a === refusal.arbitrator);
      return requestJson(await recovery.refuse(req.params.id, refusal, { actor }));
    },
  );

  app.post(
    "/recovery/requests/:id/approver-list",
    {
      config: { roles: ["arbitrator"] },
      schema: {
        summary: "The list of approvers of a satisfied chain, signed by the policy's author (FIG. 9 condition 15); closes the chain",
        tags: ["recovery"],
        params: Closed({ id: RequestId }),
        querystring: NO_QUERY,
        body: ApproverListBody,
        response: { 200: RequestJson, ...problems },
      },
    },
    async (req) => {
      const { approverList } = req.body;
      const actor = admit(req, [], (a) => a === approverList.author);
      return requestJson(await recovery.submitApproverList(req.params.id, approverList, { actor }));
    },
  );
};
