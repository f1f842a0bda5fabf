// Group commit for the system DB: calls that arrive while a group is committing run together in the next
// transaction, each inside its own savepoint (a failing call rolls back only its own changes and gets its own
// error), and are committed at once — one commit (one WAL append; one fsync under synchronous=full or on
// PostgreSQL) for the whole group. With no concurrency a group is one call and nothing waits.
//
// The queue belongs to the database, not to the caller: the issuer's Store and the CA's SqlCaRepository on the
// same Kysely instance (or a `withTables()` view of it, which shares its executor) join the same groups, so a
// credential's CA record and the issuer's rows share one commit.
//
// A call must do all its DB work through the transaction it is given and must not wait for another group call
// (it would wait for its own group).
//
// Work a call hands to the end of its group (`deferToGroupEnd`, issue 16 §5): a call may leave rows of a kind to be
// written once for the whole group, just before the commit — the audit log's entries (audit.ts), whose append takes
// a table lock on PostgreSQL that every appending transaction waits for, so it is taken once per group, for the
// few round trips of the append and the commit, instead of from a call's append to the end of the group. What a
// call left goes with it if it fails (its savepoint rolls back); if the flush fails, the whole group fails.
//
// PostgreSQL round trips: each statement is one. A call's savepoint is opened in the same round trip that releases
// the previous call's (`release savepoint gN; savepoint gN+1`, a simple query), and the last one is left to the
// commit, which releases it anyway: one savepoint round trip per call instead of two.

import { sql, type Kysely, type Transaction } from "kysely";
import { engineOf } from "./db.ts";

/** Most calls one group takes (the rest wait for the next). */
const GROUP_MAX = 64;

