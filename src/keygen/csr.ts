// PKCS#10 certification request (RFC 2986 §4) built by the key generation device and signed inside key custody
// (seed 001, steps 416-418; claims 17 and 28: "producing a certification request … from the user's personal data
// and the public key", "signing the certification request … by the secret key").
//
// The CertificationRequestInfo is encoded here with @peculiar/asn1-schema and the X.509 types of
// @peculiar/asn1-x509; its exact DER bytes go to `custody.sign`, so the new private key signs inside custody
// (the HSM on PKCS#11) and never exists in this process. The outer CertificationRequest carries those same bytes
// verbatim (an ANY field), not a re-encoding, so what was signed is what travels.
//
// Never: holds a private key, or logs the personal data it encodes.

import { AsnConvert, AsnProp, AsnPropTypes, AsnArray, AsnType, AsnTypeTypes } from "@peculiar/asn1-schema";
import { AlgorithmIdentifier, Attribute, AttributeTypeAndValue, AttributeValue, Name, RelativeDistinguishedName, SubjectPublicKeyInfo } from "@peculiar/asn1-x509";
import { defaultHash, type HashAlg, type KeyCustody, type KeyPairAlg } from "../custody/custody.ts";
import { validateSubject, type SubjectName } from "../ca/name.ts";
import { toPem } from "../ca/pem.ts";

// --- RFC 2986 §4.1 / §4.2 schemas -------------------------------------------------------------------------------
// Declared by applying asn1-schema's decorator functions by hand: the project compiles without legacy
// decorators, and these four structures are all we need (no dependency on an extra ASN.1 package).

/** Attributes ::= SET OF Attribute — tagged [0] IMPLICIT in CertificationRequestInfo. */
class CsrAttributes extends AsnArray<Attribute> {
  constructor(items?: Attribute[]) {
    super(items);
    Object.setPrototypeOf(this, CsrAttributes.prototype);
  }
}
AsnType({ type: AsnTypeTypes.Set, itemType: Attribute })(CsrAttributes);

/** CertificationRequestInfo ::= SEQUENCE { version INTEGER { v1(0) }, subject Name, subjectPKInfo, attributes [0] }. */
export class CertificationRequestInfo {
  version = 0;
  subject = new Name();
  subjectPKInfo = new SubjectPublicKeyInfo();
  attributes = new CsrAttributes();
  constructor(params: Partial<CertificationRequestInfo> = {}) {
    Object.assign(this, params);
  }
}
AsnType({ type: AsnTypeTypes.Sequence })(CertificationRequestInfo);
AsnProp({ type: AsnPropTypes.Integer })(CertificationRequestInfo.prototype, "version");
AsnProp({ type: Name })(CertificationRequestInfo.prototype, "subject");
AsnProp({ type: SubjectPublicKeyInfo })(CertificationRequestInfo.prototype, "subjectPKInfo");
AsnProp({ type: CsrAttributes, context: 0, implicit: true })(CertificationRequestInfo.prototype, "attributes");

/** CertificationRequest ::= SEQUENCE { certificationRequestInfo, signatureAlgorithm, signature BIT STRING }. */
class CertificationRequest {
  /** The DER of the CertificationRequestInfo exactly as signed. */
  certificationRequestInfo = new ArrayBuffer(0);
  signatureAlgorithm = new AlgorithmIdentifier();
  signature = new ArrayBuffer(0);
  constructor(params: Partial<CertificationRequest> = {}) {
    Object.assign(this, params);
  }
}
AsnType({ type: AsnTypeTypes.Sequence })(CertificationRequest);
AsnProp({ type: AsnPropTypes.Any })(CertificationRequest.prototype, "certificationRequestInfo");
AsnProp({ type: AlgorithmIdentifier })(CertificationRequest.prototype, "signatureAlgorithm");
AsnProp({ type: AsnPropTypes.BitString })(CertificationRequest.prototype, "signature");

// --- subject ------------------------------------------------------------------------------------------------------

type Kind = "utf8" | "printable" | "ia5";

/**
 * RFC 5280 Appendix A attribute types, in the order and with the string types src/ca/name.ts uses, so the
 * center reads back exactly the personal data the device entered (step 423 compares them field by field).
 */
const SUBJECT_ATTRIBUTES: readonly [keyof SubjectName, string, Kind][] = [
  ["country", "2.5.4.6", "printable"],
  ["state", "2.5.4.8", "utf8"],
  ["locality", "2.5.4.7", "utf8"],
  ["organization", "2.5.4.10", "utf8"],
  ["organizationalUnit", "2.5.4.11", "utf8"],
  ["title", "2.5.4.12", "utf8"],
  ["surname", "2.5.4.4", "utf8"],
  ["givenName", "2.5.4.42", "utf8"],
  ["commonName", "2.5.4.3", "utf8"],
  ["serialNumber", "2.5.4.5", "printable"],
  ["email", "1.2.840.113549.1.9.1", "ia5"],
  ["userId", "0.9.2342.19200300.100.1.1", "utf8"],
];

