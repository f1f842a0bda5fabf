// The vpcd connector: framing and reconnects against a fake vpcd, then a card through real pcscd + vpcd,
// driven with opensc-tool and scriptor. pcscd is set up by scripts/pcsc-up.sh (which installs missing
// packages): when that fails, these tests fail — they never skip.

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Applet } from "../card/applet.ts";
import { PowerLoss } from "../card/eeprom.ts";
import { CardRuntime } from "../card/runtime.ts";
import { CardError, SW } from "../protocol/sw.ts";
import { InProcessTransport } from "./transport.ts";
import { ensurePcscd, openscSend, readerAtr, run, scriptorSend, withAttachedCard } from "./pcsc.ts";
import { VPCD_READER, VpcdConnector } from "./vpcd.ts";
import { noSecureChannel as refuseAll } from "../../test/echo-applet.ts";

// ---- a tiny test card: echo applet + a secure channel that refuses everything (real ISD/PIV live elsewhere)

const ECHO_AID = Buffer.from("A000000308000010000100", "hex");
const FCI = Buffer.from("6108" + "4F06" + "A00000030800", "hex");

/** INS EE echoes the command data; INS CA answers P1P2 bytes of counting pattern (i & 0xff) ^ tag. */
function echoApplet(tag = 0): Applet {
  return {
    name: "echo",
    aid: ECHO_AID,
    select: () => FCI,
    process: (_ctx, cmd) => {
      if (cmd.ins === 0xee) return Uint8Array.from(cmd.data);
      if (cmd.ins === 0xca) return pattern((cmd.p1 << 8) | cmd.p2, tag);
      throw new CardError(SW.INS_NOT_SUPPORTED);
    },
  };
}

function pattern(n: number, tag = 0): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i & 0xff) ^ tag);
}

