// The key generation device's registry of generated public keys in SQL (seed 001 FIG. 5 unit 134, steps
// 414-415): src/keygen/registry.ts's IssuedKeyRegistry on the system DB (table: migrations/0006_keygen_registry.ts),
// one code path for SQLite and PostgreSQL.
//
// `register` is one statement, INSERT … ON CONFLICT (public_key_sha256) DO NOTHING RETURNING: the primary key on
// the hash makes the check and the registration one atomic step, so of N concurrent registrations of one key —
// in one process or in several sharing the DB — exactly one is told "new" (on PostgreSQL a second insert of the
// same key waits for the first to commit and then sees the conflict; SQLite has one writer at a time). The
// record survives a restart of the device, which the in-memory registry does not.
//
// Never: holds a private key or personal data — hashes of public keys, applicant IDs and algorithms only.

import type { Kysely } from "kysely";
import type { KeyPairAlg } from "../custody/custody.ts";
import type { GeneratedKeyRecord, IssuedKeyRegistry } from "../keygen/registry.ts";
import type { Db } from "./db.ts";

export interface KeygenPublicKeysTable {
  /** SHA-256 of the canonical DER SubjectPublicKeyInfo (keygen/registry.ts publicKeySha256Of), lowercase hex; primary key. */
  public_key_sha256: string;
  applicant_id: string;
  alg: string;
  generated_at: number;
}

// a type alias, not an interface: Kysely's withTables wants an index-signature-compatible record
export type KeygenRegistryTables = { keygen_public_keys: KeygenPublicKeysTable };

const SHA256_HEX = /^[0-9a-f]{64}$/;
const ALGS: readonly KeyPairAlg[] = ["P256", "P384", "RSA2048", "RSA3072"];

function checkRecord(r: GeneratedKeyRecord): void {
  if (typeof r !== "object" || r === null) throw new TypeError("a generated key record must be an object");
  if (typeof r.publicKeySha256 !== "string" || !SHA256_HEX.test(r.publicKeySha256)) throw new TypeError("publicKeySha256 must be 64 lowercase hex digits (SHA-256 of the SPKI)");
  if (typeof r.applicantId !== "string" || r.applicantId.length < 1 || r.applicantId.length > 256) throw new TypeError("applicantId must be 1-256 characters");
  if (!ALGS.includes(r.alg)) throw new TypeError(`alg must be one of ${ALGS.join(", ")}`);
  if (!(r.generatedAt instanceof Date) || Number.isNaN(r.generatedAt.getTime())) throw new TypeError("generatedAt must be a valid Date");
}

export class SqlIssuedKeyRegistry implements IssuedKeyRegistry {
  private readonly db: Kysely<KeygenRegistryTables>;

  /** @param db the system DB, migrated (migrateToLatest) so that 0006_keygen_registry exists */
  constructor(db: Db | Kysely<unknown>) {
    this.db = (db as Kysely<unknown>).withTables<KeygenRegistryTables>() as unknown as Kysely<KeygenRegistryTables>;
  }

  async register(record: GeneratedKeyRecord): Promise<boolean> {
    checkRecord(record);
    const inserted = await this.db
      .insertInto("keygen_public_keys")
      .values({ public_key_sha256: record.publicKeySha256, applicant_id: record.applicantId, alg: record.alg, generated_at: record.generatedAt.getTime() })
      .onConflict((oc) => oc.column("public_key_sha256").doNothing())
      .returning("public_key_sha256")
      .executeTakeFirst();
    return inserted !== undefined;
  }

  async find(publicKeySha256: string): Promise<GeneratedKeyRecord | undefined> {
    if (typeof publicKeySha256 !== "string" || !SHA256_HEX.test(publicKeySha256)) return undefined;
    const r = await this.db.selectFrom("keygen_public_keys").selectAll().where("public_key_sha256", "=", publicKeySha256).executeTakeFirst();
    return r && { publicKeySha256: r.public_key_sha256, applicantId: r.applicant_id, alg: r.alg as KeyPairAlg, generatedAt: new Date(Number(r.generated_at)) };
  }
}
