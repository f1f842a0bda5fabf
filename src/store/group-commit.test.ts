// Store.groupTransaction (group commit): calls arriving together share one transaction, each in its own
// savepoint — a failing call rolls back only its own rows and gets its own error; the others land. On every engine.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Store } from "./store.ts";
import { groupCommit } from "./group.ts";
import { appendAudit, verifyAuditLog } from "./audit.ts";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";

for (const engine of testEngines()) {
  describe(`group commit on ${engine.name}`, () => {
    let t: TestDatabase;
    let store: Store;
    before(async () => {
      t = await engine.create();
      store = new Store(t.db);
    });
    after(async () => t.drop());

    test("concurrent calls all land; a failing one is rolled back alone", async () => {
      const ids = Array.from({ length: 40 }, (_, i) => `group-user-${i}`);
      const results = await Promise.allSettled(
        ids.map((id, i) =>
          store.groupTransaction(async (s) => {
            await s.createUser({ id, personalData: { i } });
            await appendAudit(s.db, { actor: "test", action: "user.registered", subject: id });
            if (i % 7 === 3) throw new Error(`refused ${i}`);
            return i;
          }),
        ),
      );
      for (const [i, r] of results.entries()) {
        if (i % 7 === 3) {
          assert.equal(r.status, "rejected");
          assert.match(String((r as PromiseRejectedResult).reason), new RegExp(`refused ${i}$`));
          assert.equal(await store.getUser(ids[i]), undefined, "the failed call's row is rolled back");
        } else {
          assert.deepEqual(r, { status: "fulfilled", value: i });
          assert.ok(await store.getUser(ids[i]));
        }
      }
      const v = await verifyAuditLog(store.db);
      assert.ok(v.ok, "the audit chain is intact across savepoint rollbacks");
      assert.equal(v.entries, ids.length - results.filter((r) => r.status === "rejected").length);
    });

    test("a constraint violation fails only its call", async () => {
      await store.createUser({ id: "taken", personalData: {} });
      const [a, b] = await Promise.allSettled([
        store.groupTransaction((s) => s.createUser({ id: "taken", personalData: {} })),
        store.groupTransaction((s) => s.createUser({ id: "free", personalData: {} })),
      ]);
      assert.equal(a.status, "rejected");
      assert.equal(b.status, "fulfilled");
      assert.ok(await store.getUser("free"));
    });

    test("calls made in the same turn share one transaction, also through a withTables() view (the CA's repository)", async () => {
      const view = t.db.withTables<{ extra: { id: string } }>();
      const trxs = await Promise.all([
        ...Array.from({ length: 10 }, (_, i) => store.groupTransaction(async (s) => (await s.createUser({ id: `turn-${i}`, personalData: {} }), s.db))),
        ...Array.from({ length: 5 }, () => groupCommit(view, async (trx) => trx)),
      ]);
      assert.equal(new Set(trxs).size, 1, "one group, one transaction, one commit");
      // a call made after the group committed starts the next one
      const later = await store.groupTransaction(async (s) => s.db);
      assert.notEqual(later, trxs[0]);
    });

    test("inside a transaction it joins it", async () => {
      await assert.rejects(
        store.transaction(async (s) => {
          await s.groupTransaction((g) => g.createUser({ id: "joined", personalData: {} }));
          throw new Error("roll back");
        }),
        /roll back/,
      );
      assert.equal(await store.getUser("joined"), undefined);
    });

    test("a group's audit entries are appended at its end, in call order, without the failed calls' (issue 16 §5)", async () => {
      const before = (await verifyAuditLog(store.db)) as { ok: true; entries: number; head: { seq: number } | null };
      assert.ok(before.ok);
      const results = await Promise.allSettled(
        Array.from({ length: 12 }, (_, i) =>
          store.groupTransaction(async (s) => {
            await s.audit({ actor: "test", action: "deferred", subject: `d-${i}`, details: { i, part: 1 } });
            await s.audit({ actor: "test", action: "deferred", subject: `d-${i}`, details: { i, part: 2 } });
            if (i % 5 === 2) throw new Error(`refused ${i}`);
            return i;
          }),
        ),
      );
      const kept = results.flatMap((r, i) => (r.status === "fulfilled" ? [i] : []));
      assert.deepEqual(kept, [0, 1, 3, 4, 5, 6, 8, 9, 10, 11]);
      const v = await verifyAuditLog(store.db);
      assert.ok(v.ok, "the chain is intact");
      const rows = await t.db.selectFrom("audit_log").selectAll().where("action", "=", "deferred").orderBy("seq").execute();
      assert.deepEqual(
        rows.map((r) => [r.subject, JSON.parse(r.details) as unknown]),
        kept.flatMap((i) => [
          [`d-${i}`, { i, part: 1 }],
          [`d-${i}`, { i, part: 2 }],
        ]),
        "every entry of a call that landed, with its own content, in call order; none of a failed call",
      );
      const first = (before.head?.seq ?? 0) + 1;
      assert.deepEqual(
        rows.map((r) => r.seq),
        rows.map((_, k) => first + k),
        "gap-free sequence",
      );
    });

    test("a group that fails at its end loses its audit entries with its rows", async () => {
      const n = Number(
        (
          await t.db
            .selectFrom("audit_log")
            .select((eb) => eb.fn.countAll<number>().as("n"))
            .executeTakeFirstOrThrow()
        ).n,
      );
      await assert.rejects(
        store.transaction(async (s) => {
          await s.groupTransaction((g) => g.audit({ actor: "test", action: "rolled-back", subject: "x" }));
          throw new Error("roll back");
        }),
        /roll back/,
      );
      const after = Number(
        (
          await t.db
            .selectFrom("audit_log")
            .select((eb) => eb.fn.countAll<number>().as("n"))
            .executeTakeFirstOrThrow()
        ).n,
      );
      assert.equal(after, n);
    });

    test("several servers grouping and appending at once keep one gap-free chain", async () => {
      // Three connection pools on one PostgreSQL database (three servers), each with group calls that audit, plus
      // direct appends, all at once. (SQLite's several servers are several processes: in one process a second
      // connection's synchronous busy wait would block the event loop the first one needs to commit.)
      if (t.engine !== "postgres") return;
      const servers = [store, new Store(t.reopen()), new Store(t.reopen())];
      const before = await verifyAuditLog(store.db);
      assert.ok(before.ok);
      await Promise.all(
        servers.flatMap((srv, k) => [
          ...Array.from({ length: 15 }, (_, i) =>
            srv.groupTransaction(async (s) => {
              await s.createUser({ id: `multi-${k}-${i}`, personalData: { i } });
              await s.audit({ actor: `server-${k}`, action: "multi", subject: `multi-${k}-${i}` });
            }),
          ),
          ...Array.from({ length: 3 }, (_, i) => appendAudit(srv.db, { actor: `server-${k}`, action: "multi.direct", subject: `direct-${k}-${i}` })),
        ]),
      );
      const v = await verifyAuditLog(store.db);
      assert.ok(v.ok, JSON.stringify(v));
      assert.equal(v.entries, before.entries + 3 * 18);
      const rows = await t.db.selectFrom("audit_log").select(["subject"]).where("action", "in", ["multi", "multi.direct"]).execute();
      assert.equal(new Set(rows.map((r) => r.subject)).size, 3 * 18, "every entry once");
    });
  });
}
