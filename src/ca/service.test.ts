// The CA service on both key custody implementations (software keystore, SoftHSM2 — which FAILS, never skips,
// when missing) and both SQL engines: first start creates the key and the root, a restart continues the same CA,
// and what it issues verifies with openssl.

import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes, X509Certificate } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { softhsmCustody, softwareCustody } from "../../test/custody-env.ts";
import type { KeyCustody } from "../custody/custody.ts";
import { SqlCaRepository } from "../store/ca-repository.ts";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";
import * as x509 from "../x509.ts";
import { CertificationAuthority } from "./authority.ts";
import { CaRefusal } from "./checks.ts";
import { MemoryCaServiceRepository, openCaService } from "./service.ts";
import { ab, openssl, spkiOf, workDir, writePem } from "../../test/support/ca-testing.ts";

const custodies: [string, () => Promise<KeyCustody>][] = [
  ["software keystore", softwareCustody()],
  ["PKCS#11 (SoftHSM2)", softhsmCustody()],
];
const SUBJECT = { country: "JP", organization: "cardkms test", commonName: "cardkms CA" };
const CRL_URL = "http://ca.example.test/ca/crl";
const spki = () => Buffer.from(spkiOf(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey)).toString("base64");

/** openssl verify against the root alone, with the CRL when given; returns status and output. */
function verify(root: Uint8Array, ee: Uint8Array, crl?: Uint8Array) {
  const dir = workDir();
  const args = ["verify", "-x509_strict", "-CAfile", writePem(dir, "root.pem", [root])];
  if (crl) args.push("-crl_check", "-CRLfile", writePem(dir, "crl.pem", [crl], "X509 CRL"));
  return openssl([...args, writePem(dir, "ee.pem", [ee])]);
}

for (const [custodyName, openCustody] of custodies) {
  for (const engine of testEngines()) {
    describe(`CA service: ${custodyName}, ${engine.name}`, () => {
      let t: TestDatabase;
      const label = `ca/root-${randomBytes(3).toString("hex")}`;
      const open: { custody?: KeyCustody }[] = [];
      before(async () => {
        t = await engine.create();
      });
      after(async () => {
        for (const o of open) await o.custody?.close();
        await t?.drop();
      });
      async function start(o: { db?: TestDatabase["db"]; signerLabel?: string } = {}) {
        const custody = await openCustody();
        open.push({ custody });
        const svc = await openCaService({ custody, signerLabel: o.signerLabel ?? label, repository: new SqlCaRepository(o.db ?? t.db, "main"), subject: SUBJECT, crlUrl: CRL_URL });
        return { custody, ...svc };
      }

      let first: { root: Uint8Array; revoked: string; revokedCert: Uint8Array; kept: Uint8Array; crlNumber: number; key: string };

      test("first start: a never-extractable P-256 key in custody, a self-signed root; issued certificates verify with openssl", async () => {
        const { custody, authority, client, created } = await start();
        assert.equal(created, true);
        assert.deepEqual(await custody.keyInfo(label), { label, kind: "keyPair", type: "P256", extractable: "never" });
        const root = authority.certificate;
        const rootX = new X509Certificate(root);
        assert.equal(rootX.ca, true);
        assert.ok(rootX.checkIssued(rootX) && rootX.verify(rootX.publicKey), "self-signed");
        assert.match(rootX.subject, /CN=cardkms CA/);
        const self = verify(root, root);
        assert.equal(self.status, 0, self.out);
        assert.deepEqual(await client.caCertificates(), [root]);

        const key = spki();
        const revoked = await client.certify({ profile: "signature", subject: { commonName: "Hanako Yamada", serialNumber: "CARD-1" }, publicKey: key });
        const kept = await client.certify({ profile: "authentication", subject: { commonName: "Taro Suzuki" }, publicKey: spki() });
        for (const c of [revoked, kept]) {
          const v = verify(root, c.certificate);
          assert.equal(v.status, 0, v.out);
          assert.match(v.out, /OK/);
        }
        assert.match(openssl(["x509", "-in", writePem(workDir(), "x.pem", [kept.certificate]), "-noout", "-text"]).out, /URI:http:\/\/ca\.example\.test\/ca\/crl/);
        await client.revoke(revoked.serial, "keyCompromise");
        const info = await authority.crl();
        const v = verify(root, revoked.certificate, info.crl);
        assert.notEqual(v.status, 0);
        assert.match(v.out, /certificate revoked/);
        first = { root, revoked: revoked.serial, revokedCert: revoked.certificate, kept: kept.certificate, crlNumber: info.number, key };
      });

      test("a restart reopens the same CA: same certificate and key, records and CRL numbers continue", async () => {
        assert.ok(first, "needs the first start");
        const { custody, authority, client, created } = await start({ db: t.reopen() });
        assert.equal(created, false);
        assert.deepEqual(authority.certificate, first.root);
        assert.equal((await custody.listKeys()).filter((k) => k.label === label).length, 1, "no second CA key");
        await assert.rejects(
          client.certify({ profile: "signature", subject: { commonName: "Again" }, publicKey: first.key }),
          (e: unknown) => e instanceof CaRefusal && e.check === "duplicate-public-key",
        );
        await client.revoke(first.revoked, "superseded"); // known serial: no refusal

        const fresh = await client.certify({ profile: "signature", subject: { commonName: "After Restart" }, publicKey: spki() });
        const info = await authority.generateCrl();
        assert.ok(info.number > first.crlNumber, `CRL number ${info.number} after ${first.crlNumber}`);
        const crl = new x509.X509Crl(ab(info.crl));
        assert.deepEqual(
          crl.entries.map((e) => [e.serialNumber.toLowerCase(), e.reason]),
          [[first.revoked, x509.X509CrlReason.keyCompromise]],
          "the first revocation stands",
        );
        for (const [ee, ok] of [
          [fresh.certificate, true],
          [first.kept, true],
          [first.revokedCert, false],
        ] as const) {
          const v = verify(first.root, ee, info.crl);
          assert.equal(v.status === 0, ok, v.out);
        }
      });

      test("a stored certificate without its key, under another label, or a key that could leave custody: clear errors", async () => {
        await assert.rejects(start({ db: t.reopen(), signerLabel: `${label}-other` }), /belongs to custody key "ca\/root-\w+", not to the configured signerLabel/);
        // a CA whose certificate is stored but whose key is not in this custody
        const custody = await openCustody();
        open.push({ custody });
        const repo = new SqlCaRepository(t.db, "main");
        const stored = (await repo.loadCaCertificate())!;
        const orphan = new SqlCaRepository(t.db, `orphan-${randomBytes(3).toString("hex")}`);
        await orphan.saveCaCertificate({ ...stored, keyLabel: `missing-${randomBytes(3).toString("hex")}` });
        await assert.rejects(
          openCaService({ custody, signerLabel: (await orphan.loadCaCertificate())!.keyLabel, repository: orphan, subject: SUBJECT }),
          /is not in \w+ custody, but a CA certificate for it is stored/,
        );

        const wrapped = `wrapped-${randomBytes(3).toString("hex")}`;
        await custody.generateKeyPair(wrapped, "P256", { extractable: "wrapped" });
        await assert.rejects(
          openCaService({ custody, signerLabel: wrapped, repository: new MemoryCaServiceRepository(), subject: SUBJECT }),
          /extractable \("wrapped"\); a CA key must never leave custody/,
        );
      });
    });
  }
}

