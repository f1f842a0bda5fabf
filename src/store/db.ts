// The issuer's system DB (seed 000, FIG. 4/5, para 0029-0030): one Kysely schema, two engines.
//
//   sqlite:/path/file.db, or a bare path   embedded default (better-sqlite3), one connection, WAL
//   postgres://user@host:port/db           PostgreSQL through a pg Pool
//
// Both engines see exactly the same queries, so the schema keeps to what both store and return alike:
//   - times and validity bounds are epoch milliseconds in 64-bit integer columns (`bigint`); PostgreSQL's int8
//     is parsed to a JS number here (safe: epoch ms and row ids stay far below 2^53);
//   - byte strings are BLOB / BYTEA and come back as Node Buffers on both engines;
//   - JSON is stored as text (serialised by the store), never as jsonb, so both return the same string;
//   - no booleans: flags are nullable timestamps (`delivered_at`, `revoked_at`, `disabled_at`).
//
// This module owns connections only. It must never hold key values: the DB stores custody references, public
// keys, certificates and private keys wrapped under card keys (Sk[PRk]), nothing a reader could use in clear.
//
// File modes (issue 9 §6): the SQLite file holds personal data, wrapped keys, escrows and share releases, so a new one
// is created owner-only (0600) before SQLite opens it; SQLite gives the -wal and -shm files it creates later the
// mode of the DB file (os_unix.c, findCreateFileMode / unixOpenSharedMemory), whichever connection creates them —
// the serving one or the checkpoint worker's. An existing file keeps its mode: `looseSqliteFiles` lists what is
// broader, for the server to warn about at start-up.

