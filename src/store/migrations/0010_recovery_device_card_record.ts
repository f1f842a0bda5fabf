// Migration 0010: which card record reaches the registered device of an escrowed key (issue 9 item 1), kept by
// src/store/recovery-repository.ts for src/recovery/service.ts and src/recovery/target.ts.
//
//   recovery_devices   + card_record_id: the issuer's card record (cards.id) whose SCP03 key set opens the physical
//                        card registered for the escrow (FIG. 10 unit 24) — the escrow's own card record at issue,
//                        the replacement card's record after a card-destroyed reproduction (FIG. 11-12). A key-lost
//                        reproduction goes into that card record's card and no other; a card-destroyed request names
//                        its replacement card record, which must not already be any escrow's registered device.
//                      + an index on it.
//
// Backfill: a device of generation 1 is the escrow's own card (card_id). A device replaced before this migration
// (generation > 1) is named by the key set it was registered with, when that key set names a card record of the
// issuer (a derived key set's cardId); otherwise it stays NULL, and its key-lost reproductions are refused
// (target_unfit) until the request is filed as card-destroyed naming the card. Self-contained: a migration never
// changes.

import { sql, type Kysely, type Migration } from "kysely";
import type { Engine } from "../db.ts";

type Tables = {
  recovery_devices: { card_id: string; key_set: string; generation: number; card_record_id: string | null };
  cards: { id: string };
};

export function recoveryDeviceCardRecord(_engine: Engine): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable("recovery_devices").addColumn("card_record_id", "text").execute();
      await db.schema.createIndex("recovery_devices_card_record").on("recovery_devices").column("card_record_id").execute();
      await sql`update recovery_devices set card_record_id = card_id where generation = 1`.execute(db);
      const t = db.withTables<Tables>() as unknown as Kysely<Tables>;
      const replaced = await t.selectFrom("recovery_devices").select(["card_id", "key_set"]).where("generation", ">", 1).execute();
      for (const r of replaced) {
        let named: unknown;
        try {
          named = (JSON.parse(r.key_set) as { cardId?: unknown }).cardId;
        } catch {
          continue;
        }
        if (typeof named !== "string" || !(await t.selectFrom("cards").select("id").where("id", "=", named).executeTakeFirst())) continue;
        await t.updateTable("recovery_devices").set({ card_record_id: named }).where("card_id", "=", r.card_id).execute();
      }
    },

    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropIndex("recovery_devices_card_record").execute();
      await db.schema.alterTable("recovery_devices").dropColumn("card_record_id").execute();
    },
  };
}
