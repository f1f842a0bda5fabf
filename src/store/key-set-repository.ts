// Card key sets (ST11-ST12, validity SkVT) in the issuer's store: which card each belongs to, its KVN and version, its
// status and the custody reference of its keys; which one is a card's current key set; and the key sets whose
// validity runs out (FIG. 5, para 0062). Store (store.ts) delegates to it; one code path for SQLite and PostgreSQL.
//
// Never: a key value. Only custody references (src/custody) name the keys.

import type { Selectable, Transaction } from "kysely";
import type { Database, KeySetStatus } from "./db.ts";
import { newId } from "./ids.ts";
import { checkValidity, insertOrConflict, StoreError, StoreRepository } from "./repository.ts";
import type { CardKeySet, NewKeySet } from "../issuer/records.ts";

export class KeySetRepository extends StoreRepository<KeySetRepository> {
  protected override bind(trx: Transaction<Database>): KeySetRepository {
    return new KeySetRepository(trx, this.clock);
  }

  /**
   * Adds a card key set (ST11-ST12: only its custody reference, never the key values). With `makeCurrent`, new
   * private keys for the card are wrapped under it from now on.
   */
  async addKeySet(input: NewKeySet): Promise<CardKeySet> {
    if (!Number.isInteger(input.kvn) || input.kvn < 1 || input.kvn > 127) throw new StoreError("invalid", `kvn: expected 1..127, got ${input.kvn}`);
    if (!Number.isInteger(input.version) || input.version < 1) throw new StoreError("invalid", `key set version: expected a positive integer, got ${input.version}`);
    checkValidity("key set", input.validFrom, input.validUntil);
    if (!input.custodyRef) throw new StoreError("invalid", "custodyRef: empty");
    const row = {
      id: input.id ?? newId(),
      card_id: input.cardId,
      kvn: input.kvn,
      version: input.version,
      status: input.status ?? ("active" as KeySetStatus),
      valid_from: input.validFrom,
      valid_until: input.validUntil,
      custody_ref: input.custodyRef,
      label: input.label ?? null,
      created_at: this.now(),
    };
    return this.transaction(async (s) => {
      await insertOrConflict(
        s.db.insertInto("card_key_sets").values(row).execute(),
        `key set ${row.id}: exists, card ${input.cardId} unknown, or KVN ${input.kvn} / version ${input.version} already used on it`,
      );
      if (input.makeCurrent) await s.setCurrentKeySet(input.cardId, row.id);
      return toKeySet(row);
    });
  }

  async getKeySet(id: string): Promise<CardKeySet | undefined> {
    const row = await this.db.selectFrom("card_key_sets").selectAll().where("id", "=", id).executeTakeFirst();
    return row && toKeySet(row);
  }

  async listKeySets(cardId: string): Promise<CardKeySet[]> {
    const rows = await this.db.selectFrom("card_key_sets").selectAll().where("card_id", "=", cardId).orderBy("version").execute();
    return rows.map(toKeySet);
  }

  /** Makes `keySetId` (which must belong to the card) the one new private keys are wrapped under. */
  async setCurrentKeySet(cardId: string, keySetId: string): Promise<void> {
    const r = await this.db
      .updateTable("cards")
      .set({ current_key_set_id: keySetId, updated_at: this.now() })
      .where("id", "=", cardId)
      .where((eb) => eb.exists(eb.selectFrom("card_key_sets").select("id").where("id", "=", keySetId).where("card_id", "=", cardId)))
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) !== 1) throw new StoreError("not_found", `card ${cardId} has no key set ${keySetId}`);
  }

  async setKeySetStatus(id: string, status: KeySetStatus): Promise<void> {
    const r = await this.db.updateTable("card_key_sets").set({ status }).where("id", "=", id).executeTakeFirst();
    if (Number(r.numUpdatedRows) !== 1) throw new StoreError("not_found", `key set ${id} not found`);
  }

  // ---- validity (FIG. 5, para 0062) --------------------------------------------------------------------------

  /** Card key sets not retired whose validity SkVT ends at or before `until`. */
  async expiringKeySets(until: number, page: { afterId?: string; limit?: number } = {}): Promise<CardKeySet[]> {
    const rows = await this.db
      .selectFrom("card_key_sets")
      .selectAll()
      .where("valid_until", "<=", until)
      .where("status", "!=", "retired")
      .where("id", ">", page.afterId ?? "")
      .orderBy("id")
      .limit(page.limit ?? 1000)
      .execute();
    return rows.map(toKeySet);
  }
}

export function toKeySet(r: Selectable<Database["card_key_sets"]>): CardKeySet {
  return {
    id: r.id,
    cardId: r.card_id,
    kvn: r.kvn,
    version: r.version,
    status: r.status,
    validFrom: r.valid_from,
    validUntil: r.valid_until,
    custodyRef: r.custody_ref,
    label: r.label,
    createdAt: r.created_at,
  };
}