test("a stored certificate is never paired with another key: a replaced key is a clear error", async () => {
  const custody = await softwareCustody()();
  try {
    const a = await openCaService({ custody, signerLabel: "ca/a", repository: new MemoryCaServiceRepository(), subject: SUBJECT });
    await custody.generateKeyPair("ca/b", "P256");
    const other = new MemoryCaServiceRepository();
    await other.saveCaCertificate({ keyLabel: "ca/b", certificate: a.authority.certificate, issuerChain: [] });
    await assert.rejects(openCaService({ custody, signerLabel: "ca/b", repository: other, subject: SUBJECT }), /custody key "ca\/b" is not the key of the stored CA certificate/);
  } finally {
    await custody.close();
  }
});

test("two starts at once create one CA: the first certificate stored is the one both use", async () => {
  const custody = await softwareCustody()();
  try {
    const repo = new MemoryCaServiceRepository();
    const [a, b] = await Promise.all([0, 1].map(() => openCaService({ custody, signerLabel: "ca/root", repository: repo, subject: SUBJECT })));
    assert.deepEqual(a.authority.certificate, b.authority.certificate);
    assert.equal([a, b].filter((s) => s.created).length, 1);
    assert.equal((await custody.listKeys()).length, 1);
  } finally {
    await custody.close();
  }
});

test("a start interrupted after the root was recorded but before it was stored: the next start completes it", async () => {
  const custody = await softwareCustody()();
  try {
    const repo = new MemoryCaServiceRepository();
    // what the first start had done when it stopped: the key generated, a root signed and recorded, nothing stored
    await custody.generateKeyPair("ca/root", "P256", { extractable: "never" });
    const lost = await CertificationAuthority.createRoot({ signer: await custody.signer("ca/root"), subject: SUBJECT, validityDays: 10, repository: repo });
    assert.equal(await repo.loadCaCertificate(), undefined);
    const svc = await openCaService({ custody, signerLabel: "ca/root", repository: repo, subject: SUBJECT });
    assert.equal(svc.created, true);
    assert.notDeepEqual(svc.authority.certificate, lost.certificate);
    assert.deepEqual((await repo.loadCaCertificate())?.certificate, svc.authority.certificate);
    const ee = await svc.client.certify({ profile: "signature", subject: { commonName: "A" }, publicKey: spki() });
    const v = verify(svc.authority.certificate, ee.certificate);
    assert.equal(v.status, 0, v.out);
  } finally {
    await custody.close();
  }
});
