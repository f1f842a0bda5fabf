// Migration 0005: webhook delivery state in the DB (issue 3, flow 5.f), so that a restart neither re-sends an
// event to the webhooks that already acknowledged it nor forgets when the next attempt is due.
//
//   webhook_deliveries   one row per (event, webhook) that answered 2xx; primary key (event_id, webhook_id)
//   events.next_attempt_at  epoch ms before which a failed event is not retried (null: due now); undelivered
//                        events are selected by it, so events that keep failing do not hold newer ones back
//
// Times are epoch milliseconds (bigint) — the conventions of src/store/db.ts.

import type { Kysely, Migration } from "kysely";
import type { Engine } from "../db.ts";

export function webhookDeliveries(engine: Engine): Migration {
  const eventId = engine === "postgres" ? "bigint" : "integer";
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("webhook_deliveries")
        .addColumn("event_id", eventId, (c) => c.notNull().references("events.id").onDelete("cascade"))
        .addColumn("webhook_id", "text", (c) => c.notNull().references("webhooks.id").onDelete("cascade"))
        .addColumn("delivered_at", "bigint", (c) => c.notNull())
        .addPrimaryKeyConstraint("webhook_deliveries_pk", ["event_id", "webhook_id"])
        .execute();
      await db.schema.alterTable("events").addColumn("next_attempt_at", "bigint").execute();
      await db.schema.createIndex("events_due").on("events").columns(["delivered_at", "next_attempt_at", "id"]).execute();
    },
  };
}
