// Migration 0002: the certification authority's records (issue 3 §4; seed 000 ST19-ST21), kept by
// src/store/ca-repository.ts behind src/ca/repository.ts's CaRepository. Every table is keyed by `ca_id`, so a
// root and its issuing CA (or several CAs) share one database without sharing serials or CRL numbers.
//
//   ca_issued_certificates  every certificate the CA signed; (ca_id, serial) is the primary key
//   ca_certified_keys       SHA-256 of every certified SubjectPublicKeyInfo, primary key (ca_id, sha256): the
//                           insert that claims a key is what makes "duplicate-public-key" atomic under concurrency
//   ca_revocations          one row per revoked serial; the first revocation is kept
//   ca_crl_numbers          one counter row per CA, advanced by an atomic upsert … RETURNING (never repeats)
//   ca_authorities          the CA's own certificate (and the chain above it) and its custody key label, so a
//                           restarted CA signs under the same certificate
//
// Times are epoch milliseconds (bigint), bytes BLOB / BYTEA, JSON as text — the conventions of src/store/db.ts.

import { sql, type ColumnDefinitionBuilder, type Kysely, type Migration } from "kysely";
import type { Engine } from "../db.ts";

export function caTables(engine: Engine): Migration {
  const bytes = engine === "postgres" ? "bytea" : "blob";
  const notNull = (c: ColumnDefinitionBuilder) => c.notNull();
  // RFC 5280 §5.3.1 CRLReason names (src/ca/crl.ts REVOCATION_REASONS), spelled out: a migration never changes.
  const reasons = ["unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded", "cessationOfOperation",
    "certificateHold", "privilegeWithdrawn", "aACompromise"].map((r) => `'${r}'`).join(", ");

  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("ca_issued_certificates")
        .addColumn("ca_id", "text", notNull)
        .addColumn("serial", "text", notNull)
        .addColumn("subject", "text", notNull)
        .addColumn("public_key_sha256", "text", notNull)
        .addColumn("profile", "text", notNull)
        .addColumn("not_before", "bigint", notNull)
        .addColumn("not_after", "bigint", notNull)
        .addColumn("issued_at", "bigint", notNull)
        .addColumn("der", bytes, notNull)
        .addColumn("applicant_id", "text")
        .addPrimaryKeyConstraint("ca_issued_certificates_pk", ["ca_id", "serial"])
        .addCheckConstraint("ca_issued_certificates_serial", sql`length(serial) between 1 and 40`)
        .addCheckConstraint("ca_issued_certificates_validity", sql`not_before <= not_after`)
        .execute();
      await db.schema.createIndex("ca_issued_certificates_key").on("ca_issued_certificates").columns(["ca_id", "public_key_sha256"]).execute();

      await db.schema
        .createTable("ca_certified_keys")
        .addColumn("ca_id", "text", notNull)
        .addColumn("public_key_sha256", "text", notNull)
        /** The first certificate issued for the key. */
        .addColumn("first_serial", "text", notNull)
        .addPrimaryKeyConstraint("ca_certified_keys_pk", ["ca_id", "public_key_sha256"])
        .addForeignKeyConstraint("ca_certified_keys_first", ["ca_id", "first_serial"], "ca_issued_certificates", ["ca_id", "serial"])
        .execute();

      await db.schema
        .createTable("ca_revocations")
        .addColumn("ca_id", "text", notNull)
        .addColumn("serial", "text", notNull)
        .addColumn("reason", "text", notNull)
        .addColumn("revoked_at", "bigint", notNull)
        .addColumn("invalidity_date", "bigint")
        .addPrimaryKeyConstraint("ca_revocations_pk", ["ca_id", "serial"])
        .addCheckConstraint("ca_revocations_reason", sql.raw(`reason in (${reasons})`))
        .execute();

      await db.schema
        .createTable("ca_crl_numbers")
        .addColumn("ca_id", "text", (c) => c.primaryKey())
        .addColumn("last", "bigint", notNull)
        .addCheckConstraint("ca_crl_numbers_last", sql`last > 0`)
        .execute();

      await db.schema
        .createTable("ca_authorities")
        .addColumn("ca_id", "text", (c) => c.primaryKey())
        .addColumn("key_label", "text", notNull)
        .addColumn("certificate", bytes, notNull)
        /** Certificates above this CA, nearest first, as concatenated PEM; empty for a self-signed root. */
        .addColumn("issuer_chain", "text", notNull)
        .addColumn("created_at", "bigint", notNull)
        .execute();
    },

    async down(db: Kysely<unknown>): Promise<void> {
      for (const t of ["ca_authorities", "ca_crl_numbers", "ca_revocations", "ca_certified_keys", "ca_issued_certificates"]) {
        await db.schema.dropTable(t).execute();
      }
    },
  };
}
