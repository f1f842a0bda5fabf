// The CA as a running service (issue 3 §4; seed 000 ST19-ST21): its key in key custody, its certificate
// persisted beside its records, a CertificationAuthority and the in-process CaClient over it.
//
// First start: generates the CA key pair in custody (never extractable), self-signs a root certificate and
// stores it. Every later start: finds the stored certificate, takes the signer for the same custody key, checks
// that they belong together, and continues issuing under the same certificate with the same serial and CRL
// records. Never: holds the CA private key (custody does) or creates a second CA key for a stored certificate.

import { CertificationAuthority, type CrlConfig } from "./authority.ts";
import type { IssuanceCheck } from "./checks.ts";
import { LocalCaClient } from "./client.ts";
import * as der from "./der.ts";
import type { SubjectName } from "./name.ts";
import type { CertificateProfile } from "./profile.ts";
import { MemoryCaRepository, type CaRepository } from "./repository.ts";
import type { CaKeyAlgorithm, CaSigner } from "./signer.ts";
import type { KeyPolicy } from "./spki.ts";
import { parseCertificate } from "./certificate.ts";
import { CustodyError, type KeyCustody } from "../custody/custody.ts";

/** The CA's own certificate as it is kept between starts. */
export interface StoredCaCertificate {
  /** The custody label of the key the certificate certifies. */
  keyLabel: string;
  /** DER. */
  certificate: Uint8Array;
  /** Certificates above this CA, nearest first (DER); empty for a self-signed root. */
  issuerChain: Uint8Array[];
}

/** Where a CA keeps its own certificate (the SQL repository keeps it in `ca_authorities`). */
export interface CaCertificateStore {
  loadCaCertificate(): Promise<StoredCaCertificate | undefined>;
  /** Stores the certificate unless one is stored already; returns the one that is stored (the first wins). */
  saveCaCertificate(c: StoredCaCertificate): Promise<StoredCaCertificate>;
}

/** MemoryCaRepository that also keeps the CA certificate: for tests and a throwaway demo CA. */
export class MemoryCaServiceRepository extends MemoryCaRepository implements CaCertificateStore {
  private own?: StoredCaCertificate;

  async loadCaCertificate(): Promise<StoredCaCertificate | undefined> {
    return this.own;
  }

  async saveCaCertificate(c: StoredCaCertificate): Promise<StoredCaCertificate> {
    this.own ??= { keyLabel: c.keyLabel, certificate: c.certificate.slice(), issuerChain: c.issuerChain.map((d) => d.slice()) };
    return this.own;
  }
}

export interface CaServiceOptions {
  custody: KeyCustody;
  /** Custody label of the CA key pair; generated on first start when the label is free. */
  signerLabel: string;
  /** The CA's records and its own certificate: SqlCaRepository (src/store/ca-repository.ts) or MemoryCaServiceRepository. */
  repository: CaRepository & CaCertificateStore;
  /** Subject of the self-signed root, used only when it is created; a stored certificate keeps its subject. */
  subject: SubjectName;
  /** Where relying parties fetch the CRL (GET /ca/crl as seen from outside); written into every certificate. */
  crlUrl?: string;
  /** CA key algorithm on first start. Default "P256". */
  keyAlgorithm?: CaKeyAlgorithm;
  /** Root validity on first start, days. Default 3650. */
  validityDays?: number;
  profiles?: readonly CertificateProfile[];
  checks?: readonly IssuanceCheck[];
  crl?: Omit<CrlConfig, "distributionPoints">;
  uniquePublicKeys?: boolean;
  /** What end-entity keys are certified beyond src/ca/spki.ts's fixed rules (e.g. rsaMaxExponent). */
  keyPolicy?: Partial<KeyPolicy>;
  clock?: () => Date;
}

export interface CaService {
  authority: CertificationAuthority;
  /** The in-process CaClient; src/server/ca-routes.ts serves the same interface over HTTP. */
  client: LocalCaClient;
  /** True when this start generated the key and the root certificate. */
  created: boolean;
}

