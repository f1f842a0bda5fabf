// Validity control (seed 000, FIG. 5, para 0030 and 0062): the system DB holds the card validity VT, the card
// key validity SkVT and the certificate validity CtVT. A scan finds what expires within a window, notifies it
// (events outbox -> events endpoint and webhooks), and, for a card key Sk1 that must be updated to Sk2, queues a
// rotation PROPOSAL. Para 0062: the server "detects the necessity of updating the current symmetric key Sk1 ...
// and notifies it, and this updating ... is approved by the system administrator (operator)".
//
// What it owns: deciding what is expiring or expired, the events that say so (once each), and the proposals.
// What it must never do: start, approve or run a rotation, or touch a key. A proposal waits for an operator.
//
// Times are epoch ms. A validity [validFrom, validUntil] includes validUntil (as X.509 notAfter does), so an
// item is EXPIRED when validUntil < now and EXPIRING when now <= validUntil <= now + window.
//
// Exactly once per item and expiry: every event carries a dedup key that names the item and its end of
// validity (`expiring:keyset:<id>:<validUntil>`), and the outbox ignores a key it already holds, so repeated or
// concurrent scans add nothing new; a renewed item (a later validUntil) is notified again. An item found already
// expired gets only the "expired" event.
//
// Rotation proposals: at most one per key set at a time. The key set must be active and the card's current one
// (the seed's "current symmetric key Sk1") on a card that is not retired. No proposal while another rotation
// from it is proposed, approved, running or completed; after one failed or was cancelled, a later scan proposes
// again. Concurrent scans (two server processes) are serialised by the dedup key of the `rotation.proposed`
// event, which is inserted first in the proposal's transaction: the second inserter waits for the first to
// commit and then finds the key taken, so it proposes nothing.

import { randomUUID } from "node:crypto";
import type { IssuerStore } from "./ports.ts";
import type { Card, CardKeySet, Certificate, JsonValue, RotationStrategy } from "./records.ts";

export const VALIDITY_ACTOR = "validity-scan";

/** Event types this module emits. */
export const VALIDITY_EVENT_TYPES = ["card.expiring", "card.expired", "keyset.expiring", "keyset.expired", "certificate.expiring", "certificate.expired", "rotation.proposed"] as const;
export type ValidityEventType = (typeof VALIDITY_EVENT_TYPES)[number];

const DAY_MS = 86_400_000;
const MAX_WINDOW_DAYS = 3650;
const MAX_PAGE = 10_000;
const STRATEGIES: readonly RotationStrategy[] = ["embodiment3", "embodiment4", "embodiment5"];

export interface ValidityScanOptions {
  store: IssuerStore;
  /** The scan's "now", epoch ms (default: the store's clock). */
  now?: number;
  /** How far ahead to look, in days (0..3650; fractions allowed). */
  windowDays: number;
  /** FIG. 15 strategy of the proposals this scan queues (default embodiment3: new card, re-wrap all). */
  strategy?: RotationStrategy;
  /** Rows read per page (default 500). */
  pageSize?: number;
}

export interface ValidityCounts {
  /** Found with validUntil in [now, now + window]. */
  expiring: number;
  /** Found with validUntil < now. */
  expired: number;
}

export interface ValidityScanResult {
  now: number;
  until: number;
  cards: ValidityCounts;
  keySets: ValidityCounts;
  certificates: ValidityCounts;
  /** Events added to the outbox by this scan (not counting ones an earlier scan already emitted). */
  eventsEmitted: number;
  /** Rotation proposals queued by this scan. */
  rotationsProposed: number;
}

/**
 * Scans cards (VT), card key sets (SkVT) and certificates (CtVT) whose validity ends at or before
 * `now + windowDays`, a page at a time, emitting one event per item and expiry and queuing rotation proposals
 * for card key sets. Idempotent: a second scan at the same `now` emits and proposes nothing.
 */
