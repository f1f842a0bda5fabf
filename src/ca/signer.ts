// The CA's signing key, as the CA sees it: an algorithm, a public key, and a sign operation over TBS bytes.
//
// The key itself lives in key custody (software keystore or PKCS#11 HSM, src/custody/); this module never
// holds a private key except in `nodeSigner`, the Node-crypto implementation used by tests and the demo.
// Certificates and CRLs are assembled in src/ca/certificate.ts and the signature comes only from
// `CaSigner.sign`, so an HSM key that cannot be exported works the same as a software key.

import { createPublicKey, sign as nodeSign, type KeyObject } from "node:crypto";
import { parseSubjectPublicKeyInfo } from "./spki.ts";
import * as der from "./der.ts";

export type CaKeyAlgorithm = "P256" | "P384" | "RSA2048" | "RSA3072";
export const CA_KEY_ALGORITHMS: readonly CaKeyAlgorithm[] = ["P256", "P384", "RSA2048", "RSA3072"];

export interface CaSigner {
  readonly alg: CaKeyAlgorithm;
  /** DER SubjectPublicKeyInfo of the signing key; must match the CA certificate's key. */
  readonly spki: Uint8Array;
  /**
   * Signs `tbs` (the DER of a TBSCertificate or TBSCertList) with the hash of `signatureAlgorithm(alg).hash`:
   * - P256/P384: ECDSA, returning the DER `ECDSA-Sig-Value` SEQUENCE { r, s } (RFC 3279 §2.2.3).
   *   A PKCS#11 CKM_ECDSA signature is raw r||s and must be converted by the custody adapter.
   * - RSA2048/RSA3072: RSASSA-PKCS1-v1_5 (RFC 8017 §8.2), the plain signature octets.
   */
  sign(tbs: Uint8Array): Promise<Uint8Array>;
}

export interface SignatureAlgorithm {
  hash: "sha256" | "sha384";
  /** signatureAlgorithm OID written into certificates and CRLs. */
  oid: string;
  /** DER AlgorithmIdentifier: ECDSA has absent parameters (RFC 5758 §3.2), RSA a NULL (RFC 4055 §5). */
  algorithmIdentifier: Uint8Array;
}

function algId(oidText: string, withNull: boolean): Uint8Array {
  return withNull ? der.sequence(der.oid(oidText), Uint8Array.of(der.TAG.NULL, 0)) : der.sequence(der.oid(oidText));
}

// Hash per key: SHA-384 for P-384 (RFC 5758 pairs curve and hash strength) and for RSA-3072 (CNSA pairs
// RSA-3072 with SHA-384); SHA-256 for P-256 and RSA-2048.
const ALGORITHMS: Record<CaKeyAlgorithm, SignatureAlgorithm> = {
  P256: { hash: "sha256", oid: "1.2.840.10045.4.3.2", algorithmIdentifier: algId("1.2.840.10045.4.3.2", false) },
  P384: { hash: "sha384", oid: "1.2.840.10045.4.3.3", algorithmIdentifier: algId("1.2.840.10045.4.3.3", false) },
  RSA2048: { hash: "sha256", oid: "1.2.840.113549.1.1.11", algorithmIdentifier: algId("1.2.840.113549.1.1.11", true) },
  RSA3072: { hash: "sha384", oid: "1.2.840.113549.1.1.12", algorithmIdentifier: algId("1.2.840.113549.1.1.12", true) },
};

/** The signature algorithm (hash, OID, AlgorithmIdentifier) that a CA key of `alg` signs with. */
export function signatureAlgorithm(alg: CaKeyAlgorithm): SignatureAlgorithm {
  const a = ALGORITHMS[alg];
  if (!a) throw new Error(`unsupported CA key algorithm ${String(alg)}; expected one of ${CA_KEY_ALGORITHMS.join(", ")}`);
  return a;
}

/** Checks that a signer's declared algorithm agrees with its public key (a mismatch would yield unverifiable certificates). */
export function assertSignerConsistent(signer: CaSigner): void {
  const key = parseSubjectPublicKeyInfo(signer.spki);
  if (key.type !== signer.alg) throw new Error(`CaSigner declares ${signer.alg} but its public key is ${key.type}`);
}

/**
 * A CaSigner over a Node private KeyObject (EC P-256/P-384 or RSA 2048/3072). For tests and the software
 * demo; production CA keys come from key custody.
 */
export function nodeSigner(privateKey: KeyObject): CaSigner {
  if (privateKey.type !== "private") throw new Error("nodeSigner needs a private KeyObject");
  const spki = new Uint8Array(createPublicKey(privateKey).export({ format: "der", type: "spki" }));
  const alg = parseSubjectPublicKeyInfo(spki).type;
  if (!CA_KEY_ALGORITHMS.includes(alg as CaKeyAlgorithm)) throw new Error(`nodeSigner: ${alg} is not a CA key algorithm`);
  const caAlg = alg as CaKeyAlgorithm;
  const { hash } = signatureAlgorithm(caAlg);
  const ec = caAlg === "P256" || caAlg === "P384";
  return {
    alg: caAlg,
    spki,
    async sign(tbs) {
      const sig = ec ? nodeSign(hash, tbs, { key: privateKey, dsaEncoding: "der" }) : nodeSign(hash, tbs, privateKey);
      return new Uint8Array(sig.buffer, sig.byteOffset, sig.byteLength);
    },
  };
}