function attributeValue(kind: Kind, v: string): AttributeValue {
  if (kind === "printable") return new AttributeValue({ printableString: v });
  if (kind === "ia5") return new AttributeValue({ ia5String: v });
  return new AttributeValue({ utf8String: v });
}

/**
 * The user's personal data (step 400) as an X.509 Name: one attribute per RDN, most general first. Throws
 * InvalidSubjectError (src/ca/name.ts) naming the field when the data cannot be certified as given.
 */
export function subjectToName(subject: SubjectName): Name {
  validateSubject(subject);
  const rdns: RelativeDistinguishedName[] = [];
  for (const [field, oid, kind] of SUBJECT_ATTRIBUTES) {
    const raw = subject[field];
    if (raw === undefined) continue;
    for (const v of Array.isArray(raw) ? raw : [raw]) rdns.push(new RelativeDistinguishedName([new AttributeTypeAndValue({ type: oid, value: attributeValue(kind, v) })]));
  }
  return new Name(rdns);
}

// --- signature algorithm ------------------------------------------------------------------------------------------

const EC_OIDS: Record<HashAlg, string> = { "SHA-256": "1.2.840.10045.4.3.2", "SHA-384": "1.2.840.10045.4.3.3", "SHA-512": "1.2.840.10045.4.3.4" };
const RSA_OIDS: Record<HashAlg, string> = { "SHA-256": "1.2.840.113549.1.1.11", "SHA-384": "1.2.840.113549.1.1.12", "SHA-512": "1.2.840.113549.1.1.13" };

/**
 * signatureAlgorithm for a key of `alg` signing with `hash`: ecdsa-with-SHA* with absent parameters (RFC 5758
 * §3.2), sha*WithRSAEncryption with NULL parameters (RFC 4055 §5). custody.sign returns a DER ECDSA-Sig-Value
 * and a PKCS#1 v1.5 signature respectively, which is what these identifiers promise.
 */
export function csrSignatureAlgorithm(alg: KeyPairAlg, hash: HashAlg): AlgorithmIdentifier {
  return alg === "P256" || alg === "P384" ? new AlgorithmIdentifier({ algorithm: EC_OIDS[hash] }) : new AlgorithmIdentifier({ algorithm: RSA_OIDS[hash], parameters: null });
}

// --- the request --------------------------------------------------------------------------------------------------

export interface SignedCsr {
  /** DER CertificationRequest. */
  der: Uint8Array;
  /** PEM "CERTIFICATE REQUEST", as CaClient.certify wants it. */
  pem: string;
  /** The SubjectPublicKeyInfo the request carries (DER, as custody returned it). */
  spki: Uint8Array;
}

const bytes = (ab: ArrayBuffer): Uint8Array => new Uint8Array(ab);
const arrayBuffer = (u: Uint8Array): ArrayBuffer => u.slice().buffer as ArrayBuffer;

/**
 * Step 417: a PKCS#10 request for the key pair `label` in custody, naming `subject` (the personal data entered at
 * the device), signed by that key pair's private key inside custody with `hash` (default: custody's
 * defaultHash for the algorithm — SHA-384 for P-384 and RSA-3072, SHA-256 otherwise). No attributes are
 * requested: the profile is chosen by the center, not by the requester.
 */
export async function buildSignedCsr(custody: KeyCustody, label: string, subject: SubjectName, opts: { hash?: HashAlg } = {}): Promise<SignedCsr> {
  const info = await custody.keyInfo(label);
  if (!info || info.kind !== "keyPair") throw new TypeError(`custody holds no key pair labelled ${label}`);
  const alg = info.type as KeyPairAlg;
  const hash = opts.hash ?? defaultHash(alg);
  const spki = await custody.publicKey(label);
  const cri = new CertificationRequestInfo({
    version: 0,
    subject: subjectToName(subject),
    subjectPKInfo: AsnConvert.parse(arrayBuffer(spki), SubjectPublicKeyInfo),
    attributes: new CsrAttributes([]),
  });
  const tbs = bytes(AsnConvert.serialize(cri));
  const signature = await custody.sign(label, tbs, { hash });
  const der = bytes(
    AsnConvert.serialize(new CertificationRequest({ certificationRequestInfo: arrayBuffer(tbs), signatureAlgorithm: csrSignatureAlgorithm(alg, hash), signature: arrayBuffer(signature) })),
  );
  return { der, pem: toPem(der, "CERTIFICATE REQUEST"), spki };
}
