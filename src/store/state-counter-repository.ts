// What the issuer remembers of each card's state counter (issue 17 §6; the counter: src/protocol/state-counter.ts), in
// the system DB (table: migrations/0008_card_state_counters.ts), one code path for SQLite and PostgreSQL.
//
// It implements the issuer's port StateCounterRecords (src/issuer/ports.ts). At every terminal login the card
// proved (src/issuer/card-login.ts) the counter it reported must be above
// the highest one it reported before. When it is not, the card image went back to an older copy of itself (or a
// clone logged in): the login is refused and the card flagged — audited ("card.rollback") and notified (event
// "card.rollback"), in the same transaction as the flag. A flagged card's logins are refused until an operator
// clears the flag ("card.rollback-cleared", audited), which forgets the counter: the next login starts over.
// One exception does not flag: a lower counter from a login whose handshake began before the remembered counter
// was recorded is two logins of one card crossing each other (the later INITIALIZE UPDATE has the higher counter);
// it is refused ("raced") and the terminal starts again.

import type { Kysely, Transaction } from "kysely";
import { appendAudit } from "./audit.ts";
import type { Database, Db } from "./db.ts";
import type { CardStateCounter, LoginOutcome, StateCounterRecords } from "../issuer/ports.ts";
import { Store, type JsonValue } from "./store.ts";

export interface CardStateCountersTable {
  card_id: string;
  counter: number;
  updated_at: number;
  rollback_at: number | null;
  rollback_counter: number | null;
}

// a type alias, not an interface: Kysely's withTables wants an index-signature-compatible record
export type StateCounterTables = { card_state_counters: CardStateCountersTable };

export type { CardStateCounter, LoginOutcome } from "../issuer/ports.ts";

const toRecord = (r: CardStateCountersTable): CardStateCounter => ({
  cardId: r.card_id,
  counter: Number(r.counter),
  updatedAt: Number(r.updated_at),
  rollback: r.rollback_at === null ? null : { at: Number(r.rollback_at), reported: Number(r.rollback_counter) },
});

type Trx = Transaction<Database & StateCounterTables>;

export class StateCounterRepository implements StateCounterRecords {
  private readonly db: Kysely<Database & StateCounterTables>;
  private readonly now: () => number;

  /** @param db the system DB, migrated (migrateToLatest) so that 0008_card_state_counters exists */
  constructor(db: Db | Kysely<unknown>, opts: { now?: () => number } = {}) {
    this.db = (db as Db).withTables<StateCounterTables>();
    this.now = opts.now ?? Date.now;
  }

  async get(cardId: string): Promise<CardStateCounter | undefined> {
    const r = await this.db.selectFrom("card_state_counters").selectAll().where("card_id", "=", cardId).executeTakeFirst();
    return r && toRecord(r);
  }

  /** Every flagged card, the oldest flag first. */
  async listFlagged(): Promise<CardStateCounter[]> {
    const rows = await this.db.selectFrom("card_state_counters").selectAll().where("rollback_at", "is not", null).orderBy("rollback_at").orderBy("card_id").execute();
    return rows.map(toRecord);
  }

  /**
   * A login of `cardId` the card proved, reporting `reported`: accepted (and remembered) when it is above the
   * remembered counter, else refused as the header says. `since`: when the login's handshake began.
   * `details` go into the audit entry of a rollback (IDs and numbers only).
   */
  async recordLogin(cardId: string, reported: number, o: { since: number; actor: string; details?: { [k: string]: JsonValue } }): Promise<LoginOutcome> {
    if (!Number.isSafeInteger(reported) || reported < 0) throw new RangeError("a state counter is a non-negative safe integer");
    return this.db.transaction().execute(async (trx) => {
      const at = this.now();
      const first = await trx
        .insertInto("card_state_counters")
        .values({ card_id: cardId, counter: reported, updated_at: at, rollback_at: null, rollback_counter: null })
        .onConflict((oc) => oc.column("card_id").doNothing())
        .returning("card_id")
        .executeTakeFirst();
      if (first) return { accepted: true, previous: null };
      const before = await this.read(trx, cardId);
      if (before.rollback === null && reported > before.counter) {
        const moved = await trx
          .updateTable("card_state_counters")
          .set({ counter: reported, updated_at: at })
          .where("card_id", "=", cardId)
          .where("counter", "<", reported)
          .where("rollback_at", "is", null)
          .executeTakeFirst();
        if (Number(moved.numUpdatedRows) === 1) return { accepted: true, previous: before.counter };
      }
      const now = await this.read(trx, cardId);
      if (now.rollback) return { accepted: false, reason: "flagged", record: now };
      if (now.updatedAt > o.since) return { accepted: false, reason: "raced", record: now };
      await trx.updateTable("card_state_counters").set({ rollback_at: at, rollback_counter: reported }).where("card_id", "=", cardId).execute();
      const details = { ...o.details, reported, remembered: now.counter, rememberedAt: now.updatedAt };
      await appendAudit(trx as unknown as Transaction<Database>, { actor: o.actor, action: "card.rollback", subject: cardId, details, at });
      await new Store(trx as unknown as Transaction<Database>, { now: () => at }).enqueueEvent({ type: "card.rollback", subject: cardId, payload: { cardId, ...details } });
      return { accepted: false, reason: "rollback", record: await this.read(trx, cardId) };
    });
  }

  /**
   * An operator's decision on a flagged card: the flag and the remembered counter are removed (audited with both),
   * so the next login is accepted and remembered afresh. Undefined when the card is not flagged.
   */
  async clear(cardId: string, o: { actor: string; reason: string }): Promise<CardStateCounter | undefined> {
    return this.db.transaction().execute(async (trx) => {
      const r = await trx.selectFrom("card_state_counters").selectAll().where("card_id", "=", cardId).executeTakeFirst();
      if (!r || r.rollback_at === null) return undefined;
      const record = toRecord(r);
      await trx.deleteFrom("card_state_counters").where("card_id", "=", cardId).execute();
      await appendAudit(trx as unknown as Transaction<Database>, {
        actor: o.actor,
        action: "card.rollback-cleared",
        subject: cardId,
        details: { reason: o.reason, counter: record.counter, rollbackAt: record.rollback!.at, reported: record.rollback!.reported },
        at: this.now(),
      });
      return record;
    });
  }

  private async read(trx: Trx, cardId: string): Promise<CardStateCounter> {
    return toRecord(await trx.selectFrom("card_state_counters").selectAll().where("card_id", "=", cardId).executeTakeFirstOrThrow());
  }
}
