// The card and key custody together, on both custody implementations: a blank card, made with its own transport
// keys from the manufacturer's KMC, is personalised over transport keys and with a card key both diversified inside
// custody, a credential key generated inside custody reaches the card only as Sk[PRk]
// (online under SCP03, and offline in a package sealed by custody), and the card signs with it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createPublicKey, randomBytes, verify } from "node:crypto";
import { join } from "node:path";
import { createCard } from "../src/card/card.ts";
import { assemblePackage, packageHeaderBytes, packagePlaintext } from "../src/protocol/package.ts";
import { PURPOSE } from "../src/protocol/derivation.ts";
import type { DerivedKeySetRef, KeyCustody } from "../src/custody/custody.ts";
import { deliverOnline, personalise } from "../src/issuer/card-scripts.ts";
import { KMC_LABEL, kmcTransportRef } from "../src/issuer/transport-keys.ts";
import { readCardInfo } from "../src/protocol/card-info.ts";
import { PivClient } from "../src/protocol/piv/client.ts";
import { softhsmCustody, softwareCustody } from "./custody-env.ts";
import { tempDir } from "./helpers.ts";
import { importTestKmc, TEST_KMC } from "./kmc.ts";

const dir = tempDir();

for (const [name, make] of [
  ["software", softwareCustody()],
  ["PKCS#11 (SoftHSM2)", softhsmCustody()],
] as const) {
  test(`${name}: personalise, deliver Sk[PRk] online and as a package, sign`, async () => {
    const custody: KeyCustody = await make();
    try {
      const cardId = randomBytes(8).toString("hex");
      const card = createCard(join(dir, `${cardId}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(cardId, "hex") });
      const transmit = (a: Uint8Array) => card.transmit(a);
      await importTestKmc(custody);
      const transport = kmcTransportRef(KMC_LABEL, cardId);
      await custody.createSecretKey("card-master", { type: "aes", bits: 256 }).catch(() => undefined);
      const sk: DerivedKeySetRef = { kind: "derived", master: "card-master", cardId, kvn: 1 };
      await personalise(transmit, { custody, ref: transport }, { custody, ref: sk });
      const info = await readCardInfo(transmit);
      assert.ok("cardId" in info && info.lifecycle === "SECURED");
      assert.deepEqual(info.keySets, [{ kvn: 1, keyLength: 16 }]);

      // online: Sk[PRk] from custody inside an SCP03 session whose keys custody computes
      await custody.generateKeyPair(`k9a-${cardId}`, "P256", { extractable: "wrapped", ephemeral: true });
      const skPrk = await custody.wrapPrivateKey(`k9a-${cardId}`, { card: sk });
      await deliverOnline(transmit, { custody, ref: sk }, { keyRef: 0x9a, alg: "P256", skPrk: Uint8Array.from([sk.kvn, ...skPrk]) });
      // offline: a package custody seals
      await custody.generateKeyPair(`k9e-${cardId}`, "P384", { extractable: "wrapped", ephemeral: true });
      const skPrk2 = await custody.wrapPrivateKey(`k9e-${cardId}`, { card: sk });
      const header = packageHeaderBytes("credential", sk.kvn, cardId, "9e", 1);
      const sealed = await custody.sealForCard(sk, PURPOSE.package(1), header, packagePlaintext("P384", Uint8Array.from([sk.kvn, ...skPrk2])));
      const piv = new PivClient(transmit);
      await piv.select();
      await piv.loadPackage(assemblePackage(header, sealed.nonce, sealed.ciphertext));

      await piv.verifyPin("123456");
      const msg = randomBytes(40);
      for (const [ref, alg, label, hash] of [
        [0x9a, "P256", `k9a-${cardId}`, "sha256"],
        [0x9e, "P384", `k9e-${cardId}`, "sha384"],
      ] as const) {
        const { signature } = await piv.sign(ref, alg, msg);
        const pub = createPublicKey({ key: Buffer.from(await custody.publicKey(label)), format: "der", type: "spki" });
        assert.ok(verify(hash, msg, { key: pub, dsaEncoding: "der" }, signature), `slot ${ref.toString(16)} signs with the custody-generated key`);
        await custody.deleteKey(label);
      }
      card.close();
    } finally {
      await custody.close();
    }
  });
}
