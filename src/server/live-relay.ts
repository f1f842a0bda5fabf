// Live relay sessions: a domain operation that talks to a card with an async `transmit` (RecoveryService.reproduce,
// seed 001 FIG. 10) runs in this process while the card sits in the user's terminal or card issuing machine, which
// only forwards APDUs over HTTP. The operation's `transmit` parks each command APDU until the terminal's next
// round trip brings the card's response; the HTTP side answers each round with the parked APDU, or with the
// operation's result once it returned, or with its refusal.
//
// Unlike relay-sessions.ts (a script whose rounds are known in advance), the operation decides each APDU after
// seeing the previous response, so a round carries one APDU. The wire shape ({apdus: [...]}, {responses: [...]})
// is the same as the script relay's, so a terminal forwards both the same way.
//
// Bounded in time and count: a session expires `ttlMs` after it was opened (default 5 min) — then, and when the
// server closes, the parked APDU is refused so that the operation fails and cleans up (reproduce puts its request
// back to "satisfied") — at most `max` run in this server at once (default 100) and at most `perOwner` per principal
// on all servers together (default 8), so that one operator cannot take every place; beyond either, 429 and nothing
// runs. A session belongs to the principal that opened it (403 for anyone else) and processes one round at a time (409).
//
// Several servers on one database (issue 16 §2): each session has a row in the store (LiveRelayRecords, cluster.ts:
// id, owner principal, the server running it, kind, expiry) and the bounds count those rows, each server's own and
// every live server's. The operation itself never moves: it is a running computation in this process. A round that
// lands on another server is forwarded here (live-relay-forward.ts); `holds` tells a route which case it is. Without
// a store (`records` not given) the rows are kept in memory: one server alone.
//
// Never logged or returned here: the APDUs and responses themselves travel only between the operation and the
// terminal (the secure channel protects what must stay secret from the terminal).

import { randomBytes } from "node:crypto";
import { MemoryLiveRelayRecords, type LiveRelayRecords } from "./cluster.ts";
import { newInstanceId } from "./instance.ts";
import { ApiProblem } from "./problem.ts";

export type LiveTransmit = (apdu: Uint8Array) => Promise<Uint8Array>;

/** What a round answers: the next APDU(s) for the card, or the operation's result. A refusal is thrown. */
export type LiveStep<T> = { apdus: Uint8Array[] } | { result: T };

/** Why a parked APDU was refused: the session expired or the server is closing. */
export class LiveRelayAborted extends Error {
  override readonly name = "LiveRelayAborted";
}

class LiveSession<T> {
  private parked: { apdu: Uint8Array; resolve: (r: Uint8Array) => void; reject: (e: Error) => void } | undefined;
  private wake: (() => void) | undefined;
  private outcome: { ok: true; value: T } | { ok: false; error: unknown } | undefined;
  private aborted: LiveRelayAborted | undefined;
  busy = false;
  /** Settles when the operation returned or threw (never rejects); set by start. */
  done: Promise<void> = Promise.resolve();

  constructor(readonly owner: string) {}

  start(run: (transmit: LiveTransmit) => Promise<T>): void {
    const transmit: LiveTransmit = (apdu) =>
      new Promise<Uint8Array>((resolve, reject) => {
        if (this.aborted) return reject(this.aborted);
        if (this.parked) return reject(new Error("live relay: one APDU at a time"));
        this.parked = { apdu: Uint8Array.from(apdu), resolve, reject };
        this.signal();
      });
    this.done = Promise.resolve()
      .then(() => run(transmit))
      .then(
        (value) => {
          this.outcome = { ok: true, value };
        },
        (error: unknown) => {
          this.outcome = { ok: false, error };
        },
      )
      .finally(() => this.signal());
  }