import { createHash } from "node:crypto";
import { closeSync, openSync, statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import SqliteDatabase from "better-sqlite3";
import { Kysely, PostgresAdapter, PostgresDialect, SqliteDialect, type Generated } from "kysely";
import type { SqliteDatabase as KyselySqliteDatabase, SqliteStatement, PostgresPool, PostgresPoolClient } from "kysely";
import pg from "pg";
import { createRequire } from "node:module";
import { Worker } from "node:worker_threads";
import type { CardStatus, KeyPairStatus, KeySetStatus, PackageStatus, RotationDistribution, RotationStatus, RotationStrategy, WebhookDeliveryStatus } from "../issuer/records.ts";

const requireFrom = createRequire(import.meta.url);

export type Engine = "sqlite" | "postgres";

// The states the rows move through are the issuer's (src/issuer/records.ts); the tables below use them.
export type { CardStatus, KeySetStatus, KeyPairStatus, PackageStatus, RotationDistribution, RotationStatus, RotationStrategy, WebhookDeliveryStatus };

export interface UsersTable {
  id: string;
  /** Registered personal data (subject fields for certificates), JSON text. */
  personal_data: string;
  created_at: number;
}

export interface CardsTable {
  id: string;
  user_id: string;
  status: CardStatus;
  /** Card validity VT (FIG. 5). */
  valid_from: number;
  valid_until: number;
  /** The card key set Sk the issuer wraps new private keys under; null before the first key set. */
  current_key_set_id: string | null;
  /** Last package sequence number handed out for this card (0: none yet). */
  last_package_seq: Generated<number>;
  created_at: number;
  updated_at: number;
  /** Bumped by every status change (0013): a terminal token issued under another version no longer acts for the card. */
  status_version: Generated<number>;
  /** The last status change: when, by whom, why (0013; null: none since issue). */
  status_changed_at: number | null;
  status_changed_by: string | null;
  status_reason: string | null;
}

export interface CardKeySetsTable {
  id: string;
  card_id: string;
  /** GlobalPlatform key version number on the card. */
  kvn: number;
  /** Issuer-side version of the card key (Sk1 -> Sk2 ...), increasing per card. */
  version: number;
  status: KeySetStatus;
  /** Symmetric key validity SkVT (FIG. 5). */
  valid_from: number;
  valid_until: number;
  /** Where the key values live in key custody (a handle, never the key). */
  custody_ref: string;
  label: string | null;
  created_at: number;
}

export interface KeyPairsTable {
  id: string;
  user_id: string;
  /** The card the private key is destined for (moves to the new card on rotation). */
  card_id: string | null;
  /** Card slot, e.g. a PIV key reference ("9c"); null while it lives only in the overflow store. */
  slot: string | null;
  algorithm: string;
  /** SubjectPublicKeyInfo DER. */
  public_key: Uint8Array;
  status: KeyPairStatus;
  created_at: number;
}

export interface WrappedKeysTable {
  id: Generated<number>;
  key_pair_id: string;
  key_set_id: string;
  /** Sk[PRk]: the private key wrapped under the card key set. */
  wrapped: Uint8Array;
  created_at: number;
}

export interface CertificatesTable {
  id: string;
  /** Serial number, lowercase hex without leading zeros. */
  serial: string;
  key_pair_id: string;
  der: Uint8Array;
  subject: string;
  /** Certificate validity CtVT (FIG. 5). */
  not_before: number;
  not_after: number;
  revoked_at: number | null;
  revocation_reason: string | null;
  created_at: number;
}

export interface PackagesTable {
  id: Generated<number>;
  card_id: string;
  /** Strictly increasing per card (unique (card_id, seq)); the card refuses an older or replayed one. */
  seq: number;
  body: Uint8Array;
  status: PackageStatus;
  created_at: number;
  fetched_at: number | null;
  acknowledged_at: number | null;
}

export interface RotationsTable {
  id: string;
  card_id: string;
  /** The new card (embodiments 3-5 all issue one); null until it is issued. */
  to_card_id: string | null;
  from_key_set_id: string;
  to_key_set_id: string | null;
  strategy: RotationStrategy;
  status: RotationStatus;
  /** wrapped_keys.id of the last source row re-wrapped; the bulk re-wrap resumes after it. */
  cursor: number;
  total: number;
  done: number;
  approved_by: string | null;
  approved_at: number | null;
  error: string | null;
  created_at: number;
  updated_at: number;
  /** Who proposed it (migration 0012): that operator may not approve it; null for the validity scan's proposals. */
  proposed_by: Generated<string | null>;
  /** The new card's ID, bound at proposal (unique): what the approvals cover, and the card issueNewCard registers. */
  new_card_id: Generated<string | null>;
  /** Canonical JSON of the credentials distribute adds ([[slot, alg, profile|null], ...] by slot) and of the old
   *  card's slots it leaves behind (["9e", ...]): part of what the approvals cover. */
  added: Generated<string>;
  dropped: Generated<string>;
  /** Distinct operators other than the proposer who must approve (config rotations.approvals at proposal). */
  approvals_required: Generated<number>;
  /** none -> distributing (claimed by one call: the pairs moved, the items recorded) -> distributed (every
   *  package made); the rotation completes when every item is delivered or dropped (rotation_items). */
  distribution: Generated<RotationDistribution>;
  distributed_at: Generated<number | null>;
}

export interface EventsTable {
  id: Generated<number>;
  type: string;
  subject: string;
  payload: string;
  /** When set, a second event with the same key is not recorded (the validity scan runs repeatedly). */
  dedup_key: string | null;
  created_at: number;
  delivered_at: number | null;
  attempts: Generated<number>;
  last_error: string | null;
  /** Epoch ms before which a failed delivery is not retried; null: due now (migration 0005; unused since 0014). */
  next_attempt_at: Generated<number | null>;
  /** When the event's deliveries were queued in webhook_queue (migration 0014); null: not yet. */
  fanned_out_at: Generated<number | null>;
}

/** One delivery of an event to a webhook, its schedule and its claim (migration 0014). */
export interface WebhookQueueTable {
  event_id: number;
  webhook_id: string;
  /** pending; delivered (answered 2xx); dead (the dead-letter record: no attempt left, until an operator retries it). */
  status: WebhookDeliveryStatus;
  attempts: Generated<number>;
  /** Epoch ms before which the delivery is not attempted (again). */
  next_attempt_at: number;
  /** The claim of the server sending it: set only by an UPDATE ... WHERE unclaimed (or expired). */
  lease_owner: string | null;
  lease_until: number | null;
  last_error: string | null;
  created_at: number;
  updated_at: number;
  delivered_at: number | null;
  dead_at: number | null;
}

export interface WebhooksTable {
  id: string;
  url: string;
  /** JSON array of event types, or ["*"]. */
  event_types: string;
  /** Custody reference of the signing secret (never the secret). */
  secret_ref: string | null;
  created_at: number;
  disabled_at: number | null;
}

export interface OperatorsTable {
  id: string;
  name: string;
  /** scrypt/argon-style encoded hash; never the password. */
  password_hash: string | null;
  /** SHA-256 of the API token (hex); never the token. */
  token_hash: string | null;
  /** JSON array of role names. */
  roles: string;
  created_at: number;
  disabled_at: number | null;
}

export interface AuditLogTable {
  seq: number;
  at: number;
  actor: string;
  action: string;
  subject: string;
  /** Canonical JSON of the details object (exactly the bytes hashed). */
  details: string;
  prev_hash: string;
  hash: string;
}

export interface Database {
  users: UsersTable;
  cards: CardsTable;
  card_key_sets: CardKeySetsTable;
  key_pairs: KeyPairsTable;
  wrapped_keys: WrappedKeysTable;
  certificates: CertificatesTable;
  packages: PackagesTable;
  rotations: RotationsTable;
  events: EventsTable;
  webhooks: WebhooksTable;
  webhook_queue: WebhookQueueTable;
  operators: OperatorsTable;
  audit_log: AuditLogTable;
}

export type Db = Kysely<Database>;

export interface OpenOptions {
  /** SQLite `synchronous` in WAL mode: "full" (default) fsyncs the WAL on every commit; "normal" survives a
   *  process crash but may lose the last commits on power loss. */
  sqliteSynchronous?: "full" | "normal";
  /** SQLite busy timeout when another process holds the write lock (default 5000 ms). */
  sqliteBusyTimeoutMs?: number;
  /** SQLite WAL checkpoints: "inline" (default; SQLite's auto-checkpoint, run by the committing call every 1,000
   *  WAL pages) or "background" (a worker thread with its own connection checkpoints every 50 ms, so commits on
   *  the serving thread only append to the WAL; the server uses it). */
  sqliteCheckpoint?: "inline" | "background";
  /** PostgreSQL pool size (default 10). */
  pgPoolSize?: number;
}

/** Which engine a URL names: `postgres://` / `postgresql://` is PostgreSQL; `sqlite:` or a bare path is SQLite. */
export function engineForUrl(url: string): Engine {
  if (/^postgres(ql)?:\/\//i.test(url)) return "postgres";
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url) && !url.startsWith("sqlite:")) {
    throw new Error(`database URL: unsupported scheme in ${redactUrl(url)} (expected sqlite:/path, a file path or postgres://)`);
  }
  return "sqlite";
}

