// Certificates of key pairs in the issuer's store (CtVT, ST21): each certificate once by serial, its revocation (once:
// the first reason and time stand), the revoked ones a CRL lists, and the certificates whose validity runs out
// (FIG. 5, para 0062). Store (store.ts) delegates to it; one code path for SQLite and PostgreSQL. A certificate
// recorded with its key pair is inserted by key-pair-repository.ts (recordCredential) with certRow.
//
// Never: decides on a revocation or signs anything (src/issuer and src/ca do).

import type { Selectable, Transaction } from "kysely";
import type { Database } from "./db.ts";
import { newId } from "./ids.ts";
import { buf, checkValidity, insertOrConflict, StoreError, StoreRepository } from "./repository.ts";
import type { Certificate, NewCertificate } from "../issuer/records.ts";

export class CertificateRepository extends StoreRepository<CertificateRepository> {
  protected override bind(trx: Transaction<Database>): CertificateRepository {
    return new CertificateRepository(trx, this.clock);
  }

  async addCertificate(keyPairId: string, cert: NewCertificate): Promise<Certificate> {
    checkValidity("certificate", cert.notBefore, cert.notAfter);
    const row = certRow(cert, keyPairId, this.now());
    await insertOrConflict(this.db.insertInto("certificates").values(row).execute(), `certificate serial ${cert.serial} exists, or key pair ${keyPairId} unknown`);
    return toCertificate(row);
  }

  async getCertificate(id: string): Promise<Certificate | undefined> {
    const row = await this.db.selectFrom("certificates").selectAll().where("id", "=", id).executeTakeFirst();
    return row && toCertificate(row);
  }

  async getCertificateBySerial(serial: string): Promise<Certificate | undefined> {
    const row = await this.db.selectFrom("certificates").selectAll().where("serial", "=", serial).executeTakeFirst();
    return row && toCertificate(row);
  }

  async listCertificates(keyPairId: string): Promise<Certificate[]> {
    const rows = await this.db.selectFrom("certificates").selectAll().where("key_pair_id", "=", keyPairId).orderBy("created_at").execute();
    return rows.map(toCertificate);
  }

  /** Revokes a certificate once; a second revocation is a conflict (the first reason and time stand). */
  async revokeCertificate(id: string, reason: string, at = this.now()): Promise<Certificate> {
    const r = await this.db.updateTable("certificates").set({ revoked_at: at, revocation_reason: reason }).where("id", "=", id).where("revoked_at", "is", null).executeTakeFirst();
    if (Number(r.numUpdatedRows) !== 1) {
      const c = await this.getCertificate(id);
      throw c ? new StoreError("conflict", `certificate ${id} already revoked`) : new StoreError("not_found", `certificate ${id} not found`);
    }
    return (await this.getCertificate(id))!;
  }

  /** Revoked certificates that have not yet expired (what a CRL lists). */
  async listRevokedCertificates(now = this.now()): Promise<Certificate[]> {
    const rows = await this.db.selectFrom("certificates").selectAll().where("revoked_at", "is not", null).where("not_after", ">", now).orderBy("revoked_at").orderBy("id").execute();
    return rows.map(toCertificate);
  }

  // ---- validity (FIG. 5, para 0062) --------------------------------------------------------------------------

  /** Unrevoked certificates whose validity CtVT ends at or before `until`. */
  async expiringCertificates(until: number, page: { afterId?: string; limit?: number } = {}): Promise<Certificate[]> {
    const rows = await this.db
      .selectFrom("certificates")
      .selectAll()
      .where("not_after", "<=", until)
      .where("revoked_at", "is", null)
      .where("id", ">", page.afterId ?? "")
      .orderBy("id")
      .limit(page.limit ?? 1000)
      .execute();
    return rows.map(toCertificate);
  }
}

export function certRow(cert: NewCertificate, keyPairId: string, now: number) {
  if (!/^[0-9a-f]+$/.test(cert.serial)) throw new StoreError("invalid", `certificate serial: expected lowercase hex, got ${cert.serial}`);
  return {
    id: cert.id ?? newId(),
    serial: cert.serial,
    key_pair_id: keyPairId,
    der: cert.der,
    subject: cert.subject,
    not_before: cert.notBefore,
    not_after: cert.notAfter,
    revoked_at: null as number | null,
    revocation_reason: null as string | null,
    created_at: now,
  };
}

export function toCertificate(r: Selectable<Database["certificates"]>): Certificate {
  return {
    id: r.id,
    serial: r.serial,
    keyPairId: r.key_pair_id,
    der: buf(r.der),
    subject: r.subject,
    notBefore: r.not_before,
    notAfter: r.not_after,
    revokedAt: r.revoked_at,
    revocationReason: r.revocation_reason,
    createdAt: r.created_at,
  };
}
