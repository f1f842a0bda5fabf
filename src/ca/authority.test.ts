import { test } from "node:test";
import assert from "node:assert/strict";
import { X509Certificate, createPublicKey, generateKeyPairSync } from "node:crypto";
import * as x509 from "../x509.ts";
import { CertificationAuthority } from "./authority.ts";
import { CaRefusal } from "./checks.ts";
import { parseCertificate } from "./certificate.ts";
import { parseName, type SubjectName } from "./name.ts";
import { MemoryCaRepository } from "./repository.ts";
import { CA_KEY_ALGORITHMS, nodeSigner, type CaSigner } from "./signer.ts";
import { hierarchy, keyPair, openssl, spkiOf, workDir, writePem, ab } from "../../test/support/ca-testing.ts";

const user: SubjectName = {
  country: "JP",
  organization: "Example Bank",
  organizationalUnit: "Retail",
  commonName: "Taro Yamada",
  serialNumber: "CARD-0001-7F3A",
  email: "taro.yamada@example.test",
};

test("chain root → issuing CA → end entity verifies with Node and with openssl verify", async () => {
  const { root, issuing } = await hierarchy("P256", "P256");
  const subjectKey = keyPair("P256", "ee-chain").publicKey;
  const ee = await issuing.issue({ subject: user, publicKey: spkiOf(subjectKey), profile: "signature" });

  const rootX = new X509Certificate(root.certificate);
  const issX = new X509Certificate(issuing.certificate);
  const eeX = new X509Certificate(ee.certificate);
  assert.ok(rootX.verify(rootX.publicKey), "root is self-signed");
  assert.ok(issX.verify(rootX.publicKey), "issuing CA signed by root");
  assert.ok(eeX.verify(issX.publicKey), "end entity signed by issuing CA");
  assert.ok(!eeX.verify(rootX.publicKey), "and not by the root");
  assert.ok(eeX.checkIssued(issX) && issX.checkIssued(rootX));
  assert.equal(eeX.serialNumber.toLowerCase(), ee.serial);
  assert.equal(ee.serial.length, 32);

  const dir = workDir();
  const rootPem = writePem(dir, "root.pem", [root.certificate]);
  const issPem = writePem(dir, "issuing.pem", [issuing.certificate]);
  const eePem = writePem(dir, "ee.pem", [ee.certificate]);
  const ok = openssl(["verify", "-x509_strict", "-CAfile", rootPem, "-untrusted", issPem, eePem]);
  assert.equal(ok.status, 0, ok.out);
  assert.match(ok.out, /OK/);
  // without the issuing CA the chain cannot be built: the test can fail
  const broken = openssl(["verify", "-CAfile", rootPem, eePem]);
  assert.notEqual(broken.status, 0);
});

