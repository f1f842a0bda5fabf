// Malformed APDUs get the right ISO 7816-4 / GlobalPlatform / SP 800-73-4 status word, the card stays usable, and
// nothing escapes the card as an exception (6F00). First a table, one test per malformation class; then the fuzzer
// (test/fuzz-corpus.ts): FUZZ_COUNT APDUs (default 100,000) from seed FUZZ_SEED.
//

import { test, before } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { createCard, TRANSPORT_KEY_SET } from "../src/card/card.ts";
import { sealPackage } from "../src/protocol/package.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import { Scp03HostSession, putKeyCommand } from "../src/protocol/scp03/host.ts";
import { concat, tlv } from "../src/protocol/tlv.ts";
import {
  ALG,
  apdu,
  countFromEnv,
  describeFindings,
  discardCard,
  freshCard,
  Fuzzer,
  getDataPiv,
  hx,
  ISD_AID,
  PIV_AID,
  pinBlock,
  plausibleSw,
  prepareImage,
  runFuzz,
  seedFromEnv,
  selectApdu,
  signApdu,
  swOf,
  uh,
  type FuzzImage,
} from "./fuzz-corpus.ts";
import { tempDir } from "./helpers.ts";

const dir = tempDir("cardkms-fuzz-");
let img: FuzzImage;

before(async () => {
  img = await prepareImage(join(dir, "image"));
});

/** A fresh copy of the prepared card, discarded after `fn`. */
function withCard(fn: (card: CardRuntime, sw: (a: Uint8Array | string) => number) => void): void {
  const card = freshCard(img);
  try {
    fn(card, (a) => {
      const r = card.transmit(typeof a === "string" ? uh(a) : a);
      assert.ok(r.length >= 2, "response has a status word");
      return swOf(r);
    });
  } finally {
    discardCard(card);
  }
}

const S = (sw: number): string => sw.toString(16).toUpperCase().padStart(4, "0");
const expectSw = (got: number, want: number, what: string): void => assert.equal(S(got), S(want), what);

/** The card is still usable: warm reset, SELECT PIV, 9E signature. */
function assertUsable(card: CardRuntime): void {
  card.reset();
  expectSw(swOf(card.transmit(selectApdu(PIV_AID))), 0x9000, "SELECT PIV after the error");
  expectSw(swOf(card.transmit(signApdu(0x9e, ALG.P256, new Uint8Array(32).fill(7)))), 0x9000, "9E signs after the error");
}

/** SELECTs `aid` and opens an authenticated SCP03 session with the card key Sk. */
function openSession(card: CardRuntime, aid: Uint8Array, level = 0x33): Scp03HostSession {
  expectSw(swOf(card.transmit(selectApdu(aid))), 0x9000, "SELECT");
  const host = new Scp03HostSession(img.sk, { level, kvn: img.sk.kvn });
  const ea = host.authenticate(card.transmit(host.initializeUpdate()));
  expectSw(swOf(card.transmit(ea)), 0x9000, "EXTERNAL AUTHENTICATE");
  return host;
}

const PIV_SELECT = hx(selectApdu(PIV_AID));

// --- framing (runtime, ISO 7816-4 §5.1) ------------------------------------------------------------------------------

test("wrong short Lc -> 6700", () => {
  withCard((card, sw) => {
    expectSw(sw("00A4040005A0000003"), 0x6700, "Lc 5, 3 bytes follow");
    expectSw(sw("00A4040003A000000308000010000100"), 0x6700, "Lc 3, 11 bytes follow");
    expectSw(sw("00CB3FFF055C035FC1020000"), 0x6700, "Lc 5 with two trailing bytes");
    assertUsable(card);
  });
});

