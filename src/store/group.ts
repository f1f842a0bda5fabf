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

import { sql, type Kysely, type Transaction } from "kysely";

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

async function runGroups(db: Kysely<unknown>, g: GroupQueue): Promise<void> {
  g.running = true;
  try {
    while (g.queue.length) {
      const batch = g.queue.splice(0, GROUP_MAX);
      if (batch.length === 1) {
        const [it] = batch;
        await db.transaction().execute(it.fn).then(it.resolve, it.reject);
        continue;
      }
      const done: { it: GroupItem; ok: boolean; value: unknown }[] = [];
      try {
        await db.transaction().execute(async (trx) => {
          for (const [i, it] of batch.entries()) {
            await sql.raw(`savepoint g${i}`).execute(trx);
            try {
              const value = await it.fn(trx);
              await sql.raw(`release savepoint g${i}`).execute(trx);
              done.push({ it, ok: true, value });
            } catch (e) {
              await sql.raw(`rollback to savepoint g${i}`).execute(trx);
              await sql.raw(`release savepoint g${i}`).execute(trx);
              done.push({ it, ok: false, value: e });
            }
          }
        });
      } catch (e) {
        for (const it of batch) it.reject(e);
        continue;
      }
      for (const d of done) (d.ok ? d.it.resolve : d.it.reject)(d.value);
    }
  } finally {
    g.running = false;
  }
}
