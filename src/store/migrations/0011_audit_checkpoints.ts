// Migration 0011: signed checkpoints of the audit log (issue 15 §3; src/tlog/, src/issuer/audit-checkpoints.ts).
//
//   audit_checkpoints   one row per checkpoint the issuer signed: the tree size (the number of audit entries it
//                       covers), the RFC 9162 root hash over them and the signed note (C2SP tlog-checkpoint) as
//                       written outside the server. The log's leaves are the entries' chain hashes (audit_log.hash),
//                       so a chain written before this migration needs no change: the first checkpoint covers it.
//
// Public values only. Times are epoch milliseconds (bigint), the conventions of src/store/db.ts.

import { sql, type ColumnDefinitionBuilder, type Kysely, type Migration } from "kysely";
import type { Engine } from "../db.ts";

export function auditCheckpoints(_engine: Engine): Migration {
  const notNull = (c: ColumnDefinitionBuilder) => c.notNull();
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("audit_checkpoints")
        .addColumn("size", "bigint", (c) => c.primaryKey())
        /** Hex, 64 digits. */
        .addColumn("root_hash", "text", notNull)
        .addColumn("note", "text", notNull)
        .addColumn("created_at", "bigint", notNull)
        .addCheckConstraint("audit_checkpoints_size", sql`size >= 0`)
        .execute();
    },
    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable("audit_checkpoints").execute();
    },
  };
}
