// Webhooks: the push side of the events outbox (issue 3, flow 5.f; seed 000 para 0062 "... and notifies it").
//
// What it owns: registering webhooks (and their signing secrets), and delivering outbox events to them.
// What it must never do: store a webhook secret, send to any URL but the one registered, follow a redirect, or
// reach an address the address policy refuses (webhook-addresses.ts: loopback, private, link-local, metadata ...
// unless allow-listed), checked at registration and again, on the addresses the connection uses, at every send.
//
// Wire format (issue 15 §6: Standard Webhooks 1.0). Each delivery is `POST <registered url>` with the JSON body
// {id, type, subject, payload, createdAt} (id: the event's id; createdAt: epoch ms) and the headers
//   content-type: application/json
//   webhook-id: msg_<event id>_<webhook id>   — the same on every retry: receivers de-duplicate on it
//   webhook-timestamp: <Unix seconds of this attempt>
//   webhook-signature: v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<raw body>")>
//   x-cardkms-event: <type>                    — informational; the signed body's type is what counts
// where `key` is the base64-decoded part of the secret "whsec_<base64>" returned once at registration. How a
// receiver verifies a delivery and refuses replays (tolerance window, id de-duplication): webhook-receiver.ts, which
// exports the reference check (verifyWebhook). The earlier scheme — x-cardkms-signature: sha256=<hex HMAC over the
// body alone, keyed by the secret's characters> with x-cardkms-delivery — is no longer sent: it bound neither a time
// nor an id, so a recorded delivery could be replayed forever. Secrets issued before were shown in base64url; they
// are the same key (verifyWebhook reads both alphabets).
//
// Secrets are derived, not stored: key = HMAC-SHA256(serverSecret, label || id), secret = "whsec_" || base64(key).
// The webhooks row keeps only `secret_ref` = "derived:v1:<key id>", naming the derivation and which server
// secret (by an 8-byte fingerprint) it was made under; a dispatcher holding another server secret refuses to
// sign for that webhook rather than send signatures the receiver cannot check. Rotating the server secret thus
// invalidates every webhook secret at once (re-register them).
//
// Delivery (issue 15 §6). AT LEAST ONCE, per receiver, in parallel. Every event is queued once per webhook subscribed
// to its type (webhook_queue, migration 0014), and each of those deliveries has its own state in the DB: attempts, when
// the next one is due (exponential backoff, or the receiver's Retry-After; kept across restarts), and the claim of the
// server sending it. Each webhook has its own lane in a dispatcher: at most `perReceiver` requests in flight and at
// most `queueLimit` deliveries claimed and waiting; what does not fit waits in the DB. A receiver that hangs fills
// only its own lane — the others' deliveries go on — and is cut off after `timeoutMs` (a failed attempt).
// A delivery is sent only after a server claimed it: an UPDATE ... WHERE unclaimed (or the claim ran out) sets
// lease_owner / lease_until, and the claim is renewed (WHERE still ours) right before the request, so with several
// servers on one PostgreSQL no delivery is sent by two of them at once; a server that dies leaves claims that run out
// after `leaseMs`, and another server takes them over (the receiver may then see a delivery twice: at least once).
// After `maxAttempts` failed attempts a delivery goes to the dead-letter record (status dead): it is no longer tried,
// operators list it (GET /v1/webhooks/dead-letters, `cardkms webhook dead-letters`) and may retry it (POST
// /v1/webhooks/dead-letters/retry, `cardkms webhook retry`), which queues it afresh. An event is marked delivered
// when every enabled webhook subscribed to it acknowledged it (2xx); one nobody subscribes to, at once.

import { createHash, createHmac } from "node:crypto";
import { request as httpRequest, type IncomingMessage, type RequestOptions } from "node:http";
import { request as httpsRequest } from "node:https";
import type { LookupFunction } from "node:net";
import type { IssuerStore } from "./ports.ts";
import type { StoredEvent, Webhook, WebhookDelivery } from "./records.ts";
import { WebhookAddressPolicy, WebhookAddressRefused } from "./webhook-addresses.ts";
import { SECRET_PREFIX, webhookSignature } from "./webhook-receiver.ts";
import { DomainError, type ProblemShape } from "../util/errors.ts";