test("wrong extended Lc -> 6700 (Lc longer, shorter, zero; truncated length field)", () => {
  withCard((card, sw) => {
    expectSw(sw("00CB3FFF0000065C035FC102"), 0x6700, "extended Lc 6, 5 bytes follow");
    expectSw(sw("00CB3FFF0000045C035FC102"), 0x6700, "extended Lc 4, 5 bytes follow");
    expectSw(sw("00CB3FFF0000000000"), 0x6700, "extended Lc of zero");
    expectSw(sw("00CB3FFF0000"), 0x6700, "extended length field cut after two bytes");
    expectSw(sw("00CB3FFF0000055C035FC10200"), 0x6700, "extended Lc with a short Le");
    assertUsable(card);
  });
});

test("truncated header -> 6700", () => {
  withCard((card, sw) => {
    expectSw(sw(""), 0x6700, "empty APDU");
    expectSw(sw("00"), 0x6700, "CLA only");
    expectSw(sw("00A404"), 0x6700, "three header bytes");
    assertUsable(card);
  });
});

test("Le where command data is expected: CHANGE REFERENCE DATA / RESET RETRY COUNTER -> 6700, GENERAL AUTHENTICATE / GET DATA / PUT DATA -> 6A80 (SP 800-73-4)", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    expectSw(sw("0024008010"), 0x6700, "CHANGE REFERENCE DATA, Le 16 and no data");
    expectSw(sw("002C008010"), 0x6700, "RESET RETRY COUNTER, Le 16 and no data");
    // SP 800-73-4 Part 2 §3.1.2, §3.2.4, §3.3.1 list 6A80 (not 6700) for a missing or malformed data field.
    expectSw(sw("0087119E00"), 0x6a80, "GENERAL AUTHENTICATE without data");
    expectSw(sw("00CB3FFF00"), 0x6a80, "GET DATA without tag list");
    expectSw(sw("00DB3FFF00"), 0x6a80, "PUT DATA without data");
    expectSw(sw("0020008008"), 0x63c3, "VERIFY with Le and no PIN: a PIN status query (SP 800-73-4 §3.2.1), no try spent");
    assert.equal(card.state.pin.tries, 3);
    assertUsable(card);
  });
});

// --- data field (BER-TLV) ------------------------------------------------------------------------------------------------

test("bad TLV in GET DATA -> 6A80", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    expectSw(sw("00CB3FFF035C055F00"), 0x6a80, "5C length runs past the data");
    expectSw(sw("00CB3FFF045C845FC100"), 0x6a80, "length of length 4");
    expectSw(sw("00CB3FFF025C8000"), 0x6a80, "indefinite length");
    expectSw(sw("00CB3FFF055D035FC10200"), 0x6a80, "not a 5C tag list");
    expectSw(sw("00CB3FFF0A5C035FC1025C035FC10700"), 0x6a80, "two tags in one GET DATA");
    expectSw(sw("00CB3FFF065C045FC1020100"), 0x6a80, "tag of 4 bytes");
    assertUsable(card);
  });
});

test("bad TLV in PUT DATA -> 6A80 (checked before the security status)", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    expectSw(sw("00DB3FFF065C035FC10253"), 0x6a80, "53 without length");
    expectSw(sw("00DB3FFF075C035FC1025305"), 0x6a80, "53 length runs past the data");
    expectSw(sw("00DB3FFF055C035FC102"), 0x6a80, "no 53 value");
    assertUsable(card);
  });
});

test("bad TLV in GENERAL AUTHENTICATE -> 6A80", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    expectSw(sw("0087119E047C058200"), 0x6a80, "7C length runs past the data");
    expectSw(sw("0087119E067C04820081FF"), 0x6a80, "81 length runs past the template");
    expectSw(sw("0087119E047C028201"), 0x6a80, "82 must be empty");
    expectSw(sw("0087119E027C00"), 0x6a80, "empty template");
    expectSw(sw(hx(apdu(0, 0x87, 0x11, 0x9e, tlv(0x7d, tlv(0x82), tlv(0x81, new Uint8Array(32))), 256))), 0x6a80, "7D instead of 7C");
    expectSw(sw(hx(apdu(0, 0x87, 0x11, 0x9e, tlv(0x7c, tlv(0x82), tlv(0x81, new Uint8Array(32)), tlv(0x85, new Uint8Array(65))), 256))), 0x6a80, "both 81 and 85");
    expectSw(sw(hx(apdu(0, 0x87, 0x11, 0x9e, tlv(0x7c, tlv(0x82), tlv(0x85, new Uint8Array(65).fill(4))), 256))), 0x6a80, "85 point off the curve");
    assertUsable(card);
  });
});

