import { test } from "node:test";
import assert from "node:assert/strict";
import * as x509 from "../x509.ts";
import { CertificationAuthority } from "./authority.ts";
import { CaRefusal } from "./checks.ts";
import { MemoryCaRepository } from "./repository.ts";
import { CA_KEY_ALGORITHMS } from "./signer.ts";
import { hierarchy, keyPair, openssl, spkiOf, workDir, writePem, ab } from "../../test/support/ca-testing.ts";

const subject = { commonName: "Hanako Suzuki", serialNumber: "CARD-0002" };

test("revoked serials appear in a v2 CRL with reasons; openssl verifies it and rejects the revoked certificate", async () => {
  const { root, issuing } = await hierarchy("P256", "P256");
  const a = await issuing.issue({ subject, publicKey: spkiOf(keyPair("P256", "crl-a").publicKey), profile: "signature" });
  const b = await issuing.issue({ subject, publicKey: spkiOf(keyPair("P384", "crl-b").publicKey), profile: "authentication" });
  const c = await issuing.issue({ subject, publicKey: spkiOf(keyPair("P256", "crl-c").publicKey), profile: "keyManagement" });
  const d = await issuing.issue({ subject, publicKey: spkiOf(keyPair("P256", "crl-d").publicKey), profile: "keyManagement" });
  await issuing.revoke(a.serial, "keyCompromise", { invalidityDate: new Date("2026-01-02T03:04:05Z") });
  await issuing.revoke(b.serial.toUpperCase(), "superseded");
  await issuing.revoke(d.serial, "unspecified");
  const again = await issuing.revoke(a.serial, "affiliationChanged");
  assert.equal(again.reason, "keyCompromise", "the first revocation stands");

  const info = await issuing.generateCrl();
  const crl = new x509.X509Crl(ab(info.crl));
  assert.equal(crl.entries.length, 3);
  const bySerial = new Map(crl.entries.map((e) => [e.serialNumber.toLowerCase(), e]));
  assert.equal(bySerial.get(a.serial)?.reason, x509.X509CrlReason.keyCompromise);
  assert.equal(bySerial.get(a.serial)?.invalidity?.toISOString(), "2026-01-02T03:04:05.000Z");
  assert.equal(bySerial.get(b.serial)?.reason, x509.X509CrlReason.superseded);
  assert.equal(bySerial.get(d.serial)?.reason, undefined, "unspecified carries no reasonCode (RFC 5280 §5.3.1)");
  assert.ok(!bySerial.has(c.serial));
  assert.ok(await crl.verify({ publicKey: new x509.X509Certificate(ab(issuing.certificate)).publicKey }));
  assert.equal(crl.thisUpdate.toISOString(), info.thisUpdate.toISOString());
  assert.equal(crl.nextUpdate?.getTime(), info.thisUpdate.getTime() + 24 * 3600_000);
  assert.equal(crl.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId, new x509.X509Certificate(ab(issuing.certificate)).getExtension(x509.SubjectKeyIdentifierExtension)?.keyId);

  const dir = workDir();
  const chain = writePem(dir, "chain.pem", [issuing.certificate, root.certificate]);
  const crlPem = writePem(dir, "issuing.crl.pem", [info.crl], "X509 CRL");
  const v = openssl(["crl", "-in", crlPem, "-CAfile", chain, "-verify", "-noout"]);
  assert.equal(v.status, 0, v.out);
  assert.match(v.out, /verify OK/);
  const text = openssl(["crl", "-in", crlPem, "-noout", "-text"]).out;
  assert.match(text, /Version 2/);
  assert.match(text, new RegExp(`Serial Number: ${a.serial.toUpperCase()}[\\s\\S]*?Key Compromise`));
  assert.match(text, new RegExp(`Serial Number: ${b.serial.toUpperCase()}[\\s\\S]*?Superseded`));
  assert.match(text, /X509v3 CRL Number:\s+\d+/);

  // a CRL from another key does not verify: the check can fail
  const other = await hierarchy("P384", "P384");
  const otherChain = writePem(dir, "other.pem", [other.issuing.certificate, other.root.certificate]);
  assert.notEqual(openssl(["crl", "-in", crlPem, "-CAfile", otherChain, "-verify", "-noout"]).status, 0);

  // full path validation with CRL checking: revoked certificate refused, good one accepted
  const rootCrl = writePem(dir, "root.crl.pem", [(await root.generateCrl()).crl], "X509 CRL");
  const crls = `${dir}/crls.pem`;
  openssl(["crl", "-in", rootCrl, "-out", crls]);
  const { readFileSync, appendFileSync } = await import("node:fs");
  appendFileSync(crls, readFileSync(crlPem));
  const rootPem = writePem(dir, "root.pem", [root.certificate]);
  const issPem = writePem(dir, "iss.pem", [issuing.certificate]);
  const revoked = openssl(["verify", "-crl_check_all", "-CRLfile", crls, "-CAfile", rootPem, "-untrusted", issPem, writePem(dir, "a.pem", [a.certificate])]);
  assert.notEqual(revoked.status, 0);
  assert.match(revoked.out, /certificate revoked/);
  const good = openssl(["verify", "-crl_check_all", "-CRLfile", crls, "-CAfile", rootPem, "-untrusted", issPem, writePem(dir, "c.pem", [c.certificate])]);
  assert.equal(good.status, 0, good.out);
});

