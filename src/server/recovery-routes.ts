// HTTP routes of key reproduction by arbitrators (issue 4 item 6; seed 001 embodiment 3, FIG. 7-12, steps S1-S12).
// Thin: the domain is src/recovery/service.ts (RecoveryService); this file validates (closed schemas everywhere),
// authorises, maps the service's named refusals to problem+json and drives the reproduction through the user's
// terminal with a live relay (live-relay.ts).
//
//   Operators (role operator; admin always; read routes also auditor)
//     POST /recovery/arbitrators                      register {id, roles?, displayName?, signingPublicKey, encryptionPublicKey}
//     GET  /recovery/arbitrators?after=&limit=, /recovery/arbitrators/{id}  (status, key version and key history)
//     POST /recovery/arbitrators/{id}/tokens          an API token bound to the arbitrator (shown once); none for a
//                                                     deregistered arbitrator (409 arbitrator_disabled)
//     POST /recovery/arbitrators/{id}/tokens/{tokenId}/revoke
//     POST /recovery/arbitrators/{id}/deregister      {reason, force?}: disabled for good; its tokens revoked
//     GET  /recovery/arbitrators/{id}/dependents?after=&limit=   the cards whose policies name it
//     PUT  /cards/{id}/recovery-policy                the policy document (S1); GET it back
//     GET  /cards/{id}/escrow                         the escrow record: public key, certificate, who holds which share
//     POST /recovery/requests                         file {cardId, kind, requester, reason?, replacementCardId?} (S5);
//                                                     card-destroyed names the replacement card: it is signed over
//     GET  /recovery/requests?status=&cardId=&after=&limit=, /recovery/requests/{id}
//     POST /recovery/requests/{id}/withdraw           {reason}
//     POST /recovery/requests/{id}/reset-reproduction {reason}: a request stuck "reproducing" whose lease passed
//     POST /recovery/requests/{id}/reproduce          {cardId?} -> {sessionId, apdus}: the terminal relays (S8-S9) into
//                                                     the card the request names (cardId, when given, must be it)
//     POST /recovery/sessions/{sessionId}             {responses} -> {apdus} | {result} | 4xx naming the refusal
//     GET  /recovery/device-key                       the reproduction device's public key (arbitrators too)
//   Arbitrators (role arbitrator, bound to one arbitrator id; admin always)
//     GET  /recovery/arbitrators/{id}/pending?after=&limit=  what it has to decide or sign, with its sealed share envelopes
//     POST /recovery/arbitrators/{id}/key-rotation    {rotation}: new keys, signed with its current signing key (operators
//                                                     may relay it: the signature is what counts)
//     POST /recovery/requests/{id}/approvals          {approval, releases}: a signed approval and its released shares
//     POST /recovery/requests/{id}/refusals           {refusal}: a signed refusal with its reason
//     POST /recovery/requests/{id}/approver-list      {approverList}: signed by the policy's author
//
// How an arbitrator authenticates. An operator issues it an API token (POST /recovery/arbitrators/{id}/tokens):
// a row of the operators table holding the token's hash, role "arbitrator", and the name
// "arbitrator:<id>:<tokenId>" that binds it to the arbitrator. Such a token reads only that arbitrator's pending
// items (and the requests it is a party of) and posts only documents signed as that arbitrator. The token
// authenticates the channel; the credential that counts is the signature: the service verifies every approval,
// refusal and approver list against the arbitrator's registered key, and the hash chain (each approval names the
// head before it, a party decides once) makes a replayed document fail by name. So an operator who holds an
// arbitrator's token still cannot decide for it: the private keys never leave the arbitrator's process.
// A deregistered arbitrator gets no new token, and every token bound to it is refused on every route (403, check
// arbitrator_disabled, audited) — its status is read on each request, so a token still in the server's token cache
// (auth.ts cachedLookup) or one that escaped revocation opens nothing.
//
// Who receives a reproduced key: the card record the request names (target.ts) — for card-destroyed the
// replacement card named at filing, which every approval signs over — and no other; an operator cannot redirect it.
//
// Lists page: `limit` (default 100; at most 1000, pending items 100) and `after` (the `next` of the previous page,
// an opaque cursor); a response carries `next` when more follow.
//
// Refusals: RecoveryServiceError, RecoveryError and PolicyValidationError become 4xx problems with the failed
// check in the `check` member (PolicyValidationError also lists `issues` with JSON pointers). Never in a response
// or an error: a share value, a private key, a device secret ID; shares travel sealed (to the arbitrator, or to
// the reproduction device). The one secret returned is an arbitrator token, once, at its creation.

