// Several issuer servers on one database behind a load balancer (issue 16 §1, §4): the registry of running servers,
// and the ports through which the live relay sessions (live-relay.ts, live-relay-forward.ts) are counted and found by
// every server. The storage is src/store/server-instances.ts; this file declares what the server needs of it.
//
// A server registers when it listens (its instance id, instance.ts, and its advertise URL: where the other servers
// reach it, on their private network), heartbeats every `heartbeatMs` (an unref'd timer) and deregisters when it
// closes. It is live while its last heartbeat is at most STALE_BEATS heartbeats old: a crashed server (nothing ran its
// close) stops counting after that. Heartbeat times are each server's clock: keep the servers' clocks in step (NTP).
//
// Never here: anything a client sent. The advertise URL comes from the server's own configuration.

export interface ServerInstance {
  id: string;
  /** Where the other servers reach this one, e.g. http://10.0.0.5:8443 (no path, no trailing slash). */
  advertiseUrl: string;
  startedAt: number;
  heartbeatAt: number;
}

/** The registry of running servers (table server_instances). */
export interface ServerInstanceRecords {
  /** Inserts or replaces the server's row (heartbeat = started = `at` on insert). */
  register(i: { id: string; advertiseUrl: string; at: number }): Promise<void>;
  /** Records a heartbeat; false when the row was gone (the caller registers again). */
  heartbeat(id: string, at: number): Promise<boolean>;
  /** Deletes the server's row and the rows of its live relay sessions. */
  deregister(id: string): Promise<void>;
  get(id: string): Promise<ServerInstance | undefined>;
  /** Deletes the rows of servers whose last heartbeat is before `before` (long gone); how many. */
  reap(before: number): Promise<number>;
}

/** A live relay session as every server sees it (table live_relay_sessions). */
export interface LiveRelayRow {
  id: string;
  /** What runs in it: "keygen", "reproduction". */
  kind: string;
  /** The principal that opened it. */
  owner: string;
  /** The server whose process runs the operation. */
  instanceId: string;
  createdAt: number;
  expiresAt: number;
}

/** The bounds a new session is checked against (issue 9 §2): both count only unexpired sessions of live servers. */
export interface LiveRelayBounds {
  /** Most sessions of this kind one principal holds open, on every server. */
  perOwner: number;
  /** Most sessions of this kind the opening server runs at once. */
  max: number;
  now: number;
  /** Servers whose last heartbeat is before this are gone: their sessions no longer count. */
  liveSince: number;
}

export interface LiveRelayRecords {
  /**
   * Adds the row unless a bound is reached: "principal" or "total" names the one that refused it (and the row is not
   * kept). Concurrent adds on several servers never go over a bound (each counts after its own insert).
   */
  add(row: LiveRelayRow, bounds: LiveRelayBounds): Promise<"principal" | "total" | undefined>;
  get(id: string): Promise<LiveRelayRow | undefined>;
  delete(id: string): Promise<void>;
}

/** Heartbeats a server may miss before the others take it for gone. */
export const STALE_BEATS = 3;
export const DEFAULT_HEARTBEAT_MS = 5_000;

/** Whether `i` heartbeated within `staleAfterMs` of `now`. */
export const isLive = (i: ServerInstance | undefined, now: number, staleAfterMs: number): i is ServerInstance => i !== undefined && i.heartbeatAt > now - staleAfterMs;

/**
 * Where the other servers reach a server listening on host:port when no advertise URL is configured: its listen
 * address, the unspecified ones (0.0.0.0, ::) replaced by loopback — right for servers on one host only; servers on
 * several hosts set server.advertiseUrl (CARDKMS_ADVERTISE_URL).
 */
export function defaultAdvertiseUrl(host: string, port: number): string {
  const h = host === "0.0.0.0" || host === "" ? "127.0.0.1" : host === "::" || host === "[::]" ? "::1" : host;
  return `http://${h.includes(":") && !h.startsWith("[") ? `[${h}]` : h}:${port}`;
}

export interface ServerPresenceOptions {
  instanceId: string;
  advertiseUrl: string;
  heartbeatMs?: number;
  now?: () => number;
  /** Told when a heartbeat could not be written (the next one tries again). */
  onError?: (e: unknown) => void;
}

/** A server's row in the registry: registered by start, heartbeated on a timer, deleted by stop. */
export class ServerPresence {
  readonly instanceId: string;
  readonly advertiseUrl: string;
  readonly heartbeatMs: number;
  readonly #records: ServerInstanceRecords;
  readonly #now: () => number;
  readonly #onError: (e: unknown) => void;
  #timer: NodeJS.Timeout | undefined;
  #beating: Promise<void> | undefined;

  constructor(records: ServerInstanceRecords, o: ServerPresenceOptions) {
    this.#records = records;
    this.instanceId = o.instanceId;
    this.advertiseUrl = o.advertiseUrl.replace(/\/+$/, "");
    this.heartbeatMs = o.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    this.#now = o.now ?? Date.now;
    this.#onError = o.onError ?? (() => {});
  }

  /** How old a heartbeat may be for its server to count as live. */
  get staleAfterMs(): number {
    return STALE_BEATS * this.heartbeatMs;
  }

  /** Registers (again, after halt) and heartbeats from now on. */
  async start(): Promise<void> {
    clearInterval(this.#timer);
    const at = this.#now();
    // rows of servers gone for a day are of no use to anyone
    await this.#records.reap(at - 86_400_000);
    await this.#records.register({ id: this.instanceId, advertiseUrl: this.advertiseUrl, at });
    this.#timer = setInterval(() => void (this.#beating ??= this.#beat().finally(() => (this.#beating = undefined))), this.heartbeatMs);
    this.#timer.unref();
  }

  async #beat(): Promise<void> {
    try {
      const at = this.#now();
      if (!(await this.#records.heartbeat(this.instanceId, at))) await this.#records.register({ id: this.instanceId, advertiseUrl: this.advertiseUrl, at });
    } catch (e) {
      this.#onError(e);
    }
  }

  /** Stops heartbeating and leaves the row as it is: what a crash leaves behind (tests). */
  async halt(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#beating;
  }

  /** Stops heartbeating and deletes the row (and the rows of this server's live relay sessions). */
  async stop(): Promise<void> {
    await this.halt();
    await this.#records.deregister(this.instanceId);
  }
}

/** The records of one process alone (no database): a server that shares nothing, and the unit tests. */
export class MemoryLiveRelayRecords implements LiveRelayRecords {
  readonly #rows = new Map<string, LiveRelayRow>();

  async add(row: LiveRelayRow, b: LiveRelayBounds): Promise<"principal" | "total" | undefined> {
    for (const [id, r] of this.#rows) if (r.expiresAt <= b.now) this.#rows.delete(id);
    const same = [...this.#rows.values()].filter((r) => r.kind === row.kind);
    if (same.filter((r) => r.owner === row.owner).length >= b.perOwner) return "principal";
    if (same.filter((r) => r.instanceId === row.instanceId).length >= b.max) return "total";
    this.#rows.set(row.id, { ...row });
    return undefined;
  }

  async get(id: string): Promise<LiveRelayRow | undefined> {
    const r = this.#rows.get(id);
    return r && { ...r };
  }

  async delete(id: string): Promise<void> {
    this.#rows.delete(id);
  }
}
