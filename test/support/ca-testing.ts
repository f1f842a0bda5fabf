// Test helpers for the CA: keys of each algorithm, a root → issuing CA hierarchy, and openssl invocations.
// Used only by *.test.ts beside it.

import { execFileSync, spawnSync } from "node:child_process";
import { generateKeyPairSync, sign as nodeSign, type KeyObject } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CertificationAuthority, type CertificationAuthorityConfig } from "../../src/ca/authority.ts";
import { MemoryCaRepository } from "../../src/ca/repository.ts";
import { nodeSigner, type CaKeyAlgorithm } from "../../src/ca/signer.ts";
import { toPem } from "../../src/ca/pem.ts";
import * as der from "../../src/ca/der.ts";
import { encodeName, type SubjectName } from "../../src/ca/name.ts";

const keyCache = new Map<string, { privateKey: KeyObject; publicKey: KeyObject }>();

/** One key pair per algorithm and label, generated once per process (RSA generation is slow). */
export function keyPair(alg: CaKeyAlgorithm, label = "default"): { privateKey: KeyObject; publicKey: KeyObject } {
  const k = `${alg}/${label}`;
  let kp = keyCache.get(k);
  if (!kp) {
    kp =
      alg === "P256" || alg === "P384" ? generateKeyPairSync("ec", { namedCurve: alg === "P256" ? "P-256" : "P-384" }) : generateKeyPairSync("rsa", { modulusLength: alg === "RSA2048" ? 2048 : 3072 });
    keyCache.set(k, kp);
  }
  return kp;
}

export const spkiOf = (k: KeyObject): Uint8Array => new Uint8Array(k.export({ format: "der", type: "spki" }));

export async function hierarchy(
  rootAlg: CaKeyAlgorithm = "P256",
  issuingAlg: CaKeyAlgorithm = "P256",
  extra: Partial<CertificationAuthorityConfig> = {},
): Promise<{ root: CertificationAuthority; issuing: CertificationAuthority }> {
  const root = await CertificationAuthority.createRoot({
    signer: nodeSigner(keyPair(rootAlg, "root").privateKey),
    subject: { country: "JP", organization: "cardkms test", commonName: `Root CA ${rootAlg}` },
    validityDays: 3650,
    pathLength: 1,
    repository: new MemoryCaRepository(),
    crl: { distributionPoints: ["http://ca.example.test/root.crl"] },
  });
  const signer = nodeSigner(keyPair(issuingAlg, "issuing").privateKey);
  const cert = await root.certifySubordinate({
    subject: { country: "JP", organization: "cardkms test", commonName: `Issuing CA ${issuingAlg}` },
    publicKey: signer.spki,
    validityDays: 1825,
    pathLength: 0,
  });
  const issuing = new CertificationAuthority({
    signer,
    certificate: cert.certificate,
    issuerChain: [root.certificate],
    repository: new MemoryCaRepository(),
    crl: { distributionPoints: ["http://ca.example.test/issuing.crl"] },
    ...extra,
  });
  return { root, issuing };
}

export const workDir = (): string => mkdtempSync(join(tmpdir(), "cardkms-ca-"));

export function writePem(dir: string, name: string, ders: Uint8Array[], label: "CERTIFICATE" | "X509 CRL" = "CERTIFICATE"): string {
  const p = join(dir, name);
  writeFileSync(p, ders.map((d) => toPem(d, label)).join(""));
  return p;
}

/** Runs openssl; returns status and combined output (openssl reports verification on stderr). */
export function openssl(args: string[]): { status: number; out: string } {
  const r = spawnSync("openssl", args, { encoding: "utf8" });
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

/** A DER PKCS#10 request made by openssl itself, from a PEM private key. */
export function opensslCsr(dir: string, key: KeyObject, subj: string, md = "sha256"): Uint8Array {
  const keyPath = join(dir, `csr-key-${Math.random().toString(36).slice(2)}.pem`);
  writeFileSync(keyPath, key.export({ format: "pem", type: "pkcs8" }) as string);
  return new Uint8Array(execFileSync("openssl", ["req", "-new", "-key", keyPath, `-${md}`, "-subj", subj, "-outform", "DER"]));
}

/** An ArrayBuffer copy, for @peculiar/x509 constructors (their types want BufferSource over ArrayBuffer). */
export const ab = (u: Uint8Array): ArrayBuffer => u.slice().buffer as ArrayBuffer;

// ---- keys and requests written exactly as a test wants them (strict-DER and key-value tests) ---------------------

const fromB64u = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, "base64url"));

