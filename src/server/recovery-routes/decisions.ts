// The arbitrators' side of a request (S6-S7) on the recovery routes (recovery-routes.ts lists the routes): what an
// arbitrator has to decide or sign (with its share envelopes, sealed to it), its signed approvals with the shares it
// releases to the reproduction device, its signed refusals, and the approver list signed by the policy's author.
// Each document is checked against the arbitrator's registered key by the service; these routes only admit the
// token bound to the arbitrator that signed it.

import type { FastifyPluginAsync } from "fastify";
import type { Approval, ApproverList } from "../../recovery/approvals.ts";
import type { PendingItem, RecoveryService, ShareRelease } from "../../recovery/service.ts";
import { params } from "../issuer-routes.ts";
import { admit } from "./access.ts";
import {
  APPROVAL,
  APPROVER_LIST,
  ARB_ID,
  B64,
  BOOL,
  closed,
  CURSOR,
  HEX64,
  NO_QUERY,
  nextOf,
  PAGE,
  pageOf,
  problems,
  REQUEST_ID,
  REQUEST_VIEW,
  requestOut,
  SHARE_SLOT,
  STR,
  strings,
  TEXT,
} from "./schemas.ts";

export interface DecisionRoutesOptions {
  recovery: RecoveryService;
}

// ---- schema pieces ------------------------------------------------------------------------------------------------

const BOX = closed({ epk: B64(200), iv: B64(64), ciphertext: B64(4096), tag: B64(64) }, ["epk", "iv", "ciphertext", "tag"]);

/** A share released to the reproduction device (service.ts ShareRelease). */
const SHARE_RELEASE = closed(
  {
    header: closed(
      {
        format: { type: "string", const: "cardkms.recovery.release/1" },
        requestId: TEXT(128),
        escrowId: TEXT(128),
        cardId: TEXT(128),
        shareId: TEXT(256),
        arbitrator: ARB_ID,
        deviceKeyId: HEX64,
      },
      ["format", "requestId", "escrowId", "cardId", "shareId", "arbitrator", "deviceKeyId"],
    ),
    box: BOX,
  },
  ["header", "box"],
);

/** A share envelope (shares.ts), sealed to its arbitrator: every header member, as it is authenticated. */
const ENVELOPE = closed(
  {
    header: closed({ format: STR, escrowId: STR, cardId: STR, policyDigest: STR, shareId: STR, arbitrator: STR, slot: SHARE_SLOT, recipientKeyId: STR }, [
      "format",
      "escrowId",
      "cardId",
      "policyDigest",
      "shareId",
      "arbitrator",
      "slot",
      "recipientKeyId",
    ]),
    box: BOX,
  },
  ["header", "box"],
);

const PENDING_ITEM = closed({ action: STR, request: REQUEST_VIEW, mayApproveNow: BOOL, waitingFor: strings(), envelopes: { type: "array", items: ENVELOPE } }, ["action", "request"]);

// ---- outputs -------------------------------------------------------------------------------------------------

const pendingOut = (p: PendingItem) =>
  p.action === "decide"
    ? { action: p.action, request: requestOut(p.request), mayApproveNow: p.mayApproveNow, waitingFor: p.waitingFor, envelopes: p.envelopes }
    : { action: p.action, request: requestOut(p.request) };

// ---- the routes ----------------------------------------------------------------------------------------------

export const decisionRoutes: FastifyPluginAsync<DecisionRoutesOptions> = async (app, o) => {
  const { recovery } = o;

  // ---- arbitrators' side (S6-S7) ---------------------------------------------------------------------------------

  app.get<{ Params: { id: string }; Querystring: { after?: string; limit?: string } }>(
    "/recovery/arbitrators/:id/pending",
    {
      config: { roles: ["operator", "arbitrator"] },
      schema: {
        summary: "What an arbitrator has to do: requests to decide (with its share envelopes, sealed to it) and approver lists to sign, a page at a time",
        tags: ["recovery"],
        params: params({ id: ARB_ID }),
        querystring: closed(PAGE),
        response: { 200: closed({ arbitrator: STR, pending: { type: "array", items: PENDING_ITEM }, next: CURSOR }, ["arbitrator", "pending"]), ...problems },
      },
    },
    async (req) => {
      admit(req, ["operator"], (a) => a === req.params.id);
      const page = await recovery.pendingPage(req.params.id, pageOf(req.query));
      return { arbitrator: req.params.id, pending: page.items.map(pendingOut), ...nextOf(page) };
    },
  );

  app.post<{ Params: { id: string }; Body: { approval: Approval; releases: ShareRelease[] } }>(
    "/recovery/requests/:id/approvals",
    {
      config: { roles: ["arbitrator"] },
      schema: {
        summary: "An approval signed by the arbitrator over the request and the chain before it, with its shares released to the reproduction device",
        tags: ["recovery"],
        params: params({ id: REQUEST_ID }),
        querystring: NO_QUERY,
        body: closed({ approval: APPROVAL, releases: { type: "array", maxItems: 128, items: SHARE_RELEASE } }, ["approval", "releases"]),
        response: { 200: REQUEST_VIEW, ...problems },
      },
    },
    async (req) => {
      const { approval, releases } = req.body;
      const actor = admit(req, [], (a) => a === approval.arbitrator);
      return requestOut(await recovery.approve(req.params.id, approval, releases, { actor }));
    },
  );

  app.post<{ Params: { id: string }; Body: { refusal: Approval } }>(
    "/recovery/requests/:id/refusals",
    {
      config: { roles: ["arbitrator"] },
      schema: {
        summary: "A refusal signed by the arbitrator, with its reason; it may end the request (indispensable party, unreachable threshold)",
        tags: ["recovery"],
        params: params({ id: REQUEST_ID }),
        querystring: NO_QUERY,
        body: closed({ refusal: APPROVAL }, ["refusal"]),
        response: { 200: REQUEST_VIEW, ...problems },
      },
    },
    async (req) => {
      const { refusal } = req.body;
      const actor = admit(req, [], (a) => a === refusal.arbitrator);
      return requestOut(await recovery.refuse(req.params.id, refusal, { actor }));
    },
  );

  app.post<{ Params: { id: string }; Body: { approverList: ApproverList } }>(
    "/recovery/requests/:id/approver-list",
    {
      config: { roles: ["arbitrator"] },
      schema: {
        summary: "The list of approvers of a satisfied chain, signed by the policy's author (FIG. 9 condition 15); closes the chain",
        tags: ["recovery"],
        params: params({ id: REQUEST_ID }),
        querystring: NO_QUERY,
        body: closed({ approverList: APPROVER_LIST }, ["approverList"]),
        response: { 200: REQUEST_VIEW, ...problems },
      },
    },
    async (req) => {
      const { approverList } = req.body;
      const actor = admit(req, [], (a) => a === approverList.author);
      return requestOut(await recovery.submitApproverList(req.params.id, approverList, { actor }));
    },
  );
};
