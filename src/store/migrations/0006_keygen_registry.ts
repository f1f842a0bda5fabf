// Migration 0006: the key generation device's registry of every public key it generated (seed 001 FIG. 5 public
// key storage unit 134; steps 414-415), kept by src/store/keygen-registry.ts behind src/keygen/registry.ts's
// IssuedKeyRegistry.
//
//   keygen_public_keys   one row per generated public key, by the SHA-256 of its SubjectPublicKeyInfo DER
//                        (lowercase hex). The primary key is what makes "register" atomic: of concurrent inserts
//                        of one hash exactly one affects a row (INSERT … ON CONFLICT DO NOTHING), on both engines
//                        and across processes, as ca_certified_keys does for the center.
//
// Public values only: key hashes, the applicant's ID, the algorithm — never a key, never personal data.
// Times are epoch milliseconds (bigint) — the conventions of src/store/db.ts.

import { sql, type ColumnDefinitionBuilder, type Kysely, type Migration } from "kysely";
import type { Engine } from "../db.ts";

export function keygenRegistry(_engine: Engine): Migration {
  const notNull = (c: ColumnDefinitionBuilder) => c.notNull();
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("keygen_public_keys")
        /** SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex. */
        .addColumn("public_key_sha256", "text", (c) => c.primaryKey())
        /** The applicant the key was generated for (the center's registration ID). */
        .addColumn("applicant_id", "text", notNull)
        /** KeyPairAlg: P256, P384, RSA2048, RSA3072. */
        .addColumn("alg", "text", notNull)
        .addColumn("generated_at", "bigint", notNull)
        .addCheckConstraint("keygen_public_keys_sha256", sql`length(public_key_sha256) = 64`)
        .addCheckConstraint("keygen_public_keys_applicant", sql`length(applicant_id) between 1 and 256`)
        .execute();
    },
    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable("keygen_public_keys").execute();
    },
  };
}
