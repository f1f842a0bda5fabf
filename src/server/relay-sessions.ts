// Relay sessions between a terminal's round trips (relay.ts: the server drives an SCP03 script, the terminal or card
// issuing machine only forwards APDUs), kept in the system DB (issue 16 §1: several servers on one database behind a
// load balancer act as one, so the next round may land on any of them; the rows: src/store/relay-session-repository.ts).
//
// A row holds what crossed the wire and what rebuilds the rest, never a secret: the principal that opened it, a
// recipe ({kind, ...params}: "personalisation" {cardId}, "online-delivery" {cardId, keyPairId}, "rotation-new-card"
// {rotationId, cardId}) from which any server rebuilds the script(s) — keys, application, commands, check — the
// card-state gate and what finishes it (RelayRecipeBuilder, registered by the route plugins), and the relay's state
// (protocol/relay.ts RelaySessionState: SCP03 challenges, the card's INITIALIZE UPDATE answer, MAC chaining value,
// counter and pending MACs; the chain index and the results so far). The session keys are derived again in custody
// from the two challenges for the round that needs them and wiped after it. A recipe builds the same scripts from
// the same DB state (PUT KEY data and key check values are deterministic; Sk[PRk] is read from the DB).
//
// Bounded in time and count: a session expires `ttlMs` after it was opened (default 5 min, the store's clock), at most
// `max` are open at once (default 1,000), and at most `perOwner` per principal (default 32); beyond either a new one is
// refused with 429 until some finish or expire — so one principal (a card's terminal, an operator) cannot take every
// place. A session belongs to the principal that opened it: nobody else can advance it (403). Each round is written
// under an optimistic version: of two servers taking the same round at once one wins and the other answers 409 (as a
// round already being processed did); a round consumed is never taken again, and a replay of an earlier round's
// answers fails. A failed relay is a 422 problem naming the reason, and the session is gone; so is one whose card
// left the state the script needs (the gate, checked before every round: 409 check card_state).
//
// TtlMap, in memory, stays for the live relay sessions of live-relay.ts (one process's card at hand).

import { randomBytes } from "node:crypto";
import type { CardScript } from "../issuer/card-scripts.ts";
import { RelayError, RelaySession, restoreRelaySession, type RelayResult, type RelaySessionState } from "../issuer/relay.ts";
import type { SessionRepository } from "../store/relay-session-repository.ts";
import { fromHex, toHex } from "../util/bytes.ts";
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

/** A recipe: what a relay session does, as data any server rebuilds it from (kind and string or number params). */
export type RelayRecipe = { kind: string } & Record<string, string | number>;

/** What a recipe builds: the script(s), the card-state gate, and what records the outcome. */
export interface RelayPlan {
  /** Each its own SCP03 session, run in order through the one relay session (a chain when more than one). */
  scripts: CardScript[];
  /** Checked before every round the terminal sends: throws to refuse it (the session ends). */
  gate?: () => Promise<unknown>;
  /** Records the outcome once every script ran and passed its check; `owner` opened the session. */
  finish: (results: RelayResult[], owner: string) => Promise<void>;
}

/** Rebuilds a recipe's plan on whichever server takes the round: the same scripts from the same DB state. */
export type RelayRecipeBuilder = (recipe: RelayRecipe) => Promise<RelayPlan>;

export type RelayStep = { apdus: Uint8Array[] } | { done: true; results: RelayResult[] };

/** A row's state: the script it is at, the results of the scripts before it (hex), and that script's relay state. */
interface StoredState {
  script: number;
  results: { sw: number; data: string }[];
  relay: RelaySessionState;
}

export interface RelaySessionsOptions {
  /** Where the sessions are kept: the system DB shared by every server. */
  repository: SessionRepository;
  /** Lifetime of a session from its opening, ms (default 5 min). */
  ttlMs?: number;
  /** Most sessions open at once (default 1,000). */
  max?: number;
  /** Most sessions one principal holds open at once (default 32). */
  perOwner?: number;
}

const tooMany = (detail: string) => new ApiProblem(429, "too-many-sessions", "Too many open sessions", `${detail}; retry when some finish or expire`);
const notFound = (id: string) => new ApiProblem(404, "not-found", "relay session not found", `no open relay session ${id} (finished, failed or expired)`);
/** Another request took this round first (here or on another server): the row moved past the version read. */
class RoundTaken extends ApiProblem {
  constructor() {
    super(409, "conflict", "Conflict", "this relay session is already processing a round (or another server took it)");
  }
}
const busy = () => new RoundTaken();

export class RelaySessions {
  readonly #repo: SessionRepository;
  readonly #ttlMs: number;
  readonly #max: number;
  readonly #perOwner: number;
  readonly #recipes = new Map<string, RelayRecipeBuilder>();

