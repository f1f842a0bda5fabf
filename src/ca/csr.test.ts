import { test } from "node:test";
import assert from "node:assert/strict";
import { X509Certificate, generateKeyPairSync } from "node:crypto";
import { CaRefusal, personalDataCheck } from "./checks.ts";
import { csrBytes, verifyCsr } from "./csr.ts";
import type { SubjectName } from "./name.ts";
import { toPem } from "./pem.ts";
import { hierarchy, keyPair, opensslCsr, workDir } from "../../test/support/ca-testing.ts";

const registered: SubjectName = { country: "JP", organization: "Example Bank", commonName: "Taro Yamada", serialNumber: "CARD-0003", email: "taro@example.test" };
const subj = "/C=JP/O=Example Bank/CN=Taro Yamada/serialNumber=CARD-0003/emailAddress=taro@example.test";

test("a PKCS#10 request from openssl is verified and certified with its subject", async () => {
  const dir = workDir();
  const registry = new Map([["user-3", registered]]);
  const { issuing } = await hierarchy("P256", "P256", { checks: [personalDataCheck(async (id) => registry.get(id))] });
  for (const alg of ["P256", "P384", "RSA2048"] as const) {
    const kp = alg === "RSA2048" ? keyPair(alg, "subject") : generateKeyPairSync("ec", { namedCurve: alg === "P256" ? "P-256" : "P-384" });
    const csr = opensslCsr(dir, kp.privateKey, subj, alg === "P384" ? "sha384" : "sha256");
    const parsed = verifyCsr(toPem(csr, "CERTIFICATE REQUEST"));
    assert.deepEqual(parsed.subject, registered);
    const r = await issuing.issueFromCsr({ csr, profile: "signature", applicantId: "user-3" });
    const x = new X509Certificate(r.certificate);
    assert.ok(x.verify(new X509Certificate(issuing.certificate).publicKey));
    assert.ok(x.publicKey.equals(kp.publicKey), `${alg}: the certified key is the requester's`);
    assert.match(x.subject, /serialNumber=CARD-0003/);
  }
});

test("a request with a tampered signature or body is refused naming csr-signature", async () => {
  const dir = workDir();
  const { issuing } = await hierarchy();
  const kp = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const csr = opensslCsr(dir, kp.privateKey, subj);
  const sigTampered = csr.slice();
  sigTampered[sigTampered.length - 1] ^= 0x01;
  await assert.rejects(issuing.issueFromCsr({ csr: sigTampered, profile: "signature" }), (e: CaRefusal) => e instanceof CaRefusal && e.check === "csr-signature");
  // the name changed on the path: "Taro" → "Jaro"
  const bodyTampered = csr.slice();
  const at = Buffer.from(bodyTampered).indexOf("Taro Yamada");
  assert.ok(at > 0);
  bodyTampered[at] = "J".charCodeAt(0);
  await assert.rejects(issuing.issueFromCsr({ csr: bodyTampered, profile: "signature" }), (e: CaRefusal) => e.check === "csr-signature");
  // the untampered request is accepted: the refusals above are about the tampering
  const ok = await issuing.issueFromCsr({ csr, profile: "signature" });
  assert.ok(ok.serial);
});

test("personal data that differs from the registration is refused naming personal-data and the field", async () => {
  const dir = workDir();
  const registry = new Map([["user-3", registered]]);
  const { issuing } = await hierarchy("P256", "P256", { checks: [personalDataCheck(async (id) => registry.get(id))] });
  const kp = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const csr = opensslCsr(dir, kp.privateKey, subj.replace("CARD-0003", "CARD-9999"));
  await assert.rejects(
    issuing.issueFromCsr({ csr, profile: "signature", applicantId: "user-3" }),
    (e: CaRefusal) => e.check === "personal-data" && /serialNumber/.test(e.detail) && !/9999/.test(e.detail),
  );
  await assert.rejects(issuing.issueFromCsr({ csr, profile: "signature", applicantId: "nobody" }), (e: CaRefusal) => e.check === "personal-data");
  await assert.rejects(issuing.issueFromCsr({ csr, profile: "signature" }), (e: CaRefusal) => e.check === "personal-data");
  // case of e-mail and whitespace runs are not differences
  const same = opensslCsr(dir, generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey, "/C=JP/O=Example  Bank/CN=Taro Yamada/serialNumber=CARD-0003/emailAddress=TARO@example.test");
  assert.ok((await issuing.issueFromCsr({ csr: same, profile: "signature", applicantId: "user-3" })).serial);
  // the same key again: duplicate-public-key, checked on the CSR path too
  const dup = opensslCsr(dir, kp.privateKey, subj);
  await issuing.issueFromCsr({ csr: dup, profile: "signature", applicantId: "user-3" });
  await assert.rejects(issuing.issueFromCsr({ csr: dup, profile: "authentication", applicantId: "user-3" }), (e: CaRefusal) => e.check === "duplicate-public-key");
});

test("malformed requests and unsupported subjects are refused as csr-format", async () => {
  const dir = workDir();
  assert.throws(
    () => verifyCsr("not pem"),
    (e: CaRefusal) => e.check === "csr-format",
  );
  assert.throws(
    () => verifyCsr(new Uint8Array([0x30, 0x03, 1, 2, 3])),
    (e: CaRefusal) => e.check === "csr-format",
  );
  const kp = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const withDc = opensslCsr(dir, kp.privateKey, "/DC=example/CN=Taro");
  assert.throws(
    () => verifyCsr(withDc),
    (e: CaRefusal) => e.check === "csr-format" && /0\.9\.2342\.19200300\.100\.1\.25/.test(e.detail),
  );
  const sha1 = opensslCsr(dir, kp.privateKey, "/CN=Taro", "sha1");
  assert.throws(
    () => verifyCsr(sha1),
    (e: CaRefusal) => e.check === "csr-signature" && /not accepted/.test(e.detail),
  );
  assert.deepEqual(csrBytes(toPem(sha1, "CERTIFICATE REQUEST")), sha1);
});
