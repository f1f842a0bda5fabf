// Relay sessions held by the issuer server between a terminal's round trips (relay.ts: the server drives an
// SCP03 script, the terminal or card issuing machine only forwards APDUs). They live in memory only: a session
// is worth nothing after a restart (its SCP03 session keys are gone with it), so the terminal starts again.
//
// Bounded in time and count: a session expires `ttlMs` after it was opened (default 5 min), and at most `max`
// are open at once (default 1,000); beyond that a new one is refused with 429 until some finish or expire.
// A session belongs to the principal that opened it: nobody else can advance it (403). A failed relay is a 422
// problem naming the reason, and the session is gone.

import { randomBytes } from "node:crypto";
import { RelayError, type RelayResult, type RelaySession } from "../issuer/relay.ts";
import { Scp03Error } from "../card/scp03/host.ts";
import { ApduError } from "../terminal/apdu-client.ts";
import { ApiProblem } from "./problem.ts";

export const SESSION_ID_PATTERN = "^[0-9a-f]{32}$";

export interface TtlMapOptions {
  /** Lifetime of an entry from its creation, ms. */
  ttlMs: number;
  /** Most entries held at once. */
  max: number;
  /** Clock, epoch ms. */
  now?: () => number;
}

/** Entries under random IDs that expire, at most `max` of them. */
export class TtlMap<V> {
  readonly #entries = new Map<string, { value: V; expiresAt: number }>();
  readonly #o: Required<TtlMapOptions>;

  constructor(o: TtlMapOptions) {
    if (!(o.ttlMs > 0) || !Number.isInteger(o.max) || o.max < 1) throw new RangeError("TtlMap: ttlMs must be positive and max a positive integer");
    this.#o = { ttlMs: o.ttlMs, max: o.max, now: o.now ?? Date.now };
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Stores `value` under a fresh random ID (or the given one); 429 when full of live entries. */
  add(value: V, what: string, key?: string): { id: string; expiresAt: number } {
    if (this.#entries.size >= this.#o.max) this.sweep();
    if (this.#entries.size >= this.#o.max)
      throw new ApiProblem(429, "too-many-sessions", "Too many open sessions", `at most ${this.#o.max} ${what} sessions are open at once; retry when some finish or expire`);
    const id = key ?? randomBytes(16).toString("hex");
    const expiresAt = this.#o.now() + this.#o.ttlMs;
    this.#entries.set(id, { value, expiresAt });
    return { id, expiresAt };
  }

  /** The live entry under `id`; an expired one is dropped and reads as absent. */
  get(id: string): V | undefined {
    const e = this.#entries.get(id);
    if (!e) return undefined;
    if (e.expiresAt <= this.#o.now()) {
      this.#entries.delete(id);
      return undefined;
    }
    return e.value;
  }

  delete(id: string): void {
    this.#entries.delete(id);
  }

  /** Drops every expired entry. */
  sweep(): void {
    const now = this.#o.now();
    for (const [id, e] of this.#entries) if (e.expiresAt <= now) this.#entries.delete(id);
  }
}

interface RelayJob {
  /** Principal name of who opened it. */
  owner: string;
  session: RelaySession;
  /** Judges the script's results and records the outcome (e.g. marks the card active); throws to fail it. */
  finish: (results: RelayResult[]) => Promise<void>;
  busy: boolean;
}

export type RelayStep = { apdus: Uint8Array[] } | { done: true; results: RelayResult[] };

export class RelaySessions {
  readonly #jobs: TtlMap<RelayJob>;

  constructor(o: Partial<TtlMapOptions> = {}) {
    this.#jobs = new TtlMap({ ttlMs: o.ttlMs ?? 5 * 60_000, max: o.max ?? 1000, now: o.now });
  }

  get size(): number {
    return this.#jobs.size;
  }

  /** Opens a session for `owner`; returns its ID and the first round of APDUs for the terminal to forward. */
  open(owner: string, session: RelaySession, finish: RelayJob["finish"]): { sessionId: string; apdus: Uint8Array[] } {
    const apdus = session.start();
    const { id } = this.#jobs.add({ owner, session, finish, busy: false }, "relay");
    return { sessionId: id, apdus };
  }

  /** Feeds the card's responses to the last round; returns the next round, or the results once the script ran. */
  async next(sessionId: string, owner: string, responses: Uint8Array[]): Promise<RelayStep> {
    const job = this.#jobs.get(sessionId);
    if (!job) throw new ApiProblem(404, "not-found", "relay session not found", `no open relay session ${sessionId} (finished, failed or expired)`);
    if (job.owner !== owner) throw new ApiProblem(403, "forbidden", "Forbidden", "this relay session belongs to another principal");
    if (job.busy) throw new ApiProblem(409, "conflict", "Conflict", "this relay session is already processing a round");
    job.busy = true;
    try {
      const r = await job.session.next(responses);
      if ("apdus" in r) return { apdus: r.apdus };
      this.#jobs.delete(sessionId);
      await job.finish(r.results);
      return { done: true, results: r.results };
    } catch (e) {
      this.#jobs.delete(sessionId);
      if (e instanceof RelayError) throw relayFailed(e.message, e.sw);
      if (e instanceof Scp03Error) throw relayFailed(e.message);
      if (e instanceof ApduError) throw relayFailed(e.message);
      throw e;
    } finally {
      job.busy = false;
    }
  }
}

function relayFailed(reason: string, sw?: number): ApiProblem {
  const status = sw === undefined ? "" : ` (SW ${sw.toString(16).padStart(4, "0").toUpperCase()})`;
  return new ApiProblem(422, "relay-failed", "The relayed card session failed", `${reason}${status}`);
}
