// The back-up device's repository (seed 001 claims 41, 48), the same suite on SQLite and PostgreSQL: versions are
// never overwritten, the latest version of each object comes back byte-exact, only envelopes are accepted, and
// after all of it no table of the DB holds the plaintext.
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { sql } from "kysely";
import { auditEntries, verifyAuditLog } from "./audit.ts";
import { BackupError, BackupRepository } from "./backup-repository.ts";
import type { Db, Engine } from "./db.ts";
import { Store } from "./store.ts";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";
import { encipherForCard, recipientOf } from "../protocol/enciphered.ts";

const T0 = Date.UTC(2026, 4, 1);

/** Every byte form of `secret` worth looking for: raw, hex, and base64 / base64url at each 3-byte alignment. */
function forms(secret: Uint8Array): Buffer[] {
  const s = Buffer.from(secret);
  const out = [s, Buffer.from(s.toString("hex")), Buffer.from(s.toString("hex").toUpperCase())];
  for (let k = 0; k < 3; k++) for (const enc of ["base64", "base64url"] as const) out.push(Buffer.from(s.subarray(k).toString(enc).slice(0, 16)));
  return out;
}

/** The tables (and rows) of the DB that hold any form of `secret`. */
async function scanDb(db: Db, engine: Engine, secret: Uint8Array): Promise<string[]> {
  const tables =
    engine === "sqlite"
      ? (await sql<{ name: string }>`select name from sqlite_master where type = 'table'`.execute(db)).rows.map((r) => r.name)
      : (await sql<{ name: string }>`select table_name as name from information_schema.tables where table_schema = current_schema()`.execute(db)).rows.map((r) => r.name);
  assert.ok(tables.includes("backups"), "the scan covers the backups table");
  const needles = forms(secret);
  const hits: string[] = [];
  for (const t of tables) {
    const rows = (await sql<Record<string, unknown>>`select * from ${sql.table(t)}`.execute(db)).rows;
    for (const row of rows)
      for (const [col, v] of Object.entries(row)) {
        if (v === null || v === undefined) continue;
        const b = v instanceof Uint8Array ? Buffer.from(v) : Buffer.from(String(v), "utf8");
        if (needles.some((nd) => b.includes(nd))) hits.push(`${t}.${col}`);
      }
  }
  return hits;
}

