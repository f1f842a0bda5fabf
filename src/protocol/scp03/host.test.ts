import { test } from "node:test";
import assert from "node:assert/strict";
import { hex, parseCommand, unhex } from "../apdu.ts";
import { aesCbcDecrypt } from "./cmac.ts";
import { checkPutKeyResponse, keyCheckValue, parseInitUpdateResponse, putKeyCommand, Scp03Client, Scp03Error, Scp03HostSession } from "./host.ts";
import { cryptogram, DERIVE, deriveSessionKeys } from "./kdf.ts";
import { createCard } from "../../card/card.ts";
import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

// Interoperability known answers: a third-party SCP03 trace (Samsung OpenSCP-Java test data, S8 mode, level 33,
// GET STATUS "80 F2 20 00 02 4F00" under C-DECRYPTION + C-MAC, response under R-ENCRYPTION + R-MAC).
const HOST_CHALLENGE = unhex("06F85B77251BF794");
const TRACES = [
  {
    name: "AES-128",
    keys: { enc: "1D72CD9283FD55162722C6BEAA4DC187", mac: "F4932BA02FFC3098D172790099D28382", dek: "B4BDC610C3F6793708FF1132E2C5BF60" },
    iu: "A1A012430585513120853003709CE033FA78E6B10DDC2DBE8974C8B0DE00082A9000",
    ea: "8482330010B08D6CE26B6CB3CCB411CF0296EB7B1D",
    getStatus: "84F22000185230BA64388B4A40E0B4DA5CC1DF51C285E4020D99D5AED1",
    resp: "BD3292BFB1A23C4478E37292BA1EDF438770CE472FB7611FBDBD1C981A27FA4780A81A95D93C05F9C4C94839DED0363CFEA57CE2ECFB572B26F3474DAEEBBABC202942381F9755F59000",
  },
  {
    name: "AES-192",
    keys: {
      enc: "1D72CD9283FD55162722C6BEAA4DC1877F4C0CD0ECC15E05",
      mac: "F4932BA02FFC3098D172790099D2838236F2E61068D56F44",
      dek: "B4BDC610C3F6793708FF1132E2C5BF60523AEAC06B32F204",
    },
    iu: "A1A012430585513120853003709CE033FA78E6B10D6E7C64F962A822A400082A9000",
    ea: "848233001063B6CEFAC0EC098333860788C65220BA",
    getStatus: "84F2200018D9EDCBCB7F69CB1EF0508E6EDE933A6D80091E7D99CB3E51",
    resp: "99077B167D43A4F313B59B63CC23EFD3B5158BDEF8F24D85E250570A4AAB81869A92307350267F0FBC2278FA3D34D2FD5D2B4E8C0362C01D082C76A17B80AEA4BA5FB9D7DA3BB3689000",
  },
  {
    name: "AES-256",
    keys: {
      enc: "1D72CD9283FD55162722C6BEAA4DC1877F4C0CD0ECC15E052AAC39A99AF9AD72",
      mac: "F4932BA02FFC3098D172790099D2838236F2E61068D56F4401CC0374C25AF8CB",
      dek: "B4BDC610C3F6793708FF1132E2C5BF60523AEAC06B32F204B851B6CC007C8D3C",
    },
    iu: "A1A012430585513120853003709CE033FA78E6B10D8AFA7267CB63740E00082A9000",
    ea: "848233001050E003735F92228269A094FFC07429FD",
    getStatus: "84F2200018BD57D1382AE8F66F7EB5F5991B92D1399044157C7DFD2761",
    resp: "47D81041004B7E9208E3BEF1372E7CDE8CD995AEF207F138C80D45156F2D36F2B15BDC9C4D6FDB9774344495CCC83AE7BA0B39C734BF9CEBD07204AA5A67DF2D7E663D55FC4944C09000",
  },
];

