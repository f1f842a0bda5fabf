// The certification authority (seed 000 ST19-ST21: the issuer asks the CA to certify a public key; seed 001
// steps 421-432: the certification center checks a request before it signs).
//
// Owns: building and signing X.509 v3 certificates and v2 CRLs, serial numbers, revocation, the named checks
// run before signing. Never: holds the CA private key (the CaSigner does, in custody), speaks HTTP (see
// client.ts for the shapes a transport carries), or stores anything except through its CaRepository.

import * as der from "./der.ts";
import { CaRefusal, type IssuanceCheck, type IssuanceContext } from "./checks.ts";
import { parseCertificate, randomSerial, serialFromHex, serialToHex, signCertificate, type CertificateParts } from "./certificate.ts";
import { isRevocationReason, REVOCATION_REASONS, signCrl, type RevocationReason } from "./crl.ts";
import { verifyCsr } from "./csr.ts";
import * as ext from "./extensions.ts";
import { encodeName, InvalidSubjectError, type SubjectName } from "./name.ts";
import { DEFAULT_PROFILES, keyUsageFor, validateProfile, type CertificateProfile } from "./profile.ts";
import type { CaRepository, IssuedCertificateRecord, RevocationRecord } from "./repository.ts";
import { assertSignerConsistent, type CaSigner } from "./signer.ts";
import { InvalidPublicKeyError, keyPolicy, parseSubjectPublicKeyInfo, type KeyPolicy, type SubjectPublicKey } from "./spki.ts";

export interface CrlConfig {
  /** URLs where relying parties fetch this CA's CRL; written into every certificate it issues (CRL DP). */
  distributionPoints?: string[];
  /** nextUpdate − thisUpdate, hours. Default 24. */
  validityHours?: number;
  /** `crl()` reuses the last CRL for at most this long when nothing was revoked through this instance. Default 300. */
  reuseSeconds?: number;
}

export interface CertificationAuthorityConfig {
  signer: CaSigner;
  /** This CA's own certificate (DER); its key must be the signer's. */
  certificate: Uint8Array;
  /** Certificates above this CA, nearest first, ending with the root (DER). Empty for a root. */
  issuerChain?: Uint8Array[];
  repository: CaRepository;
  /** End-entity profiles by name. Default DEFAULT_PROFILES (signature, authentication, keyManagement). */
  profiles?: readonly CertificateProfile[];
  crl?: CrlConfig;
  /** Checks run, in order, before every end-entity signature (e.g. personalDataCheck). */
  checks?: readonly IssuanceCheck[];
  /** Refuse a public key that was ever certified before, in any encoding ("duplicate-public-key"). Default true. */
  uniquePublicKeys?: boolean;
  /** What keys are certified beyond spki.ts's fixed rules, e.g. a lower bound on RSA exponents. Default: the BR range. */
  keyPolicy?: Partial<KeyPolicy>;
  /** Verify every signature the signer returns before releasing it. Default: RSA keys yes, ECDSA no (see SignOptions). */
  verifySignatures?: boolean;
  /** Time source, for tests. */
  clock?: () => Date;
}

/** Certify a public key for a subject taken from the user's registered data (ST19). */
export interface IssueRequest {
  subject: SubjectName;
  /** DER SubjectPublicKeyInfo. */
  publicKey: Uint8Array;
  profile: string;
  applicantId?: string;
}

/** Certify a PKCS#10 request (seed 001, step 417); the subject comes from the request. */
export interface IssueFromCsrRequest {
  /** PEM text or DER. */
  csr: string | Uint8Array;
  profile: string;
  applicantId?: string;
}

export interface IssuedCertificate {
  certificate: Uint8Array;
  serial: string;
  notBefore: Date;
  notAfter: Date;
  profile: string;
}

export interface CrlInfo {
  crl: Uint8Array;
  number: number;
  thisUpdate: Date;
  nextUpdate: Date;
}

export interface RootOptions extends Omit<CertificationAuthorityConfig, "certificate" | "issuerChain"> {
  subject: SubjectName;
  validityDays: number;
  /** basicConstraints pathLenConstraint; omitted means unlimited. */
  pathLength?: number;
}

export interface SubordinateRequest {
  subject: SubjectName;
  publicKey: Uint8Array;
  validityDays: number;
  pathLength?: number;
}

const DAY = 86_400_000;

function keyOf(spki: Uint8Array, policy: KeyPolicy): SubjectPublicKey {
  try {
    return parseSubjectPublicKeyInfo(spki, policy);
  } catch (e) {
    if (e instanceof InvalidPublicKeyError) throw new CaRefusal(e.check, e.message);
    throw e;
  }
}

