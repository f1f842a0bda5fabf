// The recovery service's storage port (issue 10 §1): what RecoveryService (service.ts) needs from the system DB —
// its records (RecoveryRepository, the record types: records.ts), a unit of work in which those records change
// together with their audit entries (RecoveryStore.transaction, RecoveryTx), the hash-chained audit log, row ids,
// and the little it reads and does to the issuer's card records (destroyed-card.ts). src/store/recovery-store.ts
// implements it on Kysely (SqlRecoveryStore, recoveryStoreOf); the wiring (src/server/, tests) builds it and hands it
// to RecoveryService.open.
//
// Guarantees an implementation must give across concurrent requests and server processes (the store keeps them as
// constraints or single conditional statements): one escrow per card, one registered device per physical card; at
// most one unfinished request per card; one decision per arbitrator and request, one approval per chain position;
// every state change of a request, every step of a reproduction claim (claim, renewal, takeover, release) and an
// arbitrator's key rotation are conditional updates, so of two racing one wins. Everything done through a RecoveryTx
// — records and audit entries alike — commits or rolls back together.
//
// Never: a share, a key or a device secret ID in clear — only sealed documents and digests. No SQL here.

import type { JsonValue } from "../util/json.ts";
import type {
  ApprovalRecord,
  ArbitratorKeyRecord,
  ArbitratorRecord,
  CardRecordStatus,
  DeviceRecord,
  EnvelopeRow,
  EscrowRow,
  InsertEscrowResult,
  PolicyRecord,
  ReleaseRecord,
  ReproductionClaim,
  RequestRecord,
  RequestStatus,
  TargetCardRecord,
} from "./records.ts";

/** The recovery records. Bound to a transaction (RecoveryTx.repo), every call runs in it. */
export interface RecoveryRepository {
  // --- arbitrators ---
  /** Records a new arbitrator and its keys as version 1 (atomically); false when the id is taken. */
  insertArbitrator(a: ArbitratorRecord): Promise<boolean>;
  arbitrator(id: string): Promise<ArbitratorRecord | undefined>;
  /** Registered arbitrators (deregistered ones included), by id; a page of them with `after` (an id) and `limit`. */
  arbitrators(page?: { after?: string; limit?: number }): Promise<ArbitratorRecord[]>;
  /** Every key version of the arbitrators named (all arbitrators without `ids`), by arbitrator then version. */
  arbitratorKeys(ids?: readonly string[]): Promise<ArbitratorKeyRecord[]>;
  /**
   * Replaces an arbitrator's keys by version `fromVersion + 1` (inside a transaction only), retiring the current one.
   * False (nothing changes) when its current version is no longer `fromVersion` or it is deregistered.
   */
  rotateArbitratorKeys(id: string, fromVersion: number, next: { signingPublicKey: Uint8Array; encryptionPublicKey: Uint8Array; at: number; rotation: string; by: string }): Promise<boolean>;
  /** Deregisters an arbitrator; false when there is no such arbitrator or it is deregistered already. */
  disableArbitrator(id: string, at: number, by: string, reason: string): Promise<boolean>;

  // --- policies ---
  /** Sets (or replaces) a card's policy. */
  putPolicy(p: PolicyRecord): Promise<void>;
  /**
   * Policies whose text names `text` as a JSON string (a prefilter: the caller parses and checks them), by card id,
   * after the card id `after`, at most `limit`; with the card's escrow id when its key is escrowed.
   */
  policiesMentioning(text: string, page: { after?: string; limit: number }): Promise<(PolicyRecord & { escrowId?: string; escrowPolicy?: string })[]>;
  policy(cardId: string): Promise<PolicyRecord | undefined>;

  // --- escrows, envelopes, devices ---
  /**
   * Records an escrow with its envelopes and the card's device registration (inside a transaction only): on a result
   * other than "recorded" some rows may have been written, and the caller rolls back (throws).
   */
  insertEscrow(e: EscrowRow, envelopes: readonly EnvelopeRow[], device: DeviceRecord): Promise<InsertEscrowResult>;
  /** Removes an escrow, its envelopes and its card's device registration (an issue that did not complete). */
  deleteEscrow(escrowId: string): Promise<boolean>;
  escrow(escrowId: string): Promise<EscrowRow | undefined>;
  escrowByCard(cardId: string): Promise<EscrowRow | undefined>;
  /** The envelopes of one escrow, by share. */
  envelopesOfEscrow(escrowId: string): Promise<EnvelopeRow[]>;
  /** The envelopes addressed to an arbitrator, optionally of one card's escrow only, by escrow then share. */
  envelopesFor(arbitratorId: string, opts?: { cardId?: string }): Promise<EnvelopeRow[]>;
  device(cardId: string): Promise<DeviceRecord | undefined>;
  deviceByDigest(secretIdDigest: string): Promise<DeviceRecord | undefined>;
  /** The registered device (of any escrow) that the card record `cardRecordId` reaches, if it is one. */
  deviceByCardRecord(cardRecordId: string): Promise<DeviceRecord | undefined>;
  /**
   * FIG. 11-12: the card's registered device becomes another physical card (generation + 1), reached through the card
   * record `next.cardRecordId`. False when the card has no registration or it is no longer `expectedDigest`.
   */
  replaceDevice(cardId: string, expectedDigest: string, next: { secretIdDigest: string; keySet: string; registeredAt: number; cardRecordId: string }): Promise<boolean>;

