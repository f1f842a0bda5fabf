// The key generation device's step S3 hooks (seed 001 embodiment 3): the card's secret ID read under SCP03
// R-ENCRYPTION, the key escrowed by the recovery service while it still exists in custody, and what happens when
// the escrow or the card write fails. Real parts throughout: a virtual card, software custody, a certification
// center, the recovery service on SQLite and PostgreSQL (an unreachable PostgreSQL FAILS the suite).

import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { CertificationAuthority } from "../ca/authority.ts";
import type { SubjectName } from "../ca/name.ts";
import { MemoryCaRepository } from "../ca/repository.ts";
import { nodeSigner } from "../ca/signer.ts";
import { createCard } from "../card/card.ts";
import type { CardRuntime } from "../card/runtime.ts";
import type { DerivedKeySetRef, KeyCustody } from "../custody/custody.ts";
import { SoftwareCustody } from "../custody/software.ts";
import { personaliseFromTransport } from "../issuer/card-scripts.ts";
import { deviceSecretIdDigest, RecoveryService } from "../recovery/service.ts";
import { makeArbitrators } from "../../test/support/recovery-testing.ts";
import { auditEntries } from "../store/audit.ts";
import { SqlRecoveryRepository } from "../store/recovery-repository.ts";
import { testEngines } from "../../test/support/store-testing.ts";
import type { Transmit } from "../protocol/apdu-client.ts";
import * as x509 from "../x509.ts";
import { readCardSecretId } from "./card-io.ts";
import { CertificationCenter, MemoryRegistrationBook } from "./center.ts";
import { KeyGenerationDevice, type InsertedCard } from "./device.ts";
import { importTestKmc, TEST_KMC } from "../../test/kmc.ts";
import { KeyGenerationRefusal } from "./errors.ts";
import { MemoryIssuedKeyRegistry } from "./registry.ts";
import { recoveryStoreOf } from "../store/recovery-store.ts";

const HANAKO: SubjectName = { country: "JP", organization: "Example Bank", commonName: "Hanako Yamada", serialNumber: "P-1234567" };
const dir = mkdtempSync(join(tmpdir(), "cardkms-keygen-escrow-"));
after(() => rmSync(dir, { recursive: true, force: true }));

async function site(): Promise<{ center: CertificationCenter; root: Uint8Array }> {
  const root = await CertificationAuthority.createRoot({
    signer: nodeSigner(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey),
    subject: { country: "JP", organization: "Center", commonName: "Center Root" },
    validityDays: 3650,
    repository: new MemoryCaRepository(),
  });
  const book = new MemoryRegistrationBook();
  book.register("user-1", HANAKO);
  return { center: new CertificationCenter({ authority: root, registrations: book }), root: root.certificate };
}

