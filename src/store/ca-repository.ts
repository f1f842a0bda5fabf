// The certification authority's records in SQL (issue 3 §4): src/ca/repository.ts's CaRepository on Kysely, one
// code path for SQLite and PostgreSQL (tables: migrations/0002_ca.ts).
//
// Owns: issued certificates, the set of certified public keys, revocations, the CRL counter and the CA's own
// certificate, each scoped to one CA by `caId`. Every guarantee the interface makes is a database constraint
// or a single atomic statement, so it holds across concurrent requests and across server processes:
//   - recordIssued: one transaction (a savepoint of a group commit) inserting the certificate (primary key (ca_id, serial)) and claiming the key
//     (primary key (ca_id, public_key_sha256)) with ON CONFLICT DO NOTHING; a claim that finds the key taken
//     rolls the certificate back — of N concurrent requests for one key exactly one is "recorded" (on PostgreSQL
//     the two inserts are one statement, one round trip);
//   - revoke: INSERT … ON CONFLICT DO NOTHING, then the stored row: the first revocation is kept;
//   - nextCrlNumber: an upsert … RETURNING on a one-row counter: never repeats, even across restarts.
// Never: holds a private key or anything secret — certificates and public-key hashes are public.

import { sql, type Kysely, type Transaction } from "kysely";
import type { CaRepository, IssuedCertificateRecord, RecordIssuedResult, RevocationRecord } from "../ca/repository.ts";
import type { RevocationReason } from "../ca/crl.ts";
import type { SubjectName } from "../ca/name.ts";
import { fromPemAll, toPem } from "../ca/pem.ts";
import type { CaCertificateStore, StoredCaCertificate } from "../ca/service.ts";
import { compiled } from "./compiled.ts";
import { engineOf, type Db } from "./db.ts";
import { groupCommit } from "./group.ts";

export interface CaIssuedCertificatesTable {
  ca_id: string;
  serial: string;
  /** SubjectName as JSON text. */
  subject: string;
  public_key_sha256: string;
  profile: string;
  not_before: number;
  not_after: number;
  issued_at: number;
  der: Uint8Array;
  applicant_id: string | null;
}

export interface CaCertifiedKeysTable {
  ca_id: string;
  public_key_sha256: string;
  first_serial: string;
}

export interface CaRevocationsTable {
  ca_id: string;
  serial: string;
  reason: string;
  revoked_at: number;
  invalidity_date: number | null;
}

export interface CaCrlNumbersTable {
  ca_id: string;
  last: number;
}

export interface CaAuthoritiesTable {
  ca_id: string;
  key_label: string;
  certificate: Uint8Array;
  issuer_chain: string;
  created_at: number;
}

// a type alias, not an interface: Kysely's withTables wants an index-signature-compatible record
export type CaTables = {
  ca_issued_certificates: CaIssuedCertificatesTable;
  ca_certified_keys: CaCertifiedKeysTable;
  ca_revocations: CaRevocationsTable;
  ca_crl_numbers: CaCrlNumbersTable;
  ca_authorities: CaAuthoritiesTable;
};

// The statements of a certification, compiled once (compiled.ts): the issuance hot path.
const KEY_CERTIFIED = compiled((db: Kysely<CaTables>, p: { caId: string; sha256: string }) =>
  db.selectFrom("ca_certified_keys").select("public_key_sha256").where("ca_id", "=", p.caId).where("public_key_sha256", "=", p.sha256),
);
const INSERT_ISSUED = compiled((db: Kysely<CaTables>, p: CaIssuedCertificatesTable) =>
  db
    .insertInto("ca_issued_certificates")
    .values({
      ca_id: p.ca_id,
      serial: p.serial,
      subject: p.subject,
      public_key_sha256: p.public_key_sha256,
      profile: p.profile,
      not_before: p.not_before,
      not_after: p.not_after,
      issued_at: p.issued_at,
      der: p.der,
      applicant_id: p.applicant_id,
    })
    .onConflict((oc) => oc.columns(["ca_id", "serial"]).doNothing())
    .returning("serial"),
);
const CLAIM_KEY = compiled((db: Kysely<CaTables>, p: CaCertifiedKeysTable) =>
  db
    .insertInto("ca_certified_keys")
    .values({ ca_id: p.ca_id, public_key_sha256: p.public_key_sha256, first_serial: p.first_serial })
    .onConflict((oc) => oc.columns(["ca_id", "public_key_sha256"]).doNothing())
    .returning("public_key_sha256"),
);

