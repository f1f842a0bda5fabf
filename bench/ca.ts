// Certificates issued per second by the CA with a P-256 CA key, in-process, sequential, in-memory repository
// (issue 3's end-to-end target is 1,000 credentials/s over HTTP; the CA must leave most of that budget).

import { X509Certificate, generateKeyPairSync } from "node:crypto";
import { CertificationAuthority } from "../src/ca/authority.ts";
import { MemoryCaRepository } from "../src/ca/repository.ts";
import { hierarchy, spkiOf } from "../test/support/ca-testing.ts";

export async function benchCa(n = 3000): Promise<{ name: string; value: number; unit: string; [k: string]: unknown }[]> {
  const { issuing } = await hierarchy("P256", "P256");
  const keys = Array.from({ length: n }, () => spkiOf(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey));
  const out = [];
  for (const verifySignatures of [false, true]) {
    const ca = new CertificationAuthority({
      signer: issuing.signer,
      certificate: issuing.certificate,
      issuerChain: [...issuing.issuerChain],
      repository: new MemoryCaRepository(),
      crl: { distributionPoints: ["http://ca.example.test/issuing.crl"] },
      verifySignatures,
    });
    const warm = Math.min(200, n / 10);
    for (let i = 0; i < warm; i++) await ca.issue({ subject: { commonName: "warm-up", serialNumber: `W${i}` }, publicKey: keys[i], profile: "signature" });
    const t0 = performance.now();
    let last: Uint8Array | undefined;
    for (let i = warm; i < n; i++)
      last = (
        await ca.issue({
          subject: { country: "JP", organization: "Example Bank", commonName: `User ${i}`, serialNumber: `CARD-${i}`, email: `u${i}@example.test` },
          publicKey: keys[i],
          profile: "signature",
        })
      ).certificate;
    const rate = ((n - warm) / (performance.now() - t0)) * 1000;
    if (!new X509Certificate(last!).verify(new X509Certificate(issuing.certificate).publicKey)) throw new Error("issued certificate does not verify");
    out.push({ name: verifySignatures ? "ca_issue_p256_verify_after_sign" : "ca_issue_p256", value: Math.round(rate), unit: "cert/s", issued: n - warm });
  }
  return out;
}
