import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeCommand, hex, parseResponse, unhex } from "../protocol/apdu.ts";
import { CardRuntime } from "./runtime.ts";
import type { ScpKeySet } from "./state.ts";
import { findTlv, parseTlvs, tlv } from "../protocol/tlv.ts";
import { cardLifecycleOf, getStatusCommand, ISD_AID, isd, keyOriginCommand } from "./isd.ts";
import { scp03Factory } from "./scp03/card-channel.ts";
import { checkPutKeyResponse, keyCheckValue, putKeyCommand, Scp03Client, Scp03Error } from "../protocol/scp03/host.ts";
import { isAttackSignal } from "./tamper.ts";

function keySet(len: number, kvn = 0x30): ScpKeySet {
  return { kvn, enc: randomBytes(len).toString("hex"), mac: randomBytes(len).toString("hex"), dek: randomBytes(len).toString("hex") };
}

function newCard(keyLen = 16) {
  const dir = mkdtempSync(join(tmpdir(), "cardkms-isd-"));
  const keys = keySet(keyLen);
  const card = CardRuntime.create(join(dir, "card.img"), randomBytes(32), { applets: [isd], secureChannel: scp03Factory, keySet: keys, capacity: 4096 });
  const transmit = (apdu: Uint8Array): Uint8Array => card.transmit(apdu);
  const plain = (apdu: string) => parseResponse(card.transmit(unhex(apdu)));
  const cleanup = (): void => {
    card.close();
    rmSync(dir, { recursive: true, force: true });
  };
  return { card, keys, transmit, plain, cleanup };
}

const getData = (tag: number) => ({ cla: 0x80, ins: 0xca, p1: tag >> 8, p2: tag & 0xff, le: 256 });

test("SELECT answers the FCI with the ISD AID; unknown INS 6D00", () => {
  const { plain, cleanup } = newCard();
  try {
    const r = plain("00A4040008A000000151000000");
    assert.equal(r.sw, 0x9000);
    assert.equal(hex(findTlv(findTlv(r.data, 0x6f)!, 0x84)!), hex(ISD_AID));
    assert.equal(plain("80EE000000").sw, 0x6d00);
  } finally {
    cleanup();
  }
});

test("GET DATA answers the public data objects", () => {
  const { card, plain, cleanup } = newCard();
  try {
    plain("8050000008" + "00".repeat(8) + "00"); // moves the sequence counter
    const cin = plain("80CA004500");
    assert.equal(cin.sw, 0x9000);
    assert.equal(hex(findTlv(cin.data, 0x45)!), card.state.cardId.toUpperCase());
    const crd = plain("80CA006600");
    assert.ok(hex(crd.data).includes("2A864886FC6B040370"), "card recognition data names SCP03 i=70");
    const kit = findTlv(plain("80CA00E000").data, 0xe0)!;
    assert.deepEqual(
      parseTlvs(kit).map((t) => hex(t.value)),
      ["01308810", "02308810", "03308810"],
    );
    assert.equal(hex(findTlv(plain("80CA00C100").data, 0xc1)!), "000001");
    assert.equal(findTlv(plain("80CA9F7F00").data, 0x9f7f)!.length, 42);
    // tlv.ts skips FF as inter-object padding, so it cannot parse tag FF21 itself: take the header apart here
    const ff21 = plain("80CAFF2100").data;
    assert.deepEqual([ff21[0], ff21[1], ff21[2]], [0xff, 0x21, ff21.length - 3]);
    const res = ff21.subarray(3);
    assert.equal(findTlv(res, 0x81)!.length, 2);
    assert.equal(Buffer.from(findTlv(res, 0x82)!).readUInt32BE(0), 4096);
    const pub = findTlv(plain("80CADF2000").data, 0xdf20)!;
    assert.deepEqual(
      [0x80, 0x81, 0x82, 0x84].map((t) => findTlv(pub, t)![0]),
      [0x01, 3, 3, 9], // OP_READY, PIN and PUK tries, SCP tries left after one open INITIALIZE UPDATE
    );
    assert.equal(plain("80CA00AA00").sw, 0x6a88);
    assert.equal(plain("80CA0045020000").sw, 0x6700);
  } finally {
    cleanup();
  }
});

