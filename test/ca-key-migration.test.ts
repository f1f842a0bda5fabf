// Migration 0009 (src/store/migrations/0009_canonical_key_hashes.ts) on every engine: a key certified before in a
// crafted encoding — claimed then under the hash of those bytes only — counts as certified in its canonical encoding
// after the migration, so the CA refuses it as a duplicate instead of certifying it a second time.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { randomSerial, serialToHex, signCertificate, parseCertificate } from "../src/ca/certificate.ts";
import { encodeName } from "../src/ca/name.ts";
import { ecPoint, ecSpki, hierarchy, intContent, keyPair, rsaParts, rsaSpki, spkiOf } from "./support/ca-testing.ts";
import * as der from "../src/ca/der.ts";
import { CaRefusal } from "../src/ca/checks.ts";
import { SqlCaRepository } from "../src/store/ca-repository.ts";
import { migrateToLatest, migrations, migratorFor } from "../src/store/migrate.ts";
import { testEngines } from "./support/store-testing.ts";

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const DAY = 86_400_000;

for (const engine of testEngines()) {
  test(`${engine.name}: 0009 claims the canonical hash of every key certified in another encoding`, async () => {
    const tdb = await engine.create();
    try {
      const names = Object.keys(migrations(engine.name));
      const before = names[names.indexOf("0009_canonical_key_hashes") - 1];
      const down = await migratorFor(tdb.db).migrateTo(before);
      assert.equal(down.error, undefined, String(down.error));

      const repo = new SqlCaRepository(tdb.db, "issuing");
      const { issuing } = await hierarchy("P256", "P256", { repository: repo });
      const issuer = parseCertificate(issuing.certificate).subject;
      // what the CA used to record: the certificate of the SPKI as given, under the hash of those bytes
      const recordAsBefore = async (spki: Uint8Array, certificate?: Uint8Array) => {
        const serial = randomSerial();
        const now = der.wholeSeconds(new Date());
        const notAfter = new Date(now.getTime() + 365 * DAY);
        const cert = certificate ?? (await signCertificate({ serial, issuer, subject: encodeName({ commonName: "Before 0009" }), notBefore: now, notAfter, spki, extensions: [] }, issuing.signer));
        const r = await repo.recordIssued(
          { serial: serialToHex(serial), subject: { commonName: "Before 0009" }, publicKeySha256: sha256(spki), profile: "signature", notBefore: now, notAfter, issuedAt: now, certificate: cert },
          { uniquePublicKey: true },
        );
        assert.equal(r, "recorded");
      };
      const rsa = keyPair("RSA2048", "subject").publicKey;
      const { n, e } = rsaParts(rsa);
      const ec = keyPair("P256", "subject").publicKey;
      const ecLong = ecSpki("P256", ecPoint(ec));
      const crafted = [rsaSpki(intContent(n, 1), intContent(e)), der.concat([Uint8Array.of(0x30, 0x81), ecLong.subarray(1)])];
      for (const spki of crafted) await recordAsBefore(spki);
      const plain = spkiOf(keyPair("P384", "subject").publicKey);
      await recordAsBefore(plain);
      await recordAsBefore(spkiOf(keyPair("P256", "other").publicKey), new Uint8Array(randomBytes(40))); // not a certificate: left alone
      for (const k of [rsa, ec]) assert.equal(await repo.isPublicKeyCertified(sha256(spkiOf(k))), false, "before 0009 the canonical encoding looks new");

      assert.deepEqual(await migrateToLatest(tdb.db), names.slice(names.indexOf("0009_canonical_key_hashes")));
      for (const k of [rsa, ec]) assert.equal(await repo.isPublicKeyCertified(sha256(spkiOf(k))), true, "after 0009 it is certified");
      assert.equal(await repo.isPublicKeyCertified(sha256(plain)), true);
      for (const k of [rsa, ec]) {
        await assert.rejects(
          issuing.issue({ subject: { commonName: "Second Certificate" }, publicKey: spkiOf(k), profile: "signature" }),
          (err: unknown) => err instanceof CaRefusal && err.check === "duplicate-public-key",
        );
      }
      // a key never certified is still certified once
      assert.ok((await issuing.issue({ subject: { commonName: "New" }, publicKey: spkiOf(keyPair("P256", "fresh").publicKey), profile: "signature" })).serial);
    } finally {
      await tdb.drop();
    }
  });
}
