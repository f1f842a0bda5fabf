// The records of key reproduction by arbitrators (issue 4; seed 001 embodiment 3) as the recovery service keeps
// them through its storage port (ports.ts): arbitrators and every version of their keys, per-card policies, escrows
// with their share envelopes, the registered devices, reproduction requests, their approval chains and the released
// shares — and, read-only, the issuer's card records a reproduced key may go into. The documents the recovery module
// defines (policies, escrow records, envelopes, requests, approvals, releases, key rotations) are held as the JSON
// text the service hands in; the store returns them as such and does not interpret them.
//
// Declared here, implemented in src/store/ (recovery-repository.ts and the files it delegates to), which imports
// these types from here: the store sits above the domain. Never: a share, a key or a device secret ID in clear —
// only sealed documents and digests.

export type RequestKind = "key-lost" | "card-destroyed";

/**
 * open: collecting decisions; satisfied: the policy is met (reproduction needs the approver list);
 * reproducing: claimed by one reproduction; reproduced: done, closed for good; ended: a condition can no
 * longer be met; withdrawn: closed by an operator.
 */
export type RequestStatus = "open" | "satisfied" | "reproducing" | "reproduced" | "ended" | "withdrawn";

export const UNFINISHED_STATUSES: readonly RequestStatus[] = ["open", "satisfied", "reproducing"];

// --- arbitrators ----------------------------------------------------------------------------------------------------

export interface ArbitratorRecord {
  id: string;
  roles: string[];
  displayName?: string;
  /** SPKI DER. */
  signingPublicKey: Uint8Array;
  /** SPKI DER. */
  encryptionPublicKey: Uint8Array;
  registeredBy: string;
  registeredAt: number;
  /** The version of the current keys: 1 at registration (absent), +1 for each rotation. */
  keyVersion?: number;
  /** Deregistration: when, by whom, why (the record stays; the id is never reused). */
  disabledAt?: number;
  disabledBy?: string;
  disabledReason?: string;
}

/** One version of an arbitrator's keys (the current one has no retiredAt). */
export interface ArbitratorKeyRecord {
  arbitratorId: string;
  version: number;
  /** SPKI DER. */
  signingPublicKey: Uint8Array;
  /** SPKI DER. */
  encryptionPublicKey: Uint8Array;
  validFrom: number;
  retiredAt?: number;
  /** The signed KeyRotation document (JSON) that made this version; absent for version 1. */
  rotation?: string;
  recordedBy: string;
}

// --- policies -------------------------------------------------------------------------------------------------------

export interface PolicyRecord {
  cardId: string;
  /** Canonical JSON of the validated policy. */
  policy: string;
  policyDigest: string;
  setBy: string;
  setAt: number;
}

// --- escrows, envelopes, devices ------------------------------------------------------------------------------------

export interface EscrowRow {
  escrowId: string;
  cardId: string;
  applicantId: string;
  policy: string;
  policyDigest: string;
  /** EscrowRecord JSON. */
  record: string;
  wrappedUnder: string;
  alg: string;
  slot: string;
  publicKey: Uint8Array;
  publicKeySha256: string;
  certificate: Uint8Array;
  serial: string;
  createdBy: string;
  createdAt: number;
}

export interface EnvelopeRow {
  escrowId: string;
  shareId: string;
  arbitratorId: string;
  /** ShareEnvelope JSON. */
  envelope: string;
}

export interface DeviceRecord {
  cardId: string;
  secretIdDigest: string;
  /** KeySetRef JSON. */
  keySet: string;
  generation: number;
  registeredAt: number;
  /**
   * The issuer's card record whose key set reaches this physical card: the escrow's card at issue (the default when
   * inserted without it), the replacement card's after a card-destroyed reproduction. Absent: a device replaced
   * before migration 0010 whose card record could not be told.
   */
  cardRecordId?: string;
}

export type InsertEscrowResult = "recorded" | "card-has-escrow" | "device-in-use";

// --- the issuer's card records a reproduced key may go into (read-only) -----------------------------------------------

/** An issuer card record as a reproduction target is judged by (target.ts): read-only. */
export interface TargetCardRecord {
  id: string;
  userId: string;
  status: string;
  validFrom: number;
  validUntil: number;
  /** The card's current SCP03 key set: its custody reference (KeySetRef JSON) and status; absent before the first. */
  keySet?: { id: string; custodyRef: string; status: string };
}

/** The states of an issuer card record (src/issuer/card-lifecycle.ts), as a reproduction reads them (destroyed-card.ts). */
export type CardRecordStatus = "issued" | "active" | "suspended" | "retired" | "destroyed";

// --- requests -------------------------------------------------------------------------------------------------------

export interface RequestRecord {
  requestId: string;
  cardId: string;
  escrowId: string;
  kind: RequestKind;
  /** ReproductionRequest JSON. */
  request: string;
  requestDigest: string;
  status: RequestStatus;
  statusDetail: string | null;
  /** ApproverList JSON. */
  approverList: string | null;
  filedBy: string;
  filedAt: number;
  updatedAt: number;
  reproducedBy: string | null;
  reproducedAt: number | null;
  /** The author's key version that verified the approver list (absent: recorded before key versions, i.e. 1). */
  approverListKeyVersion?: number;
  /** The reproduction holding the request (status reproducing): its claim id, who, since when, until when. */
  reproductionClaim?: string;
  reproductionClaimedBy?: string;
  reproductionClaimedAt?: number;
  /** Absent while reproducing: no lease recorded (claimed before leases existed), may be taken over at once. */
  reproductionLeaseUntil?: number;
}

/** A claim of a request for reproduction: its random id, who holds it, since when, and its lease. */
export interface ReproductionClaim {
  claim: string;
  by: string;
  at: number;
  leaseUntil: number;
}

// --- approvals and releases -----------------------------------------------------------------------------------------

export interface ApprovalRecord {
  requestId: string;
  seq: number;
  arbitratorId: string;
  decision: "approve" | "refuse";
  /** Approval JSON. */
  approval: string;
  approvalHash: string;
  recordedAt: number;
  /** The arbitrator's key version that verified it (absent: recorded before key versions, i.e. 1). */
  signingKeyVersion?: number;
}

export interface ReleaseRecord {
  requestId: string;
  shareId: string;
  arbitratorId: string;
  /** ShareRelease JSON. */
  release: string;
  recordedAt: number;
}
