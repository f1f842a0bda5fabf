// The receiving end of cardkms webhooks (issue 15 §6): how a receiver checks that a delivery comes from the issuer,
// is not altered, and is not a replay. A reference to copy or import; it needs nothing but node:crypto.
//
// The scheme is Standard Webhooks 1.0 (the one Stripe's `t=...,v1=...` popularised: the signature covers an id and a
// timestamp together with the body). Each delivery carries
//   webhook-id         the delivery's id, the same on every retry of it: msg_<event id>_<webhook id> (no ".")
//   webhook-timestamp  when this attempt was signed, integer Unix seconds
//   webhook-signature  "v1,<base64 HMAC-SHA256(key, `${webhook-id}.${webhook-timestamp}.${raw body}`)>", possibly
//                      several such entries separated by spaces (any one that matches will do)
// where `key` is the webhook's signing secret ("whsec_" + base64, shown once at registration) without its prefix,
// base64-decoded: 32 bytes.
//
// What a receiver does, in this order (verifyWebhook does 1-4; 5 is the receiver's):
//   1. refuse a delivery without the three headers;
//   2. recompute the signature over the RAW body bytes (before any JSON parsing) and compare in constant time;
//   3. refuse a timestamp further than the tolerance (default 5 minutes) from its own clock, either way: a recorded
//      delivery replayed later no longer verifies, and its signature binds the timestamp so it cannot be refreshed;
//   4. remember each verified webhook-id for longer than the tolerance, and treat a second delivery with an id it has
//      seen as a duplicate: answer 2xx (the issuer stops retrying) without acting on it again. The issuer delivers at
//      least once, so a retry after a lost answer is a legitimate duplicate; a replay inside the window is caught here;
//   5. act on the event only then, and answer 2xx quickly (the issuer waits 10 s per attempt by default).

import { createHmac, timingSafeEqual } from "node:crypto";
import { DomainError } from "../util/errors.ts";

export const SECRET_PREFIX = "whsec_";
/** The tolerance Standard Webhooks recommends: 5 minutes either way. */
export const DEFAULT_TOLERANCE_SECONDS = 300;

/** The HMAC key of a "whsec_<base64>" signing secret (base64url, as secrets issued before issue 15 were shown, is read too). */
export function webhookSecretKey(secret: string): Buffer {
  if (typeof secret !== "string" || !secret.startsWith(SECRET_PREFIX)) throw new TypeError('a webhook signing secret starts with "whsec_"');
  const b64 = secret.slice(SECRET_PREFIX.length);
  if (!/^[A-Za-z0-9+/_-]+={0,2}$/.test(b64)) throw new TypeError("a webhook signing secret is whsec_ followed by base64");
  const key = Buffer.from(b64.replace(/-/g, "+").replace(/_/g, "/"), "base64");
  if (key.length < 24) throw new TypeError("a webhook signing secret holds at least 24 bytes");
  return key;
}

/** The value of one v1 signature: base64 HMAC-SHA256 of `${id}.${timestamp}.${body}` under the secret's key. */
export function webhookSignature(secret: string | Buffer, id: string, timestamp: number, body: string | Uint8Array): string {
  const key = typeof secret === "string" ? webhookSecretKey(secret) : secret;
  return createHmac("sha256", key).update(`${id}.${timestamp}.`, "utf8").update(body).digest("base64");
}

export type WebhookRefusal =
  /** A header is missing or malformed. */
  | "headers"
  /** No signature in webhook-signature matches. */
  | "signature"
  /** The timestamp is too far in the past (a replay, or a delivery held back) ... */
  | "stale"
  /** ... or in the future. */
  | "future"
  /** A verified delivery whose webhook-id was seen before: a retry or a replay. Answer 2xx, do not act again. */
  | "duplicate";

/** A delivery the receiver refuses (a DomainError refused; its check is the reason). */
export class WebhookVerificationError extends DomainError {
  constructor(
    readonly reason: WebhookRefusal,
    message: string,
  ) {
    super("refused", reason, message);
    this.name = "WebhookVerificationError";
  }
}

/** Remembers verified webhook-ids (an in-memory one: WebhookReplayCache; several receiver processes share one in a DB or Redis). */
export interface ReplayGuard {
  /** Records `id` until `expiresAt` (Unix seconds); false when it was recorded before and had not expired at `now`. */
  remember(id: string, now: number, expiresAt: number): boolean;
}

