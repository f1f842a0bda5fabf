// Migration 0001: the system DB of seed 000 FIG. 4/5 (para 0029-0030) and what the issuing flows need.
// Written once for both engines; the only per-engine choices are the byte-string type (BLOB / BYTEA) and how an
// auto-numbered primary key is spelled (SQLite's INTEGER PRIMARY KEY AUTOINCREMENT, PostgreSQL's identity).

import { sql, type ColumnDefinitionBuilder, type CreateTableBuilder, type Kysely, type Migration } from "kysely";
import type { Engine } from "../db.ts";

export function systemDb(engine: Engine): Migration {
  const bytes = engine === "postgres" ? "bytea" : "blob";
  /** An auto-numbered 64-bit primary key; page cursors and the rotation checkpoint use it. */
  const serialPk = <T extends string>(t: CreateTableBuilder<T, never>, name: string) =>
    engine === "postgres"
      ? t.addColumn(name, "bigint", (c) => c.primaryKey().generatedByDefaultAsIdentity())
      : t.addColumn(name, "integer", (c) => c.primaryKey().autoIncrement());
  const notNull = (c: ColumnDefinitionBuilder) => c.notNull();
  const oneOf = (column: string, values: readonly string[]) =>
    sql.raw(`${column} in (${values.map((v) => `'${v}'`).join(", ")})`);

  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("users")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("personal_data", "text", notNull)
        .addColumn("created_at", "bigint", notNull)
        .execute();

      let cards = db.schema
        .createTable("cards")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("user_id", "text", (c) => c.notNull().references("users.id"))
        .addColumn("status", "text", notNull)
        .addColumn("valid_from", "bigint", notNull)
        .addColumn("valid_until", "bigint", notNull)
        .addColumn("current_key_set_id", "text")
        .addColumn("last_package_seq", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("created_at", "bigint", notNull)
        .addColumn("updated_at", "bigint", notNull)
        .addCheckConstraint("cards_status", oneOf("status", ["issued", "active", "suspended", "retired"]))
        .addCheckConstraint("cards_validity", sql`valid_from <= valid_until`);
      // cards.current_key_set_id -> card_key_sets and card_key_sets.card_id -> cards form a cycle. SQLite checks
      // foreign keys when rows change, so it may name a table created next; PostgreSQL adds it afterwards.
      if (engine === "sqlite") {
        cards = cards.addForeignKeyConstraint("cards_current_key_set", ["current_key_set_id"], "card_key_sets", ["id"]);
      }
      await cards.execute();
      await db.schema.createIndex("cards_user").on("cards").column("user_id").execute();
      await db.schema.createIndex("cards_valid_until").on("cards").column("valid_until").execute();

      await db.schema
        .createTable("card_key_sets")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("card_id", "text", (c) => c.notNull().references("cards.id"))
        .addColumn("kvn", "integer", notNull)
        .addColumn("version", "integer", notNull)
        .addColumn("status", "text", notNull)
        .addColumn("valid_from", "bigint", notNull)
        .addColumn("valid_until", "bigint", notNull)
        .addColumn("custody_ref", "text", notNull)
        .addColumn("label", "text")
        .addColumn("created_at", "bigint", notNull)
        .addUniqueConstraint("card_key_sets_card_kvn", ["card_id", "kvn"])
        .addUniqueConstraint("card_key_sets_card_version", ["card_id", "version"])
        .addCheckConstraint("card_key_sets_status", oneOf("status", ["pending", "active", "retired"]))
        .addCheckConstraint("card_key_sets_kvn", sql`kvn between 1 and 127`)
        .execute();
      await db.schema.createIndex("card_key_sets_valid_until").on("card_key_sets").column("valid_until").execute();
      if (engine === "postgres") {
        await db.schema
          .alterTable("cards")
          .addForeignKeyConstraint("cards_current_key_set", ["current_key_set_id"], "card_key_sets", ["id"])
          .execute();
      }

      await db.schema
        .createTable("key_pairs")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("user_id", "text", (c) => c.notNull().references("users.id"))
        .addColumn("card_id", "text", (c) => c.references("cards.id"))
        .addColumn("slot", "text")
        .addColumn("algorithm", "text", notNull)
        .addColumn("public_key", bytes, notNull)
        .addColumn("status", "text", notNull)
        .addColumn("created_at", "bigint", notNull)
        .addCheckConstraint("key_pairs_status", oneOf("status", ["active", "superseded", "revoked", "destroyed"]))
        .execute();
      await db.schema.createIndex("key_pairs_card").on("key_pairs").column("card_id").execute();
      await db.schema.createIndex("key_pairs_user").on("key_pairs").column("user_id").execute();

      await serialPk(db.schema.createTable("wrapped_keys"), "id")
        .addColumn("key_pair_id", "text", (c) => c.notNull().references("key_pairs.id"))
        .addColumn("key_set_id", "text", (c) => c.notNull().references("card_key_sets.id"))
        .addColumn("wrapped", bytes, notNull)
        .addColumn("created_at", "bigint", notNull)
        .addUniqueConstraint("wrapped_keys_pair_set", ["key_pair_id", "key_set_id"])
        .execute();
      // Pages of one key set in primary-key order (the bulk re-wrap's scan).
      await db.schema.createIndex("wrapped_keys_set_id").on("wrapped_keys").columns(["key_set_id", "id"]).execute();

      await db.schema
        .createTable("certificates")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("serial", "text", (c) => c.notNull().unique())
        .addColumn("key_pair_id", "text", (c) => c.notNull().references("key_pairs.id"))
        .addColumn("der", bytes, notNull)
        .addColumn("subject", "text", notNull)
        .addColumn("not_before", "bigint", notNull)
        .addColumn("not_after", "bigint", notNull)
        .addColumn("revoked_at", "bigint")
        .addColumn("revocation_reason", "text")
        .addColumn("created_at", "bigint", notNull)
        .execute();
      await db.schema.createIndex("certificates_key_pair").on("certificates").column("key_pair_id").execute();
      await db.schema.createIndex("certificates_not_after").on("certificates").column("not_after").execute();

      await serialPk(db.schema.createTable("packages"), "id")
        .addColumn("card_id", "text", (c) => c.notNull().references("cards.id"))
        .addColumn("seq", "bigint", notNull)
        .addColumn("body", bytes, notNull)
        .addColumn("status", "text", notNull)
        .addColumn("created_at", "bigint", notNull)
        .addColumn("fetched_at", "bigint")
        .addColumn("acknowledged_at", "bigint")
        .addUniqueConstraint("packages_card_seq", ["card_id", "seq"])
        .addCheckConstraint("packages_status", oneOf("status", ["pending", "fetched", "acknowledged"]))
        .addCheckConstraint("packages_seq", sql`seq > 0`)
        .execute();

      await db.schema
        .createTable("rotations")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("card_id", "text", (c) => c.notNull().references("cards.id"))
        .addColumn("to_card_id", "text", (c) => c.references("cards.id"))
        .addColumn("from_key_set_id", "text", (c) => c.notNull().references("card_key_sets.id"))
        .addColumn("to_key_set_id", "text", (c) => c.references("card_key_sets.id"))
        .addColumn("strategy", "text", notNull)
        .addColumn("status", "text", notNull)
        .addColumn("cursor", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("total", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("done", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("approved_by", "text")
        .addColumn("approved_at", "bigint")
        .addColumn("error", "text")
        .addColumn("created_at", "bigint", notNull)
        .addColumn("updated_at", "bigint", notNull)
        .addCheckConstraint("rotations_strategy", oneOf("strategy", ["embodiment3", "embodiment4", "embodiment5"]))
        .addCheckConstraint(
          "rotations_status",
          oneOf("status", ["proposed", "approved", "running", "completed", "failed", "cancelled"]),
        )
        .execute();
      await db.schema.createIndex("rotations_card").on("rotations").column("card_id").execute();
      await db.schema.createIndex("rotations_status").on("rotations").column("status").execute();

      await serialPk(db.schema.createTable("events"), "id")
        .addColumn("type", "text", notNull)
        .addColumn("subject", "text", notNull)
        .addColumn("payload", "text", notNull)
        .addColumn("dedup_key", "text", (c) => c.unique())
        .addColumn("created_at", "bigint", notNull)
        .addColumn("delivered_at", "bigint")
        .addColumn("attempts", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("last_error", "text")
        .execute();
      await db.schema.createIndex("events_undelivered").on("events").columns(["delivered_at", "id"]).execute();

      await db.schema
        .createTable("webhooks")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("url", "text", notNull)
        .addColumn("event_types", "text", notNull)
        .addColumn("secret_ref", "text")
        .addColumn("created_at", "bigint", notNull)
        .addColumn("disabled_at", "bigint")
        .execute();

      await db.schema
        .createTable("operators")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("name", "text", (c) => c.notNull().unique())
        .addColumn("password_hash", "text")
        .addColumn("token_hash", "text", (c) => c.unique())
        .addColumn("roles", "text", notNull)
        .addColumn("created_at", "bigint", notNull)
        .addColumn("disabled_at", "bigint")
        .execute();

      await db.schema
        .createTable("audit_log")
        .addColumn("seq", "bigint", (c) => c.primaryKey())
        .addColumn("at", "bigint", notNull)
        .addColumn("actor", "text", notNull)
        .addColumn("action", "text", notNull)
        .addColumn("subject", "text", notNull)
        .addColumn("details", "text", notNull)
        .addColumn("prev_hash", "text", notNull)
        .addColumn("hash", "text", notNull)
        .addCheckConstraint("audit_log_seq", sql`seq > 0`)
        .execute();
    },

    async down(db: Kysely<unknown>): Promise<void> {
      if (engine === "postgres") {
        await db.schema.alterTable("cards").dropConstraint("cards_current_key_set").execute();
      }
      for (const t of ["audit_log", "operators", "webhooks", "events", "rotations", "packages", "certificates",
        "wrapped_keys", "key_pairs", "card_key_sets", "cards", "users"]) {
        await db.schema.dropTable(t).execute();
      }
    },
  };
}
