// The records of key reproduction by arbitrators (issue 4; seed 001 embodiment 3) in SQL: Kysely, one code path
// for SQLite and PostgreSQL (tables: migrations/0003_recovery.ts). Used by src/recovery/service.ts.
//
// Owns: arbitrators, per-card policies, escrows with their share envelopes, the registered device secret ID
// digests, reproduction requests, their approval chains and the released shares. The documents the recovery
// module defines (policies, escrow records, envelopes, requests, approvals, releases) are stored as the JSON text
// the service hands in and are returned as such: this module does not interpret them.
//
// Guarantees that must hold across concurrent requests and server processes are constraints or single statements:
//   - one escrow per card (unique card_id), one card record per physical card (unique secret_id_digest);
//   - at most one unfinished request per card (partial unique index on card_id);
//   - one decision per arbitrator and request, one approval per chain position (unique keys): of two approvals
//     racing for the same position, one is recorded;
//   - state changes of a request are conditional updates (`from` states), so a request is claimed for
//     reproduction once.
// Never: holds a share, a key or a device secret ID in clear — only sealed documents and digests.

import type { Kysely, Transaction } from "kysely";
import type { Database, Db } from "./db.ts";

export interface RecoveryArbitratorsTable {
  id: string;
  roles: string;
  display_name: string | null;
  signing_public_key: Uint8Array;
  encryption_public_key: Uint8Array;
  registered_by: string;
  registered_at: number;
}

export interface RecoveryPoliciesTable {
  card_id: string;
  policy: string;
  policy_digest: string;
  set_by: string;
  set_at: number;
}

export interface RecoveryEscrowsTable {
  escrow_id: string;
  card_id: string;
  applicant_id: string;
  policy: string;
  policy_digest: string;
  record: string;
  wrapped_under: string;
  alg: string;
  slot: string;
  public_key: Uint8Array;
  public_key_sha256: string;
  certificate: Uint8Array;
  serial: string;
  created_by: string;
  created_at: number;
}

export interface RecoveryShareEnvelopesTable {
  escrow_id: string;
  share_id: string;
  arbitrator_id: string;
  envelope: string;
}

export interface RecoveryDevicesTable {
  card_id: string;
  secret_id_digest: string;
  key_set: string;
  generation: number;
  registered_at: number;
}

export type RequestKind = "key-lost" | "card-destroyed";
/**
 * open: collecting decisions; satisfied: the policy is met (reproduction needs the approver list);
 * reproducing: claimed by one reproduction; reproduced: done, closed for good; ended: a condition can no
 * longer be met; withdrawn: closed by an operator.
 */
export type RequestStatus = "open" | "satisfied" | "reproducing" | "reproduced" | "ended" | "withdrawn";
export const UNFINISHED_STATUSES: readonly RequestStatus[] = ["open", "satisfied", "reproducing"];

export interface RecoveryRequestsTable {
  request_id: string;
  card_id: string;
  escrow_id: string;
  kind: RequestKind;
  request: string;
  request_digest: string;
  status: RequestStatus;
  status_detail: string | null;
  approver_list: string | null;
  filed_by: string;
  filed_at: number;
  updated_at: number;
  reproduced_by: string | null;
  reproduced_at: number | null;
}

export interface RecoveryApprovalsTable {
  request_id: string;
  seq: number;
  arbitrator_id: string;
  decision: "approve" | "refuse";
  approval: string;
  approval_hash: string;
  recorded_at: number;
}

export interface RecoveryReleasesTable {
  request_id: string;
  share_id: string;
  arbitrator_id: string;
  release: string;
  recorded_at: number;
}

// a type alias, not an interface: Kysely's withTables wants an index-signature-compatible record
export type RecoveryTables = {
  recovery_arbitrators: RecoveryArbitratorsTable;
  recovery_policies: RecoveryPoliciesTable;
  recovery_escrows: RecoveryEscrowsTable;
  recovery_share_envelopes: RecoveryShareEnvelopesTable;
  recovery_devices: RecoveryDevicesTable;
  recovery_requests: RecoveryRequestsTable;
  recovery_approvals: RecoveryApprovalsTable;
  recovery_releases: RecoveryReleasesTable;
};

