// Migration 0017: the software keystore in the store, and which keystore this database's card keys live in
// (issue 16 §3).
//
//   custody_keystore          at most one row (slot = 'keystore'): the keystore's random id and its header (JSON:
//                             format, how the KEK is made — raw, or scrypt salt and cost — and the check value sealed
//                             under the KEK). Never the KEK.
//   custody_keystore_entries  one row per key: label (primary key: unique across every server on this database),
//                             the entry (JSON: metadata and the secret sealed with AES-256-GCM under the KEK, bound to
//                             label and metadata, exactly as in a keystore file), created_at
//   custody_binding           at most one row (slot = 'custody'): the keystore the card keys of this database live in,
//                             as the first server recorded it: keystore id, kind (file | store | pkcs11), the HSM
//                             token's label, the host name and the file's path (src/server/custody-binding.ts)
//
// No secret in clear in any of them. Times are epoch milliseconds (bigint), the conventions of src/store/db.ts.

import { sql, type ColumnDefinitionBuilder, type Kysely, type Migration } from "kysely";
import type { Engine } from "../db.ts";

export function custodyKeystore(_engine: Engine): Migration {
  const notNull = (c: ColumnDefinitionBuilder) => c.notNull();
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("custody_keystore")
        .addColumn("slot", "text", (c) => c.primaryKey())
        .addColumn("keystore_id", "text", notNull)
        .addColumn("header", "text", notNull)
        .addColumn("created_at", "bigint", notNull)
        .addCheckConstraint("custody_keystore_one", sql`slot = 'keystore'`)
        .execute();
      await db.schema
        .createTable("custody_keystore_entries")
        .addColumn("label", "text", (c) => c.primaryKey())
        .addColumn("entry", "text", notNull)
        .addColumn("created_at", "bigint", notNull)
        .execute();
      await db.schema
        .createTable("custody_binding")
        .addColumn("slot", "text", (c) => c.primaryKey())
        .addColumn("keystore_id", "text", notNull)
        .addColumn("kind", "text", notNull)
        .addColumn("token", "text")
        .addColumn("host", "text")
        .addColumn("path", "text")
        .addColumn("recorded_at", "bigint", notNull)
        .addCheckConstraint("custody_binding_one", sql`slot = 'custody'`)
        .addCheckConstraint("custody_binding_kind", sql`kind in ('file', 'store', 'pkcs11')`)
        .execute();
    },
    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable("custody_binding").execute();
      await db.schema.dropTable("custody_keystore_entries").execute();
      await db.schema.dropTable("custody_keystore").execute();
    },
  };
}
