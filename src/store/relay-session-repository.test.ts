// Relay sessions, login handshakes and terminal tokens in the DB (issue 16 §1), the same suite on SQLite and
// PostgreSQL: rows expire at expires_at (store clock) and the sweep deletes them in bounded batches; the bounds are
// counted over the live rows (relay sessions refused per owner and in all, handshakes and tokens retiring the oldest);
// two servers taking the same relay round: exactly one wins (version); a handshake is taken once. A second connection
// to the same DB plays the second server. A pinned clock, not timers, moves time.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { SessionRepository } from "./relay-session-repository.ts";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";

const T0 = Date.UTC(2026, 11, 1);
const id = () => randomBytes(16).toString("hex");

for (const engine of testEngines()) {
  describe(`session repository on ${engine.name}`, () => {
    let t: TestDatabase;
    let a: SessionRepository;
    let b: SessionRepository;
    let clock = T0;
    before(async () => {
      t = await engine.create();
      a = new SessionRepository(t.db, { now: () => clock, sweepBatch: 3 });
      b = new SessionRepository(t.reopen(), { now: () => clock, sweepBatch: 3 });
    });
    after(async () => {
      await t?.drop();
    });

    const relay = (owner: string, o: { perOwner?: number; max?: number; ttlMs?: number } = {}) =>
      a.openRelay({ id: id(), owner, recipe: "{}", state: "{}", ttlMs: o.ttlMs ?? 1000, perOwner: o.perOwner ?? 2, max: o.max ?? 100 });

    test("relay sessions: per owner and in all, refused at the bound; expired ones free their place and read as absent", async () => {
      const owner = `olga-${id()}`;
      assert.ok("expiresAt" in (await relay(owner)));
      assert.ok("expiresAt" in (await relay(owner)));
      assert.deepEqual(await relay(owner), { refused: "owner" });
      assert.ok("expiresAt" in (await relay(`other-${id()}`)), "another owner still opens one");
      const s = id();
      await a.openRelay({ id: s, owner: `x-${id()}`, recipe: '{"kind":"k"}', state: '{"step":1}', ttlMs: 500, perOwner: 5, max: 100 });
      assert.equal((await b.getRelay(s))?.recipe, '{"kind":"k"}', "the second server reads it");
      clock += 500;
      assert.equal(await b.getRelay(s), undefined, "expired at expires_at");
      assert.equal(await b.advanceRelay(s, 1, "{}"), false, "an expired session does not advance");
      clock += 500;
      assert.ok("expiresAt" in (await relay(owner)), "the owner's expired sessions no longer count");
      assert.deepEqual(await relay(`y-${id()}`, { max: 1 }), { refused: "total" }, "one live row: a table bound of 1 refuses");
      assert.ok("expiresAt" in (await relay(`y-${id()}`, { max: 2 })), "the expired rows do not count");
    });

    test("a round is taken once: of two servers writing the same version, one wins; a finished session is gone", async () => {
      const s = id();
      await a.openRelay({ id: s, owner: "olga", recipe: "{}", state: "r1", ttlMs: 60_000, perOwner: 100, max: 1000 });
      const [ra, rb] = await Promise.all([a.getRelay(s), b.getRelay(s)]);
      assert.equal(ra?.version, 1);
      const won = await Promise.all([a.advanceRelay(s, ra!.version, "r2-a"), b.advanceRelay(s, rb!.version, "r2-b")]);
      assert.deepEqual(won.sort(), [false, true]);
      const now = await a.getRelay(s);
      assert.equal(now?.version, 2);
      assert.equal(await b.advanceRelay(s, 1, "replayed round 1"), false, "a consumed round cannot be written again");
      assert.equal(await a.removeRelay(s, 1), false, "a stale round does not remove it");
      assert.equal(await b.removeRelay(s, 2), true);
      assert.equal(await a.getRelay(s), undefined);
      assert.equal(await a.advanceRelay(s, 2, "after the end"), false);
    });

    test("the sweep deletes expired rows in bounded batches", async () => {
      const before = (await a.counts()).relaySessions;
      for (let i = 0; i < 5; i++) await relay(`sweep-${id()}`, { ttlMs: 10 });
      clock += 10_000;
      assert.equal((await a.counts()).relaySessions, before + 5, "expired rows stay until a sweep");
      const n = await a.sweep();
      assert.equal(n, 3, "at most sweepBatch per table");
      await a.sweep();
      await a.sweep();
      assert.equal((await a.counts()).relaySessions, 0);
      assert.equal(await a.sweep(), 0);
    });

    test("handshakes: per card and client, per card and in all, a new one retires the oldest; taken once, by one server", async () => {
      const card = `card-${id()}`;
      const add = (client: string, o: { perCard?: number; perCardClient?: number; max?: number; cardId?: string } = {}) => {
        const hid = id();
        return a
          .addHandshake({
            id: hid,
            cardId: o.cardId ?? card,
            client,
            keySetId: "ks",
            host: '{"kvn":1}',
            startedAt: clock,
            ttlMs: 60_000,
            perCard: o.perCard ?? 4,
            perCardClient: o.perCardClient ?? 2,
            max: o.max ?? 1000,
          })
          .then((retired) => ({ hid, retired }));
      };
      const first = await add("10.0.0.1");
      await add("10.0.0.1");
      const third = await add("10.0.0.1");
      assert.deepEqual(third.retired, ["card-client"]);
      assert.equal(await b.takeHandshake(first.hid, card), undefined, "the client's oldest was retired");
      const other = await add("10.0.0.2");
      await add("10.0.0.3");
      const crowd = await add("10.0.0.4");
      assert.deepEqual(crowd.retired, ["card"], "four per card: the card's oldest goes");
      assert.equal(await b.takeHandshake(other.hid, `card-${id()}`), undefined, "another card's session ID is not this card's");
      const [x, y] = await Promise.all([a.takeHandshake(crowd.hid, card), b.takeHandshake(crowd.hid, card)]);
      assert.equal([x, y].filter(Boolean).length, 1, "two servers finishing one handshake: one gets it");
      assert.equal((x ?? y)?.host, '{"kvn":1}');
      const late = await add("10.0.0.5");
      clock += 60_000;
      assert.equal(await a.takeHandshake(late.hid, card), undefined, "expired");
      // the table's bound retires the oldest of any card
      const t1 = await add("10.9.0.1", { cardId: `c1-${id()}`, max: 2 });
      await add("10.9.0.2", { cardId: `c2-${id()}`, max: 2 });
      const t3 = await add("10.9.0.3", { cardId: `c3-${id()}`, max: 2 });
      assert.deepEqual(t3.retired, ["total"]);
      assert.equal(await a.takeHandshake(t1.hid, "whatever"), undefined);
    });

    test("tokens: only the hash; per card the oldest retired; the table's bound refuses; expiry", async () => {
      const card = `card-${id()}`;
      const issue = (o: { perCard?: number; max?: number; cardId?: string } = {}) => {
        const hash = randomBytes(32).toString("hex");
        return a.addToken({ tokenHash: hash, cardId: o.cardId ?? card, statusVersion: 3, ttlMs: 1000, perCard: o.perCard ?? 2, max: o.max ?? 1000 }).then((r) => ({ hash, r }));
      };
      const t1 = await issue();
      const t2 = await issue();
      const t3 = await issue();
      assert.deepEqual("retired" in t3.r && t3.r.retired, 1);
      assert.equal(await b.getToken(t1.hash), undefined, "the card's oldest retired");
      assert.deepEqual(await b.getToken(t2.hash), { cardId: card, statusVersion: 3, expiresAt: clock + 1000 });
      const live = (await a.counts()).tokens;
      assert.deepEqual((await issue({ cardId: `x-${id()}`, max: live })).r, { refused: "total" });
      clock += 1000;
      assert.equal(await b.getToken(t3.hash), undefined, "expired");
      assert.ok("expiresAt" in (await issue({ cardId: `x-${id()}`, max: live })).r, "expired tokens make room");
    });
  });
}
