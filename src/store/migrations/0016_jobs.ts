// Migration 0016: background jobs with leases (issue 16 §2), so that several servers on one database run each job
// once and take over one whose server died. src/issuer/jobs.ts is the port, src/store/job-repository.ts the rows.
//
//   jobs   id, kind ("rotation.rewrap"; later update campaigns, propagation runs), subject (the rotation's id),
//          state queued | running | done | failed | stopped, lease_owner (a server instance's id) and lease_until
//          (epoch ms, the store's clock: set only by a guarded UPDATE — a claim takes a queued job or an expired
//          lease), attempts (claims), progress (JSON text, never secret), error (text), actor (who asked),
//          created_at / updated_at. One live job per (kind, subject): a unique index over the queued and running
//          rows (partial: final rows stay as history).
//
// Times are epoch milliseconds (bigint) — the conventions of src/store/db.ts.

import { sql, type Kysely, type Migration } from "kysely";
import type { Engine } from "../db.ts";

const LIVE = "state in ('queued', 'running')";

export function jobsTable(_engine: Engine): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("jobs")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("kind", "text", (c) => c.notNull())
        .addColumn("subject", "text", (c) => c.notNull())
        .addColumn("state", "text", (c) => c.notNull())
        .addColumn("lease_owner", "text")
        .addColumn("lease_until", "bigint")
        .addColumn("attempts", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("progress", "text")
        .addColumn("error", "text")
        .addColumn("actor", "text", (c) => c.notNull())
        .addColumn("created_at", "bigint", (c) => c.notNull())
        .addColumn("updated_at", "bigint", (c) => c.notNull())
        .addCheckConstraint("jobs_state", sql`state in ('queued', 'running', 'done', 'failed', 'stopped')`)
        .execute();
      await db.schema.createIndex("jobs_live_subject").unique().on("jobs").columns(["kind", "subject"]).where(sql.raw<boolean>(LIVE)).execute();
      await db.schema.createIndex("jobs_subject").on("jobs").columns(["kind", "subject", "created_at"]).execute();
      await db.schema.createIndex("jobs_runnable").on("jobs").columns(["state", "lease_until", "created_at"]).execute();
    },
    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable("jobs").execute();
    },
  };
}
