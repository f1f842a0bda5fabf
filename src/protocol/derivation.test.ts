// The transport key diversification (derivation.ts §3): EMV CPS's derivation block, checked against a public vector,
// with AES in place of 3DES, checked against Node's AES; and the card's key diversification data.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv } from "node:crypto";
import { deriveTransportKeySet, keyDiversificationData, transportKeyData } from "./derivation.ts";
import { keyCheckValue } from "./scp03/host.ts";

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex").toUpperCase();
const KEY_40 = Buffer.from("404142434445464748494a4b4c4d4e4f", "hex");
const KDD = "00010203040506070809";

const ecb = (cipher: string, key: Uint8Array, data: Uint8Array): Buffer => {
  const c = createCipheriv(cipher, key, null).setAutoPadding(false);
  return Buffer.concat([c.update(data), c.final()]);
};

test("the derivation block is EMV CPS's: with 3DES it gives GlobalPlatformPro's public EMV vector", () => {
  // GlobalPlatformPro TestPlaintextKeys.testDiversification_EMV_SCP02: master 40..4F, KDD 00..09, 3DES KCVs
  // (the first 3 bytes of 3DES-ECB(key, 8 zero bytes)).
  const expected = { enc: "C33013", mac: "6F4CA6", dek: "BB8179" };
  for (const name of ["enc", "mac", "dek"] as const) {
    const block = transportKeyData(KDD, name);
    const key = ecb("des-ede-ecb", KEY_40, block);
    assert.equal(hex(ecb("des-ede-ecb", key, new Uint8Array(8)).subarray(0, 3)), expected[name], name);
  }
  assert.equal(hex(transportKeyData(KDD, "enc")), "040506070809F001040506070809" + "0F01");
});

test("AES: one block of that derivation under the KMC; AES-128 and AES-256 KMCs give AES-128 card keys", () => {
  const k = deriveTransportKeySet(KEY_40, KDD);
  assert.deepEqual([hex(k.enc), hex(k.mac), hex(k.dek)], ["E79AC10B494E12C55A0436C8EF62C25F", "CD19A782BC4DF6080B4B3212E363427A", "8F477CEBBC18B19ABA9DCAF470966735"]);
  assert.deepEqual(
    [k.enc, k.mac, k.dek].map((x) => hex(keyCheckValue(x))),
    ["1BC0A5", "A3399A", "57E25B"],
  );
  for (const name of ["enc", "mac", "dek"] as const) assert.equal(hex(k[name]), hex(ecb("aes-128-ecb", KEY_40, transportKeyData(KDD, name))), `${name}: AES-ECB of the block`);
  const kmc256 = Buffer.from("404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f", "hex");
  const k256 = deriveTransportKeySet(kmc256, KDD);
  assert.deepEqual(
    [k256.enc, k256.mac, k256.dek].map((x) => hex(keyCheckValue(x))),
    ["F1670D", "3D26F9", "469D78"],
  );
  assert.equal(hex(k256.enc), hex(ecb("aes-256-ecb", kmc256, transportKeyData(KDD, "enc"))));
  assert.throws(() => deriveTransportKeySet(new Uint8Array(24), KDD), /AES-128 or AES-256/);
  assert.throws(() => transportKeyData("0001", "enc"), /10 bytes/);
});

test("a card's key diversification data is its card ID right-aligned, so EMV CPS's 6 bytes are the ID's last 6", () => {
  assert.equal(hex(keyDiversificationData("0102030405060708")), "00000102030405060708");
  assert.equal(hex(keyDiversificationData("000102030405060708090a0b0c0d0e0f")), "060708090A0B0C0D0E0F");
  const a = deriveTransportKeySet(KEY_40, keyDiversificationData("1111111111111111"));
  const b = deriveTransportKeySet(KEY_40, keyDiversificationData("1111111111111112"));
  assert.notEqual(hex(a.enc), hex(b.enc), "cards whose IDs differ in the last byte get different keys");
  assert.equal(new Set([hex(a.enc), hex(a.mac), hex(a.dek)]).size, 3, "ENC, MAC and DEK differ");
});