function makeCard(tag = 0): { card: CardRuntime; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "cardkms-vpcd-test-"));
  const card = CardRuntime.create(join(dir, "card.img"), randomBytes(32), {
    applets: [echoApplet(tag)],
    secureChannel: refuseAll,
    keySet: { kvn: 0x30, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") },
    durability: "none",
  });
  return {
    card,
    cleanup: () => {
      card.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const hexOf = (b: Uint8Array) => Buffer.from(b).toString("hex").toUpperCase();
const SELECT = "00A4040007A0000003080000";

// ---- fake vpcd: a TCP server speaking the vpcd side of the protocol

// Explicit: without a host the connector would use pcsc-up.sh's quick-ACK address, where the fake is not listening.
const LOOPBACK = "127.0.0.1";

interface FakeVpcd {
  server: Server;
  port: number;
  /** Resolves with the next connection. */
  nextConn(): Promise<Socket>;
  /** Sends one message and resolves with the answer, if one is expected. */
  ask(sock: Socket, msg: Uint8Array, answer?: boolean): Promise<Buffer | undefined>;
  close(): Promise<void>;
}

async function fakeVpcd(port = 0): Promise<FakeVpcd> {
  const conns: Socket[] = [];
  const waiters: ((s: Socket) => void)[] = [];
  const bufs = new Map<Socket, Buffer>();
  const server = createServer((s) => {
    bufs.set(s, Buffer.alloc(0));
    s.on("data", (d) => bufs.set(s, Buffer.concat([bufs.get(s)!, d])));
    s.on("error", () => undefined);
    const w = waiters.shift();
    if (w) w(s);
    else conns.push(s);
  });
  await new Promise<void>((r) => server.listen(port, LOOPBACK, r));
  const addr = server.address();
  assert.ok(addr && typeof addr === "object");
  const sockets = new Set<Socket>();
  server.on("connection", (s) => sockets.add(s));
  const readFrame = async (s: Socket): Promise<Buffer> => {
    for (let i = 0; i < 500; i++) {
      const b = bufs.get(s)!;
      if (b.length >= 2 && b.length >= 2 + b.readUInt16BE(0)) {
        const n = b.readUInt16BE(0);
        bufs.set(s, b.subarray(2 + n));
        return b.subarray(2, 2 + n);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error("no answer from the connector");
  };
  return {
    server,
    port: addr.port,
    nextConn: () =>
      new Promise<Socket>((resolve, reject) => {
        if (conns.length) return resolve(conns.shift()!);
        const t = setTimeout(() => reject(new Error("the connector did not connect to the fake vpcd")), 5000);
        waiters.push((s) => {
          clearTimeout(t);
          resolve(s);
        });
      }),
    ask: async (s, msg, answer = true) => {
      const f = Buffer.alloc(2 + msg.length);
      f.writeUInt16BE(msg.length, 0);
      f.set(msg, 2);
      // Split the frame across two writes to exercise reassembly.
      s.write(f.subarray(0, 1));
      await new Promise((r) => setTimeout(r, 5));
      s.write(f.subarray(1));
      return answer ? readFrame(s) : undefined;
    },
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

// ---- protocol tests (no pcscd)

test("vpcd protocol: ATR, control codes, APDUs, long frames", { timeout: 10 * 60_000 }, async () => {
  const { card, cleanup } = makeCard();
  const vpcd = await fakeVpcd();
  const conn = new VpcdConnector(card, { host: LOOPBACK, port: vpcd.port, lock: false });
  try {
    await conn.start();
    const s = await vpcd.nextConn();
    assert.deepEqual(await vpcd.ask(s, Uint8Array.of(0x04)), Buffer.from(card.atr));
    assert.equal(await vpcd.ask(s, Uint8Array.of(0x01), false), undefined); // power on: no answer
    assert.deepEqual(await vpcd.ask(s, Uint8Array.of(0x04)), Buffer.from(card.atr));
    await conn.waitReady(5000);
    assert.equal(hexOf((await vpcd.ask(s, Buffer.from(SELECT, "hex")))!), hexOf(FCI) + "9000");
    // A 3000-byte echo with extended lengths, and a 4000-byte extended response.
    const big = randomBytes(3000);
    const echo = Buffer.concat([Buffer.from("00EE000000", "hex"), Buffer.from([big.length >> 8, big.length & 0xff]), big, Buffer.from("0000", "hex")]);
    assert.deepEqual(await vpcd.ask(s, echo), Buffer.concat([big, Buffer.from("9000", "hex")]));
    const r = (await vpcd.ask(s, Buffer.from("00CA0FA0000FA0", "hex")))!;
    assert.equal(r.length, 4002);
    assert.deepEqual(r.subarray(0, 4000), Buffer.from(pattern(4000)));
    // Reset (no answer) drops the selection: the ISD slot is the echo applet here, so SELECT state is gone but
    // the card still answers; a malformed APDU is answered 6700 by the runtime, not by the connector.
    await vpcd.ask(s, Uint8Array.of(0x02), false);
    assert.equal(hexOf((await vpcd.ask(s, Buffer.from("00EE0000050102", "hex")))!), "6700");
    await vpcd.ask(s, Uint8Array.of(0x00), false);
    for (let i = 0; i < 100 && conn.stats.powerOff === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(conn.stats, { connects: 1, apdus: 4, atrRequests: 2, powerOn: 1, powerOff: 1, resets: 1 });
  } finally {
    await conn.close();
    await vpcd.close();
    cleanup();
  }
});

test("vpcd connector retries until vpcd is up, reconnects after a drop, closes cleanly", { timeout: 10 * 60_000 }, async () => {
  const { card, cleanup } = makeCard();
  // Find a free port, then leave it closed for a while.
  const probe = await fakeVpcd();
  const port = probe.port;
  await probe.close();
  const conn = new VpcdConnector(card, { host: LOOPBACK, port, lock: false, minBackoffMs: 20, maxBackoffMs: 100 });
  const disconnects: string[] = [];
  conn.on("disconnect", (why: string) => disconnects.push(why));
  let vpcd: FakeVpcd | undefined;
  try {
    await conn.start();
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(conn.state, "connecting");
    assert.ok(disconnects.includes("ECONNREFUSED"), `refused attempts: ${disconnects.join(",")}`);
    vpcd = await fakeVpcd(port);
    const s1 = await vpcd.nextConn();
    assert.deepEqual(await vpcd.ask(s1, Uint8Array.of(0x04)), Buffer.from(card.atr));
    s1.destroy(); // vpcd drops the card (e.g. pcscd restarted)
    const s2 = await vpcd.nextConn();
    await vpcd.ask(s2, Uint8Array.of(0x01), false);
    assert.deepEqual(await vpcd.ask(s2, Uint8Array.of(0x04)), Buffer.from(card.atr));
    await conn.waitReady(5000);
    assert.equal(conn.stats.connects, 2);
    const closed = new Promise<void>((r) => s2.once("close", () => r()));
    await conn.close();
    await closed; // the reader sees the card removed
    assert.equal(conn.state, "closed");
    await conn.close(); // idempotent
    await assert.rejects(conn.waitReady(100), /closed/);
  } finally {
    await conn.close();
    await vpcd?.close();
    cleanup();
  }
});

test("a card that loses power is removed from the reader and not reconnected", { timeout: 10 * 60_000 }, async () => {
  const vpcd = await fakeVpcd();
  const atr = CardRuntime.ATR;
  const dead = {
    atr,
    reset: () => atr,
    transmit: (): Uint8Array => {
      throw new PowerLoss(3);
    },
  };
  const conn = new VpcdConnector(dead, { host: LOOPBACK, port: vpcd.port, lock: false, minBackoffMs: 10 });
  try {
    const failed = new Promise<Error>((r) => conn.once("cardFailure", r));
    await conn.start();
    const s = await vpcd.nextConn();
    const gone = new Promise<void>((r) => s.once("close", () => r()));
    await vpcd.ask(s, Buffer.from(SELECT, "hex"), false);
    assert.ok((await failed) instanceof PowerLoss);
    await gone;
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(conn.state, "failed");
    assert.equal(conn.stats.connects, 1);
  } finally {
    await conn.close();
    await vpcd.close();
  }
});

test("InProcessTransport copies bytes and refuses use after close", async () => {
  const { card, cleanup } = makeCard();
  try {
    const t = new InProcessTransport(card);
    const cmd = Buffer.from("00EE0000030A0B0C", "hex");
    const r = await t.transmit(cmd);
    assert.equal(hexOf(r), "0A0B0C9000");
    cmd.fill(0);
    assert.equal(hexOf(r), "0A0B0C9000");
    await t.close();
    await t.close();
    await assert.rejects(t.transmit(cmd), /closed/);
  } finally {
    cleanup();
  }
});

// ---- through real pcscd + vpcd

test("pcscd + vpcd: opensc-tool and scriptor reach the card", { timeout: 10 * 60_000 }, async () => {
  await ensurePcscd();
  const { card, cleanup } = makeCard();
  try {
    await withAttachedCard(card, async (conn) => {
      assert.equal(await readerAtr(), hexOf(card.atr));

      // opensc-tool (default driver): SELECT, echo, and a 600-byte answer to a short Le, which OpenSC
      // collects with GET RESPONSE after our 61xx.
      const r = await openscSend([SELECT, "00EE00000401020304", "00EE0000022041", "00CA025800"]);
      assert.equal(r[0].sw, 0x9000);
      assert.equal(hexOf(r[0].data), hexOf(FCI));
      assert.equal(hexOf(r[1].data), "01020304");
      assert.equal(hexOf(r[2].data), "2041");
      assert.equal(r[3].sw, 0x9000);
      assert.equal(hexOf(r[3].data), hexOf(pattern(600)));
      assert.ok(conn.stats.apdus >= 5, `the card saw ${conn.stats.apdus} APDUs`);

      // scriptor (raw SCardTransmit): explicit 61xx + GET RESPONSE chain, extended Le, extended Lc.
      const big = randomBytes(1500);
      const s = await scriptorSend([
        SELECT,
        "00CA025800", // 256 bytes + 61 00 (344 remain, >= 256)
        "00C0000000", // next 256 + 61 58
        "00C0000058", // last 88 + 90 00
        "00CA0258000000", // extended Le: all 600 at once
        "00EE000000" + big.length.toString(16).padStart(4, "0") + big.toString("hex") + "0000",
      ]);
      assert.equal(s[1].sw, 0x6100);
      assert.equal(s[2].sw, 0x6158);
      assert.equal(s[3].sw, 0x9000);
      assert.equal(hexOf(Buffer.concat([s[1].data, s[2].data, s[3].data])), hexOf(pattern(600)));
      assert.equal(s[4].sw, 0x9000);
      assert.equal(hexOf(s[4].data), hexOf(pattern(600)));
      assert.equal(s[5].sw, 0x9000);
      assert.equal(hexOf(s[5].data), hexOf(big));
    });

    // After withAttachedCard, the card is out of the reader.
    const deadline = Date.now() + 5000;
    let listed = "";
    while (Date.now() < deadline) {
      listed = (await run("opensc-tool", ["-l"])).stdout;
      const line = listed.split("\n").find((l) => l.includes(VPCD_READER)) ?? "";
      if (/^\d+\s+No\s/.test(line)) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.match(listed.split("\n").find((l) => l.includes(VPCD_READER)) ?? "", /^\d+\s+No\s/, listed);
  } finally {
    cleanup();
  }
});

test("pcscd + vpcd: the next card attaches after the previous one left", { timeout: 10 * 60_000 }, async () => {
  await ensurePcscd();
  for (const tag of [0x55, 0xaa]) {
    const { card, cleanup } = makeCard(tag);
    try {
      await withAttachedCard(card, async () => {
        const r = await openscSend([SELECT, "00CA000400"]);
        assert.equal(hexOf(r[1].data), hexOf(pattern(4, tag)), "answer must come from the card attached now");
      });
    } finally {
      cleanup();
    }
  }
});
