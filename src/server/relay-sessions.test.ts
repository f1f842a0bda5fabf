// Relay sessions are bounded: they expire after their TTL, at most `max` are open, and only their opener may
// advance them. A pinned clock, not timers, moves time.
import { test } from "node:test";
import assert from "node:assert/strict";
import { TRANSPORT_KEY_SET } from "../card/card.ts";
import { ISD_AID } from "../protocol/scp03/sm.ts";
import { RelaySession } from "../issuer/relay.ts";
import { ApiProblem } from "./problem.ts";
import { RelaySessions, TtlMap } from "./relay-sessions.ts";

const session = () => new RelaySession({ ...TRANSPORT_KEY_SET }, ISD_AID, []);
const status = (p: unknown) => (p instanceof ApiProblem ? p.status : p);

test("a session expires after its TTL, the count is capped, and only the opener advances it", async () => {
  let now = 1_000_000;
  const relays = new RelaySessions({ ttlMs: 300_000, max: 2, now: () => now });
  const a = relays.open("olga", session(), async () => {});
  relays.open("olga", session(), async () => {});
  assert.throws(
    () => relays.open("olga", session(), async () => {}),
    (e) => status(e) === 429,
  );
  await assert.rejects(relays.next(a.sessionId, "mallory", [new Uint8Array([0x90, 0]), new Uint8Array([0x90, 0])]), (e) => status(e) === 403);
  // a malformed round fails the session with a 422 naming the reason, and the session is gone
  await assert.rejects(relays.next(a.sessionId, "olga", [new Uint8Array([0x6a, 0x82]), new Uint8Array([0x90, 0])]), (e) => status(e) === 422 && /SELECT/.test((e as Error).message));
  await assert.rejects(relays.next(a.sessionId, "olga", []), (e) => status(e) === 404);
  now += 300_000; // the second session has expired now: it makes room
  const c = relays.open("olga", session(), async () => {});
  relays.open("olga", session(), async () => {});
  assert.equal(relays.size, 2);
  assert.throws(
    () => relays.open("olga", session(), async () => {}),
    (e) => status(e) === 429,
  );
  now += 299_999;
  await assert.rejects(relays.next(c.sessionId, "olga", [new Uint8Array([0x90, 0])]), (e) => status(e) === 422);
});

test("TtlMap: entries read as absent once expired", () => {
  let now = 0;
  const m = new TtlMap<string>({ ttlMs: 10, max: 5, now: () => now });
  const { id } = m.add("v", "test");
  now = 9;
  assert.equal(m.get(id), "v");
  now = 10;
  assert.equal(m.get(id), undefined);
  assert.equal(m.size, 0);
});

// ---- issue 9 §2: no one principal, card or client takes every place ---------------------------------------------

test("RelaySessions: one principal holds at most perOwner sessions (429); the others still open theirs", () => {
  const relays = new RelaySessions({ max: 100, perOwner: 3 });
  for (let i = 0; i < 3; i++) relays.open("terminal:card-a", session(), async () => {});
  assert.throws(
    () => relays.open("terminal:card-a", session(), async () => {}),
    (e) => status(e) === 429 && /at most 3 relay sessions per principal/.test((e as Error).message),
  );
  relays.open("olga", session(), async () => {});
  assert.equal(relays.size, 4);
});

test("TtlMap groups: a group at its bound retires its oldest (or refuses); other groups are untouched", () => {
  let now = 0;
  const retired: string[] = [];
  const m = new TtlMap<string>({ ttlMs: 100, max: 1000, now: () => now, onRetire: (b) => retired.push(b) });
  const card = (key: string) => [{ name: "card", key, max: 2, whenFull: "retire-oldest" as const }];
  const a1 = m.add("a1", "t", { groups: card("A") }).id;
  const b1 = m.add("b1", "t", { groups: card("B") }).id;
  const a2 = m.add("a2", "t", { groups: card("A") }).id;
  const a3 = m.add("a3", "t", { groups: card("A") }).id;
  assert.equal(m.get(a1), undefined, "A's oldest was retired for its newest");
  assert.deepEqual([m.get(a2), m.get(a3), m.get(b1)], ["a2", "a3", "b1"]);
  assert.deepEqual(retired, ["card"]);
  // an expired member makes room without retiring anyone
  now = 100;
  m.add("a4", "t", { groups: card("A") });
  assert.deepEqual(retired, ["card"]);
  // a refusing group refuses and changes nothing
  const owner = [{ name: "principal", key: "olga", max: 1, whenFull: "refuse" as const }];
  const o1 = m.add("o1", "t", { groups: owner }).id;
  assert.throws(
    () => m.add("o2", "t", { groups: owner }),
    (e) => status(e) === 429,
  );
  assert.equal(m.get(o1), "o1");
});

test("TtlMap whenFull retire-oldest: a full table makes room by retiring its oldest entry instead of refusing", () => {
  const retired: string[] = [];
  const m = new TtlMap<number>({ ttlMs: 1000, max: 3, whenFull: "retire-oldest", onRetire: (b) => retired.push(b) });
  const ids = [1, 2, 3, 4, 5].map((v) => m.add(v, "t").id);
  assert.equal(m.size, 3);
  assert.deepEqual(
    ids.map((id) => m.get(id)),
    [undefined, undefined, 3, 4, 5],
  );
  assert.deepEqual(retired, ["total", "total"]);
  // refuse (the default) keeps what it holds
  const r = new TtlMap<number>({ ttlMs: 1000, max: 1 });
  r.add(1, "t");
  assert.throws(
    () => r.add(2, "t"),
    (e) => status(e) === 429,
  );
});