const CA_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;

/** Thrown inside a transaction to roll it back with a result rather than an error. */
class Rollback {
  constructor(readonly result: RecordIssuedResult) {}
}

/** Bytes from the driver (a Node Buffer on both engines) as a plain Uint8Array copy. */
const bytes = (b: Uint8Array): Uint8Array => new Uint8Array(b);

export class SqlCaRepository implements CaRepository, CaCertificateStore {
  private readonly db: Kysely<CaTables>;

  /**
   * @param db   the system DB, migrated (migrateToLatest) so that 0002_ca exists
   * @param caId which CA these records belong to (e.g. "issuing"); 1-64 of A-Z a-z 0-9 . _ : -
   */
  constructor(
    db: Db | Kysely<unknown>,
    readonly caId: string,
  ) {
    if (typeof caId !== "string" || !CA_ID.test(caId)) throw new Error(`CA id must be 1-64 of A-Z a-z 0-9 . _ : - starting with a letter or digit, got ${JSON.stringify(String(caId).slice(0, 70))}`);
    this.db = (db as Kysely<unknown>).withTables<CaTables>() as unknown as Kysely<CaTables>;
  }

  async isSerialUsed(serial: string): Promise<boolean> {
    const row = await this.db.selectFrom("ca_issued_certificates").select("serial").where("ca_id", "=", this.caId).where("serial", "=", serial).executeTakeFirst();
    return row !== undefined;
  }

  async isPublicKeyCertified(publicKeySha256: string): Promise<boolean> {
    const r = await KEY_CERTIFIED.execute(this.db, { caId: this.caId, sha256: publicKeySha256 });
    return r.rows.length > 0;
  }

  async recordIssued(record: IssuedCertificateRecord, opts: { uniquePublicKey: boolean }): Promise<RecordIssuedResult> {
    const row: CaIssuedCertificatesTable = {
      ca_id: this.caId,
      serial: record.serial,
      subject: JSON.stringify(record.subject),
      public_key_sha256: record.publicKeySha256,
      profile: record.profile,
      not_before: record.notBefore.getTime(),
      not_after: record.notAfter.getTime(),
      issued_at: record.issuedAt.getTime(),
      der: record.certificate,
      applicant_id: record.applicantId ?? null,
    };
    try {
      // Group commit (group.ts): on the system DB this joins the issuer's groups, one commit for both.
      return await groupCommit(this.db, async (trx: Transaction<CaTables>) => {
        if (engineOf(trx as unknown as Db) === "postgres") {
          // The two inserts below in one statement (one round trip, issue 16 §5): the key is claimed only when the
          // certificate row went in, and the counts say which of the two found its key taken.
          const r = await sql<{ cert: number; claim: number }>`with cert as (
              insert into ca_issued_certificates (ca_id, serial, subject, public_key_sha256, profile, not_before, not_after, issued_at, der, applicant_id)
              values (${row.ca_id}, ${row.serial}, ${row.subject}, ${row.public_key_sha256}, ${row.profile}, ${row.not_before}, ${row.not_after}, ${row.issued_at}, ${row.der}, ${row.applicant_id})
              on conflict (ca_id, serial) do nothing returning serial),
            claim as (insert into ca_certified_keys (ca_id, public_key_sha256, first_serial)
              select ${row.ca_id}::text, ${row.public_key_sha256}::text, serial from cert
              on conflict (ca_id, public_key_sha256) do nothing returning public_key_sha256)
            select (select count(*) from cert)::int as cert, (select count(*) from claim)::int as claim`.execute(trx);
          if (!r.rows[0].cert) throw new Rollback("duplicate-serial");
          if (!r.rows[0].claim && opts.uniquePublicKey) throw new Rollback("duplicate-public-key");
          return "recorded" as const;
        }
        // The statement order is the interface's: a used serial is reported before a certified key.
        const cert = (await INSERT_ISSUED.execute(trx, row)).rows[0];
        if (!cert) throw new Rollback("duplicate-serial");
        // On PostgreSQL a second transaction claiming the same key waits here for the first to commit, then
        // sees the conflict; SQLite runs one writer at a time. Either way one claim wins.
        const claim = (await CLAIM_KEY.execute(trx, { ca_id: this.caId, public_key_sha256: record.publicKeySha256, first_serial: record.serial })).rows[0];
        if (!claim && opts.uniquePublicKey) throw new Rollback("duplicate-public-key");
        return "recorded" as const;
      });
    } catch (e) {
      if (e instanceof Rollback) return e.result;
      throw e;
    }
  }