test("extensions are present with the right criticality", async () => {
  const { root, issuing } = await hierarchy("P256", "P256");
  const ee = await issuing.issue({ subject: user, publicKey: spkiOf(keyPair("P256", "ext").publicKey), profile: "authentication" });
  const c = new x509.X509Certificate(ab(ee.certificate));
  const iss = new x509.X509Certificate(ab(issuing.certificate));
  assert.equal(c.getExtension(x509.BasicConstraintsExtension)?.critical, true);
  assert.equal(c.getExtension(x509.BasicConstraintsExtension)?.ca, false);
  const ku = c.getExtension(x509.KeyUsagesExtension)!;
  assert.equal(ku.critical, true);
  assert.equal(ku.usages, x509.KeyUsageFlags.digitalSignature);
  const eku = c.getExtension(x509.ExtendedKeyUsageExtension)!;
  assert.equal(eku.critical, false);
  assert.deepEqual([...eku.usages], ["1.3.6.1.5.5.7.3.2", "1.3.6.1.4.1.311.20.2.2"]);
  const ski = c.getExtension(x509.SubjectKeyIdentifierExtension)!;
  assert.equal(ski.critical, false);
  const aki = c.getExtension(x509.AuthorityKeyIdentifierExtension)!;
  assert.equal(aki.critical, false);
  assert.equal(aki.keyId, iss.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId, "AKI = issuer's SKI");
  const dp = c.getExtension(x509.CRLDistributionPointsExtension)!;
  assert.equal(dp.critical, false);
  assert.equal(dp.distributionPoints[0].distributionPoint?.fullName?.[0].uniformResourceIdentifier, "http://ca.example.test/issuing.crl");
  const san = c.getExtension(x509.SubjectAlternativeNameExtension)!;
  assert.equal(san.names.items[0].value, user.email);

  // issuing CA: cA with pathLen 0, keyCertSign|cRLSign, CRL DP of the root
  const bc = iss.getExtension(x509.BasicConstraintsExtension)!;
  assert.equal(bc.critical, true);
  assert.equal(bc.ca, true);
  assert.equal(bc.pathLength, 0);
  assert.equal(iss.getExtension(x509.KeyUsagesExtension)!.usages, x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
  assert.equal(iss.getExtension(x509.CRLDistributionPointsExtension)!.distributionPoints[0].distributionPoint?.fullName?.[0].uniformResourceIdentifier, "http://ca.example.test/root.crl");
  const r = new x509.X509Certificate(ab(root.certificate));
  assert.equal(r.getExtension(x509.BasicConstraintsExtension)!.pathLength, 1);

  // openssl reads the same
  const text = openssl(["x509", "-noout", "-text", "-in", writePem(workDir(), "ee.pem", [ee.certificate])]).out;
  assert.match(text, /X509v3 Key Usage: critical\s+Digital Signature\n/);
  assert.match(text, /X509v3 Basic Constraints: critical\s+CA:FALSE/);
  assert.match(text, /Version: 3 \(0x2\)/);
});

test("key usage per profile depends on the purpose and the key family", async () => {
  const { issuing } = await hierarchy("P256", "P256");
  const sig = await issuing.issue({ subject: user, publicKey: spkiOf(keyPair("P384", "ku1").publicKey), profile: "signature" });
  assert.equal(new x509.X509Certificate(ab(sig.certificate)).getExtension(x509.KeyUsagesExtension)!.usages, x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.nonRepudiation);
  const kmEc = await issuing.issue({ subject: user, publicKey: spkiOf(keyPair("P256", "ku2").publicKey), profile: "keyManagement" });
  assert.equal(new x509.X509Certificate(ab(kmEc.certificate)).getExtension(x509.KeyUsagesExtension)!.usages, x509.KeyUsageFlags.keyAgreement);
  const kmRsa = await issuing.issue({ subject: user, publicKey: spkiOf(keyPair("RSA2048", "subject").publicKey), profile: "keyManagement" });
  assert.equal(new x509.X509Certificate(ab(kmRsa.certificate)).getExtension(x509.KeyUsagesExtension)!.usages, x509.KeyUsageFlags.keyEncipherment);
});

test("a Name with serialNumber and email round-trips, with RFC 5280 string types", async () => {
  const { issuing } = await hierarchy();
  const subject: SubjectName = { ...user, organizationalUnit: ["Retail", "Cards"], givenName: "太郎", surname: "山田" };
  const ee = await issuing.issue({ subject, publicKey: spkiOf(keyPair("P256", "name").publicKey), profile: "signature" });
  const parts = parseCertificate(ee.certificate);
  assert.deepEqual(parseName(parts.subject), subject);
  const node = new X509Certificate(ee.certificate);
  assert.match(node.subject, /serialNumber=CARD-0001-7F3A/);
  assert.match(node.subject, /emailAddress=taro\.yamada@example\.test/);
  assert.match(node.subject, /GN=太郎/);
  const asn1 = openssl(["asn1parse", "-in", writePem(workDir(), "n.pem", [ee.certificate])]).out;
  assert.match(asn1, /serialNumber\s*\n.*PRINTABLESTRING\s+:CARD-0001-7F3A/);
  assert.match(asn1, /emailAddress\s*\n.*IA5STRING\s+:taro\.yamada@example\.test/);
  assert.match(asn1, /countryName\s*\n.*PRINTABLESTRING\s+:JP/);
  // issuer name in the end-entity certificate is byte-identical to the CA's subject
  assert.deepEqual(parts.issuer, parseCertificate(issuing.certificate).subject);
});

test("all four key algorithms as CA keys and as subject keys", async () => {
  const dir = workDir();
  for (const caAlg of CA_KEY_ALGORITHMS) {
    const { root, issuing } = await hierarchy(caAlg, caAlg);
    const rootPem = writePem(dir, `root-${caAlg}.pem`, [root.certificate]);
    const issPem = writePem(dir, `iss-${caAlg}.pem`, [issuing.certificate]);
    for (const subjectAlg of CA_KEY_ALGORITHMS) {
      const ee = await issuing.issue({
        subject: { commonName: `${caAlg} over ${subjectAlg}`, serialNumber: "C1" },
        publicKey: spkiOf(keyPair(subjectAlg, "subject").publicKey),
        profile: "authentication",
      });
      const eeX = new X509Certificate(ee.certificate);
      assert.ok(eeX.verify(new X509Certificate(issuing.certificate).publicKey), `${caAlg}/${subjectAlg}`);
      assert.deepEqual(new Uint8Array(eeX.publicKey.export({ format: "der", type: "spki" })), spkiOf(keyPair(subjectAlg, "subject").publicKey));
      const r = openssl(["verify", "-x509_strict", "-CAfile", rootPem, "-untrusted", issPem, writePem(dir, `ee-${caAlg}-${subjectAlg}.pem`, [ee.certificate])]);
      assert.equal(r.status, 0, `${caAlg}/${subjectAlg}: ${r.out}`);
    }
    const text = openssl(["x509", "-noout", "-text", "-in", issPem]).out;
    const expected = { P256: "ecdsa-with-SHA256", P384: "ecdsa-with-SHA384", RSA2048: "sha256WithRSAEncryption", RSA3072: "sha384WithRSAEncryption" }[caAlg];
    assert.match(text, new RegExp(`Signature Algorithm: ${expected}`));
  }
});

test("validity follows the profile, is backdated, and never outlives the CA", async () => {
  const t0 = new Date("2030-03-01T12:00:00.750Z");
  const { issuing } = await hierarchy("P256", "P256");
  const ca = new CertificationAuthority({
    signer: issuing.signer,
    certificate: issuing.certificate,
    issuerChain: [...issuing.issuerChain],
    repository: new MemoryCaRepository(),
    profiles: [
      { name: "short", purpose: "signature", validityDays: 30, backdateSeconds: 60 },
      { name: "long", purpose: "signature", validityDays: 3650 },
    ],
    clock: () => t0,
  });
  const s = await ca.issue({ subject: user, publicKey: spkiOf(keyPair("P256", "v1").publicKey), profile: "short" });
  assert.equal(s.notBefore.toISOString(), "2030-03-01T11:59:00.000Z");
  assert.equal(s.notAfter.toISOString(), "2030-03-31T12:00:00.000Z");
  const x = new X509Certificate(s.certificate);
  assert.equal(new Date(x.validFrom).toISOString(), s.notBefore.toISOString());
  const l = await ca.issue({ subject: user, publicKey: spkiOf(keyPair("P256", "v2").publicKey), profile: "long" });
  assert.equal(l.notAfter.getTime(), parseCertificate(issuing.certificate).notAfter.getTime(), "clamped to the CA's notAfter");
  assert.equal(new Date(new X509Certificate(l.certificate).validTo).toISOString(), l.notAfter.toISOString());
});

test("serials are random, positive, 16 bytes and recorded", async () => {
  const repo = new MemoryCaRepository();
  const { issuing } = await hierarchy("P256", "P256", { repository: repo, uniquePublicKeys: false });
  const seen = new Set<string>();
  const spki = spkiOf(keyPair("P256", "serials").publicKey);
  for (let i = 0; i < 200; i++) {
    const r = await issuing.issue({ subject: user, publicKey: spki, profile: "signature" });
    assert.match(r.serial, /^[0-7][0-9a-f]{31}$/);
    assert.notEqual(r.serial.slice(0, 2), "00");
    assert.ok(!seen.has(r.serial));
    seen.add(r.serial);
    assert.ok(await repo.isSerialUsed(r.serial));
  }
  assert.equal(await repo.isSerialUsed("7fffffffffffffffffffffffffffffff"), false);
});

test("a public key certified before is refused as duplicate-public-key, also under concurrency", async () => {
  const { issuing } = await hierarchy();
  const spki = spkiOf(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey);
  await issuing.issue({ subject: user, publicKey: spki, profile: "signature" });
  await assert.rejects(issuing.issue({ subject: user, publicKey: spki, profile: "authentication" }), (e: CaRefusal) => e.check === "duplicate-public-key");

  const fresh = spkiOf(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey);
  const results = await Promise.allSettled(Array.from({ length: 8 }, () => issuing.issue({ subject: user, publicKey: fresh, profile: "signature" })));
  assert.equal(results.filter((r) => r.status === "fulfilled").length, 1, "exactly one of eight concurrent requests passes");
  for (const r of results) if (r.status === "rejected") assert.equal((r.reason as CaRefusal).check, "duplicate-public-key");
});

test("bad inputs are refused with named checks", async () => {
  const { issuing } = await hierarchy();
  const spki = spkiOf(keyPair("P256", "bad").publicKey);
  await assert.rejects(issuing.issue({ subject: user, publicKey: spki, profile: "nope" }), (e: CaRefusal) => e.check === "profile");
  await assert.rejects(
    issuing.issue({ subject: { ...user, serialNumber: "CARD_0001" }, publicKey: spki, profile: "signature" }),
    (e: CaRefusal) => e.check === "subject" && /PrintableString/.test(e.detail),
  );
  await assert.rejects(issuing.issue({ subject: {}, publicKey: spki, profile: "signature" }), (e: CaRefusal) => e.check === "subject");
  await assert.rejects(issuing.issue({ subject: user, publicKey: spki.subarray(0, 40), profile: "signature" }), (e: CaRefusal) => e.check === "public-key-encoding");
  const ed = spkiOf(generateKeyPairSync("ed25519").publicKey);
  await assert.rejects(issuing.issue({ subject: user, publicKey: ed, profile: "signature" }), (e: CaRefusal) => e.check === "public-key");
  const rsa1024 = spkiOf(generateKeyPairSync("rsa", { modulusLength: 1024 }).publicKey);
  await assert.rejects(issuing.issue({ subject: user, publicKey: rsa1024, profile: "signature" }), (e: CaRefusal) => e.check === "public-key" && /1024/.test(e.detail));
});

test("a signer that returns a bad signature or raw r||s is caught before a certificate leaves the CA", async () => {
  const { issuing } = await hierarchy();
  const good = issuing.signer;
  const flipped: CaSigner = {
    alg: good.alg,
    spki: good.spki,
    sign: async (tbs) => {
      const s = await good.sign(tbs);
      s[s.length - 1] ^= 1;
      return s;
    },
  };
  const raw: CaSigner = { alg: good.alg, spki: good.spki, sign: async () => new Uint8Array(64).fill(7) };
  // raw r||s is always caught; a wrong ECDSA signature when verify-after-sign is on
  for (const [signer, verifySignatures] of [
    [flipped, true],
    [raw, undefined],
  ] as const) {
    const ca = new CertificationAuthority({ signer, certificate: issuing.certificate, repository: new MemoryCaRepository(), verifySignatures });
    await assert.rejects(ca.issue({ subject: user, publicKey: spkiOf(keyPair("P256", "sig").publicKey), profile: "signature" }), /CaSigner/);
  }
  // an RSA signer is verified by default (a faulty RSA-CRT signature leaks the key)
  const rsa = await hierarchy("RSA2048", "RSA2048");
  const rsaGood = rsa.issuing.signer;
  const rsaFaulty: CaSigner = {
    alg: rsaGood.alg,
    spki: rsaGood.spki,
    sign: async (tbs) => {
      const s = await rsaGood.sign(tbs);
      s[10] ^= 0x40;
      return s;
    },
  };
  const rsaCa = new CertificationAuthority({ signer: rsaFaulty, certificate: rsa.issuing.certificate, repository: new MemoryCaRepository() });
  await assert.rejects(rsaCa.issue({ subject: user, publicKey: spkiOf(keyPair("P256", "sig").publicKey), profile: "signature" }), /does not verify/);
  // a signer whose key is not the certificate's key is refused at construction
  const other = nodeSigner(keyPair("P256", "other").privateKey);
  assert.throws(() => new CertificationAuthority({ signer: other, certificate: issuing.certificate, repository: new MemoryCaRepository() }), /not the signer's/);
  // and a signer that lies about its algorithm
  assert.throws(() => new CertificationAuthority({ signer: { ...good, alg: "P384" }, certificate: issuing.certificate, repository: new MemoryCaRepository() }), /declares P384/);
  assert.ok(createPublicKey({ key: Buffer.from(good.spki), format: "der", type: "spki" }));
});
