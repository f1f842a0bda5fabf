// Schema pieces and outputs that several recovery route plugins share (recovery-routes.ts lists the routes): the
// identifiers and pages of the paths and queries, the policy document, the signed documents of the chain
// (approvals, approver lists), the request view every request and decision route answers with, and the
// problem+json of these routes. A schema one plugin alone uses lives in that plugin's file.

import type { RequestView } from "../../recovery/service.ts";
export { toB64 as b64 } from "../../util/bytes.ts";
import { digits } from "../issuer-routes.ts";

// ---- schema pieces ------------------------------------------------------------------------------------------------

const ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$";
/** Arbitrator ids (registry.ts ARBITRATOR_ID). */
export const ARB_ID = { type: "string", minLength: 1, maxLength: 128, pattern: ID_PATTERN } as const;
/** The card record a policy, escrow and requests belong to (the issuer's card ID, or any id the escrow named). */
export const RCARD_ID = { type: "string", minLength: 1, maxLength: 128, pattern: ID_PATTERN } as const;
export const REQUEST_ID = { type: "string", pattern: "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$" } as const;
export const HEX64 = { type: "string", pattern: "^[0-9a-f]{64}$" } as const;
export const B64 = (max: number) => ({ type: "string", maxLength: max, pattern: "^[A-Za-z0-9+/]*={0,2}$" }) as const;
/** A page's `after`: the opaque `next` of the previous page. */
export const CURSOR = { type: "string", minLength: 1, maxLength: 512, pattern: "^[A-Za-z0-9_-]+$" } as const;
export const PAGE = { after: CURSOR, limit: digits(4) } as const;
export const TEXT = (max: number) => ({ type: "string", maxLength: max }) as const;
export const STR = { type: "string" } as const;
export const INT = { type: "integer" } as const;
export const BOOL = { type: "boolean" } as const;
export const strings = (max = 1024) => ({ type: "array", maxItems: max, items: STR }) as const;
export const closed = (properties: Record<string, unknown>, required: string[] = []) => ({ type: "object", additionalProperties: false, required, properties }) as const;
export const NO_QUERY = closed({});

/** The policy document (policy.ts); shapes here, meaning (registered ids, k <= n, no cycle) in the service. */
export const POLICY = closed(
  {
    version: INT,
    author: TEXT(128),
    indispensable: { type: "array", maxItems: 255, items: TEXT(128) },
    groups: {
      type: "array",
      maxItems: 64,
      items: closed({ name: TEXT(64), members: { type: "array", maxItems: 255, items: TEXT(128) }, threshold: INT }, ["name", "members", "threshold"]),
    },
    order: { type: "array", maxItems: 1024, items: closed({ before: TEXT(128), after: TEXT(128) }, ["before", "after"]) },
  },
  ["version", "author", "indispensable", "groups", "order"],
);

const SERVICE_REQUEST = closed(
  {
    format: STR,
    requestId: STR,
    escrowId: STR,
    cardId: STR,
    policy: POLICY,
    requester: STR,
    reason: STR,
    filedAt: STR,
    kind: STR,
    target: closed({ cardId: STR, userId: STR }, ["cardId", "userId"]),
  },
  ["format", "requestId", "escrowId", "cardId", "policy", "requester", "filedAt", "kind"],
);

/** A signed decision (approvals.ts Approval), as posted and as shown. */
export const APPROVAL = closed(
  {
    format: { type: "string", const: "cardkms.recovery.approval/1" },
    requestId: TEXT(128),
    requestDigest: HEX64,
    arbitrator: ARB_ID,
    decision: { type: "string", enum: ["approve", "refuse"] },
    reason: TEXT(1024),
    decidedAt: TEXT(64),
    previous: HEX64,
    signature: B64(200),
  },
  ["format", "requestId", "requestDigest", "arbitrator", "decision", "decidedAt", "previous", "signature"],
);

export const APPROVER_LIST = closed(
  {
    format: { type: "string", const: "cardkms.recovery.approvers/1" },
    requestId: TEXT(128),
    requestDigest: HEX64,
    chainHead: HEX64,
    approvers: { type: "array", maxItems: 4096, items: ARB_ID },
    author: ARB_ID,
    signature: B64(200),
  },
  ["format", "requestId", "requestDigest", "chainHead", "approvers", "author", "signature"],
);

