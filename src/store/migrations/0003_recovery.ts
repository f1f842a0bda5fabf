// Migration 0003: key reproduction by arbitrators (issue 4; seed 001 embodiment 3, FIG. 7-12), kept by
// src/store/recovery-repository.ts for src/recovery/service.ts.
//
//   recovery_arbitrators      registered arbitrators: id, roles, their two P-256 public keys (SPKI DER)
//   recovery_policies         the reproduction policy of each card (step S1), canonical JSON and its digest
//   recovery_escrows          one escrow per card (step S3): the EscrowRecord (E sealed under K, commitments — no
//                             share, no key in clear), the policy it was split under, the registered public key
//                             and certificate (FIG. 10 unit 23)
//   recovery_share_envelopes  each share sealed to its arbitrator's public key (ShareEnvelope JSON)
//   recovery_devices          the registered device secret ID of each card (FIG. 10 unit 24), as a digest only
//   recovery_requests         reproduction requests (steps S5-S9) and their state; at most one unfinished request
//                             per card (a partial unique index)
//   recovery_approvals        the signed approval chain of a request, in order (seq), one decision per arbitrator
//   recovery_releases         shares released by approvers, re-sealed to the reproduction device's key in custody
//
// Nothing here is secret in clear: the only secret-derived values are sealed (under K, to an arbitrator, to the
// reproduction device) or a SHA-256 digest of a 128-bit random device secret ID.
// Times are epoch milliseconds (bigint), bytes BLOB / BYTEA, JSON as text — the conventions of src/store/db.ts.

import { sql, type ColumnDefinitionBuilder, type Kysely, type Migration } from "kysely";
import type { Engine } from "../db.ts";

/** Request states (src/recovery/service.ts RequestStatus), spelled out: a migration never changes. */
const REQUEST_STATUSES = ["open", "satisfied", "reproducing", "reproduced", "ended", "withdrawn"] as const;
/** The states of a request that is not finished; a card has at most one such request. */
const UNFINISHED = ["open", "satisfied", "reproducing"] as const;

