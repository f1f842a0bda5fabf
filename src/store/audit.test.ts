// The hash-chained audit log on both engines: appends, concurrent appends, and detection of each kind of tampering.

import assert from "node:assert/strict";
import { after, before, beforeEach, describe, test } from "node:test";
import { appendAudit, auditEntries, auditHead, canonicalJson, entryHash, verifyAuditLog, GENESIS_HASH } from "./audit.ts";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";

test("canonical JSON sorts keys, refuses non-JSON values and secret-looking fields", () => {
  assert.equal(canonicalJson({ b: 1, a: [true, null, "x"], c: { z: 1, y: 2 } }), '{"a":[true,null,"x"],"b":1,"c":{"y":2,"z":1}}');
  assert.throws(() => canonicalJson({ a: Buffer.from("k") }), /binary/);
  assert.throws(() => canonicalJson({ a: undefined }), /undefined/);
  assert.throws(() => canonicalJson({ n: Infinity }), /finite/);
  assert.throws(() => canonicalJson({ nested: { privateKey: "..." } }), /secret/);
  assert.throws(() => canonicalJson({ PIN: "1234" }), /secret/);
});

for (const engine of testEngines()) {
  describe(`audit log on ${engine.name}`, () => {
    let t: TestDatabase;
    before(async () => {
      t = await engine.create();
    });
    after(async () => {
      await t?.drop();
    });
    beforeEach(async () => {
      await t.db.deleteFrom("audit_log").execute();
    });

    async function appendN(n: number) {
      for (let i = 1; i <= n; i++) {
        await appendAudit(t.db, { actor: "alice", action: "credential.deliver", subject: `card-${i}`, details: { keyPairId: `kp-${i}`, seq: i }, at: 1_700_000_000_000 + i });
      }
    }

    test("entries chain from the genesis hash; verify walks them in pages and returns the head", async () => {
      await appendN(25);
      const first = await t.db.selectFrom("audit_log").selectAll().where("seq", "=", 1).executeTakeFirstOrThrow();
      assert.equal(first.prev_hash, GENESIS_HASH);
      assert.equal(first.hash, entryHash(first));
      const head = await auditHead(t.db);
      assert.equal(head?.seq, 25);
      assert.deepEqual(await verifyAuditLog(t.db, { pageSize: 7 }), { ok: true, entries: 25, head });
      assert.deepEqual(await verifyAuditLog(t.db, { expectedHead: head }), { ok: true, entries: 25, head });
      const listed = [];
      for await (const e of auditEntries(t.db, { afterSeq: 20, pageSize: 2 })) listed.push(e);
      assert.deepEqual(
        listed.map((e) => e.seq),
        [21, 22, 23, 24, 25],
      );
      assert.deepEqual(listed[0].details, { keyPairId: "kp-21", seq: 21 });
    });

    test("an empty log verifies, with no head", async () => {
      assert.deepEqual(await verifyAuditLog(t.db), { ok: true, entries: 0, head: null });
    });

    test("an entry rolled back with its transaction leaves no trace in the chain", async () => {
      await appendN(2);
      await assert.rejects(
        t.db.transaction().execute(async (trx) => {
          await appendAudit(trx, { actor: "bob", action: "card.issue", subject: "c" });
          throw new Error("issuance failed");
        }),
        /issuance failed/,
      );
      await appendAudit(t.db, { actor: "bob", action: "card.issue", subject: "c" });
      const v = await verifyAuditLog(t.db);
      assert.ok(v.ok && v.entries === 3);
    });

    test("concurrent appends never fork the chain", async () => {
      // PostgreSQL: three pools, like three server processes. SQLite: one connection per process (see testing.ts).
      const dbs = t.engine === "postgres" ? [t.db, t.reopen(), t.reopen()] : [t.db];
      const n = 90;
      await Promise.all(Array.from({ length: n }, (_, i) => appendAudit(dbs[i % dbs.length], { actor: `worker-${i % 3}`, action: "credential.deliver", subject: `s-${i}` })));
      const v = await verifyAuditLog(t.db);
      assert.ok(v.ok, JSON.stringify(v));
      assert.equal(v.entries, n);
      assert.equal(v.head?.seq, n);
      const subjects = new Set((await t.db.selectFrom("audit_log").select("subject").execute()).map((r) => r.subject));
      assert.equal(subjects.size, n);
    });

    test("tampering with an entry's details is found at that seq", async () => {
      await appendN(10);
      await t.db.updateTable("audit_log").set({ details: '{"keyPairId":"kp-evil","seq":6}' }).where("seq", "=", 6).execute();
      const v = await verifyAuditLog(t.db, { pageSize: 4 });
      assert.equal(v.ok, false);
      assert.ok(!v.ok && v.seq === 6 && v.problem === "altered", JSON.stringify(v));
    });

    test("tampering with actor, action or time is found", async () => {
      for (const [col, value] of [
        ["actor", "mallory"],
        ["action", "card.retire"],
        ["at", 1],
      ] as const) {
        await t.db.deleteFrom("audit_log").execute();
        await appendN(5);
        await t.db
          .updateTable("audit_log")
          .set({ [col]: value })
          .where("seq", "=", 3)
          .execute();
        const v = await verifyAuditLog(t.db);
        assert.ok(!v.ok && v.seq === 3 && v.problem === "altered", `${col}: ${JSON.stringify(v)}`);
      }
    });

    test("deleting a middle entry is found at the missing seq", async () => {
      await appendN(10);
      await t.db.deleteFrom("audit_log").where("seq", "=", 4).execute();
      const v = await verifyAuditLog(t.db);
      assert.ok(!v.ok && v.seq === 4 && v.problem === "missing", JSON.stringify(v));
    });

    test("deleting a middle entry and renumbering the rest is found where the link breaks", async () => {
      await appendN(10);
      await t.db.deleteFrom("audit_log").where("seq", "=", 4).execute();
      for (let s = 5; s <= 10; s++)
        await t.db
          .updateTable("audit_log")
          .set({ seq: s - 1 })
          .where("seq", "=", s)
          .execute();
      const v = await verifyAuditLog(t.db);
      // Entry 5 now sits at seq 4: its hash covers its old seq, so it no longer matches.
      assert.ok(!v.ok && v.seq === 4 && v.problem === "altered", JSON.stringify(v));
      // Even if the forger recomputes the moved entries' hashes, the first one does not follow entry 3.
      await recomputeFrom(4, false);
      const v2 = await verifyAuditLog(t.db);
      assert.ok(!v2.ok && v2.seq === 4 && v2.problem === "broken-link", JSON.stringify(v2));
    });

    test("reordering two entries is found at the first moved seq", async () => {
      await appendN(10);
      await t.db.updateTable("audit_log").set({ seq: 1000 }).where("seq", "=", 7).execute();
      await t.db.updateTable("audit_log").set({ seq: 7 }).where("seq", "=", 8).execute();
      await t.db.updateTable("audit_log").set({ seq: 8 }).where("seq", "=", 1000).execute();
      const v = await verifyAuditLog(t.db);
      assert.ok(!v.ok && v.seq === 7 && v.problem === "altered", JSON.stringify(v));
    });

    test("an inserted entry is found", async () => {
      await appendN(6);
      // Make room after seq 3 and insert a forged entry with a correctly computed hash and link.
      for (let s = 6; s >= 4; s--)
        await t.db
          .updateTable("audit_log")
          .set({ seq: s + 1 })
          .where("seq", "=", s)
          .execute();
      const prev = await t.db.selectFrom("audit_log").select("hash").where("seq", "=", 3).executeTakeFirstOrThrow();
      const forged = { seq: 4, at: 1, actor: "mallory", action: "certificate.revoke", subject: "x", details: "{}", prev_hash: prev.hash, hash: "" };
      forged.hash = entryHash(forged);
      await t.db.insertInto("audit_log").values(forged).execute();
      const v = await verifyAuditLog(t.db);
      // The forged entry itself verifies; the original entry after it has moved from seq 4 to 5.
      assert.ok(!v.ok && v.seq === 5, JSON.stringify(v));
    });

    test("truncation at the end, and a rewritten past, are found against an exported head", async () => {
      await appendN(8);
      const head = (await auditHead(t.db))!;
      await t.db.deleteFrom("audit_log").where("seq", ">=", 7).execute();
      // Internally the shortened chain is consistent ...
      assert.ok((await verifyAuditLog(t.db)).ok);
      // ... but it no longer reaches the exported head.
      const v = await verifyAuditLog(t.db, { expectedHead: head });
      assert.ok(!v.ok && v.seq === 7 && v.problem === "head-mismatch", JSON.stringify(v));

      // Rewriting everything from seq 2 on with fresh hashes is consistent too, except against the head.
      await t.db.deleteFrom("audit_log").execute();
      await appendN(8);
      const head2 = (await auditHead(t.db))!;
      await t.db.updateTable("audit_log").set({ actor: "mallory" }).where("seq", "=", 2).execute();
      await recomputeFrom(2, true);
      assert.ok((await verifyAuditLog(t.db)).ok);
      const v2 = await verifyAuditLog(t.db, { expectedHead: head2 });
      assert.ok(!v2.ok && v2.seq === 8 && v2.problem === "head-mismatch", JSON.stringify(v2));
    });

    /** A forger's rewrite: recomputes hashes from `seq` on (relinking prev_hash too when `relink`). */
    async function recomputeFrom(seq: number, relink: boolean) {
      const rows = await t.db.selectFrom("audit_log").selectAll().where("seq", ">=", seq).orderBy("seq").execute();
      let prev =
        (
          await t.db
            .selectFrom("audit_log")
            .select("hash")
            .where("seq", "=", seq - 1)
            .executeTakeFirst()
        )?.hash ?? GENESIS_HASH;
      for (const r of rows) {
        const row = { ...r, prev_hash: relink ? prev : r.prev_hash };
        const hash = entryHash(row);
        await t.db.updateTable("audit_log").set({ prev_hash: row.prev_hash, hash }).where("seq", "=", r.seq).execute();
        prev = hash;
      }
    }

    test("on PostgreSQL a second append waits for the lock held by an open appending transaction", async () => {
      if (t.engine !== "postgres") return;
      // While one transaction appends and holds the lock, a second append waits for it instead of reading a stale head.
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const first = t.db.transaction().execute(async (trx) => {
        await appendAudit(trx, { actor: "a", action: "x", subject: "1" });
        await gate;
      });
      await new Promise((r) => setTimeout(r, 50));
      const other = t.reopen();
      let secondDone = false;
      const second = appendAudit(other, { actor: "b", action: "x", subject: "2" }).then((e) => ((secondDone = true), e));
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(secondDone, false, "second append must wait for the first transaction");
      release();
      await first;
      const e2 = await second;
      assert.equal(e2.seq, 2);
      assert.ok((await verifyAuditLog(t.db)).ok);
    });
  });
}
