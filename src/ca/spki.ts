// SubjectPublicKeyInfo (RFC 5280 §4.1.2.7; RFC 3279 §2.3.1 RSA, RFC 5480 §2 EC) — structural check and key ID.
//
// The CA certifies only the key types the platform uses: EC P-256/P-384 (uncompressed points) and RSA
// 2048/3072/4096. The check is structural (algorithm, curve, sizes); it does not test that an EC point is on
// the curve — a CSR's signature proves possession, and keys from our own custody are generated correctly.

import { createHash } from "node:crypto";
import * as der from "./der.ts";

export type SubjectKeyType = "P256" | "P384" | "RSA2048" | "RSA3072" | "RSA4096";

export interface SubjectPublicKey {
  type: SubjectKeyType;
  /** True for EC keys (key management then means keyAgreement, not keyEncipherment). */
  ec: boolean;
  /** The DER SubjectPublicKeyInfo, exactly as given. */
  spki: Uint8Array;
  /** RFC 5280 §4.2.1.2 method (1): SHA-1 of the subjectPublicKey BIT STRING value. */
  keyIdentifier: Uint8Array;
  /** SHA-256 of the whole SPKI, hex: the key's identity for the "never certified before" rule. */
  sha256: string;
}

const ID_EC_PUBLIC_KEY = der.oid("1.2.840.10045.2.1");
const CURVES: [Uint8Array, SubjectKeyType, number][] = [
  [der.oid("1.2.840.10045.3.1.7"), "P256", 65],
  [der.oid("1.3.132.0.34"), "P384", 97],
];
const RSA_ENCRYPTION = der.oid("1.2.840.113549.1.1.1");
const RSA_SIZES: Record<number, SubjectKeyType> = { 2048: "RSA2048", 3072: "RSA3072", 4096: "RSA4096" };

export class InvalidPublicKeyError extends Error {}

/** Parses and checks a DER SubjectPublicKeyInfo; throws InvalidPublicKeyError saying what was expected. */
export function parseSubjectPublicKeyInfo(spki: Uint8Array): SubjectPublicKey {
  try {
    return parse(spki);
  } catch (e) {
    if (e instanceof InvalidPublicKeyError) throw e;
    throw new InvalidPublicKeyError(`public key is not a DER SubjectPublicKeyInfo: ${(e as Error).message}`);
  }
}

function parse(spki: Uint8Array): SubjectPublicKey {
  const top = der.readOnly(spki, der.TAG.SEQUENCE, "SubjectPublicKeyInfo");
  const [algTlv, keyTlv, ...extra] = der.children(spki, top);
  if (!algTlv || !keyTlv || extra.length || algTlv.tag !== der.TAG.SEQUENCE || keyTlv.tag !== der.TAG.BIT_STRING) {
    throw new InvalidPublicKeyError("SubjectPublicKeyInfo must be SEQUENCE { AlgorithmIdentifier, BIT STRING }");
  }
  const [algOid, params, ...more] = der.children(spki, algTlv);
  if (!algOid || algOid.tag !== der.TAG.OID || more.length) throw new InvalidPublicKeyError("malformed AlgorithmIdentifier");
  const bits = der.bytesOf(spki, keyTlv);
  if (bits.length < 2 || bits[0] !== 0) throw new InvalidPublicKeyError("subjectPublicKey must have no unused bits");
  const key = bits.subarray(1);
  const algEnc = der.encodingOf(spki, algOid);
  let type: SubjectKeyType;
  if (der.equalBytes(algEnc, ID_EC_PUBLIC_KEY)) {
    const curve = params && params.tag === der.TAG.OID ? CURVES.find(([o]) => der.equalBytes(o, der.encodingOf(spki, params))) : undefined;
    if (!curve) throw new InvalidPublicKeyError("EC key must name curve P-256 or P-384");
    if (key.length !== curve[2] || key[0] !== 0x04) throw new InvalidPublicKeyError(`${curve[1]} key must be an uncompressed point of ${curve[2]} bytes`);
    type = curve[1];
  } else if (der.equalBytes(algEnc, RSA_ENCRYPTION)) {
    if (!params || params.tag !== der.TAG.NULL || params.end !== params.start) throw new InvalidPublicKeyError("rsaEncryption parameters must be NULL");
    const rsa = der.readOnly(key, der.TAG.SEQUENCE, "RSAPublicKey");
    const [n, e, ...rest] = der.children(key, rsa);
    if (!n || !e || rest.length || n.tag !== der.TAG.INTEGER || e.tag !== der.TAG.INTEGER) throw new InvalidPublicKeyError("RSAPublicKey must be SEQUENCE { n, e }");
    let mod = der.bytesOf(key, n);
    if (mod[0] & 0x80) throw new InvalidPublicKeyError("RSA modulus is negative");
    while (mod.length > 1 && mod[0] === 0) mod = mod.subarray(1);
    const bitLen = (mod.length - 1) * 8 + (32 - Math.clz32(mod[0]));
    const t = RSA_SIZES[bitLen];
    if (!t) throw new InvalidPublicKeyError(`RSA modulus of ${bitLen} bits; expected 2048, 3072 or 4096`);
    const exp = der.bytesOf(key, e);
    if (exp[0] & 0x80 || !(exp[exp.length - 1] & 1) || (exp.length === 1 && exp[0] < 3)) throw new InvalidPublicKeyError("RSA public exponent must be odd and at least 3");
    type = t;
  } else {
    throw new InvalidPublicKeyError("public key algorithm must be id-ecPublicKey or rsaEncryption");
  }
  return {
    type,
    ec: type === "P256" || type === "P384",
    spki,
    keyIdentifier: new Uint8Array(createHash("sha1").update(key).digest()),
    sha256: createHash("sha256").update(spki).digest("hex"),
  };
}
