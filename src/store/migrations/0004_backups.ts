// Migration 0004: backups of the user's enciphered data (issue 4; seed 001 claims 41, 48, FIG. 12 steps S10/S12).
// Times are epoch milliseconds (bigint), bytes BLOB / BYTEA, JSON as text — the conventions of src/store/db.ts.
//
//   backups   one row per version of one enciphered object of a user (src/store/backup-repository.ts). What is
//             stored is the envelope the terminal made (src/terminal/enciphered.ts): ciphertext under the card's
//             key management key, which only the card (or a card reissued with the same key) opens. A version is
//             never overwritten: (user_id, object_id, version) is unique, and a new version is a new row.

import { sql, type ColumnDefinitionBuilder, type Kysely, type Migration } from "kysely";
import type { Engine } from "../db.ts";

export function backupTables(engine: Engine): Migration {
  const bytes = engine === "postgres" ? "bytea" : "blob";
  const notNull = (c: ColumnDefinitionBuilder) => c.notNull();
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("backups")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("user_id", "text", (c) => c.notNull().references("users.id"))
        /** The card whose key the envelope was made for, when the uploader named it (it may be destroyed since). */
        .addColumn("card_id", "text", (c) => c.references("cards.id"))
        /** The user's name for the object (a file name, a record key); not secret. */
        .addColumn("object_id", "text", notNull)
        .addColumn("version", "integer", notNull)
        /** The envelope bytes: ciphertext only. */
        .addColumn("envelope", bytes, notNull)
        /** SHA-256 of the envelope bytes, lowercase hex. */
        .addColumn("sha256", "text", notNull)
        /** SHA-256 of the recipient's SubjectPublicKeyInfo (the envelope's kid): which key opens it. */
        .addColumn("recipient_kid", "text", notNull)
        .addColumn("created_at", "bigint", notNull)
        .addUniqueConstraint("backups_user_object_version", ["user_id", "object_id", "version"])
        .addCheckConstraint("backups_version", sql`version >= 1`)
        .addCheckConstraint("backups_object_id", sql`length(object_id) between 1 and 128`)
        .addCheckConstraint("backups_sha256", sql`length(sha256) = 64`)
        .addCheckConstraint("backups_recipient_kid", sql`length(recipient_kid) = 64`)
        .execute();
      await db.schema.createIndex("backups_card").on("backups").column("card_id").execute();
    },
    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable("backups").execute();
    },
  };
}
