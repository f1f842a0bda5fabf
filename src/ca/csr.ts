// PKCS#10 certification requests (RFC 2986) as the key generation device sends them (seed 001, step 417).
//
// The request is parsed by @peculiar/x509; its self-signature is verified with Node's crypto over the exact
// certificationRequestInfo bytes received, so a bit flipped anywhere on the path is refused as
// "csr-signature". A request whose subject holds attributes the CA does not certify is refused as
// "csr-format" rather than silently narrowed.

import { createPublicKey, verify as nodeVerify } from "node:crypto";
import * as x509 from "../x509.ts";
import * as der from "./der.ts";
import { CaRefusal } from "./checks.ts";
import { InvalidSubjectError, parseName, type SubjectName } from "./name.ts";
import { InvalidPublicKeyError, parseSubjectPublicKeyInfo, type SubjectPublicKey } from "./spki.ts";
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

/** Parses a CSR and verifies its signature; refuses with "csr-format", "public-key" or "csr-signature". */
export function verifyCsr(csr: string | Uint8Array): VerifiedCsr {
  const bytes = csrBytes(csr);
  let parsed: x509.Pkcs10CertificateRequest;
  let info: Uint8Array, algOid: string, signature: Uint8Array;
  try {
    parsed = new x509.Pkcs10CertificateRequest(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer);
    const top = der.readOnly(bytes, der.TAG.SEQUENCE, "CertificationRequest");
    const [infoT, algT, sigT, ...rest] = der.children(bytes, top);
    if (!sigT || rest.length || sigT.tag !== der.TAG.BIT_STRING) throw new Error("CertificationRequest must be SEQUENCE { info, algorithm, signature }");
    info = der.encodingOf(bytes, infoT);
    const [oidT] = der.children(bytes, algT);
    algOid = der.oidToString(der.bytesOf(bytes, oidT));
    const bits = der.bytesOf(bytes, sigT);
    if (bits[0] !== 0) throw new Error("signature BIT STRING has unused bits");
    signature = bits.subarray(1);
  } catch (e) {
    throw new CaRefusal("csr-format", `not a DER PKCS#10 request: ${(e as Error).message}`);
  }
  let subject: SubjectName;
  try {
    subject = parseName(new Uint8Array(parsed.subjectName.toArrayBuffer()));
  } catch (e) {
    if (e instanceof InvalidSubjectError) throw new CaRefusal("csr-format", e.message);
    throw e;
  }
  let publicKey: SubjectPublicKey;
  try {
    publicKey = parseSubjectPublicKeyInfo(new Uint8Array(parsed.publicKey.rawData));
  } catch (e) {
    if (e instanceof InvalidPublicKeyError) throw new CaRefusal("public-key", e.message);
    throw e;
  }
  const alg = CSR_ALGORITHMS.get(algOid);
  if (!alg) throw new CaRefusal("csr-signature", `signature algorithm ${algOid} is not accepted (ECDSA or RSA PKCS#1 v1.5 with SHA-256/384/512)`);
  if ((alg[1] === "ec") !== publicKey.ec) throw new CaRefusal("csr-signature", `signature algorithm ${algOid} does not fit a ${publicKey.type} key`);
  let ok: boolean;
  try {
    const key = createPublicKey({ key: Buffer.from(publicKey.spki), format: "der", type: "spki" });
    ok = nodeVerify(alg[0], info, key, signature);
  } catch {
    ok = false; // an undecodable key or signature is a failed verification, not a crash
  }
  if (!ok) throw new CaRefusal("csr-signature", "the request's signature does not verify with the public key it carries");
  return { subject, publicKey };
}
