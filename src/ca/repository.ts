// The CA's persistent records: issued certificates, revocations and the CRL counter.
//
// One repository per CA (a root and its issuing CA each have their own). The in-memory implementation is
// for tests and the demo; the SQL store implements the same interface. Uniqueness (serial, and the public
// key when the CA requires fresh keys) must be enforced atomically by `recordIssued` — a check before
// signing cannot stop two concurrent requests with the same key (seed 001, steps 421-432).

import type { SubjectName } from "./name.ts";
import type { RevocationReason } from "./crl.ts";

export interface IssuedCertificateRecord {
  /** Serial, lowercase hex of the INTEGER's magnitude. */
  serial: string;
  subject: SubjectName;
  /** SHA-256 of the certified SubjectPublicKeyInfo, hex. */
  publicKeySha256: string;
  profile: string;
  notBefore: Date;
  notAfter: Date;
  issuedAt: Date;
  /** DER certificate. */
  certificate: Uint8Array;
  /** Who the certificate was issued for (the issuer's user ID), if the request said. */
  applicantId?: string;
}

export interface RevocationRecord {
  serial: string;
  reason: RevocationReason;
  revokedAt: Date;
  invalidityDate?: Date;
}

export type RecordIssuedResult = "recorded" | "duplicate-serial" | "duplicate-public-key";

export interface CaRepository {
  /** True if the serial was ever recorded by this CA. */
  isSerialUsed(serial: string): Promise<boolean>;
  /** True if a certificate for this public key (SHA-256 of its SPKI) was ever recorded. */
  isPublicKeyCertified(publicKeySha256: string): Promise<boolean>;
  /**
   * Records an issued certificate, atomically refusing a serial already used and — when
   * `uniquePublicKey` — a public key already certified. Nothing is written unless "recorded".
   */
  recordIssued(record: IssuedCertificateRecord, opts: { uniquePublicKey: boolean }): Promise<RecordIssuedResult>;
  findIssued(serial: string): Promise<IssuedCertificateRecord | undefined>;
  /** Records a revocation; if the serial is already revoked, keeps and returns the first record. */
  revoke(record: RevocationRecord): Promise<RevocationRecord>;
  /** Every revocation of certificates that have not yet expired (expired ones may be dropped, RFC 5280 §3.3). */
  listRevoked(now: Date): Promise<RevocationRecord[]>;
  /** The next cRLNumber: 1, 2, 3 … strictly increasing, never reused even across restarts. */
  nextCrlNumber(): Promise<number>;
}

export class MemoryCaRepository implements CaRepository {
  private readonly issued = new Map<string, IssuedCertificateRecord>();
  private readonly keys = new Set<string>();
  private readonly revoked = new Map<string, RevocationRecord>();
  private crlNumber = 0;

  async isSerialUsed(serial: string): Promise<boolean> {
    return this.issued.has(serial);
  }

  async isPublicKeyCertified(publicKeySha256: string): Promise<boolean> {
    return this.keys.has(publicKeySha256);
  }

  async recordIssued(record: IssuedCertificateRecord, opts: { uniquePublicKey: boolean }): Promise<RecordIssuedResult> {
    // no await between the checks and the writes: atomic on Node's single thread
    if (this.issued.has(record.serial)) return "duplicate-serial";
    if (opts.uniquePublicKey && this.keys.has(record.publicKeySha256)) return "duplicate-public-key";
    this.issued.set(record.serial, record);
    this.keys.add(record.publicKeySha256);
    return "recorded";
  }

  async findIssued(serial: string): Promise<IssuedCertificateRecord | undefined> {
    return this.issued.get(serial);
  }

  async revoke(record: RevocationRecord): Promise<RevocationRecord> {
    const prev = this.revoked.get(record.serial);
    if (prev) return prev;
    this.revoked.set(record.serial, record);
    return record;
  }

  async listRevoked(now: Date): Promise<RevocationRecord[]> {
    return [...this.revoked.values()].filter((r) => {
      const cert = this.issued.get(r.serial);
      return !cert || cert.notAfter.getTime() >= now.getTime();
    });
  }

  async nextCrlNumber(): Promise<number> {
    return ++this.crlNumber;
  }
}