test("bad TLV in GENERATE ASYMMETRIC KEY PAIR (inside SCP03) -> 6A80; without SCP03 -> 6982", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    expectSw(sw(hx(apdu(0, 0x47, 0, 0x9d, tlv(0xac, tlv(0x80, Uint8Array.of(0x11))), 256))), 0x6982, "GENERATE in plain");
    const host = openSession(card, PIV_AID);
    const send = (data: Uint8Array): number => host.unwrap(card.transmit(host.wrap({ cla: 0, ins: 0x47, p1: 0, p2: 0x9d, data, le: 256 }))).sw;
    expectSw(send(uh("AC05800111")), 0x6a80, "AC length runs past the data");
    expectSw(send(uh("AB03800111")), 0x6a80, "not an AC template");
    expectSw(send(uh("AC03800199")), 0x6a80, "unknown algorithm 99");
    expectSw(send(uh("AC0480021111")), 0x6a80, "algorithm of two bytes");
    assert.ok(host.open, "TLV errors do not end the session");
    assertUsable(card);
  });
});

// --- class and instruction -----------------------------------------------------------------------------------------------

test("unknown INS on the ISD and on PIV -> 6D00", () => {
  withCard((card, sw) => {
    sw(hx(selectApdu(ISD_AID)));
    expectSw(sw("80EE000000"), 0x6d00, "ISD, INS EE");
    expectSw(sw("8000000000"), 0x6d00, "ISD, INS 00");
    sw(PIV_SELECT);
    expectSw(sw("00EE000000"), 0x6d00, "PIV, INS EE");
    expectSw(sw("80E2000000"), 0x6d00, "PIV, proprietary INS E2");
    assertUsable(card);
  });
});

test("invalid CLA FF -> 6E00; interindustry PIV command with a proprietary class -> 6E00; GP command with class 00 -> 6E00", () => {
  withCard((card, sw) => {
    expectSw(sw("FFA40400" + PIV_SELECT.slice(8)), 0x6e00, "SELECT with CLA FF");
    expectSw(sw("FFCA0045"), 0x6e00, "case 1 with CLA FF");
    sw(PIV_SELECT);
    expectSw(sw("80CB3FFF055C035FC10200"), 0x6e00, "GET DATA with CLA 80");
    sw(hx(selectApdu(ISD_AID)));
    expectSw(sw(apdu(0, 0xd8, 0, 0x81, uh("02"), 256)), 0x6e00, "PUT KEY with CLA 00");
    assertUsable(card);
  });
});

test("RFU class 20..3F -> 6E00 (ISO 7816-4 §5.4.1: 001x xxxx is reserved)", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    expectSw(sw("20CB3FFF055C035FC10200"), 0x6e00, "GET DATA with CLA 20");
    assertUsable(card);
  });
});

test("SELECT by file identifier (P1 00) -> 6A86: INS A4 is supported, the selection method is not", () => {
  withCard((card, sw) => {
    expectSw(sw("00A40000023F00"), 0x6a86, "SELECT MF by FID");
    assertUsable(card);
  });
});

test("SELECT with the chaining bit -> 6884 (ISO 7816-4 §5.1.1.1: chaining not supported for SELECT)", () => {
  withCard((card, sw) => {
    expectSw(sw("10A40400" + PIV_SELECT.slice(8)), 0x6884, "SELECT PIV, CLA 10");
    assertUsable(card);
  });
});