  private signal(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Waits until the operation parks an APDU or ends; the APDU, the result, or the operation's error thrown. */
  async settle(): Promise<LiveStep<T>> {
    while (!this.parked && !this.outcome) await new Promise<void>((r) => (this.wake = r));
    if (this.parked) return { apdus: [Uint8Array.from(this.parked.apdu)] };
    const o = this.outcome!;
    if (o.ok) return { result: o.value };
    throw o.error;
  }

  /** Hands the card's response to the parked APDU and waits for what the operation does next. */
  async answer(responses: Uint8Array[]): Promise<LiveStep<T>> {
    const p = this.parked;
    if (!p) throw new ApiProblem(409, "conflict", "Conflict", "this live relay session has no APDU waiting for a response");
    if (responses.length !== 1) throw new ApiProblem(400, "validation", "Request does not match the schema", `expected 1 response (one APDU was sent), got ${responses.length}`);
    this.parked = undefined;
    p.resolve(Uint8Array.from(responses[0]));
    return this.settle();
  }

  abort(reason: string): void {
    this.aborted ??= new LiveRelayAborted(reason);
    const p = this.parked;
    this.parked = undefined;
    p?.reject(this.aborted);
  }

  get finished(): boolean {
    return this.outcome !== undefined;
  }
}

export interface LiveRelayOptions {
  /** Lifetime of a session from its opening, ms (default 5 min). */
  ttlMs?: number;
  /** Most sessions this server runs at once (default 100). */
  max?: number;
  /** Most sessions one principal holds open at once, on all servers (default 8). */
  perOwner?: number;
  /** Clock, epoch ms. */
  now?: () => number;
  /** What runs in these sessions ("keygen", "reproduction"): each kind has its own bounds. */
  kind?: string;
  /** The rows every server sees (SqlLiveRelaySessions); default: in this process's memory only. */
  records?: LiveRelayRecords;
  /** This server (instance.ts); the rows name it as the one running the session. */
  instanceId?: string;
  /** Servers whose heartbeat is older than this are gone: their sessions no longer count in the bounds (ms; default: none is). */
  staleAfterMs?: number;
  /** Told when a session row could not be deleted (it expires anyway). */
  onRecordError?: (e: unknown) => void;
}

export class LiveRelaySessions<T> {
  /** Every session not yet finished, for rounds, expiry and close. */
  readonly #live = new Map<string, { session: LiveSession<T>; timer: NodeJS.Timeout; expiresAt: number }>();
  readonly #ttlMs: number;
  readonly #max: number;
  readonly #perOwner: number;
  readonly #now: () => number;
  readonly #records: LiveRelayRecords;
  readonly #pending = new Set<Promise<void>>();
  readonly #onRecordError: (e: unknown) => void;
  readonly kind: string;
  readonly instanceId: string;
  readonly staleAfterMs: number;
  #closing = false;

