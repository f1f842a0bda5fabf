// Relay sessions held by the issuer server between a terminal's round trips (relay.ts: the server drives an
// SCP03 script, the terminal or card issuing machine only forwards APDUs). They live in memory only: a session
// is worth nothing after a restart (its SCP03 session keys are gone with it), so the terminal starts again.
//
// Bounded in time and count: a session expires `ttlMs` after it was opened (default 5 min), at most `max` are open
// at once (default 1,000), and at most `perOwner` per principal (default 32); beyond either a new one is refused with
// 429 until some finish or expire — so one principal (a card's terminal, an operator) cannot take every place.
// A session belongs to the principal that opened it: nobody else can advance it (403). A failed relay is a 422
// problem naming the reason, and the session is gone.

import { randomBytes } from "node:crypto";
import { RelayError, type RelayResult, type RelaySession } from "../issuer/relay.ts";
import { Scp03Error } from "../protocol/scp03/host.ts";
import { ApduError } from "../protocol/apdu-client.ts";
import { ApiProblem } from "./problem.ts";

export const SESSION_ID_PATTERN = "^[0-9a-f]{32}$";

export interface TtlMapOptions {
  /** Lifetime of an entry from its creation, ms. */
  ttlMs: number;
  /** Most entries held at once. */
  max: number;
  /** Clock, epoch ms. */
  now?: () => number;
  /** When `max` live entries are held: refuse the new one with 429 (default), or retire the oldest entry. */
  whenFull?: "refuse" | "retire-oldest";
  /** Told each time an entry is retired to make room: the name of the bound ("total", or a group's name). */
  onRetire?: (bound: string) => void;
}

/**
 * A bound on the entries that share a key (one card's, one client's, one principal's): at most `max` live ones. At
 * the bound a new entry is refused (429), or the group's oldest entry is retired to make room.
 */
export interface TtlGroup {
  /** What the entries share, for messages and metrics: "card", "owner", ... */
  name: string;
  key: string;
  max: number;
  whenFull: "refuse" | "retire-oldest";
}

interface TtlEntry<V> {
  value: V;
  expiresAt: number;
  /** The groups it counts in (name and key joined). */
  groups: string[];
}

const groupId = (g: TtlGroup) => `${g.name}\u0000${g.key}`;

/**
 * Entries under random IDs that expire, at most `max` of them, and at most `group.max` in each group an entry is
 * added to. Map and Set iterate in insertion order, so "the oldest" is the first.
 */
export class TtlMap<V> {
  readonly #entries = new Map<string, TtlEntry<V>>();
  readonly #groups = new Map<string, Set<string>>();
  readonly #o: Required<Omit<TtlMapOptions, "onRetire">> & Pick<TtlMapOptions, "onRetire">;

  constructor(o: TtlMapOptions) {
    if (!(o.ttlMs > 0) || !Number.isInteger(o.max) || o.max < 1) throw new RangeError("TtlMap: ttlMs must be positive and max a positive integer");
    this.#o = { ttlMs: o.ttlMs, max: o.max, now: o.now ?? Date.now, whenFull: o.whenFull ?? "refuse", onRetire: o.onRetire };
  }

  get size(): number {
    return this.#entries.size;
  }

  /**
   * Stores `value` under a fresh random ID (or `o.key`), counted in `o.groups`. A group or the map at its bound
   * refuses it (429, nothing changes) or retires its oldest entries, as each bound says.
   */
  add(value: V, what: string, o: { key?: string; groups?: TtlGroup[] } = {}): { id: string; expiresAt: number } {
    const groups = o.groups ?? [];
    /** Entries to retire for the groups at their bound, and the bound each goes for. */
    const retire = new Map<string, string>();
    for (const g of groups) {
      const members = this.#live(groupId(g));
      if (members.length < g.max) continue;
      if (g.whenFull === "refuse")
        throw new ApiProblem(429, "too-many-sessions", "Too many open sessions", `at most ${g.max} ${what} sessions per ${g.name} are open at once; retry when some finish or expire`);
      for (const id of members.slice(0, members.length - g.max + 1)) if (!retire.has(id)) retire.set(id, g.name);
    }
    if (this.#entries.size - retire.size >= this.#o.max) {
      this.sweep();
      for (const id of retire.keys()) if (!this.#entries.has(id)) retire.delete(id);
      if (this.#entries.size - retire.size >= this.#o.max && this.#o.whenFull === "refuse")
        throw new ApiProblem(429, "too-many-sessions", "Too many open sessions", `at most ${this.#o.max} ${what} sessions are open at once; retry when some finish or expire`);
    }
    for (const [id, bound] of retire) this.#retire(id, bound);
    while (this.#entries.size >= this.#o.max) this.#retire(this.#entries.keys().next().value as string, "total");
    const id = o.key ?? randomBytes(16).toString("hex");
    const expiresAt = this.#o.now() + this.#o.ttlMs;
    this.delete(id);
    const keys = groups.map(groupId);
    this.#entries.set(id, { value, expiresAt, groups: keys });
    for (const k of keys) {
      let set = this.#groups.get(k);
      if (!set) this.#groups.set(k, (set = new Set()));
      set.add(id);
    }
    return { id, expiresAt };
  }

  /** The live entry under `id`; an expired one is dropped and reads as absent. */
  get(id: string): V | undefined {
    const e = this.#entries.get(id);
    if (!e) return undefined;
    if (e.expiresAt <= this.#o.now()) {
      this.delete(id);
      return undefined;
    }
    return e.value;
  }

  delete(id: string): void {
    const e = this.#entries.get(id);
    if (!e) return;
    this.#entries.delete(id);
    for (const k of e.groups) {
      const set = this.#groups.get(k);
      set?.delete(id);
      if (set?.size === 0) this.#groups.delete(k);
    }
  }

  /**
   * Drops every expired entry. Every entry lives `ttlMs` from its creation and entries iterate in creation order, so
   * the expired ones are the first: the sweep stops at the first live one.
   */
  sweep(): void {
    const now = this.#o.now();
    for (const [id, e] of this.#entries) {
      if (e.expiresAt > now) break;
      this.delete(id);
    }
  }

  /** The live IDs of a group, oldest first (its expired ones, the first, are dropped on the way). */
  #live(key: string): string[] {
    const set = this.#groups.get(key);
    if (!set) return [];
    for (const id of set) if (this.get(id) !== undefined) break;
    return [...(this.#groups.get(key) ?? [])];
  }

  #retire(id: string, bound: string): void {
    this.delete(id);
    this.#o.onRetire?.(bound);
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

export interface RelaySessionsOptions extends Partial<TtlMapOptions> {
  /** Most sessions one principal holds open at once (default 32). */
  perOwner?: number;
}

export class RelaySessions {
  readonly #jobs: TtlMap<RelayJob>;
  readonly #perOwner: number;

  constructor(o: RelaySessionsOptions = {}) {
    this.#jobs = new TtlMap({ ttlMs: o.ttlMs ?? 5 * 60_000, max: o.max ?? 1000, now: o.now });
    this.#perOwner = o.perOwner ?? 32;
  }

  get size(): number {
    return this.#jobs.size;
  }

  /** Opens a session for `owner`; returns its ID and the first round of APDUs for the terminal to forward. */
  open(owner: string, session: RelaySession, finish: RelayJob["finish"]): { sessionId: string; apdus: Uint8Array[] } {
    const apdus = session.start();
    const { id } = this.#jobs.add({ owner, session, finish, busy: false }, "relay", { groups: [{ name: "principal", key: owner, max: this.#perOwner, whenFull: "refuse" }] });
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