  // --- the issuer's card records a reproduced key may go into (read-only) ---
  /** An issuer card record with its current key set, or undefined when the issuer has no such card. */
  cardRecord(cardId: string): Promise<TargetCardRecord | undefined>;
  /** The public keys (SPKI DER) of the issuer's active key pairs destined for `slot` of card `cardId` (created after `since`, when given). */
  activeKeysInSlot(cardId: string, slot: string, since?: number): Promise<Uint8Array[]>;

  // --- requests ---
  /** Files a request; false when the card already has an unfinished one (nothing changes). */
  insertRequest(r: RequestRecord): Promise<boolean>;
  request(requestId: string): Promise<RequestRecord | undefined>;
  /** Requests, newest first (filedAt, then requestId, descending), by status and/or card; `after` continues after that position. */
  requests(filter?: { statuses?: readonly RequestStatus[]; cardId?: string; limit?: number; after?: { filedAt: number; requestId: string } }): Promise<RequestRecord[]>;
  /** Locks the request for the rest of the transaction (inside one only), serialising decisions on it; false when there is none. */
  lockRequest(requestId: string, at: number): Promise<boolean>;
  /** Moves a request from one of `from` to `to`, with the fields given; false (nothing changes) when it is not in one of `from`. */
  moveRequest(
    requestId: string,
    from: readonly RequestStatus[],
    to: RequestStatus,
    at: number,
    fields?: { statusDetail?: string | null; approverList?: string; approverListKeyVersion?: number; reproducedBy?: string; reproducedAt?: number },
  ): Promise<boolean>;

  // --- the reproduction lease ---
  /**
   * Claims a request for one reproduction: from "satisfied" (`previous` undefined), or — a takeover — from a
   * "reproducing" request still held by the claim `previous` (null: a claim without an id) whose lease ended at or
   * before `c.at` (or was never recorded). Of concurrent claims one wins.
   */
  claimReproduction(requestId: string, c: ReproductionClaim, previous?: string | null): Promise<boolean>;
  /** Extends the lease of the claim `claim` to `leaseUntil`; false when the request is no longer held by it. */
  renewReproduction(requestId: string, claim: string, leaseUntil: number): Promise<boolean>;
  /** Ends the claim `claim` (null: one without an id), moving the request to `to`; false when the request is not held by it. */
  endReproduction(
    requestId: string,
    claim: string | null,
    to: "reproduced" | "satisfied",
    at: number,
    fields?: { statusDetail?: string | null; reproducedBy?: string; reproducedAt?: number },
  ): Promise<boolean>;

  // --- approvals and releases ---
  /** The chain of a request, in order. */
  approvals(requestId: string): Promise<ApprovalRecord[]>;
  /** Appends an approval at `seq`; false when the position or the arbitrator's decision is taken already. */
  insertApproval(a: ApprovalRecord): Promise<boolean>;
  /** Records released shares (inside a transaction); false when one of them was released already. */
  insertReleases(rows: readonly ReleaseRecord[]): Promise<boolean>;
  releases(requestId: string): Promise<ReleaseRecord[]>;
}

/** One entry of the hash-chained, append-only audit log. Never a secret in it: ids, digests, names. */
export interface AuditRecord {
  actor: string;
  action: string;
  subject: string;
  details: { [key: string]: JsonValue };
  /** Epoch ms. */
  at: number;
}

/**
 * One unit of work: the records bound to the transaction, and the audit entries appended to the chain in that same
 * transaction. Its members are plain functions (they may be destructured).
 */
export interface RecoveryTx {
  readonly repo: RecoveryRepository;
  /** Appends an entry to the tamper-evident audit chain, committed or rolled back with the records. */
  readonly audit: (entry: AuditRecord) => Promise<void>;
  /** A fresh, time-ordered row id (`now`: epoch ms). */
  readonly newId: (now?: number) => string;
  /** The state of an issuer card record, held (locked) until the transaction ends; undefined when there is no such card. */
  readonly holdCardStatus: (cardId: string) => Promise<CardRecordStatus | undefined>;
  /**
   * The issuer's "report-destroyed" transition of a card record (src/issuer/card-lifecycle.ts) as an operator's act of
   * `actor` at `at`, with the issuer's own audit entry and notification, in this transaction; answers the state it left.
   * Throws when the card record cannot make that transition.
   */
  readonly reportCardDestroyed: (cardId: string, o: { actor: string; reason: string; details: { [key: string]: JsonValue }; at: number }) => Promise<{ from: CardRecordStatus }>;
}

/** The recovery service's storage: the records outside any transaction, units of work, the audit log and ids. */
export interface RecoveryStore {
  /** The records, each call on its own (a single statement, or its own transaction where it says so). */
  readonly repo: RecoveryRepository;
  /** Runs `fn` in one transaction: what it records and audits commits when it returns, and rolls back when it throws. */
  transaction<T>(fn: (tx: RecoveryTx) => Promise<T>): Promise<T>;
  /** Appends an audit entry on its own (its own transaction): refusals, which change nothing else. */
  audit(entry: AuditRecord): Promise<void>;
  /** A fresh, time-ordered row id (`now`: epoch ms). */
  newId(now?: number): string;
  /** The state of an issuer card record now; undefined when there is no such card. */
  cardStatus(cardId: string): Promise<CardRecordStatus | undefined>;
}
