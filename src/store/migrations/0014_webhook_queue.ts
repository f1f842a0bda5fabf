// Migration 0014: webhook delivery per receiver (issue 15 §6). One row per (event, webhook) with its own state, so a
// slow or failing receiver has its own schedule and holds back nobody else's deliveries, and several servers on one
// database claim deliveries instead of sending the same one at once.
//
//   webhook_queue        one row per (event, subscribed webhook): status pending | delivered | dead (the dead-letter
//                        record: gave up after the last attempt; an operator may retry it), attempts, next_attempt_at
//                        (epoch ms; the backoff schedule, kept across restarts), lease_owner / lease_until (the claim:
//                        a server sends a delivery only after an UPDATE ... WHERE unclaimed gave it the lease), and the
//                        last error (never the URL or the secret)
//   events.fanned_out_at when the event's deliveries were queued (null: not yet); the dispatcher queues them
//
// Upgrade: the acknowledgements of migration 0005 (webhook_deliveries) become delivered rows, events already
// delivered count as queued, and the table goes. An event not yet delivered is queued by the next dispatcher pass for
// the webhooks subscribed then, at its old next_attempt_at; the webhooks that had acknowledged it are not sent it again.
//
// Times are epoch milliseconds (bigint) — the conventions of src/store/db.ts.

import { sql, type CreateTableBuilder, type Kysely, type Migration } from "kysely";
import type { Engine } from "../db.ts";

export function webhookQueue(engine: Engine): Migration {
  const eventId = engine === "postgres" ? "bigint" : "integer";
  /** A table of (event, webhook) pairs, as webhook_deliveries (0005) and webhook_queue are. */
  const pairs = (db: Kysely<unknown>, name: string): CreateTableBuilder<string, "event_id" | "webhook_id"> =>
    db.schema
      .createTable(name)
      .addColumn("event_id", eventId, (c) => c.notNull().references("events.id").onDelete("cascade"))
      .addColumn("webhook_id", "text", (c) => c.notNull().references("webhooks.id").onDelete("cascade"));
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await pairs(db, "webhook_queue")
        .addColumn("status", "text", (c) => c.notNull())
        .addColumn("attempts", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("next_attempt_at", "bigint", (c) => c.notNull())
        .addColumn("lease_owner", "text")
        .addColumn("lease_until", "bigint")
        .addColumn("last_error", "text")
        .addColumn("created_at", "bigint", (c) => c.notNull())
        .addColumn("updated_at", "bigint", (c) => c.notNull())
        .addColumn("delivered_at", "bigint")
        .addColumn("dead_at", "bigint")
        .addPrimaryKeyConstraint("webhook_queue_pk", ["event_id", "webhook_id"])
        .addCheckConstraint("webhook_queue_status", sql`status in ('pending', 'delivered', 'dead')`)
        .execute();
      await db.schema.createIndex("webhook_queue_due").on("webhook_queue").columns(["status", "webhook_id", "next_attempt_at", "event_id"]).execute();
      await db.schema.alterTable("events").addColumn("fanned_out_at", "bigint").execute();
      await db.schema.createIndex("events_fan_out").on("events").columns(["fanned_out_at", "id"]).execute();
      await sql`insert into webhook_queue (event_id, webhook_id, status, attempts, next_attempt_at, created_at, updated_at, delivered_at)
        select event_id, webhook_id, 'delivered', 1, delivered_at, delivered_at, delivered_at, delivered_at from webhook_deliveries`.execute(db);
      await sql`update events set fanned_out_at = delivered_at where delivered_at is not null`.execute(db);
      await db.schema.dropTable("webhook_deliveries").execute();
    },
    // Back to 0005's shape: the acknowledgements from the delivered rows; dead letters and schedules are lost.
    async down(db: Kysely<unknown>): Promise<void> {
      await pairs(db, "webhook_deliveries")
        .addColumn("delivered_at", "bigint", (c) => c.notNull())
        .addPrimaryKeyConstraint("webhook_deliveries_pk", ["event_id", "webhook_id"])
        .execute();
      await sql`insert into webhook_deliveries (event_id, webhook_id, delivered_at)
        select event_id, webhook_id, delivered_at from webhook_queue where status = 'delivered' and delivered_at is not null`.execute(db);
      await db.schema.dropIndex("events_fan_out").execute();
      await db.schema.alterTable("events").dropColumn("fanned_out_at").execute();
      await db.schema.dropTable("webhook_queue").execute();
    },
  };
}
