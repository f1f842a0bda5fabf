// The approval chains of reproduction requests and the shares released for them (issue 4; seed 001 embodiment 3) in
// SQL, one code path for SQLite and PostgreSQL (tables: recovery-tables.ts). One decision per arbitrator and request,
// one approval per chain position (unique keys): of two approvals racing for the same position, one is recorded; a
// share is released once. SqlRecoveryRepository (recovery-repository.ts) delegates to it.
//
// Never: a share in clear — a release is the sealed document the arbitrator sent.

import type { Kysely, Transaction } from "kysely";
import type { Database, Db } from "./db.ts";
import { recoveryTables, type RecoveryTables } from "./recovery-tables.ts";
import type { ApprovalRecord, ReleaseRecord } from "../recovery/records.ts";

export type { ApprovalRecord, ReleaseRecord };

export class RecoveryApprovalRepository {
  private readonly db: Kysely<RecoveryTables>;

  /** @param db the system DB migrated so that 0003_recovery and 0007_recovery_lifecycle exist, or a transaction of it */
  constructor(db: Db | Kysely<unknown> | Transaction<Database>) {
    this.db = recoveryTables(db);
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
      ...(r.signing_key_version !== null ? { signingKeyVersion: Number(r.signing_key_version) } : {}),
    }));
  }

  /** Appends an approval at `seq`; false when the position or the arbitrator's decision is taken already. */
  async insertApproval(a: ApprovalRecord): Promise<boolean> {
    const r = await this.db
      .insertInto("recovery_approvals")
      .values({
        request_id: a.requestId,
        seq: a.seq,
        arbitrator_id: a.arbitratorId,
        decision: a.decision,
        approval: a.approval,
        approval_hash: a.approvalHash,
        recorded_at: a.recordedAt,
        signing_key_version: a.signingKeyVersion ?? null,
      })
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