interface GroupItem {
  fn: (trx: Transaction<unknown>) => Promise<unknown>;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

interface GroupQueue {
  queue: GroupItem[];
  running: boolean;
}

const queues = new WeakMap<object, GroupQueue>();

/**
 * Runs `fn` in a group transaction on `db` (see above). Inside a transaction already, `fn` joins it. Resolves
 * only after its group committed; if the commit fails, every call of the group fails.
 */
export function groupCommit<DB, T>(db: Kysely<DB> | Transaction<DB>, fn: (trx: Transaction<DB>) => Promise<T>): Promise<T> {
  if (db.isTransaction) return fn(db as Transaction<DB>);
  const key = db.getExecutor();
  let g = queues.get(key);
  if (!g) queues.set(key, (g = { queue: [], running: false }));
  const q = g;
  return new Promise<T>((resolve, reject) => {
    q.queue.push({ fn: fn as unknown as GroupItem["fn"], resolve: resolve as GroupItem["resolve"], reject });
    if (!q.running) {
      // The first call of a group waits one turn of the event loop (setImmediate: after the I/O callbacks of this
      // turn), so that the calls other requests make in the same turn join it. better-sqlite3 commits
      // synchronously, so without this window nothing could arrive "while a group commits" and every group would
      // be a single call.
      q.running = true;
      setImmediate(() => void runGroups(db as Kysely<unknown>, q));
    }
  });
}

/** Rows of one kind that the calls of a group leave to be written at its end, and how to write them. */
export interface GroupBatcher<T> {
  flush(trx: Transaction<unknown>, values: T[]): Promise<void>;
}

interface GroupState {
  /** What the running call left, by batcher, in order. */
  current: Map<GroupBatcher<unknown>, unknown[]>;
  /** What the calls that succeeded left. */
  kept: Map<GroupBatcher<unknown>, unknown[]>;
}

const groupStates = new WeakMap<object, GroupState>();

/**
 * Leaves `value` to `batcher`, to be written at the end of the group `trx` belongs to (see above); false when `trx`
 * is not a group's transaction (the caller then writes it itself).
 */
export function deferToGroupEnd<T>(trx: Kysely<unknown> | Transaction<unknown>, batcher: GroupBatcher<T>, value: T): boolean {
  const st = groupStates.get(trx);
  if (!st) return false;
  const b = batcher as GroupBatcher<unknown>;
  let list = st.current.get(b);
  if (!list) st.current.set(b, (list = []));
  list.push(value);
  return true;
}

/** A call's deferred work is kept (it succeeded) or dropped (it failed). */
function settle(st: GroupState, ok: boolean): void {
  if (ok) {
    for (const [b, vs] of st.current) {
      const kept = st.kept.get(b);
      if (kept) kept.push(...vs);
      else st.kept.set(b, vs);
    }
  }
  st.current = new Map();
}

async function flush(trx: Transaction<unknown>, st: GroupState): Promise<void> {
  for (const [b, vs] of st.kept) if (vs.length) await b.flush(trx, vs);
}

/**
 * PostgreSQL's answers that mean "another transaction won, try again": deadlock_detected (40P01) and
 * serialization_failure (40001). Groups of several servers on one database can lock the same card rows in opposite
 * orders (each group holds its rows until its commit); PostgreSQL then aborts one of them. What the loser did was
 * rolled back (its savepoint, or its whole transaction), so running it again is safe (issue 16 §4).
 */
const retryable = (e: unknown): boolean => {
  const code = (e as { code?: unknown } | null)?.code;
  return code === "40P01" || code === "40001";
};

/** Attempts of one call alone after it lost to another transaction (then its error is the caller's). */
const ALONE_ATTEMPTS = 5;

/** Runs one call in a transaction of its own; on PostgreSQL, again after a short random pause when it lost a deadlock. */
async function runAlone(db: Kysely<unknown>, it: GroupItem): Promise<void> {
  const pg = engineOf(db) === "postgres";
  for (let attempt = 1; ; attempt++) {
    try {
      const value = await db.transaction().execute(async (trx) => {
        const st: GroupState = { current: new Map(), kept: new Map() };
        groupStates.set(trx, st);
        const v = await it.fn(trx);
        settle(st, true);
        await flush(trx, st);
        return v;
      });
      it.resolve(value);
      return;
    } catch (e) {
      if (!pg || !retryable(e) || attempt >= ALONE_ATTEMPTS) {
        it.reject(e);
        return;
      }
      await new Promise((r) => setTimeout(r, 5 + Math.floor(Math.random() * 20 * attempt)));
    }
  }
}

async function runGroups(db: Kysely<unknown>, g: GroupQueue): Promise<void> {
  g.running = true;
  const pg = engineOf(db) === "postgres";
  try {
    while (g.queue.length) {
      const batch = g.queue.splice(0, GROUP_MAX);
      if (batch.length === 1) {
        await runAlone(db, batch[0]);
        continue;
      }
      const done: { it: GroupItem; ok: boolean; value: unknown }[] = [];
      /** Calls that lost a deadlock (or a serialization conflict) to another server's transaction: run again alone. */
      const again: GroupItem[] = [];
      try {
        await db.transaction().execute(async (trx) => {
          const st: GroupState = { current: new Map(), kept: new Map() };
          groupStates.set(trx, st);
          // on PostgreSQL the savepoint still open from the previous call, released with the next one's opening
          let open: number | undefined;
          for (const [i, it] of batch.entries()) {
            if (pg && open !== undefined) await sql.raw(`release savepoint g${open}; savepoint g${i}`).execute(trx);
            else await sql.raw(`savepoint g${i}`).execute(trx);
            open = undefined;
            try {
              const value = await it.fn(trx);
              if (pg) open = i;
              else await sql.raw(`release savepoint g${i}`).execute(trx);
              settle(st, true);
              done.push({ it, ok: true, value });
            } catch (e) {
              settle(st, false);
              await sql.raw(`rollback to savepoint g${i}`).execute(trx);
              await sql.raw(`release savepoint g${i}`).execute(trx);
              if (pg && retryable(e)) again.push(it);
              else done.push({ it, ok: false, value: e });
            }
          }
          await flush(trx, st);
        });
      } catch (e) {
        // The whole group lost a deadlock (e.g. at its audit lock) to another server's: every call runs again alone.
        if (pg && retryable(e)) for (const it of batch) await runAlone(db, it);
        else for (const it of batch) it.reject(e);
        continue;
      }
      for (const d of done) (d.ok ? d.it.resolve : d.it.reject)(d.value);
      for (const it of again) await runAlone(db, it);
    }
  } finally {
    g.running = false;
  }
}
