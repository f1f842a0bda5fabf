// Migration 0008: what the issuer remembers of each card's state counter (issue 17 §6; src/card/state-counter.ts),
// kept by src/store/state-counter-repository.ts for the terminal login (src/server/terminal-routes.ts).
//
//   card_state_counters   one row per card that logged in since: the highest state counter it reported at an
//                         accepted login, and the rollback flag — when a login reported a counter that did not go
//                         above it (the card image went back to an older copy, or a clone logged in), with the
//                         counter that login reported. A flagged card's logins are refused until an operator
//                         clears the flag, which removes the row: the next login starts over.
//
// Public values only (counters, times). Times are epoch milliseconds (bigint) — the conventions of src/store/db.ts.

import { sql, type ColumnDefinitionBuilder, type Kysely, type Migration } from "kysely";
import type { Engine } from "../db.ts";

export function cardStateCounters(_engine: Engine): Migration {
  const notNull = (c: ColumnDefinitionBuilder) => c.notNull();
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("card_state_counters")
        .addColumn("card_id", "text", (c) => c.primaryKey().references("cards.id"))
        /** The highest state counter the card reported at an accepted login. */
        .addColumn("counter", "bigint", notNull)
        .addColumn("updated_at", "bigint", notNull)
        /** When a login reported a counter not above `counter`: the flag; NULL while the card is not flagged. */
        .addColumn("rollback_at", "bigint")
        /** The counter that login reported. */
        .addColumn("rollback_counter", "bigint")
        .addCheckConstraint("card_state_counters_counter", sql`counter >= 0`)
        .addCheckConstraint("card_state_counters_rollback", sql`(rollback_at is null) = (rollback_counter is null)`)
        .execute();
      await db.schema.createIndex("card_state_counters_rollback").on("card_state_counters").column("rollback_at").execute();
    },
    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable("card_state_counters").execute();
    },
  };
}
