// Signed checkpoints of the audit log (issue 15 §3) on both engines: what they commit to, and the three ways of
// cutting a log short that the hash chain alone lets through — deleting the last rows, replacing the whole table
// with a shorter consistent chain, rewriting the tail with recomputed hashes. Each verifies as intact by the chain
// (verifyAuditLog); each is found against a checkpoint kept outside the server, and no checkpoint is signed over it.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { sql } from "kysely";
import { SoftwareCustody } from "../custody/software.ts";
import { appendAudit, entryHash, verifyAuditLog } from "../store/audit.ts";
import type { Db } from "../store/db.ts";
import { Store } from "../store/store.ts";
import { testEngines, type TestEngine } from "../../test/support/store-testing.ts";
import { extendsCheckpoint } from "../tlog/extends.ts";
import { treeHead, verifyConsistency } from "../tlog/merkle.ts";
import { openNote, parseCheckpoint, parseVerifierKey } from "../tlog/note.ts";
import { AuditCheckpointError, AuditCheckpoints, auditLeaf } from "./audit-checkpoints.ts";

const custody = () => SoftwareCustody.open({ path: join(mkdtempSync(join(tmpdir(), "cardkms-cp-")), "keystore.json"), key: randomBytes(32).toString("hex") });

/** A migrated DB of `engine` and a software custody, both closed when the test ends. */
async function fresh(t: TestContext, engine: TestEngine) {
  const tdb = await engine.create();
  const c = await custody();
  t.after(async () => {
    await c.close();
    await tdb.drop();
  });
  return { tdb, c };
}

async function append(db: Db, n: number, from = 0): Promise<void> {
  for (let i = 0; i < n; i++) await appendAudit(db, { actor: "olga", action: "card.issue", subject: `card-${from + i}`, details: { i: from + i } });
}

/** Rewrites entries `from`.. with new details and recomputes every hash after: a chain that verifies. */
async function rewriteFrom(db: Db, from: number): Promise<void> {
  const rows = await db.selectFrom("audit_log").selectAll().where("seq", ">=", from).orderBy("seq").execute();
  let prev =
    from === 1
      ? "0".repeat(64)
      : (
          await db
            .selectFrom("audit_log")
            .select("hash")
            .where("seq", "=", from - 1)
            .executeTakeFirstOrThrow()
        ).hash;
  for (const r of rows) {
    const row = { ...r, details: r.seq === from ? JSON.stringify({ i: -1 }) : r.details, prev_hash: prev };
    row.hash = entryHash(row);
    await db.updateTable("audit_log").set({ details: row.details, prev_hash: row.prev_hash, hash: row.hash }).where("seq", "=", r.seq).execute();
    prev = row.hash;
  }
}

