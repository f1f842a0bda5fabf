// The certification issuing center of seed 001 embodiment 2 (FIG. 5 device 140; steps 420-432; claims 18-20,
// 29-32), around a CertificationAuthority. It certifies only signed requests from a key generation device, and
// runs the checks in the seed's order before it signs:
//   422 "csr-signature"        the request verifies with the public key it carries (unit 143: tampering on the path);
//   423 "personal-data"        the personal data in the request equal what the user gave the center directly at
//                              registration (unit 141; step 420) — a tampered entry at the device is caught here;
//   424 "duplicate-public-key" the key was never certified before (unit 142), checked once before signing and again
//                              atomically when the certificate is recorded (CaRepository.recordIssued), so of two
//                              concurrent requests for one key exactly one is certified.
// 431-432: the CA builds and signs the certificate; the device verifies it on arrival (verify.ts, step 433).
//
// It speaks CaClient, so the key generation device uses a center in this process, or one at another site through
// the HTTP client (src/ca/http-client.ts) when the CA service runs `centerChecks` (below) itself.
// Never: sees a private key (the request is signed by it, not carrying it), or logs personal data.

import type { CertificationAuthority } from "../ca/authority.ts";
import { CaRefusal, personalDataCheck, type IssuanceCheck } from "../ca/checks.ts";
import { validateCertifyRequest, type CaClient, type CertifyRequest, type CertifyResult } from "../ca/client.ts";
import type { RevocationReason } from "../ca/crl.ts";
import { verifyCsr } from "../ca/csr.ts";
import { validateSubject, type SubjectName } from "../ca/name.ts";

/** Step 420: the personal data each user gave the center directly, by applicant ID. */
export interface RegistrationLookup {
  personalData(applicantId: string): Promise<SubjectName | undefined>;
}

/** Registrations kept in memory (tests, the demo); a deployment reads the issuer's user records. */
export class MemoryRegistrationBook implements RegistrationLookup {
  private readonly byId = new Map<string, SubjectName>();

  /** Records (or replaces) what the user presented at the center; the data must be certifiable as given. */
  register(applicantId: string, personalData: SubjectName): void {
    if (typeof applicantId !== "string" || !applicantId) throw new TypeError("applicantId must be a non-empty string");
    validateSubject(personalData);
    this.byId.set(applicantId, structuredClone(personalData));
  }

  async personalData(applicantId: string): Promise<SubjectName | undefined> {
    const s = this.byId.get(applicantId);
    return s && structuredClone(s);
  }
}

/**
 * Refuses anything but a verified PKCS#10 request ("csr-signature"): a center of embodiment 2 certifies only
 * requests signed by the key they carry, never a bare {subject, publicKey}.
 */
export const signedRequestCheck: IssuanceCheck = {
  name: "csr-signature",
  async check(ctx) {
    return ctx.fromCsr ? { ok: true } : { ok: false, detail: "the center certifies only PKCS#10 requests signed by the key they carry" };
  },
};

/**
 * Steps 422-423 as IssuanceChecks, for a CertificationAuthority that serves key generation devices at other
 * sites (pass as `checks`): only signed requests, and personal data equal to the registration. Step 424 is the
 * CA's own `uniquePublicKeys` (on by default), enforced atomically by its repository.
 */
export function centerChecks(registrations: RegistrationLookup): IssuanceCheck[] {
  return [signedRequestCheck, personalDataCheck((id) => registrations.personalData(id))];
}

export interface CertificationCenterOptions {
  authority: CertificationAuthority;
  registrations: RegistrationLookup;
}

/** The center as a CaClient, running steps 422-424 in order before the authority signs (431-432). */
export class CertificationCenter implements CaClient {
  private readonly authority: CertificationAuthority;
  private readonly personalData: IssuanceCheck;

  constructor(opts: CertificationCenterOptions) {
    if (opts.authority === undefined || opts.registrations === undefined) throw new TypeError("a certification center needs an authority and the registrations");
    this.authority = opts.authority;
    this.personalData = personalDataCheck((id) => opts.registrations.personalData(id));
  }

  /** Steps 421-432; throws CaRefusal naming the failed check. */
  async certify(request: CertifyRequest): Promise<CertifyResult> {
    validateCertifyRequest(request);
    if (request.csr === undefined) throw new CaRefusal("csr-signature", "the center certifies only PKCS#10 requests signed by the key they carry");
    if (!request.applicantId) throw new CaRefusal("personal-data", "the request names no applicant whose registration it can be compared with");
    const profile = this.authority.profile(request.profile);
    // 422: tampering on the path
    const { subject, publicKey } = verifyCsr(request.csr, this.authority.keyPolicy);
    // 423: the personal data entered at the device against what the user gave the center directly
    const r = await this.personalData.check({ subject, publicKey, profile, applicantId: request.applicantId, fromCsr: true });
    if (!r.ok) throw new CaRefusal(this.personalData.name, r.detail);
    // 424 + 431-432: the authority checks the key again and records it atomically with the certificate
    const issued = await this.authority.issueFromCsr({ csr: request.csr, profile: request.profile, applicantId: request.applicantId });
    return { certificate: issued.certificate, serial: issued.serial, notBefore: issued.notBefore, notAfter: issued.notAfter };
  }

  async revoke(serial: string, reason: RevocationReason): Promise<void> {
    await this.authority.revoke(serial, reason);
  }

  async crl(): Promise<Uint8Array> {
    return (await this.authority.crl()).crl;
  }

  async caCertificates(): Promise<Uint8Array[]> {
    return this.authority.chain();
  }
}

/**
 * The CA a site serves to others (src/server/ca-routes.ts): signed requests (`csr`, from key generation devices at
 * other sites) go through the center's checks 422-424; requests naming a subject and a public key (an issuer
 * certifying keys it generated in its own custody, seed 000 ST19-ST21 — the routes admit them only from the issuing
 * service's credential, role "issuer") go to `direct`. Revocation, CRL and chain are the authority's either way.
 */
export function signedRequestsThroughCenter(direct: CaClient, center: CertificationCenter): CaClient {
  return {
    certify: (request) => (request !== null && typeof request === "object" && request.csr !== undefined ? center.certify(request) : direct.certify(request)),
    revoke: (serial, reason) => direct.revoke(serial, reason),
    crl: () => direct.crl(),
    caCertificates: () => direct.caCertificates(),
  };
}
