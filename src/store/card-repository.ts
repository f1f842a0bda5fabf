// Cards (ST14, validity VT) and their status (the lifecycle: issued, active, suspended, retired, destroyed) in the
// issuer's store, and the cards whose validity runs out (FIG. 5, para 0062). Store (store.ts) delegates to it; one
// code path for SQLite and PostgreSQL.
//
// Owns the card row's status, its status version and who changed it, why and when: every change is one transaction
// that holds the card's row (getCard with `hold`), so of concurrent changes each sees the one before it. The card's
// current key set is key-set-repository.ts's to set, its package counter package-repository.ts's.
// Never: decides who may change a status or audits it (src/issuer/card-lifecycle.ts does).

import type { Insertable, Kysely, Selectable, Transaction } from "kysely";
import { compiled } from "./compiled.ts";
import type { CardStatus, Database } from "./db.ts";
import { newId } from "./ids.ts";
import { toKeySet } from "./key-set-repository.ts";
import { checkValidity, insertOrConflict, StoreError, StoreRepository } from "./repository.ts";
import { toUser } from "./user-repository.ts";
import type { Card, CardKeySet, CardStatusChange, NewCard, User } from "../issuer/records.ts";

const CARD_STATUSES: readonly CardStatus[] = ["issued", "active", "suspended", "retired", "destroyed"];

/**
 * The card lifecycle as the store enforces it (names, roles and audit: src/issuer/card-lifecycle.ts): the statuses a
 * card may move to each status from. Nothing goes back to issued; retired and destroyed are final (a retired card
 * may still be reported destroyed).
 */
export const CARD_STATUS_FROM: Readonly<Record<CardStatus, readonly CardStatus[]>> = {
  issued: [],
  active: ["issued", "suspended"],
  suspended: ["active"],
  retired: ["issued", "active", "suspended"],
  destroyed: ["issued", "active", "suspended", "retired"],
};

// A credential request's reads of its card, compiled once (compiled.ts): the issuance hot path.
const SELECT_CARD = compiled((db: Kysely<Database>, p: { id: string }) => db.selectFrom("cards").selectAll().where("id", "=", p.id));
const HOLD_CARD_SQLITE = compiled((db: Kysely<Database>, p: { id: string }) =>
  db
    .updateTable("cards")
    .set((eb) => ({ status_version: eb.ref("status_version") }))
    .where("id", "=", p.id),
);
const CARD_CONTEXT = compiled((db: Kysely<Database>, p: { id: string }) =>
  db
    .selectFrom("cards as c")
    .innerJoin("users as u", "u.id", "c.user_id")
    .leftJoin("card_key_sets as k", "k.id", "c.current_key_set_id")
    .selectAll("c")
    .select(["u.personal_data as u_personal_data", "u.created_at as u_created_at"])
    .select(["k.card_id as k_card_id", "k.kvn as k_kvn", "k.version as k_version", "k.status as k_status", "k.valid_from as k_valid_from"])
    .select(["k.valid_until as k_valid_until", "k.custody_ref as k_custody_ref", "k.label as k_label", "k.created_at as k_created_at"])
    .where("c.id", "=", p.id),
);

export class CardRepository extends StoreRepository<CardRepository> {
  protected override bind(trx: Transaction<Database>): CardRepository {
    return new CardRepository(trx, this.clock);
  }

  /** Registers a card issued to a user (ST14), validity VT = [validFrom, validUntil]. */
  async registerCard(input: NewCard): Promise<Card> {
    checkValidity("card", input.validFrom, input.validUntil);
    const status = input.status ?? "issued";
    if (!CARD_STATUSES.includes(status)) throw new StoreError("invalid", `card status: unknown ${status}`);
    const now = this.now();
    const row: Insertable<Database["cards"]> = {
      id: input.id ?? newId(),
      user_id: input.userId,
      status,
      valid_from: input.validFrom,
      valid_until: input.validUntil,
      current_key_set_id: null,
      created_at: now,
      updated_at: now,
    };
    await insertOrConflict(this.db.insertInto("cards").values(row).execute(), `card ${row.id} exists, or user ${input.userId} unknown`);
    return (await this.getCard(row.id))!;
  }

  /**
   * The card. With `hold`, inside a transaction, its row stays locked until the transaction ends: a status change of
   * the card waits for this transaction, so what it read is still the card's status when it commits
   * (card-lifecycle.ts requireCardState). PostgreSQL: SELECT ... FOR NO KEY UPDATE. SQLite has one writer: the
   * transaction takes the write lock before it reads (a write that changes nothing), waiting for another
   * connection's writer (busy_timeout) rather than failing later when its read is no longer the latest.
   */
  async getCard(id: string, o: { hold?: boolean } = {}): Promise<Card | undefined> {
    if (o.hold && this.db.isTransaction && this.engine === "postgres") {
      const held = await this.db.selectFrom("cards").selectAll().where("id", "=", id).forNoKeyUpdate().executeTakeFirst();
      return held && toCard(held);
    }
    if (o.hold && this.db.isTransaction) await HOLD_CARD_SQLITE.execute(this.db, { id });
    const row = (await SELECT_CARD.execute(this.db, { id })).rows[0];
    return row && toCard(row);
  }

