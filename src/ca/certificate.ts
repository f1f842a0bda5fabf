// X.509 v3 certificate assembly (RFC 5280 §4.1) with the signature produced by a CaSigner.
//
// TBSCertificate is concatenated from DER pieces; the signer signs exactly those bytes, and the Certificate
// is SEQUENCE { tbsCertificate, signatureAlgorithm, BIT STRING signature }. A CRL has the same outer shape
// (§5.1), so `signToBeSigned` serves both.

import { createPublicKey, verify as nodeVerify, randomFillSync, type KeyObject } from "node:crypto";
import * as der from "./der.ts";
import { signatureAlgorithm, type CaSigner } from "./signer.ts";

const V3 = der.explicit(0, Uint8Array.of(der.TAG.INTEGER, 1, 2));

export interface TbsCertificateFields {
  /** Positive serial, big-endian magnitude (see `randomSerial`). */
  serial: Uint8Array;
  /** DER Name of the issuer, byte-identical to the issuer certificate's subject. */
  issuer: Uint8Array;
  subject: Uint8Array;
  notBefore: Date;
  notAfter: Date;
  /** DER SubjectPublicKeyInfo of the certified key. */
  spki: Uint8Array;
  /** DER Extension elements, in the order they should appear. */
  extensions: readonly Uint8Array[];
}

/**
 * A fresh serial: 16 random bytes, top bit clear so the INTEGER is positive, first byte non-zero so the
 * encoding is always 16 octets (RFC 5280 §4.1.2.2: at most 20 octets; CA/B Forum: at least 64 random bits).
 */
export function randomSerial(): Uint8Array {
  // one CSPRNG call per 256 serials: a call per serial costs more than the rest of the serial handling
  if (poolAt + 16 > pool.length) {
    randomFillSync(pool);
    poolAt = 0;
  }
  const b = pool.slice(poolAt, poolAt + 16);
  pool.fill(0, poolAt, poolAt + 16);
  poolAt += 16;
  b[0] = b[0] & 0x7f || 0x01;
  return b;
}
const pool = new Uint8Array(4096);
let poolAt = pool.length;

export const serialToHex = (serial: Uint8Array): string => der.toHex(serial);

/** Parses a serial in lowercase or uppercase hex (optionally with ':' separators) to its magnitude bytes. */
export function serialFromHex(hex: string): Uint8Array {
  const h = hex.replace(/:/g, "").toLowerCase();
  if (!/^([0-9a-f]{2}){1,20}$/.test(h)) throw new Error(`serial must be 1-20 bytes of hex, got "${hex}"`);
  return new Uint8Array(Buffer.from(h, "hex"));
}

export function encodeTbsCertificate(f: TbsCertificateFields, signatureAlgorithmId: Uint8Array): Uint8Array {
  const parts = [V3, der.unsignedInteger(f.serial), signatureAlgorithmId, f.issuer, der.sequence(der.time(f.notBefore), der.time(f.notAfter)), f.subject, f.spki];
  if (f.extensions.length) parts.push(der.explicit(3, der.sequence(...f.extensions)));
  return der.sequence(...parts);
}

/** Signature checks that catch a misbehaving signer before its output leaves the CA. */
export interface SignOptions {
  /**
   * Verify each signature with the signer's public key before returning it. Catches an HSM returning a
   * faulty RSA-CRT signature, which would leak the key (Boneh-DeMillo-Lipton). Default: on for RSA keys,
   * off for ECDSA, where a verification costs more than the signature and a fault does not expose the
   * key through the signature; the DER shape of an ECDSA signature is always checked.
   */
  verify?: boolean;
}

const verifyKeys = new WeakMap<CaSigner, KeyObject>();

