// Migration 0015: the state several servers on one database share between a terminal's requests (issue 16 §1), so
// that any server behind the load balancer takes the next one. Each row expires at expires_at (epoch ms, the store's
// clock) and a sweep deletes the expired ones (src/store/relay-session-repository.ts).
//
//   relay_sessions    a relay script between its round trips: the principal that opened it (owner), the recipe that
//                     rebuilds its script(s) and what finishes it ({kind, params}, JSON), its state (JSON: the SCP03
//                     host's public values — challenges, the card's INITIALIZE UPDATE answer, MAC chaining value,
//                     counter, the MACs awaiting their responses — the chain index and the results so far; NEVER a
//                     session key or any secret) and version, the optimistic lock a round's UPDATE is guarded by
//   login_handshakes  a card login begun and not finished: the card, the client address, the key set it must prove
//                     and the SCP03 host's state before the card answered (key version and host challenge)
//   terminal_tokens   live card-bound terminal tokens: only the SHA-256 of the token (token_hash), never the token
//
// `seq` (auto-numbered) orders the handshakes and the tokens: the bounds retire the oldest first.

import type { CreateTableBuilder, Kysely, Migration } from "kysely";
import type { Engine } from "../db.ts";

export function relaySessions(engine: Engine): Migration {
  const serialPk = <T extends string>(t: CreateTableBuilder<T, never>, name: string) =>
    engine === "postgres"
      ? t.addColumn(name, "bigint", (c) => c.primaryKey().generatedByDefaultAsIdentity())
      : t.addColumn(name, "integer", (c) => c.primaryKey().autoIncrement());
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("relay_sessions")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("owner", "text", (c) => c.notNull())
        .addColumn("recipe", "text", (c) => c.notNull())
        .addColumn("state", "text", (c) => c.notNull())
        .addColumn("version", "integer", (c) => c.notNull())
        .addColumn("created_at", "bigint", (c) => c.notNull())
        .addColumn("expires_at", "bigint", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("relay_sessions_owner").on("relay_sessions").columns(["owner", "expires_at"]).execute();
      await db.schema.createIndex("relay_sessions_expiry").on("relay_sessions").columns(["expires_at"]).execute();

      await serialPk(db.schema.createTable("login_handshakes"), "seq")
        .addColumn("id", "text", (c) => c.notNull().unique())
        .addColumn("card_id", "text", (c) => c.notNull())
        .addColumn("client", "text", (c) => c.notNull())
        .addColumn("key_set_id", "text", (c) => c.notNull())
        .addColumn("host", "text", (c) => c.notNull())
        .addColumn("started_at", "bigint", (c) => c.notNull())
        .addColumn("expires_at", "bigint", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("login_handshakes_card").on("login_handshakes").columns(["card_id", "seq"]).execute();
      await db.schema.createIndex("login_handshakes_card_client").on("login_handshakes").columns(["card_id", "client", "seq"]).execute();
      await db.schema.createIndex("login_handshakes_expiry").on("login_handshakes").columns(["expires_at"]).execute();

      await serialPk(db.schema.createTable("terminal_tokens"), "seq")
        .addColumn("token_hash", "text", (c) => c.notNull().unique())
        .addColumn("card_id", "text", (c) => c.notNull())
        .addColumn("status_version", "integer", (c) => c.notNull())
        .addColumn("created_at", "bigint", (c) => c.notNull())
        .addColumn("expires_at", "bigint", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("terminal_tokens_card").on("terminal_tokens").columns(["card_id", "seq"]).execute();
      await db.schema.createIndex("terminal_tokens_expiry").on("terminal_tokens").columns(["expires_at"]).execute();
    },
    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable("terminal_tokens").execute();
      await db.schema.dropTable("login_handshakes").execute();
      await db.schema.dropTable("relay_sessions").execute();
    },
  };
}