test("SELECT without data selects the ISD (GP Card Spec v2.3 §11.9.2.3)", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    expectSw(sw("00A4040000"), 0x9000, "SELECT with Lc and data omitted, Le 00");
    expectSw(sw("80CA004500"), 0x9000, "the ISD answers GET DATA 45");
    assertUsable(card);
  });
});

test("SELECT: unknown AID -> 6A82, AID shorter than 5 bytes -> 6A80, next occurrence -> 6A86", () => {
  withCard((card, sw) => {
    expectSw(sw("00A4040007A000000308FFFF00"), 0x6a82, "unknown AID");
    expectSw(sw("00A4040004A000000300"), 0x6a80, "4-byte AID");
    expectSw(sw("00A40402" + PIV_SELECT.slice(8)), 0x6a86, "next occurrence");
    assertUsable(card);
  });
});

// --- secure messaging (GP SCP03) ---------------------------------------------------------------------------------------

test("SM class without a session -> 6982", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    expectSw(sw("0CCB3FFF0D5C035FC102000000000000000000"), 0x6982, "PIV GET DATA with CLA 0C");
    expectSw(sw("04CB3FFF0D5C035FC102000000000000000000"), 0x6982, "PIV GET DATA with CLA 04");
    sw(hx(selectApdu(ISD_AID)));
    expectSw(sw(apdu(0x84, 0xca, 0x00, 0xe0, new Uint8Array(8), 256)), 0x6982, "ISD GET DATA with CLA 84");
    expectSw(sw("84F0800F080000000000000000"), 0x6982, "SET STATUS with CLA 84");
    assertUsable(card);
  });
});

test("wrong C-MAC inside an SCP03 session -> 6988, nothing executed, and the session is closed (next wrapped command 6982)", () => {
  withCard((card, sw) => {
    const host = openSession(card, PIV_AID);
    const before = JSON.stringify(card.state);
    const put = host.wrap({ cla: 0, ins: 0xdb, p1: 0x3f, p2: 0xff, data: concat(tlv(0x5c, uh("5FC109")), tlv(0x53, tlv(0x01, uh("0102")))) });
    const bad = Uint8Array.from(put);
    bad[bad.length - 1] ^= 0x01;
    const r = card.transmit(bad);
    assert.equal(hx(r), "6988", "an altered C-MAC is answered 6988 with no data");
    assert.equal(JSON.stringify(card.state), before, "the PUT DATA was not executed");
    expectSw(sw(host.wrap({ cla: 0, ins: 0xcb, p1: 0x3f, p2: 0xff, data: tlv(0x5c, uh("5FC102")), le: 256 })), 0x6982, "session closed");
    expectSw(sw(put), 0x6982, "the original command cannot be replayed either");
    expectSw(sw(getDataPiv("5FC102")), 0x9000, "plain commands still work");
    assertUsable(card);
  });
});

test("SCP03: altered P1, altered data, truncated MAC, replay -> 6988", () => {
  withCard((card) => {
    const cases: [string, (w: Uint8Array) => Uint8Array][] = [
      ["P1 changed", (w) => Uint8Array.from(w, (b, i) => (i === 2 ? b ^ 0x01 : b))],
      ["a data byte changed", (w) => Uint8Array.from(w, (b, i) => (i === 6 ? b ^ 0x80 : b))],
      ["chaining bit set", (w) => Uint8Array.from(w, (b, i) => (i === 0 ? b | 0x10 : b))],
      ["MAC cut to 4 bytes", (w) => concat(Uint8Array.of(w[0], w[1], w[2], w[3], w[4] - 4), w.subarray(5, w.length - 5), w.subarray(w.length - 1))],
    ];
    for (const [what, alter] of cases) {
      const host = openSession(card, ISD_AID);
      const w = host.wrap({ cla: 0x80, ins: 0xca, p1: 0xdf, p2: 0x20, data: uh("00"), le: 256 });
      assert.equal(hx(card.transmit(alter(w))), "6988", what);
    }
    const host = openSession(card, ISD_AID);
    const w = host.wrap({ cla: 0x80, ins: 0xca, p1: 0x00, p2: 0xe0, le: 256 });
    expectSw(host.unwrap(card.transmit(w)).sw, 0x9000, "first send");
    assert.equal(hx(card.transmit(w)), "6988", "replay of the same wrapped command");
    assertUsable(card);
  });
});

