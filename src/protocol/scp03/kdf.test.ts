import { test } from "node:test";
import assert from "node:assert/strict";
import { hex, unhex } from "../apdu.ts";
import { cryptogram, DERIVE, deriveSessionKeys, kdf } from "./kdf.ts";

// Known answers from a third-party SCP03 trace (Samsung OpenSCP-Java test data, S8 mode, KVN 30): static keys,
// host challenge 06F85B77251BF794, card challenge 9CE033FA78E6B10D, and the card / host cryptograms the real
// implementation produced. Both cryptograms go through two KDF calls (session S-MAC, then the cryptogram).
const HOST = unhex("06F85B77251BF794");
const CARD = unhex("9CE033FA78E6B10D");
const TRACES = [
  { bits: 128, mac: "F4932BA02FFC3098D172790099D28382", card: "DC2DBE8974C8B0DE", host: "B08D6CE26B6CB3CC" },
  { bits: 192, mac: "F4932BA02FFC3098D172790099D2838236F2E61068D56F44", card: "6E7C64F962A822A4", host: "63B6CEFAC0EC0983" },
  { bits: 256, mac: "F4932BA02FFC3098D172790099D2838236F2E61068D56F4401CC0374C25AF8CB", card: "8AFA7267CB63740E", host: "50E003735F922282" },
];

for (const t of TRACES) {
  test(`SCP03 KDF known answers, AES-${t.bits}: S-MAC then card and host cryptograms`, () => {
    const ctx = new Uint8Array([...HOST, ...CARD]);
    const mac = unhex(t.mac);
    const sk = deriveSessionKeys(mac, mac, ctx);
    assert.equal(sk.sMac.length, t.bits / 8);
    assert.equal(hex(cryptogram(sk.sMac, DERIVE.CARD_CRYPTOGRAM, ctx)), t.card);
    assert.equal(hex(cryptogram(sk.sMac, DERIVE.HOST_CRYPTOGRAM, ctx)), t.host);
  });
}

test("KDF output depends on constant, context and L (L is part of the input, not a truncation)", () => {
  const key = unhex("404142434445464748494A4B4C4D4E4F");
  const ctx = unhex("0102030405060708");
  const a = kdf(key, 0x04, ctx, 128);
  assert.notEqual(hex(kdf(key, 0x06, ctx, 128)), hex(a));
  assert.notEqual(hex(kdf(key, 0x04, unhex("0102030405060709"), 128)), hex(a));
  assert.notEqual(hex(kdf(key, 0x04, ctx, 64)), hex(a.subarray(0, 8)));
  const long = kdf(key, 0x04, ctx, 256);
  assert.equal(long.length, 32);
  assert.notEqual(hex(long.subarray(0, 16)), hex(long.subarray(16))); // counter i differs per block
});

test("KDF refuses bad lengths and constants", () => {
  const key = new Uint8Array(16);
  assert.throws(() => kdf(key, 0x04, new Uint8Array(0), 0), RangeError);
  assert.throws(() => kdf(key, 0x04, new Uint8Array(0), 12), RangeError);
  assert.throws(() => kdf(key, 0x100, new Uint8Array(0), 128), RangeError);
});
