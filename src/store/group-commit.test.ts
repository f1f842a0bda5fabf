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
  });
}