test("the secret ID is only given out under R-ENCRYPTION", async () => {
  const { card, keys, transmit, plain, cleanup } = newCard();
  try {
    assert.equal(plain("80CADF2100").sw, 0x6982);
    for (const level of [0x01, 0x03, 0x13]) {
      const c = await Scp03Client.open(transmit, keys, { level });
      assert.equal((await c.send(getData(0xdf21))).sw, 0x6982, `level ${level}`);
    }
    const wire: Uint8Array[] = [];
    const c = await Scp03Client.open(
      (a) => {
        const r = transmit(a);
        wire.push(r);
        return r;
      },
      keys,
      { level: 0x33 },
    );
    const r = await c.send(getData(0xdf21));
    assert.equal(r.sw, 0x9000);
    assert.equal(hex(findTlv(r.data, 0xdf21)!), card.state.secretId.toUpperCase());
    const secret = Buffer.from(card.state.secretId, "hex");
    assert.ok(!wire.some((w) => Buffer.from(w).includes(secret)), "the secret ID never crosses the wire in clear");
  } finally {
    cleanup();
  }
});

test("PUT KEY replaces the key set; the old keys no longer open a session", async () => {
  const { card, keys, transmit, cleanup } = newCard();
  try {
    const next = { kvn: 0x31, enc: randomBytes(32), mac: randomBytes(32), dek: randomBytes(32) };
    // not without C-DECRYPTION
    const weak = await Scp03Client.open(transmit, keys, { level: 0x11 });
    assert.equal((await weak.send(putKeyCommand(keys.dek, next, 0x30))).sw, 0x6982);
    assert.equal(parseResponse(transmit(encodeCommand(putKeyCommand(keys.dek, next, 0x30)))).sw, 0x6982);

    const c = await Scp03Client.open(transmit, keys, { level: 0x03 });
    const r = await c.send(putKeyCommand(keys.dek, next, 0x30));
    assert.equal(r.sw, 0x9000);
    checkPutKeyResponse(r.data, next);
    assert.deepEqual(
      card.state.keySets.map((k) => k.kvn),
      [0x31],
    );
    assert.equal(card.state.keySets[0].enc, next.enc.toString("hex"));

    await assert.rejects(Scp03Client.open(transmit, keys, { level: 0x01 }), (e: unknown) => e instanceof Scp03Error && e.sw === 0x6a88);
    await assert.rejects(Scp03Client.open(transmit, { ...keys, kvn: 0 }, { level: 0x01 }), /wrong card cryptogram/);
    const fresh = await Scp03Client.open(transmit, next, { level: 0x33 });
    const kit = findTlv((await fresh.send(getData(0x00e0))).data, 0xe0)!;
    assert.equal(hex(kit), "C00401318820C00402318820C00403318820");
  } finally {
    cleanup();
  }
});

test("PUT KEY adds a key set with P1 00, and checks what it is given", async () => {
  const { card, keys, transmit, cleanup } = newCard(24);
  try {
    const c = await Scp03Client.open(transmit, keys, { level: 0x33 });
    const added = { kvn: 0x40, enc: randomBytes(24), mac: randomBytes(24), dek: randomBytes(24) };
    const r = await c.send(putKeyCommand(keys.dek, added));
    assert.equal(r.sw, 0x9000);
    checkPutKeyResponse(r.data, added);
    assert.deepEqual(
      card.state.keySets.map((k) => k.kvn),
      [0x30, 0x40],
    );
    // KVN already in use, a key set that does not exist, a bad KCV, wrong P2: nothing changes
    assert.equal((await c.send(putKeyCommand(keys.dek, added))).sw, 0x6a80);
    assert.equal((await c.send(putKeyCommand(keys.dek, { ...added, kvn: 0x41 }, 0x55))).sw, 0x6a88);
    const bad = putKeyCommand(keys.dek, { ...added, kvn: 0x42 });
    bad.data![bad.data!.length - 1] ^= 1;
    assert.equal((await c.send(bad)).sw, 0x6a80);
    // under the wrong DEK the keys decrypt to garbage and their KCVs do not match
    assert.equal((await c.send(putKeyCommand(added.dek, { ...added, kvn: 0x43 }))).sw, 0x6a80);
    assert.equal((await c.send({ ...putKeyCommand(keys.dek, { ...added, kvn: 0x44 }), p2: 0x01 })).sw, 0x6a86);
    assert.equal(card.state.keySets.length, 2);
    const second = await Scp03Client.open(transmit, added, { level: 0x01 });
    assert.ok(second.session.open);
    assert.equal(keyCheckValue(added.enc).length, 3);
  } finally {
    cleanup();
  }
});

