// The records of key reproduction by arbitrators (issue 4; seed 001 embodiment 3) in SQL: Kysely, one code path
// for SQLite and PostgreSQL (tables: migrations/0003_recovery.ts, lifecycle columns and the arbitrators' key history:
// migrations/0007_recovery_lifecycle.ts, the card record of each registered device: 0010_recovery_device_card_record.ts).
// Implements the recovery domain's RecoveryRepository port (src/recovery/ports.ts; the record types are the
// domain's, src/recovery/records.ts); recovery-store.ts wraps it, with the audit log and ids, into the RecoveryStore
// src/recovery/service.ts runs on. It also reads — never writes — the issuer's card records (cards, card_key_sets,
// key_pairs of the same system DB) that a reproduced key may go into (src/recovery/target.ts).
//
// Owns: arbitrators (and every version of their keys), per-card policies, escrows with their share envelopes, the
// registered device secret ID digests, reproduction requests, their approval chains and the released shares. The
// documents the recovery module defines (policies, escrow records, envelopes, requests, approvals, releases, key
// rotations) are stored as the JSON text the service hands in and are returned as such: this module does not
// interpret them.
//
// Guarantees that must hold across concurrent requests and server processes are constraints or single statements:
//   - one escrow per card (unique card_id), one card record per physical card (unique secret_id_digest);
//   - at most one unfinished request per card (partial unique index on card_id);
//   - one decision per arbitrator and request, one approval per chain position (unique keys): of two approvals
//     racing for the same position, one is recorded;
//   - state changes of a request are conditional updates (`from` states), so a request is claimed for
//     reproduction once.
//   - a reproduction claims a request with a lease (migrations/0007_recovery_lifecycle.ts): the claim, its
//     renewal, a takeover of an expired lease and the release are conditional updates on the claim's random id,
//     so of two processes one holds the request at a time, and a holder that lost it can neither finish nor
//     release it;
//   - an arbitrator's key rotation is a conditional update from its current key version to the next.
// Never: holds a share, a key or a device secret ID in clear — only sealed documents and digests.
//
// This file is the facade: SqlRecoveryRepository runs transactions and hands every call to the repository of its
// records, bound to the same DB or transaction:
//   recovery-tables.ts                  the tables as Kysely sees them, request states, what the repositories share
//   recovery-arbitrator-repository.ts   arbitrators and every version of their keys
//   recovery-policy-repository.ts       per-card policies
//   recovery-escrow-repository.ts       escrows, their share envelopes, the registered devices
//   recovery-target-repository.ts       the issuer's card records a reproduced key may go into (read-only)
//   recovery-request-repository.ts      reproduction requests and the reproduction lease
//   recovery-approval-repository.ts     approval chains and released shares
// Each method's comment is with its code in those files. Every type is exported from here as before.

import type { Kysely, Transaction } from "kysely";
import type { RecoveryRepository } from "../recovery/ports.ts";
import type { Database, Db } from "./db.ts";
import { RecoveryApprovalRepository, type ApprovalRecord, type ReleaseRecord } from "./recovery-approval-repository.ts";
import { RecoveryArbitratorRepository, type ArbitratorKeyRecord, type ArbitratorRecord } from "./recovery-arbitrator-repository.ts";
import { RecoveryEscrowRepository, type DeviceRecord, type EnvelopeRow, type EscrowRow, type InsertEscrowResult } from "./recovery-escrow-repository.ts";
import { RecoveryPolicyRepository, type PolicyRecord } from "./recovery-policy-repository.ts";
import { RecoveryRequestRepository, type ReproductionClaim, type RequestRecord } from "./recovery-request-repository.ts";
import { recoveryTables, type RecoveryTables, type RequestStatus } from "./recovery-tables.ts";
import { RecoveryTargetRepository, type TargetCardRecord } from "./recovery-target-repository.ts";

export { UNFINISHED_STATUSES } from "./recovery-tables.ts";
export type {
  RecoveryApprovalsTable,
  RecoveryArbitratorKeysTable,
  RecoveryArbitratorsTable,
  RecoveryDevicesTable,
  RecoveryEscrowsTable,
  RecoveryPoliciesTable,
  RecoveryReleasesTable,
  RecoveryRequestsTable,
  RecoveryShareEnvelopesTable,
  RecoveryTables,
  RequestKind,
  RequestStatus,
} from "./recovery-tables.ts";
export type {
  ApprovalRecord,
  ArbitratorKeyRecord,
  ArbitratorRecord,
  DeviceRecord,
  EnvelopeRow,
  EscrowRow,
  InsertEscrowResult,
  PolicyRecord,
  ReleaseRecord,
  ReproductionClaim,
  RequestRecord,
  TargetCardRecord,
};