  /**
   * A card with its current key set and its user, in one read (a credential request's hot path). The key set is
   * undefined when the card has none yet.
   */
  async getCardContext(id: string): Promise<{ card: Card; keySet?: CardKeySet; user: User } | undefined> {
    const r = (await CARD_CONTEXT.execute(this.db, { id })).rows[0];
    if (!r) return undefined;
    const card = toCard(r);
    const user = toUser({ id: r.user_id, personal_data: r.u_personal_data, created_at: r.u_created_at });
    if (r.current_key_set_id === null || r.k_card_id === null) return { card, user };
    const keySet = toKeySet({
      id: r.current_key_set_id,
      card_id: r.k_card_id,
      kvn: r.k_kvn!,
      version: r.k_version!,
      status: r.k_status!,
      valid_from: r.k_valid_from!,
      valid_until: r.k_valid_until!,
      custody_ref: r.k_custody_ref!,
      label: r.k_label,
      created_at: r.k_created_at!,
    });
    return { card, keySet, user };
  }

  async listCardsForUser(userId: string): Promise<Card[]> {
    const rows = await this.db.selectFrom("cards").selectAll().where("user_id", "=", userId).orderBy("created_at").orderBy("id").execute();
    return rows.map(toCard);
  }

  /**
   * Moves card `id` to `status` as the lifecycle allows (CARD_STATUS_FROM); already there, nothing changes. A move
   * the lifecycle does not allow (out of a final status, back to issued) is a conflict. See changeCardStatus.
   */
  async setCardStatus(id: string, status: CardStatus, o: { actor?: string; reason?: string | null } = {}): Promise<void> {
    if (!CARD_STATUSES.includes(status)) throw new StoreError("invalid", `card status: unknown ${status}`);
    await this.transaction(async (s) => {
      const cur = await s.getCard(id, { hold: true });
      if (cur?.status === status) return;
      await s.changeCardStatus(id, status, { actor: o.actor ?? null, reason: o.reason ?? null });
    });
  }

  /**
   * Moves card `id` to `to` from one of `from` (default: every status CARD_STATUS_FROM allows) in one transaction
   * that holds the card's row: of concurrent changes, each sees the status the one before it committed, so a card
   * never leaves a final status and two changes never both start from the same one. Bumps status_version (live
   * terminal tokens of the card stop acting for it) and records when, by whom and why. StoreError "conflict"
   * naming the current status when it is not one of `from`; "not_found" for an unknown card.
   */
  async changeCardStatus(id: string, to: CardStatus, o: { from?: readonly CardStatus[]; actor: string | null; reason: string | null }): Promise<CardStatusChange> {
    if (!CARD_STATUSES.includes(to)) throw new StoreError("invalid", `card status: unknown ${to}`);
    const from = o.from ?? CARD_STATUS_FROM[to];
    return this.transaction(async (s) => {
      const cur = await s.getCard(id, { hold: true });
      if (!cur) throw new StoreError("not_found", `card ${id} not found`);
      if (!from.includes(cur.status)) throw new StoreError("conflict", `card ${id} is ${cur.status}; expected ${from.join(" or ") || "(none)"} to become ${to}`);
      const now = s.now();
      const row = await s.db
        .updateTable("cards")
        .set((eb) => ({ status: to, status_version: eb("status_version", "+", 1), status_changed_at: now, status_changed_by: o.actor, status_reason: o.reason, updated_at: now }))
        .where("id", "=", id)
        .where("status", "=", cur.status)
        .returningAll()
        .executeTakeFirst();
      if (!row) throw new StoreError("conflict", `card ${id} changed status meanwhile`);
      return { card: toCard(row), from: cur.status };
    });
  }

  // ---- validity (FIG. 5, para 0062) --------------------------------------------------------------------------

  /** Cards neither retired nor destroyed whose validity VT ends at or before `until` (already expired ones included). */
  async expiringCards(until: number, page: { afterId?: string; limit?: number } = {}): Promise<Card[]> {
    const rows = await this.db
      .selectFrom("cards")
      .selectAll()
      .where("valid_until", "<=", until)
      .where("status", "not in", ["retired", "destroyed"])
      .where("id", ">", page.afterId ?? "")
      .orderBy("id")
      .limit(page.limit ?? 1000)
      .execute();
    return rows.map(toCard);
  }
}

function toCard(r: Selectable<Database["cards"]>): Card {
  return {
    id: r.id,
    userId: r.user_id,
    status: r.status,
    validFrom: r.valid_from,
    validUntil: r.valid_until,
    currentKeySetId: r.current_key_set_id,
    lastPackageSeq: r.last_package_seq,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    statusVersion: Number(r.status_version),
    statusChangedAt: r.status_changed_at === null ? null : Number(r.status_changed_at),
    statusChangedBy: r.status_changed_by,
    statusReason: r.status_reason,
  };
}