/** A personalised virtual card; `wire` records every APDU and response; `cut` makes the reader fail from then on. */
async function card(custody: KeyCustody): Promise<InsertedCard & { runtime: CardRuntime; keySet: DerivedKeySetRef; wire: Uint8Array[]; cut: (when: (apdu: Uint8Array) => boolean) => void }> {
  const cardId = randomBytes(8).toString("hex");
  const runtime = createCard(join(dir, `${cardId}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(cardId, "hex") });
  const wire: Uint8Array[] = [];
  let cutWhen: ((apdu: Uint8Array) => boolean) | undefined;
  let dead = false;
  const transmit: Transmit = (a) => {
    if (dead || cutWhen?.(a)) {
      dead = true;
      throw new Error("the card was pulled out of the reader");
    }
    const r = runtime.transmit(a);
    wire.push(a, r);
    return r;
  };
  await importTestKmc(custody);
  const { keySet } = await personaliseFromTransport(transmit, custody, cardId);
  return { transmit, keySet, runtime, wire, cut: (w) => (cutWhen = w) };
}

const revoked = async (center: CertificationCenter, serial: string) =>
  new x509.X509Crl((await center.crl()).slice().buffer as ArrayBuffer).entries.some((e) => e.serialNumber.toLowerCase().replace(/^0+/, "") === serial.replace(/^0+/, ""));

test("readCardSecretId: the card's secret ID, only through the secure channel, never on the wire in clear", async () => {
  const custody = await SoftwareCustody.open({ path: join(dir, "ks-read.json"), key: randomBytes(32).toString("hex") });
  try {
    const c = await card(custody);
    c.wire.length = 0;
    const id = await readCardSecretId(custody, c);
    assert.equal(Buffer.from(id).toString("hex"), c.runtime.state.secretId);
    assert.ok(!c.wire.some((w) => Buffer.from(w).includes(Buffer.from(id))), "not in clear on the wire");
    // another card's key set does not open the channel
    await assert.rejects(readCardSecretId(custody, { transmit: c.transmit, keySet: { ...c.keySet, cardId: randomBytes(8).toString("hex") } }));
  } finally {
    await custody.close();
  }
});

for (const engine of testEngines()) {
  describe(`key generation device with the escrow hook, ${engine.name}`, () => {
    test("S3: escrow with the key in custody; refusals revoke and leave nothing; a failed write abandons the escrow", { timeout: 10 * 60_000 }, async () => {
      const tdb = await engine.create();
      const custody = await SoftwareCustody.open({ path: join(dir, `ks-${engine.name}.json`), key: randomBytes(32).toString("hex") });
      try {
        const { center, root } = await site();
        const svc = await RecoveryService.open({ store: recoveryStoreOf(tdb.db), custody });
        const { registry } = makeArbitrators(["user", "mgr"]);
        for (const id of ["user", "mgr"]) await svc.registerArbitrator({ id, signingPublicKey: registry.require(id).signingKey, encryptionPublicKey: registry.require(id).encryptionKey }, "op");
        const policy = { version: 1, author: "mgr", indispensable: ["user"], groups: [{ name: "m", members: ["mgr"], threshold: 1 }], order: [] };
        const plain = await KeyGenerationDevice.create({ custody, ca: center, registry: new MemoryIssuedKeyRegistry(), trustAnchors: [root] });
        const device = await KeyGenerationDevice.create({ custody, ca: center, registry: new MemoryIssuedKeyRegistry(), trustAnchors: [root], escrow: svc.escrowHook("keygen") });
        const keygenKeys = async () => (await custody.listKeys()).filter((k) => k.label.startsWith("keygen.")).map((k) => k.label);
        const issue = (d: KeyGenerationDevice, c: InsertedCard, cardId?: string) =>
          d.issue({
            applicantId: "user-1",
            personalData: HANAKO,
            alg: "P256",
            profile: "signature",
            slot: "9c",
            card: { transmit: c.transmit, keySet: c.keySet },
            ...(cardId ? { escrow: { cardId } } : {}),
          });

        // arguments
        const c0 = await card(custody);
        await assert.rejects(issue(plain, c0, "card-0"), /no escrow hook/);
        await assert.rejects(device.issue({ applicantId: "user-1", personalData: HANAKO, alg: "P256", profile: "signature", slot: "9c", card: c0, escrow: { cardId: "" } }), /escrow must be/);
        await assert.rejects(KeyGenerationDevice.create({ custody, ca: center, registry: new MemoryIssuedKeyRegistry(), trustAnchors: [root], escrow: {} as never }), /KeyEscrowHook/);
        // without an escrow the device works as before
        assert.equal((await issue(device, c0)).escrowId, undefined);

        // escrow refused (no policy for the card): named, certificate revoked, key destroyed, card untouched
        const c1 = await card(custody);
        let serial = "";
        await assert.rejects(issue(device, c1, "card-1"), (e: unknown) => {
          assert.ok(e instanceof KeyGenerationRefusal);
          assert.equal(e.check, "escrow");
          assert.match(e.detail, /no_policy/);
          serial = /certificate ([0-9a-f]+) revoked/.exec(e.detail)?.[1] ?? "";
          return true;
        });
        assert.ok(serial && (await revoked(center, serial)));
        assert.deepEqual(await keygenKeys(), []);
        assert.deepEqual(c1.runtime.state.keys, {}, "nothing written into the card");

        // escrowed: the registered device is this card (by the digest of its secret ID)
        await svc.setPolicy("card-1", policy, "op");
        const r = await issue(device, c1, "card-1");
        assert.ok(r.escrowId);
        const esc = await svc.escrowOf("card-1");
        assert.equal(esc?.serial, r.serial);
        assert.equal(esc?.publicKeySha256, r.publicKeySha256);
        const dev = await new SqlRecoveryRepository(tdb.db).device("card-1");
        assert.equal(dev?.secretIdDigest, deviceSecretIdDigest(Buffer.from(c1.runtime.state.secretId, "hex")));
        assert.deepEqual(await keygenKeys(), [], "the key is destroyed after the escrow");
        assert.ok(c1.runtime.state.keys["9c"], "and is in the card");

        // the card pulled out during the write (after the secret ID was read): the escrow is abandoned
        await svc.setPolicy("card-2", policy, "op");
        const c2 = await card(custody);
        let authentications = 0;
        c2.cut((apdu) => apdu[1] === 0x82 && ++authentications === 2); // the second EXTERNAL AUTHENTICATE: the PIV session
        await assert.rejects(issue(device, c2, "card-2"), (e: unknown) => e instanceof KeyGenerationRefusal && e.check === "card-write");
        assert.equal(await svc.escrowOf("card-2"), undefined, "abandoned");
        const actions: string[] = [];
        for await (const e of auditEntries(tdb.db)) if (e.subject === "card-2") actions.push(e.action);
        assert.deepEqual(actions, ["recovery.policy.set", "recovery.escrow.create", "recovery.device.register", "recovery.escrow.abandon"]);
        assert.deepEqual(await keygenKeys(), []);
      } finally {
        await custody.close();
        await tdb.drop();
      }
    });
  });
}
