// A relay session kept between its round trips as state (issue 16 §1: another server takes the next round): restored
// in a fresh object it unwraps the card's answers as the original would, a changed answer still fails the R-MAC,
// and the kept state holds no key — neither the static keys nor the session keys.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCard } from "../card/card.ts";
import { transmitFollowing } from "./apdu-client.ts";
import { getStatusCommand } from "./isd.ts";
import { RelayError, ScriptRelaySession, type ScriptKeys } from "./relay.ts";
import { Scp03Error, Scp03HostSession, type SessionSource } from "./scp03/host.ts";
import { cryptogram, DERIVE, deriveSessionKeys } from "./scp03/kdf.ts";
import { ISD_AID } from "./scp03/sm.ts";

const keySet = { kvn: 0x21, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") };
/** Where the static keys are (key custody, in the issuer): session keys and cryptograms from the two challenges. */
let derivations = 0;
const source: SessionSource = async (hc, cc) => {
  derivations++;
  const ctx = Buffer.concat([hc, cc]);
  const sk = deriveSessionKeys(Buffer.from(keySet.enc, "hex"), Buffer.from(keySet.mac, "hex"), ctx);
  return { ...sk, cardCryptogram: cryptogram(sk.sMac, DERIVE.CARD_CRYPTOGRAM, ctx), hostCryptogram: cryptogram(sk.sMac, DERIVE.HOST_CRYPTOGRAM, ctx) };
};
// GET STATUS (card life cycle) and GET DATA secret ID: answers with data, under R-MAC and R-ENCRYPTION
const script = [getStatusCommand(), { cla: 0x80, ins: 0xca, p1: 0xdf, p2: 0x21, le: 256 }];

function newCard() {
  const card = createCard(join(mkdtempSync(join(tmpdir(), "relay-state-")), "c.card"), randomBytes(32), { keySet });
  return { card, send: async (apdus: Uint8Array[]) => Promise.all(apdus.map((a) => transmitFollowing((x) => card.transmit(x), a))) };
}

/** The state as it would cross to another server: JSON through and back. */
const throughJson = <T>(s: T): T => JSON.parse(JSON.stringify(s)) as T;

for (const [name, keys] of [
  ["session keys from custody (SessionSource)", { kvn: keySet.kvn, keys: source }],
  ["static keys held here", { kvn: keySet.kvn, keys: keySet }],
] as [string, ScriptKeys][]) {
  test(`${name}: restored after each round in a fresh object, the session unwraps the card's answers as the original does`, async () => {
    const { card, send } = newCard();
    try {
      const original = new ScriptRelaySession(keys, ISD_AID, script);
      const round1 = original.start();
      const afterStart = throughJson(original.snapshot());
      assert.equal(afterStart.step, "selected");
      const answers1 = await send(round1);
      // round 2 computed on "another server": a session restored from the state after round 1
      const second = ScriptRelaySession.restore(keys, ISD_AID, script, afterStart);
      const r2 = await second.next(answers1);
      assert.ok("apdus" in r2);
      const afterRound2 = throughJson(second.snapshot());
      assert.equal(afterRound2.step, "authenticating");
      assert.deepEqual(afterRound2.parts, [1, 1]);
      assert.equal(afterRound2.host.pending?.length, 2, "the MACs of both commands await their responses");
      const answers2 = await send(r2.apdus);

      // a third object, restored from the state after round 2, checks and opens the answers
      const third = ScriptRelaySession.restore(keys, ISD_AID, script, afterRound2);
      const done = await third.next(answers2);
      assert.ok("results" in done);
      assert.deepEqual(
        done.results.map((r) => r.sw),
        [0x9000, 0x9000],
      );
      assert.ok(done.results[1].data.length > 0, "R-ENCRYPTION opened: the secret ID is readable");
      // the object that wrapped the commands, never snapshotted, unwraps them identically
      assert.deepEqual(await second.next(answers2), done);
      // another restore of the same state gives the very same results
      const again = await ScriptRelaySession.restore(keys, ISD_AID, script, afterRound2).next(answers2);
      assert.deepEqual(again, done);

      // a changed answer still fails the R-MAC
      const tampered = answers2.map((a) => Uint8Array.from(a));
      tampered[2][0] ^= 0x01;
      await assert.rejects(ScriptRelaySession.restore(keys, ISD_AID, script, afterRound2).next(tampered), (e) => e instanceof RelayError && /R-MAC/.test(e.message));
      // answers swapped between the two commands: each checked against its own command's MAC
      await assert.rejects(ScriptRelaySession.restore(keys, ISD_AID, script, afterRound2).next([answers2[0], answers2[2], answers2[1]]), /R-MAC/);
      // round 1's answers fed to the state after round 2 (a replay of a consumed round): refused
      await assert.rejects(ScriptRelaySession.restore(keys, ISD_AID, script, afterRound2).next(answers1), RelayError);
    } finally {
      card.close();
    }
  });
}

test("the kept state holds no key: neither the static keys nor the session keys appear in it", async () => {
  const { card, send } = newCard();
  try {
    const keys: ScriptKeys = { kvn: keySet.kvn, keys: source };
    const s = new ScriptRelaySession(keys, ISD_AID, script);
    const answers1 = await send(s.start());
    const r2 = await s.next(answers1);
    assert.ok("apdus" in r2);
    const json = JSON.stringify(s.snapshot()).toLowerCase();
    const st = s.snapshot().host;
    const ctx = Buffer.concat([Buffer.from(st.hostChallenge, "hex"), Buffer.from(st.initUpdate!, "hex").subarray(13, 21)]);
    const sk = deriveSessionKeys(Buffer.from(keySet.enc, "hex"), Buffer.from(keySet.mac, "hex"), ctx);
    for (const [what, k] of Object.entries({
      enc: keySet.enc,
      mac: keySet.mac,
      dek: keySet.dek,
      sEnc: Buffer.from(sk.sEnc).toString("hex"),
      sMac: Buffer.from(sk.sMac).toString("hex"),
      sRmac: Buffer.from(sk.sRmac).toString("hex"),
    }))
      assert.ok(!json.includes(k.toLowerCase()), `${what} is not in the state`);
  } finally {
    card.close();
  }
});

test("a restored open host session refuses session keys of another key set (card cryptogram), and needs its keys before it unwraps", async () => {
  const { card, send } = newCard();
  try {
    const s = new ScriptRelaySession({ kvn: keySet.kvn, keys: source }, ISD_AID, script);
    const r2 = await s.next(await send(s.start()));
    assert.ok("apdus" in r2);
    const state = throughJson(s.snapshot().host);
    const host = Scp03HostSession.restore(state, null);
    assert.equal(host.open, false);
    assert.throws(() => host.unwrap(Uint8Array.of(0x90, 0x00)), Scp03Error);
    const c = host.resumeChallenges;
    const other = { kvn: keySet.kvn, enc: randomBytes(16), mac: randomBytes(16), dek: randomBytes(16) };
    const ctx = Buffer.concat([c.hostChallenge, c.cardChallenge]);
    const wrong = deriveSessionKeys(other.enc, other.mac, ctx);
    assert.throws(() => host.resumeWith({ ...wrong, cardCryptogram: cryptogram(wrong.sMac, DERIVE.CARD_CRYPTOGRAM, ctx) }), /do not match the card's cryptogram/);
    assert.throws(() => Scp03HostSession.restore(state, other), /do not match the card's cryptogram/);
    // a state altered on the way (a pending MAC) fails at the R-MAC, never silently
    const altered = throughJson(state);
    altered.pending![0].mcv = "00".repeat(16);
    const before = derivations;
    const answers = await send(r2.apdus);
    const restored = ScriptRelaySession.restore({ kvn: keySet.kvn, keys: source }, ISD_AID, script, { step: "authenticating", parts: [1, 1], host: altered });
    await assert.rejects(restored.next(answers), /R-MAC/);
    assert.equal(derivations, before + 1, "the session keys were derived again, once, for that round");
  } finally {
    card.close();
  }
});