import { createPublicKey, randomBytes, type KeyObject } from "node:crypto";
import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import { toPem } from "../ca/pem.ts";
import type { Issuer } from "../issuer/issuer.ts";
import type { Approval, ApproverList } from "../recovery/approvals.ts";
import { PolicyValidationError, RecoveryError } from "../recovery/errors.ts";
import { policyParties } from "../recovery/policy.ts";
import {
  RecoveryService,
  RecoveryServiceError,
  type ArbitratorView,
  type EscrowView,
  type KeyRotation,
  type PendingItem,
  type PolicyView,
  type ReproductionResult,
  type RequestKind,
  type RequestStatus,
  type RequestView,
  type ServiceCheck,
  type ShareRelease,
} from "../recovery/service.ts";
import { appendAudit } from "../store/audit.ts";
import { newToken, type Principal } from "./auth.ts";
import { APDU_HEX, digits, EMPTY_BODY, fromHex, params, principalOf, toHex, toProblem } from "./issuer-routes.ts";
import { LiveRelaySessions, type LiveStep } from "./live-relay.ts";
import { ApiProblem } from "./problem.ts";
import { SESSION_ID_PATTERN, type TtlMapOptions } from "./relay-sessions.ts";

export interface RecoveryRoutesOptions {
  recovery: RecoveryService;
  /** The issuer: card records whose current key set a reproduction targets, the operators table for tokens. */
  issuer: Issuer;
  /** Bounds of the live relay sessions of reproductions (default 5 min, 100 at once). */
  liveRelays?: Partial<TtlMapOptions>;
}

// ---- schema pieces ------------------------------------------------------------------------------------------------

const ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$";
/** Arbitrator ids (registry.ts ARBITRATOR_ID). */
const ARB_ID = { type: "string", minLength: 1, maxLength: 128, pattern: ID_PATTERN } as const;
/** The card record a policy, escrow and requests belong to (the issuer's card ID, or any id the escrow named). */
const RCARD_ID = { type: "string", minLength: 1, maxLength: 128, pattern: ID_PATTERN } as const;
const REQUEST_ID = { type: "string", pattern: "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$" } as const;
const TOKEN_ID = { type: "string", pattern: "^[0-9a-f]{16}$" } as const;
const HEX64 = { type: "string", pattern: "^[0-9a-f]{64}$" } as const;
const B64 = (max: number) => ({ type: "string", maxLength: max, pattern: "^[A-Za-z0-9+/]*={0,2}$" }) as const;
/** A page's `after`: the opaque `next` of the previous page. */
const CURSOR = { type: "string", minLength: 1, maxLength: 512, pattern: "^[A-Za-z0-9_-]+$" } as const;
const PAGE = { after: CURSOR, limit: digits(4) } as const;
const TEXT = (max: number) => ({ type: "string", maxLength: max }) as const;
const STR = { type: "string" } as const;
const INT = { type: "integer" } as const;
const BOOL = { type: "boolean" } as const;
const strings = (max = 1024) => ({ type: "array", maxItems: max, items: STR }) as const;
const closed = (properties: Record<string, unknown>, required: string[] = []) => ({ type: "object", additionalProperties: false, required, properties }) as const;
const NO_QUERY = closed({});

const REQUEST_KINDS: RequestKind[] = ["key-lost", "card-destroyed"];
const REQUEST_STATUSES: RequestStatus[] = ["open", "satisfied", "reproducing", "reproduced", "ended", "withdrawn"];

