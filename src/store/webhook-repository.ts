// Webhooks and their deliveries in the issuer's store: the subscriptions (URL, event types, a custody reference of
// the signing secret), and one delivery row per (event, webhook) (migration 0014) with its state, schedule and
// claim — queued when an event is fanned out, claimed by one server at a time under a lease, delivered, retried
// or dead-lettered; an event is settled (delivered) when no enabled webhook still waits for it. Store (store.ts)
// delegates to it; one code path for SQLite and PostgreSQL. The events themselves are event-repository.ts's.
//
// Never: the signing secret itself, only its reference; and never sends (src/issuer/webhooks.ts does).

import type { Selectable, Transaction } from "kysely";
import type { Database, WebhookDeliveryStatus } from "./db.ts";
import { toEvent } from "./event-repository.ts";
import { newId } from "./ids.ts";
import { insertOrConflict, StoreError, StoreRepository } from "./repository.ts";
import type { StoredEvent, Webhook, WebhookDelivery } from "../issuer/records.ts";

export class WebhookRepository extends StoreRepository<WebhookRepository> {
  protected override bind(trx: Transaction<Database>): WebhookRepository {
    return new WebhookRepository(trx, this.clock);
  }

  /** The webhooks that answered 2xx to an event (their deliveries are delivered). */
  async webhookAcks(eventId: number): Promise<Set<string>> {
    const rows = await this.db.selectFrom("webhook_queue").select("webhook_id").where("event_id", "=", eventId).where("status", "=", "delivered").execute();
    return new Set(rows.map((r) => r.webhook_id));
  }

  // ---- webhook deliveries (migration 0014): one row per (event, webhook), claimed before it is sent ----------

  /** Events whose deliveries are not queued yet, oldest first. */
  async eventsToFanOut(limit = 100): Promise<StoredEvent[]> {
    const rows = await this.db.selectFrom("events").selectAll().where("fanned_out_at", "is", null).orderBy("id").limit(limit).execute();
    return rows.map(toEvent);
  }

  /**
   * Queues an event's deliveries to `webhookIds`, due at `dueAt`, and marks it queued (delivered at once when nobody
   * subscribes). Idempotent: two servers queueing the same event make one row per webhook.
   */
  async fanOutEvent(eventId: number, webhookIds: string[], dueAt: number): Promise<void> {
    const now = this.now();
    await this.transaction(async (s) => {
      if (webhookIds.length > 0)
        await s.db
          .insertInto("webhook_queue")
          .values(webhookIds.map((w) => ({ event_id: eventId, webhook_id: w, status: "pending" as const, next_attempt_at: dueAt, created_at: now, updated_at: now })))
          .onConflict((oc) => oc.columns(["event_id", "webhook_id"]).doNothing())
          .execute();
      await s.db
        .updateTable("events")
        .set(webhookIds.length > 0 ? { fanned_out_at: now } : { fanned_out_at: now, delivered_at: now })
        .where("id", "=", eventId)
        .where("fanned_out_at", "is", null)
        .execute();
    });
  }

  /** Enabled webhooks with pending deliveries due at `now` and not claimed by anyone (or whose claim ran out): how many each. */
  async dueWebhookDeliveries(now: number): Promise<Map<string, number>> {
    const rows = await this.db
      .selectFrom("webhook_queue as q")
      .innerJoin("webhooks as w", "w.id", "q.webhook_id")
      .select((eb) => ["q.webhook_id", eb.fn.countAll<number | string>().as("n")])
      .where("w.disabled_at", "is", null)
      .where("q.status", "=", "pending")
      .where("q.next_attempt_at", "<=", now)
      .where((eb) => eb.or([eb("q.lease_until", "is", null), eb("q.lease_until", "<=", now)]))
      .groupBy("q.webhook_id")
      .execute();
    return new Map(rows.map((r) => [r.webhook_id, Number(r.n)]));
  }

