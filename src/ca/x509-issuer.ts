// Minimal X.509 v3 issuance with @peculiar/x509 on Node's WebCrypto: a self-signed CA and end-entity
// certificates for keys that live on cards. The full CA (custody, revocation, CRL) builds on this.

import { randomBytes, webcrypto, type KeyObject } from "node:crypto";
import * as x509 from "../x509.ts";

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const EC_SIGN = { name: "ECDSA", hash: "SHA-256" } as const;

export interface CertificateAuthority {
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
}

function serial(): string {
  const b = randomBytes(16);
  b[0] &= 0x7f; // positive
  return b.toString("hex");
}

export async function createCertificateAuthority(name: string, years = 10): Promise<CertificateAuthority> {
  const keys = (await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])) as CryptoKeyPair;
  const notBefore = new Date();
  const notAfter = new Date(notBefore.getTime() + years * 365 * 86400_000);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name,
    notBefore,
    notAfter,
    keys,
    signingAlgorithm: EC_SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert, keys };
}

/** Imports a Node public KeyObject as a WebCrypto key of the right algorithm for a certificate. */
async function toWebKey(pub: KeyObject): Promise<CryptoKey> {
  const spki = pub.export({ format: "der", type: "spki" });
  const d = pub.asymmetricKeyDetails;
  if (pub.asymmetricKeyType === "ec") {
    const curve = d?.namedCurve === "secp384r1" ? "P-384" : "P-256";
    return webcrypto.subtle.importKey("spki", spki, { name: "ECDSA", namedCurve: curve }, true, ["verify"]) as Promise<CryptoKey>;
  }
  return webcrypto.subtle.importKey("spki", spki, { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, true, ["verify"]) as Promise<CryptoKey>;
}

export interface EndEntityRequest {
  subject: string;
  publicKey: KeyObject;
  days?: number;
  usage?: "signature" | "keyManagement" | "authentication";
}

export async function issueCertificate(ca: CertificateAuthority, r: EndEntityRequest): Promise<x509.X509Certificate> {
  const publicKey = await toWebKey(r.publicKey);
  const notBefore = new Date();
  const notAfter = new Date(notBefore.getTime() + (r.days ?? 365) * 86400_000);
  const usage =
    r.usage === "keyManagement"
      ? x509.KeyUsageFlags.keyEncipherment | x509.KeyUsageFlags.keyAgreement
      : r.usage === "signature"
        ? x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.nonRepudiation
        : x509.KeyUsageFlags.digitalSignature;
  return x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: r.subject,
    issuer: ca.cert.subject,
    notBefore,
    notAfter,
    publicKey,
    signingKey: ca.keys.privateKey,
    signingAlgorithm: EC_SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(usage, true),
      await x509.AuthorityKeyIdentifierExtension.create(ca.keys.publicKey),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
    ],
  });
}