test("CRL numbers increase; the current CRL is reused until a revocation", async () => {
  let now = new Date("2027-05-01T00:00:00Z");
  const { issuing } = await hierarchy("P256", "P256");
  const ca = new CertificationAuthority({
    signer: issuing.signer,
    certificate: issuing.certificate,
    repository: new MemoryCaRepository(),
    clock: () => now,
    crl: { validityHours: 12, reuseSeconds: 600 },
  });
  const n1 = (await ca.generateCrl()).number;
  const n2 = (await ca.generateCrl()).number;
  assert.ok(n2 > n1);
  const c1 = await ca.crl();
  assert.equal(c1.number, n2, "reused");
  const [p, q] = await Promise.all([ca.crl(), ca.crl()]);
  assert.equal(p.number, q.number);
  const e = await ca.issue({ subject, publicKey: spkiOf(keyPair("P256", "crl-e").publicKey), profile: "signature" });
  await ca.revoke(e.serial, "cessationOfOperation");
  const c2 = await ca.crl();
  assert.ok(c2.number > c1.number, "a revocation makes a new CRL");
  assert.equal(new x509.X509Crl(ab(c2.crl)).entries.length, 1);
  now = new Date(now.getTime() + 601_000);
  const c3 = await ca.crl();
  assert.ok(c3.number > c2.number, "a CRL older than reuseSeconds is replaced");
  // the cRLNumber inside each CRL is the number reported, strictly increasing
  const inside = [c1, c2, c3].map((c) => {
    const v = new Uint8Array(new x509.X509Crl(ab(c.crl)).getExtension("2.5.29.20")!.value);
    assert.equal(v[0], 0x02, "cRLNumber is an INTEGER");
    return v.subarray(2).reduce((n, b) => n * 256 + b, 0);
  });
  assert.deepEqual(inside, [c1.number, c2.number, c3.number]);
  assert.ok(inside[0] < inside[1] && inside[1] < inside[2]);
});

test("revocation refuses unknown serials and reasons", async () => {
  const { issuing } = await hierarchy();
  await assert.rejects(issuing.revoke("0123456789abcdef0123456789abcdef", "keyCompromise"), (e: CaRefusal) => e.check === "unknown-serial");
  await assert.rejects(issuing.revoke("zz", "keyCompromise"), (e: CaRefusal) => e.check === "unknown-serial");
  const e = await issuing.issue({ subject, publicKey: spkiOf(keyPair("P256", "crl-f").publicKey), profile: "signature" });
  await assert.rejects(issuing.revoke(e.serial, "removeFromCRL" as never), (x: CaRefusal) => x.check === "revocation-reason");
});

test("CRLs signed by every CA key algorithm verify with openssl", async () => {
  const dir = workDir();
  for (const alg of CA_KEY_ALGORITHMS) {
    const { root, issuing } = await hierarchy(alg, alg);
    const e = await issuing.issue({ subject, publicKey: spkiOf(keyPair("P256", `crl-${alg}`).publicKey), profile: "signature" });
    await issuing.revoke(e.serial, "privilegeWithdrawn");
    const crlPem = writePem(dir, `${alg}.crl.pem`, [(await issuing.crl()).crl], "X509 CRL");
    const v = openssl(["crl", "-in", crlPem, "-CAfile", writePem(dir, `${alg}-chain.pem`, [issuing.certificate, root.certificate]), "-verify", "-noout"]);
    assert.equal(v.status, 0, `${alg}: ${v.out}`);
    assert.match(openssl(["crl", "-in", crlPem, "-noout", "-text"]).out, /Privilege Withdrawn/);
  }
});
