// The JSON shapes of key reproduction that the server's recovery routes (src/server/recovery-routes/) and their
// clients (src/terminal/recovery-client.ts, the CLI, the demo) share: one TypeBox schema each, which the routes
// validate and serialise with and publish in the OpenAPI document, and its static type, which both sides use.
// Plus requestJson, the one conversion of the service's RequestView (Dates) into its JSON (milliseconds).
//
// A signed document the domain defines (the policy, the request an approval signs over, an evaluation, a share
// envelope; their interfaces in policy.ts, target.ts, shares.ts) keeps the domain's type: its schema checks the
// shape at the edge, the meaning (registered ids, k <= n, signatures) is the service's. Objects whose members
// depend on a discriminant (an evaluation, a share slot, a pending item) stay one flat schema with optional
// members, so the serialiser never has to choose among branches; their type is the union.
//
// Never here: a SQL driver, fastify, a private key — src/terminal/ imports this file.

import { Type, type Static } from "typebox";
import { B64, Bool, Closed, Enum, Hex64, Int, Str, Strings, Text } from "../util/wire.ts";
import type { ReproductionPolicy, Evaluation } from "./policy.ts";
import type { RequestView, ServiceRequest } from "./requests.ts";
import type { ShareEnvelope, ShareSlot } from "./shares.ts";
import type { ReproductionResult } from "./reproduction.ts";

// ---- pieces ---------------------------------------------------------------------------------------------------------

const ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$";
/** Arbitrator ids (registry.ts ARBITRATOR_ID). */
export const ArbitratorId = Type.String({ minLength: 1, maxLength: 128, pattern: ID_PATTERN });
/** The card record a policy, escrow and requests belong to (the issuer's card ID, or any id the escrow named). */
export const RecoveryCardId = Type.String({ minLength: 1, maxLength: 128, pattern: ID_PATTERN });
export const RequestId = Type.String({ pattern: "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$" });
const opt = Type.Optional;

export const REQUEST_KINDS = ["key-lost", "card-destroyed"] as const;
export const REQUEST_STATUSES = ["open", "satisfied", "reproducing", "reproduced", "ended", "withdrawn"] as const;

// ---- the documents ------------------------------------------------------------------------------------------------

/** The policy document (policy.ts); shapes here, meaning (registered ids, k <= n, no cycle) in the service. */
export const Policy = Type.Unsafe<ReproductionPolicy>(
  Closed({
    version: Int,
    author: Text(128),
    indispensable: Type.Array(Text(128), { maxItems: 255 }),
    groups: Type.Array(Closed({ name: Text(64), members: Type.Array(Text(128), { maxItems: 255 }), threshold: Int }), { maxItems: 64 }),
    order: Type.Array(Closed({ before: Text(128), after: Text(128) }), { maxItems: 1024 }),
  }),
);

/** What every approval signs over (target.ts ServiceRequest). */
export const ServiceRequestJson = Type.Unsafe<ServiceRequest>(
  Closed({
    format: Str,
    requestId: Str,
    escrowId: Str,
    cardId: Str,
    policy: Policy,
    requester: Str,
    reason: opt(Str),
    filedAt: Str,
    kind: Str,
    target: opt(Closed({ cardId: Str, userId: Str })),
  }),
);

/** A signed decision (approvals.ts Approval), as posted and as shown. */
export const Approval = Closed({
  format: Type.Literal("cardkms.recovery.approval/1"),
  requestId: Text(128),
  requestDigest: Hex64,
  arbitrator: ArbitratorId,
  decision: Enum(["approve", "refuse"]),
  reason: opt(Text(1024)),
  decidedAt: Text(64),
  previous: Hex64,
  signature: B64(200),
});
export type Approval = Static<typeof Approval>;

/** The list of approvers of a satisfied chain (approvals.ts ApproverList), signed by the policy's author. */
export const ApproverList = Closed({
  format: Type.Literal("cardkms.recovery.approvers/1"),
  requestId: Text(128),
  requestDigest: Hex64,
  chainHead: Hex64,
  approvers: Type.Array(ArbitratorId, { maxItems: 4096 }),
  author: ArbitratorId,
  signature: B64(200),
});
export type ApproverList = Static<typeof ApproverList>;

/** A key rotation document (key-rotation-document.ts KeyRotation), signed by the arbitrator's current signing key. */
export const KeyRotation = Closed({
  format: Type.Literal("cardkms.recovery.key-rotation/1"),
  arbitrator: ArbitratorId,
  keyVersion: Type.Integer({ minimum: 2, maximum: 1_000_000 }),
  previousSigningKeyId: Hex64,
  previousEncryptionKeyId: Hex64,
  signingPublicKey: B64(4096),
  encryptionPublicKey: B64(4096),
  issuedAt: Text(64),
  signature: B64(200),
  newKeySignature: opt(B64(200)),
});
export type KeyRotation = Static<typeof KeyRotation>;

export const ShareSlotJson = Type.Unsafe<ShareSlot>(Closed({ kind: Str, parts: opt(Int), group: opt(Str), threshold: opt(Int), members: opt(Int) }));