/** The SQLite file path of a `sqlite:` URL or bare path (`sqlite::memory:` and `:memory:` for an in-memory DB). */
export function sqlitePath(url: string): string {
  let p = url.startsWith("sqlite://") ? url.slice("sqlite://".length) : url.startsWith("sqlite:") ? url.slice("sqlite:".length) : url;
  const q = p.indexOf("?");
  if (q >= 0) p = p.slice(0, q);
  if (p === "") throw new Error("database URL: empty SQLite path");
  return p;
}

/** A URL with its password removed, for error messages and logs. */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z]+:\/\/[^:/@]*):[^@]*@/i, "$1:***@");
}

const engines = new WeakMap<object, Engine>();

/** The engine a Kysely instance (or a transaction of it) talks to. */
export function engineOf(db: Kysely<unknown> | Db): Engine {
  const known = engines.get(db);
  if (known) return known;
  return db.getExecutor().adapter instanceof PostgresAdapter ? "postgres" : "sqlite";
}

/** Opens the system DB named by `url`. The caller runs `migrateToLatest` and eventually `db.destroy()`. */
export function openDatabase(url: string, options: OpenOptions = {}): Db {
  const engine = engineForUrl(url);
  const db = engine === "postgres" ? openPostgres(url, options) : openSqlite(url, options);
  engines.set(db, engine);
  return db;
}

