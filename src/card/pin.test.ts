// PIN and PUK reference data under a KDF (issue 17 §6): scrypt over SHA-256(salt || value) at a cost kept in the
// image; images made before it are stretched on load, without the PIN, and the right PIN and PUK still verify.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes, scryptSync } from "node:crypto";
import { join } from "node:path";
import { encodeCommand } from "../protocol/apdu.ts";
import { createCard, openCard } from "./card.ts";
import { Eeprom } from "./eeprom.ts";
import { CHEAPEST_PIN_KDF, DEFAULT_PIN_KDF } from "./pin.ts";
import type { CardRuntime } from "./runtime.ts";
import type { CardState, PinState } from "./state.ts";
import { PIV_AID, pinBlock } from "../protocol/piv/client.ts";
import { swOf, tempDir } from "../../test/helpers.ts";

const dir = tempDir("cardkms-pin-");
const KEY = randomBytes(32);
const PIN = "123456";
const PUK = "12345678";
let n = 0;
const newPath = () => join(dir, `c${n++}.card`);

const sha256 = (salt: string, value: string) => createHash("sha256").update(Buffer.from(salt, "hex")).update(value).digest();
/** The KDF restated from its definition: scrypt(SHA-256(salt || value), salt, N = 2^logN, r, p), 32 bytes. */
const stretched = (input: Buffer, p: PinState) => scryptSync(input, Buffer.from(p.salt, "hex"), 32, { N: 2 ** p.kdf!.logN, r: p.kdf!.r, p: p.kdf!.p, maxmem: 64 << 20 }).toString("hex");

/** The image as stored, read past the card (what someone holding the image file and its key sees). */
function readImage(path: string): CardState {
  const { eeprom, image } = Eeprom.open(path, KEY);
  eeprom.close();
  return JSON.parse(Buffer.from(image).toString("utf8")) as CardState;
}

/** Changes the stored image behind the card's back (a new generation, as a commit would write it). */
function rewriteImage(path: string, change: (s: CardState) => void): void {
  const { eeprom, image } = Eeprom.open(path, KEY);
  const s = JSON.parse(Buffer.from(image).toString("utf8")) as CardState;
  change(s);
  eeprom.commit(Buffer.from(JSON.stringify(s), "utf8"));
  eeprom.close();
}

const selectPiv = (c: CardRuntime) => swOf(c.transmit(encodeCommand({ cla: 0, ins: 0xa4, p1: 4, p2: 0, data: PIV_AID, le: 256 })));
const verify = (c: CardRuntime, pin: string) => swOf(c.transmit(encodeCommand({ cla: 0, ins: 0x20, p1: 0, p2: 0x80, data: pinBlock(pin) })));
const resetRetryCounter = (c: CardRuntime, puk: string, pin: string) =>
  swOf(c.transmit(encodeCommand({ cla: 0, ins: 0x2c, p1: 0, p2: 0x80, data: new Uint8Array(Buffer.concat([pinBlock(puk), pinBlock(pin)])) })));
const hex = (sw: number) => sw.toString(16).toUpperCase();