export async function scanValidity(options: ValidityScanOptions): Promise<ValidityScanResult> {
  const { store } = options;
  const now = options.now ?? store.now();
  if (!Number.isSafeInteger(now)) throw new RangeError(`validity scan: now must be epoch ms, got ${now}`);
  checkWindowDays(options.windowDays);
  const strategy = options.strategy ?? "embodiment3";
  if (!STRATEGIES.includes(strategy)) throw new RangeError(`validity scan: strategy must be one of ${STRATEGIES.join(", ")}, got ${strategy}`);
  const pageSize = options.pageSize ?? 500;
  if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > MAX_PAGE) throw new RangeError(`validity scan: pageSize must be 1..${MAX_PAGE}, got ${pageSize}`);
  const until = now + Math.round(options.windowDays * DAY_MS);

  const result: ValidityScanResult = {
    now,
    until,
    cards: { expiring: 0, expired: 0 },
    keySets: { expiring: 0, expired: 0 },
    certificates: { expiring: 0, expired: 0 },
    eventsEmitted: 0,
    rotationsProposed: 0,
  };
  const count = (c: ValidityCounts, validUntil: number): "expiring" | "expired" => {
    const phase = validUntil < now ? "expired" : "expiring";
    c[phase]++;
    return phase;
  };

  for await (const card of pages((p) => store.expiringCards(until, p), pageSize)) {
    const phase = count(result.cards, card.validUntil);
    if (await emit(store, "card", phase, card.id, card.validUntil, cardPayload(card, now))) result.eventsEmitted++;
  }

  // Key sets are read from the plain store (pages), each written in a transaction of its own: the event, the
  // proposal, its event and its audit entry land together or not at all.
  const cards = new Map<string, Card | undefined>();
  for await (const ks of pages((p) => store.expiringKeySets(until, p), pageSize)) {
    const phase = count(result.keySets, ks.validUntil);
    if (await emit(store, "keyset", phase, ks.id, ks.validUntil, keySetPayload(ks, now))) result.eventsEmitted++;
    if (ks.status !== "active") continue;
    if (!cards.has(ks.cardId)) cards.set(ks.cardId, await store.getCard(ks.cardId));
    const card = cards.get(ks.cardId);
    if (!card || card.status === "retired" || card.currentKeySetId !== ks.id) continue;
    if (await proposeRotation(store, ks, phase, strategy, now)) {
      result.rotationsProposed++;
      result.eventsEmitted++;
    }
  }

  for await (const cert of pages((p) => store.expiringCertificates(until, p), pageSize)) {
    const phase = count(result.certificates, cert.notAfter);
    if (await emit(store, "certificate", phase, cert.id, cert.notAfter, certificatePayload(cert, now))) result.eventsEmitted++;
  }
  return result;
}

/** The dedup key of the event that says `item` `id` is expiring / has expired at `validUntil`. */
export function validityDedupKey(phase: "expiring" | "expired", item: "card" | "keyset" | "certificate", id: string, validUntil: number): string {
  return `${phase}:${item}:${id}:${validUntil}`;
}

async function emit(store: IssuerStore, item: "card" | "keyset" | "certificate", phase: "expiring" | "expired", id: string, validUntil: number, payload: JsonValue): Promise<boolean> {
  const e = await store.enqueueEvent({ type: `${item}.${phase}`, subject: id, payload, dedupKey: validityDedupKey(phase, item, id, validUntil) });
  return e !== null;
}

async function proposeRotation(store: IssuerStore, ks: CardKeySet, phase: "expiring" | "expired", strategy: RotationStrategy, now: number): Promise<boolean> {
  return store.transaction(async (s) => {
    const earlier = (await s.listRotations({ cardId: ks.cardId })).filter((r) => r.fromKeySetId === ks.id);
    if (earlier.some((r) => r.status !== "failed" && r.status !== "cancelled")) return false;
    const rotationId = randomUUID();
    const details = {
      rotationId,
      cardId: ks.cardId,
      fromKeySetId: ks.id,
      kvn: ks.kvn,
      keySetVersion: ks.version,
      strategy,
      reason: `keyset.${phase}`,
      validUntil: ks.validUntil,
      detectedAt: now,
    };
    // The n-th proposal for this key set (failed or cancelled ones before it make room for the next). The
    // event goes in first: its dedup key is what serialises concurrent scans.
    const claim = await s.enqueueEvent({ type: "rotation.proposed", subject: rotationId, payload: details, dedupKey: `rotation-proposal:keyset:${ks.id}:${earlier.length + 1}` });
    if (!claim) return false;
    const rotation = await s.proposeRotation({ id: rotationId, cardId: ks.cardId, fromKeySetId: ks.id, strategy });
    await s.audit({ actor: VALIDITY_ACTOR, action: "rotation.proposed", subject: rotation.id, details, at: now });
    return true;
  });
}