export class SqlRecoveryRepository implements RecoveryRepository {
  private readonly db: Kysely<RecoveryTables>;
  readonly #arbitrators: RecoveryArbitratorRepository;
  readonly #policies: RecoveryPolicyRepository;
  readonly #escrows: RecoveryEscrowRepository;
  readonly #targets: RecoveryTargetRepository;
  readonly #requests: RecoveryRequestRepository;
  readonly #approvals: RecoveryApprovalRepository;

  /** @param db the system DB migrated so that 0003_recovery, 0007_recovery_lifecycle and 0010 exist, or a transaction of it */
  constructor(db: Db | Kysely<unknown> | Transaction<Database>) {
    this.db = recoveryTables(db);
    this.#arbitrators = new RecoveryArbitratorRepository(db);
    this.#policies = new RecoveryPolicyRepository(db);
    this.#escrows = new RecoveryEscrowRepository(db);
    this.#targets = new RecoveryTargetRepository(db);
    this.#requests = new RecoveryRequestRepository(db);
    this.#approvals = new RecoveryApprovalRepository(db);
  }

  /**
   * Runs `fn` in one transaction (the current one when this repository is bound to a transaction): `repo` is
   * bound to it, and `trx` is the same transaction typed for the system DB (for appendAudit).
   */
  async transaction<T>(fn: (repo: SqlRecoveryRepository, trx: Transaction<Database>) => Promise<T>): Promise<T> {
    if (this.db.isTransaction) return fn(this, this.db as unknown as Transaction<Database>);
    return this.db.transaction().execute((trx) => fn(new SqlRecoveryRepository(trx as unknown as Transaction<Database>), trx as unknown as Transaction<Database>));
  }

  // --- arbitrators ------------------------------------------------------------------------------------------------
  // recovery-arbitrator-repository.ts

  insertArbitrator(a: ArbitratorRecord): Promise<boolean> {
    return this.#arbitrators.insertArbitrator(a);
  }

  arbitrator(id: string): Promise<ArbitratorRecord | undefined> {
    return this.#arbitrators.arbitrator(id);
  }

  arbitrators(page: { after?: string; limit?: number } = {}): Promise<ArbitratorRecord[]> {
    return this.#arbitrators.arbitrators(page);
  }

  arbitratorKeys(ids?: readonly string[]): Promise<ArbitratorKeyRecord[]> {
    return this.#arbitrators.arbitratorKeys(ids);
  }

  rotateArbitratorKeys(id: string, fromVersion: number, next: { signingPublicKey: Uint8Array; encryptionPublicKey: Uint8Array; at: number; rotation: string; by: string }): Promise<boolean> {
    return this.#arbitrators.rotateArbitratorKeys(id, fromVersion, next);
  }

  disableArbitrator(id: string, at: number, by: string, reason: string): Promise<boolean> {
    return this.#arbitrators.disableArbitrator(id, at, by, reason);
  }

  // --- policies ---------------------------------------------------------------------------------------------------
  // recovery-policy-repository.ts

  putPolicy(p: PolicyRecord): Promise<void> {
    return this.#policies.putPolicy(p);
  }

  policiesMentioning(text: string, page: { after?: string; limit: number }): Promise<(PolicyRecord & { escrowId?: string; escrowPolicy?: string })[]> {
    return this.#policies.policiesMentioning(text, page);
  }

  policy(cardId: string): Promise<PolicyRecord | undefined> {
    return this.#policies.policy(cardId);
  }

  // --- escrows, envelopes, devices --------------------------------------------------------------------------------
  // recovery-escrow-repository.ts

  insertEscrow(e: EscrowRow, envelopes: readonly EnvelopeRow[], device: DeviceRecord): Promise<InsertEscrowResult> {
    return this.#escrows.insertEscrow(e, envelopes, device);
  }

  deleteEscrow(escrowId: string): Promise<boolean> {
    return this.#escrows.deleteEscrow(escrowId);
  }