function openSqlite(url: string, options: OpenOptions): Db {
  const path = sqlitePath(url);
  const sync = options.sqliteSynchronous ?? "full";
  if (sync !== "full" && sync !== "normal") throw new Error(`sqliteSynchronous: expected "full" or "normal", got ${String(sync)}`);
  const busy = options.sqliteBusyTimeoutMs ?? 5000;
  if (!Number.isInteger(busy) || busy < 0) throw new Error(`sqliteBusyTimeoutMs: expected a non-negative integer, got ${busy}`);
  if (!isMemory(path)) createOwnerOnly(path);
  const raw = new SqliteDatabase(path);
  try {
    raw.pragma("journal_mode = WAL");
    raw.pragma(`synchronous = ${sync.toUpperCase()}`);
    raw.pragma("foreign_keys = ON");
    raw.pragma(`busy_timeout = ${busy}`);
    // Statement journals in memory: a group commit (group.ts) runs each call in a savepoint, and SQLite keeps the
    // pre-image of every page a savepoint changes so that it can roll the savepoint back. Past 64 KiB that journal
    // went to a temporary file — two writes per page, ~10 µs each on the benchmark VM, the largest syscall count of
    // issuing a credential (docs/profiling-issuance.md, 2026-12-03). It only ever serves a rollback of the open
    // transaction, so durability is unchanged. Temporary tables and sorts stay in memory too.
    raw.pragma("temp_store = MEMORY");
  } catch (e) {
    raw.close();
    throw e;
  }
  // Kysely's SQLite driver serialises all work on this one connection (better-sqlite3 is synchronous).
  const checkpoint = options.sqliteCheckpoint ?? "inline";
  if (checkpoint !== "inline" && checkpoint !== "background") throw new Error(`sqliteCheckpoint: expected "inline" or "background", got ${String(checkpoint)}`);
  const bg = checkpoint === "background" && !isMemory(path) ? new BackgroundCheckpoint(raw, path) : undefined;
  return new Kysely<Database>({ dialect: new SqliteDialect({ database: new CachedStatements(raw, 256, bg) }) });
}

/** `:memory:` (and SQLite's temporary-DB empty name): no file. */
const isMemory = (path: string): boolean => path === ":memory:" || path === "" || path.startsWith("file::memory:");

/** Creates the DB file owner-only (0600) if it does not exist; an existing file is left as it is. */
function createOwnerOnly(path: string): void {
  try {
    closeSync(openSync(path, "wx", 0o600));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
  }
}

/**
 * The files of a SQLite DB named by `url` that other local users may read or write (mode broader than 0600 for
 * files, 0700 for the DB's directory): the DB file, its -wal and -shm, and the directory holding them. Empty for
 * PostgreSQL, an in-memory DB, files that do not exist, and Windows (no POSIX modes).
 */
export function looseSqliteFiles(url: string): { path: string; mode: string }[] {
  if (process.platform === "win32" || engineForUrl(url) !== "sqlite") return [];
  const path = sqlitePath(url);
  if (isMemory(path)) return [];
  const file = resolve(path);
  const loose: { path: string; mode: string }[] = [];
  for (const p of [dirname(file), file, `${file}-wal`, `${file}-shm`]) {
    let mode: number;
    try {
      mode = statSync(p).mode & 0o777;
    } catch {
      continue;
    }
    if (mode & 0o077) loose.push({ path: p, mode: `0${mode.toString(8).padStart(3, "0")}` });
  }
  return loose;
}

/** Kysely prepares every query anew; this keeps the compiled statements of the hot paths (inserts, pages). */
class CachedStatements implements KyselySqliteDatabase {
  readonly #cache = new Map<string, SqliteDatabase.Statement>();
  constructor(
    readonly raw: SqliteDatabase.Database,
    readonly limit = 256,
    readonly bg?: BackgroundCheckpoint,
  ) {}

