import { test } from "node:test";
import assert from "node:assert/strict";
import { hex, unhex } from "../apdu.ts";
import { aesCmac, pad80, unpad80 } from "./cmac.ts";

// RFC 4493 §4 (AES-128) and NIST SP 800-38B Appendix D.2 / D.3 (AES-192, AES-256) examples.
const MSG = unhex("6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51 30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710");
const VECTORS: { key: string; macs: [number, string][] }[] = [
  {
    key: "2b7e151628aed2a6abf7158809cf4f3c",
    macs: [
      [0, "bb1d6929e95937287fa37d129b756746"],
      [16, "070a16b46b4d4144f79bdd9dd04a287c"],
      [40, "dfa66747de9ae63030ca32611497c827"],
      [64, "51f0bebf7e3b9d92fc49741779363cfe"],
    ],
  },
  {
    key: "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
    macs: [
      [0, "d17ddf46adaacde531cac483de7a9367"],
      [16, "9e99a7bf31e710900662f65e617c5184"],
      [40, "8a1de5be2eb31aad089a82e6ee908b0e"],
      [64, "a1d5df0eed790f794d77589659f39a11"],
    ],
  },
  {
    key: "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
    macs: [
      [0, "028962f61b7bf89efc6b551f4667d983"],
      [16, "28a7023f452e8f82bd4bf28d8c37c35c"],
      [40, "aaf3d8f1de5640c232f5b169b9c911e6"],
      [64, "e1992190549f6ed5696a2c056c315410"],
    ],
  },
];

for (const v of VECTORS) {
  for (const [len, mac] of v.macs) {
    test(`AES-${v.key.length * 4} CMAC, ${len}-byte message`, () => {
      assert.equal(hex(aesCmac(unhex(v.key), MSG.subarray(0, len))), mac.toUpperCase());
    });
  }
}

test("CMAC changes with any bit of the message", () => {
  const key = unhex(VECTORS[0].key);
  const base = hex(aesCmac(key, MSG.subarray(0, 40)));
  const m = Uint8Array.from(MSG.subarray(0, 40));
  m[39] ^= 0x01;
  assert.notEqual(hex(aesCmac(key, m)), base);
});

test("CMAC refuses keys that are not AES keys", () => {
  assert.throws(() => aesCmac(new Uint8Array(15), MSG), RangeError);
});

test("ISO 9797-1 method 2 padding round-trips and rejects bad padding", () => {
  for (const n of [0, 1, 15, 16, 17, 31, 32]) {
    const data = Uint8Array.from({ length: n }, (_, i) => i + 1);
    const p = pad80(data);
    assert.equal(p.length % 16, 0);
    assert.ok(p.length > n);
    assert.deepEqual(unpad80(p), data);
  }
  assert.equal(unpad80(new Uint8Array(16)), undefined); // no 80 marker
  assert.equal(unpad80(unhex("01020304050607080910111213141516")), undefined);
  const longPad = new Uint8Array(32);
  longPad[0] = 0x80; // padding longer than a block is not ours
  assert.equal(unpad80(longPad), undefined);
});