export { verifyWebhook, webhookSignature, WebhookReplayCache, WebhookVerificationError } from "./webhook-receiver.ts";

const SECRET_LABEL = "cardkms/webhook-secret/v1\0";
const REF_PREFIX = "derived:v1:";
/** Event types: dotted lower-case words, or "*" for all. */
export const EVENT_TYPE_PATTERN = "^(\\*|[a-z][a-z0-9_-]{0,40}(\\.[a-z][a-z0-9_-]{0,40}){0,4})$";
const EVENT_TYPE_RE = new RegExp(EVENT_TYPE_PATTERN);
export const MAX_WEBHOOK_URL = 2048;
export const MAX_EVENT_TYPES = 32;
/** A delivery id, the webhook-id header: msg_<event id>_<webhook id>. */
export const DELIVERY_ID_PATTERN = "^msg_[0-9]{1,15}_[A-Za-z0-9_:-]{1,100}$";

/** A webhook registration or retry that is not one (a DomainError invalid, check "invalid_webhook"): 400 invalid-webhook. */
export class WebhookError extends DomainError {
  /** `check` "invalid_retry" for a dead-letter retry that names nothing it can retry; else "invalid_webhook". */
  constructor(message: string, check: "invalid_webhook" | "invalid_retry" = "invalid_webhook") {
    super("invalid", check, message);
    this.name = "WebhookError";
  }

  override problem(): ProblemShape {
    return this.check === "invalid_retry" ? { type: "invalid-retry", title: "Invalid retry" } : { type: "invalid-webhook", title: "Invalid webhook" };
  }
}

/** Derives per-webhook signing secrets from one server secret (at least 32 bytes, e.g. from key custody). */
export class WebhookSecrets {
  readonly #key: Buffer;
  /** Fingerprint of the server secret, stored in each webhook's secret_ref. */
  readonly keyId: string;