  prepare(sql: string): SqliteStatement {
    const hit = this.#cache.get(sql);
    // A statement still iterating (a streamed select) cannot be re-entered: prepare a fresh one.
    if (hit && !hit.busy) return hit as unknown as SqliteStatement;
    const stmt = this.raw.prepare(sql);
    if (!hit) {
      if (this.#cache.size >= this.limit) this.#cache.delete(this.#cache.keys().next().value as string);
      this.#cache.set(sql, stmt);
    }
    return stmt as unknown as SqliteStatement;
  }

  close(): void {
    this.#cache.clear();
    this.bg?.stop();
    this.raw.close();
  }
}

// The checkpointer: its own connection on the same file, PASSIVE checkpoints (never waits for the writer or
// readers; what it cannot copy now it copies next time). It asks for nothing and reports nothing.
const CHECKPOINT_WORKER = `
const { parentPort, workerData } = require("node:worker_threads");
const Database = require(workerData.module);
const db = new Database(workerData.path, { fileMustExist: true });
db.pragma("busy_timeout = 1000");
const timer = setInterval(() => { try { db.pragma("wal_checkpoint(PASSIVE)"); } catch {} }, workerData.everyMs);
parentPort.on("message", () => { clearInterval(timer); db.close(); parentPort.close(); });
`;

/**
 * WAL checkpoints in a worker thread (seen in the issuance profile: inline auto-checkpoints cost the serving
 * thread about half of its commit time). If the worker cannot start, the connection goes back to SQLite's
 * auto-checkpoint, so the WAL never grows without bound.
 */
class BackgroundCheckpoint {
  readonly #worker: Worker;
  constructor(raw: SqliteDatabase.Database, path: string, everyMs = 50) {
    raw.pragma("wal_autocheckpoint = 0");
    this.#worker = new Worker(CHECKPOINT_WORKER, { eval: true, workerData: { path, everyMs, module: requireFrom.resolve("better-sqlite3") } });
    this.#worker.on("error", () => {
      if (raw.open) raw.pragma("wal_autocheckpoint = 1000");
    });
    this.#worker.unref();
  }
  stop(): void {
    this.#worker.postMessage("stop");
  }
}

const PG_INT8 = 20;

function openPostgres(url: string, options: OpenOptions): Db {
  const size = options.pgPoolSize ?? 10;
  if (!Number.isInteger(size) || size < 1) throw new Error(`pgPoolSize: expected a positive integer, got ${size}`);
  const pool = new pg.Pool({
    connectionString: url,
    max: size,
    types: {
      getTypeParser: ((oid: number, format?: "text" | "binary") => (oid === PG_INT8 ? parseInt8 : pg.types.getTypeParser(oid, format))) as typeof pg.types.getTypeParser,
    },
  });
  // An idle client losing its server must not crash the process; the next query reports the error.
  pool.on("error", () => {});
  return new Kysely<Database>({ dialect: new PostgresDialect({ pool: new PreparingPool(pool) }) });
}

function parseInt8(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new RangeError(`int8 value ${text} exceeds 2^53`);
  return n;
}

/** Runs parameterised DML as named prepared statements (parsed and planned once per connection). */
class PreparingPool implements PostgresPool {
  constructor(readonly pool: pg.Pool) {}

  async connect(): Promise<PostgresPoolClient> {
    const client = await this.pool.connect();
    const query = client.query.bind(client) as (...args: unknown[]) => unknown;
    const wrapped = {
      query(sqlOrCursor: unknown, parameters?: ReadonlyArray<unknown>): unknown {
        if (typeof sqlOrCursor === "string" && parameters && parameters.length > 0 && /^\s*(select|insert|update|delete|with)\b/i.test(sqlOrCursor)) {
          const name = "ck_" + createHash("sha256").update(sqlOrCursor).digest("hex").slice(0, 40);
          return query({ name, text: sqlOrCursor, values: parameters });
        }
        return parameters === undefined ? query(sqlOrCursor) : query(sqlOrCursor, parameters);
      },
      release(): void {
        client.release();
      },
    };
    return wrapped as PostgresPoolClient;
  }

  end(): Promise<void> {
    return this.pool.end();
  }
}