test("PIN and PUK are kept as scrypt(SHA-256(salt || value), salt) at the production cost, stored in the image", (t) => {
  const path = newPath();
  const card = createCard(path, KEY);
  try {
    for (const [ref, value] of [
      ["pin", PIN],
      ["puk", PUK],
    ] as const) {
      const p = card.state[ref];
      assert.deepEqual(p.kdf, { alg: "scrypt", logN: 13, r: 8, p: 1 }, `${ref}: the documented production cost`);
      assert.deepEqual(p.kdf, DEFAULT_PIN_KDF);
      assert.equal(p.hash, stretched(sha256(p.salt, value), p), `${ref}: the hash is the KDF's`);
      assert.notEqual(p.hash, sha256(p.salt, value).toString("hex"), `${ref}: not the bare salted SHA-256`);
    }
    assert.notEqual(card.state.pin.salt, card.state.puk.salt);
    assert.deepEqual(readImage(path).pin, card.state.pin, "the cost is in the stored image, beside the hash");

    assert.equal(selectPiv(card), 0x9000);
    assert.equal(hex(verify(card, "000000")), "63C2");
    // A PIN verify at the production cost (one scrypt and two commits). Its time is reported, not asserted: a busy
    // machine must not fail a test; `npm run bench card` measures it (pin_verify_kdf_default).
    const times: number[] = [];
    for (let i = 0; i < 9; i++) {
      const t0 = process.hrtime.bigint();
      assert.equal(verify(card, PIN), 0x9000);
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    times.sort((a, b) => a - b);
    t.diagnostic(`VERIFY (right PIN) at scrypt N=2^13, r=8, p=1: median ${times[4].toFixed(1)} ms, min ${times[0].toFixed(1)} ms, max ${times[8].toFixed(1)} ms`);
  } finally {
    card.close();
  }
});

test("a new PIN (CHANGE REFERENCE DATA, RESET RETRY COUNTER) gets a fresh salt and the image's cost", () => {
  const path = newPath();
  const card = createCard(path, KEY, { pinKdf: CHEAPEST_PIN_KDF });
  try {
    const before = card.state.pin;
    assert.equal(selectPiv(card), 0x9000);
    assert.equal(resetRetryCounter(card, PUK, "654321"), 0x9000);
    const after = card.state.pin;
    assert.notEqual(after.salt, before.salt);
    assert.deepEqual(after.kdf, CHEAPEST_PIN_KDF);
    assert.equal(after.hash, stretched(sha256(after.salt, "654321"), after));
    assert.equal(verify(card, "654321"), 0x9000);
  } finally {
    card.close();
  }
});

test("an image made before the KDF is stretched on load, without the PIN: the right PIN and PUK still verify", () => {
  const path = newPath();
  createCard(path, KEY).close();
  // The image as cards made before the KDF stored it: SHA-256(salt || value), no cost, no state counter.
  const legacy: Record<"pin" | "puk", string> = { pin: "", puk: "" };
  rewriteImage(path, (s) => {
    for (const [ref, value] of [
      ["pin", PIN],
      ["puk", PUK],
    ] as const) {
      const { kdf: _kdf, ...rest } = s[ref];
      legacy[ref] = sha256(rest.salt, value).toString("hex");
      s[ref] = { ...rest, hash: legacy[ref] };
    }
    delete s.stateCounter;
    s.scpCounter = 41;
  });
  assert.equal(readImage(path).pin.kdf, undefined, "the test image is a pre-KDF image");

  let card = openCard(path, KEY);
  try {
    for (const ref of ["pin", "puk"] as const) {
      const p = card.state[ref];
      assert.deepEqual(p.kdf, DEFAULT_PIN_KDF, `${ref}: upgraded to the production cost`);
      assert.equal(p.hash, stretched(Buffer.from(legacy[ref], "hex"), p), `${ref}: the old digest, stretched`);
    }
    assert.equal(card.state.stateCounter, 42, "the state counter starts from the SCP03 sequence counter (+1: the upgrade's commit)");
  } finally {
    card.close();
  }
  // Committed: the image holds no fast hash any more, and the next power-up does not upgrade again.
  const stored = JSON.stringify(readImage(path));
  for (const h of Object.values(legacy)) assert.ok(!stored.includes(h), "the old SHA-256 is gone from the image");
  card = openCard(path, KEY);
  try {
    assert.equal(card.state.stateCounter, 42, "no second upgrade");
    assert.equal(selectPiv(card), 0x9000);
    assert.equal(hex(verify(card, "999999")), "63C2");
    assert.equal(verify(card, PIN), 0x9000, "the right PIN verifies after the upgrade");
    assert.equal(resetRetryCounter(card, PUK, "111111"), 0x9000, "so does the right PUK");
    assert.equal(verify(card, "111111"), 0x9000);
  } finally {
    card.close();
  }
});

test("an image whose stored cost is out of range answers 6984 and spends no try; a card is not made with one", () => {
  const path = newPath();
  createCard(path, KEY).close();
  rewriteImage(path, (s) => {
    s.pin.kdf = { ...s.pin.kdf!, logN: 40 };
  });
  const card = openCard(path, KEY);
  try {
    assert.equal(selectPiv(card), 0x9000);
    assert.equal(hex(verify(card, PIN)), "6984");
    assert.equal(card.state.pin.tries, 3, "no try spent");
    assert.equal(resetRetryCounter(card, PUK, "222222"), 0x9000, "the PUK sets a new PIN at the default cost");
    assert.deepEqual(card.state.pin.kdf, DEFAULT_PIN_KDF);
    assert.equal(verify(card, "222222"), 0x9000);
  } finally {
    card.close();
  }
  for (const bad of [{ logN: 9 }, { logN: 21 }, { r: 0 }, { p: 17 }, { logN: 20, r: 32 }]) {
    assert.throws(() => createCard(newPath(), KEY, { pinKdf: { ...DEFAULT_PIN_KDF, ...bad } }), RangeError, JSON.stringify(bad));
  }
});