// --- records as the repository returns them -----------------------------------------------------------------------

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
}

export interface PolicyRecord {
  cardId: string;
  /** Canonical JSON of the validated policy. */
  policy: string;
  policyDigest: string;
  setBy: string;
  setAt: number;
}

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
}

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
}

export interface ApprovalRecord {
  requestId: string;
  seq: number;
  arbitratorId: string;
  decision: "approve" | "refuse";
  /** Approval JSON. */
  approval: string;
  approvalHash: string;
  recordedAt: number;
}

export interface ReleaseRecord {
  requestId: string;
  shareId: string;
  arbitratorId: string;
  /** ShareRelease JSON. */
  release: string;
  recordedAt: number;
}

export type InsertEscrowResult = "recorded" | "card-has-escrow" | "device-in-use";

/** Bytes from the driver (a Node Buffer on both engines) as a plain Uint8Array copy. */
const bytes = (b: Uint8Array): Uint8Array => new Uint8Array(b);

const toArbitrator = (r: RecoveryArbitratorsTable): ArbitratorRecord => {
  const a: ArbitratorRecord = {
    id: r.id,
    roles: JSON.parse(r.roles) as string[],
    signingPublicKey: bytes(r.signing_public_key),
    encryptionPublicKey: bytes(r.encryption_public_key),
    registeredBy: r.registered_by,
    registeredAt: Number(r.registered_at),
  };
  if (r.display_name !== null) a.displayName = r.display_name;
  return a;
};

const toEscrow = (r: RecoveryEscrowsTable): EscrowRow => ({
  escrowId: r.escrow_id,
  cardId: r.card_id,
  applicantId: r.applicant_id,
  policy: r.policy,
  policyDigest: r.policy_digest,
  record: r.record,
  wrappedUnder: r.wrapped_under,
  alg: r.alg,
  slot: r.slot,
  publicKey: bytes(r.public_key),
  publicKeySha256: r.public_key_sha256,
  certificate: bytes(r.certificate),
  serial: r.serial,
  createdBy: r.created_by,
  createdAt: Number(r.created_at),
});

const toDevice = (r: RecoveryDevicesTable): DeviceRecord => ({
  cardId: r.card_id,
  secretIdDigest: r.secret_id_digest,
  keySet: r.key_set,
  generation: Number(r.generation),
  registeredAt: Number(r.registered_at),
});

const toRequest = (r: RecoveryRequestsTable): RequestRecord => ({
  requestId: r.request_id,
  cardId: r.card_id,
  escrowId: r.escrow_id,
  kind: r.kind,
  request: r.request,
  requestDigest: r.request_digest,
  status: r.status,
  statusDetail: r.status_detail,
  approverList: r.approver_list,
  filedBy: r.filed_by,
  filedAt: Number(r.filed_at),
  updatedAt: Number(r.updated_at),
  reproducedBy: r.reproduced_by,
  reproducedAt: r.reproduced_at === null ? null : Number(r.reproduced_at),
});

export class SqlRecoveryRepository {
  private readonly db: Kysely<RecoveryTables>;

