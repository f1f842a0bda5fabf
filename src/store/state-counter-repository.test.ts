// What the issuer remembers of each card's state counter (issue 17 §6), the same suite on SQLite and PostgreSQL:
// a login must report a counter above the remembered one; one that does not flags the card (audited, notified, in
// one transaction), a flagged card is refused until an operator clears it, and clearing starts over. Two logins
// of one card that crossed each other are refused without a flag.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { sql } from "kysely";
import { auditEntries, verifyAuditLog } from "./audit.ts";
import { StateCounterRepository } from "./state-counter-repository.ts";
import { Store } from "./store.ts";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";

const T0 = Date.UTC(2026, 4, 1);

for (const engine of testEngines()) {
  describe(`state counter repository on ${engine.name}`, () => {
    let t: TestDatabase;
    let store: Store;
    let repo: StateCounterRepository;
    let clock = T0;
    before(async () => {
      t = await engine.create();
      store = new Store(t.db, { now: () => clock });
      repo = new StateCounterRepository(t.db, { now: () => clock });
    });
    after(async () => {
      await t?.drop();
    });

    async function card(): Promise<string> {
      const user = await store.createUser({ personalData: { commonName: "Counter User" } });
      return (await store.registerCard({ userId: user.id, validFrom: clock, validUntil: clock + 1e10, status: "active" })).id;
    }
    const login = (cardId: string, reported: number, since = clock) => repo.recordLogin(cardId, reported, { since, actor: `card:${cardId}`, details: { kvn: 1 } });
    const audits = async (action: string, subject: string) => {
      const out = [];
      for await (const e of auditEntries(t.db)) if (e.action === action && e.subject === subject) out.push(e);
      return out;
    };

    test("remembered at the first login, raised by higher ones; an equal or lower one flags the card once; clear starts over", async () => {
      const id = await card();
      assert.equal(await repo.get(id), undefined);
      assert.deepEqual(await login(id, 10), { accepted: true, previous: null });
      clock += 1000;
      assert.deepEqual(await login(id, 15), { accepted: true, previous: 10 });
      assert.deepEqual(await repo.get(id), { cardId: id, counter: 15, updatedAt: clock, rollback: null });

      clock += 60_000;
      const flaggedAt = clock;
      const r = await login(id, 15);
      assert.equal(r.accepted, false);
      assert.ok(!r.accepted && r.reason === "rollback");
      assert.deepEqual(r.record, { cardId: id, counter: 15, updatedAt: T0 + 1000, rollback: { at: flaggedAt, reported: 15 } });
      // flagged: even a higher counter is refused, and flagging again changes nothing
      clock += 1000;
      const again = await login(id, 99);
      assert.ok(!again.accepted && again.reason === "flagged");
      assert.deepEqual(again.record.rollback, { at: flaggedAt, reported: 15 });
      assert.deepEqual(
        (await repo.listFlagged()).map((f) => f.cardId),
        [id],
      );

      const seen = await audits("card.rollback", id);
      assert.equal(seen.length, 1, "audited once");
      assert.deepEqual(seen[0].details, { kvn: 1, reported: 15, remembered: 15, rememberedAt: T0 + 1000 });
      const events = await store.listEvents({ type: "card.rollback" });
      assert.deepEqual(
        events.map((e) => e.subject),
        [id],
      );

      const cleared = await repo.clear(id, { actor: "olga", reason: "the holder restored a backup after a disk failure" });
      assert.deepEqual(cleared?.rollback, { at: flaggedAt, reported: 15 });
      assert.equal(await repo.get(id), undefined);
      assert.equal(await repo.clear(id, { actor: "olga", reason: "twice" }), undefined, "nothing to clear");
      assert.deepEqual(
        (await audits("card.rollback-cleared", id)).map((e) => e.details),
        [{ reason: "the holder restored a backup after a disk failure", counter: 15, rollbackAt: flaggedAt, reported: 15 }],
      );
      assert.deepEqual(await login(id, 3), { accepted: true, previous: null }, "the next login starts over");
      assert.deepEqual(await repo.listFlagged(), []);
      assert.equal((await verifyAuditLog(t.db)).ok, true);
    });

    test("a lower counter from a login that began before the remembered one was recorded is refused, not flagged", async () => {
      const id = await card();
      const began = clock;
      clock += 10;
      assert.equal((await login(id, 20)).accepted, true);
      const crossed = await login(id, 18, began);
      assert.ok(!crossed.accepted && crossed.reason === "raced");
      assert.equal((await repo.get(id))?.rollback, null);
      assert.equal((await audits("card.rollback", id)).length, 0);
      clock += 10;
      const late = await login(id, 18, clock);
      assert.ok(!late.accepted && late.reason === "rollback", "begun after it: a rollback");
    });

    test("counters past 2^32 are kept exactly; a negative or fractional one is a programming error", async () => {
      const id = await card();
      const big = 2 ** 40 + 7;
      assert.equal((await login(id, big)).accepted, true);
      assert.equal((await repo.get(id))?.counter, big);
      assert.equal((await login(id, big + 1)).accepted, true);
      await assert.rejects(login(id, -1), RangeError);
      await assert.rejects(login(id, 1.5), RangeError);
      await assert.rejects(login(id, Number.MAX_SAFE_INTEGER + 2), RangeError);
    });

    test("the flag is all or nothing in the DB: a rollback without its counter is refused by the schema", async () => {
      const id = await card();
      await login(id, 1);
      await assert.rejects(sql`update card_state_counters set rollback_at = ${clock} where card_id = ${id}`.execute(t.db));
      await assert.rejects(sql`update card_state_counters set counter = ${-1} where card_id = ${id}`.execute(t.db));
    });
  });
}