export function recoveryTables(engine: Engine): Migration {
  const bytes = engine === "postgres" ? "bytea" : "blob";
  const notNull = (c: ColumnDefinitionBuilder) => c.notNull();
  const oneOf = (column: string, values: readonly string[]) => sql.raw(`${column} in (${values.map((v) => `'${v}'`).join(", ")})`);

  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("recovery_arbitrators")
        .addColumn("id", "text", (c) => c.primaryKey())
        /** JSON array of role names, e.g. ["user"], ["service provider"]. */
        .addColumn("roles", "text", notNull)
        .addColumn("display_name", "text")
        .addColumn("signing_public_key", bytes, notNull)
        .addColumn("encryption_public_key", bytes, notNull)
        .addColumn("registered_by", "text", notNull)
        .addColumn("registered_at", "bigint", notNull)
        .execute();

      await db.schema
        .createTable("recovery_policies")
        .addColumn("card_id", "text", (c) => c.primaryKey())
        .addColumn("policy", "text", notNull)
        .addColumn("policy_digest", "text", notNull)
        .addColumn("set_by", "text", notNull)
        .addColumn("set_at", "bigint", notNull)
        .execute();

      await db.schema
        .createTable("recovery_escrows")
        .addColumn("escrow_id", "text", (c) => c.primaryKey())
        .addColumn("card_id", "text", (c) => c.notNull().unique())
        .addColumn("applicant_id", "text", notNull)
        /** The policy the escrow was split under (canonical JSON): requests are judged under it. */
        .addColumn("policy", "text", notNull)
        .addColumn("policy_digest", "text", notNull)
        /** The EscrowRecord (JSON): the wrapped key E sealed under K, and the commitments to the shares. */
        .addColumn("record", "text", notNull)
        /** Custody label of the key E is wrapped under. */
        .addColumn("wrapped_under", "text", notNull)
        .addColumn("alg", "text", notNull)
        .addColumn("slot", "text", notNull)
        /** SubjectPublicKeyInfo DER of the escrowed key pair (FIG. 10 unit 23). */
        .addColumn("public_key", bytes, notNull)
        .addColumn("public_key_sha256", "text", notNull)
        .addColumn("certificate", bytes, notNull)
        .addColumn("serial", "text", notNull)
        .addColumn("created_by", "text", notNull)
        .addColumn("created_at", "bigint", notNull)
        .addCheckConstraint("recovery_escrows_alg", oneOf("alg", ["P256", "P384", "RSA2048", "RSA3072"]))
        .execute();

      await db.schema
        .createTable("recovery_share_envelopes")
        .addColumn("escrow_id", "text", (c) => c.notNull().references("recovery_escrows.escrow_id").onDelete("cascade"))
        .addColumn("share_id", "text", notNull)
        .addColumn("arbitrator_id", "text", (c) => c.notNull().references("recovery_arbitrators.id"))
        /** ShareEnvelope JSON: header in clear, the share value sealed to the arbitrator. */
        .addColumn("envelope", "text", notNull)
        .addPrimaryKeyConstraint("recovery_share_envelopes_pk", ["escrow_id", "share_id"])
        .execute();
      await db.schema.createIndex("recovery_share_envelopes_arbitrator").on("recovery_share_envelopes").column("arbitrator_id").execute();

      await db.schema
        .createTable("recovery_devices")
        .addColumn("card_id", "text", (c) => c.primaryKey())
        /** Labelled SHA-256 of the card's secret ID, hex; unique: one physical card serves one card record. */
        .addColumn("secret_id_digest", "text", (c) => c.notNull().unique())
        /** The card's SCP03 key set reference in custody (JSON; a handle, not a key). */
        .addColumn("key_set", "text", notNull)
        /** 1 for the card issued first, +1 for each replacement (FIG. 11-12). */
        .addColumn("generation", "integer", notNull)
        .addColumn("registered_at", "bigint", notNull)
        .addCheckConstraint("recovery_devices_generation", sql`generation >= 1`)
        .execute();

      await db.schema
        .createTable("recovery_requests")
        .addColumn("request_id", "text", (c) => c.primaryKey())
        .addColumn("card_id", "text", notNull)
        .addColumn("escrow_id", "text", (c) => c.notNull().references("recovery_escrows.escrow_id"))
        .addColumn("kind", "text", notNull)
        /** The ReproductionRequest the arbitrators sign over (JSON), and its digest. */
        .addColumn("request", "text", notNull)
        .addColumn("request_digest", "text", notNull)
        .addColumn("status", "text", notNull)
        /** Why it ended (the failed condition) or was withdrawn; the last refused reproduction attempt otherwise. */
        .addColumn("status_detail", "text")
        /** The ApproverList signed by the policy's author (JSON), once submitted. */
        .addColumn("approver_list", "text")
        .addColumn("filed_by", "text", notNull)
        .addColumn("filed_at", "bigint", notNull)
        .addColumn("updated_at", "bigint", notNull)
        .addColumn("reproduced_by", "text")
        .addColumn("reproduced_at", "bigint")
        .addCheckConstraint("recovery_requests_kind", oneOf("kind", ["key-lost", "card-destroyed"]))
        .addCheckConstraint("recovery_requests_status", oneOf("status", REQUEST_STATUSES))
        .execute();
      await db.schema.createIndex("recovery_requests_card").on("recovery_requests").column("card_id").execute();
      await db.schema.createIndex("recovery_requests_status").on("recovery_requests").column("status").execute();
      // Partial unique index: same DDL on SQLite (3.8+) and PostgreSQL.
      await sql`create unique index recovery_requests_one_unfinished on recovery_requests (card_id) where ${oneOf("status", UNFINISHED)}`.execute(db);

      await db.schema
        .createTable("recovery_approvals")
        .addColumn("request_id", "text", (c) => c.notNull().references("recovery_requests.request_id"))
        /** 0, 1, 2 ... in the order the chain links them. */
        .addColumn("seq", "integer", notNull)
        .addColumn("arbitrator_id", "text", notNull)
        .addColumn("decision", "text", notNull)
        /** The signed Approval (JSON), exactly as received. */
        .addColumn("approval", "text", notNull)
        .addColumn("approval_hash", "text", notNull)
        .addColumn("recorded_at", "bigint", notNull)
        .addPrimaryKeyConstraint("recovery_approvals_pk", ["request_id", "seq"])
        .addUniqueConstraint("recovery_approvals_one_decision", ["request_id", "arbitrator_id"])
        .addCheckConstraint("recovery_approvals_decision", oneOf("decision", ["approve", "refuse"]))
        .addCheckConstraint("recovery_approvals_seq", sql`seq >= 0`)
        .execute();

      await db.schema
        .createTable("recovery_releases")
        .addColumn("request_id", "text", (c) => c.notNull().references("recovery_requests.request_id"))
        .addColumn("share_id", "text", notNull)
        .addColumn("arbitrator_id", "text", notNull)
        /** ShareRelease JSON: the share sealed to the reproduction device's key pair in custody. */
        .addColumn("release", "text", notNull)
        .addColumn("recorded_at", "bigint", notNull)
        .addPrimaryKeyConstraint("recovery_releases_pk", ["request_id", "share_id"])
        .execute();
    },

    async down(db: Kysely<unknown>): Promise<void> {
      for (const t of [
        "recovery_releases",
        "recovery_approvals",
        "recovery_requests",
        "recovery_devices",
        "recovery_share_envelopes",
        "recovery_escrows",
        "recovery_policies",
        "recovery_arbitrators",
      ]) {
        await db.schema.dropTable(t).execute();
      }
    },
  };
}