function nameOf(subject: SubjectName): Uint8Array {
  try {
    return encodeName(subject);
  } catch (e) {
    if (e instanceof InvalidSubjectError) throw new CaRefusal("subject", e.message);
    throw e;
  }
}

export class CertificationAuthority {
  readonly signer: CaSigner;
  readonly certificate: Uint8Array;
  readonly issuerChain: readonly Uint8Array[];
  private readonly repo: CaRepository;
  private readonly own: CertificateParts;
  private readonly keyId: Uint8Array;
  private readonly profiles = new Map<string, CertificateProfile>();
  private readonly checks: readonly IssuanceCheck[];
  private readonly uniqueKeys: boolean;
  /** The key policy every certified key is checked under (spki.ts). */
  readonly keyPolicy: Readonly<KeyPolicy>;
  private readonly verify: boolean | undefined;
  private readonly crlConfig: Required<CrlConfig>;
  private readonly now: () => Date;
  /** Constant extensions per profile and key family, encoded once. */
  private readonly extensionCache = new Map<string, Uint8Array[]>();
  private lastCrl?: { info: CrlInfo; madeAt: number; dirty: boolean };
  private crlInFlight?: Promise<CrlInfo>;

  constructor(cfg: CertificationAuthorityConfig) {
    assertSignerConsistent(cfg.signer);
    this.signer = cfg.signer;
    this.certificate = cfg.certificate;
    this.issuerChain = cfg.issuerChain ?? [];
    this.repo = cfg.repository;
    this.own = parseCertificate(cfg.certificate);
    if (!der.equalBytes(this.own.spki, cfg.signer.spki)) throw new Error("CA certificate's public key is not the signer's public key");
    this.keyId = this.own.subjectKeyIdentifier ?? parseSubjectPublicKeyInfo(this.own.spki).keyIdentifier;
    for (const p of cfg.profiles ?? DEFAULT_PROFILES) {
      validateProfile(p);
      if (this.profiles.has(p.name)) throw new Error(`duplicate profile name "${p.name}"`);
      this.profiles.set(p.name, p);
    }
    this.checks = cfg.checks ?? [];
    this.uniqueKeys = cfg.uniquePublicKeys ?? true;
    this.keyPolicy = Object.freeze(keyPolicy(cfg.keyPolicy));
    this.verify = cfg.verifySignatures;
    const crl = cfg.crl ?? {};
    for (const u of crl.distributionPoints ?? []) if (!/^https?:\/\/\S+$/.test(u)) throw new Error(`CRL distribution point must be an http(s) URL, got "${u}"`);
    this.crlConfig = { distributionPoints: crl.distributionPoints ?? [], validityHours: crl.validityHours ?? 24, reuseSeconds: crl.reuseSeconds ?? 300 };
    if (!(this.crlConfig.validityHours > 0)) throw new Error("crl.validityHours must be positive");
    this.now = cfg.clock ?? (() => new Date());
  }

  /** Creates a self-signed root CA (keyCertSign, cRLSign) and records its certificate in the repository. */
  static async createRoot(opts: RootOptions): Promise<CertificationAuthority> {
    assertSignerConsistent(opts.signer);
    const key = parseSubjectPublicKeyInfo(opts.signer.spki);
    const name = encodeName(opts.subject);
    const now = der.wholeSeconds((opts.clock ?? (() => new Date()))());
    const serial = randomSerial();
    const notAfter = new Date(now.getTime() + opts.validityDays * DAY);
    const certificate = await signCertificate(
      {
        serial,
        issuer: name,
        subject: name,
        notBefore: now,
        notAfter,
        spki: opts.signer.spki,
        extensions: [ext.basicConstraints(true, opts.pathLength), ext.keyUsage(ext.KeyUsageFlags.keyCertSign | ext.KeyUsageFlags.cRLSign), ext.subjectKeyIdentifier(key.keyIdentifier)],
      },
      opts.signer,
      { verify: opts.verifySignatures },
    );
    const record: IssuedCertificateRecord = {
      serial: serialToHex(serial),
      subject: opts.subject,
      publicKeySha256: key.sha256,
      profile: "root-ca",
      notBefore: now,
      notAfter,
      issuedAt: now,
      certificate,
    };
    const r = await opts.repository.recordIssued(record, { uniquePublicKey: true });
    if (r !== "recorded") throw new Error(`cannot record the root certificate: ${r}`);
    return new CertificationAuthority({ ...opts, certificate, issuerChain: [] });
  }

  /** This CA's certificate followed by its issuers up to the root (DER). */
  chain(): Uint8Array[] {
    return [this.certificate, ...this.issuerChain];
  }

