import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeCommand, hex, parseResponse, unhex } from "../../protocol/apdu.ts";
import type { Applet, AppletContext } from "../applet.ts";
import { CardRuntime } from "../runtime.ts";
import type { ScpKeySet } from "../state.ts";
import { CardError, SW } from "../../protocol/sw.ts";
import { isd } from "../isd.ts";
import { ISD_AID, scp03Factory } from "./card-channel.ts";
import { pseudoRandomChallenge } from "../../protocol/scp03/kdf.ts";
import { Scp03Client, Scp03Error, Scp03HostSession, transmitAll } from "../../protocol/scp03/host.ts";

const ECHO_AID = unhex("F000000C4D0101");

/** Test applet: 01 echoes data followed by the security level it saw; 02 returns P1P2 bytes; 03 fails; 04 warns. */
const echo: Applet = {
  name: "echo",
  aid: ECHO_AID,
  select: () => new Uint8Array(0),
  process(ctx: AppletContext, cmd) {
    switch (cmd.ins) {
      case 0x01:
        return Uint8Array.from([...cmd.data, ctx.secureLevel]);
      case 0x02:
        return Uint8Array.from({ length: (cmd.p1 << 8) | cmd.p2 }, (_, i) => i & 0xff);
      case 0x03:
        throw new CardError(SW.WRONG_DATA);
      case 0x04:
        return { data: Uint8Array.of(0xaa), sw: 0x6310 };
      default:
        throw new CardError(SW.INS_NOT_SUPPORTED);
    }
  },
};

function keySet(len: number, kvn = 0x30): ScpKeySet {
  return { kvn, enc: randomBytes(len).toString("hex"), mac: randomBytes(len).toString("hex"), dek: randomBytes(len).toString("hex") };
}

function newCard(o: { keyLen?: number; limit?: number } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "cardkms-scp03-"));
  const keys = keySet(o.keyLen ?? 16);
  const card = CardRuntime.create(join(dir, "card.img"), randomBytes(32), {
    applets: [isd, echo],
    secureChannel: scp03Factory,
    keySet: keys,
    scpFailureLimit: o.limit,
  });
  const wire: { cmd: Uint8Array; resp: Uint8Array }[] = [];
  const transmit = (apdu: Uint8Array): Uint8Array => {
    const resp = card.transmit(apdu);
    wire.push({ cmd: apdu, resp });
    return resp;
  };
  const cleanup = (): void => {
    card.close();
    rmSync(dir, { recursive: true, force: true });
  };
  return { card, keys, transmit, wire, cleanup };
}

const sw = (resp: Uint8Array): number => parseResponse(resp).sw;
const selectEcho = encodeCommand({ cla: 0, ins: 0xa4, p1: 4, p2: 0, data: ECHO_AID });

for (const keyLen of [16, 24, 32]) {
  for (const level of [0x01, 0x03, 0x11, 0x13, 0x33]) {
    test(`full session, AES-${keyLen * 8}, level ${level.toString(16).padStart(2, "0")}`, async () => {
      const { card, keys, transmit, wire, cleanup } = newCard({ keyLen });
      try {
        assert.equal(sw(transmit(selectEcho)), 0x9000);
        const client = await Scp03Client.open(transmit, keys, { level });
        const secret = Uint8Array.from(Buffer.from("attack at dawn, bring the card key"));
        wire.length = 0;
        const r = await client.send({ cla: 0x80, ins: 0x01, p1: 0, p2: 0, data: secret, le: 256 });
        assert.equal(r.sw, 0x9000);
        assert.deepEqual(r.data, Uint8Array.from([...secret, 0x80 | level]));
        const onWire = (b: Uint8Array): boolean => Buffer.from(b).includes(Buffer.from(secret));
        assert.equal(onWire(wire[0].cmd), !(level & 0x02), "C-DECRYPTION hides the command data");
        assert.equal(onWire(wire[0].resp), !(level & 0x20), "R-ENCRYPTION hides the response data");
        // R-MAC adds 8 bytes to the response
        const plainLen = secret.length + 1 + 2;
        if (!(level & 0x20)) assert.equal(wire[0].resp.length, plainLen + (level & 0x10 ? 8 : 0));

        // long data as a command chain, each part wrapped on its own
        const big = Uint8Array.from(randomBytes(700));
        const rb = await client.send({ cla: 0x80, ins: 0x01, p1: 0, p2: 0, data: big, le: 256 });
        assert.equal(rb.sw, 0x9000);
        assert.deepEqual(rb.data.subarray(0, 700), big);

        // long response through GET RESPONSE
        const rl = await client.send({ cla: 0x80, ins: 0x02, p1: 0x02, p2: 0x58, le: 256 });
        assert.equal(rl.sw, 0x9000);
        assert.equal(rl.data.length, 600);
        assert.equal(rl.data[599], 599 & 0xff);

        // an error status comes back without R-MAC and the session goes on
        assert.equal((await client.send({ cla: 0x80, ins: 0x03, p1: 0, p2: 0 })).sw, 0x6a80);
        const w = await client.send({ cla: 0x80, ins: 0x04, p1: 0, p2: 0, le: 256 });
        assert.deepEqual([w.sw, ...w.data], [0x6310, 0xaa]);
        assert.equal((await client.send({ cla: 0x80, ins: 0x01, p1: 0, p2: 0, data: Uint8Array.of(7), le: 256 })).sw, 0x9000);
        assert.equal(card.state.scpFailures, 0);
      } finally {
        cleanup();
      }
    });
  }
}

