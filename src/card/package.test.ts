import { test } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv, generateKeyPairSync, randomBytes } from "node:crypto";
import { assemblePackage, packageHeaderBytes, packagePlaintext, sealPackage, wrapForCard } from "../protocol/package.ts";
import { applyPackage, exportPackage, openPackage, unwrapForCard } from "./package.ts";
import { derivePurposeKey, PURPOSE } from "../protocol/derivation.ts";
import type { CardState } from "./state.ts";
import { CardError } from "../protocol/sw.ts";

const keySet = { kvn: 1, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") };
const state = (over: Partial<CardState> = {}): CardState => ({
  format: 1,
  cardId: "0102030405060708",
  secretId: "",
  lifecycle: "SECURED",
  capacity: 1e5,
  keySets: [keySet],
  scpFailures: 0,
  scpFailureLimit: 10,
  scpCounter: 0,
  pin: { hash: "", salt: "", tries: 3, maxTries: 3 },
  puk: { hash: "", salt: "", tries: 3, maxTries: 3 },
  keys: {},
  objects: {},
  packageSeq: 0,
  exportSeq: {},
  ...over,
});
const pkcs8 = new Uint8Array(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ format: "der", type: "pkcs8" }));
const cert = randomBytes(300);
const sw = (code: number) => (e: unknown) => e instanceof CardError && e.sw === code;

test("a sealed package opens only on its card and hides the key", () => {
  const s = state();
  const pkg = sealPackage(keySet, { cardId: s.cardId, keyRef: "9a", seq: 1, alg: "P256", pkcs8, cert });
  assert.equal(Buffer.from(pkg).indexOf(Buffer.from(pkcs8.subarray(-32))), -1, "private key bytes not visible");
  const o = openPackage(s, pkg);
  assert.deepEqual([o.keyRef, o.seq, o.alg, o.kind], ["9a", 1, "P256", "credential"]);
  assert.deepEqual([...o.pkcs8!], [...pkcs8]);
  applyPackage(s, o);
  assert.equal(s.packageSeq, 1);
  assert.ok(s.keys["9a"] && s.objects["5fc105"]);
  // another card with another key set
  const other = state({ cardId: "0102030405060709", keySets: [{ ...keySet, dek: randomBytes(16).toString("hex") }] });
  assert.throws(() => openPackage(other, pkg), sw(0x6982));
  // another card ID but same keys (misdirected): refused
  assert.throws(() => openPackage(state({ cardId: "0102030405060709" }), pkg), sw(0x6982));
});

test("every altered byte is detected; replays and older packages refused", () => {
  const s = state({ packageSeq: 4 });
  const pkg = sealPackage(keySet, { cardId: s.cardId, keyRef: "9c", seq: 5, alg: "P256", pkcs8 });
  for (let i = 0; i < pkg.length; i++) {
    const bad = Uint8Array.from(pkg);
    bad[i] ^= 0x01;
    assert.throws(
      () => openPackage(s, bad),
      (e: unknown) => e instanceof CardError && [0x6982, 0x6a80, 0x6985].includes(e.sw),
      `byte ${i}`,
    );
  }
  assert.throws(() => openPackage(s, pkg.subarray(0, 20)), sw(0x6a80));
  applyPackage(s, openPackage(s, pkg));
  assert.throws(() => openPackage(s, pkg), sw(0x6985), "replay");
  const older = sealPackage(keySet, { cardId: s.cardId, keyRef: "9c", seq: 3, alg: "P256", pkcs8 });
  assert.throws(() => openPackage(s, older), sw(0x6985));
});

test("an export loads back only into the same card and only while newest", () => {
  const s = state({ keys: { "9d": { alg: "P256", pkcs8: Buffer.from(pkcs8).toString("hex"), origin: "generated" } } });
  const e1 = exportPackage(s, "9d");
  s.exportSeq["9d"] = e1.exportSeq;
  const e2 = exportPackage(s, "9d");
  s.exportSeq["9d"] = e2.exportSeq;
  assert.throws(() => openPackage(s, e1.bytes), sw(0x6985));
  const o = openPackage(s, e2.bytes);
  assert.equal(o.kind, "export");
  const before = s.packageSeq;
  applyPackage(s, o);
  assert.equal(s.packageSeq, before, "exports do not move the delivery counter");
  assert.throws(() => exportPackage(s, "9e"), sw(0x6a88));
});

test("Sk[PRk] inside a package opens only with this card's wrap key", () => {
  const s = state();
  const sk = wrapForCard(keySet, s.cardId, pkcs8);
  assert.equal(sk[0], keySet.kvn);
  assert.deepEqual([...unwrapForCard(s, sk)], [...pkcs8]);
  const other = state({ cardId: "1111111111111111" });
  assert.throws(() => unwrapForCard(other, sk), sw(0x6982), "another card cannot unwrap it");
  const bent = Uint8Array.from(sk);
  bent[10] ^= 1;
  assert.throws(() => unwrapForCard(s, bent), sw(0x6982));
  // An issuer that seals with custody builds the same bytes from the parts.
  const h = packageHeaderBytes("credential", keySet.kvn, s.cardId, "9d", 9);
  const key = derivePurposeKey(Buffer.from(keySet.dek, "hex"), s.cardId, keySet.kvn, PURPOSE.package(1));
  const nonce = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", key, nonce).setAAD(h);
  const ct = Buffer.concat([c.update(packagePlaintext("P256", sk, cert)), c.final(), c.getAuthTag()]);
  const o = openPackage(s, assemblePackage(h, nonce, ct));
  assert.deepEqual([o.keyRef, o.seq, [...o.pkcs8!]], ["9d", 9, [...pkcs8]]);
});

