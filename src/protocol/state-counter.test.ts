// The card's state counter (issue 17 §6): one up in every commit, in the same write; reported after INITIALIZE
// UPDATE as DF23 under the session's S-MAC, which a terminal cannot forge; and lower on an image restored from an
// older copy, even where the copy gives PIN tries back. (Tearing: test/tearing.test.ts checks the counter at every
// cut; the issuer's side: test/card-rollback.test.ts.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { encodeCommand } from "./apdu.ts";
import { createCard, openCard, TRANSPORT_KEY_SET } from "../card/card.ts";
import { CHEAPEST_PIN_KDF } from "../card/pin.ts";
import type { CardRuntime } from "../card/runtime.ts";
import { parseInitUpdateResponse, Scp03HostSession } from "./scp03/host.ts";
import { deriveSessionKeys } from "./scp03/kdf.ts";
import { ISD_AID } from "./scp03/sm.ts";
import { checkStateCounterReport, STATE_COUNTER_COMMAND, StateCounterError } from "./state-counter.ts";
import { findTlv } from "./tlv.ts";
import { PIV_AID, pinBlock } from "./piv/client.ts";
import { dataOf, swOf, tempDir } from "../../test/helpers.ts";

const dir = tempDir("cardkms-counter-");
const KEY = randomBytes(32);
let n = 0;
const newCard = (): CardRuntime => createCard(join(dir, `c${n++}.card`), KEY, { pinKdf: CHEAPEST_PIN_KDF });
const unhex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));
const sw = (c: CardRuntime, cmd: Parameters<typeof encodeCommand>[0]) => swOf(c.transmit(encodeCommand(cmd)));
const select = (c: CardRuntime, aid: Uint8Array) => sw(c, { cla: 0, ins: 0xa4, p1: 4, p2: 0, data: aid, le: 256 });
const verify = (c: CardRuntime, pin: string) => sw(c, { cla: 0, ins: 0x20, p1: 0, p2: 0x80, data: pinBlock(pin) });
const hexSw = (s: number) => s.toString(16).toUpperCase();

/** The counter as the card reports it in its public state (DF20 tag 85). */
function publicCounter(c: CardRuntime): number {
  assert.equal(select(c, ISD_AID), 0x9000);
  const r = c.transmit(encodeCommand({ cla: 0x80, ins: 0xca, p1: 0xdf, p2: 0x20, le: 256 }));
  const v = findTlv(findTlv(dataOf(r), 0xdf20)!, 0x85)!;
  assert.equal(v.length, 8);
  return Number(Buffer.from(v).readBigUInt64BE());
}

/** INITIALIZE UPDATE with the transport key and a chosen host challenge, then the card's report; the host's view. */
function report(c: CardRuntime, hostChallenge = new Uint8Array(randomBytes(8))) {
  assert.equal(select(c, ISD_AID), 0x9000);
  const host = new Scp03HostSession(TRANSPORT_KEY_SET, { level: 0x33, kvn: TRANSPORT_KEY_SET.kvn });
  const info = parseInitUpdateResponse(c.transmit(host.initializeUpdate(hostChallenge)));
  const context = new Uint8Array(Buffer.concat([hostChallenge, info.cardChallenge]));
  const { sMac } = deriveSessionKeys(unhex(TRANSPORT_KEY_SET.enc), unhex(TRANSPORT_KEY_SET.mac), context);
  return { response: c.transmit(STATE_COUNTER_COMMAND), keys: { sMac, hostChallenge, cardChallenge: info.cardChallenge }, host, iu: info };
}

test("every commit moves the state counter by one, in the same write; a refused command moves nothing", () => {
  const card = newCard();
  try {
    assert.equal(card.state.stateCounter, 0);
    const step = (what: string, fn: () => void, commits: number) => {
      const [c0, w0] = [card.state.stateCounter!, card.faults.writes];
      fn();
      assert.equal(card.state.stateCounter, c0 + commits, `${what}: counter`);
      assert.equal(card.faults.writes - w0, 2 * commits, `${what}: ${commits} commit(s), two EEPROM writes each, nothing more`);
    };
    step("first SELECT of PIV (CHUID, CCC)", () => assert.equal(select(card, PIV_AID), 0x9000), 1);
    step("VERIFY, wrong PIN", () => assert.equal(hexSw(verify(card, "000000")), "63C2"), 1);
    step("VERIFY, right PIN (try spent, then reset)", () => assert.equal(verify(card, "123456"), 0x9000), 2);
    step("VERIFY, malformed", () => assert.equal(hexSw(sw(card, { cla: 0, ins: 0x20, p1: 0, p2: 0x80, data: new Uint8Array(7) })), "6700"), 0);
    step("INITIALIZE UPDATE (a login attempt)", () => report(card), 1);
    assert.equal(publicCounter(card), card.state.stateCounter, "DF20 tag 85 is the counter");
  } finally {
    card.close();
  }
});

test("DF23 after INITIALIZE UPDATE: the counter under the session's S-MAC, bound to that session", () => {
  const card = newCard();
  try {
    assert.equal(select(card, ISD_AID), 0x9000);
    assert.equal(hexSw(swOf(card.transmit(STATE_COUNTER_COMMAND))), "6985", "no session, no report");
    const r = report(card);
    assert.equal(checkStateCounterReport(r.response, r.keys), card.state.stateCounter);
    assert.equal(Buffer.from(r.response).subarray(0, 5).toString("hex"), "df23148008", "DF23 { 80 counter (8), 81 MAC (8) }");

    const fails = (resp: Uint8Array, keys: typeof r.keys, reason: StateCounterError["reason"]) =>
      assert.throws(
        () => checkStateCounterReport(resp, keys),
        (e: unknown) => e instanceof StateCounterError && e.reason === reason,
      );
    // A terminal that raises the counter on the way breaks the MAC.
    const forged = Uint8Array.from(r.response);
    forged[12] ^= 0x01;
    fails(forged, r.keys, "mac");
    // A report of another session (another host challenge) does not verify under this one.
    const other = report(card);
    fails(other.response, r.keys, "mac");
    fails(r.response, other.keys, "mac");
    fails(unhex("6a88"), r.keys, "refused");
    fails(unhex("df2303800101" + "9000"), r.keys, "malformed");
    fails(unhex("00"), r.keys, "malformed");
    // Still there once the session is authenticated.
    assert.equal(swOf(card.transmit(other.host.authenticate(card.transmit(other.host.initializeUpdate())))), 0x9000);
    assert.equal(hexSw(swOf(card.transmit(STATE_COUNTER_COMMAND))), "9000");
  } finally {
    card.close();
  }
});

test("a copy restored after the PIN was blocked gives the tries back (the rollback), with the copy's lower counter", () => {
  const card = newCard();
  const copy = join(dir, `copy-${n}.card`);
  assert.equal(select(card, PIV_AID), 0x9000);
  copyFileSync(card.path, copy);
  for (const expected of ["63C2", "63C1", "6983"]) assert.equal(hexSw(verify(card, "000000")), expected);
  const blocked = card.state.stateCounter!;
  card.close();
  const restored = openCard(copy, KEY);
  try {
    assert.equal(select(restored, PIV_AID), 0x9000);
    assert.equal(hexSw(verify(restored, "000000")), "63C2", "the restored copy has its tries back");
    assert.ok(restored.state.stateCounter! < blocked, `restored ${restored.state.stateCounter}, blocked card ${blocked}`);
    const r = report(restored);
    assert.ok(checkStateCounterReport(r.response, r.keys) <= blocked, "and reports a counter no higher than the blocked card had");
  } finally {
    restored.close();
  }
});
