// Migration 0013: the card lifecycle (issue 15 §5; src/issuer/card-lifecycle.ts), kept by src/store/store.ts.
//
//   cards   status may also be 'destroyed' (the card was reported destroyed, or its key was reproduced into a
//           replacement card: seed 001 FIG. 11-12); retired and destroyed are final.
//         + status_version: bumped by every status change. A terminal token carries the version it was issued
//           under and acts for its card only while the card is active under that same version, read from this row
//           on every request: a suspension stops every live token at once on every server of one database, and a
//           resume does not bring the tokens from before the suspension back.
//         + status_changed_at / status_changed_by / status_reason: the last change (the audit log keeps them all).
//
// SQLite cannot change a CHECK constraint in place: the table is rebuilt (SQLite's "making other kinds of table
// schema changes" procedure: foreign keys off, a new table, rows copied, the old one dropped, the new one renamed,
// its indexes made again, foreign_key_check, foreign keys back on), in one transaction. Kysely runs SQLite
// migrations on one connection and outside a transaction, which is what PRAGMA foreign_keys needs. PostgreSQL
// swaps the constraint and adds the columns in the migration's own transaction. Self-contained: a migration never
// changes.

import { sql, type Kysely, type Migration } from "kysely";
import type { Engine } from "../db.ts";

const STATUSES = "status in ('issued', 'active', 'suspended', 'retired', 'destroyed')";
const OLD_STATUSES = "status in ('issued', 'active', 'suspended', 'retired')";

export function cardLifecycle(engine: Engine): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      if (engine === "postgres") {
        await sql`alter table cards drop constraint cards_status`.execute(db);
        await sql.raw(`alter table cards add constraint cards_status check (${STATUSES})`).execute(db);
        await sql`alter table cards add column status_version bigint not null default 0`.execute(db);
        await sql`alter table cards add column status_changed_at bigint`.execute(db);
        await sql`alter table cards add column status_changed_by text`.execute(db);
        await sql`alter table cards add column status_reason text`.execute(db);
        return;
      }
      await rebuildSqliteCards(db, STATUSES, true);
    },

    async down(db: Kysely<unknown>): Promise<void> {
      if (engine === "postgres") {
        await sql`update cards set status = 'retired' where status = 'destroyed'`.execute(db);
        await sql`alter table cards drop constraint cards_status`.execute(db);
        await sql.raw(`alter table cards add constraint cards_status check (${OLD_STATUSES})`).execute(db);
        for (const c of ["status_version", "status_changed_at", "status_changed_by", "status_reason"]) await sql.raw(`alter table cards drop column ${c}`).execute(db);
        return;
      }
      await sql`update cards set status = 'retired' where status = 'destroyed'`.execute(db);
      await rebuildSqliteCards(db, OLD_STATUSES, false);
    },
  };
}

/** The SQLite rebuild of `cards` with the status check `statuses`, with (up) or without (down) the lifecycle columns. */
async function rebuildSqliteCards(db: Kysely<unknown>, statuses: string, lifecycle: boolean): Promise<void> {
  const extra = lifecycle ? ", status_version bigint not null default 0, status_changed_at bigint, status_changed_by text, status_reason text" : "";
  const base = "id, user_id, status, valid_from, valid_until, current_key_set_id, last_package_seq, created_at, updated_at";
  await sql`pragma foreign_keys = off`.execute(db);
  try {
    await db.transaction().execute(async (trx) => {
      await sql
        .raw(
          `create table cards_0013 (id text primary key, user_id text not null references users (id), status text not null, ` +
            `valid_from bigint not null, valid_until bigint not null, current_key_set_id text, last_package_seq bigint default 0 not null, ` +
            `created_at bigint not null, updated_at bigint not null${extra}, ` +
            `constraint cards_status check (${statuses}), constraint cards_validity check (valid_from <= valid_until), ` +
            `constraint cards_current_key_set foreign key (current_key_set_id) references card_key_sets (id))`,
        )
        .execute(trx);
      await sql.raw(`insert into cards_0013 (${base}) select ${base} from cards`).execute(trx);
      await sql`drop table cards`.execute(trx);
      await sql`alter table cards_0013 rename to cards`.execute(trx);
      await sql`create index cards_user on cards (user_id)`.execute(trx);
      await sql`create index cards_valid_until on cards (valid_until)`.execute(trx);
      const broken = await sql<{ table: string }>`pragma foreign_key_check`.execute(trx);
      if (broken.rows.length) throw new Error(`0013_card_lifecycle: ${broken.rows.length} foreign key(s) broken after rebuilding cards (first in ${broken.rows[0].table})`);
    });
  } finally {
    await sql`pragma foreign_keys = on`.execute(db);
  }
}