/** Opens (first start: creates) the CA whose key is `signerLabel` in `custody` and whose records are in `repository`. */
export async function openCaService(o: CaServiceOptions): Promise<CaService> {
  const alg = o.keyAlgorithm ?? "P256";
  const validityDays = o.validityDays ?? 3650;
  if (!Number.isInteger(validityDays) || validityDays < 1) throw new Error(`validityDays must be a positive integer, got ${validityDays}`);
  if (o.crlUrl !== undefined && !/^https?:\/\/\S+$/.test(o.crlUrl)) throw new Error(`crlUrl must be an http(s) URL, got ${JSON.stringify(o.crlUrl)}`);
  const common = {
    repository: o.repository,
    profiles: o.profiles,
    checks: o.checks,
    crl: { ...o.crl, distributionPoints: o.crlUrl ? [o.crlUrl] : [] },
    uniquePublicKeys: o.uniquePublicKeys,
    keyPolicy: o.keyPolicy,
    clock: o.clock,
  };

  let stored = await o.repository.loadCaCertificate();
  let created = false;
  if (!stored) {
    const signer = await caSigner(o.custody, o.signerLabel, alg, true);
    // The root's own record is written without claiming its key as unique: should this process stop between
    // recording the root and storing it below, the next start signs a fresh root for the same key (the first
    // was never published) instead of being refused its own key.
    const repo = o.repository;
    const rootRepository: CaRepository = {
      isSerialUsed: (serial) => repo.isSerialUsed(serial),
      isPublicKeyCertified: (sha256) => repo.isPublicKeyCertified(sha256),
      recordIssued: (record) => repo.recordIssued(record, { uniquePublicKey: false }),
      findIssued: (serial) => repo.findIssued(serial),
      revoke: (record) => repo.revoke(record),
      listRevoked: (now) => repo.listRevoked(now),
      nextCrlNumber: () => repo.nextCrlNumber(),
    };
    const root = await CertificationAuthority.createRoot({ ...common, repository: rootRepository, signer, subject: o.subject, validityDays });
    // Of two processes starting at once, the first certificate stored wins; the other uses it.
    stored = await o.repository.saveCaCertificate({ keyLabel: o.signerLabel, certificate: root.certificate, issuerChain: [] });
    created = der.equalBytes(stored.certificate, root.certificate);
  }
  if (stored.keyLabel !== o.signerLabel) {
    throw new Error(`the stored CA certificate belongs to custody key "${stored.keyLabel}", not to the configured signerLabel "${o.signerLabel}"`);
  }
  const signer = await caSigner(o.custody, o.signerLabel, alg, false);
  if (!der.equalBytes(parseCertificate(stored.certificate).spki, signer.spki)) {
    throw new Error(`custody key "${o.signerLabel}" is not the key of the stored CA certificate (was the keystore or token replaced?)`);
  }
  const authority = new CertificationAuthority({ ...common, signer, certificate: stored.certificate, issuerChain: stored.issuerChain });
  return { authority, client: new LocalCaClient(authority), created };
}

/** The CA signer for `label`; with `create`, generates the key pair first when the label is free. */
async function caSigner(custody: KeyCustody, label: string, alg: CaKeyAlgorithm, create: boolean): Promise<CaSigner> {
  let info = await custody.keyInfo(label);
  if (!info && create) {
    try {
      info = await custody.generateKeyPair(label, alg, { extractable: "never" });
    } catch (e) {
      // another process generated it in the meantime
      if (!(e instanceof CustodyError && e.code === "EXISTS")) throw e;
      info = await custody.keyInfo(label);
    }
  }
  if (!info) throw new Error(`the CA key "${label}" is not in ${custody.kind} custody, but a CA certificate for it is stored`);
  if (info.kind !== "keyPair") throw new Error(`custody key "${label}" is a secret key, not a CA key pair`);
  if (info.extractable !== "never") throw new Error(`custody key "${label}" is extractable ("${info.extractable}"); a CA key must never leave custody`);
  return custody.signer(label);
}