/** Signs DER TBS bytes with the CA signer and wraps them as SEQUENCE { tbs, algorithm, BIT STRING sig }. */
export async function signToBeSigned(tbs: Uint8Array, signer: CaSigner, opts: SignOptions = {}): Promise<Uint8Array> {
  const alg = signatureAlgorithm(signer.alg);
  const signature = await signer.sign(tbs);
  if (!(signature instanceof Uint8Array) || signature.length === 0) throw new Error("CaSigner.sign returned no signature bytes");
  if (alg.oid.startsWith("1.2.840.10045")) {
    // ECDSA-Sig-Value must be DER; raw r||s (PKCS#11) has no SEQUENCE header
    const ok = (() => {
      try {
        const t = der.readOnly(signature, der.TAG.SEQUENCE, "ECDSA-Sig-Value");
        const kids = der.children(signature, t);
        return kids.length === 2 && kids.every((k) => k.tag === der.TAG.INTEGER);
      } catch {
        return false;
      }
    })();
    if (!ok) throw new Error("CaSigner.sign must return a DER ECDSA-Sig-Value (convert PKCS#11 raw r||s)");
  }
  if (opts.verify ?? !alg.oid.startsWith("1.2.840.10045")) {
    let key = verifyKeys.get(signer);
    if (!key) {
      key = createPublicKey({ key: Buffer.from(signer.spki), format: "der", type: "spki" });
      verifyKeys.set(signer, key);
    }
    if (!nodeVerify(alg.hash, tbs, key, signature)) throw new Error("CaSigner produced a signature that does not verify under its own public key");
  }
  return der.sequence(tbs, alg.algorithmIdentifier, der.bitString(signature));
}

/** Builds and signs a certificate. */
export async function signCertificate(f: TbsCertificateFields, signer: CaSigner, opts?: SignOptions): Promise<Uint8Array> {
  return signToBeSigned(encodeTbsCertificate(f, signatureAlgorithm(signer.alg).algorithmIdentifier), signer, opts);
}

/** The parts of a CA certificate the CA needs to issue under it. */
export interface CertificateParts {
  serial: Uint8Array;
  issuer: Uint8Array;
  subject: Uint8Array;
  notBefore: Date;
  notAfter: Date;
  spki: Uint8Array;
  /** Value of the SubjectKeyIdentifier extension, if present. */
  subjectKeyIdentifier?: Uint8Array;
}

function parseTime(buf: Uint8Array, t: der.Tlv): Date {
  const s = Buffer.from(der.bytesOf(buf, t)).toString("latin1");
  const m = t.tag === der.TAG.UTC_TIME ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s) : /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s);
  if (!m) throw new Error(`certificate: bad time "${s}"`);
  let y = Number(m[1]);
  if (t.tag === der.TAG.UTC_TIME) y += y < 50 ? 2000 : 1900;
  return new Date(Date.UTC(y, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
}

const SKI_OID = der.oid("2.5.29.14");

/** Splits a DER certificate into the fields a CA reuses (issuer name bytes, key, validity, key identifier). */
export function parseCertificate(cert: Uint8Array): CertificateParts {
  const top = der.readOnly(cert, der.TAG.SEQUENCE, "Certificate");
  const [tbsT] = der.children(cert, top);
  const f = der.children(cert, tbsT);
  let i = f[0]?.tag === 0xa0 ? 1 : 0;
  const serialT = f[i++];
  i++; // signature AlgorithmIdentifier
  const issuerT = f[i++];
  const validityT = f[i++];
  const subjectT = f[i++];
  const spkiT = f[i++];
  if (!spkiT || serialT.tag !== der.TAG.INTEGER || validityT.tag !== der.TAG.SEQUENCE) throw new Error("certificate: malformed TBSCertificate");
  const [nb, na] = der.children(cert, validityT);
  let ski: Uint8Array | undefined;
  const extsT = f.slice(i).find((t) => t.tag === 0xa3);
  if (extsT) {
    const [seq] = der.children(cert, extsT);
    for (const ext of der.children(cert, seq)) {
      const kids = der.children(cert, ext);
      if (der.equalBytes(der.encodingOf(cert, kids[0]), SKI_OID)) {
        const inner = der.bytesOf(cert, kids[kids.length - 1]);
        ski = der.bytesOf(inner, der.readOnly(inner, der.TAG.OCTET_STRING, "SubjectKeyIdentifier"));
      }
    }
  }
  let serial = der.bytesOf(cert, serialT);
  while (serial.length > 1 && serial[0] === 0) serial = serial.subarray(1);
  return {
    serial,
    issuer: der.encodingOf(cert, issuerT),
    subject: der.encodingOf(cert, subjectT),
    notBefore: parseTime(cert, nb),
    notAfter: parseTime(cert, na),
    spki: der.encodingOf(cert, spkiT),
    subjectKeyIdentifier: ski,
  };
}