for (const t of TRACES) {
  test(`interoperates with a third-party SCP03 trace, ${t.name}`, () => {
    const s = new Scp03HostSession(t.keys, { level: 0x33, kvn: 0x30 });
    assert.equal(hex(s.initializeUpdate(HOST_CHALLENGE)), "805030000806F85B77251BF79400");
    assert.equal(hex(s.authenticate(unhex(t.iu))), t.ea);
    assert.equal(s.info?.sequenceCounter, 0x082a);
    assert.equal(hex(s.wrap({ cla: 0x80, ins: 0xf2, p1: 0x20, p2: 0x00, data: unhex("4F00") })), t.getStatus);
    const r = s.unwrap(unhex(t.resp));
    assert.equal(r.sw, 0x9000);
    // GET STATUS (P2 00) entries: AID length, AID, life cycle 01, privileges 00 — the first is a GP package AID
    assert.equal(r.data[0], 8);
    assert.equal(hex(r.data.subarray(1, 6)), "A000000151");
  });
}

test("a wrong static key is reported as a wrong card cryptogram", () => {
  const keys = { ...TRACES[0].keys, mac: "00".repeat(16) };
  const s = new Scp03HostSession(keys, { level: 0x01 });
  s.initializeUpdate(HOST_CHALLENGE);
  assert.throws(
    () => s.authenticate(unhex(TRACES[0].iu)),
    (e: unknown) => e instanceof Scp03Error && /wrong card cryptogram/.test(e.message),
  );
  assert.throws(() => s.wrap({ cla: 0x80, ins: 0xca, p1: 0, p2: 0x45 }), Scp03Error);
});

test("INITIALIZE UPDATE responses that do not fit are refused", () => {
  assert.throws(
    () => parseInitUpdateResponse(unhex("6A88")),
    (e: unknown) => e instanceof Scp03Error && e.sw === 0x6a88,
  );
  assert.throws(() => parseInitUpdateResponse(unhex(TRACES[0].iu).subarray(0, 28)), Scp03Error);
  const scp02 = unhex(TRACES[0].iu);
  scp02[11] = 0x02;
  assert.throws(() => parseInitUpdateResponse(scp02), /not SCP03/);
  const s = new Scp03HostSession(TRACES[0].keys, { level: 0x33, kvn: 0x31 });
  s.initializeUpdate(HOST_CHALLENGE);
  assert.throws(() => s.authenticate(unhex(TRACES[0].iu)), /key set 48/);
});

test("the host refuses unknown levels and bad key sets", () => {
  assert.throws(() => new Scp03HostSession(TRACES[0].keys, { level: 0x31 }), Scp03Error);
  assert.throws(() => new Scp03HostSession({ enc: "00".repeat(16), mac: "00".repeat(24), dek: "00".repeat(16) }, { level: 1 }), Scp03Error);
  assert.throws(() => new Scp03HostSession({ enc: "zz".repeat(16), mac: "00".repeat(16), dek: "00".repeat(16) }, { level: 1 }), Scp03Error);
});

test("wrapChained splits long data into wrapped parts with the chaining bit on all but the last", () => {
  const s = new Scp03HostSession(TRACES[0].keys, { level: 0x03, kvn: 0x30 });
  s.initializeUpdate(HOST_CHALLENGE);
  s.authenticate(unhex(TRACES[0].iu));
  const parts = s.wrapChained({ cla: 0x80, ins: 0xe2, p1: 0, p2: 0, data: new Uint8Array(500).fill(7) });
  assert.equal(parts.length, 3);
  const parsed = parts.map((p) => parseCommand(p));
  assert.deepEqual(
    parsed.map((c) => c.cla),
    [0x94, 0x94, 0x84],
  );
  for (const c of parsed) assert.ok(c.data.length <= 255 && !c.extended);
  assert.equal(s.pendingResponses, 3);
  assert.throws(() => s.wrapChained({ cla: 0x80, ins: 0xe2, p1: 0, p2: 0, data: new Uint8Array(10) }, 300), Scp03Error);
});

test("unwrap needs a wrapped command awaiting its response", () => {
  const s = new Scp03HostSession(TRACES[0].keys, { level: 0x11, kvn: 0x30 });
  s.initializeUpdate(HOST_CHALLENGE);
  s.authenticate(unhex(TRACES[0].iu));
  assert.throws(() => s.unwrap(unhex("9000")), Scp03Error);
});