test("level 00: authenticated, but commands travel plain and the applet sees no protection", async () => {
  const { keys, transmit, cleanup } = newCard();
  try {
    transmit(selectEcho);
    const client = await Scp03Client.open(transmit, keys, { level: 0x00 });
    const r = await client.send({ cla: 0x80, ins: 0x01, p1: 0, p2: 0, data: Uint8Array.of(1), le: 256 });
    assert.deepEqual([...r.data], [1, 0]);
  } finally {
    cleanup();
  }
});

test("a relayed script whose bytes the terminal flips is refused with 6988 and the session ends", async () => {
  for (const pos of [2, 3, 5, 12, -1]) {
    const { keys, transmit, cleanup } = newCard();
    try {
      transmit(selectEcho);
      const client = await Scp03Client.open(transmit, keys, { level: 0x13 });
      const s = client.session;
      const cmd = s.wrap({ cla: 0x80, ins: 0x01, p1: 0, p2: 0, data: Uint8Array.from(randomBytes(20)), le: 256 });
      const evil = Uint8Array.from(cmd);
      const at = pos < 0 ? evil.length - 2 : pos;
      evil[at] ^= 0x01;
      assert.equal(sw(transmit(evil)), 0x6988, `flip at ${at}`);
      assert.equal(s.unwrap(unhex("6988")).sw, 0x6988);
      assert.equal(s.open, false, "host sees the session ended");
      // the genuine command no longer gets in either: the card's session is gone
      assert.equal(sw(transmit(cmd)), 0x6982);
    } finally {
      cleanup();
    }
  }
});

test("replaying a previously valid wrapped command is refused (MAC chaining)", async () => {
  const { keys, transmit, cleanup } = newCard();
  try {
    transmit(selectEcho);
    const client = await Scp03Client.open(transmit, keys, { level: 0x01 });
    const a = client.session.wrap({ cla: 0x80, ins: 0x01, p1: 0, p2: 0, data: Uint8Array.of(1, 2, 3), le: 256 });
    assert.equal(sw(transmit(a)), 0x9000);
    assert.equal(sw(transmit(a)), 0x6988);
  } finally {
    cleanup();
  }
});

test("a command wrapped for one session does not work in the next one", async () => {
  const { keys, transmit, cleanup } = newCard();
  try {
    transmit(selectEcho);
    const c1 = await Scp03Client.open(transmit, keys, { level: 0x03 });
    const stale = c1.session.wrap({ cla: 0x80, ins: 0x01, p1: 0, p2: 0, data: Uint8Array.of(9), le: 256 });
    await Scp03Client.open(transmit, keys, { level: 0x03 });
    assert.equal(sw(transmit(stale)), 0x6988);
  } finally {
    cleanup();
  }
});

test("a script wrapped in advance is relayed, then its responses are checked in order", async () => {
  const { keys, transmit, cleanup } = newCard();
  try {
    transmit(selectEcho);
    const client = await Scp03Client.open(transmit, keys, { level: 0x33 });
    const s = client.session;
    const script = [1, 2, 3].map((n) => s.wrap({ cla: 0x80, ins: 0x01, p1: 0, p2: 0, data: Uint8Array.of(n, n), le: 256 }));
    const responses = script.map((c) => transmit(c)); // the untrusted terminal's job
    const out = responses.map((r) => s.unwrap(r));
    assert.deepEqual(
      out.map((r) => [...r.data]),
      [1, 2, 3].map((n) => [n, n, 0xb3]),
    );
    assert.equal(s.pendingResponses, 0);
  } finally {
    cleanup();
  }
});

