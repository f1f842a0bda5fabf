// Relay sessions are bounded: they expire after their TTL, at most `max` are open, and only their opener may
// advance them. A pinned clock, not timers, moves time.
import { test } from "node:test";
import assert from "node:assert/strict";
import { TRANSPORT_KEY_SET } from "../card/card.ts";
import { ISD_AID } from "../card/scp03/sm.ts";
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
  assert.throws(() => relays.open("olga", session(), async () => {}), (e) => status(e) === 429);
  await assert.rejects(relays.next(a.sessionId, "mallory", [new Uint8Array([0x90, 0]), new Uint8Array([0x90, 0])]), (e) => status(e) === 403);
  // a malformed round fails the session with a 422 naming the reason, and the session is gone
  await assert.rejects(relays.next(a.sessionId, "olga", [new Uint8Array([0x6a, 0x82]), new Uint8Array([0x90, 0])]), (e) => status(e) === 422 && /SELECT/.test((e as Error).message));
  await assert.rejects(relays.next(a.sessionId, "olga", []), (e) => status(e) === 404);
  now += 300_000; // the second session has expired now: it makes room
  const c = relays.open("olga", session(), async () => {});
  relays.open("olga", session(), async () => {});
  assert.equal(relays.size, 2);
  assert.throws(() => relays.open("olga", session(), async () => {}), (e) => status(e) === 429);
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
