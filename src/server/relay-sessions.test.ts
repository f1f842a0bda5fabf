// Relay sessions are bounded: they expire after their TTL, at most `max` are open, and only their opener may
// advance them; they are kept in the system DB (issue 16 §1), so the same suite runs on SQLite and PostgreSQL, and a
// second RelaySessions on another connection to the same DB plays a second server. A pinned clock, not timers, moves
// time. TtlMap (in memory, for live-relay.ts) keeps its own tests.
import { test } from "node:test";
import assert from "node:assert/strict";
import { TRANSPORT_KEY_SET } from "../card/card.ts";
import { ISD_AID } from "../protocol/scp03/sm.ts";
import { SessionRepository } from "../store/relay-session-repository.ts";
import { testEngines } from "../../test/support/store-testing.ts";
import { ApiProblem } from "./problem.ts";
import { RelaySessions, TtlMap, type RelaySessionsOptions } from "./relay-sessions.ts";

const status = (p: unknown) => (p instanceof ApiProblem ? p.status : p);
const recipe = { kind: "test" };
const finished: string[] = [];
/** Two servers on one DB: each with its own RelaySessions and the same recipe. */
async function servers(engine: ReturnType<typeof testEngines>[number], o: Omit<RelaySessionsOptions, "repository">, clock: () => number) {
  const t = await engine.create();
  const make = (db: typeof t.db) => {
    const r = new RelaySessions({ ...o, repository: new SessionRepository(db, { now: clock }) });
    r.register("test", async () => ({ scripts: [{ keys: { ...TRANSPORT_KEY_SET }, aid: ISD_AID, commands: [], check: () => {} }], finish: async (_r, owner) => void finished.push(owner) }));
    return r;
  };
  return { a: make(t.db), b: make(t.reopen()), drop: () => t.drop() };
}

for (const engine of testEngines()) {
  test(`${engine.name}: a session expires after its TTL, the count is capped, and only the opener advances it (on any server)`, async () => {
    let now = 1_000_000;
    const { a: relays, b: other, drop } = await servers(engine, { ttlMs: 300_000, max: 2 }, () => now);
    try {
      const a = await relays.open("olga", recipe);
      await relays.open("olga", recipe);
      await assert.rejects(relays.open("olga", recipe), (e) => status(e) === 429);
      await assert.rejects(other.open("olga", recipe), (e) => status(e) === 429, "the bound is the database's, not one server's");
      await assert.rejects(other.next(a.sessionId, "mallory", [new Uint8Array([0x90, 0]), new Uint8Array([0x90, 0])]), (e) => status(e) === 403);
      // a malformed round fails the session with a 422 naming the reason, and the session is gone
      await assert.rejects(other.next(a.sessionId, "olga", [new Uint8Array([0x6a, 0x82]), new Uint8Array([0x90, 0])]), (e) => status(e) === 422 && /SELECT/.test((e as Error).message));
      await assert.rejects(relays.next(a.sessionId, "olga", []), (e) => status(e) === 404);
      now += 300_000; // the second session has expired now: it makes room
      const c = await relays.open("olga", recipe);
      await relays.open("olga", recipe);
      await assert.rejects(relays.open("olga", recipe), (e) => status(e) === 429);
      now += 299_999;
      await assert.rejects(other.next(c.sessionId, "olga", [new Uint8Array([0x90, 0])]), (e) => status(e) === 422);
      now += 1;
      assert.equal(finished.length, 0);
    } finally {
      await drop();
    }
  });

  // ---- issue 9 §2: no one principal, card or client takes every place ---------------------------------------------

  test(`${engine.name}: RelaySessions: one principal holds at most perOwner sessions (429); the others still open theirs`, async () => {
    const { a: relays, b: other, drop } = await servers(engine, { max: 100, perOwner: 3 }, Date.now);
    try {
      for (let i = 0; i < 3; i++) await (i % 2 ? other : relays).open("terminal:card-a", recipe);
      await assert.rejects(relays.open("terminal:card-a", recipe), (e) => status(e) === 429 && /at most 3 relay sessions per principal/.test((e as Error).message));
      await other.open("olga", recipe);
    } finally {
      await drop();
    }
  });
}

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