test("STORE DATA key set origin binds a key set to its predecessor card, only in a session with C-MAC, once", async () => {
  const { card, keys, transmit, plain, cleanup } = newCard();
  try {
    const predecessor = "a1a2a3a4a5a6a7a8";
    const c = await Scp03Client.open(transmit, keys, { level: 0x33 });
    const sk1 = { kvn: 0x01, enc: randomBytes(16), mac: randomBytes(16), dek: randomBytes(16) };
    assert.equal((await c.send(putKeyCommand(keys.dek, sk1))).sw, 0x9000);
    const bind = keyOriginCommand(1, predecessor);
    // Outside a session: refused, nothing bound (and the same bytes without the session's C-MAC do not count).
    assert.equal(plain(hex(encodeCommand(bind))).sw, 0x6982);
    c.close();
    const plainSession = await Scp03Client.open(transmit, keys, { level: 0x00 });
    assert.equal((await plainSession.send(bind)).sw, 0x6982, "an authenticated session without C-MAC");
    plainSession.close();
    assert.equal(card.state.keySets.find((k) => k.kvn === 1)!.origin, undefined);

    const s = await Scp03Client.open(transmit, keys, { level: 0x01 });
    assert.equal((await s.send({ ...bind, p1: 0x80 })).sw, 0x6a86, "P1 must say BER-TLV");
    assert.equal((await s.send({ ...bind, data: tlv(0xdf22, tlv(0x83, Uint8Array.of(1))) })).sw, 0x6a80, "no card ID");
    assert.equal((await s.send({ ...bind, data: tlv(0xdf23, bind.data!.subarray(3)) })).sw, 0x6a80, "another tag");
    assert.equal((await s.send(keyOriginCommand(0x11, predecessor))).sw, 0x6a88, "no such key set");
    assert.equal((await s.send(keyOriginCommand(1, card.state.cardId))).sw, 0x6a80, "this card is not its own predecessor");
    assert.equal((await s.send(bind)).sw, 0x9000);
    assert.equal(card.state.keySets.find((k) => k.kvn === 1)!.origin, predecessor);
    assert.equal((await s.send(bind)).sw, 0x9000, "the same binding again changes nothing");
    assert.equal((await s.send(keyOriginCommand(1, "b1b2b3b4b5b6b7b8"))).sw, 0x6985, "set once");
    assert.equal((await s.send(keyOriginCommand(0x30, predecessor))).sw, 0x6985, "the card keeps a key set of its own");
    // Public: which predecessor each bound key set is for.
    const origins = parseTlvs(plain("80CADF2200").data);
    assert.deepEqual(
      origins.map((o) => [hex(findTlv(o.value, 0x83)!), hex(findTlv(o.value, 0x45)!)]),
      [["01", predecessor.toUpperCase()]],
    );
    // The predecessor's Sk1 still opens a session: SCP03 uses the static keys, not the card ID.
    s.close();
    assert.ok((await Scp03Client.open(transmit, sk1, { level: 0x01 })).session.open);
  } finally {
    cleanup();
  }
});

test("SET STATUS moves OP_READY to SECURED, only in a session, only forward", async () => {
  const { card, keys, transmit, plain, cleanup } = newCard();
  try {
    assert.equal(plain("80F0800F00").sw, 0x6982);
    const c = await Scp03Client.open(transmit, keys, { level: 0x01 });
    assert.equal((await c.send({ cla: 0x80, ins: 0xf0, p1: 0x80, p2: 0x07 })).sw, 0x6a86);
    assert.equal((await c.send({ cla: 0x80, ins: 0xf0, p1: 0x80, p2: 0x0f })).sw, 0x9000);
    assert.equal(card.state.lifecycle, "SECURED");
    assert.equal(findTlv(findTlv(plain("80CADF2000").data, 0xdf20)!, 0x80)![0], 0x0f);
    assert.equal((await c.send({ cla: 0x80, ins: 0xf0, p1: 0x80, p2: 0x0f })).sw, 0x6985);
  } finally {
    cleanup();
  }
});