test("SCP03 handshake errors: unknown KVN 6A88, host challenge of 7 bytes 6700, EXTERNAL AUTHENTICATE alone 6985, wrong cryptogram 6300", () => {
  withCard((card, sw) => {
    sw(hx(selectApdu(ISD_AID)));
    expectSw(sw("805077000811223344556677880000"), 0x6700, "INITIALIZE UPDATE with Lc 8 and 10 bytes");
    expectSw(sw("80507700081122334455667788"), 0x6a88, "no key set 77");
    expectSw(sw("805000000711223344556677"), 0x6700, "7-byte host challenge");
    expectSw(sw("8482330010" + "00".repeat(16)), 0x6985, "EXTERNAL AUTHENTICATE without INITIALIZE UPDATE");
    expectSw(sw("8050010008112233445566778800"), 0x9000, "INITIALIZE UPDATE");
    expectSw(sw("8482330010" + "00".repeat(16)), 0x6300, "wrong host cryptogram");
    assertUsable(card);
  });
});

test("PUT KEY / SET STATUS without a session -> 6982", () => {
  withCard((card, sw) => {
    sw(hx(selectApdu(ISD_AID)));
    const pk = putKeyCommand(img.sk.dek, { kvn: 0x42, enc: img.sk.enc, mac: img.sk.mac, dek: img.sk.dek });
    expectSw(sw(apdu(pk.cla, pk.ins, pk.p1, pk.p2, pk.data, pk.le)), 0x6982, "PUT KEY in plain");
    expectSw(sw("80F0800F"), 0x6982, "SET STATUS in plain");
    assertUsable(card);
  });
});

// --- PIV security status ---------------------------------------------------------------------------------------------------

test("PIN blocked -> 6983 (also for the right PIN), PUK unblocks", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    const wrong = apdu(0, 0x20, 0, 0x80, pinBlock("999999"));
    expectSw(sw(wrong), 0x63c2, "first wrong PIN");
    expectSw(sw(wrong), 0x63c1, "second wrong PIN");
    expectSw(sw(wrong), 0x6983, "third wrong PIN blocks");
    expectSw(sw(apdu(0, 0x20, 0, 0x80, pinBlock(img.pin))), 0x6983, "right PIN, blocked");
    expectSw(sw("0020008000"), 0x6983, "status query, blocked");
    expectSw(sw(signApdu(0x9a, ALG.P256, new Uint8Array(32))), 0x6982, "9A needs the PIN");
    expectSw(sw(apdu(0, 0x2c, 0, 0x80, concat(pinBlock(img.puk), pinBlock(img.pin)))), 0x9000, "RESET RETRY COUNTER");
    expectSw(sw(apdu(0, 0x20, 0, 0x80, pinBlock(img.pin))), 0x9000, "PIN unblocked");
    assertUsable(card);
  });
});

test("VERIFY framing: 7-byte PIN 6700, non-digit 6A80, bad padding 6A80, P2 81 6A88, P1 01 6A86 (no try spent)", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    expectSw(sw("00200080073132333435363700"), 0x6700, "7-byte PIN block");
    expectSw(sw("0020008008313233343541FFFF"), 0x6a80, "non-digit");
    expectSw(sw("00200080083132333435363636FF31AA"), 0x6700, "Lc 8 and 10 bytes");
    expectSw(sw("00200080083132333435FF3636"), 0x6a80, "digits after the padding");
    expectSw(sw("0020008108313233343536FFFF"), 0x6a88, "P2 81 (PUK) is not verified");
    expectSw(sw("0020018008313233343536FFFF"), 0x6a86, "P1 01");
    assert.equal(card.state.pin.tries, 3, "malformed VERIFYs spend no try");
    assertUsable(card);
  });
});