  /** The root certificate (the last of the chain). */
  root(): Uint8Array {
    return this.issuerChain.length ? this.issuerChain[this.issuerChain.length - 1] : this.certificate;
  }

  profile(name: string): CertificateProfile {
    const p = this.profiles.get(name);
    if (!p) throw new CaRefusal("profile", `unknown profile "${name}"; this CA issues ${[...this.profiles.keys()].join(", ")}`);
    return p;
  }

  /** ST19-ST20: certify a public key for the subject; throws CaRefusal naming the failed check. */
  async issue(req: IssueRequest): Promise<IssuedCertificate> {
    const profile = this.profile(req.profile);
    const subjectName = nameOf(req.subject);
    const key = keyOf(req.publicKey, this.keyPolicy);
    return this.certify({ subject: req.subject, publicKey: key, profile, applicantId: req.applicantId, fromCsr: false }, subjectName);
  }

  /** Steps 421-432: verify the CSR ("csr-signature"), run the checks, certify the requested subject. */
  async issueFromCsr(req: IssueFromCsrRequest): Promise<IssuedCertificate> {
    const profile = this.profile(req.profile);
    const { subject, publicKey } = verifyCsr(req.csr, this.keyPolicy);
    const subjectName = nameOf(subject);
    return this.certify({ subject, publicKey, profile, applicantId: req.applicantId, fromCsr: true }, subjectName);
  }

  private endEntityExtensions(profile: CertificateProfile, ec: boolean): Uint8Array[] {
    const k = `${profile.name}/${ec ? "ec" : "rsa"}`;
    let exts = this.extensionCache.get(k);
    if (!exts) {
      exts = [ext.basicConstraints(false), ext.keyUsage(keyUsageFor(profile.purpose, ec))];
      if (profile.extendedKeyUsage) exts.push(ext.extendedKeyUsage(profile.extendedKeyUsage));
      this.extensionCache.set(k, exts);
    }
    return exts;
  }

  private tailExtensions(): Uint8Array[] {
    let t = this.extensionCache.get("/tail");
    if (!t) {
      t = [ext.authorityKeyIdentifier(this.keyId)];
      if (this.crlConfig.distributionPoints.length) t.push(ext.crlDistributionPoints(this.crlConfig.distributionPoints));
      this.extensionCache.set("/tail", t);
    }
    return t;
  }

  private validity(days: number, backdateSeconds: number): { notBefore: Date; notAfter: Date } {
    const now = der.wholeSeconds(this.now());
    if (now.getTime() >= this.own.notAfter.getTime()) throw new Error("the CA certificate has expired; it cannot issue");
    const notBefore = new Date(Math.max(now.getTime() - backdateSeconds * 1000, this.own.notBefore.getTime()));
    // a certificate never outlives the CA that vouches for it
    const notAfter = new Date(Math.min(now.getTime() + days * DAY, this.own.notAfter.getTime()));
    return { notBefore, notAfter };
  }

  private async certify(ctx: IssuanceContext, subjectName: Uint8Array): Promise<IssuedCertificate> {
    if (this.uniqueKeys && (await this.repo.isPublicKeyCertified(ctx.publicKey.sha256))) {
      throw new CaRefusal("duplicate-public-key", "this public key has been certified before");
    }
    for (const c of this.checks) {
      const r = await c.check(ctx);
      if (!r.ok) throw new CaRefusal(c.name, r.detail);
    }
    const { notBefore, notAfter } = this.validity(ctx.profile.validityDays, ctx.profile.backdateSeconds ?? 300);
    const extensions = [...this.endEntityExtensions(ctx.profile, ctx.publicKey.ec), ext.subjectKeyIdentifier(ctx.publicKey.keyIdentifier), ...this.tailExtensions()];
    if (ctx.subject.email) extensions.push(ext.subjectAltNameEmail(ctx.subject.email));
    return this.signAndRecord(ctx.subject, subjectName, ctx.publicKey, ctx.profile.name, notBefore, notAfter, extensions, ctx.applicantId);
  }

