// The key generation device's own record of every public key it ever generated (seed 001, FIG. 5 public key
// storage unit 134; steps 414-415, claim 10's "fourth means … fifth means").
//
// Step 414 asks "was this public key issued before?" and step 415 registers it. The two are one atomic
// operation here (`register` answers false for a key already recorded), so two generations racing on the same
// key cannot both be told "new". The center keeps its own, independent record (the CA repository, checked again
// atomically at signing — step 424); this one lets the device refuse before a request ever leaves it.
//
// Holds SHA-256 hashes of the canonical SubjectPublicKeyInfo DER — node:crypto's re-encoding of the key, so every
// encoding of one key has one hash (`publicKeySha256Of`; the CA's key identity, src/ca/spki.ts) — public values,
// no secret. Every row so far came from custody, whose SPKIs are node:crypto's own encoding, so the hashes kept
// before this rule are already canonical (no migration). Never: stores a private key, or personal data beyond the
// applicant's ID.
//
// A SQL implementation (src/store/, not written yet) needs one table and one statement:
//   CREATE TABLE keygen_public_keys (public_key_sha256 TEXT PRIMARY KEY, applicant_id TEXT NOT NULL,
//                                    alg TEXT NOT NULL, generated_at BIGINT NOT NULL);
//   INSERT INTO keygen_public_keys (...) VALUES (...) ON CONFLICT (public_key_sha256) DO NOTHING;
//   -- register() is true exactly when the INSERT affected one row (SQLite `changes`, PostgreSQL rowCount).
// The primary key makes the check-and-register atomic across processes, as the CA's ca_certified_keys does.

import { publicKeySha256 } from "../ca/spki.ts";
import type { KeyPairAlg } from "../custody/custody.ts";

/** The identity a registry keys a public key by: SHA-256 of its canonical DER SPKI, hex (any DER/BER encoding in). */
export const publicKeySha256Of = (spki: Uint8Array): string => publicKeySha256(spki);

export interface GeneratedKeyRecord {
  /** SHA-256 of the canonical DER SubjectPublicKeyInfo (publicKeySha256Of), lowercase hex. */
  publicKeySha256: string;
  applicantId: string;
  alg: KeyPairAlg;
  generatedAt: Date;
}

export interface IssuedKeyRegistry {
  /**
   * Steps 414-415 at once: records the key and answers true, or answers false — recording nothing — when a key
   * with this hash was ever recorded before. Atomic: of concurrent calls with one hash, exactly one gets true.
   */
  register(record: GeneratedKeyRecord): Promise<boolean>;
  /** The record of a key, if this device ever generated it. */
  find(publicKeySha256: string): Promise<GeneratedKeyRecord | undefined>;
}

const SHA256_HEX = /^[0-9a-f]{64}$/;

/** In-process registry: tests and the demo. No await between the check and the write, so it is atomic. */
export class MemoryIssuedKeyRegistry implements IssuedKeyRegistry {
  private readonly keys = new Map<string, GeneratedKeyRecord>();

  async register(record: GeneratedKeyRecord): Promise<boolean> {
    if (!SHA256_HEX.test(record.publicKeySha256)) throw new TypeError("publicKeySha256 must be 64 lowercase hex digits (SHA-256 of the SPKI)");
    if (this.keys.has(record.publicKeySha256)) return false;
    this.keys.set(record.publicKeySha256, { ...record });
    return true;
  }

  async find(publicKeySha256: string): Promise<GeneratedKeyRecord | undefined> {
    const r = this.keys.get(publicKeySha256);
    return r && { ...r };
  }
}