for (const engine of testEngines()) {
  describe(`backup repository on ${engine.name}`, () => {
    let t: TestDatabase;
    let store: Store;
    let repo: BackupRepository;
    let clock = T0;
    const recipient = recipientOf(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey);
    const plaintexts: Uint8Array[] = [];
    /** A fresh secret, enciphered to the (software) recipient key: what a terminal uploads. */
    const envelopeOf = (label: string) => {
      const p = new Uint8Array(Buffer.concat([Buffer.from(`${label}: `), randomBytes(24)]));
      plaintexts.push(p);
      return encipherForCard(recipient, p, Buffer.from(label));
    };
    before(async () => {
      t = await engine.create();
      store = new Store(t.db, { now: () => clock });
      repo = new BackupRepository(t.db, { now: () => clock });
    });
    after(async () => {
      await t?.drop();
    });

    async function userCard() {
      const user = await store.createUser({ personalData: { commonName: "Backup User" } });
      const card = await store.registerCard({ userId: user.id, validFrom: clock, validUntil: clock + 1e10 });
      return { user, card };
    }

    test("versions: a changed object is a new version, the old ones stay; the same envelope again adds nothing", async () => {
      const { user, card } = await userCard();
      const e1 = envelopeOf("diary");
      const r1 = await repo.put({ userId: user.id, cardId: card.id, objectId: "diary.txt", envelope: e1 });
      assert.equal(r1.created, true);
      assert.equal(r1.backup.version, 1);
      assert.equal(r1.backup.recipientKid, recipient.kid);
      assert.equal(r1.backup.cardId, card.id);
      const again = await repo.put({ userId: user.id, cardId: card.id, objectId: "diary.txt", envelope: e1 });
      assert.deepEqual([again.created, again.backup.version, again.backup.id], [false, 1, r1.backup.id]);
      clock += 1000;
      const e2 = envelopeOf("diary");
      const r2 = await repo.put({ userId: user.id, cardId: card.id, objectId: "diary.txt", envelope: e2 });
      assert.deepEqual([r2.created, r2.backup.version], [true, 2]);
      // back to the first content: a new version 3, not a rewrite of 1
      const r3 = await repo.put({ userId: user.id, objectId: "diary.txt", envelope: e1 });
      assert.deepEqual([r3.created, r3.backup.version, r3.backup.cardId], [true, 3, null]);
      assert.deepEqual((await repo.get(user.id, "diary.txt", 1))!.envelope, e1);
      assert.deepEqual((await repo.get(user.id, "diary.txt", 2))!.envelope, e2);
      assert.deepEqual((await repo.latest(user.id, "diary.txt"))!.envelope, e1);
      assert.equal((await repo.latest(user.id, "diary.txt"))!.version, 3);
      assert.equal(await repo.get(user.id, "diary.txt", 4), undefined);
      const listed = await repo.list(user.id, { objectId: "diary.txt" });
      assert.deepEqual(
        listed.map((b) => [b.version, b.size]),
        [
          [1, e1.length],
          [2, e2.length],
          [3, e1.length],
        ],
      );
      assert.equal(listed[1].createdAt, T0 + 1000);
    });

    test("the unique (user, object, version) constraint holds in the DB itself", async () => {
      const { user } = await userCard();
      const r = await repo.put({ userId: user.id, objectId: "k", envelope: envelopeOf("k") });
      const dup = sql`insert into backups (id, user_id, card_id, object_id, version, envelope, sha256, recipient_kid, created_at)
        values (${"dup-" + r.backup.id}, ${user.id}, ${null}, ${"k"}, ${1}, ${Buffer.from("x")}, ${"0".repeat(64)}, ${"0".repeat(64)}, ${clock})`;
      await assert.rejects(dup.execute(t.db));
    });

    test("latestAll: the latest version of each object, one user's only", async () => {
      const { user } = await userCard();
      const { user: other } = await userCard();
      const a1 = envelopeOf("a");
      const a2 = envelopeOf("a");
      const b1 = envelopeOf("b");
      await repo.put({ userId: user.id, objectId: "a", envelope: a1 });
      await repo.put({ userId: user.id, objectId: "a", envelope: a2 });
      await repo.put({ userId: user.id, objectId: "b", envelope: b1 });
      await repo.put({ userId: other.id, objectId: "a", envelope: envelopeOf("other a") });
      const latest = await repo.latestAll(user.id);
      assert.deepEqual(
        latest.map((b) => [b.objectId, b.version]),
        [
          ["a", 2],
          ["b", 1],
        ],
      );
      assert.deepEqual(latest[0].envelope, a2);
      assert.deepEqual(latest[1].envelope, b1);
      assert.deepEqual(
        (await repo.latestAll(other.id)).map((b) => [b.objectId, b.version]),
        [["a", 1]],
      );
      assert.deepEqual(await repo.latestAll("no-such-user"), []);
    });

    test("concurrent puts of one object each get their own version; none is lost", async () => {
      const { user } = await userCard();
      const envs = Array.from({ length: 8 }, (_, i) => envelopeOf(`race ${i}`));
      const results = await Promise.all(envs.map((envelope) => repo.put({ userId: user.id, objectId: "race", envelope })));
      assert.deepEqual(
        results.map((r) => r.backup.version).sort((a, b) => a - b),
        [1, 2, 3, 4, 5, 6, 7, 8],
      );
      for (const r of results) assert.deepEqual((await repo.get(user.id, "race", r.backup.version))!.envelope, envs[results.indexOf(r)]);
    });

    test("only envelopes are accepted: plaintext, a bad object ID, an unknown user or another user's card are refused", async () => {
      const { user, card } = await userCard();
      const { card: otherCard } = await userCard();
      const secret = Buffer.from("PLAINTEXT-THAT-MUST-NOT-BE-STORED-4711");
      await assert.rejects(repo.put({ userId: user.id, objectId: "p", envelope: secret }), (e: unknown) => e instanceof BackupError && e.code === "invalid" && /only enciphered data/.test(e.message));
      await assert.rejects(repo.put({ userId: user.id, objectId: "p", envelope: Buffer.from(JSON.stringify({ format: "cardkms-enciphered", v: 1, ct: secret.toString("base64url") })) }), BackupError);
      await assert.rejects(repo.put({ userId: user.id, objectId: "../etc/passwd", envelope: envelopeOf("x") }), /object ID/);
      await assert.rejects(repo.put({ userId: "nobody", objectId: "x", envelope: envelopeOf("x") }), (e: unknown) => e instanceof BackupError && e.code === "not_found");
      await assert.rejects(repo.put({ userId: user.id, cardId: otherCard.id, objectId: "x", envelope: envelopeOf("x") }), /is not user/);
      await assert.rejects(repo.put({ userId: user.id, cardId: "00".repeat(8), objectId: "x", envelope: envelopeOf("x") }), /no card/);
      assert.ok(card);
      assert.deepEqual(await scanDb(t.db, engine.name, secret), [], "the refused plaintext is nowhere in the DB");
    });

    test("each new version is audited by IDs and hashes; the chain verifies", async () => {
      const { user } = await userCard();
      const r = await repo.put({ userId: user.id, objectId: "audited", envelope: envelopeOf("audited") }, "terminal:alice");
      const entries = [];
      for await (const e of auditEntries(t.db)) if (e.action === "backup.stored" && e.details.backup === r.backup.id) entries.push(e);
      assert.equal(entries.length, 1);
      assert.equal(entries[0].actor, "terminal:alice");
      assert.equal(entries[0].subject, user.id);
      assert.deepEqual(
        { objectId: entries[0].details.objectId, version: entries[0].details.version, sha256: entries[0].details.sha256, recipientKid: entries[0].details.recipientKid },
        { objectId: "audited", version: 1, sha256: r.backup.sha256, recipientKid: recipient.kid },
      );
      assert.equal((await verifyAuditLog(t.db)).ok, true);
    });

    test("no table holds any plaintext that was backed up (and the scan does find one that is there)", async () => {
      assert.ok(plaintexts.length > 10);
      for (const p of plaintexts) assert.deepEqual(await scanDb(t.db, engine.name, p), [], "plaintext found in the DB");
      // the scan can fail: a plaintext put where it does not belong is found
      const planted = new Uint8Array(Buffer.concat([Buffer.from("planted: "), randomBytes(24)]));
      await store.createUser({ personalData: { note: Buffer.from(planted).toString("base64") } });
      assert.deepEqual(await scanDb(t.db, engine.name, planted), ["users.personal_data"]);
    });
  });
}