  private async signAndRecord(
    subject: SubjectName,
    subjectName: Uint8Array,
    key: SubjectPublicKey,
    profile: string,
    notBefore: Date,
    notAfter: Date,
    extensions: Uint8Array[],
    applicantId?: string,
  ): Promise<IssuedCertificate> {
    // a serial collision (2^-127 per pair) is retried; the repository, not this loop, is the authority
    for (let attempt = 0; attempt < 3; attempt++) {
      const serial = randomSerial();
      const certificate = await signCertificate({ serial, issuer: this.own.subject, subject: subjectName, notBefore, notAfter, spki: key.spki, extensions }, this.signer, { verify: this.verify });
      const record: IssuedCertificateRecord = {
        serial: serialToHex(serial),
        subject,
        publicKeySha256: key.sha256,
        profile,
        notBefore,
        notAfter,
        issuedAt: der.wholeSeconds(this.now()),
        certificate,
        applicantId,
      };
      // checked again at signing time: of two concurrent requests for one key, only one is recorded
      const r = await this.repo.recordIssued(record, { uniquePublicKey: this.uniqueKeys });
      if (r === "recorded") return { certificate, serial: record.serial, notBefore, notAfter, profile };
      if (r === "duplicate-public-key") throw new CaRefusal("duplicate-public-key", "this public key has been certified before");
    }
    throw new Error("could not draw an unused serial number in 3 attempts");
  }

  /** Certifies a subordinate (issuing) CA key: basicConstraints cA, keyCertSign and cRLSign. */
  async certifySubordinate(req: SubordinateRequest): Promise<IssuedCertificate> {
    const key = keyOf(req.publicKey, this.keyPolicy);
    const subjectName = nameOf(req.subject);
    if (this.uniqueKeys && (await this.repo.isPublicKeyCertified(key.sha256))) throw new CaRefusal("duplicate-public-key", "this public key has been certified before");
    if (!Number.isInteger(req.validityDays) || req.validityDays < 1) throw new CaRefusal("request", "validityDays must be a positive integer");
    const { notBefore, notAfter } = this.validity(req.validityDays, 0);
    const extensions = [
      ext.basicConstraints(true, req.pathLength),
      ext.keyUsage(ext.KeyUsageFlags.keyCertSign | ext.KeyUsageFlags.cRLSign),
      ext.subjectKeyIdentifier(key.keyIdentifier),
      ...this.tailExtensions(),
    ];
    return this.signAndRecord(req.subject, subjectName, key, "subordinate-ca", notBefore, notAfter, extensions);
  }

  /**
   * Revokes a certificate this CA issued (RFC 5280 reason). Revoking again keeps the first record and
   * returns it. Throws CaRefusal "unknown-serial" or "revocation-reason".
   */
  async revoke(serial: string, reason: RevocationReason, opts: { revokedAt?: Date; invalidityDate?: Date } = {}): Promise<RevocationRecord> {
    if (!isRevocationReason(reason)) throw new CaRefusal("revocation-reason", `reason must be one of ${Object.keys(REVOCATION_REASONS).join(", ")}`);
    let hex: string;
    try {
      hex = serialToHex(serialFromHex(serial));
    } catch (e) {
      throw new CaRefusal("unknown-serial", (e as Error).message);
    }
    if (!(await this.repo.findIssued(hex))) throw new CaRefusal("unknown-serial", `serial ${hex} was not issued by this CA`);
    const record: RevocationRecord = { serial: hex, reason, revokedAt: der.wholeSeconds(opts.revokedAt ?? this.now()) };
    if (opts.invalidityDate) record.invalidityDate = der.wholeSeconds(opts.invalidityDate);
    const stored = await this.repo.revoke(record);
    if (this.lastCrl) this.lastCrl.dirty = true;
    return stored;
  }

  /** Issues a new CRL with the next cRLNumber, listing every unexpired revoked certificate. */
  async generateCrl(): Promise<CrlInfo> {
    const now = this.now();
    const thisUpdate = der.wholeSeconds(now);
    const nextUpdate = new Date(thisUpdate.getTime() + this.crlConfig.validityHours * 3_600_000);
    const [number, revoked] = await Promise.all([this.repo.nextCrlNumber(), this.repo.listRevoked(now)]);
    const crl = await signCrl({ issuer: this.own.subject, authorityKeyId: this.keyId, thisUpdate, nextUpdate, number, entries: revoked }, this.signer, { verify: this.verify });
    const info = { crl, number, thisUpdate, nextUpdate };
    this.lastCrl = { info, madeAt: now.getTime(), dirty: false };
    return info;
  }

  /**
   * The current CRL for the distribution point: reused while nothing was revoked through this instance,
   * it is younger than `crl.reuseSeconds`, and less than half its validity has passed.
   */
  async crl(): Promise<CrlInfo> {
    const last = this.lastCrl;
    const now = this.now().getTime();
    if (last && !last.dirty && now - last.madeAt < this.crlConfig.reuseSeconds * 1000 && now < (last.info.thisUpdate.getTime() + last.info.nextUpdate.getTime()) / 2) {
      return last.info;
    }
    this.crlInFlight ??= this.generateCrl().finally(() => (this.crlInFlight = undefined));
    return this.crlInFlight;
  }
}