  constructor(serverSecret: Uint8Array) {
    if (!(serverSecret instanceof Uint8Array) || serverSecret.length < 32) {
      throw new WebhookError(`webhook server secret: expected at least 32 bytes, got ${serverSecret?.length ?? 0}`);
    }
    this.#key = Buffer.from(serverSecret);
    this.keyId = createHash("sha256").update("cardkms/webhook-key-id/v1\0").update(this.#key).digest("hex").slice(0, 16);
  }

  /** The secret_ref stored with webhooks whose secrets this instance derives. */
  get ref(): string {
    return REF_PREFIX + this.keyId;
  }

  /** The signing key of webhook `id` (32 bytes). */
  keyFor(id: string): Buffer {
    return createHmac("sha256", this.#key)
      .update(SECRET_LABEL + id, "utf8")
      .digest();
  }

  /** The signing secret of webhook `id`, as shown to its owner: "whsec_" + base64 of its key. */
  secretFor(id: string): string {
    return SECRET_PREFIX + this.keyFor(id).toString("base64");
  }

  /** True when a webhook's secret_ref says its secret was derived by this instance. */
  owns(secretRef: string | null): boolean {
    return secretRef === this.ref;
  }
}

/** Checks a webhook URL: absolute http(s), no credentials, no fragment, bounded length. */
export function checkWebhookUrl(url: string): URL {
  if (typeof url !== "string" || url.length === 0 || url.length > MAX_WEBHOOK_URL) throw new WebhookError(`webhook url: expected 1..${MAX_WEBHOOK_URL} characters`);
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new WebhookError("webhook url: not an absolute URL");
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new WebhookError(`webhook url: expected http or https, got ${u.protocol}`);
  if (u.username || u.password) throw new WebhookError("webhook url: must not carry credentials (the signature authenticates the sender)");
  if (u.hash) throw new WebhookError("webhook url: must not have a fragment");
  return u;
}

export function checkEventTypes(types: string[]): void {
  if (!Array.isArray(types) || types.length < 1 || types.length > MAX_EVENT_TYPES) throw new WebhookError(`eventTypes: expected 1..${MAX_EVENT_TYPES} types`);
  for (const t of types) if (typeof t !== "string" || !EVENT_TYPE_RE.test(t)) throw new WebhookError(`eventTypes: ${JSON.stringify(t)} is not an event type (e.g. "keyset.expiring", or "*")`);
  if (new Set(types).size !== types.length) throw new WebhookError("eventTypes: duplicates");
}

/**
 * Registers a webhook and returns it with its signing secret. The secret is shown here once; it is not stored
 * and can only be re-derived by a holder of the server secret. A URL whose host is (or now resolves to) an address
 * `addresses` refuses is a WebhookError; the default policy refuses loopback, private, link-local and metadata ones.
 * Audited ("webhook.created", by `actor`) in the transaction that records it: the webhook's id, the URL's scheme and
 * host and its event types — not the URL's path or query, which may carry a receiver's token, and never the secret.
 */
export async function registerWebhook(
  store: IssuerStore,
  secrets: WebhookSecrets,
  input: { url: string; eventTypes: string[] },
  addresses: WebhookAddressPolicy = new WebhookAddressPolicy(),
  actor = "system",
): Promise<{ webhook: Webhook; secret: string }> {
  const url = checkWebhookUrl(input.url);
  checkEventTypes(input.eventTypes);
  try {
    await addresses.checkUrl(url);
  } catch (e) {
    if (e instanceof WebhookAddressRefused) throw new WebhookError(e.message);
    throw e;
  }
  const webhook = await store.transaction(async (s) => {
    const w = await s.addWebhook({ url: input.url, eventTypes: input.eventTypes, secretRef: secrets.ref });
    await s.audit({
      actor,
      action: "webhook.created",
      subject: w.id,
      details: { webhookId: w.id, scheme: url.protocol.slice(0, -1), host: url.host, eventTypes: w.eventTypes },
      at: s.now(),
    });
    return w;
  });
  return { webhook, secret: secrets.secretFor(webhook.id) };
}

/** Disables a webhook (no further deliveries; its dead letters stay listed), audited ("webhook.disabled"). False when no enabled webhook has that id. */
export async function disableWebhook(store: IssuerStore, id: string, actor = "system"): Promise<boolean> {
  return store.transaction(async (s) => {
    if (!(await s.disableWebhook(id))) return false;
    await s.audit({ actor, action: "webhook.disabled", subject: id, details: { webhookId: id }, at: s.now() });
    return true;
  });
}

/**
 * Queues dead letters again (attempts counted afresh, due now): all of a webhook's, or the deliveries named by id.
 * Audited ("webhook.dead-letters.retried": who, the webhook or the delivery ids, how many). Returns those retried.
 */
export async function retryDeadLetters(store: IssuerStore, filter: { webhookId?: string; deliveryIds?: string[] }, actor = "system"): Promise<WebhookDelivery[]> {
  const deliveries = filter.deliveryIds?.map(parseDeliveryId);
  if (!filter.webhookId && !deliveries?.length) throw new WebhookError("retry: name a webhook (webhookId) or deliveries (deliveryIds)", "invalid_retry");
  return store.transaction(async (s) => {
    const retried = await s.retryDeadWebhookDeliveries({ webhookId: filter.webhookId, deliveries }, s.now());
    if (retried.length > 0) {
      const details = { ...(filter.webhookId ? { webhookId: filter.webhookId } : {}), deliveryIds: retried.map((d) => deliveryId(d.eventId, d.webhookId)), count: retried.length };
      await s.audit({ actor, action: "webhook.dead-letters.retried", subject: filter.webhookId ?? retried[0].webhookId, details, at: s.now() });
    }
    return retried;
  });
}

/** The JSON body of a delivery (and of the events endpoint's items). */
export function webhookBody(e: StoredEvent): string {
  return JSON.stringify({ id: e.id, type: e.type, subject: e.subject, payload: e.payload, createdAt: e.createdAt });
}

/** The id of one event's delivery to one webhook: the webhook-id header, the same on every retry. */
export function deliveryId(eventId: number, webhookId: string): string {
  return `msg_${eventId}_${webhookId}`;
}

export function parseDeliveryId(id: string): { eventId: number; webhookId: string } {
  const m = /^msg_([0-9]{1,15})_([A-Za-z0-9_:-]{1,100})$/.exec(id);
  if (!m) throw new WebhookError(`delivery id ${JSON.stringify(id)}: expected msg_<event id>_<webhook id>`, "invalid_retry");
  return { eventId: Number(m[1]), webhookId: m[2] };
}

export interface WebhookDispatcherOptions {
  store: IssuerStore;
  secrets: WebhookSecrets;
  /** Per-request timeout (default 10 s). */
  timeoutMs?: number;
  /** First retry delay; doubles with each failed attempt (default 1 s). */
  backoffBaseMs?: number;
  /** Longest delay between attempts (default 1 h). */
  backoffMaxMs?: number;
  /** Failed attempts after which a delivery goes to the dead-letter record (default 24: about 13 hours of retries). */
  maxAttempts?: number;
  /** Requests in flight at once to one webhook (default 4). */
  perReceiver?: number;
  /** Deliveries one webhook may have claimed in this dispatcher, waiting or in flight (default 32); the rest wait in the DB. */
  queueLimit?: number;
  /** How long a claim holds before another server may take the delivery over (default 2 x timeoutMs + 30 s; renewed before each request). */
  leaseMs?: number;
  /** Events queued per pass (default 100). */
  batchSize?: number;
  /** Wall clock for schedules, claims and the signed timestamps, epoch ms (default: the store's clock); tests pin it. */
  clock?: () => number;
  /** Called on each failed attempt (for logs and metrics; never given the secret or the body). */
  onFailure?: (f: { eventId: number; webhookId: string; attempt: number; error: string; deadLettered: boolean }) => void;
  /** Called on each delivery answered 2xx. */
  onDelivered?: (d: { eventId: number; webhookId: string; attempt: number }) => void;
  /** Which addresses deliveries may reach (default: the strict policy, no allow-list, the system resolver). */
  addresses?: WebhookAddressPolicy;
}

export interface DispatchResult {
  /** Deliveries answered 2xx. */
  delivered: number;
  /** Failed attempts (the dead-lettered ones included). */
  failed: number;
  /** Deliveries that went to the dead-letter record. */
  deadLettered: number;
  /** Pending deliveries not due yet when the pass began. */
  waiting: number;
  /** HTTP requests made. */
  requests: number;
}

type Outcome = { kind: "delivered" } | { kind: "failed"; requested: boolean; dead: boolean } | { kind: "skipped" };

interface Job {
  row: WebhookDelivery;
  hook: Webhook;
  event: StoredEvent;
  owner: string;
  done: (o: Outcome) => void;
}

interface Lane {
  queued: Job[];
  inFlight: number;
  /** The last claim left due deliveries in the DB (the lane was full): poll again once it drains. */
  more: boolean;
}

/** Delivers the outbox events to the webhooks subscribed to their types, each webhook in its own lane. */
export class WebhookDispatcher {
  readonly #store: IssuerStore;
  readonly #secrets: WebhookSecrets;
  readonly #timeoutMs: number;
  readonly #base: number;
  readonly #max: number;
  readonly #maxAttempts: number;
  readonly #perReceiver: number;
  readonly #queueLimit: number;
  readonly #leaseMs: number;
  readonly #batch: number;
  readonly #clock: () => number;
  readonly #onFailure: WebhookDispatcherOptions["onFailure"];
  readonly #onDelivered: WebhookDispatcherOptions["onDelivered"];
  readonly #addresses: WebhookAddressPolicy;
  /** Names this dispatcher's claims (lease_owner = <id>:<n>). */
  readonly #id = createHash("sha256").update(`${process.pid}:${Date.now()}:${Math.random()}`).digest("hex").slice(0, 12);
  #claims = 0;
  readonly #lanes = new Map<string, Lane>();
  readonly #inFlight = new Set<AbortController>();
  readonly #running = new Set<Promise<unknown>>();
  #poll: Promise<Promise<Outcome>[]> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #stopping = false;

  constructor(o: WebhookDispatcherOptions) {
    this.#store = o.store;
    this.#secrets = o.secrets;
    this.#timeoutMs = positive("timeoutMs", o.timeoutMs ?? 10_000);
    this.#base = positive("backoffBaseMs", o.backoffBaseMs ?? 1000);
    this.#max = positive("backoffMaxMs", o.backoffMaxMs ?? 3_600_000);
    this.#maxAttempts = whole("maxAttempts", o.maxAttempts ?? 24);
    this.#perReceiver = whole("perReceiver", o.perReceiver ?? 4);
    this.#queueLimit = whole("queueLimit", o.queueLimit ?? 32);
    this.#leaseMs = positive("leaseMs", o.leaseMs ?? 2 * this.#timeoutMs + 30_000);
    this.#batch = whole("batchSize", o.batchSize ?? 100);
    this.#clock = o.clock ?? (() => o.store.now());
    this.#onFailure = o.onFailure;
    this.#onDelivered = o.onDelivered;
    this.#addresses = o.addresses ?? new WebhookAddressPolicy();
  }

  /** Delay before attempt n+1 after n failed attempts: base * 2^(n-1), capped. */
  backoffMs(failedAttempts: number): number {
    return Math.min(this.#max, this.#base * 2 ** Math.max(0, Math.min(failedAttempts - 1, 40)));
  }

  /**
   * One pass: queues new events, claims what is due (as much as each lane takes) and waits until every delivery this
   * pass claimed was attempted. Deliveries started earlier (by the timer) are not waited for. Passes never overlap:
   * a call during a pass waits for it and then runs its own.
   */
  async deliverPending(): Promise<DispatchResult> {
    const waiting = await this.#store.countWaitingWebhookDeliveries(this.#clock());
    const outcomes = await Promise.all(await this.#pollOnce());
    const r: DispatchResult = { delivered: 0, failed: 0, deadLettered: 0, waiting, requests: 0 };
    for (const o of outcomes) {
      if (o.kind === "delivered") {
        r.delivered++;
        r.requests++;
      } else if (o.kind === "failed") {
        r.failed++;
        if (o.requested) r.requests++;
        if (o.dead) r.deadLettered++;
      }
    }
    await this.#store.settleWebhookEvents();
    return r;
  }

  /** Runs a pass every `intervalMs` (timer unref'd); a pass does not wait for the deliveries it starts. */
  start(intervalMs: number): void {
    if (this.#timer) return;
    positive("intervalMs", intervalMs);
    this.#stopping = false;
    this.#timer = setInterval(() => {
      if (!this.#poll) this.#pollOnce().catch(() => {});
    }, intervalMs);
    this.#timer.unref();
  }

  /**
   * Stops: no new pass, requests in flight cut off, and every claim this dispatcher holds given back (those deliveries
   * are due again for any server at once; a receiver may see one it already got again: at least once).
   */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#stopping = true;
    await this.#poll?.catch(() => {});
    for (const a of this.#inFlight) a.abort();
    const dropped: Job[] = [];
    for (const lane of this.#lanes.values()) dropped.push(...lane.queued.splice(0));
    for (const j of dropped) j.done({ kind: "skipped" });
    for (const owner of new Set(dropped.map((j) => j.owner)))
      await this.#store
        .releaseWebhookLeases(
          owner,
          dropped.filter((j) => j.owner === owner).map((j) => j.row),
        )
        .catch(() => {});
    await Promise.all([...this.#running]);
    this.#stopping = false;
  }

  /** One pass, serialised with the others; resolves once the claimed deliveries are in their lanes. */
  #pollOnce(): Promise<Promise<Outcome>[]> {
    const run = async (): Promise<Promise<Outcome>[]> => {
      const previous = this.#poll;
      if (previous) await previous.catch(() => {});
      return this.#pass();
    };
    const p = run();
    this.#poll = p;
    const clear = () => {
      if (this.#poll === p) this.#poll = undefined;
    };
    p.then(clear, clear);
    return p;
  }

  async #pass(): Promise<Promise<Outcome>[]> {
    if (this.#stopping) return [];
    const now = this.#clock();
    await this.#fanOut(now);
    await this.#store.settleWebhookEvents();
    const due = await this.#store.dueWebhookDeliveries(now);
    if (due.size === 0) return [];
    const hooks = new Map((await this.#store.listWebhooks()).map((h) => [h.id, h]));
    const started: Promise<Outcome>[] = [];
    for (const [webhookId, n] of due) {
      const hook = hooks.get(webhookId);
      if (!hook) continue;
      const lane = this.#lane(webhookId);
      const room = Math.min(n, this.#queueLimit - lane.queued.length - lane.inFlight);
      lane.more = n > room;
      if (room <= 0) continue; // this receiver's lane is full (slow or hanging): its deliveries wait in the DB
      const owner = `${this.#id}:${++this.#claims}`;
      const claimed = await this.#store.claimWebhookDeliveries({ webhookId, limit: room, now, owner, leaseUntil: now + this.#leaseMs });
      const events = new Map((await this.#store.getEvents(claimed.map((c) => c.eventId))).map((e) => [e.id, e]));
      for (const row of claimed) {
        const event = events.get(row.eventId);
        if (!event) continue; // cascades with its event: cannot happen while the row exists
        started.push(new Promise<Outcome>((done) => lane.queued.push({ row, hook, event, owner, done })));
      }
      this.#pump(lane);
    }
    return started;
  }

  /** Queues the deliveries of events not queued yet, for the webhooks subscribed to their types now. */
  async #fanOut(now: number): Promise<void> {
    const events = await this.#store.eventsToFanOut(this.#batch);
    if (events.length === 0) return;
    const hooks = await this.#store.listWebhooks();
    for (const e of events) {
      const ids = hooks.filter((w) => w.eventTypes.includes("*") || w.eventTypes.includes(e.type)).map((w) => w.id);
      await this.#store.fanOutEvent(e.id, ids, Math.max(now, e.nextAttemptAt ?? 0));
    }
  }

  #lane(webhookId: string): Lane {
    let lane = this.#lanes.get(webhookId);
    if (!lane) this.#lanes.set(webhookId, (lane = { queued: [], inFlight: 0, more: false }));
    return lane;
  }

  #pump(lane: Lane): void {
    while (lane.inFlight < this.#perReceiver && lane.queued.length > 0) {
      const job = lane.queued.shift()!;
      lane.inFlight++;
      const run = this.#attempt(job)
        .catch((): Outcome => ({ kind: "skipped" }))
        .then((o) => {
          lane.inFlight--;
          this.#running.delete(run);
          job.done(o);
          this.#pump(lane);
        });
      this.#running.add(run);
    }
    // A backlog bigger than the lane: claim the next part now rather than at the next tick of the timer.
    if (lane.more && lane.inFlight === 0 && lane.queued.length === 0 && this.#timer && !this.#poll && !this.#stopping) {
      lane.more = false;
      this.#pollOnce().catch(() => {});
    }
  }

  /** One attempt of a claimed delivery: renew the claim, send, record the outcome (if the claim is still ours). */
  async #attempt(job: Job): Promise<Outcome> {
    const { row, hook, event, owner } = job;
    const startedAt = this.#clock();
    if (this.#stopping) {
      await this.#store.releaseWebhookLeases(owner, [row]);
      return { kind: "skipped" };
    }
    if (!(await this.#store.renewWebhookLease(row.eventId, row.webhookId, owner, startedAt + this.#leaseMs))) return { kind: "skipped" };
    const attempt = row.attempts + 1;
    const sent = await this.#send(event, hook, startedAt);
    if (sent === "aborted") {
      await this.#store.releaseWebhookLeases(owner, [row]);
      return { kind: "skipped" };
    }
    if (sent.ok) {
      await this.#store.completeWebhookDelivery(row.eventId, row.webhookId);
      this.#onDelivered?.({ eventId: row.eventId, webhookId: row.webhookId, attempt });
      return { kind: "delivered" };
    }
    const dead = attempt >= this.#maxAttempts;
    const delay = Math.min(this.#max, Math.max(this.backoffMs(attempt), sent.retryAfterMs ?? 0));
    const recorded = await this.#store.failWebhookDelivery({ eventId: row.eventId, webhookId: row.webhookId, owner, error: sent.error.slice(0, 500), nextAttemptAt: this.#clock() + delay, dead });
    if (!recorded) return { kind: "skipped" };
    this.#onFailure?.({ eventId: row.eventId, webhookId: row.webhookId, attempt, error: sent.error, deadLettered: dead });
    return { kind: "failed", requested: sent.requested, dead };
  }

  /** One POST; ok on a 2xx answer, else what went wrong (never the URL: it may carry a token). */
  async #send(e: StoredEvent, h: Webhook, now: number): Promise<{ ok: true } | { ok: false; error: string; requested: boolean; retryAfterMs?: number } | "aborted"> {
    if (!this.#secrets.owns(h.secretRef)) return { ok: false, requested: false, error: "its secret was made under another server secret; re-register it" };
    let url: URL;
    try {
      url = checkWebhookUrl(h.url);
    } catch (err) {
      return { ok: false, requested: false, error: (err as Error).message };
    }
    const body = webhookBody(e);
    const id = deliveryId(e.id, h.id);
    const timestamp = Math.floor(now / 1000);
    const abort = new AbortController();
    this.#inFlight.add(abort);
    try {
      const res = await this.#post(url, body, abort.signal, {
        "content-type": "application/json",
        "user-agent": "cardkms-webhooks/2",
        "webhook-id": id,
        "webhook-timestamp": String(timestamp),
        "webhook-signature": `v1,${webhookSignature(this.#secrets.keyFor(h.id), id, timestamp, body)}`,
        "x-cardkms-event": e.type,
      });
      if (res.status >= 200 && res.status < 300) return { ok: true };
      return { ok: false, requested: true, error: `HTTP ${res.status}`, retryAfterMs: retryAfterMs(res.retryAfter, this.#clock()) };
    } catch (err) {
      if (err instanceof DeliveryAborted) return "aborted";
      if (err instanceof WebhookAddressRefused) return { ok: false, requested: true, error: err.message };
      if (err instanceof DeliveryTimeout) return { ok: false, requested: true, error: `timed out after ${this.#timeoutMs} ms` };
      const x = err as Error & { code?: string; cause?: { code?: string } };
      const code = x.code ?? x.cause?.code;
      return { ok: false, requested: true, error: code ? `network error ${code}` : `network error ${x.name}` };
    } finally {
      this.#inFlight.delete(abort);
    }
  }

  /**
   * POSTs `body` and resolves with the answer's status (and Retry-After); nothing follows a redirect. The connection
   * goes only to an address the policy allowed when it was looked up for this very request (the check and the
   * connection use one resolution: no second lookup for DNS rebinding to answer differently).
   */
  async #post(url: URL, body: string, signal: AbortSignal, headers: Record<string, string>): Promise<{ status: number; retryAfter?: string }> {
    const host = url.hostname.replace(/^\[|\]$/g, "");
    const allowed = await this.#addresses.addressesFor(host);
    const lookup: LookupFunction = (_name, options, callback) => {
      if (options.all) callback(null, allowed);
      else callback(null, allowed[0].address, allowed[0].family);
    };
    const options: RequestOptions = {
      method: "POST",
      host,
      port: url.port || undefined,
      path: url.pathname + url.search,
      headers: { ...headers, "content-length": String(Buffer.byteLength(body)) },
      agent: false,
      lookup,
    };
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(new DeliveryAborted());
      const req = (url.protocol === "https:" ? httpsRequest : httpRequest)(options, (res: IncomingMessage) => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        const ra = res.headers["retry-after"];
        resolve({ status: res.statusCode ?? 0, retryAfter: typeof ra === "string" ? ra : undefined });
        res.destroy();
      });
      const onAbort = () => req.destroy(new DeliveryAborted());
      signal.addEventListener("abort", onAbort, { once: true });
      const timer = setTimeout(() => req.destroy(new DeliveryTimeout()), this.#timeoutMs);
      req.on("error", (err) => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        reject(err);
      });
      req.end(body);
    });
  }
}

/** Retry-After (RFC 9110: delay-seconds or an HTTP-date) in ms from `now`, when present and sensible. */
function retryAfterMs(v: string | undefined, now: number): number | undefined {
  if (!v) return undefined;
  if (/^[0-9]{1,9}$/.test(v.trim())) return Number(v.trim()) * 1000;
  const at = Date.parse(v);
  return Number.isFinite(at) && at > now ? at - now : undefined;
}

class DeliveryTimeout extends Error {
  override readonly name = "DeliveryTimeout";
}

class DeliveryAborted extends Error {
  override readonly name = "DeliveryAborted";
}

function positive(name: string, v: number): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw new WebhookError(`${name}: expected a positive number, got ${v}`);
  return v;
}

function whole(name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v <= 0) throw new WebhookError(`${name}: expected a positive whole number, got ${v}`);
  return v;
}
