// The issuer ↔ CA interface (seed 000 ST19-ST21: the issuing system asks a certification authority at
// another site). `CaClient` is what the issuer codes against; `LocalCaClient` calls a CertificationAuthority
// in-process; an HTTP client and routes (server/) carry the same JSON shapes defined here:
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
import { SUBJECT_FIELDS, type SubjectName } from "./name.ts";
import { fromPem, toPem } from "./pem.ts";

/** Exactly one of {subject + publicKey} or {csr}. */
export interface CertifyRequest {
  profile: string;
  /** The issuer's user ID; the personal-data check compares against this user's registration. */
  applicantId?: string;
  subject?: SubjectName;
  /**
   * Base64 DER SubjectPublicKeyInfo, in its one DER encoding (src/ca/spki.ts). Over HTTP only from the issuing
   * service's credential, for keys in its custody (src/server/ca-routes.ts); anyone else sends a `csr`.
   */
  publicKey?: string;
  /** PEM "CERTIFICATE REQUEST" (PKCS#10). */
  csr?: string;
}

export interface CertifyResult {
  certificate: Uint8Array;
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

export interface CertifyResponseJson {
  /** PEM "CERTIFICATE". */
  certificate: string;
  serial: string;
  notBefore: string;
  notAfter: string;
}

export interface RevokeRequestJson {
  serial: string;
  reason: RevocationReason;
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

const subjectSchema = {
  type: "object",
  additionalProperties: false,
  minProperties: 1,
  properties: Object.fromEntries(
    SUBJECT_FIELDS.map((f) => [
      f,
      f === "organizationalUnit"
        ? {
            anyOf: [
              { type: "string", minLength: 1 },
              { type: "array", minItems: 1, items: { type: "string", minLength: 1 } },
            ],
          }
        : { type: "string", minLength: 1, maxLength: 256 },
    ]),
  ),
} as const;

/** JSON Schema of CertifyRequest, for the HTTP route (Fastify). */
export const CERTIFY_REQUEST_SCHEMA = {
  type: "object",
  additionalProperties: false,
  required: ["profile"],
  properties: {
    profile: { type: "string", minLength: 1, maxLength: 64 },
    applicantId: { type: "string", minLength: 1, maxLength: 256 },
    subject: subjectSchema,
    publicKey: { type: "string", minLength: 1, maxLength: 4096, pattern: "^[A-Za-z0-9+/]+={0,2}$" },
    csr: { type: "string", minLength: 1, maxLength: 16384 },
  },
  oneOf: [
    { required: ["subject", "publicKey"], not: { required: ["csr"] } },
    { required: ["csr"], not: { anyOf: [{ required: ["subject"] }, { required: ["publicKey"] }] } },
  ],
} as const;

/** JSON Schema of RevokeRequestJson. */
export const REVOKE_REQUEST_SCHEMA = {
  type: "object",
  additionalProperties: false,
  required: ["serial", "reason"],
  properties: {
    serial: { type: "string", pattern: "^[0-9a-fA-F]{2,40}$" },
    reason: { type: "string", enum: Object.keys(REVOCATION_REASONS) },
  },
} as const;

/** JSON Schema of CertifyResponseJson. */
export const CERTIFY_RESPONSE_SCHEMA = {
  type: "object",
  additionalProperties: false,
  required: ["certificate", "serial", "notBefore", "notAfter"],
  properties: { certificate: { type: "string" }, serial: { type: "string" }, notBefore: { type: "string" }, notAfter: { type: "string" } },
} as const;

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