test("PUT DATA certificate / CHUID without SCP03 -> 6982; GENERAL AUTHENTICATE 9A without PIN -> 6982; EXPORT without PIN -> 6982", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    expectSw(sw(apdu(0, 0xdb, 0x3f, 0xff, concat(tlv(0x5c, uh("5FC105")), tlv(0x53, img.certObject)))), 0x6982, "certificate in plain");
    expectSw(sw(apdu(0, 0xdb, 0x3f, 0xff, concat(tlv(0x5c, uh("5FC102")), tlv(0x53, tlv(0x30, new Uint8Array(25)))))), 0x6982, "CHUID in plain");
    expectSw(sw(signApdu(0x9a, ALG.P256, new Uint8Array(32))), 0x6982, "9A without PIN");
    expectSw(sw(apdu(0x80, 0xf4, 0, 0x9a, undefined, 256)), 0x6982, "EXPORT without PIN");
    expectSw(sw(apdu(0x80, 0xf0, 0, 0x9d, concat(tlv(0x80, Uint8Array.of(0x11)), tlv(0x81, img.importPkcs8)))), 0x6982, "IMPORT KEY in plain");
    assertUsable(card);
  });
});

test("GENERAL AUTHENTICATE: empty slot 6A88, algorithm not the key's 6A86, unknown algorithm 6A86, not a key reference 6A86, ECDH with a signature-only key 6985", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    expectSw(sw(signApdu(0x85, ALG.P256, new Uint8Array(32))), 0x6a88, "slot 85 is empty");
    expectSw(sw(signApdu(0x9e, ALG.P384, new Uint8Array(48))), 0x6a86, "9E is P-256");
    expectSw(sw(signApdu(0x9e, 0x42, new Uint8Array(32))), 0x6a86, "algorithm 42");
    expectSw(sw(signApdu(0x01, ALG.P256, new Uint8Array(32))), 0x6a86, "key reference 01");
    sw(apdu(0, 0x20, 0, 0x80, pinBlock(img.pin)));
    expectSw(sw(apdu(0, 0x87, ALG.P256, 0x9a, tlv(0x7c, tlv(0x82), tlv(0x85, img.peerPoint)), 256)), 0x6985, "ECDH with 9A");
    assertUsable(card);
  });
});

test("GET DATA: unknown object 6A82, wrong P1-P2 6A86, PIN-protected object without PIN 6982", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    expectSw(sw(getDataPiv("5FC1FF")), 0x6a82, "5FC1FF");
    expectSw(sw(getDataPiv("5FC101")), 0x6a82, "9E certificate object absent");
    expectSw(sw(apdu(0, 0xcb, 0x3f, 0xfe, tlv(0x5c, uh("5FC102")), 256)), 0x6a86, "P2 FE");
    expectSw(sw(getDataPiv("5FC108")), 0x6982, "facial image needs the PIN");
    sw(hx(selectApdu(ISD_AID)));
    expectSw(sw("80CA123400"), 0x6a88, "ISD: no data object 1234");
    expectSw(sw("80CADF2100"), 0x6982, "ISD: secret ID needs R-ENCRYPTION");
    assertUsable(card);
  });
});

test("LOAD PACKAGE: altered 6982, truncated 6A80, replayed 6985", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    const pkg = img.packages[0];
    const altered = Uint8Array.from(pkg);
    altered[altered.length - 20] ^= 1;
    expectSw(sw(apdu(0x80, 0xf2, 0, 0, altered)), 0x6982, "altered ciphertext");
    expectSw(sw(apdu(0x80, 0xf2, 0, 0, pkg.subarray(0, 20))), 0x6a80, "truncated");
    expectSw(sw(apdu(0x80, 0xf2, 0, 1, pkg)), 0x6a86, "P2 01");
    expectSw(sw(apdu(0x80, 0xf2, 0, 0, pkg)), 0x9000, "loads once");
    expectSw(sw(apdu(0x80, 0xf2, 0, 0, pkg)), 0x6985, "replay");
    assertUsable(card);
  });
});