const SealedBox = Closed({ epk: B64(200), iv: B64(64), ciphertext: B64(4096), tag: B64(64) });

/** A share released to the reproduction device (share-release.ts ShareRelease). */
export const ShareRelease = Closed({
  header: Closed({
    format: Type.Literal("cardkms.recovery.release/1"),
    requestId: Text(128),
    escrowId: Text(128),
    cardId: Text(128),
    shareId: Text(256),
    arbitrator: ArbitratorId,
    deviceKeyId: Hex64,
  }),
  box: SealedBox,
});
export type ShareRelease = Static<typeof ShareRelease>;

/** A share envelope (shares.ts), sealed to its arbitrator: every header member, as it is authenticated. */
export const ShareEnvelopeJson = Type.Unsafe<ShareEnvelope>(
  Closed({
    header: Closed({ format: Str, escrowId: Str, cardId: Str, policyDigest: Str, shareId: Str, arbitrator: Str, slot: ShareSlotJson, recipientKeyId: Str }),
    box: SealedBox,
  }),
);

/** The policy's judgement (policy.ts Evaluation): one flat object, its members by status. */
export const EvaluationJson = Type.Unsafe<Evaluation>(
  Closed({
    status: Str,
    approvers: Strings(),
    needs: opt(
      Closed({
        indispensable: opt(Strings()),
        groups: opt(Type.Array(Closed({ name: opt(Str), threshold: opt(Int), approved: opt(Int), more: opt(Int), candidates: opt(Strings()) }))),
        waiting: opt(Type.Array(Closed({ before: opt(Str), after: opt(Str) }))),
      }),
    ),
    condition: opt(
      Closed({
        kind: opt(Str),
        party: opt(Str),
        blockedBy: opt(Str),
        group: opt(Str),
        threshold: opt(Int),
        approved: opt(Int),
        stillPossible: opt(Int),
        before: opt(Str),
        after: opt(Str),
      }),
    ),
    message: opt(Str),
  }),
);

// ---- the views ----------------------------------------------------------------------------------------------------

/** A page of a list; `next` (for `after`) when more follow. */
export interface PageJson<T> {
  items: T[];
  next?: string;
}

export const ArbitratorJson = Closed({
  id: Str,
  roles: Strings(16),
  displayName: opt(Str),
  signingPublicKey: Type.String({ description: "SubjectPublicKeyInfo, base64 DER" }),
  encryptionPublicKey: Type.String({ description: "SubjectPublicKeyInfo, base64 DER" }),
  encryptionKeyId: Str,
  registeredBy: Str,
  registeredAt: Int,
  keyVersion: Int,
  status: Enum(["active", "deregistered"]),
  deregistered: opt(Closed({ at: Int, by: Str, reason: Str })),
  keys: Type.Array(Closed({ version: Int, signingKeyId: Str, encryptionKeyId: Str, validFrom: Int, retiredAt: opt(Int) }), {
    description: "every key version, oldest first: SHA-256 of each SubjectPublicKeyInfo, hex",
  }),
});
export type ArbitratorJson = Static<typeof ArbitratorJson>;

export const DeregistrationJson = Closed({
  arbitrator: ArbitratorJson,
  endedRequests: Type.Array(Closed({ requestId: Str, cardId: Str, message: Str })),
  strandedCards: Strings(100),
  strandedCount: Int,
  tokensRevoked: Strings(100_000),
});
export type DeregistrationJson = Static<typeof DeregistrationJson>;

export const PolicyDependencyJson = Closed({ cardId: Str, policyDigest: Str, escrowId: opt(Str), as: Strings(1024), satisfiableWithout: Bool });
export type PolicyDependencyJson = Static<typeof PolicyDependencyJson>;

export const ArbitratorTokenJson = Closed({ arbitrator: Str, tokenId: Str, token: Str });
export type ArbitratorTokenJson = Static<typeof ArbitratorTokenJson>;

export const RevokedTokenJson = Closed({ arbitrator: Str, tokenId: Str, revoked: Bool });
export type RevokedTokenJson = Static<typeof RevokedTokenJson>;

export const PolicyJson = Closed({ cardId: Str, policy: Policy, digest: Str, setBy: Str, setAt: Int });
export type PolicyJson = Static<typeof PolicyJson>;

export const EscrowJson = Closed({
  escrowId: Str,
  cardId: Str,
  applicantId: opt(Str),
  policy: Policy,
  policyDigest: Str,
  alg: Str,
  slot: Str,
  publicKey: Type.String({ description: "the registered public key (FIG. 10 unit 23), SubjectPublicKeyInfo base64 DER" }),
  publicKeySha256: Str,
  certificate: Type.String({ description: "PEM" }),
  serial: Str,
  shares: Type.Array(
    Closed({
      shareId: Str,
      arbitrator: Str,
      slot: ShareSlotJson,
      recipientKeyId: Type.String({ description: "SHA-256 of the encryption key the share is sealed to" }),
      sealedToRetiredKey: Type.Boolean({ description: "the holder rotated that key since: it opens the share with its old key until a re-split" }),
      holderDeregistered: Bool,
    }),
  ),
  deviceGeneration: Int,
  createdAt: Int,
});
export type EscrowJson = Static<typeof EscrowJson>;