// Seed 000 embodiments 4 and 5 (para 0081-0089): the new card holds the old card's Sk1 as a predecessor key set.
test("a predecessor key set opens the old card's exports and Sk1[PRk], and nothing else of the old card", () => {
  const oldId = "a1a2a3a4a5a6a7a8";
  const sk1 = { ...keySet, kvn: 1 };
  const sk2 = { kvn: 2, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") };
  const oldCard = state({ cardId: oldId, keySets: [sk1], keys: { "9d": { alg: "P256", pkcs8: Buffer.from(pkcs8).toString("hex"), origin: "package" } } });
  const e1 = exportPackage(oldCard, "9d", cert);
  oldCard.exportSeq["9d"] = e1.exportSeq;
  const e2 = exportPackage(oldCard, "9d", cert);
  oldCard.exportSeq["9d"] = e2.exportSeq;

  const newCard = state({ cardId: "b1b2b3b4b5b6b7b8", keySets: [sk2, { ...sk1, origin: oldId }] });
  // Loads: the key and its certificate, and the (old card, slot) high-water mark.
  const o = openPackage(newCard, e1.bytes);
  assert.deepEqual([o.kind, o.cardId, o.keyRef, o.seq], ["export", oldId, "9d", 1]);
  assert.deepEqual([...o.pkcs8!], [...pkcs8]);
  applyPackage(newCard, o);
  assert.deepEqual(newCard.predecessorExportSeq, { [`${oldId}:9d`]: 1 });
  assert.equal(newCard.packageSeq, 0);
  assert.deepEqual(newCard.exportSeq, {}, "the new card's own export counters are its own");
  // A newer export of the old card still loads; the same one again too (idempotent); an older one after it: 6985.
  applyPackage(newCard, openPackage(newCard, e2.bytes));
  applyPackage(newCard, openPackage(newCard, e2.bytes));
  assert.throws(() => openPackage(newCard, e1.bytes), sw(0x6985));
  // Altered anywhere: refused.
  for (let i = 0; i < e2.bytes.length; i++) {
    const bad = Uint8Array.from(e2.bytes);
    bad[i] ^= 0x80;
    assert.throws(
      () => openPackage(newCard, bad),
      (e: unknown) => e instanceof CardError && [0x6982, 0x6a80].includes(e.sw),
      `byte ${i}`,
    );
  }
  // A third card that does not hold the predecessor key set: 6982; nor one holding Sk1 as if it were its own.
  assert.throws(() => openPackage(state({ cardId: "c1c2c3c4c5c6c7c8", keySets: [sk2] }), e2.bytes), sw(0x6982));
  assert.throws(() => openPackage(state({ cardId: "c1c2c3c4c5c6c7c8", keySets: [sk2, sk1] }), e2.bytes), sw(0x6982));
  // Bound to another predecessor: 6982.
  assert.throws(() => openPackage(state({ cardId: "b1b2b3b4b5b6b7b8", keySets: [sk2, { ...sk1, origin: "d1d2d3d4d5d6d7d8" }] }), e2.bytes), sw(0x6982));
  // A credential package addressed to the old card belongs to the old card.
  const cred = sealPackage(sk1, { cardId: oldId, keyRef: "9a", seq: 9, alg: "P256", pkcs8, cert });
  assert.equal(openPackage(oldCard, cred).kind, "credential");
  assert.throws(() => openPackage(newCard, cred), sw(0x6982));
  // A package naming the new card under the predecessor's KVN is not one either key set opens.
  assert.throws(() => openPackage(newCard, sealPackage(sk1, { cardId: newCard.cardId, keyRef: "9a", seq: 1, alg: "P256", pkcs8 })), sw(0x6982));
  // Sk1[PRk] wrapped for the old card (system DB rows, IMPORT KEY) unwraps with the predecessor key set.
  assert.deepEqual([...unwrapForCard(newCard, wrapForCard(sk1, oldId, pkcs8))], [...pkcs8]);
  assert.throws(() => unwrapForCard(newCard, wrapForCard(sk1, newCard.cardId, pkcs8)), sw(0x6982));
});

test("a card with a predecessor key set exports under its newest own key set and its own card ID", () => {
  const oldId = "a1a2a3a4a5a6a7a8";
  const own = { ...keySet, kvn: 2 };
  // The predecessor's KVN is the higher one here: exports still go under the card's own key set.
  const s = state({
    keySets: [own, { kvn: 7, enc: keySet.enc, mac: keySet.mac, dek: randomBytes(16).toString("hex"), origin: oldId }],
    keys: { "9e": { alg: "P256", pkcs8: Buffer.from(pkcs8).toString("hex"), origin: "package" } },
  });
  const e = exportPackage(s, "9e");
  s.exportSeq["9e"] = e.exportSeq;
  const o = openPackage(s, e.bytes);
  assert.deepEqual([o.cardId, o.seq], [s.cardId, 1]);
  assert.equal(e.bytes[5], 2, "sealed under KVN 2");
  assert.throws(() => exportPackage(state({ keySets: [{ ...keySet, origin: oldId }], keys: s.keys }), "9e"), sw(0x6985), "no key set of its own");
});