  /** @param db the system DB migrated so that 0003_recovery exists, or a transaction of it */
  constructor(db: Db | Kysely<unknown> | Transaction<Database>) {
    this.db = (db as Kysely<unknown>).withTables<RecoveryTables>() as unknown as Kysely<RecoveryTables>;
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

  /** Records a new arbitrator; false when the id is taken (nothing changes). */
  async insertArbitrator(a: ArbitratorRecord): Promise<boolean> {
    const r = await this.db
      .insertInto("recovery_arbitrators")
      .values({
        id: a.id,
        roles: JSON.stringify(a.roles),
        display_name: a.displayName ?? null,
        signing_public_key: a.signingPublicKey,
        encryption_public_key: a.encryptionPublicKey,
        registered_by: a.registeredBy,
        registered_at: a.registeredAt,
      })
      .onConflict((oc) => oc.column("id").doNothing())
      .returning("id")
      .executeTakeFirst();
    return r !== undefined;
  }

  async arbitrator(id: string): Promise<ArbitratorRecord | undefined> {
    const r = await this.db.selectFrom("recovery_arbitrators").selectAll().where("id", "=", id).executeTakeFirst();
    return r && toArbitrator(r);
  }

  /** Every registered arbitrator, by id. */
  async arbitrators(): Promise<ArbitratorRecord[]> {
    return (await this.db.selectFrom("recovery_arbitrators").selectAll().orderBy("id").execute()).map(toArbitrator);
  }

  // --- policies ---------------------------------------------------------------------------------------------------

  /** Sets (or replaces) a card's policy. */
  async putPolicy(p: PolicyRecord): Promise<void> {
    const row = { card_id: p.cardId, policy: p.policy, policy_digest: p.policyDigest, set_by: p.setBy, set_at: p.setAt };
    await this.db
      .insertInto("recovery_policies")
      .values(row)
      .onConflict((oc) => oc.column("card_id").doUpdateSet({ policy: row.policy, policy_digest: row.policy_digest, set_by: row.set_by, set_at: row.set_at }))
      .execute();
  }

  async policy(cardId: string): Promise<PolicyRecord | undefined> {
    const r = await this.db.selectFrom("recovery_policies").selectAll().where("card_id", "=", cardId).executeTakeFirst();
    return r && { cardId: r.card_id, policy: r.policy, policyDigest: r.policy_digest, setBy: r.set_by, setAt: Number(r.set_at) };
  }

  // --- escrows, envelopes, devices --------------------------------------------------------------------------------

  /**
   * Records an escrow with its envelopes and the card's device registration. Call it inside `transaction()`: on a
   * result other than "recorded" some rows may have been written, and the caller rolls back (throws).
   */
  async insertEscrow(e: EscrowRow, envelopes: readonly EnvelopeRow[], device: DeviceRecord): Promise<InsertEscrowResult> {
    if (!this.db.isTransaction) throw new Error("insertEscrow must run inside transaction()");
    const claimed = await this.db
      .insertInto("recovery_escrows")
      .values({
        escrow_id: e.escrowId,
        card_id: e.cardId,
        applicant_id: e.applicantId,
        policy: e.policy,
        policy_digest: e.policyDigest,
        record: e.record,
        wrapped_under: e.wrappedUnder,
        alg: e.alg,
        slot: e.slot,
        public_key: e.publicKey,
        public_key_sha256: e.publicKeySha256,
        certificate: e.certificate,
        serial: e.serial,
        created_by: e.createdBy,
        created_at: e.createdAt,
      })
      .onConflict((oc) => oc.doNothing())
      .returning("escrow_id")
      .executeTakeFirst();
    if (!claimed) return "card-has-escrow";
    const dev = await this.db
      .insertInto("recovery_devices")
      .values({ card_id: device.cardId, secret_id_digest: device.secretIdDigest, key_set: device.keySet, generation: device.generation, registered_at: device.registeredAt })
      .onConflict((oc) => oc.doNothing())
      .returning("card_id")
      .executeTakeFirst();
    if (!dev) return (await this.device(device.cardId)) ? "card-has-escrow" : "device-in-use";
    if (envelopes.length)
      await this.db
        .insertInto("recovery_share_envelopes")
        .values(envelopes.map((v) => ({ escrow_id: v.escrowId, share_id: v.shareId, arbitrator_id: v.arbitratorId, envelope: v.envelope })))
        .execute();
    return "recorded";
  }

  /** Removes an escrow, its envelopes and its card's device registration (an issue that did not complete). */
  async deleteEscrow(escrowId: string): Promise<boolean> {
    const e = await this.escrow(escrowId);
    if (!e) return false;
    await this.db.deleteFrom("recovery_share_envelopes").where("escrow_id", "=", escrowId).execute();
    await this.db.deleteFrom("recovery_devices").where("card_id", "=", e.cardId).execute();
    const r = await this.db.deleteFrom("recovery_escrows").where("escrow_id", "=", escrowId).executeTakeFirst();
    return Number(r.numDeletedRows) === 1;
  }

  async escrow(escrowId: string): Promise<EscrowRow | undefined> {
    const r = await this.db.selectFrom("recovery_escrows").selectAll().where("escrow_id", "=", escrowId).executeTakeFirst();
    return r && toEscrow(r);
  }

  async escrowByCard(cardId: string): Promise<EscrowRow | undefined> {
    const r = await this.db.selectFrom("recovery_escrows").selectAll().where("card_id", "=", cardId).executeTakeFirst();
    return r && toEscrow(r);
  }

  /** The envelopes addressed to an arbitrator, optionally of one card's escrow only, by escrow then share. */
  async envelopesFor(arbitratorId: string, opts: { cardId?: string } = {}): Promise<EnvelopeRow[]> {
    let q = this.db
      .selectFrom("recovery_share_envelopes as v")
      .innerJoin("recovery_escrows as e", "e.escrow_id", "v.escrow_id")
      .select(["v.escrow_id", "v.share_id", "v.arbitrator_id", "v.envelope"])
      .where("v.arbitrator_id", "=", arbitratorId);
    if (opts.cardId !== undefined) q = q.where("e.card_id", "=", opts.cardId);
    const rows = await q.orderBy("v.escrow_id").orderBy("v.share_id").execute();
    return rows.map((r) => ({ escrowId: r.escrow_id, shareId: r.share_id, arbitratorId: r.arbitrator_id, envelope: r.envelope }));
  }

  async device(cardId: string): Promise<DeviceRecord | undefined> {
    const r = await this.db.selectFrom("recovery_devices").selectAll().where("card_id", "=", cardId).executeTakeFirst();
    return r && toDevice(r);
  }

  async deviceByDigest(secretIdDigest: string): Promise<DeviceRecord | undefined> {
    const r = await this.db.selectFrom("recovery_devices").selectAll().where("secret_id_digest", "=", secretIdDigest).executeTakeFirst();
    return r && toDevice(r);
  }

  /**
   * FIG. 11-12: the card's registered device becomes another physical card (generation + 1). False when the card
   * has no registration or its registration is no longer `expectedDigest` (changed meanwhile); throws on a
   * digest registered for another card (unique constraint) — check with deviceByDigest first.
   */
  async replaceDevice(cardId: string, expectedDigest: string, next: { secretIdDigest: string; keySet: string; registeredAt: number }): Promise<boolean> {
    const r = await this.db
      .updateTable("recovery_devices")
      .set((eb) => ({ secret_id_digest: next.secretIdDigest, key_set: next.keySet, registered_at: next.registeredAt, generation: eb("generation", "+", 1) }))
      .where("card_id", "=", cardId)
      .where("secret_id_digest", "=", expectedDigest)
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  // --- requests ---------------------------------------------------------------------------------------------------

  /** Files a request; false when the card already has an unfinished one (nothing changes). */
  async insertRequest(r: RequestRecord): Promise<boolean> {
    const row = await this.db
      .insertInto("recovery_requests")
      .values({
        request_id: r.requestId,
        card_id: r.cardId,
        escrow_id: r.escrowId,
        kind: r.kind,
        request: r.request,
        request_digest: r.requestDigest,
        status: r.status,
        status_detail: r.statusDetail,
        approver_list: r.approverList,
        filed_by: r.filedBy,
        filed_at: r.filedAt,
        updated_at: r.updatedAt,
        reproduced_by: r.reproducedBy,
        reproduced_at: r.reproducedAt,
      })
      .onConflict((oc) => oc.doNothing())
      .returning("request_id")
      .executeTakeFirst();
    return row !== undefined;
  }

  async request(requestId: string): Promise<RequestRecord | undefined> {
    const r = await this.db.selectFrom("recovery_requests").selectAll().where("request_id", "=", requestId).executeTakeFirst();
    return r && toRequest(r);
  }

  /** Requests, newest first, filtered by status and/or card. */
  async requests(filter: { statuses?: readonly RequestStatus[]; cardId?: string; limit?: number } = {}): Promise<RequestRecord[]> {
    let q = this.db.selectFrom("recovery_requests").selectAll();
    if (filter.statuses) {
      if (filter.statuses.length === 0) return [];
      q = q.where("status", "in", [...filter.statuses]);
    }
    if (filter.cardId !== undefined) q = q.where("card_id", "=", filter.cardId);
    q = q.orderBy("filed_at", "desc").orderBy("request_id", "desc");
    if (filter.limit !== undefined) q = q.limit(filter.limit);
    return (await q.execute()).map(toRequest);
  }

  /**
   * Takes the request's row lock for the rest of the transaction (PostgreSQL: the row; SQLite: the write lock),
   * so that decisions on one request are serialised. False when there is no such request.
   */
  async lockRequest(requestId: string, at: number): Promise<boolean> {
    if (!this.db.isTransaction) throw new Error("lockRequest must run inside transaction()");
    const r = await this.db.updateTable("recovery_requests").set({ updated_at: at }).where("request_id", "=", requestId).executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  /**
   * Moves a request from one of `from` to `to`, with the fields given; false (nothing changes) when it is not in
   * one of `from`. One statement: of concurrent moves from the same state, one succeeds.
   */
  async moveRequest(
    requestId: string,
    from: readonly RequestStatus[],
    to: RequestStatus,
    at: number,
    fields: { statusDetail?: string | null; approverList?: string; reproducedBy?: string; reproducedAt?: number } = {},
  ): Promise<boolean> {
    const set: Partial<RecoveryRequestsTable> = { status: to, updated_at: at };
    if (fields.statusDetail !== undefined) set.status_detail = fields.statusDetail;
    if (fields.approverList !== undefined) set.approver_list = fields.approverList;
    if (fields.reproducedBy !== undefined) set.reproduced_by = fields.reproducedBy;
    if (fields.reproducedAt !== undefined) set.reproduced_at = fields.reproducedAt;
    const r = await this.db.updateTable("recovery_requests").set(set).where("request_id", "=", requestId).where("status", "in", [...from]).executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  // --- approvals and releases -------------------------------------------------------------------------------------

  /** The chain of a request, in order. */
  async approvals(requestId: string): Promise<ApprovalRecord[]> {
    const rows = await this.db.selectFrom("recovery_approvals").selectAll().where("request_id", "=", requestId).orderBy("seq").execute();
    return rows.map((r) => ({
      requestId: r.request_id,
      seq: Number(r.seq),
      arbitratorId: r.arbitrator_id,
      decision: r.decision,
      approval: r.approval,
      approvalHash: r.approval_hash,
      recordedAt: Number(r.recorded_at),
    }));
  }

  /** Appends an approval at `seq`; false when the position or the arbitrator's decision is taken already. */
  async insertApproval(a: ApprovalRecord): Promise<boolean> {
    const r = await this.db
      .insertInto("recovery_approvals")
      .values({ request_id: a.requestId, seq: a.seq, arbitrator_id: a.arbitratorId, decision: a.decision, approval: a.approval, approval_hash: a.approvalHash, recorded_at: a.recordedAt })
      .onConflict((oc) => oc.doNothing())
      .returning("seq")
      .executeTakeFirst();
    return r !== undefined;
  }

  /** Records released shares; false when one of them was released already (call inside transaction()). */
  async insertReleases(rows: readonly ReleaseRecord[]): Promise<boolean> {
    for (const x of rows) {
      const r = await this.db
        .insertInto("recovery_releases")
        .values({ request_id: x.requestId, share_id: x.shareId, arbitrator_id: x.arbitratorId, release: x.release, recorded_at: x.recordedAt })
        .onConflict((oc) => oc.doNothing())
        .returning("share_id")
        .executeTakeFirst();
      if (!r) return false;
    }
    return true;
  }

  async releases(requestId: string): Promise<ReleaseRecord[]> {
    const rows = await this.db.selectFrom("recovery_releases").selectAll().where("request_id", "=", requestId).orderBy("share_id").execute();
    return rows.map((r) => ({ requestId: r.request_id, shareId: r.share_id, arbitratorId: r.arbitrator_id, release: r.release, recordedAt: Number(r.recorded_at) }));
  }
}