  async findIssued(serial: string): Promise<IssuedCertificateRecord | undefined> {
    const r = await this.db.selectFrom("ca_issued_certificates").selectAll().where("ca_id", "=", this.caId).where("serial", "=", serial).executeTakeFirst();
    if (!r) return undefined;
    const rec: IssuedCertificateRecord = {
      serial: r.serial,
      subject: JSON.parse(r.subject) as SubjectName,
      publicKeySha256: r.public_key_sha256,
      profile: r.profile,
      notBefore: new Date(r.not_before),
      notAfter: new Date(r.not_after),
      issuedAt: new Date(r.issued_at),
      certificate: bytes(r.der),
    };
    if (r.applicant_id !== null) rec.applicantId = r.applicant_id;
    return rec;
  }

  async revoke(record: RevocationRecord): Promise<RevocationRecord> {
    await this.db
      .insertInto("ca_revocations")
      .values({
        ca_id: this.caId,
        serial: record.serial,
        reason: record.reason,
        revoked_at: record.revokedAt.getTime(),
        invalidity_date: record.invalidityDate ? record.invalidityDate.getTime() : null,
      })
      .onConflict((oc) => oc.columns(["ca_id", "serial"]).doNothing())
      .execute();
    const stored = await this.db.selectFrom("ca_revocations").selectAll().where("ca_id", "=", this.caId).where("serial", "=", record.serial).executeTakeFirstOrThrow();
    return toRevocation(stored);
  }

  async listRevoked(now: Date): Promise<RevocationRecord[]> {
    // RFC 5280 §3.3: an entry may leave the CRL once the certificate has expired. A revocation whose
    // certificate is not in this CA's records (the interface allows it) stays listed.
    const rows = await this.db
      .selectFrom("ca_revocations as r")
      .leftJoin("ca_issued_certificates as i", (j) => j.onRef("i.ca_id", "=", "r.ca_id").onRef("i.serial", "=", "r.serial"))
      .select(["r.ca_id", "r.serial", "r.reason", "r.revoked_at", "r.invalidity_date"])
      .where("r.ca_id", "=", this.caId)
      .where((eb) => eb.or([eb("i.not_after", "is", null), eb("i.not_after", ">=", now.getTime())]))
      .orderBy("r.revoked_at")
      .orderBy("r.serial")
      .execute();
    return rows.map(toRevocation);
  }

  async nextCrlNumber(): Promise<number> {
    // One statement: the row lock (PostgreSQL) or the single writer (SQLite) orders concurrent callers.
    const r = await this.db
      .insertInto("ca_crl_numbers")
      .values({ ca_id: this.caId, last: 1 })
      .onConflict((oc) => oc.column("ca_id").doUpdateSet((eb) => ({ last: eb("ca_crl_numbers.last", "+", 1) })))
      .returning("last")
      .executeTakeFirstOrThrow();
    return Number(r.last);
  }

  async loadCaCertificate(): Promise<StoredCaCertificate | undefined> {
    const r = await this.db.selectFrom("ca_authorities").selectAll().where("ca_id", "=", this.caId).executeTakeFirst();
    if (!r) return undefined;
    return { keyLabel: r.key_label, certificate: bytes(r.certificate), issuerChain: fromPemAll(r.issuer_chain, "CERTIFICATE") };
  }

  async saveCaCertificate(c: StoredCaCertificate): Promise<StoredCaCertificate> {
    await this.db
      .insertInto("ca_authorities")
      .values({
        ca_id: this.caId,
        key_label: c.keyLabel,
        certificate: c.certificate,
        issuer_chain: c.issuerChain.map((d) => toPem(d, "CERTIFICATE")).join(""),
        created_at: Date.now(),
      })
      .onConflict((oc) => oc.column("ca_id").doNothing())
      .execute();
    const stored = await this.loadCaCertificate();
    if (!stored) throw new Error(`CA ${this.caId}: its certificate was saved but cannot be read back`);
    return stored;
  }
}

function toRevocation(r: Pick<CaRevocationsTable, "serial" | "reason" | "revoked_at" | "invalidity_date">): RevocationRecord {
  const rec: RevocationRecord = { serial: r.serial, reason: r.reason as RevocationReason, revokedAt: new Date(r.revoked_at) };
  if (r.invalidity_date !== null) rec.invalidityDate = new Date(r.invalidity_date);
  return rec;
}