/** An RSA key's modulus and exponent as unsigned big-endian magnitudes (no leading zero). */
export function rsaParts(k: KeyObject): { n: Uint8Array; e: Uint8Array } {
  const j = k.export({ format: "jwk" });
  return { n: fromB64u(j.n!), e: fromB64u(j.e!) };
}

/** An EC key's uncompressed point 04‖x‖y. */
export function ecPoint(k: KeyObject): Uint8Array {
  const j = k.export({ format: "jwk" });
  return der.concat([Uint8Array.of(4), fromB64u(j.x!), fromB64u(j.y!)]);
}

/** INTEGER content octets of an unsigned magnitude in DER's minimal form, then `pad` extra leading 00 octets. */
export function intContent(magnitude: Uint8Array, pad = 0): Uint8Array {
  let m = magnitude;
  while (m.length > 1 && m[0] === 0) m = m.subarray(1);
  return der.concat([new Uint8Array(pad + (m[0] & 0x80 ? 1 : 0)), m]);
}

/** An rsaEncryption SPKI whose INTEGERs carry exactly the given content octets (padded or not). */
export function rsaSpki(nContent: Uint8Array, eContent: Uint8Array): Uint8Array {
  const key = der.sequence(der.tlv(der.TAG.INTEGER, nContent), der.tlv(der.TAG.INTEGER, eContent));
  return der.sequence(der.sequence(der.oid("1.2.840.113549.1.1.1"), Uint8Array.of(der.TAG.NULL, 0)), der.bitString(key));
}

/** An id-ecPublicKey SPKI on P-256 or P-384 whose subjectPublicKey is `point` as given (any form, on the curve or not). */
export function ecSpki(curve: "P256" | "P384", point: Uint8Array): Uint8Array {
  const named = der.oid(curve === "P256" ? "1.2.840.10045.3.1.7" : "1.3.132.0.34");
  return der.sequence(der.sequence(der.oid("1.2.840.10045.2.1"), named), der.bitString(point));
}

const CSR_SIGNATURE: Record<"ec" | "rsa", Uint8Array> = {
  ec: der.sequence(der.oid("1.2.840.10045.4.3.2")),
  rsa: der.sequence(der.oid("1.2.840.113549.1.1.11"), Uint8Array.of(der.TAG.NULL, 0)),
};

/** Who signs a request: a private key, or any function producing the signature octets for an algorithm family. */
export type CsrSigner = KeyObject | { family: "ec" | "rsa"; sign(info: Uint8Array): Uint8Array };

/**
 * A DER PKCS#10 request carrying `spki` byte for byte (however it is written), naming `subject`, signed with
 * SHA-256 by `signer` — a private key means a requester who holds the key.
 */
export function csrWith(spki: Uint8Array, subject: SubjectName, signer: CsrSigner): Uint8Array {
  return csrWithName(spki, encodeName(subject), signer);
}

/** As csrWith, naming the subject by its DER Name as given (one the CA's own encoder would refuse to write). */
export function csrWithName(spki: Uint8Array, name: Uint8Array, signer: CsrSigner): Uint8Array {
  const info = der.sequence(der.smallInteger(0), name, spki, Uint8Array.of(0xa0, 0));
  const family = "family" in signer ? signer.family : signer.asymmetricKeyType === "ec" ? "ec" : "rsa";
  const signature = "family" in signer ? signer.sign(info) : new Uint8Array(nodeSign("sha256", info, signer));
  return der.sequence(info, CSR_SIGNATURE[family], der.bitString(signature));
}