  /**
   * Claims up to `limit` of a webhook's due, unclaimed pending deliveries for `owner` until `leaseUntil`, oldest due
   * first. The claim is one UPDATE whose WHERE says "unclaimed or expired": on PostgreSQL a second server's UPDATE
   * of the same row waits for the first to commit and then no longer matches, so a delivery is claimed by one
   * server at a time; SQLite has one writer. Returns what this call claimed.
   */
  async claimWebhookDeliveries(input: { webhookId: string; limit: number; now: number; owner: string; leaseUntil: number }): Promise<WebhookDelivery[]> {
    const { webhookId, now } = input;
    const rows = await this.db
      .updateTable("webhook_queue")
      .set({ lease_owner: input.owner, lease_until: input.leaseUntil, updated_at: now })
      .where("webhook_id", "=", webhookId)
      .where("status", "=", "pending")
      .where("next_attempt_at", "<=", now)
      .where((eb) => eb.or([eb("lease_until", "is", null), eb("lease_until", "<=", now)]))
      .where("event_id", "in", (eb) =>
        eb
          .selectFrom("webhook_queue as c")
          .select("c.event_id")
          .where("c.webhook_id", "=", webhookId)
          .where("c.status", "=", "pending")
          .where("c.next_attempt_at", "<=", now)
          .where((e) => e.or([e("c.lease_until", "is", null), e("c.lease_until", "<=", now)]))
          .orderBy("c.next_attempt_at")
          .orderBy("c.event_id")
          .limit(input.limit),
      )
      .returningAll()
      .execute();
    return rows.map(toDelivery).sort((a, b) => a.nextAttemptAt - b.nextAttemptAt || a.eventId - b.eventId);
  }

