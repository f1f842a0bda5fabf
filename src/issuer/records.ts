// The issuer's records (seed 000 FIG. 4/5): what the issuing flows read and write through their storage port
// (ports.ts) — users, cards (VT), card key sets (SkVT), key pairs and their wrapped keys Sk[PRk], certificates
// (CtVT), delivery packages, rotation jobs (FIG. 15), events and webhooks — and the states each moves through.
// The store (src/store/) keeps them in the system DB: its tables use these unions, its repositories return these
// records, and store.ts re-exports them for its callers.
//
// Plain data only: no query, no I/O. Never a key value, a clear private key, a password or a token — custody
// references, public keys, wrapped keys and hashes.

import type { JsonValue } from "../util/json.ts";
import type { AddedCredentialSpec } from "./rotation-records.ts";

export type { JsonValue } from "../util/json.ts";

/** The card lifecycle (card-lifecycle.ts): retired and destroyed are final. */
export type CardStatus = "issued" | "active" | "suspended" | "retired" | "destroyed";
export type KeySetStatus = "pending" | "active" | "retired";
export type KeyPairStatus = "active" | "superseded" | "revoked" | "destroyed";
export type PackageStatus = "pending" | "fetched" | "acknowledged";
/** FIG. 15: embodiment 3 re-wraps and redistributes all; 4 adds new keys under Sk2 only; 5 re-wraps all and adds. */
export type RotationStrategy = "embodiment3" | "embodiment4" | "embodiment5";
/** para 0062: a rotation is detected and notified (proposed), approved by an operator, then run. */
export type RotationStatus = "proposed" | "approved" | "running" | "completed" | "failed" | "cancelled";
/** A rotation's distribution (migration 0012): claimed once, then resumable item by item. */
export type RotationDistribution = "none" | "distributing" | "distributed";
/** pending; delivered (answered 2xx); dead (the dead-letter record: no attempt left, until an operator retries it). */
export type WebhookDeliveryStatus = "pending" | "delivered" | "dead";

// ---- users and cards (FIG. 4, ST11-ST15) ------------------------------------------------------------------------

export interface User {
  id: string;
  personalData: Record<string, JsonValue>;
  createdAt: number;
}

export interface Card {
  id: string;
  userId: string;
  status: CardStatus;
  validFrom: number;
  validUntil: number;
  currentKeySetId: string | null;
  lastPackageSeq: number;
  createdAt: number;
  updatedAt: number;
  /** Bumped by every status change: what a terminal token is bound to besides the card (card-lifecycle.ts). */
  statusVersion: number;
  /** The last status change (null: none since issue); every change is in the audit log. */
  statusChangedAt: number | null;
  statusChangedBy: string | null;
  statusReason: string | null;
}

export interface NewCard {
  id?: string;
  userId: string;
  validFrom: number;
  validUntil: number;
  status?: CardStatus;
}

/** A status change the store made: the card as it is now and the status it left. */
export interface CardStatusChange {
  card: Card;
  from: CardStatus;
}

export interface CardKeySet {
  id: string;
  cardId: string;
  kvn: number;
  version: number;
  status: KeySetStatus;
  validFrom: number;
  validUntil: number;
  custodyRef: string;
  label: string | null;
  createdAt: number;
}

export interface NewKeySet {
  id?: string;
  cardId: string;
  kvn: number;
  version: number;
  validFrom: number;
  validUntil: number;
  custodyRef: string;
  label?: string | null;
  status?: KeySetStatus;
  makeCurrent?: boolean;
}

// ---- credentials (ST16-ST22) ------------------------------------------------------------------------------------

export interface KeyPair {
  id: string;
  userId: string;
  cardId: string | null;
  slot: string | null;
  algorithm: string;
  publicKey: Buffer;
  status: KeyPairStatus;
  createdAt: number;
}

export interface WrappedKey {
  /** Row id: the page cursor of the bulk re-wrap. */
  id: number;
  keyPairId: string;
  keySetId: string;
  /** Sk[PRk]. */
  wrapped: Buffer;
  createdAt: number;
}

