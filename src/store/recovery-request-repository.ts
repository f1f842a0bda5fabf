// Reproduction requests (issue 4; seed 001 embodiment 3) in SQL, one code path for SQLite and PostgreSQL (tables:
// recovery-tables.ts): filing, the request's state, and the reproduction lease (migrations/0007_recovery_lifecycle.ts).
// At most one unfinished request per card (partial unique index on card_id); every state change is a conditional
// update from the states it may come from, so a request is claimed for reproduction once; the claim, its renewal,
// a takeover of an expired lease and the release are conditional updates on the claim's random id, so of two
// processes one holds the request at a time, and a holder that lost it can neither finish nor release it.
// SqlRecoveryRepository (recovery-repository.ts) delegates to it.
//
// Never: decides whether a request may move (src/recovery/service.ts does); it holds the documents as handed in.

import type { Kysely, Transaction } from "kysely";
import type { Database, Db } from "./db.ts";
import { recoveryTables, type RecoveryRequestsTable, type RecoveryTables, type RequestStatus } from "./recovery-tables.ts";
import type { ReproductionClaim, RequestRecord } from "../recovery/records.ts";

export type { ReproductionClaim, RequestRecord };

const toRequest = (r: RecoveryRequestsTable): RequestRecord => {
  const rec: RequestRecord = {
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
  };
  // the lifecycle fields (0007) only when set, so a record reads back as it was inserted
  if (r.approver_list_key_version !== null) rec.approverListKeyVersion = Number(r.approver_list_key_version);
  if (r.reproduction_claim !== null) rec.reproductionClaim = r.reproduction_claim;
  if (r.reproduction_claimed_by !== null) rec.reproductionClaimedBy = r.reproduction_claimed_by;
  if (r.reproduction_claimed_at !== null) rec.reproductionClaimedAt = Number(r.reproduction_claimed_at);
  if (r.reproduction_lease_until !== null) rec.reproductionLeaseUntil = Number(r.reproduction_lease_until);
  return rec;
};

export class RecoveryRequestRepository {
  private readonly db: Kysely<RecoveryTables>;

  /** @param db the system DB migrated so that 0003_recovery and 0007_recovery_lifecycle exist, or a transaction of it */
  constructor(db: Db | Kysely<unknown> | Transaction<Database>) {
    this.db = recoveryTables(db);
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
        approver_list_key_version: null,
        reproduction_claim: null,
        reproduction_claimed_by: null,
        reproduction_claimed_at: null,
        reproduction_lease_until: null,
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

  /**
   * Requests, newest first (filed_at, then request_id, descending: a total order), filtered by status and/or card;
   * `after` continues after the request at that position (keyset pagination).
   */
  async requests(filter: { statuses?: readonly RequestStatus[]; cardId?: string; limit?: number; after?: { filedAt: number; requestId: string } } = {}): Promise<RequestRecord[]> {
    let q = this.db.selectFrom("recovery_requests").selectAll();
    if (filter.statuses) {
      if (filter.statuses.length === 0) return [];
      q = q.where("status", "in", [...filter.statuses]);
    }
    if (filter.cardId !== undefined) q = q.where("card_id", "=", filter.cardId);
    const after = filter.after;
    if (after !== undefined) q = q.where((eb) => eb.or([eb("filed_at", "<", after.filedAt), eb.and([eb("filed_at", "=", after.filedAt), eb("request_id", "<", after.requestId)])]));
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
    fields: { statusDetail?: string | null; approverList?: string; approverListKeyVersion?: number; reproducedBy?: string; reproducedAt?: number } = {},
  ): Promise<boolean> {
    const set: Partial<RecoveryRequestsTable> = { status: to, updated_at: at };
    if (fields.statusDetail !== undefined) set.status_detail = fields.statusDetail;
    if (fields.approverList !== undefined) set.approver_list = fields.approverList;
    if (fields.approverListKeyVersion !== undefined) set.approver_list_key_version = fields.approverListKeyVersion;
    if (fields.reproducedBy !== undefined) set.reproduced_by = fields.reproducedBy;
    if (fields.reproducedAt !== undefined) set.reproduced_at = fields.reproducedAt;
    const r = await this.db
      .updateTable("recovery_requests")
      .set(set)
      .where("request_id", "=", requestId)
      .where("status", "in", [...from])
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  // --- the reproduction lease --------------------------------------------------------------------------------------

  /**
   * Claims a request for one reproduction: from "satisfied" (`previous` undefined), or — a takeover — from a
   * "reproducing" request still held by the claim `previous` (null: a claim without an id, from before leases)
   * whose lease ended at or before `c.at` (or was never recorded). One statement: of concurrent claims one wins.
   */
  async claimReproduction(requestId: string, c: ReproductionClaim, previous?: string | null): Promise<boolean> {
    let q = this.db
      .updateTable("recovery_requests")
      .set({
        status: "reproducing",
        status_detail: null,
        updated_at: c.at,
        reproduction_claim: c.claim,
        reproduction_claimed_by: c.by,
        reproduction_claimed_at: c.at,
        reproduction_lease_until: c.leaseUntil,
      })
      .where("request_id", "=", requestId);
    if (previous === undefined) q = q.where("status", "=", "satisfied");
    else {
      q = q.where("status", "=", "reproducing").where((eb) => eb.or([eb("reproduction_lease_until", "is", null), eb("reproduction_lease_until", "<=", c.at)]));
      q = previous === null ? q.where("reproduction_claim", "is", null) : q.where("reproduction_claim", "=", previous);
    }
    return Number((await q.executeTakeFirst()).numUpdatedRows) === 1;
  }

  /** Extends the lease of the claim `claim` to `leaseUntil`; false when the request is no longer held by it. */
  async renewReproduction(requestId: string, claim: string, leaseUntil: number): Promise<boolean> {
    const r = await this.db
      .updateTable("recovery_requests")
      .set({ reproduction_lease_until: leaseUntil })
      .where("request_id", "=", requestId)
      .where("status", "=", "reproducing")
      .where("reproduction_claim", "=", claim)
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  /**
   * Ends the claim `claim` (null: a claim without an id, from before leases): the request moves to `to`
   * ("reproduced" when done, "satisfied" to be reproduced again) and the claim is cleared. False (nothing changes)
   * when the request is not "reproducing" under that claim — another reproduction took it over.
   */
  async endReproduction(
    requestId: string,
    claim: string | null,
    to: "reproduced" | "satisfied",
    at: number,
    fields: { statusDetail?: string | null; reproducedBy?: string; reproducedAt?: number } = {},
  ): Promise<boolean> {
    const set: Partial<RecoveryRequestsTable> = {
      status: to,
      updated_at: at,
      reproduction_claim: null,
      reproduction_claimed_by: null,
      reproduction_claimed_at: null,
      reproduction_lease_until: null,
    };
    if (fields.statusDetail !== undefined) set.status_detail = fields.statusDetail;
    if (fields.reproducedBy !== undefined) set.reproduced_by = fields.reproducedBy;
    if (fields.reproducedAt !== undefined) set.reproduced_at = fields.reproducedAt;
    let q = this.db.updateTable("recovery_requests").set(set).where("request_id", "=", requestId).where("status", "=", "reproducing");
    q = claim === null ? q.where("reproduction_claim", "is", null) : q.where("reproduction_claim", "=", claim);
    return Number((await q.executeTakeFirst()).numUpdatedRows) === 1;
  }
}