test("R-MAC tampering is detected by the host", async () => {
  const { keys, transmit, cleanup } = newCard();
  try {
    transmit(selectEcho);
    const client = await Scp03Client.open(transmit, keys, { level: 0x11 });
    const s = client.session;
    const resp = Uint8Array.from(transmit(s.wrap({ cla: 0x80, ins: 0x01, p1: 0, p2: 0, data: Uint8Array.of(5), le: 256 })));
    resp[0] ^= 0x01; // the data byte
    assert.throws(
      () => s.unwrap(resp),
      (e: unknown) => e instanceof Scp03Error && /R-MAC/.test(e.message),
    );
    assert.equal(s.open, false);
    // a forged "success" without R-MAC is not accepted either
    const s2 = (await Scp03Client.open(transmit, keys, { level: 0x11 })).session;
    transmit(s2.wrap({ cla: 0x80, ins: 0x01, p1: 0, p2: 0, data: Uint8Array.of(5), le: 256 }));
    assert.throws(() => s2.unwrap(unhex("059000")), Scp03Error);
  } finally {
    cleanup();
  }
});

test("wrong static keys: the host reports a wrong card cryptogram and the card counts the failure", async () => {
  const { card, keys, transmit, cleanup } = newCard();
  try {
    const wrong = { ...keySet(16), kvn: 0x30 };
    await assert.rejects(Scp03Client.open(transmit, wrong, { level: 0x01 }), (e: unknown) => e instanceof Scp03Error && /wrong card cryptogram/.test(e.message));
    assert.equal(card.state.scpFailures, 1);
    await assert.rejects(Scp03Client.open(transmit, wrong, { level: 0x01 }), Scp03Error);
    assert.equal(card.state.scpFailures, 2);
    // the secret keys are not in the error text
    try {
      await Scp03Client.open(transmit, wrong, { level: 0x01 });
    } catch (e) {
      for (const k of [keys.enc, keys.mac, keys.dek, wrong.enc, wrong.mac, wrong.dek]) assert.ok(!String(e).toLowerCase().includes(k));
    }
    await Scp03Client.open(transmit, keys, { level: 0x01 });
    assert.equal(card.state.scpFailures, 0, "a successful authentication resets the counter");
  } finally {
    cleanup();
  }
});

test("a wrong host cryptogram is refused with 6300 and counted", async () => {
  const { card, keys, transmit, cleanup } = newCard();
  try {
    const s = new Scp03HostSession(keys, { level: 0x01 });
    const ea = Uint8Array.from(s.authenticate(await transmitAll(transmit, s.initializeUpdate())));
    ea[6] ^= 0x80; // host cryptogram byte
    assert.equal(sw(transmit(ea)), 0x6300);
    assert.equal(card.state.scpFailures, 1);
    assert.equal(sw(transmit(ea)), 0x6985, "no second try on the same INITIALIZE UPDATE");
  } finally {
    cleanup();
  }
});

test("reaching the failure limit zeroizes the card", async () => {
  const { card, keys, transmit, cleanup } = newCard({ limit: 3 });
  try {
    for (let k = 1; k <= 3; k++) {
      const iu = parseResponse(transmit(unhex("8050000008" + "11".repeat(8) + "00")));
      assert.equal(iu.sw, 0x9000);
      const bogus = unhex("8482010010" + "00".repeat(16));
      assert.equal(sw(transmit(bogus)), 0x6300);
      assert.equal(card.state.lifecycle, k < 3 ? "OP_READY" : "TERMINATED");
    }
    assert.equal(card.state.keySets.length, 0);
    assert.equal(card.state.secretId, "");
    assert.match(card.state.terminatedReason ?? "", /secure channel/);
    for (const apdu of [unhex("8050000008" + "00".repeat(8) + "00"), selectEcho, unhex("80CA004500")]) assert.equal(sw(transmit(apdu)), 0x6285);
    await assert.rejects(Scp03Client.open(transmit, keys, { level: 0x01 }), Scp03Error);
  } finally {
    cleanup();
  }
});

test("abandoned INITIALIZE UPDATEs count too, and the next one past the limit zeroizes", () => {
  const { card, transmit, cleanup } = newCard({ limit: 2 });
  try {
    const iu = unhex("8050000008" + "22".repeat(8) + "00");
    assert.equal(sw(transmit(iu)), 0x9000);
    assert.equal(sw(transmit(iu)), 0x9000);
    assert.equal(card.state.scpFailures, 2);
    assert.equal(sw(transmit(iu)), 0x6285);
    assert.equal(card.state.lifecycle, "TERMINATED");
  } finally {
    cleanup();
  }
});