// --- chaining, GET RESPONSE, logical channels --------------------------------------------------------------------------

test("chain interrupted -> 6883, and the next command works", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    expectSw(sw("10CB3FFF025C03"), 0x9000, "first part");
    expectSw(sw("00200080"), 0x6883, "VERIFY in the middle of the chain");
    expectSw(sw("00CB3FFF035FC10200"), 0x6a80, "the rest alone is a new, malformed GET DATA");
    expectSw(sw("10CB3FFF025C03"), 0x9000, "first part again");
    expectSw(sw("00CB3FFE035FC10200"), 0x6883, "last part with another P2");
    expectSw(sw("10CB3FFF025C03"), 0x9000, "first part again");
    expectSw(sw("00CB3FFF035FC10200"), 0x9000, "a whole chain works");
    assertUsable(card);
  });
});

test("oversize chained data (> 65536 bytes) -> 6700", () => {
  withCard((card, sw) => {
    sw(PIV_SELECT);
    const part = new Uint8Array(40000);
    expectSw(sw(apdu(0x10, 0xdb, 0x3f, 0xff, part)), 0x9000, "first 40000 bytes");
    expectSw(sw(apdu(0x10, 0xdb, 0x3f, 0xff, part)), 0x6700, "80000 bytes");
    expectSw(sw(apdu(0x00, 0xdb, 0x3f, 0xff, part)), 0x6a80, "the chain was dropped: a lone 40000 zero bytes");
    assertUsable(card);
  });
});

test("GET RESPONSE: nothing pending 6985, P1-P2 not 0000 6A86; a long response is never longer than Ne", () => {
  withCard((card, sw) => {
    expectSw(sw("00C0000000"), 0x6985, "nothing pending");
    sw(PIV_SELECT);
    const r = card.transmit(getDataPiv("5FC105", 0x20));
    assert.equal(swOf(r) >> 8, 0x61, "61xx");
    assert.equal(r.length, 0x22, "Ne 32");
    expectSw(sw("00C0000100"), 0x6a86, "GET RESPONSE P2 01");
    assertUsable(card);
  });
});

test("logical channel not open -> 6881; channel 4 and beyond -> 6881; no free channel -> 6A81; open without Le -> 6700", () => {
  withCard((card, sw) => {
    expectSw(sw("01CA004500"), 0x6881, "channel 1 not open");
    expectSw(sw("44CA004500"), 0x6881, "further interindustry channel 8");
    expectSw(sw("81CA004500"), 0x6881, "proprietary class on channel 1");
    expectSw(sw("00700000"), 0x6700, "open with P2 00 and no Le");
    for (let n = 1; n <= 3; n++) assert.equal(hx(card.transmit(uh("0070000001"))), `0${n}9000`, `channel ${n}`);
    expectSw(sw("0070000001"), 0x6a81, "no free channel");
    expectSw(sw("0070800000"), 0x6a86, "channel 0 cannot be closed");
    expectSw(sw("0370800000"), 0x9000, "close channel 3 from itself");
    expectSw(sw("03CA004500"), 0x6881, "channel 3 closed");
    assertUsable(card);
  });
});

// --- memory, tamper -------------------------------------------------------------------------------------------------------

test("full card -> 6A84, and it stays usable", () => {
  const card = createCard(join(dir, "small.card"), new Uint8Array(32).fill(1), { capacity: 64, durability: "none" });
  try {
    const sw = (a: Uint8Array | string): number => swOf(card.transmit(typeof a === "string" ? uh(a) : a));
    expectSw(sw(PIV_SELECT), 0x9000, "a full card still selects");
    const pkg = sealPackage(TRANSPORT_KEY_SET, { cardId: card.state.cardId, keyRef: "9e", seq: 1, alg: "P256", pkcs8: img.importPkcs8 });
    expectSw(sw(apdu(0x80, 0xf2, 0, 0, pkg)), 0x6a84, "P-256 key does not fit in 64 bytes");
    expectSw(sw(getDataPiv("5FC102")), 0x6a84, "CHUID could not be written");
    expectSw(sw(apdu(0, 0xcb, 0x3f, 0xff, tlv(0x5c, uh("7E")), 256)), 0x9000, "discovery object");
    assert.deepEqual(card.state.keys, {}, "nothing stored");
    assert.equal(card.state.packageSeq, 0, "sequence number not advanced");
  } finally {
    discardCard(card);
  }
});