for (const engine of testEngines()) {
  test(`${engine.name}: a checkpoint is a signed note over the tree of the entries' chain hashes; made only when the log grew`, async (t) => {
    const { tdb, c } = await fresh(t, engine);
    await append(tdb.db, 5); // entries written before any checkpoint (as before the migration): the first one covers them
    const cps = await AuditCheckpoints.open({ store: new Store(tdb.db), custody: c });
    const first = await cps.make({ actor: "test" });
    assert.equal(first.made, true);
    const { text } = openNote(first.checkpoint.note, [parseVerifierKey(cps.verifierKey)]);
    const cp = parseCheckpoint(text);
    assert.equal(cp.origin, cps.origin);
    assert.equal(cp.size, 5);
    const hashes = (await tdb.db.selectFrom("audit_log").select("hash").orderBy("seq").execute()).map((r) => auditLeaf(r.hash));
    assert.deepEqual(Buffer.from(cp.rootHash).toString("hex"), Buffer.from(treeHead(hashes)).toString("hex"));
    assert.equal((await cps.make({ actor: "test", ifGrown: true })).made, false, "nothing new: no new checkpoint");
    await append(tdb.db, 3, 5);
    const second = await cps.make({ actor: "test", ifGrown: true });
    assert.equal(second.checkpoint.size, 8);
    const proof = await cps.consistency(5, 8);
    assert.ok(verifyConsistency(5, 8, cp.rootHash, Buffer.from(second.checkpoint.rootHash, "hex"), proof));
    assert.deepEqual(await cps.latest(), second.checkpoint);
    // the signing key is in custody, never extractable, and signs only
    assert.deepEqual(await c.keyInfo("audit-checkpoint"), { label: "audit-checkpoint", kind: "keyPair", type: "P256", extractable: "never" });
    await assert.rejects(cps.consistency(9, 8), AuditCheckpointError);
  });

  test(`${engine.name}: truncation, replacement and a rewritten tail all verify by the chain, and none extends the checkpoint`, async (t) => {
    const { tdb, c } = await fresh(t, engine);
    const cps = await AuditCheckpoints.open({ store: new Store(tdb.db), custody: c });
    await append(tdb.db, 12);
    const kept = parseCheckpoint(openNote((await cps.make({ actor: "test" })).checkpoint.note, [parseVerifierKey(cps.verifierKey)]).text);
    const mirror = (await tdb.db.selectFrom("audit_log").select("hash").orderBy("seq").execute()).map((r) => auditLeaf(r.hash));
    const leaves = async () => (await tdb.db.selectFrom("audit_log").select("hash").orderBy("seq").execute()).map((r) => auditLeaf(r.hash));

    // 1. the tail rewritten from entry 9 with recomputed hashes, and the log grown after it
    await rewriteFrom(tdb.db, 9);
    await append(tdb.db, 2, 100);
    assert.equal((await verifyAuditLog(tdb.db)).ok, true, "the chain alone calls it intact");
    const rewritten = extendsCheckpoint(await leaves(), kept, mirror);
    assert.deepEqual([!rewritten.ok && rewritten.problem, !rewritten.ok && rewritten.firstEntry], ["rewritten", 9]);
    assert.equal(extendsCheckpoint(await leaves(), kept).ok, false, "found without a mirror too");
    await assert.rejects(cps.make({ actor: "test" }), (e: unknown) => e instanceof AuditCheckpointError && e.check === "not-extended");

    // 2. the last rows deleted (the log is shorter than the checkpoint)
    await sql`delete from audit_log where seq > 7`.execute(tdb.db);
    assert.equal((await verifyAuditLog(tdb.db)).ok, true);
    const cut = extendsCheckpoint(await leaves(), kept);
    assert.deepEqual([!cut.ok && cut.problem, !cut.ok && cut.firstEntry], ["truncated", 8]);
    await assert.rejects(cps.make({ actor: "test" }), (e: unknown) => e instanceof AuditCheckpointError && e.check === "not-extended" && /cut short after entry 7/.test(e.message));

    // 3. the whole table replaced by a shorter, consistent chain of other entries
    await sql`delete from audit_log`.execute(tdb.db);
    await append(tdb.db, 10, 500);
    assert.equal((await verifyAuditLog(tdb.db)).ok, true);
    const replaced = extendsCheckpoint(await leaves(), kept, mirror);
    assert.deepEqual([!replaced.ok && replaced.problem, !replaced.ok && replaced.firstEntry], ["rewritten", 1]);
    const refused = (await tdb.db.selectFrom("audit_log").select("action").where("action", "=", "audit.checkpoint.refused").execute()).length;
    assert.equal(refused, 0, "the refusals were audited in the log the attacker then replaced");
  });

  test(`${engine.name}: no checkpoint over a broken chain; the refusal is audited`, async (t) => {
    const { tdb, c } = await fresh(t, engine);
    const cps = await AuditCheckpoints.open({ store: new Store(tdb.db), custody: c });
    await append(tdb.db, 4);
    await sql`update audit_log set actor = 'mallory' where seq = 2`.execute(tdb.db);
    await assert.rejects(cps.make({ actor: "test" }), (e: unknown) => e instanceof AuditCheckpointError && e.check === "log-broken");
    assert.equal(await cps.latest(), undefined);
    const last = await tdb.db.selectFrom("audit_log").selectAll().orderBy("seq", "desc").limit(1).executeTakeFirstOrThrow();
    assert.equal(last.action, "audit.checkpoint.refused");
  });
}
