// The JSON shapes between the issuer and a CA at another site (seed 000 ST19-ST21) that src/server/ca-routes.ts
// serves and src/ca/http-client.ts sends: the certify request and answer, the revoke request, the CA chain. One
// TypeBox schema each — the routes validate, serialise and publish them — and its static type, which the CaClient
// interface (client.ts) and both ends use. Binary values travel as base64 DER (public keys) or PEM (certificates,
// CSRs); times as ISO 8601.
//
// Never here: a SQL driver, fastify, key material.

import { Type, type Static } from "typebox";
import { REVOCATION_REASONS, type RevocationReason } from "./crl.ts";
import { SUBJECT_FIELDS, type SubjectName } from "./name.ts";
import { Closed, Str } from "../util/wire.ts";

/**
 * The schema of a subject (name.ts SubjectName): one field at least, each a string of 1..256; organizationalUnit a
 * string or a list of them, bounded by `ou` where a route bounds it (the key generation device's personal data).
 * name.ts checks lengths and characters.
 */
export function subjectSchema(ou: { maxLength?: number; maxItems?: number } = {}) {
  const unit = { type: "string", minLength: 1, ...(ou.maxLength === undefined ? {} : { maxLength: ou.maxLength }) };
  return Type.Unsafe<SubjectName>({
    type: "object",
    additionalProperties: false,
    minProperties: 1,
    properties: Object.fromEntries(
      SUBJECT_FIELDS.map((f) => [
        f,
        f === "organizationalUnit"
          ? { anyOf: [unit, { type: "array", minItems: 1, ...(ou.maxItems === undefined ? {} : { maxItems: ou.maxItems }), items: unit }] }
          : { type: "string", minLength: 1, maxLength: 256 },
      ]),
    ),
  });
}

const Subject = subjectSchema();

/** POST {base}/certify: exactly one of {subject + publicKey} or {csr}. */
export const CertifyRequest = Type.Object(
  {
    profile: Type.String({ minLength: 1, maxLength: 64 }),
    /** The issuer's user ID; the personal-data check compares against this user's registration. */
    applicantId: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
    subject: Type.Optional(Subject),
    /**
     * Base64 DER SubjectPublicKeyInfo, in its one DER encoding (src/ca/spki.ts). Over HTTP only from the issuing
     * service's credential, for keys in its custody (src/server/ca-routes.ts); anyone else sends a `csr`.
     */
    publicKey: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, pattern: "^[A-Za-z0-9+/]+={0,2}$" })),
    /** PEM "CERTIFICATE REQUEST" (PKCS#10). */
    csr: Type.Optional(Type.String({ minLength: 1, maxLength: 16384 })),
  },
  {
    additionalProperties: false,
    oneOf: [
      { required: ["subject", "publicKey"], not: { required: ["csr"] } },
      { required: ["csr"], not: { anyOf: [{ required: ["subject"] }, { required: ["publicKey"] }] } },
    ],
  },
);
export type CertifyRequest = Static<typeof CertifyRequest>;

/** The certify answer: the certificate as PEM "CERTIFICATE", its validity in ISO 8601. */
export const CertifyResponseJson = Closed({ certificate: Str, serial: Str, notBefore: Str, notAfter: Str });
export type CertifyResponseJson = Static<typeof CertifyResponseJson>;

/** POST {base}/revoke (answered 204). */
export const RevokeRequestJson = Closed({
  serial: Type.String({ pattern: "^[0-9a-fA-F]{2,40}$" }),
  reason: Type.Unsafe<RevocationReason>({ type: "string", enum: Object.keys(REVOCATION_REASONS) }),
});
export type RevokeRequestJson = Static<typeof RevokeRequestJson>;

/** GET {base}/certificates: the CA chain as PEM, issuing CA first, root last. */
export const CaCertificatesJson = Closed({ certificates: Type.Array(Str) });
export type CaCertificatesJson = Static<typeof CaCertificatesJson>;
