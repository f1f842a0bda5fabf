// The events outbox of the issuer's store: notifications appended in the transaction of the change they report (once
// per dedup key), read by the events endpoint's cursor, and their delivery state as a whole — attempts, last error,
// next attempt, delivered. Store (store.ts) delegates to it; one code path for SQLite and PostgreSQL. Each event's
// deliveries to webhooks are webhook-repository.ts's.
//
// Never: a secret in a payload (the issuer puts IDs and states there, src/issuer/webhooks.ts).

import type { Selectable, Transaction } from "kysely";
import type { Database } from "./db.ts";
import { StoreRepository, type JsonValue } from "./repository.ts";
import type { StoredEvent } from "../issuer/records.ts";

export class EventRepository extends StoreRepository<EventRepository> {
  protected override bind(trx: Transaction<Database>): EventRepository {
    return new EventRepository(trx, this.clock);
  }

  /**
   * Appends a notification to the outbox (in the caller's transaction, if any, so it lands with the change it
   * reports). With a `dedupKey` already present nothing is added and null is returned.
   */
  async enqueueEvent(input: { type: string; subject: string; payload: JsonValue; dedupKey?: string }): Promise<StoredEvent | null> {
    const row = {
      type: input.type,
      subject: input.subject,
      payload: JSON.stringify(input.payload),
      dedup_key: input.dedupKey ?? null,
      created_at: this.now(),
      delivered_at: null,
      last_error: null,
    };
    const r = await this.db
      .insertInto("events")
      .values(row)
      .onConflict((oc) => oc.column("dedup_key").doNothing())
      .returning(["id", "attempts"])
      .executeTakeFirst();
    return r ? toEvent({ ...row, id: r.id, attempts: r.attempts, next_attempt_at: null, fanned_out_at: null }) : null;
  }

  /** Events in id order after `afterId` (the events endpoint's cursor). */
  async listEvents(filter: { afterId?: number; limit?: number; type?: string } = {}): Promise<StoredEvent[]> {
    let q = this.db
      .selectFrom("events")
      .selectAll()
      .where("id", ">", filter.afterId ?? 0);
    if (filter.type) q = q.where("type", "=", filter.type);
    return (
      await q
        .orderBy("id")
        .limit(filter.limit ?? 100)
        .execute()
    ).map(toEvent);
  }

  /** Undelivered events due at `now` (never attempted, or their next attempt has come), oldest first. */
  async undeliveredEvents(limit = 100, now = this.now()): Promise<StoredEvent[]> {
    const rows = await this.db
      .selectFrom("events")
      .selectAll()
      .where("delivered_at", "is", null)
      .where((eb) => eb.or([eb("next_attempt_at", "is", null), eb("next_attempt_at", "<=", now)]))
      .orderBy("id")
      .limit(limit)
      .execute();
    return rows.map(toEvent);
  }

  /** Undelivered events whose next attempt is later than `now`. */
  async countWaitingEvents(now = this.now()): Promise<number> {
    const r = await this.db
      .selectFrom("events")
      .select((eb) => eb.fn.countAll<number | string>().as("n"))
      .where("delivered_at", "is", null)
      .where("next_attempt_at", ">", now)
      .executeTakeFirstOrThrow();
    return Number(r.n);
  }

  /** Events by id (those that exist). */
  async getEvents(ids: number[]): Promise<StoredEvent[]> {
    if (ids.length === 0) return [];
    return (await this.db.selectFrom("events").selectAll().where("id", "in", ids).orderBy("id").execute()).map(toEvent);
  }

  async markEventDelivered(id: number): Promise<void> {
    await this.db
      .updateTable("events")
      .set((eb) => ({ delivered_at: this.now(), attempts: eb("attempts", "+", 1), last_error: null }))
      .where("id", "=", id)
      .execute();
  }

  /** A failed attempt; the event is not handed out again before `nextAttemptAt` (epoch ms; omitted: due now). */
  async markEventFailed(id: number, error: string, nextAttemptAt?: number): Promise<void> {
    await this.db
      .updateTable("events")
      .set((eb) => ({ attempts: eb("attempts", "+", 1), last_error: error, next_attempt_at: nextAttemptAt ?? null }))
      .where("id", "=", id)
      .execute();
  }
}

export function toEvent(r: Selectable<Database["events"]>): StoredEvent {
  return {
    id: r.id,
    type: r.type,
    subject: r.subject,
    payload: JSON.parse(r.payload) as JsonValue,
    dedupKey: r.dedup_key,
    createdAt: r.created_at,
    deliveredAt: r.delivered_at,
    attempts: r.attempts,
    lastError: r.last_error,
    nextAttemptAt: r.next_attempt_at ?? null,
  };
}