/**
 * In-memory ReplayGuard for one receiver process, bounded: ids expire after twice the tolerance window (past which the
 * timestamp check refuses a replay anyway), and at `max` ids the oldest go first.
 */
export class WebhookReplayCache implements ReplayGuard {
  readonly #seen = new Map<string, number>();
  constructor(private readonly max = 100_000) {}

  remember(id: string, now: number, expiresAt: number): boolean {
    const until = this.#seen.get(id);
    if (until !== undefined && until > now) return false;
    if (this.#seen.size >= this.max) for (const [k, v] of this.#seen) if (v <= now || this.#seen.size >= this.max) this.#seen.delete(k);
    this.#seen.set(id, expiresAt);
    return true;
  }
}

export interface VerifyWebhookInput {
  /** The webhook's signing secret, "whsec_..."; several while rotating one. */
  secret: string | string[];
  /** The request's headers (names in lower case, as Node gives them). */
  headers: Record<string, string | string[] | undefined>;
  /** The raw body, exactly as received. */
  body: string | Uint8Array;
  /** The receiver's clock, Unix seconds (default: now). */
  now?: number;
  toleranceSeconds?: number;
  /** Where verified ids are remembered (omit only if the receiver de-duplicates on webhook-id itself). */
  replay?: ReplayGuard;
}

/** What a verified delivery says. */
export interface VerifiedWebhook {
  id: string;
  timestamp: number;
  /** The parsed body: {id, type, subject, payload, createdAt}. */
  event: { id: number; type: string; subject: string; payload: unknown; createdAt: number };
}

const header = (h: VerifyWebhookInput["headers"], name: string): string | undefined => {
  const v = h[name];
  return typeof v === "string" ? v : undefined;
};

/**
 * Verifies a delivery as a receiver must (steps 1-4 above): throws WebhookVerificationError naming why it is
 * refused — "duplicate" for an authentic delivery already seen (answer 2xx, do not act) — else returns it parsed.
 */
export function verifyWebhook(input: VerifyWebhookInput): VerifiedWebhook {
  const id = header(input.headers, "webhook-id");
  const ts = header(input.headers, "webhook-timestamp");
  const sigs = header(input.headers, "webhook-signature");
  if (!id || !ts || !sigs) throw new WebhookVerificationError("headers", "webhook-id, webhook-timestamp and webhook-signature are required");
  if (id.includes(".") || id.length > 256) throw new WebhookVerificationError("headers", "webhook-id is malformed");
  if (!/^[0-9]{1,12}$/.test(ts)) throw new WebhookVerificationError("headers", "webhook-timestamp is not Unix seconds");
  const timestamp = Number(ts);
  const secrets = Array.isArray(input.secret) ? input.secret : [input.secret];
  const given = sigs
    .split(" ")
    .filter((s) => s.startsWith("v1,"))
    .map((s) => Buffer.from(s.slice(3), "base64"));
  const ok = secrets.some((secret) => {
    const want = Buffer.from(webhookSignature(secret, id, timestamp, input.body), "base64");
    return given.some((g) => g.length === want.length && timingSafeEqual(g, want));
  });
  if (!ok) throw new WebhookVerificationError("signature", "no signature matches");
  const now = input.now ?? Math.floor(Date.now() / 1000);
  const tolerance = input.toleranceSeconds ?? DEFAULT_TOLERANCE_SECONDS;
  if (timestamp < now - tolerance) throw new WebhookVerificationError("stale", `signed ${now - timestamp} s ago, more than the ${tolerance} s tolerated: a replay or a delivery held back`);
  if (timestamp > now + tolerance) throw new WebhookVerificationError("future", `signed ${timestamp - now} s in the future, more than the ${tolerance} s tolerated`);
  if (input.replay && !input.replay.remember(id, now, now + 2 * tolerance)) throw new WebhookVerificationError("duplicate", `delivery ${id} was received before`);
  const text = typeof input.body === "string" ? input.body : Buffer.from(input.body.buffer, input.body.byteOffset, input.body.byteLength).toString("utf8");
  return { id, timestamp, event: JSON.parse(text) as VerifiedWebhook["event"] };
}
