// Test helpers for the CA: keys of each algorithm, a root → issuing CA hierarchy, and openssl invocations.
// Used only by *.test.ts beside it.

import { execFileSync, spawnSync } from "node:child_process";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CertificationAuthority, type CertificationAuthorityConfig } from "./authority.ts";
import { MemoryCaRepository } from "./repository.ts";
import { nodeSigner, type CaKeyAlgorithm } from "./signer.ts";
import { toPem } from "./pem.ts";

const keyCache = new Map<string, { privateKey: KeyObject; publicKey: KeyObject }>();

/** One key pair per algorithm and label, generated once per process (RSA generation is slow). */
export function keyPair(alg: CaKeyAlgorithm, label = "default"): { privateKey: KeyObject; publicKey: KeyObject } {
  const k = `${alg}/${label}`;
  let kp = keyCache.get(k);
  if (!kp) {
    kp =
      alg === "P256" || alg === "P384"
        ? generateKeyPairSync("ec", { namedCurve: alg === "P256" ? "P-256" : "P-384" })
        : generateKeyPairSync("rsa", { modulusLength: alg === "RSA2048" ? 2048 : 3072 });
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
  const cert = await root.certifySubordinate({ subject: { country: "JP", organization: "cardkms test", commonName: `Issuing CA ${issuingAlg}` }, publicKey: signer.spki, validityDays: 1825, pathLength: 0 });
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
