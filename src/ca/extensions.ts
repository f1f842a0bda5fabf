// Certificate and CRL extensions (RFC 5280 §4.2, §5.2, §5.3), each returned as the DER of one Extension.
//
// Values are encoded by @peculiar/asn1-x509 — these are computed once per CA or profile and then reused,
// except the SubjectKeyIdentifier, which is per certificate and hand-encoded (a fixed two-level OCTET STRING).

import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import * as asn from "@peculiar/asn1-x509";
import * as der from "./der.ts";

function extension(extnID: string, critical: boolean, value: unknown): Uint8Array {
  return new Uint8Array(AsnConvert.serialize(new asn.Extension({ extnID, critical, extnValue: new OctetString(AsnConvert.serialize(value)) })));
}

/** RFC 5280 §4.2.1.9: critical in CA certificates; we mark it critical in end-entity certificates too. */
export function basicConstraints(ca: boolean, pathLength?: number): Uint8Array {
  return extension(asn.id_ce_basicConstraints, true, new asn.BasicConstraints(ca ? { cA: true, pathLenConstraint: pathLength } : {}));
}

export const KeyUsageFlags = asn.KeyUsageFlags;

/** RFC 5280 §4.2.1.3: "conforming CAs SHOULD mark this extension as critical". */
export function keyUsage(flags: number): Uint8Array {
  if (!flags) throw new Error("keyUsage needs at least one bit");
  return extension(asn.id_ce_keyUsage, true, new asn.KeyUsage(flags));
}

/** RFC 5280 §4.2.1.12, non-critical so that relying parties that do not know a purpose still use the key usage. */
export function extendedKeyUsage(purposes: readonly string[]): Uint8Array {
  return extension(asn.id_ce_extKeyUsage, false, new asn.ExtendedKeyUsage([...purposes]));
}

const SKI_OID = der.oid(asn.id_ce_subjectKeyIdentifier);

/** RFC 5280 §4.2.1.2, non-critical. */
export function subjectKeyIdentifier(keyId: Uint8Array): Uint8Array {
  return der.sequence(SKI_OID, der.octetString(der.octetString(keyId)));
}

/** RFC 5280 §4.2.1.1 (keyIdentifier form only), non-critical; also used in CRLs (§5.2.1). */
export function authorityKeyIdentifier(keyId: Uint8Array): Uint8Array {
  return extension(asn.id_ce_authorityKeyIdentifier, false, new asn.AuthorityKeyIdentifier({ keyIdentifier: new asn.KeyIdentifier(keyId) }));
}

/** RFC 5280 §4.2.1.13: one DistributionPoint per URL, fullName URIs, non-critical. */
export function crlDistributionPoints(urls: readonly string[]): Uint8Array {
  const points = urls.map((url) => new asn.DistributionPoint({ distributionPoint: new asn.DistributionPointName({ fullName: [new asn.GeneralName({ uniformResourceIdentifier: url })] }) }));
  return extension(asn.id_ce_cRLDistributionPoints, false, new asn.CRLDistributionPoints(points));
}

/** RFC 5280 §4.2.1.6: the e-mail address as rfc822Name; non-critical because the subject is not empty. */
export function subjectAltNameEmail(email: string): Uint8Array {
  // GeneralNames ::= SEQUENCE { [1] IMPLICIT IA5String }; hand-encoded because it is per certificate
  return der.sequence(SAN_OID, der.octetString(der.sequence(der.tlv(0x81, new TextEncoder().encode(email)))));
}
const SAN_OID = der.oid(asn.id_ce_subjectAltName);

/** RFC 5280 §5.2.3, non-critical. */
export function crlNumber(n: number): Uint8Array {
  return extension(asn.id_ce_cRLNumber, false, new asn.CRLNumber(n));
}

const REASON_OID = der.oid(asn.id_ce_cRLReasons);

/** RFC 5280 §5.3.1 reasonCode entry extension, non-critical; hand-encoded because CRLs carry many. */
export function reasonCode(code: number): Uint8Array {
  return der.sequence(REASON_OID, der.octetString(der.tlv(der.TAG.ENUMERATED, Uint8Array.of(code))));
}

const INVALIDITY_OID = der.oid(asn.id_ce_invalidityDate);

/** RFC 5280 §5.3.2 invalidityDate entry extension (GeneralizedTime), non-critical. */
export function invalidityDate(d: Date): Uint8Array {
  const s = d
    .toISOString()
    .replace(/[-:T]/g, "")
    .replace(/\.\d+Z$/, "Z");
  return der.sequence(INVALIDITY_OID, der.octetString(der.tlv(der.TAG.GENERALIZED_TIME, new TextEncoder().encode(s))));
}

export const EKU = {
  clientAuth: asn.id_kp_clientAuth,
  emailProtection: asn.id_kp_emailProtection,
  /** Microsoft smart card logon (1.3.6.1.4.1.311.20.2.2). */
  smartcardLogon: "1.3.6.1.4.1.311.20.2.2",
  /** RFC 4556 id-pkinit-KPClientAuth. */
  pkinitClientAuth: "1.3.6.1.5.2.3.4",
} as const;
