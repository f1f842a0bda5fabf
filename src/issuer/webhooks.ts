// Webhooks: the push side of the events outbox (issue 3, flow 5.f; seed 000 para 0062 "... and notifies it").
//
// What it owns: registering webhooks (and their signing secrets), and delivering outbox events to them.
// What it must never do: store a webhook secret, send to any URL but the one registered, follow a redirect, or
// reach an address the address policy refuses (webhook-addresses.ts: loopback, private, link-local, metadata ...
// unless allow-listed), checked at registration and again, on the addresses the connection uses, at every send.
//
// Wire format. Each delivery is `POST <registered url>` with the JSON body {id, type, subject, payload,
// createdAt} (id: the event's id; createdAt: epoch ms) and the headers
//   content-type: application/json
//   x-cardkms-event: <type>
//   x-cardkms-delivery: <event id>.<webhook id>   — the same on every retry: receivers de-duplicate on it
//   x-cardkms-signature: sha256=<hex HMAC-SHA256(secret, raw body bytes)>
// where `secret` is the string returned once at registration, used as the HMAC key in its UTF-8 bytes.
// Receivers must verify the signature over the raw body before parsing it, compare in constant time, and may
// reject stale `createdAt` values to bound replays.
//
// Secrets are derived, not stored: secret = "whsec_" || base64url(HMAC-SHA256(serverSecret, label || id)).
// The webhooks row keeps only `secret_ref` = "derived:v1:<key id>", naming the derivation and which server
// secret (by an 8-byte fingerprint) it was made under; a dispatcher holding another server secret refuses to
// sign for that webhook rather than send signatures the receiver cannot check. Rotating the server secret thus
// invalidates every webhook secret at once (re-register them).
//
// Delivery semantics: AT LEAST ONCE. An event is marked delivered only when every subscribed webhook answered
// 2xx to it; until then it is retried with exponential backoff. Both halves of that state are in the DB
// (migration 0005): which webhooks acknowledged the event (they are not sent it again, across restarts and
// across dispatchers on one DB — except when a 2xx answer arrives and the process dies before recording it),
// and when its next attempt is due (a restart keeps the schedule; events that keep failing wait in the DB and
// do not hold newer ones back). An event nobody subscribes to counts as delivered (the events endpoint still
// lists it). Events are handed out in id order, which is the order they were queued, but a retried event can
// arrive after newer ones.

import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { request as httpRequest, type IncomingMessage, type RequestOptions } from "node:http";
import { request as httpsRequest } from "node:https";
import type { LookupFunction } from "node:net";
import type { Store, StoredEvent, Webhook } from "../store/store.ts";
import { WebhookAddressPolicy, WebhookAddressRefused } from "./webhook-addresses.ts";

const SECRET_LABEL = "cardkms/webhook-secret/v1\0";
const REF_PREFIX = "derived:v1:";
/** Event types: dotted lower-case words, or "*" for all. */
export const EVENT_TYPE_PATTERN = "^(\\*|[a-z][a-z0-9_-]{0,40}(\\.[a-z][a-z0-9_-]{0,40}){0,4})$";
const EVENT_TYPE_RE = new RegExp(EVENT_TYPE_PATTERN);
export const MAX_WEBHOOK_URL = 2048;
export const MAX_EVENT_TYPES = 32;

export class WebhookError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WebhookError";
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

  /** The signing secret of webhook `id`. */
  secretFor(id: string): string {
    return "whsec_" + createHmac("sha256", this.#key).update(SECRET_LABEL + id, "utf8").digest("base64url");
  }

  /** True when a webhook's secret_ref says its secret was derived by this instance. */
  owns(secretRef: string | null): boolean {
    return secretRef === this.ref;
  }
}

/** `sha256=<hex>` over the raw body, the value of x-cardkms-signature. */
export function signWebhookBody(secret: string, body: string | Uint8Array): string {
  return "sha256=" + createHmac("sha256", secret).update(body).digest("hex");
}

