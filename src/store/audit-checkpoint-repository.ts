// The audit log as a transparency log (issue 15 §3): its leaves — the entries' chain hashes, in seq order — and the
// checkpoints signed over them (table: migrations/0011_audit_checkpoints.ts), one code path for SQLite and PostgreSQL.
// The port it implements is the issuer's (src/issuer/ports.ts AuditCheckpointRecords); Store.auditCheckpoints hands it out.

import type { Kysely } from "kysely";
import type { Db } from "./db.ts";
import type { AuditCheckpointRecords } from "../issuer/ports.ts";
import type { StoredCheckpoint } from "../issuer/records.ts";

export interface AuditCheckpointsTable {
  size: number;
  root_hash: string;
  note: string;
  created_at: number;
}

// a type alias, not an interface: Kysely's withTables wants an index-signature-compatible record
export type AuditCheckpointTables = { audit_checkpoints: AuditCheckpointsTable };

export type { StoredCheckpoint };

const toCheckpoint = (r: AuditCheckpointsTable): StoredCheckpoint => ({ size: Number(r.size), rootHash: r.root_hash, note: r.note, createdAt: Number(r.created_at) });

export class AuditCheckpointRepository implements AuditCheckpointRecords {
  private readonly db: Kysely<import("./db.ts").Database & AuditCheckpointTables>;

  /** @param db the system DB, migrated so that 0011_audit_checkpoints exists */
  constructor(db: Db | Kysely<unknown>) {
    this.db = (db as Db).withTables<AuditCheckpointTables>();
  }

  /**
   * The chain hashes of the audit entries 1..`upTo` (all when not given), in seq order, with the seq of each: one
   * query, so one consistent snapshot of the log.
   */
  async chainHashes(upTo?: number): Promise<{ seq: number; hash: string }[]> {
    let q = this.db.selectFrom("audit_log").select(["seq", "hash"]).orderBy("seq");
    if (upTo !== undefined) q = q.where("seq", "<=", upTo);
    return (await q.execute()).map((r) => ({ seq: Number(r.seq), hash: r.hash }));
  }

  /** Records a checkpoint; one of the same size already recorded is kept (two servers signing the same tree). */
  async add(c: StoredCheckpoint): Promise<void> {
    await this.db
      .insertInto("audit_checkpoints")
      .values({ size: c.size, root_hash: c.rootHash, note: c.note, created_at: c.createdAt })
      .onConflict((oc) => oc.column("size").doNothing())
      .execute();
  }

  async latest(): Promise<StoredCheckpoint | undefined> {
    const r = await this.db.selectFrom("audit_checkpoints").selectAll().orderBy("size", "desc").limit(1).executeTakeFirst();
    return r && toCheckpoint(r);
  }

  async bySize(size: number): Promise<StoredCheckpoint | undefined> {
    const r = await this.db.selectFrom("audit_checkpoints").selectAll().where("size", "=", size).executeTakeFirst();
    return r && toCheckpoint(r);
  }
}