test("INITIALIZE UPDATE: wrong KVN 6A88, wrong length 6700, wrong P2 6A86; pseudo-random challenge from the counter", async () => {
  const { card, keys, transmit, cleanup } = newCard();
  try {
    assert.equal(sw(transmit(unhex("8050310008" + "00".repeat(8) + "00"))), 0x6a88);
    assert.equal(sw(transmit(unhex("8050300007" + "00".repeat(7) + "00"))), 0x6700);
    assert.equal(sw(transmit(unhex("8050300108" + "00".repeat(8) + "00"))), 0x6a86);
    const before = card.state.scpCounter;
    const challenges = new Set<string>();
    for (let k = 0; k < 3; k++) {
      const r = parseResponse(transmit(unhex("8050300008" + "00".repeat(8) + "00")));
      assert.equal(r.sw, 0x9000);
      assert.equal(r.data.length, 32);
      assert.deepEqual([...r.data.subarray(10, 13)], [0x30, 0x03, 0x70]);
      const seq = r.data.subarray(29, 32);
      assert.equal((seq[0] << 16) | (seq[1] << 8) | seq[2], before + k + 1);
      assert.equal(hex(r.data.subarray(13, 21)), hex(pseudoRandomChallenge(unhex(keys.enc), seq, ISD_AID)));
      assert.equal(hex(r.data.subarray(0, 10)), "0000" + card.state.cardId.toUpperCase(), "diversification data: the card ID right-aligned");
      challenges.add(hex(r.data.subarray(13, 21)));
    }
    assert.equal(challenges.size, 3);
  } finally {
    cleanup();
  }
});

test("SELECT ends the session; sessions are per logical channel", async () => {
  const { keys, transmit, cleanup } = newCard();
  try {
    const c0 = await Scp03Client.open(transmit, keys, { level: 0x03 });
    assert.deepEqual(parseResponse(transmit(unhex("0070000001"))), { data: Uint8Array.of(1), sw: 0x9000 });
    // channel 1: select echo and open its own session; channel 0's session stays
    assert.equal(sw(transmit(encodeCommand({ cla: 0x01, ins: 0xa4, p1: 4, p2: 0, data: ECHO_AID }))), 0x9000);
    const c1 = await Scp03Client.open(transmit, keys, { level: 0x33, channel: 1 });
    const r1 = await c1.send({ cla: 0x80, ins: 0x01, p1: 0, p2: 0, data: Uint8Array.of(4), le: 256 });
    assert.deepEqual([...r1.data], [4, 0xb3]);
    const r0 = await c0.send({ cla: 0x80, ins: 0xca, p1: 0, p2: 0x45, le: 256 });
    assert.equal(r0.sw, 0x9000);
    // SELECT on channel 0 ends channel 0's session only
    transmit(selectEcho);
    assert.equal(sw(transmit(c0.session.wrap({ cla: 0x80, ins: 0x01, p1: 0, p2: 0, le: 256 }))), 0x6982);
    const again = await c1.send({ cla: 0x80, ins: 0x01, p1: 0, p2: 0, data: Uint8Array.of(5), le: 256 });
    assert.deepEqual([...again.data], [5, 0xb3]);
  } finally {
    cleanup();
  }
});

test("EXTERNAL AUTHENTICATE without INITIALIZE UPDATE, or with a bad level, is refused", async () => {
  const { keys, transmit, cleanup } = newCard();
  try {
    assert.equal(sw(transmit(unhex("8482010010" + "00".repeat(16)))), 0x6985);
    const s = new Scp03HostSession(keys, { level: 0x01 });
    const ea = Uint8Array.from(s.authenticate(await transmitAll(transmit, s.initializeUpdate())));
    ea[2] = 0x31; // R-ENC without C-DEC is no valid level
    assert.equal(sw(transmit(ea)), 0x6a86);
  } finally {
    cleanup();
  }
});

test("a warm reset ends every session", async () => {
  const { card, keys, transmit, cleanup } = newCard();
  try {
    transmit(selectEcho);
    const c = await Scp03Client.open(transmit, keys, { level: 0x01 });
    card.reset();
    transmit(selectEcho);
    assert.equal(sw(transmit(c.session.wrap({ cla: 0x80, ins: 0x01, p1: 0, p2: 0 }))), 0x6982);
  } finally {
    cleanup();
  }
});