  constructor(o: RelaySessionsOptions) {
    this.#repo = o.repository;
    this.#ttlMs = o.ttlMs ?? 5 * 60_000;
    this.#max = o.max ?? 1000;
    this.#perOwner = o.perOwner ?? 32;
  }

  /** Teaches every server the same recipe kind (each route plugin registers its own at start). */
  register(kind: string, build: RelayRecipeBuilder): void {
    if (this.#recipes.has(kind)) throw new Error(`relay recipe ${kind} is registered twice`);
    this.#recipes.set(kind, build);
  }

  /** The plan a recipe builds here (the rounds rebuild it the same way). */
  plan(recipe: RelayRecipe): Promise<RelayPlan> {
    const build = this.#recipes.get(recipe.kind);
    if (!build) throw new Error(`no relay recipe ${recipe.kind} is registered on this server`);
    return build(recipe);
  }

  /**
   * Opens a session for `owner` running `recipe`; returns its ID and the first round of APDUs for the terminal to
   * forward. `built`: the recipe's plan, when the caller built it already (the checks it makes answer first).
   */
  async open(owner: string, recipe: RelayRecipe, built?: RelayPlan): Promise<{ sessionId: string; apdus: Uint8Array[] }> {
    const plan = built ?? (await this.plan(recipe));
    if (plan.scripts.length === 0) throw new RangeError("a relay session runs at least one script");
    const first = plan.scripts[0];
    const session = new RelaySession(first.keys, first.aid, first.commands);
    const apdus = session.start();
    const state: StoredState = { script: 0, results: [], relay: session.snapshot() };
    session.close();
    const sessionId = randomBytes(16).toString("hex");
    const r = await this.#repo.openRelay({ id: sessionId, owner, recipe: JSON.stringify(recipe), state: JSON.stringify(state), ttlMs: this.#ttlMs, perOwner: this.#perOwner, max: this.#max });
    if ("refused" in r) throw tooMany(r.refused === "owner" ? `at most ${this.#perOwner} relay sessions per principal are open at once` : `at most ${this.#max} relay sessions are open at once`);
    return { sessionId, apdus };
  }

  /** Feeds the card's responses to the last round; returns the next round, or the results once the script(s) ran. */
  async next(sessionId: string, owner: string, responses: Uint8Array[]): Promise<RelayStep> {
    const row = await this.#repo.getRelay(sessionId);
    if (!row) throw notFound(sessionId);
    if (row.owner !== owner) throw new ApiProblem(403, "forbidden", "Forbidden", "this relay session belongs to another principal");
    try {
      const plan = await this.plan(JSON.parse(row.recipe) as RelayRecipe);
      await plan.gate?.();
      const state = JSON.parse(row.state) as StoredState;
      const script = plan.scripts[state.script];
      if (!script) throw new RelayError(`the relay session is at script ${state.script + 1}, its recipe builds ${plan.scripts.length}`);
      const session = restoreRelaySession(script.keys, script.aid, script.commands, state.relay);
      let r: Awaited<ReturnType<typeof session.next>>;
      let next: StoredState | undefined;
      try {
        r = await session.next(responses);
        if ("apdus" in r) next = { ...state, relay: session.snapshot() };
      } finally {
        session.close();
      }
      if ("apdus" in r) {
        if (!(await this.#repo.advanceRelay(sessionId, row.version, JSON.stringify(next)))) throw busy();
        return { apdus: r.apdus };
      }
      script.check(r.results);
      const results = [...state.results.map((x) => ({ sw: x.sw, data: fromHex(x.data) })), ...r.results];
      const following = plan.scripts[state.script + 1];
      if (following) {
        // the next script of the chain: its own SCP03 session; its first round answers this one
        const s = new RelaySession(following.keys, following.aid, following.commands);
        const apdus = s.start();
        const chained: StoredState = { script: state.script + 1, results: results.map((x) => ({ sw: x.sw, data: toHex(x.data) })), relay: s.snapshot() };
        s.close();
        if (!(await this.#repo.advanceRelay(sessionId, row.version, JSON.stringify(chained)))) throw busy();
        return { apdus };
      }
      // the claim of the outcome: only the server that removes the row at this version records it
      if (!(await this.#repo.removeRelay(sessionId, row.version))) throw busy();
      await plan.finish(results, row.owner);
      return { done: true, results };
    } catch (e) {
      if (e instanceof RoundTaken) throw e;
      await this.#repo.removeRelay(sessionId, row.version);
      if (e instanceof RelayError) throw relayFailed(e.message, e.sw);
      if (e instanceof Scp03Error) throw relayFailed(e.message);
      if (e instanceof ApduError) throw relayFailed(e.message);
      throw e;
    }
  }
}

function relayFailed(reason: string, sw?: number): ApiProblem {
  const status = sw === undefined ? "" : ` (SW ${sw.toString(16).padStart(4, "0").toUpperCase()})`;
  return new ApiProblem(422, "relay-failed", "The relayed card session failed", `${reason}${status}`);
}
