// Seed 000 ST11-ST25 end to end on both storage engines, with the software keystore: a user is registered, a
// blank virtual card is issued and personalised with a card key diversified in custody, credentials are
// delivered as packages through the terminal and online through SCP03, updated and added without recalling the
// card, and revoked; every act lands in the hash-chained audit log.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createPrivateKey, randomBytes, verify, X509Certificate } from "node:crypto";
import { join } from "node:path";
import { createCard } from "../src/card/card.ts";
import { CertificationAuthority } from "../src/ca/authority.ts";
import { LocalCaClient } from "../src/ca/client.ts";
import { MemoryCaRepository } from "../src/ca/repository.ts";
import { keyPair } from "./support/ca-testing.ts";
import { nodeSigner } from "../src/ca/signer.ts";
import { Issuer } from "../src/issuer/issuer.ts";
import { Store } from "../src/store/store.ts";
import { verifyAuditLog } from "../src/store/audit.ts";
import { testEngines } from "./support/store-testing.ts";
import { ApduError } from "../src/protocol/apdu-client.ts";
import { PivClient } from "../src/protocol/piv/client.ts";
import { softwareCustody } from "./custody-env.ts";
import { importTestKmc, TEST_KMC } from "./kmc.ts";
import { tempDir } from "./helpers.ts";

const dir = tempDir();

for (const engine of testEngines()) {
  test(`issuing flows on ${engine.name}`, { timeout: 10 * 60_000 }, async () => {
    const tdb = await engine.create();
    const custody = await softwareCustody()();
    try {
      const store = new Store(tdb.db);
      const caKey = keyPair("P256").privateKey;
      const authority = await CertificationAuthority.createRoot({ signer: nodeSigner(caKey), repository: new MemoryCaRepository(), subject: { commonName: "flows CA" }, validityDays: 3650 });
      const ca = new LocalCaClient(authority);
      const issuer = await Issuer.open({ store, custody, ca });
      await importTestKmc(custody);

      // ST11-ST15
      const user = await issuer.registerUser({ commonName: "Hanako Yamada", email: "hanako@example.test", organization: "Example Bank" }, "olga");
      const { card } = await issuer.issueCard({ userId: user.id }, "olga");
      assert.equal(card.status, "issued");
      const vc = createCard(join(dir, `${engine.name}-${card.id}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(card.id, "hex") });
      const transmit = (a: Uint8Array) => vc.transmit(a);
      assert.equal((await issuer.personaliseCard(card.id, transmit, "olga")).status, "active");

      // ST16-ST25, package path
      const c1 = await issuer.requestCredential({ cardId: card.id, slot: "9a", alg: "P256" }, "olga");
      assert.equal(c1.package.seq, 1);
      const piv = new PivClient(transmit);
      await piv.select();
      const pending = await issuer.packagesFor(card.id);
      assert.deepEqual(
        pending.map((p) => p.seq),
        [1],
      );
      await piv.loadPackage(pending[0].body);
      await issuer.acknowledgePackage(card.id, 1, "terminal");
      const signsWith = async (slot: number, der: Uint8Array, alg: "P256" | "P384" = "P256") => {
        await piv.verifyPin("123456");
        const msg = randomBytes(32);
        const { signature, hash } = await piv.sign(slot, alg, msg);
        return verify(hash, msg, { key: new X509Certificate(der).publicKey, dsaEncoding: "der" }, signature);
      };
      assert.ok(await signsWith(0x9a, c1.certificate.der), "the card signs with the delivered key");
      assert.match(new X509Certificate(c1.certificate.der).subject, /CN=Hanako Yamada/);

      // update (claim 4): a new key for 9A without recalling the card; the old package is refused now
      await assert.rejects(issuer.requestCredential({ cardId: card.id, slot: "9a", alg: "P256" }, "olga"), /holds a key/);
      const c2 = await issuer.requestCredential({ cardId: card.id, slot: "9a", alg: "P256", replace: true }, "olga");
      await piv.loadPackage(c2.package.body);
      assert.ok(await signsWith(0x9a, c2.certificate.der));
      assert.ok(!(await signsWith(0x9a, c1.certificate.der)), "the old key is gone");
      await assert.rejects(piv.loadPackage(c1.package.body), (e: unknown) => e instanceof ApduError && e.sw === 0x6985, "replay of an older package");
      assert.equal((await store.getKeyPair(c1.keyPair.id))!.status, "superseded");

      // addition (claim 7), online through SCP03 driven by the issuer
      const c3 = await issuer.requestCredential({ cardId: card.id, slot: "9e", alg: "P384" }, "olga");
      await issuer.deliverOnline(card.id, c3.keyPair.id, transmit, "olga");
      assert.ok(await signsWith(0x9e, c3.certificate.der, "P384"));

      // revocation reaches the CA's CRL
      await issuer.revokeCertificate(c2.certificate.serial, "keyCompromise", "olga");
      const crl = await ca.crl();
      assert.ok(Buffer.from(crl).includes(Buffer.from(c2.certificate.serial, "hex")), "the CRL lists the serial");
      assert.equal((await store.getKeyPair(c2.keyPair.id))!.status, "revoked");

      // the DB holds no private key in clear: only Sk[PRk], which does not parse as a key
      const wrapped = await store.getWrappedKey(c3.keyPair.id, (await store.getCard(card.id))!.currentKeySetId!);
      assert.ok(wrapped && wrapped.wrapped.length > 100);
      assert.throws(() => createPrivateKey({ key: Buffer.from(wrapped.wrapped.subarray(1)), format: "der", type: "pkcs8" }), "Sk[PRk] is not a usable key");

      const audit = await verifyAuditLog(tdb.db);
      assert.equal(audit.ok, true);
      assert.ok(audit.entries >= 7, `audit entries: ${audit.entries}`);
      vc.close();
    } finally {
      await custody.close();
      await tdb.drop();
    }
  });
}
