// Embodiment 2 (claim 9): a full card moves {Sk[PRk], Ct} out to the terminal's store and loads it back on demand.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes, verify } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createCard, TRANSPORT_KEY_SET } from "../src/card/card.ts";
import { sealPackage } from "../src/protocol/package.ts";
import { createCertificateAuthority, issueCertificate } from "../src/ca/x509-issuer.ts";
import { personalise } from "../src/issuer/card-scripts.ts";
import { ApduError } from "../src/protocol/apdu-client.ts";
import { readCardInfo } from "../src/protocol/card-info.ts";
import { bringBack, moveOut, OverflowStore } from "../src/terminal/overflow.ts";
import { PivClient } from "../src/protocol/piv/client.ts";
import { tempDir } from "./helpers.ts";

test("a full card overflows to the terminal store and gets its keys back on demand", async () => {
  const dir = tempDir("cardkms-overflow-");
  const card = createCard(join(dir, "c.card"), randomBytes(32), { capacity: 2600 });
  const transmit = (a: Uint8Array) => card.transmit(a);
  const sk = { kvn: 1, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") };
  await personalise(transmit, TRANSPORT_KEY_SET, sk);
  const info = await readCardInfo(transmit);
  assert.ok("cardId" in info);
  const ca = await createCertificateAuthority("CN=overflow CA");
  const piv = new PivClient(transmit);
  await piv.select();
  const slots = [0x9a, 0x9c, 0x9d, 0x9e, 0x82, 0x83];
  const keys = new Map<number, ReturnType<typeof generateKeyPairSync>>();
  let seq = 0;
  let full: number | undefined;
  const privates: Buffer[] = [];
  for (const ref of slots) {
    const kp = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const cert = await issueCertificate(ca, { subject: `CN=slot ${ref.toString(16)}`, publicKey: kp.publicKey });
    const pkcs8 = kp.privateKey.export({ format: "der", type: "pkcs8" });
    privates.push(Buffer.from(kp.privateKey.export({ format: "jwk" }).d!, "base64url"));
    const pkg = sealPackage(sk, { cardId: info.cardId, keyRef: ref.toString(16), seq: ++seq, alg: "P256", pkcs8: new Uint8Array(pkcs8), cert: new Uint8Array(cert.rawData) });
    try {
      await piv.loadPackage(pkg);
      keys.set(ref, kp);
    } catch (e) {
      assert.ok(e instanceof ApduError && e.sw === 0x6a84, "a full card answers 6A84");
      full = ref;
      // The card did not accept it, so its sequence number is still unused: the same number is reused below.
      // Make room: move 9A out to the terminal's store, then the new key fits.
      await piv.verifyPin("123456");
      const moved = await moveOut(piv, new OverflowStore(join(dir, "store")), 0x9a);
      assert.equal(moved.keyRef, "9a");
      assert.equal(await piv.readCertificate(0x9a), undefined, "certificate moved out with its key");
      await piv.loadPackage(sealPackage(sk, { cardId: info.cardId, keyRef: ref.toString(16), seq, alg: "P256", pkcs8: new Uint8Array(pkcs8), cert: new Uint8Array(cert.rawData) }));
      keys.set(ref, kp);
      break;
    }
  }
  assert.ok(full !== undefined, "the card filled up");
  // Nothing in the store holds a private key in clear.
  const stored = readdirSync(join(dir, "store")).map((f) => readFileSync(join(dir, "store", f)));
  assert.equal(stored.length, 1);
  for (const p of privates) assert.equal(Buffer.concat(stored).indexOf(p), -1);
  // On demand: free the newest slot again, bring 9A back, and it signs with its original key.
  await piv.verifyPin("123456");
  await moveOut(piv, new OverflowStore(join(dir, "store")), full!);
  await bringBack(piv, new OverflowStore(join(dir, "store")), info.cardId, 0x9a);
  const msg = randomBytes(32);
  await piv.verifyPin("123456");
  const { signature } = await piv.sign(0x9a, "P256", msg);
  assert.ok(verify("sha256", msg, { key: keys.get(0x9a)!.publicKey, dsaEncoding: "der" }, signature));
  assert.ok(await piv.readCertificate(0x9a), "its certificate came back too");
  card.close();
});