export interface NewKeyPair {
  id?: string;
  userId: string;
  cardId?: string | null;
  slot?: string | null;
  algorithm: string;
  publicKey: Uint8Array;
  status?: KeyPairStatus;
}

export interface Certificate {
  id: string;
  serial: string;
  keyPairId: string;
  der: Buffer;
  subject: string;
  notBefore: number;
  notAfter: number;
  revokedAt: number | null;
  revocationReason: string | null;
  createdAt: number;
}

export interface NewCertificate {
  id?: string;
  serial: string;
  der: Uint8Array;
  subject: string;
  notBefore: number;
  notAfter: number;
}

/** A credential recorded at once: its key pair, its wrapped keys and its certificate. */
export interface NewCredential {
  keyPair: NewKeyPair;
  wrapped: { keySetId: string; wrapped: Uint8Array }[];
  certificate?: NewCertificate | null;
}

export interface RecordedCredential {
  keyPair: KeyPair;
  wrapped: WrappedKey[];
  certificate: Certificate | null;
}

export interface DeliveryPackage {
  id: number;
  cardId: string;
  seq: number;
  body: Buffer;
  status: PackageStatus;
  createdAt: number;
  fetchedAt: number | null;
  acknowledgedAt: number | null;
}

// ---- card-key rotation jobs (embodiments 3-5, FIG. 15) ------------------------------------------------------------

export interface Rotation {
  id: string;
  cardId: string;
  toCardId: string | null;
  fromKeySetId: string;
  toKeySetId: string | null;
  strategy: RotationStrategy;
  status: RotationStatus;
  cursor: number;
  total: number;
  done: number;
  approvedBy: string | null;
  approvedAt: number | null;
  error: string | null;
  createdAt: number;
  updatedAt: number;
  /** Who proposed it (null: the validity scan, or before migration 0012); that operator may not approve it. */
  proposedBy: string | null;
  /** The new card, bound at proposal: issueNewCard registers exactly this ID. */
  newCardId: string | null;
  /** The credentials distribute adds (embodiments 4, 5), by slot, and the old card's slots it leaves behind. */
  added: AddedCredentialSpec[];
  dropped: string[];
  /** Distinct operators other than the proposer who must approve it. */
  approvalsRequired: number;
  distribution: RotationDistribution;
  distributedAt: number | null;
}

/** What a rotation is proposed with (the approvals will cover the new card ID, the additions and the drops). */
export interface NewRotation {
  id?: string;
  cardId: string;
  fromKeySetId: string;
  strategy: RotationStrategy;
  toCardId?: string | null;
  toKeySetId?: string | null;
  proposedBy?: string | null;
  newCardId?: string;
  added?: AddedCredentialSpec[];
  dropped?: string[];
  approvalsRequired?: number;
}

// ---- events outbox and webhooks ---------------------------------------------------------------------------------

export interface StoredEvent {
  id: number;
  type: string;
  subject: string;
  payload: JsonValue;
  dedupKey: string | null;
  createdAt: number;
  deliveredAt: number | null;
  attempts: number;
  lastError: string | null;
  /** Epoch ms before which a failed delivery is not retried; null: due now. */
  nextAttemptAt: number | null;
}

export interface Webhook {
  id: string;
  url: string;
  eventTypes: string[];
  secretRef: string | null;
  createdAt: number;
  disabledAt: number | null;
}

/** One delivery of an event to a webhook (migration 0014): its state, schedule and claim. */
export interface WebhookDelivery {
  eventId: number;
  webhookId: string;
  status: WebhookDeliveryStatus;
  attempts: number;
  nextAttemptAt: number;
  leaseOwner: string | null;
  leaseUntil: number | null;
  lastError: string | null;
  createdAt: number;
  updatedAt: number;
  deliveredAt: number | null;
  deadAt: number | null;
}

// ---- the audit log's signed checkpoints (issue 15 §3) -----------------------------------------------------------

export interface StoredCheckpoint {
  size: number;
  /** Hex. */
  rootHash: string;
  /** The signed note (C2SP tlog-checkpoint). */
  note: string;
  createdAt: number;
}
