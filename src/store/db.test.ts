// db.ts: SQLite background checkpoints — the serving connection only appends to the WAL, a worker thread's
// connection copies it into the DB file, and everything written is there after close and reopen.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { sql } from "kysely";
import { openDatabase } from "./db.ts";
import { migrateToLatest } from "./migrate.ts";
import { Store } from "./store.ts";

test("background checkpoints: the serving connection does not auto-checkpoint, the worker keeps the WAL short", async () => {
  const dir = mkdtempSync(join(tmpdir(), "cardkms-db-bg-"));
  try {
    const path = join(dir, "issuer.db");
    const db = openDatabase(`sqlite:${path}`, { sqliteSynchronous: "normal", sqliteCheckpoint: "background" });
    await migrateToLatest(db);
    const auto = await sql<{ wal_autocheckpoint: number }>`pragma wal_autocheckpoint`.execute(db);
    assert.equal(auto.rows[0].wal_autocheckpoint, 0, "the serving connection never checkpoints on commit");
    const store = new Store(db);
    // ~3,000 pages of WAL: far past the 1,000-page auto-checkpoint a connection would otherwise run
    for (let i = 0; i < 30; i++)
      await store.transaction(async (s) => {
        for (let j = 0; j < 100; j++) await s.createUser({ personalData: { pad: "x".repeat(3000), i, j } });
      });
    // Only a checkpoint moves pages into the DB file, and this connection never runs one: the worker does, within
    // a few of its 50 ms rounds.
    for (let i = 0; i < 100 && statSync(path).size < 3000 * 3000; i++) await sleep(50);
    assert.ok(statSync(path).size > 3000 * 3000, `the rows reached the DB file itself (${statSync(path).size} bytes)`);
    await db.destroy();
    const again = openDatabase(`sqlite:${path}`);
    const n = await again
      .selectFrom("users")
      .select((e) => e.fn.countAll<number>().as("n"))
      .executeTakeFirstOrThrow();
    assert.equal(Number(n.n), 3000);
    await again.destroy();
    await sleep(100);
    assert.equal(existsSync(`${path}-wal`), false, "the last connection to close removed the WAL");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("sqliteCheckpoint is validated", () => {
  assert.throws(() => openDatabase("sqlite::memory:", { sqliteCheckpoint: "sometimes" as "inline" }), /sqliteCheckpoint: expected "inline" or "background"/);
});