export const RequestJson = Closed({
  requestId: Str,
  cardId: Str,
  escrowId: Str,
  kind: Str,
  status: Str,
  statusDetail: opt(Str),
  /** Exactly what approvals sign over. */
  request: ServiceRequestJson,
  requestDigest: Str,
  chainHead: Str,
  approvals: Type.Array(Approval),
  evaluation: EvaluationJson,
  releasedShares: Strings(100_000),
  approverList: opt(ApproverList),
  filedBy: Str,
  filedAt: Int,
  reproducedBy: opt(Str),
  reproducedAt: opt(Int),
  /** While "reproducing": who holds it, since when, until when its lease runs. */
  reproduction: opt(Closed({ claimedBy: Str, claimedAt: Int, leaseUntil: opt(Int) })),
});
export type RequestJson = Static<typeof RequestJson>;

/** What an arbitrator has to do: decide (with its share envelopes) or sign the list of approvers. */
export type PendingJson = { action: "decide"; request: RequestJson; mayApproveNow: boolean; waitingFor: string[]; envelopes: ShareEnvelope[] } | { action: "sign-approver-list"; request: RequestJson };
export const PendingJson = Type.Unsafe<PendingJson>(Closed({ action: Str, request: RequestJson, mayApproveNow: opt(Bool), waitingFor: opt(Strings()), envelopes: opt(Type.Array(ShareEnvelopeJson)) }));

export const DeviceKeyJson = Closed({ spki: Type.String({ description: "base64 DER SubjectPublicKeyInfo" }), pem: Str, keyId: Str });
export type DeviceKeyJson = Static<typeof DeviceKeyJson>;

/** What a reproduction reports (reproduction.ts ReproductionResult). */
export const ReproductionResultJson = Type.Unsafe<ReproductionResult>(
  Closed({
    requestId: Str,
    cardId: Str,
    kind: Str,
    approvers: Strings(),
    author: Str,
    chainHead: Str,
    slot: Str,
    serial: Str,
    targetCardId: Str,
    deviceReplaced: Bool,
    deviceGeneration: Int,
  }),
);

/** A step of a reproduction's live relay: the session, the next APDUs (hex), or the result. */
export const ReproductionStepJson = Closed({ sessionId: opt(Str), apdus: opt(Strings(16)), result: opt(ReproductionResultJson) });

// ---- the bodies -----------------------------------------------------------------------------------------------------

const PUBLIC_KEY = Type.String({ minLength: 1, maxLength: 4096, description: "PEM (BEGIN PUBLIC KEY) or base64 DER SubjectPublicKeyInfo" });
const REASON = Type.String({ minLength: 1, maxLength: 1024 });

export const RegisterArbitratorBody = Closed({
  id: ArbitratorId,
  roles: opt(Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { maxItems: 16 })),
  displayName: opt(Type.String({ minLength: 1, maxLength: 64 })),
  signingPublicKey: PUBLIC_KEY,
  encryptionPublicKey: PUBLIC_KEY,
});
export type RegisterArbitratorBody = Static<typeof RegisterArbitratorBody>;

export const KeyRotationBody = Closed({ rotation: KeyRotation });
export const DeregisterBody = Closed({ reason: REASON, force: opt(Bool) });

export const FileRequestBody = Closed({
  cardId: RecoveryCardId,
  kind: Enum(REQUEST_KINDS),
  requester: Type.String({ minLength: 1, maxLength: 128 }),
  reason: opt(Text(1024)),
  replacementCardId: opt(Type.String({ minLength: 1, maxLength: 128, pattern: ID_PATTERN, description: "card-destroyed only: the card record issued to the user to receive the key" })),
});
export type FileRequestBody = Static<typeof FileRequestBody>;

/** Withdrawing a request, resetting its reproduction. */
export const ReasonBody = Closed({ reason: REASON });

export const ApproveBody = Closed({ approval: Approval, releases: Type.Array(ShareRelease, { maxItems: 128 }) });
export const RefuseBody = Closed({ refusal: Approval });
export const ApproverListBody = Closed({ approverList: ApproverList });

/** Starting a reproduction: `cardId`, when given, must be the card the request names. */
export const ReproduceBody = Type.Unsafe<{ cardId?: string } | null>({ type: ["object", "null"], additionalProperties: false, properties: { cardId: RecoveryCardId } });

// ---- the conversion -----------------------------------------------------------------------------------------------

/** The service's request view as its JSON: times in milliseconds since the epoch, absent members left out. */
export function requestJson(v: RequestView): RequestJson {
  return {
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
          reproduction: {
            claimedBy: v.reproduction.claimedBy,
            claimedAt: v.reproduction.claimedAt.getTime(),
            ...(v.reproduction.leaseUntil ? { leaseUntil: v.reproduction.leaseUntil.getTime() } : {}),
          },
        }
      : {}),
  };
}