  /** Extends `owner`'s claim on a pending delivery; false when the claim is no longer `owner`'s (it ran out and another server took it, or the delivery is settled). */
  async renewWebhookLease(eventId: number, webhookId: string, owner: string, leaseUntil: number): Promise<boolean> {
    const r = await this.db
      .updateTable("webhook_queue")
      .set({ lease_until: leaseUntil })
      .where("event_id", "=", eventId)
      .where("webhook_id", "=", webhookId)
      .where("lease_owner", "=", owner)
      .where("status", "=", "pending")
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  /** Gives up `owner`'s claims on these deliveries (a dispatcher stopping): due again for any server at once. */
  async releaseWebhookLeases(owner: string, keys: { eventId: number; webhookId: string }[]): Promise<void> {
    for (const k of keys)
      await this.db
        .updateTable("webhook_queue")
        .set({ lease_owner: null, lease_until: null })
        .where("event_id", "=", k.eventId)
        .where("webhook_id", "=", k.webhookId)
        .where("lease_owner", "=", owner)
        .execute();
  }

  /**
   * A 2xx answer: the delivery is delivered (whoever holds its claim: it was delivered), the event's attempt is
   * counted, and the event is marked delivered when no enabled webhook still waits for it.
   */
  async completeWebhookDelivery(eventId: number, webhookId: string): Promise<void> {
    const now = this.now();
    await this.db
      .updateTable("webhook_queue")
      .set((eb) => ({ status: "delivered", delivered_at: now, attempts: eb("attempts", "+", 1), lease_owner: null, lease_until: null, last_error: null, updated_at: now }))
      .where("event_id", "=", eventId)
      .where("webhook_id", "=", webhookId)
      .where("status", "=", "pending")
      .execute();
    await this.db
      .updateTable("events")
      .set((eb) => ({ attempts: eb("attempts", "+", 1) }))
      .where("id", "=", eventId)
      .execute();
    await this.settleWebhookEvents(eventId);
  }

  /**
   * A failed attempt by the claim's `owner`: the delivery waits until `nextAttemptAt`, or with `dead` goes to the
   * dead-letter record. False (nothing recorded) when the claim is no longer `owner`'s.
   */
  async failWebhookDelivery(input: { eventId: number; webhookId: string; owner: string; error: string; nextAttemptAt: number; dead: boolean }): Promise<boolean> {
    const now = this.now();
    const r = await this.db
      .updateTable("webhook_queue")
      .set((eb) => ({
        attempts: eb("attempts", "+", 1),
        last_error: input.error,
        next_attempt_at: input.nextAttemptAt,
        lease_owner: null,
        lease_until: null,
        updated_at: now,
        ...(input.dead ? { status: "dead" as const, dead_at: now } : {}),
      }))
      .where("event_id", "=", input.eventId)
      .where("webhook_id", "=", input.webhookId)
      .where("lease_owner", "=", input.owner)
      .where("status", "=", "pending")
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) !== 1) return false;
    await this.db
      .updateTable("events")
      .set((eb) => ({ attempts: eb("attempts", "+", 1), last_error: `webhook ${input.webhookId}: ${input.error}`.slice(0, 1000) }))
      .where("id", "=", input.eventId)
      .execute();
    return true;
  }

  /**
   * Marks delivered the queued events (or the one given) that no enabled webhook still waits for: every delivery
   * delivered, or to a webhook since disabled. A dead letter keeps its event undelivered. Returns how many.
   */
  async settleWebhookEvents(eventId?: number): Promise<number> {
    let q = this.db
      .updateTable("events")
      .set({ delivered_at: this.now(), last_error: null })
      .where("delivered_at", "is", null)
      .where("fanned_out_at", "is not", null)
      .where((eb) =>
        eb.not(
          eb.exists(
            eb
              .selectFrom("webhook_queue as q")
              .innerJoin("webhooks as w", "w.id", "q.webhook_id")
              .select("q.event_id")
              .whereRef("q.event_id", "=", "events.id")
              .where("q.status", "!=", "delivered")
              .where("w.disabled_at", "is", null),
          ),
        ),
      );
    if (eventId !== undefined) q = q.where("id", "=", eventId);
    return Number((await q.executeTakeFirst()).numUpdatedRows);
  }

  /** Pending deliveries to enabled webhooks not due before `now`. */
  async countWaitingWebhookDeliveries(now: number): Promise<number> {
    const r = await this.db
      .selectFrom("webhook_queue as q")
      .innerJoin("webhooks as w", "w.id", "q.webhook_id")
      .select((eb) => eb.fn.countAll<number | string>().as("n"))
      .where("w.disabled_at", "is", null)
      .where("q.status", "=", "pending")
      .where("q.next_attempt_at", ">", now)
      .executeTakeFirstOrThrow();
    return Number(r.n);
  }

  /** Deliveries by status (e.g. the dead letters), in (event, webhook) order; page with `after`. */
  async listWebhookDeliveries(
    filter: { status?: WebhookDeliveryStatus; webhookId?: string; eventId?: number; after?: { eventId: number; webhookId: string }; limit?: number } = {},
  ): Promise<WebhookDelivery[]> {
    let q = this.db.selectFrom("webhook_queue").selectAll();
    if (filter.status) q = q.where("status", "=", filter.status);
    if (filter.webhookId) q = q.where("webhook_id", "=", filter.webhookId);
    if (filter.eventId !== undefined) q = q.where("event_id", "=", filter.eventId);
    const after = filter.after;
    if (after) q = q.where((eb) => eb.or([eb("event_id", ">", after.eventId), eb.and([eb("event_id", "=", after.eventId), eb("webhook_id", ">", after.webhookId)])]));
    const rows = await q
      .orderBy("event_id")
      .orderBy("webhook_id")
      .limit(filter.limit ?? 100)
      .execute();
    return rows.map(toDelivery);
  }

  /**
   * Moves dead letters back to pending, due at `now`, with their attempts counted afresh: all of a webhook's, or the
   * ones named. Only those of enabled webhooks. Returns the deliveries retried.
   */
  async retryDeadWebhookDeliveries(filter: { webhookId?: string; deliveries?: { eventId: number; webhookId: string }[] }, now: number): Promise<WebhookDelivery[]> {
    if (!filter.webhookId && !filter.deliveries?.length) throw new StoreError("invalid", "retry: name a webhook or deliveries");
    return this.transaction(async (s) => {
      let q = s.db
        .updateTable("webhook_queue")
        .set({ status: "pending", attempts: 0, next_attempt_at: now, dead_at: null, lease_owner: null, lease_until: null, updated_at: now })
        .where("status", "=", "dead")
        .where("webhook_id", "in", (eb) => eb.selectFrom("webhooks").select("id").where("disabled_at", "is", null));
      if (filter.webhookId) q = q.where("webhook_id", "=", filter.webhookId);
      const named = filter.deliveries;
      if (named?.length) q = q.where((eb) => eb.or(named.map((d) => eb.and([eb("event_id", "=", d.eventId), eb("webhook_id", "=", d.webhookId)]))));
      const rows = await q.returningAll().execute();
      return rows.map(toDelivery).sort((a, b) => a.eventId - b.eventId || a.webhookId.localeCompare(b.webhookId));
    });
  }

  // ---- webhooks ----------------------------------------------------------------------------------------------

  async addWebhook(input: { id?: string; url: string; eventTypes: string[]; secretRef?: string | null }): Promise<Webhook> {
    let parsed: URL;
    try {
      parsed = new URL(input.url);
    } catch {
      throw new StoreError("invalid", `webhook url: not a URL: ${input.url}`);
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw new StoreError("invalid", `webhook url: expected http(s), got ${parsed.protocol}`);
    const row = { id: input.id ?? newId(), url: input.url, event_types: JSON.stringify(input.eventTypes), secret_ref: input.secretRef ?? null, created_at: this.now(), disabled_at: null };
    await insertOrConflict(this.db.insertInto("webhooks").values(row).execute(), `webhook ${row.id} exists`);
    return toWebhook(row);
  }

  /** Enabled webhooks that subscribe to `type` (or to "*"); all enabled ones without a type. */
  async listWebhooks(type?: string): Promise<Webhook[]> {
    const rows = await this.db.selectFrom("webhooks").selectAll().where("disabled_at", "is", null).orderBy("created_at").orderBy("id").execute();
    return rows.map(toWebhook).filter((w) => type === undefined || w.eventTypes.includes("*") || w.eventTypes.includes(type));
  }

  /** A webhook by id, enabled or not. */
  async getWebhook(id: string): Promise<Webhook | undefined> {
    const row = await this.db.selectFrom("webhooks").selectAll().where("id", "=", id).executeTakeFirst();
    return row && toWebhook(row);
  }

  /** Disables an enabled webhook (no further deliveries); false when there is no enabled webhook `id`. */
  async disableWebhook(id: string): Promise<boolean> {
    const r = await this.db.updateTable("webhooks").set({ disabled_at: this.now() }).where("id", "=", id).where("disabled_at", "is", null).executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }
}

function toWebhook(r: Selectable<Database["webhooks"]>): Webhook {
  return { id: r.id, url: r.url, eventTypes: JSON.parse(r.event_types) as string[], secretRef: r.secret_ref, createdAt: r.created_at, disabledAt: r.disabled_at };
}

function toDelivery(r: Selectable<Database["webhook_queue"]>): WebhookDelivery {
  return {
    eventId: Number(r.event_id),
    webhookId: r.webhook_id,
    status: r.status,
    attempts: r.attempts,
    nextAttemptAt: r.next_attempt_at,
    leaseOwner: r.lease_owner,
    leaseUntil: r.lease_until,
    lastError: r.last_error,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    deliveredAt: r.delivered_at,
    deadAt: r.dead_at,
  };
}
