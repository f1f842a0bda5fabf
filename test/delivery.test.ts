// Seed 000 ST22-ST25 end to end through the terminal: keys delivered online (SCP03, C-DECRYPTION) and offline
// (sealed packages) reach the card and work, while nothing the terminal relays ever carries a private key in
// clear; misdirected, altered and replayed packages are refused; an export leaves only as Sk[PRk].

import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes, verify, type KeyObject } from "node:crypto";
import { join } from "node:path";
import { sealPackage } from "../src/protocol/package.ts";
import type { ScpKeySet } from "../src/card/state.ts";
import { deliverOnline, personalise } from "../src/issuer/card-scripts.ts";
import { ApduError } from "../src/protocol/apdu-client.ts";
import { readCardInfo } from "../src/protocol/card-info.ts";
import { PivClient, SLOT } from "../src/protocol/piv/client.ts";
import { tempDir } from "./helpers.ts";
import { factoryCard } from "./kmc.ts";

const dir = tempDir();
const keySet = (kvn: number): ScpKeySet => ({ kvn, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") });
const secretBytes = (k: KeyObject): Buffer[] => {
  const jwk = k.export({ format: "jwk" });
  return [Buffer.from(jwk.d!, "base64url"), k.export({ format: "der", type: "pkcs8" }) as Buffer];
};

async function issuedCard(name: string) {
  const { card, transport } = factoryCard(join(dir, `${name}.card`), randomBytes(32));
  const traffic: Buffer[] = [];
  const transmit = (a: Uint8Array) => {
    const r = card.transmit(a);
    traffic.push(Buffer.from(a), Buffer.from(r));
    return r;
  };
  const sk = keySet(1);
  await personalise(transmit, transport, sk);
  const info = await readCardInfo(transmit);
  assert.ok("cardId" in info);
  return { card, transmit, traffic, sk, cardId: info.cardId };
}

test("online and offline delivery: the card signs, the terminal never sees a private key", async () => {
  const a = await issuedCard("a");
  const online = generateKeyPairSync("ec", { namedCurve: "P-384" });
  const offline = generateKeyPairSync("ec", { namedCurve: "P-256" });
  await deliverOnline(a.transmit, a.sk, { keyRef: SLOT.authentication, alg: "P384", pkcs8: new Uint8Array(secretBytes(online.privateKey)[1]) });
  const pkg = sealPackage(a.sk, { cardId: a.cardId, keyRef: "9e", seq: 7, alg: "P256", pkcs8: new Uint8Array(secretBytes(offline.privateKey)[1]) });
  a.traffic.push(Buffer.from(pkg));
  const piv = new PivClient(a.transmit);
  await piv.select();
  await piv.loadPackage(pkg);
  await piv.verifyPin("123456");
  const msg = randomBytes(50);
  const s1 = await piv.sign(SLOT.authentication, "P384", msg);
  assert.ok(verify("sha384", msg, { key: online.publicKey, dsaEncoding: "der" }, s1.signature));
  const s2 = await piv.sign(SLOT.cardAuthentication, "P256", msg);
  assert.ok(verify("sha256", msg, { key: offline.publicKey, dsaEncoding: "der" }, s2.signature));
  // claim 16: the key leaves the card only wrapped under Sk
  const exported = await piv.exportKey(SLOT.cardAuthentication);
  assert.ok(exported.length > 100);
  const all = Buffer.concat(a.traffic);
  for (const k of [online.privateKey, offline.privateKey]) for (const secret of secretBytes(k)) assert.equal(all.indexOf(secret), -1, "a private key crossed the terminal in clear");
  // the export goes back into the same card (overflow store), but not into another one
  await piv.loadPackage(exported);
  const b = await issuedCard("b");
  const pivB = new PivClient(b.transmit);
  await pivB.select();
  await assert.rejects(pivB.loadPackage(exported), (e: unknown) => e instanceof ApduError && e.sw === 0x6982);
  a.card.close();
  b.card.close();
});

test("misdirected, altered, replayed and older packages are refused and change nothing", async () => {
  const a = await issuedCard("c");
  const b = await issuedCard("d");
  const k = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const pkcs8 = new Uint8Array(secretBytes(k.privateKey)[1]);
  const forA = sealPackage(a.sk, { cardId: a.cardId, keyRef: "9a", seq: 5, alg: "P256", pkcs8 });
  const sw = (code: number) => (e: unknown) => e instanceof ApduError && e.sw === code;
  const pivA = new PivClient(a.transmit);
  const pivB = new PivClient(b.transmit);
  await pivA.select();
  await pivB.select();
  await assert.rejects(pivB.loadPackage(forA), sw(0x6982), "another card's package");
  const altered = Uint8Array.from(forA);
  altered[altered.length - 40] ^= 0x80;
  await assert.rejects(pivA.loadPackage(altered), sw(0x6982), "altered");
  // re-addressed: header says card B, sealed under A's key
  const readdressed = Uint8Array.from(forA);
  Buffer.from(b.cardId, "hex").copy(readdressed, 7);
  await assert.rejects(pivB.loadPackage(readdressed), sw(0x6982), "re-addressed");
  await pivA.loadPackage(forA);
  await assert.rejects(pivA.loadPackage(forA), sw(0x6985), "replay");
  const older = sealPackage(a.sk, { cardId: a.cardId, keyRef: "9a", seq: 4, alg: "P256", pkcs8 });
  await assert.rejects(pivA.loadPackage(older), sw(0x6985), "older");
  const infoA = await readCardInfo(a.transmit);
  const infoB = await readCardInfo(b.transmit);
  assert.ok("packageSeq" in infoA && "packageSeq" in infoB);
  assert.equal(infoA.packageSeq, 5);
  assert.equal(infoB.packageSeq, 0);
  a.card.close();
  b.card.close();
});
