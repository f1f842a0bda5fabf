// Migration 0018: several issuer servers on one database (issue 16 §1-2). Kept by src/store/server-instances.ts for
// src/server/cluster.ts and src/server/live-relay.ts.
//
//   server_instances     one row per running `cardkms issuer serve` process: its random id (new at every start), the
//                        URL the other servers reach it at (advertise_url: on the servers' private network), when it
//                        started and its last heartbeat. A server is live while its heartbeat is recent; a stopped one
//                        deletes its row, a crashed one's row goes stale (and is deleted by the next server that starts
//                        after a day).
//   live_relay_sessions  one row per open live relay session (key generation, key reproduction): its id, the principal
//                        that opened it, the server whose process runs the operation (instance_id), the kind, and
//                        when it expires. The per-principal and total bounds count these rows; a round that lands on
//                        another server finds the owner here. No APDU, response or key: those stay in the owner's memory.
//
// Public values only. Times are epoch milliseconds (bigint) — the conventions of src/store/db.ts.

import type { ColumnDefinitionBuilder, Kysely, Migration } from "kysely";
import type { Engine } from "../db.ts";

export function serverInstances(_engine: Engine): Migration {
  const notNull = (c: ColumnDefinitionBuilder) => c.notNull();
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("server_instances")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("advertise_url", "text", notNull)
        .addColumn("started_at", "bigint", notNull)
        .addColumn("heartbeat_at", "bigint", notNull)
        .execute();
      await db.schema.createIndex("server_instances_heartbeat").on("server_instances").columns(["heartbeat_at", "id"]).execute();
      // No foreign key to server_instances: a session's owner row may be gone (crashed and reaped) before the session row.
      await db.schema
        .createTable("live_relay_sessions")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("kind", "text", notNull)
        .addColumn("owner", "text", notNull)
        .addColumn("instance_id", "text", notNull)
        .addColumn("created_at", "bigint", notNull)
        .addColumn("expires_at", "bigint", notNull)
        .execute();
      await db.schema.createIndex("live_relay_sessions_owner").on("live_relay_sessions").columns(["kind", "owner", "expires_at"]).execute();
      await db.schema.createIndex("live_relay_sessions_instance").on("live_relay_sessions").columns(["instance_id", "kind", "expires_at"]).execute();
    },
    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable("live_relay_sessions").execute();
      await db.schema.dropTable("server_instances").execute();
    },
  };
}