/** Receiver-side check of x-cardkms-signature (constant-time compare). */
export function verifyWebhookSignature(secret: string, body: string | Uint8Array, header: string | undefined): boolean {
  if (typeof header !== "string" || !/^sha256=[0-9a-f]{64}$/.test(header)) return false;
  const want = Buffer.from(signWebhookBody(secret, body).slice(7), "hex");
  return timingSafeEqual(want, Buffer.from(header.slice(7), "hex"));
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
 */
export async function registerWebhook(
  store: Store,
  secrets: WebhookSecrets,
  input: { url: string; eventTypes: string[] },
  addresses: WebhookAddressPolicy = new WebhookAddressPolicy(),
): Promise<{ webhook: Webhook; secret: string }> {
  const url = checkWebhookUrl(input.url);
  checkEventTypes(input.eventTypes);
  try {
    await addresses.checkUrl(url);
  } catch (e) {
    if (e instanceof WebhookAddressRefused) throw new WebhookError(e.message);
    throw e;
  }
  const webhook = await store.addWebhook({ url: input.url, eventTypes: input.eventTypes, secretRef: secrets.ref });
  return { webhook, secret: secrets.secretFor(webhook.id) };
}

/** The JSON body of a delivery (and of the events endpoint's items). */
export function webhookBody(e: StoredEvent): string {
  return JSON.stringify({ id: e.id, type: e.type, subject: e.subject, payload: e.payload, createdAt: e.createdAt });
}

export function deliveryId(eventId: number, webhookId: string): string {
  return `${eventId}.${webhookId}`;
}

export interface WebhookDispatcherOptions {
  store: Store;
  secrets: WebhookSecrets;
  /** Per-request timeout (default 10 s). */
  timeoutMs?: number;
  /** First retry delay; doubles with each failed attempt (default 1 s). */
  backoffBaseMs?: number;
  /** Longest delay between attempts (default 1 h). */
  backoffMaxMs?: number;
  /** Events read per pass (default 100). */
  batchSize?: number;
  /** Wall clock for the backoff schedule, epoch ms (default: the store's clock; stored as events.next_attempt_at); tests pin it. */
  clock?: () => number;
  /** Called on each failed attempt (for logs and metrics; never given the secret or the body). */
  onFailure?: (f: { eventId: number; webhookId: string; attempt: number; error: string }) => void;
  /** Which addresses deliveries may reach (default: the strict policy, no allow-list, the system resolver). */
  addresses?: WebhookAddressPolicy;
}

export interface DispatchResult {
  /** Events marked delivered in this pass. */
  delivered: number;
  /** Events that failed for at least one webhook in this pass. */
  failed: number;
  /** Events not yet due for a retry when the pass began. */
  waiting: number;
  /** HTTP requests made. */
  requests: number;
}

/** Delivers undelivered outbox events to the webhooks subscribed to their types. */
export class WebhookDispatcher {
  readonly #store: Store;
  readonly #secrets: WebhookSecrets;
  readonly #timeoutMs: number;
  readonly #base: number;
  readonly #max: number;
  readonly #batch: number;
  readonly #clock: () => number;
  readonly #onFailure: WebhookDispatcherOptions["onFailure"];
  readonly #addresses: WebhookAddressPolicy;
  #pass: Promise<DispatchResult> | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(o: WebhookDispatcherOptions) {
    this.#store = o.store;
    this.#secrets = o.secrets;
    this.#timeoutMs = positive("timeoutMs", o.timeoutMs ?? 10_000);
    this.#base = positive("backoffBaseMs", o.backoffBaseMs ?? 1000);
    this.#max = positive("backoffMaxMs", o.backoffMaxMs ?? 3_600_000);
    this.#batch = positive("batchSize", o.batchSize ?? 100);
    this.#clock = o.clock ?? (() => o.store.now());
    this.#onFailure = o.onFailure;
    this.#addresses = o.addresses ?? new WebhookAddressPolicy();
  }

  /** Delay before attempt n+1 after n failed attempts: base * 2^(n-1), capped. */
  backoffMs(failedAttempts: number): number {
    return Math.min(this.#max, this.#base * 2 ** Math.max(0, Math.min(failedAttempts - 1, 40)));
  }

  /**
   * One pass over the undelivered events that are due. Passes never overlap: a call during a pass waits for
   * it and returns its result.
   */
  deliverPending(): Promise<DispatchResult> {
    if (this.#pass) return this.#pass;
    const p = this.#deliverPass();
    this.#pass = p;
    const clear = () => {
      if (this.#pass === p) this.#pass = undefined;
    };
    p.then(clear, clear);
    return p;
  }

  /** Runs a pass every `intervalMs` (timer unref'd). */
  start(intervalMs: number): void {
    if (this.#timer) return;
    positive("intervalMs", intervalMs);
    this.#timer = setInterval(() => {
      if (!this.#pass) this.deliverPending().catch(() => {});
    }, intervalMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#pass?.catch(() => {});
  }

  async #deliverPass(): Promise<DispatchResult> {
    const r: DispatchResult = { delivered: 0, failed: 0, waiting: 0, requests: 0 };
    const now = this.#clock();
    const events = await this.#store.undeliveredEvents(this.#batch, now);
    r.waiting = await this.#store.countWaitingEvents(now);
    const hooksByType = new Map<string, Webhook[]>();
    for (const e of events) {
      let hooks = hooksByType.get(e.type);
      if (!hooks) hooksByType.set(e.type, (hooks = await this.#store.listWebhooks(e.type)));
      const acked = hooks.length ? await this.#store.webhookAcks(e.id) : new Set<string>();
      const errors: string[] = [];
      for (const h of hooks) {
        if (acked.has(h.id)) continue;
        r.requests++;
        const error = await this.#send(e, h);
        if (error === null) await this.#store.recordWebhookAck(e.id, h.id);
        else {
          errors.push(`webhook ${h.id}: ${error}`);
          this.#onFailure?.({ eventId: e.id, webhookId: h.id, attempt: e.attempts + 1, error });
        }
      }
      if (errors.length === 0) {
        await this.#store.markEventDelivered(e.id);
        r.delivered++;
      } else {
        await this.#store.markEventFailed(e.id, errors.join("; ").slice(0, 1000), this.#clock() + this.backoffMs(e.attempts + 1));
        r.failed++;
      }
    }
    return r;
  }

  /** One POST; null on a 2xx answer, else what went wrong (never the URL: it may carry a token). */
  async #send(e: StoredEvent, h: Webhook): Promise<string | null> {
    if (!this.#secrets.owns(h.secretRef)) return "its secret was made under another server secret; re-register it";
    let url: URL;
    try {
      url = checkWebhookUrl(h.url);
    } catch (err) {
      return (err as Error).message;
    }
    const body = webhookBody(e);
    try {
      const status = await this.#post(url, body, {
        "content-type": "application/json",
        "user-agent": "cardkms-webhooks/1",
        "x-cardkms-event": e.type,
        "x-cardkms-delivery": deliveryId(e.id, h.id),
        "x-cardkms-signature": signWebhookBody(this.#secrets.secretFor(h.id), body),
      });
      return status >= 200 && status < 300 ? null : `HTTP ${status}`;
    } catch (err) {
      if (err instanceof WebhookAddressRefused) return err.message;
      if (err instanceof DeliveryTimeout) return `timed out after ${this.#timeoutMs} ms`;
      const x = err as Error & { code?: string; cause?: { code?: string } };
      const code = x.code ?? x.cause?.code;
      return code ? `network error ${code}` : `network error ${x.name}`;
    }
  }

  /**
   * POSTs `body` and resolves with the answer's status; nothing follows a redirect. The connection goes only to an
   * address the policy allowed when it was looked up for this very request (the check and the connection use one
   * resolution: no second lookup for DNS rebinding to answer differently).
   */
  async #post(url: URL, body: string, headers: Record<string, string>): Promise<number> {
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
    return new Promise<number>((resolve, reject) => {
      const req = (url.protocol === "https:" ? httpsRequest : httpRequest)(options, (res: IncomingMessage) => {
        clearTimeout(timer);
        resolve(res.statusCode ?? 0);
        res.destroy();
      });
      const timer = setTimeout(() => req.destroy(new DeliveryTimeout()), this.#timeoutMs);
      req.on("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
      req.end(body);
    });
  }
}

class DeliveryTimeout extends Error {
  override readonly name = "DeliveryTimeout";
}

function positive(name: string, v: number): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw new WebhookError(`${name}: expected a positive number, got ${v}`);
  return v;
}
