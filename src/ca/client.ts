// The issuer ↔ CA interface (seed 000 ST19-ST21: the issuing system asks a certification authority at
// another site). `CaClient` is what the issuer codes against; `LocalCaClient` calls a CertificationAuthority
// in-process; an HTTP client and routes (server/) carry the same JSON shapes (wire.ts):
//
//   POST {base}/certify      body CertifyRequest        → 200 CertifyResponseJson | 422 CaProblem
//   POST {base}/revoke       body RevokeRequestJson     → 204                     | 404/422 CaProblem
//   GET  {base}/crl          → 200 application/pkix-crl (DER, RFC 5280 §4.2.1.13)
//   GET  {base}/certificates → 200 { certificates: PEM[] }  (issuing CA first, root last)
//
// Binary values travel as base64 DER (public keys) or PEM (certificates, CSRs); times as ISO 8601.
// A refusal travels as RFC 9457 problem+json carrying the failed check's name, and the client re-throws it
// as the same CaRefusal, so the issuer handles a remote refusal exactly like a local one.

import { CaRefusal } from "./checks.ts";
import type { CertificationAuthority } from "./authority.ts";
import { isRevocationReason, REVOCATION_REASONS, type RevocationReason } from "./crl.ts";
import { fromPem, toPem } from "./pem.ts";
import type { CertifyRequest, CertifyResponseJson } from "./wire.ts";

export { CertifyRequest, CertifyResponseJson, RevokeRequestJson, CaCertificatesJson } from "./wire.ts";

export interface CertifyResult {
  certificate: Uint8Array;
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

/** RFC 9457 problem details for a refusal. */
export interface CaProblem {
  type: "urn:cardkms:ca:refused";
  title: string;
  status: number;
  /** The name of the failed check, e.g. "csr-signature", "personal-data", "duplicate-public-key". */
  check: string;
  detail: string;
}

export interface CaClient {
  /** ST19-ST20: ask the CA to certify; throws CaRefusal naming the failed check. */
  certify(request: CertifyRequest): Promise<CertifyResult>;
  revoke(serial: string, reason: RevocationReason): Promise<void>;
  /** The CA's current CRL, DER. */
  crl(): Promise<Uint8Array>;
  /** The CA chain (DER): issuing CA first, root last. */
  caCertificates(): Promise<Uint8Array[]>;
}

export function encodeCertifyResponse(r: CertifyResult): CertifyResponseJson {
  return { certificate: toPem(r.certificate, "CERTIFICATE"), serial: r.serial, notBefore: r.notBefore.toISOString(), notAfter: r.notAfter.toISOString() };
}

export function decodeCertifyResponse(j: CertifyResponseJson): CertifyResult {
  return { certificate: fromPem(j.certificate, "CERTIFICATE"), serial: j.serial, notBefore: new Date(j.notBefore), notAfter: new Date(j.notAfter) };
}

/** HTTP status for a refusal: unknown serial is 404, everything else 422 (the request was understood and refused). */
export function refusalToProblem(e: CaRefusal): CaProblem {
  const status = e.check === "unknown-serial" ? 404 : 422;
  return { type: "urn:cardkms:ca:refused", title: "Refused by the certification authority", status, check: e.check, detail: e.detail };
}

export function problemToRefusal(p: CaProblem): CaRefusal {
  return new CaRefusal(p.check, p.detail);
}

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** Checks the shape of a CertifyRequest (the HTTP route's schema does the same); throws CaRefusal "request". */
export function validateCertifyRequest(r: CertifyRequest): void {
  if (typeof r !== "object" || r === null) throw new CaRefusal("request", "request must be an object");
  const allowed = new Set(["profile", "applicantId", "subject", "publicKey", "csr"]);
  for (const k of Object.keys(r)) if (!allowed.has(k)) throw new CaRefusal("request", `unknown field "${k}"`);
  if (typeof r.profile !== "string" || !r.profile) throw new CaRefusal("request", "profile must be a non-empty string");
  if (r.applicantId !== undefined && (typeof r.applicantId !== "string" || !r.applicantId)) throw new CaRefusal("request", "applicantId must be a non-empty string");
  const byKey = r.subject !== undefined || r.publicKey !== undefined;
  if (byKey === (r.csr !== undefined)) throw new CaRefusal("request", "give either subject and publicKey, or csr");
  if (byKey) {
    if (typeof r.subject !== "object" || r.subject === null) throw new CaRefusal("request", "subject must be an object");
    if (typeof r.publicKey !== "string" || !BASE64.test(r.publicKey)) throw new CaRefusal("request", "publicKey must be base64 DER SubjectPublicKeyInfo");
  } else if (typeof r.csr !== "string") {
    throw new CaRefusal("request", "csr must be PEM text");
  }
}

/** CaClient calling a CertificationAuthority in the same process, through the same request shapes as HTTP. */
export class LocalCaClient implements CaClient {
  constructor(private readonly ca: CertificationAuthority) {}

  async certify(request: CertifyRequest): Promise<CertifyResult> {
    validateCertifyRequest(request);
    const r =
      request.csr !== undefined
        ? await this.ca.issueFromCsr({ csr: request.csr, profile: request.profile, applicantId: request.applicantId })
        : await this.ca.issue({
            subject: request.subject!,
            publicKey: new Uint8Array(Buffer.from(request.publicKey!, "base64")),
            profile: request.profile,
            applicantId: request.applicantId,
          });
    return { certificate: r.certificate, serial: r.serial, notBefore: r.notBefore, notAfter: r.notAfter };
  }

  async revoke(serial: string, reason: RevocationReason): Promise<void> {
    if (!isRevocationReason(reason)) throw new CaRefusal("revocation-reason", `reason must be one of ${Object.keys(REVOCATION_REASONS).join(", ")}`);
    await this.ca.revoke(serial, reason);
  }

  async crl(): Promise<Uint8Array> {
    return (await this.ca.crl()).crl;
  }

  async caCertificates(): Promise<Uint8Array[]> {
    return this.ca.chain();
  }
}
