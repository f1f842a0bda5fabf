// Migration 0007: the lifecycle of key reproduction records (seed 001 embodiment 3), kept by
// src/store/recovery-repository.ts for src/recovery/service.ts.
//
//   recovery_arbitrators       + key_version (the version of the current keys, 1 at registration; a rotation is a
//                                conditional update from one version to the next), + disabled_at / disabled_by /
//                                disabled_reason (deregistration: the row stays, its id is never reused)
//   recovery_arbitrator_keys   every key version of every arbitrator (signing and encryption public keys, SPKI
//                                DER), with the interval it was current in and the signed rotation document that
//                                made it: approvals and approver lists recorded before a rotation are re-verified
//                                with the key that verified them. Backfilled with version 1 of every arbitrator.
//   recovery_approvals         + signing_key_version (the version that verified the approval; NULL for approvals
//                                recorded before this migration: version 1, the only version there was)
//   recovery_requests          + approver_list_key_version (likewise for the approver list), + the reproduction
//                                lease: reproduction_claim (a random id of the claim, so only its holder finishes
//                                or releases it), reproduction_claimed_by / _at, reproduction_lease_until (after
//                                which another reproduction may take the request over; NULL: no lease recorded,
//                                i.e. claimed before this migration — may be taken over at once)
//                              + an index on (filed_at, request_id), the order requests are paged in
//
// Public values only: public keys, ids, times, signed documents. Times are epoch milliseconds (bigint), bytes
// BLOB / BYTEA — the conventions of src/store/db.ts. One column per ALTER TABLE (SQLite).

import { sql, type ColumnDefinitionBuilder, type Kysely, type Migration } from "kysely";
import type { Engine } from "../db.ts";

export function recoveryLifecycle(engine: Engine): Migration {
  const bytes = engine === "postgres" ? "bytea" : "blob";
  const notNull = (c: ColumnDefinitionBuilder) => c.notNull();
  const addColumns = async (db: Kysely<unknown>, table: string, columns: [string, "text" | "bigint" | "integer"][]) => {
    for (const [name, type] of columns) await db.schema.alterTable(table).addColumn(name, type).execute();
  };

  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .alterTable("recovery_arbitrators")
        .addColumn("key_version", "integer", (c) => c.notNull().defaultTo(1))
        .execute();
      await addColumns(db, "recovery_arbitrators", [
        ["disabled_at", "bigint"],
        ["disabled_by", "text"],
        ["disabled_reason", "text"],
      ]);

      await db.schema
        .createTable("recovery_arbitrator_keys")
        .addColumn("arbitrator_id", "text", (c) => c.notNull().references("recovery_arbitrators.id"))
        .addColumn("version", "integer", notNull)
        .addColumn("signing_public_key", bytes, notNull)
        .addColumn("encryption_public_key", bytes, notNull)
        .addColumn("valid_from", "bigint", notNull)
        /** When the next version replaced it; NULL for the current version. */
        .addColumn("retired_at", "bigint")
        /** The KeyRotation document (JSON) signed with the previous signing key; NULL for version 1. */
        .addColumn("rotation", "text")
        .addColumn("recorded_by", "text", notNull)
        .addPrimaryKeyConstraint("recovery_arbitrator_keys_pk", ["arbitrator_id", "version"])
        .addCheckConstraint("recovery_arbitrator_keys_version", sql`version >= 1`)
        .execute();
      await sql`insert into recovery_arbitrator_keys (arbitrator_id, version, signing_public_key, encryption_public_key, valid_from, recorded_by)
                select id, 1, signing_public_key, encryption_public_key, registered_at, registered_by from recovery_arbitrators`.execute(db);

      await addColumns(db, "recovery_approvals", [["signing_key_version", "integer"]]);
      await addColumns(db, "recovery_requests", [
        ["approver_list_key_version", "integer"],
        ["reproduction_claim", "text"],
        ["reproduction_claimed_by", "text"],
        ["reproduction_claimed_at", "bigint"],
        ["reproduction_lease_until", "bigint"],
      ]);
      await db.schema.createIndex("recovery_requests_filed").on("recovery_requests").columns(["filed_at", "request_id"]).execute();
    },

    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropIndex("recovery_requests_filed").execute();
      for (const c of ["approver_list_key_version", "reproduction_claim", "reproduction_claimed_by", "reproduction_claimed_at", "reproduction_lease_until"])
        await db.schema.alterTable("recovery_requests").dropColumn(c).execute();
      await db.schema.alterTable("recovery_approvals").dropColumn("signing_key_version").execute();
      await db.schema.dropTable("recovery_arbitrator_keys").execute();
      for (const c of ["key_version", "disabled_at", "disabled_by", "disabled_reason"]) await db.schema.alterTable("recovery_arbitrators").dropColumn(c).execute();
    },
  };
}