/** The policy document (policy.ts); shapes here, meaning (registered ids, k <= n, no cycle) in the service. */
const POLICY = closed(
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
const APPROVAL = closed(
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

const APPROVER_LIST = closed(
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

const SHARE_SLOT = closed({ kind: STR, parts: INT, group: STR, threshold: INT, members: INT }, ["kind"]);

/** A share envelope (shares.ts), sealed to its arbitrator: every header member, as it is authenticated. */
const ENVELOPE = closed(
  {
    header: closed(
      { format: STR, escrowId: STR, cardId: STR, policyDigest: STR, shareId: STR, arbitrator: STR, slot: SHARE_SLOT, recipientKeyId: STR },
      ["format", "escrowId", "cardId", "policyDigest", "shareId", "arbitrator", "slot", "recipientKeyId"],
    ),
    box: BOX,
  },
  ["header", "box"],
);

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

const REQUEST_VIEW = closed(
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

const PENDING_ITEM = closed(
  { action: STR, request: REQUEST_VIEW, mayApproveNow: BOOL, waitingFor: strings(), envelopes: { type: "array", items: ENVELOPE } },
  ["action", "request"],
);

const ARBITRATOR = closed(
  {
    id: STR,
    roles: strings(16),
    displayName: STR,
    signingPublicKey: { type: "string", description: "SubjectPublicKeyInfo, base64 DER" },
    encryptionPublicKey: { type: "string", description: "SubjectPublicKeyInfo, base64 DER" },
    encryptionKeyId: STR,
    registeredBy: STR,
    registeredAt: INT,
    keyVersion: INT,
    status: { type: "string", enum: ["active", "deregistered"] },
    deregistered: closed({ at: INT, by: STR, reason: STR }, ["at", "by", "reason"]),
    keys: {
      type: "array",
      description: "every key version, oldest first: SHA-256 of each SubjectPublicKeyInfo, hex",
      items: closed({ version: INT, signingKeyId: STR, encryptionKeyId: STR, validFrom: INT, retiredAt: INT }, ["version", "signingKeyId", "encryptionKeyId", "validFrom"]),
    },
  },
  ["id", "roles", "signingPublicKey", "encryptionPublicKey", "encryptionKeyId", "registeredBy", "registeredAt", "keyVersion", "status", "keys"],
);

/** A key rotation document (service.ts KeyRotation), signed by the arbitrator's current signing key. */
const KEY_ROTATION = closed(
  {
    format: { type: "string", const: "cardkms.recovery.key-rotation/1" },
    arbitrator: ARB_ID,
    keyVersion: { type: "integer", minimum: 2, maximum: 1_000_000 },
    previousSigningKeyId: HEX64,
    previousEncryptionKeyId: HEX64,
    signingPublicKey: B64(4096),
    encryptionPublicKey: B64(4096),
    issuedAt: TEXT(64),
    signature: B64(200),
    newKeySignature: B64(200),
  },
  ["format", "arbitrator", "keyVersion", "previousSigningKeyId", "previousEncryptionKeyId", "signingPublicKey", "encryptionPublicKey", "issuedAt", "signature"],
);

const DEPENDENCY = closed({ cardId: STR, policyDigest: STR, escrowId: STR, as: strings(1024), satisfiableWithout: BOOL }, ["cardId", "policyDigest", "as", "satisfiableWithout"]);

const POLICY_VIEW = closed({ cardId: STR, policy: POLICY, digest: STR, setBy: STR, setAt: INT }, ["cardId", "policy", "digest", "setBy", "setAt"]);

const ESCROW_VIEW = closed(
  {
    escrowId: STR,
    cardId: STR,
    applicantId: STR,
    policy: POLICY,
    policyDigest: STR,
    alg: STR,
    slot: STR,
    publicKey: { type: "string", description: "the registered public key (FIG. 10 unit 23), SubjectPublicKeyInfo base64 DER" },
    publicKeySha256: STR,
    certificate: { type: "string", description: "PEM" },
    serial: STR,
    shares: {
      type: "array",
      items: closed(
        {
          shareId: STR,
          arbitrator: STR,
          slot: SHARE_SLOT,
          recipientKeyId: { type: "string", description: "SHA-256 of the encryption key the share is sealed to" },
          sealedToRetiredKey: { type: "boolean", description: "the holder rotated that key since: it opens the share with its old key until a re-split" },
          holderDeregistered: BOOL,
        },
        ["shareId", "arbitrator", "slot", "recipientKeyId", "sealedToRetiredKey", "holderDeregistered"],
      ),
    },
    deviceGeneration: INT,
    createdAt: INT,
  },
  ["escrowId", "cardId", "policy", "policyDigest", "alg", "slot", "publicKey", "publicKeySha256", "certificate", "serial", "shares", "deviceGeneration", "createdAt"],
);

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
const problems = { "4xx": RECOVERY_PROBLEM, "5xx": { $ref: "Problem#" } } as const;

// ---- refusals as problems ------------------------------------------------------------------------------------

const SERVICE_STATUS: Record<ServiceCheck, number> = {
  invalid_argument: 400,
  not_found: 404,
  arbitrator_exists: 409,
  no_policy: 409,
  escrow_exists: 409,
  no_escrow: 409,
  request_unfinished: 409,
  request_closed: 409,
  approver_list_missing: 409,
  release_invalid: 422,
  device_mismatch: 422,
  device_in_use: 422,
  device_unreadable: 422,
  card_write_failed: 422,
  arbitrator_disabled: 409,
  arbitrator_in_use: 409,
  rotation_stale: 409,
  key_reused: 422,
  lease_lost: 409,
  target_not_approved: 422,
  target_other_user: 422,
  target_unfit: 422,
  target_slot_occupied: 422,
};

const SLUGS: Record<number, [string, string]> = {
  400: ["recovery-invalid", "Invalid"],
  404: ["not-found", "Not found"],
  409: ["recovery-conflict", "Conflict"],
  422: ["recovery-refused", "Refused"],
};

/** A named refusal of the recovery module or service as a problem carrying its check; other errors as issuer-routes maps them. */
export function recoveryProblem(e: unknown): unknown {
  if (e instanceof PolicyValidationError)
    return new ApiProblem(400, "recovery-policy-invalid", "Invalid reproduction policy", e.message, { check: e.check, issues: e.issues.map((i) => ({ path: i.path, message: i.message })) });
  if (e instanceof RecoveryServiceError || e instanceof RecoveryError) {
    const status = e instanceof RecoveryServiceError ? SERVICE_STATUS[e.check] : e.check === "request_ended" || e.check === "policy_not_satisfied" ? 409 : 422;
    const [slug, title] = SLUGS[status] ?? SLUGS[422];
    return new ApiProblem(status, slug, `${title}: ${e.check}`, e.message, { check: e.check });
  }
  return toProblem(e);
}

async function refusals<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw recoveryProblem(e);
  }
}

// ---- who may act ---------------------------------------------------------------------------------------------

/** The operators-table name of an arbitrator token: binds it to one arbitrator. */
export const arbitratorTokenName = (arbitratorId: string, tokenId: string) => `arbitrator:${arbitratorId}:${tokenId}`;
const TOKEN_NAME = /^arbitrator:(.+):([0-9a-f]{16})$/;

/** The arbitrator a principal's token is bound to, if it is an arbitrator token. */
export function boundArbitrator(p: Principal): string | undefined {
  if (!p.roles.includes("arbitrator")) return undefined;
  return TOKEN_NAME.exec(p.name)?.[1];
}

const forbidden = (detail: string) => new ApiProblem(403, "forbidden", "Forbidden", detail);

/**
 * Admits admins, the staff roles named (operator / auditor), and an arbitrator token bound to one of `arbitrators`.
 * Returns the actor the audit log names: the principal, or the arbitrator for an arbitrator token.
 */
function admit(req: FastifyRequest, staff: ("operator" | "auditor")[], arbitrators: (id: string) => boolean): string {
  const p = principalOf(req);
  if (p.roles.includes("admin") || staff.some((r) => p.roles.includes(r))) return p.name;
  const bound = boundArbitrator(p);
  if (bound !== undefined && arbitrators(bound)) return bound;
  throw forbidden(bound === undefined ? "this needs an operator token or an arbitrator token bound to an arbitrator" : `this arbitrator token is bound to ${bound}`);
}

// ---- outputs -------------------------------------------------------------------------------------------------

const b64 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("base64");

const arbitratorOut = (a: ArbitratorView) => ({
  id: a.id,
  roles: a.roles,
  ...(a.displayName !== undefined ? { displayName: a.displayName } : {}),
  signingPublicKey: b64(a.signingPublicKey),
  encryptionPublicKey: b64(a.encryptionPublicKey),
  encryptionKeyId: a.encryptionKeyId,
  registeredBy: a.registeredBy,
  registeredAt: a.registeredAt.getTime(),
  keyVersion: a.keyVersion,
  status: a.status,
  ...(a.deregistered ? { deregistered: { at: a.deregistered.at.getTime(), by: a.deregistered.by, reason: a.deregistered.reason } } : {}),
  keys: a.keys.map((k) => ({
    version: k.version,
    signingKeyId: k.signingKeyId,
    encryptionKeyId: k.encryptionKeyId,
    validFrom: k.validFrom.getTime(),
    ...(k.retiredAt ? { retiredAt: k.retiredAt.getTime() } : {}),
  })),
});

const policyOut = (p: PolicyView) => ({ cardId: p.cardId, policy: p.policy, digest: p.digest, setBy: p.setBy, setAt: p.setAt.getTime() });

const escrowOut = (e: EscrowView) => ({
  escrowId: e.escrowId,
  cardId: e.cardId,
  applicantId: e.applicantId,
  policy: e.policy,
  policyDigest: e.policyDigest,
  alg: e.alg,
  slot: e.slot,
  publicKey: b64(e.publicKey),
  publicKeySha256: e.publicKeySha256,
  certificate: toPem(e.certificate, "CERTIFICATE"),
  serial: e.serial,
  shares: e.shares,
  deviceGeneration: e.deviceGeneration,
  createdAt: e.createdAt.getTime(),
});

const requestOut = (v: RequestView) => ({
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
    ? { reproduction: { claimedBy: v.reproduction.claimedBy, claimedAt: v.reproduction.claimedAt.getTime(), ...(v.reproduction.leaseUntil ? { leaseUntil: v.reproduction.leaseUntil.getTime() } : {}) } }
    : {}),
});

/** A page's query as the service takes it (the schema checked the shapes; the service the range and the cursor). */
const pageOf = (q: { after?: string; limit?: string }) => ({ ...(q.after !== undefined ? { after: q.after } : {}), ...(q.limit !== undefined ? { limit: Number(q.limit) } : {}) });
const nextOf = (p: { next?: string }) => (p.next !== undefined ? { next: p.next } : {});

const pendingOut = (p: PendingItem) =>
  p.action === "decide"
    ? { action: p.action, request: requestOut(p.request), mayApproveNow: p.mayApproveNow, waitingFor: p.waitingFor, envelopes: p.envelopes }
    : { action: p.action, request: requestOut(p.request) };

const stepOut = (s: LiveStep<ReproductionResult>) => ("apdus" in s ? { apdus: s.apdus.map(toHex) } : { result: s.result });

/**
 * A public key given as PEM (BEGIN PUBLIC KEY) or base64 DER SubjectPublicKeyInfo, as SPKI DER. Anything else —
 * a private key included — is refused without echoing it.
 */
function spkiOf(value: string, what: string): Uint8Array {
  const s = value.trim();
  let key: KeyObject | undefined;
  try {
    if (/^-----BEGIN PUBLIC KEY-----\s[A-Za-z0-9+/=\s]+-----END PUBLIC KEY-----$/.test(s)) key = createPublicKey({ key: s, format: "pem" });
    else if (/^[A-Za-z0-9+/]+={0,2}$/.test(s)) key = createPublicKey({ key: Buffer.from(s, "base64"), format: "der", type: "spki" });
  } catch {
    key = undefined;
  }
  if (!key) throw new ApiProblem(400, "recovery-invalid", "Invalid: invalid_argument", `${what}: expected a public key as PEM (BEGIN PUBLIC KEY) or base64 DER SubjectPublicKeyInfo`, { check: "invalid_argument" });
  return new Uint8Array(key.export({ format: "der", type: "spki" }));
}

// ---- the routes ----------------------------------------------------------------------------------------------

export const recoveryRoutes: FastifyPluginAsync<RecoveryRoutesOptions> = async (app, o) => {
  const { recovery, issuer } = o;
  const store = issuer.store;
  const lives = new LiveRelaySessions<ReproductionResult>(o.liveRelays);
  app.addHook("onClose", async () => lives.close());

  const mustArbitrator = async (id: string) => {
    const a = await recovery.arbitrator(id);
    if (!a) throw new ApiProblem(404, "not-found", "Not found", `no arbitrator ${id}`, { check: "not_found" });
    return a;
  };

  // A token bound to an arbitrator works only while the arbitrator is registered: its status is read on every
  // request (not from the token cache), so a deregistered arbitrator reads and posts nothing with any token it holds.
  app.addHook("preHandler", async (req) => {
    const p = req.principal;
    const bound = p && !p.roles.includes("admin") ? boundArbitrator(p) : undefined;
    if (bound === undefined) return;
    const a = await recovery.arbitrator(bound);
    if (a?.status === "active") return;
    const detail = a ? `arbitrator ${bound} is deregistered: its tokens no longer work` : `arbitrator ${bound} is not registered`;
    await appendAudit(store.db, { actor: bound, action: "recovery.arbitrator.access.refuse", subject: bound, details: { check: "arbitrator_disabled", method: req.method, route: req.routeOptions.url ?? "" } });
    throw new ApiProblem(403, "forbidden", "Forbidden: arbitrator_disabled", detail, { check: "arbitrator_disabled" });
  });

  // ---- arbitrators (claim 35 (a)) ------------------------------------------------------------------------------

  app.post<{ Body: { id: string; roles?: string[]; displayName?: string; signingPublicKey: string; encryptionPublicKey: string } }>(
    "/recovery/arbitrators",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Register an arbitrator with its two P-256 public keys: ECDSA (verifies its approvals) and ECDH (its shares are sealed to it)",
        tags: ["recovery"],
        querystring: NO_QUERY,
        body: closed(
          {
            id: ARB_ID,
            roles: { type: "array", maxItems: 16, items: { type: "string", minLength: 1, maxLength: 64 } },
            displayName: { type: "string", minLength: 1, maxLength: 64 },
            signingPublicKey: { type: "string", minLength: 1, maxLength: 4096, description: "PEM (BEGIN PUBLIC KEY) or base64 DER SubjectPublicKeyInfo" },
            encryptionPublicKey: { type: "string", minLength: 1, maxLength: 4096, description: "PEM (BEGIN PUBLIC KEY) or base64 DER SubjectPublicKeyInfo" },
          },
          ["id", "signingPublicKey", "encryptionPublicKey"],
        ),
        response: { 201: ARBITRATOR, ...problems },
      },
    },
    async (req, reply) =>
      refusals(async () => {
        const b = req.body;
        const a = await recovery.registerArbitrator(
          { id: b.id, roles: b.roles, displayName: b.displayName, signingPublicKey: spkiOf(b.signingPublicKey, "signingPublicKey"), encryptionPublicKey: spkiOf(b.encryptionPublicKey, "encryptionPublicKey") },
          principalOf(req).name,
        );
        return reply.code(201).send(arbitratorOut(a));
      }),
  );

  app.get<{ Querystring: { after?: string; limit?: string } }>(
    "/recovery/arbitrators",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "The registered arbitrators by id (public keys only; deregistered ones with their status), a page at a time",
        tags: ["recovery"],
        querystring: closed(PAGE),
        response: { 200: closed({ arbitrators: { type: "array", items: ARBITRATOR }, next: CURSOR }, ["arbitrators"]), ...problems },
      },
    },
    async (req) =>
      refusals(async () => {
        const page = await recovery.arbitratorsPage(pageOf(req.query));
        return { arbitrators: page.items.map(arbitratorOut), ...nextOf(page) };
      }),
  );

  app.get<{ Params: { id: string } }>(
    "/recovery/arbitrators/:id",
    {
      config: { roles: ["operator", "auditor", "arbitrator"] },
      schema: { summary: "One arbitrator (an arbitrator token: its own record)", tags: ["recovery"], params: params({ id: ARB_ID }), querystring: NO_QUERY, response: { 200: ARBITRATOR, ...problems } },
    },
    async (req) =>
      refusals(async () => {
        admit(req, ["operator", "auditor"], (a) => a === req.params.id);
        return arbitratorOut(await mustArbitrator(req.params.id));
      }),
  );

  app.post<{ Params: { id: string } }>(
    "/recovery/arbitrators/:id/tokens",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Issue an API token bound to the arbitrator (role arbitrator): shown once, only its hash is stored; refused for a deregistered arbitrator",
        tags: ["recovery"],
        params: params({ id: ARB_ID }),
        querystring: NO_QUERY,
        body: EMPTY_BODY,
        response: { 201: closed({ arbitrator: STR, tokenId: STR, token: STR }, ["arbitrator", "tokenId", "token"]), ...problems },
      },
    },
    async (req, reply) =>
      refusals(async () => {
        const a = await mustArbitrator(req.params.id);
        if (a.status !== "active") {
          await appendAudit(store.db, { actor: principalOf(req).name, action: "recovery.arbitrator.token.refuse", subject: a.id, details: { check: "arbitrator_disabled" } });
          throw new ApiProblem(409, "recovery-conflict", "Conflict: arbitrator_disabled", `arbitrator ${a.id} is deregistered: it gets no token`, { check: "arbitrator_disabled" });
        }
        const tokenId = randomBytes(8).toString("hex");
        const { token, hash } = newToken();
        await store.createOperator({ name: arbitratorTokenName(a.id, tokenId), tokenHash: hash, roles: ["arbitrator"] });
        await appendAudit(store.db, { actor: principalOf(req).name, action: "recovery.arbitrator.token.issue", subject: a.id, details: { tokenId } });
        return reply.code(201).send({ arbitrator: a.id, tokenId, token });
      }),
  );

  app.post<{ Params: { id: string; tokenId: string } }>(
    "/recovery/arbitrators/:id/tokens/:tokenId/revoke",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Revoke an arbitrator token",
        tags: ["recovery"],
        params: params({ id: ARB_ID, tokenId: TOKEN_ID }),
        querystring: NO_QUERY,
        body: EMPTY_BODY,
        response: { 200: closed({ arbitrator: STR, tokenId: STR, revoked: BOOL }, ["arbitrator", "tokenId", "revoked"]), ...problems },
      },
    },
    async (req) =>
      refusals(async () => {
        const { id, tokenId } = req.params;
        const op = await store.getOperatorByName(arbitratorTokenName(id, tokenId));
        if (!op) throw new ApiProblem(404, "not-found", "Not found", `no active token ${tokenId} of arbitrator ${id}`, { check: "not_found" });
        await store.disableOperator(op.id);
        await appendAudit(store.db, { actor: principalOf(req).name, action: "recovery.arbitrator.token.revoke", subject: id, details: { tokenId } });
        return { arbitrator: id, tokenId, revoked: true };
      }),
  );

  app.post<{ Params: { id: string }; Body: { rotation: KeyRotation } }>(
    "/recovery/arbitrators/:id/key-rotation",
    {
      config: { roles: ["operator", "arbitrator"] },
      schema: {
        summary:
          "Rotate an arbitrator's keys: a rotation document naming its current keys and the next version, signed with its CURRENT signing key (and with the new signing key, if it changes). " +
          "An operator may relay it (an arbitrator token: its own); the signature is what counts. Earlier versions are kept: recorded approvals still verify",
        tags: ["recovery"],
        params: params({ id: ARB_ID }),
        querystring: NO_QUERY,
        body: closed({ rotation: KEY_ROTATION }, ["rotation"]),
        response: { 200: ARBITRATOR, ...problems },
      },
    },
    async (req) =>
      refusals(async () => {
        const actor = admit(req, ["operator"], (a) => a === req.params.id);
        return arbitratorOut(await recovery.rotateArbitratorKeys(req.params.id, req.body.rotation, actor));
      }),
  );

  app.post<{ Params: { id: string }; Body: { reason: string; force?: boolean } }>(
    "/recovery/arbitrators/:id/deregister",
    {
      config: { roles: ["operator"] },
      schema: {
        summary:
          "Deregister an arbitrator: it can no longer decide, sign or be named by a new policy, its tokens are revoked, requests it makes impossible to satisfy end. " +
          "Refused (arbitrator_in_use) when an escrowed key could then no longer be reproduced, unless force",
        tags: ["recovery"],
        params: params({ id: ARB_ID }),
        querystring: NO_QUERY,
        body: closed({ reason: { type: "string", minLength: 1, maxLength: 1024 }, force: BOOL }, ["reason"]),
        response: {
          200: closed(
            {
              arbitrator: ARBITRATOR,
              endedRequests: { type: "array", items: closed({ requestId: STR, cardId: STR, message: STR }, ["requestId", "cardId", "message"]) },
              strandedCards: strings(100),
              strandedCount: INT,
              tokensRevoked: strings(100_000),
            },
            ["arbitrator", "endedRequests", "strandedCards", "strandedCount", "tokensRevoked"],
          ),
          ...problems,
        },
      },
    },
    async (req) =>
      refusals(async () => {
        const actor = principalOf(req).name;
        const r = await recovery.deregisterArbitrator(req.params.id, { reason: req.body.reason, force: req.body.force === true }, actor);
        // its tokens go with it (the service refuses its signatures anyway)
        const tokens = await store.db.selectFrom("operators").select(["id", "name"]).where("disabled_at", "is", null).where("name", "like", "arbitrator:%").execute();
        const revoked: string[] = [];
        for (const t of tokens) {
          const m = TOKEN_NAME.exec(t.name);
          if (!m || m[1] !== r.arbitrator.id) continue;
          await store.disableOperator(t.id);
          revoked.push(m[2]);
        }
        if (revoked.length) await appendAudit(store.db, { actor, action: "recovery.arbitrator.token.revoke", subject: r.arbitrator.id, details: { tokenIds: revoked, reason: "deregistered" } });
        return { arbitrator: arbitratorOut(r.arbitrator), endedRequests: r.endedRequests, strandedCards: r.strandedCards, strandedCount: r.strandedCount, tokensRevoked: revoked };
      }),
  );

  app.get<{ Params: { id: string }; Querystring: { after?: string; limit?: string } }>(
    "/recovery/arbitrators/:id/dependents",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "The cards whose reproduction policies name the arbitrator, by card id: how, whether escrowed, whether the policy can be met without it",
        tags: ["recovery"],
        params: params({ id: ARB_ID }),
        querystring: closed(PAGE),
        response: { 200: closed({ arbitrator: STR, policies: { type: "array", items: DEPENDENCY }, next: CURSOR }, ["arbitrator", "policies"]), ...problems },
      },
    },
    async (req) =>
      refusals(async () => {
        const page = await recovery.arbitratorDependents(req.params.id, pageOf(req.query));
        return { arbitrator: req.params.id, policies: page.items, ...nextOf(page) };
      }),
  );

  // ---- policies (S1) and escrows (S3) -------------------------------------------------------------------------

  app.put<{ Params: { id: string }; Body: unknown }>(
    "/cards/:id/recovery-policy",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Set a card's reproduction policy (S1), before its key is escrowed: indispensable parties, k-of-n groups, order conditions, the author of the approver list",
        tags: ["recovery"],
        params: params({ id: RCARD_ID }),
        querystring: NO_QUERY,
        body: POLICY,
        response: { 200: POLICY_VIEW, ...problems },
      },
    },
    async (req) => refusals(async () => policyOut(await recovery.setPolicy(req.params.id, req.body, principalOf(req).name))),
  );

  app.get<{ Params: { id: string } }>(
    "/cards/:id/recovery-policy",
    {
      config: { roles: ["operator", "auditor"] },
      schema: { summary: "A card's reproduction policy", tags: ["recovery"], params: params({ id: RCARD_ID }), querystring: NO_QUERY, response: { 200: POLICY_VIEW, ...problems } },
    },
    async (req) =>
      refusals(async () => {
        const p = await recovery.policy(req.params.id);
        if (!p) throw new ApiProblem(404, "not-found", "Not found", `card ${req.params.id} has no reproduction policy`, { check: "not_found" });
        return policyOut(p);
      }),
  );

  app.get<{ Params: { id: string } }>(
    "/cards/:id/escrow",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "A card's escrow: the registered public key and certificate, the policy it was split under, who holds which share (no share, no key)",
        tags: ["recovery"],
        params: params({ id: RCARD_ID }),
        querystring: NO_QUERY,
        response: { 200: ESCROW_VIEW, ...problems },
      },
    },
    async (req) =>
      refusals(async () => {
        const e = await recovery.escrowOf(req.params.id);
        if (!e) throw new ApiProblem(404, "not-found", "Not found", `card ${req.params.id} has no escrowed key`, { check: "not_found" });
        return escrowOut(e);
      }),
  );

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
    async (req, reply) => refusals(async () => reply.code(201).send(requestOut(await recovery.fileRequest(req.body, principalOf(req).name)))),
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
    async (req) =>
      refusals(async () => {
        const page = await recovery.listPage({ status: req.query.status, cardId: req.query.cardId, ...pageOf(req.query) });
        return { requests: page.items.map(requestOut), ...nextOf(page) };
      }),
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
    async (req) =>
      refusals(async () => {
        const v = await recovery.status(req.params.id);
        admit(req, ["operator", "auditor"], (a) => policyParties(v.request.policy).includes(a) || v.request.policy.author === a);
        return requestOut(v);
      }),
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
    async (req) => refusals(async () => requestOut(await recovery.withdraw(req.params.id, req.body.reason, principalOf(req).name))),
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
    async (req) => refusals(async () => requestOut(await recovery.resetReproduction(req.params.id, req.body.reason, principalOf(req).name))),
  );

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
    async (req) =>
      refusals(async () => {
        admit(req, ["operator"], (a) => a === req.params.id);
        const page = await recovery.pendingPage(req.params.id, pageOf(req.query));
        return { arbitrator: req.params.id, pending: page.items.map(pendingOut), ...nextOf(page) };
      }),
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
    async (req) =>
      refusals(async () => {
        const { approval, releases } = req.body;
        const actor = admit(req, [], (a) => a === approval.arbitrator);
        return requestOut(await recovery.approve(req.params.id, approval, releases, { actor }));
      }),
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
    async (req) =>
      refusals(async () => {
        const { refusal } = req.body;
        const actor = admit(req, [], (a) => a === refusal.arbitrator);
        return requestOut(await recovery.refuse(req.params.id, refusal, { actor }));
      }),
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
    async (req) =>
      refusals(async () => {
        const { approverList } = req.body;
        const actor = admit(req, [], (a) => a === approverList.author);
        return requestOut(await recovery.submitApproverList(req.params.id, approverList, { actor }));
      }),
  );

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
    async (req, reply) =>
      refusals(async () => {
        const actor = principalOf(req).name;
        const view = await recovery.status(req.params.id);
        const cardId = req.body?.cardId;
        // the service picks the card record (the request's target) and its key set; a cardId given must be that one
        const { sessionId, step } = await lives.open(actor, (transmit) => recovery.reproduce(view.requestId, { transmit, ...(cardId !== undefined ? { cardId } : {}) }, actor));
        return reply.code(201).send({ sessionId, ...stepOut(step) });
      }),
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
    async (req) => refusals(async () => stepOut(await lives.next(req.params.sessionId, principalOf(req).name, req.body.responses.map(fromHex)))),
  );
};
