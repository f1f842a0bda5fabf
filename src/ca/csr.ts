// PKCS#10 certification requests (RFC 2986) as the key generation device sends them (seed 001, step 417).
//
// The request must be DER throughout (src/ca/der.ts assertDer, nesting bounded) and is read with the CA's own
// bounds-checked reader; its key goes through every check of src/ca/spki.ts, and its self-signature — the
// requester's proof that it holds the key — is verified with Node's crypto over the exact
// certificationRequestInfo bytes received, so a bit flipped anywhere on the path is refused as "csr-signature".
// A request whose subject holds attributes the CA does not certify is refused as "csr-format" rather than
// silently narrowed; requested extensions (CA:TRUE, keyCertSign, SANs, critical or not) are never read: the
// certificate carries the profile's extensions only.

import { verify as nodeVerify } from "node:crypto";
import * as der from "./der.ts";
import { CaRefusal } from "./checks.ts";
import { InvalidSubjectError, parseName, type SubjectName } from "./name.ts";
import { DEFAULT_KEY_POLICY, InvalidPublicKeyError, parseSubjectPublicKeyInfo, type KeyPolicy, type SubjectPublicKey } from "./spki.ts";
import { fromPem } from "./pem.ts";

/** Signature algorithms accepted on a request: OID → [hash, key family]. No SHA-1. */
const CSR_ALGORITHMS = new Map<string, [string, "ec" | "rsa"]>([
  ["1.2.840.10045.4.3.2", ["sha256", "ec"]],
  ["1.2.840.10045.4.3.3", ["sha384", "ec"]],
  ["1.2.840.10045.4.3.4", ["sha512", "ec"]],
  ["1.2.840.113549.1.1.11", ["sha256", "rsa"]],
  ["1.2.840.113549.1.1.12", ["sha384", "rsa"]],
  ["1.2.840.113549.1.1.13", ["sha512", "rsa"]],
]);

export interface VerifiedCsr {
  subject: SubjectName;
  publicKey: SubjectPublicKey;
}

/** Accepts PEM text or DER bytes. */
export function csrBytes(csr: string | Uint8Array): Uint8Array {
  if (typeof csr !== "string") return csr;
  try {
    return fromPem(csr, "CERTIFICATE REQUEST");
  } catch (e) {
    throw new CaRefusal("csr-format", (e as Error).message);
  }
}

/**
 * Parses a CSR and verifies its signature; refuses with "csr-format", "public-key-encoding", "public-key" or
 * "csr-signature". The key is checked under `policy` (spki.ts), and the signature verified with the key as checked.
 */
export function verifyCsr(csr: string | Uint8Array, policy: Readonly<KeyPolicy> = DEFAULT_KEY_POLICY): VerifiedCsr {
  const bytes = csrBytes(csr);
  let info: Uint8Array, subjectDer: Uint8Array, spki: Uint8Array, algOid: string, signature: Uint8Array;
  try {
    // strict DER over the whole request, nesting bounded: deep or non-minimal input is refused before anything
    // else reads it
    der.assertDer(bytes);
    const top = der.readOnly(bytes, der.TAG.SEQUENCE, "CertificationRequest");
    const [infoT, algT, sigT, ...rest] = der.children(bytes, top);
    if (!sigT || rest.length || infoT.tag !== der.TAG.SEQUENCE || algT.tag !== der.TAG.SEQUENCE || sigT.tag !== der.TAG.BIT_STRING) {
      throw new Error("CertificationRequest must be SEQUENCE { info, algorithm, signature }");
    }
    info = der.encodingOf(bytes, infoT);
    const [versionT, nameT, spkiT, attrsT, ...more] = der.children(bytes, infoT);
    if (!attrsT || more.length || versionT.tag !== der.TAG.INTEGER || nameT.tag !== der.TAG.SEQUENCE || spkiT.tag !== der.TAG.SEQUENCE || attrsT.tag !== 0xa0) {
      throw new Error("CertificationRequestInfo must be SEQUENCE { version, subject, subjectPKInfo, [0] attributes }");
    }
    if (!der.equalBytes(der.bytesOf(bytes, versionT), Uint8Array.of(0))) throw new Error("CertificationRequestInfo version must be v1 (0)");
    subjectDer = der.encodingOf(bytes, nameT);
    spki = der.encodingOf(bytes, spkiT);
    const [oidT] = der.children(bytes, algT);
    if (!oidT || oidT.tag !== der.TAG.OID) throw new Error("signatureAlgorithm must start with an OID");
    algOid = der.oidToString(der.bytesOf(bytes, oidT));
    const bits = der.bytesOf(bytes, sigT);
    if (bits[0] !== 0) throw new Error("signature BIT STRING has unused bits");
    signature = bits.subarray(1);
  } catch (e) {
    throw new CaRefusal("csr-format", `not a DER PKCS#10 request: ${(e as Error).message}`);
  }
  let subject: SubjectName;
  try {
    subject = parseName(subjectDer);
  } catch (e) {
    if (e instanceof InvalidSubjectError) throw new CaRefusal("csr-format", e.message);
    throw e;
  }
  let publicKey: SubjectPublicKey;
  try {
    publicKey = parseSubjectPublicKeyInfo(spki, policy);
  } catch (e) {
    if (e instanceof InvalidPublicKeyError) throw new CaRefusal(e.check, e.message);
    throw e;
  }
  const alg = CSR_ALGORITHMS.get(algOid);
  if (!alg) throw new CaRefusal("csr-signature", `signature algorithm ${algOid} is not accepted (ECDSA or RSA PKCS#1 v1.5 with SHA-256/384/512)`);
  if ((alg[1] === "ec") !== publicKey.ec) throw new CaRefusal("csr-signature", `signature algorithm ${algOid} does not fit a ${publicKey.type} key`);
  let ok: boolean;
  try {
    ok = nodeVerify(alg[0], info, publicKey.key, signature);
  } catch {
    ok = false; // an undecodable signature is a failed verification, not a crash
  }
  if (!ok) throw new CaRefusal("csr-signature", "the request's signature does not verify with the public key it carries");
  return { subject, publicKey };
}