  constructor(o: LiveRelayOptions = {}) {
    this.#ttlMs = o.ttlMs ?? 5 * 60_000;
    this.#max = o.max ?? 100;
    this.#perOwner = o.perOwner ?? 8;
    if (!(this.#ttlMs > 0) || !Number.isInteger(this.#max) || this.#max < 1 || !Number.isInteger(this.#perOwner) || this.#perOwner < 1)
      throw new RangeError("LiveRelaySessions: ttlMs must be positive, max and perOwner positive integers");
    this.#now = o.now ?? Date.now;
    this.#records = o.records ?? new MemoryLiveRelayRecords();
    this.#onRecordError = o.onRecordError ?? (() => {});
    this.kind = o.kind ?? "live";
    this.instanceId = o.instanceId ?? newInstanceId();
    this.staleAfterMs = o.staleAfterMs ?? Number.POSITIVE_INFINITY;
  }

  /** Sessions open now in this server. */
  get size(): number {
    return this.#live.size;
  }

  /** Whether this server runs session `sessionId` (else a round for it belongs to another server, or to none). */
  holds(sessionId: string): boolean {
    return this.#live.has(sessionId);
  }

  /**
   * Starts `run` for `owner` with a transmit through the terminal; resolves with the session ID and the first
   * step (usually the first APDU). If the operation ends before transmitting, its result or error comes at once
   * and no session stays open.
   */
  async open(owner: string, run: (transmit: LiveTransmit) => Promise<T>): Promise<{ sessionId: string; step: LiveStep<T> }> {
    if (this.#closing) throw new ApiProblem(503, "closing", "Server closing", "the server is shutting down");
    // The place is taken before the operation starts: a bound reached refuses with 429 and nothing runs.
    const id = randomBytes(16).toString("hex");
    const now = this.#now();
    const expiresAt = now + this.#ttlMs;
    const liveSince = now - this.staleAfterMs;
    const over = await this.#records.add(
      { id, kind: this.kind, owner, instanceId: this.instanceId, createdAt: now, expiresAt },
      { perOwner: this.#perOwner, max: this.#max, now, liveSince: Number.isFinite(liveSince) ? liveSince : Number.MIN_SAFE_INTEGER },
    );
    if (over === "principal")
      throw new ApiProblem(429, "too-many-sessions", "Too many open sessions", `at most ${this.#perOwner} live relay sessions per principal are open at once; retry when some finish or expire`);
    if (over === "total") throw new ApiProblem(429, "too-many-sessions", "Too many open sessions", `at most ${this.#max} live relay sessions are open at once; retry when some finish or expire`);
    if (this.#closing) {
      this.#drop(id);
      throw new ApiProblem(503, "closing", "Server closing", "the server is shutting down");
    }
    const session = new LiveSession<T>(owner);
    session.start(run);
    const timer = setTimeout(() => this.#end(id, "the live relay session expired before the card answered"), this.#ttlMs);
    timer.unref();
    this.#live.set(id, { session, timer, expiresAt });
    void session.done.then(() => this.#forget(id));
    session.busy = true;
    try {
      const step = await session.settle();
      if ("result" in step) this.#forget(id);
      return { sessionId: id, step };
    } catch (e) {
      this.#forget(id);
      throw e;
    } finally {
      session.busy = false;
    }
  }

  /** Feeds the card's response to the parked APDU; the next APDU, the result, or the operation's refusal thrown. */
  async next(sessionId: string, owner: string, responses: Uint8Array[]): Promise<LiveStep<T>> {
    const live = this.#live.get(sessionId);
    if (!live || live.expiresAt <= this.#now()) {
      this.#end(sessionId, "the live relay session expired before the card answered");
      throw new ApiProblem(404, "not-found", "live relay session not found", `no open live relay session ${sessionId} (finished, failed or expired)`);
    }
    const { session } = live;
    if (session.owner !== owner) throw new ApiProblem(403, "forbidden", "Forbidden", "this live relay session belongs to another principal");
    if (session.busy) throw new ApiProblem(409, "conflict", "Conflict", "this live relay session is already processing a round");
    session.busy = true;
    try {
      const step = await session.answer(responses);
      if ("result" in step) this.#forget(sessionId);
      return step;
    } catch (e) {
      if (session.finished) this.#forget(sessionId);
      throw e;
    } finally {
      session.busy = false;
    }
  }

  /** Ends a session: its parked APDU is refused (the operation fails and cleans up) and it is forgotten. */
  #end(id: string, reason: string): void {
    const live = this.#live.get(id);
    live?.session.abort(reason);
    this.#forget(id);
  }

  #forget(id: string): void {
    const live = this.#live.get(id);
    if (!live) return;
    clearTimeout(live.timer);
    this.#live.delete(id);
    this.#drop(id);
  }

  /** Deletes the session's row; close waits for the deletions under way. */
  #drop(id: string): void {
    const p = this.#records.delete(id).catch((e: unknown) => this.#onRecordError(e));
    this.#pending.add(p);
    void p.finally(() => this.#pending.delete(p));
  }

  /** Refuses every parked APDU and waits until every operation has ended and its row is gone (server shutdown). */
  async close(): Promise<void> {
    this.#closing = true;
    const running = [...this.#live.values()].map((l) => l.session);
    for (const id of [...this.#live.keys()]) this.#end(id, "the server is shutting down");
    await Promise.all(running.map((s) => s.done));
    await Promise.all([...this.#pending]);
  }
}