// Issue 15 §6: the host confirms SET STATUS with GET STATUS under R-MAC (card-scripts.ts); before, the ISD had no
// GET STATUS (6D00) and a 6985 without a MAC was all the host had.
test("GET STATUS (GP §11.4) reports the card's life cycle, only in a session, and under R-MAC the host can trust it", async () => {
  const { card, keys, transmit, plain, cleanup } = newCard();
  try {
    assert.equal(plain("80F28002024F00").sw, 0x6982, "not outside a secure channel");
    const c = await Scp03Client.open(transmit, keys, { level: 0x33 });
    const status = async (p1: number, p2: number, data: Uint8Array) => c.send({ cla: 0x80, ins: 0xf2, p1, p2, data, le: 256 });
    const r = await c.send(getStatusCommand());
    assert.equal(r.sw, 0x9000);
    const entry = findTlv(r.data, 0xe3)!;
    assert.equal(hex(findTlv(entry, 0x4f)!), hex(ISD_AID));
    assert.deepEqual([...findTlv(entry, 0x9f70)!], [0x01], "OP_READY");
    assert.equal(findTlv(entry, 0xc5)!.length, 3);
    assert.equal(cardLifecycleOf(r.data), "OP_READY");
    const legacy = await status(0x80, 0x00, tlv(0x4f, ISD_AID));
    assert.equal(hex(legacy.data), hex(Uint8Array.of(8, ...ISD_AID, 0x01, 0x9e)), "P2 00: AID length, AID, life cycle, privileges");
    assert.equal((await status(0x80, 0x02, tlv(0x4f, ISD_AID.subarray(0, 5)))).sw, 0x9000, "an AID prefix matches");
    assert.equal((await status(0x80, 0x02, tlv(0x4f, unhex("A0000000030000")))).sw, 0x6a88, "another AID");
    assert.equal((await status(0x40, 0x02, tlv(0x4f, new Uint8Array(0)))).sw, 0x6a86, "applications: not reported by the ISD");
    assert.equal((await status(0x80, 0x03, tlv(0x4f, new Uint8Array(0)))).sw, 0x6a86, "get next: there is one entry");
    assert.equal((await status(0x80, 0x02, new Uint8Array(0))).sw, 0x6a80, "no search qualifier");
    assert.equal((await status(0x80, 0x02, tlv(0x5c, new Uint8Array(0)))).sw, 0x6a80, "another tag");
    assert.equal((await status(0x80, 0x02, unhex("4F05A000"))).sw, 0x6a80, "malformed TLV");
    assert.equal((await c.send({ cla: 0x80, ins: 0xf0, p1: 0x80, p2: 0x0f })).sw, 0x9000);
    assert.equal(cardLifecycleOf((await c.send(getStatusCommand())).data), "SECURED");
    assert.equal(card.state.lifecycle, "SECURED");
  } finally {
    cleanup();
  }
});

for (const [what, apdu] of [
  ["GET DATA 00E1", "80CA00E100"],
  ["GET DATA DF7F", "00CADF7F00"],
  ["GET DATA (odd INS) naming DF7F", "00CB3FFF055C03DF7F0000"],
] as const) {
  test(`an attack signal (${what}) zeroizes the card`, () => {
    const { card, plain, cleanup } = newCard();
    try {
      assert.equal(plain(apdu).sw, 0x6982);
      assert.equal(card.state.lifecycle, "TERMINATED");
      assert.equal(card.state.keySets.length, 0);
      assert.equal(card.state.terminatedReason, "attempt to read the card key");
      assert.equal(plain("80CA004500").sw, 0x6285);
    } finally {
      cleanup();
    }
  });
}

test("an attack signal inside a secure channel session zeroizes too", async () => {
  const { card, keys, transmit, cleanup } = newCard();
  try {
    const c = await Scp03Client.open(transmit, keys, { level: 0x33 });
    assert.equal((await c.send(getData(0xdf7f))).sw, 0x6982);
    assert.equal(card.state.keySets.length, 0);
  } finally {
    cleanup();
  }
});

test("ordinary commands are not attack signals", () => {
  const cmd = (s: string) => {
    const b = unhex(s);
    return { ins: b[1], p1: b[2], p2: b[3], data: b.subarray(5) };
  };
  assert.equal(isAttackSignal(cmd("80CA004500")), false);
  assert.equal(isAttackSignal(cmd("00CB3FFF055C035FC105")), false); // PIV GET DATA of the 9A certificate
  assert.equal(isAttackSignal(cmd("80CAE10000")), false);
  assert.equal(isAttackSignal(cmd("80CA00E100")), true);
  assert.equal(isAttackSignal(cmd("00CB3FFF045C0200E1")), true);
});
