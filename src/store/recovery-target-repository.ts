// The issuer's card records a reproduced key may go into (src/recovery/target.ts), read from the issuer's tables of
// the same system DB (cards, card_key_sets, key_pairs: store.ts owns them), one code path for SQLite and PostgreSQL.
// SqlRecoveryRepository (recovery-repository.ts) delegates to it.
//
// Never: writes — the issuer's records are the issuer's (store.ts).

import type { Kysely, Transaction } from "kysely";
import type { Database, Db } from "./db.ts";
import { bytes } from "./recovery-tables.ts";
import type { TargetCardRecord } from "../recovery/records.ts";

export type { TargetCardRecord };

/** The issuer's tables a reproduction target is read from (never written here). */
type IssuerCardTables = Pick<Database, "cards" | "card_key_sets" | "key_pairs">;

export class RecoveryTargetRepository {
  private readonly issuer: Kysely<IssuerCardTables>;

  /** @param db the system DB (or a transaction of it) */
  constructor(db: Db | Kysely<unknown> | Transaction<Database>) {
    this.issuer = db as unknown as Kysely<IssuerCardTables>;
  }

  // --- the issuer's card records a reproduced key may go into (read-only) ---------------------------------------------

  /** An issuer card record with its current key set, or undefined when the issuer has no such card. */
  async cardRecord(cardId: string): Promise<TargetCardRecord | undefined> {
    const r = await this.issuer
      .selectFrom("cards as c")
      .leftJoin("card_key_sets as k", "k.id", "c.current_key_set_id")
      .select(["c.id", "c.user_id", "c.status", "c.valid_from", "c.valid_until", "k.id as k_id", "k.custody_ref as k_custody_ref", "k.status as k_status"])
      .where("c.id", "=", cardId)
      .executeTakeFirst();
    if (!r) return undefined;
    const rec: TargetCardRecord = { id: r.id, userId: r.user_id, status: r.status, validFrom: Number(r.valid_from), validUntil: Number(r.valid_until) };
    if (r.k_id !== null && r.k_custody_ref !== null && r.k_status !== null) rec.keySet = { id: r.k_id, custodyRef: r.k_custody_ref, status: r.k_status };
    return rec;
  }

  /** The public keys (SPKI DER) of the issuer's active key pairs destined for `slot` of card `cardId` (created after `since`, when given). */
  async activeKeysInSlot(cardId: string, slot: string, since?: number): Promise<Uint8Array[]> {
    let q = this.issuer.selectFrom("key_pairs").select("public_key").where("card_id", "=", cardId).where("slot", "=", slot).where("status", "=", "active");
    if (since !== undefined) q = q.where("created_at", ">", since);
    return (await q.execute()).map((r) => bytes(r.public_key));
  }
}