  escrow(escrowId: string): Promise<EscrowRow | undefined> {
    return this.#escrows.escrow(escrowId);
  }

  escrowByCard(cardId: string): Promise<EscrowRow | undefined> {
    return this.#escrows.escrowByCard(cardId);
  }

  envelopesOfEscrow(escrowId: string): Promise<EnvelopeRow[]> {
    return this.#escrows.envelopesOfEscrow(escrowId);
  }

  envelopesFor(arbitratorId: string, opts: { cardId?: string } = {}): Promise<EnvelopeRow[]> {
    return this.#escrows.envelopesFor(arbitratorId, opts);
  }

  device(cardId: string): Promise<DeviceRecord | undefined> {
    return this.#escrows.device(cardId);
  }

  deviceByDigest(secretIdDigest: string): Promise<DeviceRecord | undefined> {
    return this.#escrows.deviceByDigest(secretIdDigest);
  }

  deviceByCardRecord(cardRecordId: string): Promise<DeviceRecord | undefined> {
    return this.#escrows.deviceByCardRecord(cardRecordId);
  }

  // --- the issuer's card records a reproduced key may go into (read-only) ---------------------------------------------
  // recovery-target-repository.ts (replaceDevice: recovery-escrow-repository.ts)

  cardRecord(cardId: string): Promise<TargetCardRecord | undefined> {
    return this.#targets.cardRecord(cardId);
  }

  activeKeysInSlot(cardId: string, slot: string, since?: number): Promise<Uint8Array[]> {
    return this.#targets.activeKeysInSlot(cardId, slot, since);
  }

  replaceDevice(cardId: string, expectedDigest: string, next: { secretIdDigest: string; keySet: string; registeredAt: number; cardRecordId: string }): Promise<boolean> {
    return this.#escrows.replaceDevice(cardId, expectedDigest, next);
  }

  // --- requests ---------------------------------------------------------------------------------------------------
  // recovery-request-repository.ts

  insertRequest(r: RequestRecord): Promise<boolean> {
    return this.#requests.insertRequest(r);
  }

  request(requestId: string): Promise<RequestRecord | undefined> {
    return this.#requests.request(requestId);
  }

  requests(filter: { statuses?: readonly RequestStatus[]; cardId?: string; limit?: number; after?: { filedAt: number; requestId: string } } = {}): Promise<RequestRecord[]> {
    return this.#requests.requests(filter);
  }

  lockRequest(requestId: string, at: number): Promise<boolean> {
    return this.#requests.lockRequest(requestId, at);
  }

  moveRequest(
    requestId: string,
    from: readonly RequestStatus[],
    to: RequestStatus,
    at: number,
    fields: { statusDetail?: string | null; approverList?: string; approverListKeyVersion?: number; reproducedBy?: string; reproducedAt?: number } = {},
  ): Promise<boolean> {
    return this.#requests.moveRequest(requestId, from, to, at, fields);
  }

  // --- the reproduction lease --------------------------------------------------------------------------------------
  // recovery-request-repository.ts

  claimReproduction(requestId: string, c: ReproductionClaim, previous?: string | null): Promise<boolean> {
    return this.#requests.claimReproduction(requestId, c, previous);
  }

  renewReproduction(requestId: string, claim: string, leaseUntil: number): Promise<boolean> {
    return this.#requests.renewReproduction(requestId, claim, leaseUntil);
  }

  endReproduction(
    requestId: string,
    claim: string | null,
    to: "reproduced" | "satisfied",
    at: number,
    fields: { statusDetail?: string | null; reproducedBy?: string; reproducedAt?: number } = {},
  ): Promise<boolean> {
    return this.#requests.endReproduction(requestId, claim, to, at, fields);
  }

  // --- approvals and releases -------------------------------------------------------------------------------------
  // recovery-approval-repository.ts

  approvals(requestId: string): Promise<ApprovalRecord[]> {
    return this.#approvals.approvals(requestId);
  }

  insertApproval(a: ApprovalRecord): Promise<boolean> {
    return this.#approvals.insertApproval(a);
  }

  insertReleases(rows: readonly ReleaseRecord[]): Promise<boolean> {
    return this.#approvals.insertReleases(rows);
  }

  releases(requestId: string): Promise<ReleaseRecord[]> {
    return this.#approvals.releases(requestId);
  }
}