async function* pages<T extends { id: string }>(read: (page: { afterId?: string; limit: number }) => Promise<T[]>, limit: number): AsyncGenerator<T> {
  let afterId: string | undefined;
  while (true) {
    const rows = await read({ afterId, limit });
    for (const r of rows) yield r;
    if (rows.length < limit) return;
    afterId = rows[rows.length - 1].id;
  }
}

function cardPayload(c: Card, now: number): JsonValue {
  return { cardId: c.id, userId: c.userId, status: c.status, validUntil: c.validUntil, detectedAt: now };
}

function keySetPayload(k: CardKeySet, now: number): JsonValue {
  return { keySetId: k.id, cardId: k.cardId, kvn: k.kvn, version: k.version, status: k.status, validUntil: k.validUntil, detectedAt: now };
}

function certificatePayload(c: Certificate, now: number): JsonValue {
  return { certificateId: c.id, serial: c.serial, keyPairId: c.keyPairId, subject: c.subject, notAfter: c.notAfter, detectedAt: now };
}

function checkWindowDays(d: number): void {
  if (typeof d !== "number" || !Number.isFinite(d) || d < 0 || d > MAX_WINDOW_DAYS) {
    throw new RangeError(`validity scan: windowDays must be 0..${MAX_WINDOW_DAYS}, got ${d}`);
  }
}

export interface ValiditySchedulerOptions extends Omit<ValidityScanOptions, "now"> {
  /** Seconds between scans (1..86400). */
  scanIntervalSeconds: number;
  /** The scan's clock (default: the store's). */
  clock?: () => number;
  /** Called with each finished scan (e.g. to kick the webhook dispatcher, to log, to count). */
  onScan?: (result: ValidityScanResult) => void;
  /** Called when a scheduled scan fails; the next tick tries again. */
  onError?: (error: unknown) => void;
}

/**
 * Runs `scanValidity` every `scanIntervalSeconds`. A tick that comes while a scan still runs is skipped, so
 * scans never overlap in this process (across processes the dedup keys keep them harmless). The timer is
 * unref'd: it never keeps the process alive.
 */
export class ValidityScheduler {
  readonly #o: ValiditySchedulerOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<ValidityScanResult> | undefined;
  #skipped = 0;

  constructor(options: ValiditySchedulerOptions) {
    const s = options.scanIntervalSeconds;
    if (typeof s !== "number" || !Number.isFinite(s) || s < 0.01 || s > 86_400) {
      throw new RangeError(`validity scheduler: scanIntervalSeconds must be 0.01..86400, got ${s}`);
    }
    checkWindowDays(options.windowDays);
    this.#o = options;
  }

  /** Ticks skipped because the previous scan was still running. */
  get skippedTicks(): number {
    return this.#skipped;
  }

  get running(): boolean {
    return this.#running !== undefined;
  }

  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => this.#tick(), Math.round(this.#o.scanIntervalSeconds * 1000));
    this.#timer.unref();
  }

  /** Stops the timer and waits for a scan in progress to finish. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#running?.catch(() => {});
  }

  /**
   * Runs a scan now (the "scan now" endpoint). If one is in progress it waits for it to end first, so this
   * scan sees everything the earlier one wrote and the two never overlap.
   */
  async runNow(): Promise<ValidityScanResult> {
    while (this.#running) await this.#running.catch(() => {});
    return this.#run();
  }

  #tick(): void {
    if (this.#running) {
      this.#skipped++;
      return;
    }
    this.#run().catch((e: unknown) => this.#o.onError?.(e));
  }

  #run(): Promise<ValidityScanResult> {
    const { clock, onScan, onError: _onError, scanIntervalSeconds: _s, ...scan } = this.#o;
    const p = (async () => {
      const result = await scanValidity({ ...scan, now: clock ? clock() : undefined });
      onScan?.(result);
      return result;
    })();
    this.#running = p;
    const clear = () => {
      if (this.#running === p) this.#running = undefined;
    };
    p.then(clear, clear);
    return p;
  }
}
