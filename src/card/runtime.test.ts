import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { CardRuntime } from "./runtime.ts";
import { encodeCommand } from "../protocol/apdu.ts";
import { EchoApplet, noSecureChannel } from "../../test/echo-applet.ts";
import { dataOf, h, swOf, tempDir } from "../../test/helpers.ts";

const dir = tempDir();
const key = randomBytes(32);
const keySet = { kvn: 0x30, enc: "40".repeat(16), mac: "41".repeat(16), dek: "42".repeat(16) };
let n = 0;
function newCard(capacity?: number): CardRuntime {
  return CardRuntime.create(join(dir, `c${n++}.card`), key, { applets: [new EchoApplet(Uint8Array.from([0xa0, 0, 0, 0, 0x01])), new EchoApplet()], secureChannel: noSecureChannel, keySet, capacity });
}
const SELECT_ECHO = h("00A4040006F0636B6D730100");

test("SELECT by full and partial AID, unknown AID is 6A82", () => {
  const c = newCard();
  assert.equal(swOf(c.transmit(SELECT_ECHO)), 0x9000);
  assert.equal(swOf(c.transmit(h("00A4040005F0636B6D7300"))), 0x9000);
  assert.equal(swOf(c.transmit(h("00A4040005F0636B6D7400"))), 0x6a82);
  assert.equal(swOf(c.transmit(h("00A4040002F06300"))), 0x6a80);
});

test("long responses: 61xx and GET RESPONSE in short mode, whole in extended mode", () => {
  const c = newCard();
  c.transmit(SELECT_ECHO);
  let r = c.transmit(h("0002000300")); // 768 bytes, Le 256
  assert.equal(swOf(r), 0x6100);
  const got = [...dataOf(r)];
  while ((swOf(r) & 0xff00) === 0x6100) {
    r = c.transmit(h("00C0000000"));
    got.push(...dataOf(r));
  }
  assert.equal(swOf(r), 0x9000);
  assert.equal(got.length, 768);
  assert.deepEqual(got.slice(250, 260), [250, 251, 252, 253, 254, 255, 0, 1, 2, 3]);
  r = c.transmit(encodeCommand({ cla: 0, ins: 2, p1: 0, p2: 3, le: 65536 }));
  assert.equal(swOf(r), 0x9000);
  assert.equal(dataOf(r).length, 768);
  assert.equal(swOf(c.transmit(h("00C0000000"))), 0x6985, "nothing pending any more");
});

test("command chaining gathers parts; an interrupted chain is refused", () => {
  const c = newCard();
  c.transmit(SELECT_ECHO);
  assert.equal(swOf(c.transmit(h("1001000002AABB"))), 0x9000);
  assert.equal(swOf(c.transmit(h("1001000001CC"))), 0x9000);
  const r = c.transmit(h("0001000001DD00"));
  assert.equal(swOf(r), 0x9000);
  assert.deepEqual([...dataOf(r)], [0xaa, 0xbb, 0xcc, 0xdd]);
  assert.equal(swOf(c.transmit(h("1001000001AA"))), 0x9000);
  assert.equal(swOf(c.transmit(h("0003000001BB"))), 0x6883, "different INS in the middle of a chain");
  const after = c.transmit(h("0001000001EE00"));
  assert.deepEqual([...dataOf(after)], [0xee], "the broken chain was discarded");
});

test("class and instruction errors, applet bugs never escape", () => {
  const c = newCard();
  c.transmit(SELECT_ECHO);
  assert.equal(swOf(c.transmit(h("FF010000"))), 0x6e00);
  assert.equal(swOf(c.transmit(h("00990000"))), 0x6d00);
  assert.equal(swOf(c.transmit(h("0001"))), 0x6700);
  assert.equal(swOf(c.transmit(h("00050000"))), 0x6f00);
  assert.equal(swOf(c.transmit(h("0C010000"))), 0x6982, "SM without a session");
  assert.equal(swOf(c.transmit(h("01010000"))), 0x6881, "closed channel");
  assert.equal(swOf(c.transmit(h("60010000"))), 0x6881, "channel 4+ unsupported");
});

test("logical channels keep their own selection", () => {
  const c = newCard();
  const r = c.transmit(h("0070000001"));
  assert.deepEqual([...r], [0x01, 0x90, 0x00]);
  assert.equal(swOf(c.transmit(h("01A4040006F0636B6D730100"))), 0x9000);
  assert.deepEqual([...c.transmit(h("0101000001AB00"))], [0xab, 0x90, 0x00]);
  assert.equal(swOf(c.transmit(h("0001000001AB00"))), 0x9000, "channel 0 still has the first applet");
  assert.equal(swOf(c.transmit(h("00708001"))), 0x9000);
  assert.equal(swOf(c.transmit(h("0101000001AB00"))), 0x6881);
});

test("state persists across power cycles and a full card answers 6A84 and loses nothing", () => {
  const c = newCard(100);
  c.transmit(SELECT_ECHO);
  assert.equal(swOf(c.transmit(new Uint8Array([0, 3, 0, 0, 50, ...randomBytes(50)]))), 0x9000);
  const kept = [...dataOf(c.transmit(h("0004000000")))];
  assert.equal(swOf(c.transmit(new Uint8Array([0, 3, 0, 0, 150, ...randomBytes(150)]))), 0x6a84);
  c.close();
  const d = CardRuntime.open(c.path, key, { applets: [new EchoApplet()], secureChannel: noSecureChannel });
  d.transmit(SELECT_ECHO);
  assert.deepEqual([...dataOf(d.transmit(h("0004000000")))], kept);
});
