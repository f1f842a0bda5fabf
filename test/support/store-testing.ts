// Test support: the same storage suite runs against every engine, each run on a DB of its own.
//
//   SQLite      a temp file under os.tmpdir(), removed afterwards.
//   PostgreSQL  CARDKMS_TEST_PG (default postgres://postgres@127.0.0.1:5432/postgres) is the admin connection;
//               each suite creates `cardkms_test_<random>` there and drops it afterwards. When the server does
//               not answer, scripts/postgres-up.sh gets one chance to start it; if it still does not answer the
//               suite FAILS — it is never skipped silently. CARDKMS_TEST_PG=off leaves PostgreSQL out on purpose.

import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { openDatabase, redactUrl, type Db, type Engine, type OpenOptions } from "../../src/store/db.ts";
import { migrateToLatest } from "../../src/store/migrate.ts";

export const DEFAULT_TEST_PG = "postgres://postgres@127.0.0.1:5432/postgres";

export interface TestDatabase {
  engine: Engine;
  url: string;
  db: Db;
  /** Opens another, independent connection (pool) to the same DB, e.g. to simulate a second server process. */
  reopen(options?: OpenOptions): Db;
  drop(): Promise<void>;
}

export interface TestEngine {
  name: Engine;
  /** A fresh, migrated DB. */
  create(options?: OpenOptions): Promise<TestDatabase>;
}

export function testEngines(): TestEngine[] {
  const list: TestEngine[] = [{ name: "sqlite", create: createSqlite }];
  const pgUrl = process.env.CARDKMS_TEST_PG ?? DEFAULT_TEST_PG;
  if (!["off", "0", "none"].includes(pgUrl)) list.push({ name: "postgres", create: (o) => createPostgres(pgUrl, o) });
  return list;
}

async function createSqlite(options?: OpenOptions): Promise<TestDatabase> {
  const dir = mkdtempSync(join(tmpdir(), "cardkms-store-"));
  const url = `sqlite:${join(dir, "issuer.db")}`;
  const opened: Db[] = [];
  const reopen = (o?: OpenOptions) => {
    const db = openDatabase(url, { sqliteSynchronous: "normal", ...options, ...o });
    opened.push(db);
    return db;
  };
  const db = reopen();
  await migrateToLatest(db);
  return {
    engine: "sqlite",
    url,
    db,
    reopen,
    async drop() {
      for (const d of opened) await d.destroy();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const pgReady = new Map<string, Promise<void>>();

/** Resolves when the admin URL answers, after giving scripts/postgres-up.sh one chance; rejects otherwise. */
export function ensurePostgres(adminUrl: string): Promise<void> {
  let ready = pgReady.get(adminUrl);
  if (ready) return ready;
  ready = (async () => {
    const first = await tryConnect(adminUrl);
    if (first === null) return;
    const script = join(dirname(fileURLToPath(import.meta.url)), "../../scripts/postgres-up.sh");
    const up = spawnSync("bash", [script], { encoding: "utf8", timeout: 300_000 });
    const second = await tryConnect(adminUrl);
    if (second === null) return;
    throw new Error(
      `PostgreSQL at ${redactUrl(adminUrl)} is unreachable (${first.message}); scripts/postgres-up.sh exited ` +
        `${up.status ?? up.signal}: ${(up.stderr || up.stdout || "").trim().slice(-800)}; now: ${second.message}. ` +
        `Set CARDKMS_TEST_PG to a reachable server, or CARDKMS_TEST_PG=off to leave PostgreSQL out.`,
    );
  })();
  pgReady.set(adminUrl, ready);
  return ready;
}

async function tryConnect(url: string): Promise<Error | null> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
    await client.query("select 1");
    return null;
  } catch (e) {
    return e instanceof Error ? e : new Error(String(e));
  } finally {
    await client.end().catch(() => {});
  }
}

async function adminQuery(adminUrl: string, text: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    await client.query(text);
  } finally {
    await client.end();
  }
}

async function createPostgres(adminUrl: string, options?: OpenOptions): Promise<TestDatabase> {
  await ensurePostgres(adminUrl);
  const name = `cardkms_test_${randomBytes(6).toString("hex")}`;
  await adminQuery(adminUrl, `create database ${name}`);
  const u = new URL(adminUrl);
  u.pathname = `/${name}`;
  const url = u.toString();
  const opened: Db[] = [];
  const reopen = (o?: OpenOptions) => {
    const db = openDatabase(url, { ...options, ...o });
    opened.push(db);
    return db;
  };
  const db = reopen();
  try {
    await migrateToLatest(db);
  } catch (e) {
    await db.destroy();
    await adminQuery(adminUrl, `drop database if exists ${name} with (force)`);
    throw e;
  }
  return {
    engine: "postgres",
    url,
    db,
    reopen,
    async drop() {
      for (const d of opened) await d.destroy();
      await adminQuery(adminUrl, `drop database if exists ${name} with (force)`);
    },
  };
}