export const SHARE_SLOT = closed({ kind: STR, parts: INT, group: STR, threshold: INT, members: INT }, ["kind"]);

const EVALUATION = closed(
  {
    status: STR,
    approvers: strings(),
    needs: closed({
      indispensable: strings(),
      groups: { type: "array", items: closed({ name: STR, threshold: INT, approved: INT, more: INT, candidates: strings() }) },
      waiting: { type: "array", items: closed({ before: STR, after: STR }) },
    }),
    condition: closed({ kind: STR, party: STR, blockedBy: STR, group: STR, threshold: INT, approved: INT, stillPossible: INT, before: STR, after: STR }),
    message: STR,
  },
  ["status", "approvers"],
);

export const REQUEST_VIEW = closed(
  {
    requestId: STR,
    cardId: STR,
    escrowId: STR,
    kind: STR,
    status: STR,
    statusDetail: STR,
    request: SERVICE_REQUEST,
    requestDigest: STR,
    chainHead: STR,
    approvals: { type: "array", items: APPROVAL },
    evaluation: EVALUATION,
    releasedShares: strings(100_000),
    approverList: APPROVER_LIST,
    filedBy: STR,
    filedAt: INT,
    reproducedBy: STR,
    reproducedAt: INT,
    reproduction: closed({ claimedBy: STR, claimedAt: INT, leaseUntil: INT }, ["claimedBy", "claimedAt"]),
  },
  ["requestId", "cardId", "escrowId", "kind", "status", "request", "requestDigest", "chainHead", "approvals", "evaluation", "releasedShares", "filedBy", "filedAt"],
);

/** problem+json of these routes: RFC 9457 members plus the check that refused (and a policy's issues). */
const RECOVERY_PROBLEM = closed(
  {
    type: STR,
    title: STR,
    status: INT,
    detail: STR,
    instance: STR,
    errors: { type: "array", items: closed({ pointer: STR, detail: STR }) },
    check: { type: "string", description: "the named check that refused, e.g. out_of_order, forged_signature, policy_invalid, device_mismatch, target_not_approved" },
    issues: { type: "array", items: closed({ path: STR, message: STR }) },
  },
  ["type", "title", "status"],
);
export const problems = { "4xx": RECOVERY_PROBLEM, "5xx": { $ref: "Problem#" } } as const;

// ---- outputs ---------------------------------------------------------------------------------------------------

export const requestOut = (v: RequestView) => ({
  requestId: v.requestId,
  cardId: v.cardId,
  escrowId: v.escrowId,
  kind: v.kind,
  status: v.status,
  ...(v.statusDetail !== undefined ? { statusDetail: v.statusDetail } : {}),
  request: v.request,
  requestDigest: v.requestDigest,
  chainHead: v.chainHead,
  approvals: v.approvals,
  evaluation: v.evaluation,
  releasedShares: v.releasedShares,
  ...(v.approverList !== undefined ? { approverList: v.approverList } : {}),
  filedBy: v.filedBy,
  filedAt: v.filedAt.getTime(),
  ...(v.reproducedBy !== undefined ? { reproducedBy: v.reproducedBy } : {}),
  ...(v.reproducedAt !== undefined ? { reproducedAt: v.reproducedAt.getTime() } : {}),
  ...(v.reproduction !== undefined
    ? {
        reproduction: { claimedBy: v.reproduction.claimedBy, claimedAt: v.reproduction.claimedAt.getTime(), ...(v.reproduction.leaseUntil ? { leaseUntil: v.reproduction.leaseUntil.getTime() } : {}) },
      }
    : {}),
});

/** A page's query as the service takes it (the schema checked the shapes; the service the range and the cursor). */
export const pageOf = (q: { after?: string; limit?: string }) => ({ ...(q.after !== undefined ? { after: q.after } : {}), ...(q.limit !== undefined ? { limit: Number(q.limit) } : {}) });
export const nextOf = (p: { next?: string }) => (p.next !== undefined ? { next: p.next } : {});
