// Live relay sessions (live-relay.ts): an operation with an async transmit, driven one APDU per round trip; owner,
// one round at a time, bounds, and expiry refusing the parked APDU so that the operation ends. The clock is
// injected: expiry is observed by advancing it, never by waiting.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ApiProblem } from "./problem.ts";
import { LiveRelayAborted, LiveRelaySessions, type LiveTransmit } from "./live-relay.ts";

const b = (...x: number[]) => Uint8Array.from(x);
const status = (code: number) => (e: unknown) => e instanceof ApiProblem && e.status === code;

/** Sends 3 APDUs, each naming the previous response's first byte; returns the responses' first bytes. */
const echo = async (transmit: LiveTransmit) => {
  const seen: number[] = [];
  let prev = 0;
  for (let i = 1; i <= 3; i++) prev = (await transmit(b(i, prev)))[0];
  seen.push(prev);
  return seen;
};

test("one APDU per round, each decided after the previous response; the result ends the session", async () => {
  const lives = new LiveRelaySessions<number[]>();
  const { sessionId, step } = await lives.open("olga", echo);
  assert.deepEqual(step, { apdus: [b(1, 0)] });
  assert.equal(lives.size, 1);
  await assert.rejects(lives.next(sessionId, "ada", [b(7)]), status(403));
  assert.deepEqual(await lives.next(sessionId, "olga", [b(10, 0x90, 0)]), { apdus: [b(2, 10)] });
  await assert.rejects(lives.next(sessionId, "olga", [b(1), b(2)]), status(400));
  assert.deepEqual(await lives.next(sessionId, "olga", [b(20)]), { apdus: [b(3, 20)] });
  assert.deepEqual(await lives.next(sessionId, "olga", [b(30)]), { result: [30] });
  assert.equal(lives.size, 0);
  await assert.rejects(lives.next(sessionId, "olga", [b(1)]), status(404));
});

test("a refusal of the operation reaches the caller; one that ends before transmitting leaves no session", async () => {
  const lives = new LiveRelaySessions<string>();
  await assert.rejects(
    lives.open("olga", async () => {
      throw new Error("not satisfied");
    }),
    /not satisfied/,
  );
  assert.equal(lives.size, 0);
  const { sessionId } = await lives.open("olga", async (t) => {
    const r = await t(b(1));
    if (r[0] !== 0x90) throw new Error(`refused: ${r[0]}`);
    return "ok";
  });
  await assert.rejects(lives.next(sessionId, "olga", [b(0x6a)]), /refused: 106/);
  assert.equal(lives.size, 0);
});

test("bounded: at most max at once (429), and an expired session refuses its parked APDU so the operation ends", async () => {
  let now = 1_000;
  const lives = new LiveRelaySessions<string>({ ttlMs: 60_000, max: 1, now: () => now });
  let ended: unknown;
  const { sessionId } = await lives.open("olga", async (t) => {
    try {
      await t(b(1));
      return "answered";
    } catch (e) {
      ended = e;
      throw e;
    }
  });
  await assert.rejects(
    lives.open("olga", async () => "x"),
    status(429),
  );
  now += 60_000;
  await assert.rejects(lives.next(sessionId, "olga", [b(0x90)]), status(404));
  await new Promise((r) => setImmediate(r));
  assert.ok(ended instanceof LiveRelayAborted, "the operation saw its APDU refused");
  assert.equal(lives.size, 0);
  assert.deepEqual((await lives.open("olga", async () => "again")).step, { result: "again" });
});

test("close refuses every parked APDU and waits for the operations to end", async () => {
  const lives = new LiveRelaySessions<string>();
  let cleaned = false;
  await lives.open("olga", async (t) => {
    try {
      await t(b(1));
      return "answered";
    } finally {
      await Promise.resolve();
      cleaned = true;
    }
  });
  await lives.close();
  assert.equal(cleaned, true);
  await assert.rejects(
    lives.open("olga", async () => "x"),
    status(503),
  );
});

test("issue 9 §2: one principal holds at most perOwner live sessions (429, nothing runs); another still opens one", async () => {
  const lives = new LiveRelaySessions<number[]>({ max: 100, perOwner: 2 });
  await lives.open("olga", echo);
  await lives.open("olga", echo);
  let ran = false;
  await assert.rejects(
    lives.open("olga", async (t) => ((ran = true), echo(t))),
    (e) => status(429)(e) && /per principal/.test((e as Error).message),
  );
  assert.equal(ran, false, "the refused operation never started");
  await lives.open("ada", echo);
  assert.equal(lives.size, 3);
  await lives.close();
});