test("GET DATA for the card key: 6982, the card zeroizes itself and answers 6285 afterwards", () => {
  withCard((card, sw) => {
    sw(hx(selectApdu(ISD_AID)));
    expectSw(sw("80CA00E100"), 0x6982, "attack signal");
    assert.equal(card.state.lifecycle, "TERMINATED");
    assert.deepEqual(card.state.keySets, []);
    expectSw(sw(PIV_SELECT), 0x6285, "terminated");
  });
});

// --- the oracle can fail ----------------------------------------------------------------------------------------------------

test("fuzz oracle: an exception escaping an applet (6F00) is caught and reported with its APDU", () => {
  const f = new Fuzzer(img, 1);
  try {
    const card = f.runtime;
    const real = card.transmit.bind(card);
    // Simulate an applet bug: GENERAL AUTHENTICATE throws a TypeError, which the runtime turns into 6F00.
    card.transmit = (a: Uint8Array): Uint8Array => (a[1] === 0x87 && a[3] === 0x9e ? uh("6F00") : real(a));
    const a = signApdu(0x9e, ALG.P256, new Uint8Array(32));
    f.send(a);
    assert.deepEqual(f.sixF00, [hx(a)]);
    assert.equal(f.findings[0]?.kind, "6F00");
    assert.equal(plausibleSw(0x6f00), true, "6F00 is in the 6Xxx family; it is singled out by its own check");
    assert.equal(plausibleSw(0x9001), false);
    assert.equal(plausibleSw(0x6400), false);
    card.transmit = (): Uint8Array => uh("6A80AA");
    f.send(uh("00A4040000"));
    assert.ok(f.findings.some((x) => x.kind === "data with error SW"));
    card.transmit = (): Uint8Array => {
      throw new TypeError("boom");
    };
    f.send(uh("00A4040000"));
    assert.ok(f.findings.some((x) => x.kind === "throw" && x.detail.includes("boom")));
  } finally {
    f.close();
  }
});

// --- the fuzzer --------------------------------------------------------------------------------------------------------------

test("fuzz: random and mutated APDUs (FUZZ_COUNT, default 100,000; FUZZ_SEED) never escape the card and leave it usable", { timeout: 30 * 60_000 }, (t) => {
  const seed = seedFromEnv();
  const count = countFromEnv();
  t.diagnostic(`seed ${seed} (0x${seed.toString(16)}), ${count} APDUs; rerun with FUZZ_SEED=${seed} FUZZ_COUNT=${count}`);
  const r = runFuzz({ img, count, seed });
  t.diagnostic(`${r.count} APDUs in ${r.seconds.toFixed(2)} s (${Math.round(r.count / r.seconds)} APDU/s)`);
  t.diagnostic(`events ${JSON.stringify(r.events)}`);
  t.diagnostic(`status words ${JSON.stringify(Object.fromEntries(Object.entries(r.sw).sort((a, b) => b[1] - a[1])))}`);
  assert.deepEqual(r.sixF00, [], `APDUs answered 6F00 (an exception escaped an applet):\n${r.sixF00.join("\n")}`);
  assert.equal(r.findings.length, 0, describeFindings(r));
  assert.ok(r.count >= count);
  assert.ok(r.events.healthChecks >= Math.floor(count / 5000), "the card was checked periodically");
  if (count >= 20_000) assert.ok(r.events.sessionMacRejected > 0, "altered SCP03 commands reached the C-MAC check");
});