test("key check value and PUT KEY encoding (Amendment D §7.2)", () => {
  // KCV = first 3 bytes of AES(key, 16 x 01); the block was computed independently with `openssl enc -aes-128-ecb`
  // (GP default test key 40..4F -> 504A77E6E457DD86...).
  const key = unhex("404142434445464748494A4B4C4D4E4F");
  const kcv = keyCheckValue(key);
  assert.equal(hex(kcv), "504A77");
  assert.notEqual(hex(kcv), hex(keyCheckValue(unhex("404142434445464748494A4B4C4D4E40"))));
  const dek = unhex(TRACES[0].keys.dek);
  const nk = { kvn: 0x31, enc: key, mac: unhex("505152535455565758595A5B5C5D5E5F"), dek: unhex("606162636465666768696A6B6C6D6E6F") };
  const cmd = putKeyCommand(dek, nk, 0x30);
  assert.deepEqual([cmd.cla, cmd.ins, cmd.p1, cmd.p2], [0x80, 0xd8, 0x30, 0x81]);
  const d = cmd.data!;
  assert.equal(d[0], 0x31);
  assert.equal(d.length, 1 + 3 * (3 + 16 + 1 + 3));
  // first key block: 88 11 10 <cgram 16> 03 <kcv>
  assert.deepEqual([d[1], d[2], d[3]], [0x88, 0x11, 0x10]);
  assert.deepEqual(aesCbcDecrypt(dek, new Uint8Array(16), d.subarray(4, 20)), key);
  assert.deepEqual([d[20], ...d.subarray(21, 24)], [3, ...kcv]);
  assert.ok(!Buffer.from(d).includes(Buffer.from(key)), "the key travels encrypted");
  // AES-192 keys are zero-padded to two blocks; their length byte says 24
  const k24 = { kvn: 0x32, enc: new Uint8Array(24).fill(1), mac: new Uint8Array(24).fill(2), dek: new Uint8Array(24).fill(3) };
  const d24 = putKeyCommand(dek, k24).data!;
  assert.deepEqual([d24[1], d24[2], d24[3]], [0x88, 0x21, 0x18]);
  checkPutKeyResponse(Uint8Array.from([0x31, ...kcv, ...keyCheckValue(nk.mac), ...keyCheckValue(nk.dek)]), nk);
  assert.throws(() => checkPutKeyResponse(Uint8Array.from([0x31, ...kcv, ...kcv, ...kcv]), nk), Scp03Error);
});

test("a host whose static keys live elsewhere opens the same session through a SessionSource", async () => {
  const keySet = { kvn: 0x21, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") };
  const card = createCard(join(mkdtempSync(join(tmpdir(), "scp-src-")), "c.card"), randomBytes(32), { keySet });
  const transmit = (a: Uint8Array) => card.transmit(a);
  let calls = 0;
  const source = async (hc: Uint8Array, cc: Uint8Array, kvn: number) => {
    calls++;
    assert.equal(kvn, 0x21);
    const ctx = Buffer.concat([hc, cc]);
    const sk = deriveSessionKeys(Buffer.from(keySet.enc, "hex"), Buffer.from(keySet.mac, "hex"), ctx);
    return { ...sk, cardCryptogram: cryptogram(sk.sMac, DERIVE.CARD_CRYPTOGRAM, ctx), hostCryptogram: cryptogram(sk.sMac, DERIVE.HOST_CRYPTOGRAM, ctx) };
  };
  const client = await Scp03Client.open(transmit, source, { level: 0x33, kvn: 0x21 });
  assert.equal(calls, 1);
  const r = await client.send({ cla: 0x80, ins: 0xca, p1: 0xdf, p2: 0x21, le: 256 });
  assert.equal(r.sw, 0x9000, "secret ID readable under R-ENC: the session is real");
  const wrong = async (hc: Uint8Array, cc: Uint8Array, kvn: number) => ({ ...(await source(hc, cc, kvn)), cardCryptogram: new Uint8Array(8) });
  await assert.rejects(Scp03Client.open(transmit, wrong, { level: 0x01, kvn: 0x21 }), /wrong card cryptogram/);
  card.close();
});
