// Relay sessions, card login handshakes and terminal tokens in the system DB (table: migrations/0015_relay_sessions.ts),
// one code path for SQLite and PostgreSQL, so that several servers on one database act as one (issue 16 §1): a
// terminal's next request may land on any of them. The server's side (what the rows mean, the recipes, the HTTP
// answers) is src/server/relay-sessions.ts and src/server/terminal-sessions.ts; here only rows and bounds.
//
// Expiry: every row has expires_at (epoch ms, the store's clock); a row past it reads as absent and no longer counts
// in a bound. The sweep deletes expired rows, at most `sweepBatch` per table at a time (bounded work), on every
// insert — each insert leaves the table with fewer expired rows than it found, or none.
//
// Bounds, counted in the DB over the live rows: relay sessions at most `perOwner` of one principal and `max` in all,
// beyond either the new one is refused; handshakes at most `perCardClient` of one card from one client address and
// `perCard` of one card, a new one retiring the oldest, and `max` in all, the oldest retired; tokens at most `perCard`
// of one card, the oldest retired, and `max` in all, beyond which a new one is refused. Each insert counts and
// inserts in one transaction: on SQLite writers queue, so the bounds are exact; on PostgreSQL (read committed) two
// servers inserting at the same instant may each see room for one, so a bound can be passed by the number of
// concurrent inserts — until the next insert, which retires (or, for a refusing bound, waits for expiry) again.
//
// Concurrency of relay rounds: `version` is an optimistic lock. A round reads the row, computes, and writes its new
// state with UPDATE ... WHERE id = ? AND version = ? (or finishes with DELETE ... WHERE id = ? AND version = ?): of
// two servers taking the same round at once exactly one wins, the other is told it lost (false).
//
// Never here: a token (only its SHA-256), a key or a session key (the relay state holds public values only).

import type { Generated, Kysely } from "kysely";
import type { Db } from "./db.ts";

export interface RelaySessionsTable {
  id: string;
  owner: string;
  recipe: string;
  state: string;
  version: number;
  created_at: number;
  expires_at: number;
}
export interface LoginHandshakesTable {
  seq: Generated<number>;
  id: string;
  card_id: string;
  client: string;
  key_set_id: string;
  host: string;
  started_at: number;
  expires_at: number;
}
export interface TerminalTokensTable {
  seq: Generated<number>;
  token_hash: string;
  card_id: string;
  status_version: number;
  created_at: number;
  expires_at: number;
}

// a type alias, not an interface: Kysely's withTables wants an index-signature-compatible record
export type SessionTables = { relay_sessions: RelaySessionsTable; login_handshakes: LoginHandshakesTable; terminal_tokens: TerminalTokensTable };
type SessionDb = Kysely<SessionTables>;

/** A relay session as stored: recipe and state are the server's JSON. */
export interface RelaySessionRow {
  id: string;
  owner: string;
  recipe: string;
  state: string;
  version: number;
  expiresAt: number;
}

export interface HandshakeRow {
  id: string;
  cardId: string;
  client: string;
  keySetId: string;
  host: string;
  startedAt: number;
}

/** Which bound retired (or refused) a row: "owner", "card", "card-client" or "total". */
export type Bound = "owner" | "card" | "card-client" | "total";

export interface SessionRepositoryOptions {
  /** The store's clock (epoch ms). */
  now?: () => number;
  /** Most expired rows one sweep deletes from each table (default 100). */
  sweepBatch?: number;
}

export class SessionRepository {
  private readonly db: SessionDb;
  private readonly now: () => number;
  private readonly batch: number;

  /** @param db the system DB, migrated (migrateToLatest) so that 0015_relay_sessions exists */
  constructor(db: Db | Kysely<unknown>, o: SessionRepositoryOptions = {}) {
    this.db = (db as Db).withTables<SessionTables>() as unknown as SessionDb;
    this.now = o.now ?? Date.now;
    this.batch = o.sweepBatch ?? 100;
  }

  /** Deletes up to `sweepBatch` expired rows of each table; answers how many went. */
  async sweep(db: SessionDb = this.db): Promise<number> {
    const now = this.now();
    let n = 0;
    const r = await db
      .deleteFrom("relay_sessions")
      .where("id", "in", db.selectFrom("relay_sessions").select("id").where("expires_at", "<=", now).limit(this.batch))
      .executeTakeFirst();
    n += Number(r.numDeletedRows);
    const h = await db
      .deleteFrom("login_handshakes")
      .where("seq", "in", db.selectFrom("login_handshakes").select("seq").where("expires_at", "<=", now).limit(this.batch))
      .executeTakeFirst();
    n += Number(h.numDeletedRows);
    const t = await db
      .deleteFrom("terminal_tokens")
      .where("seq", "in", db.selectFrom("terminal_tokens").select("seq").where("expires_at", "<=", now).limit(this.batch))
      .executeTakeFirst();
    return n + Number(t.numDeletedRows);
  }

  /** Rows of each table, expired or not (for tests and metrics). */
  async counts(): Promise<{ relaySessions: number; handshakes: number; tokens: number }> {
    const c = async (t: keyof SessionTables) =>
      Number(
        (
          await this.db
            .selectFrom(t as "relay_sessions")
            .select((e) => e.fn.countAll<number>().as("n"))
            .executeTakeFirstOrThrow()
        ).n,
      );
    return { relaySessions: await c("relay_sessions"), handshakes: await c("login_handshakes"), tokens: await c("terminal_tokens") };
  }

  // ---- relay sessions --------------------------------------------------------------------------------------------

  /**
   * Stores a new relay session (version 1) unless `owner` holds `perOwner` live ones or the table `max`: then nothing
   * is stored and the bound that refused is answered.
   */
  async openRelay(s: { id: string; owner: string; recipe: string; state: string; ttlMs: number; perOwner: number; max: number }): Promise<{ expiresAt: number } | { refused: Bound }> {
    return this.db.transaction().execute(async (trx) => {
      await this.sweep(trx);
      const now = this.now();
      const live = (q: ReturnType<typeof trx.selectFrom<"relay_sessions">>) =>
        q
          .select((e) => e.fn.countAll<number>().as("n"))
          .where("expires_at", ">", now)
          .executeTakeFirstOrThrow();
      if (Number((await live(trx.selectFrom("relay_sessions").where("owner", "=", s.owner))).n) >= s.perOwner) return { refused: "owner" as const };
      if (Number((await live(trx.selectFrom("relay_sessions"))).n) >= s.max) return { refused: "total" as const };
      const expiresAt = now + s.ttlMs;
      await trx.insertInto("relay_sessions").values({ id: s.id, owner: s.owner, recipe: s.recipe, state: s.state, version: 1, created_at: now, expires_at: expiresAt }).execute();
      return { expiresAt };
    });
  }

  /** The live relay session `id`; an expired one reads as absent. */
  async getRelay(id: string): Promise<RelaySessionRow | undefined> {
    const r = await this.db.selectFrom("relay_sessions").selectAll().where("id", "=", id).where("expires_at", ">", this.now()).executeTakeFirst();
    return r && { id: r.id, owner: r.owner, recipe: r.recipe, state: r.state, version: Number(r.version), expiresAt: Number(r.expires_at) };
  }

  /** The next state of relay session `id`, written only if it is still at `version` (and live): false when another round won. */
  async advanceRelay(id: string, version: number, state: string): Promise<boolean> {
    const r = await this.db
      .updateTable("relay_sessions")
      .set({ state, version: version + 1 })
      .where("id", "=", id)
      .where("version", "=", version)
      .where("expires_at", ">", this.now())
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  /** Removes relay session `id` if it is still at `version` (any version when omitted): false when it was not there. */
  async removeRelay(id: string, version?: number): Promise<boolean> {
    let q = this.db.deleteFrom("relay_sessions").where("id", "=", id);
    if (version !== undefined) q = q.where("version", "=", version);
    return Number((await q.executeTakeFirst()).numDeletedRows) === 1;
  }

  // ---- login handshakes ------------------------------------------------------------------------------------------

  /**
   * Stores a pending handshake. Room is made first: the card's oldest handshakes from this client beyond
   * `perCardClient - 1`, then the card's oldest beyond `perCard - 1`, then the table's oldest beyond `max - 1` are
   * retired; answers the bound each retired row went for.
   */
  async addHandshake(h: HandshakeRow & { ttlMs: number; perCard: number; perCardClient: number; max: number }): Promise<Bound[]> {
    return this.db.transaction().execute(async (trx) => {
      await this.sweep(trx);
      const now = this.now();
      const retired: Bound[] = [];
      const retire = async (bound: Bound, keep: number, where: { card?: string; client?: string }) => {
        let q = trx.selectFrom("login_handshakes").select("seq").where("expires_at", ">", now);
        if (where.card !== undefined) q = q.where("card_id", "=", where.card);
        if (where.client !== undefined) q = q.where("client", "=", where.client);
        const old = await q.orderBy("seq", "desc").limit(this.batch).offset(Math.max(0, keep)).execute();
        if (old.length === 0) return;
        await trx
          .deleteFrom("login_handshakes")
          .where(
            "seq",
            "in",
            old.map((o) => o.seq),
          )
          .execute();
        for (let i = 0; i < old.length; i++) retired.push(bound);
      };
      await retire("card-client", h.perCardClient - 1, { card: h.cardId, client: h.client });
      await retire("card", h.perCard - 1, { card: h.cardId });
      await retire("total", h.max - 1, {});
      await trx
        .insertInto("login_handshakes")
        .values({ id: h.id, card_id: h.cardId, client: h.client, key_set_id: h.keySetId, host: h.host, started_at: h.startedAt, expires_at: now + h.ttlMs })
        .execute();
      return retired;
    });
  }

  /**
   * Takes the live handshake `id` of card `cardId`: read and deleted, so that it is finished once — of two servers
   * taking it at once, one gets it. Undefined when absent, expired, of another card, or taken already.
   */
  async takeHandshake(id: string, cardId: string): Promise<HandshakeRow | undefined> {
    const r = await this.db.selectFrom("login_handshakes").selectAll().where("id", "=", id).where("card_id", "=", cardId).where("expires_at", ">", this.now()).executeTakeFirst();
    if (!r) return undefined;
    const d = await this.db.deleteFrom("login_handshakes").where("seq", "=", r.seq).executeTakeFirst();
    if (Number(d.numDeletedRows) !== 1) return undefined;
    return { id: r.id, cardId: r.card_id, client: r.client, keySetId: r.key_set_id, host: r.host, startedAt: Number(r.started_at) };
  }

  // ---- terminal tokens -------------------------------------------------------------------------------------------

  /**
   * Stores a token's hash for card `cardId` at `statusVersion`: the card's oldest beyond `perCard - 1` are retired
   * (answered by count); when the table holds `max` live tokens, nothing is stored (refused).
   */
  async addToken(t: { tokenHash: string; cardId: string; statusVersion: number; ttlMs: number; perCard: number; max: number }): Promise<{ expiresAt: number; retired: number } | { refused: Bound }> {
    return this.db.transaction().execute(async (trx) => {
      await this.sweep(trx);
      const now = this.now();
      const old = await trx
        .selectFrom("terminal_tokens")
        .select("seq")
        .where("card_id", "=", t.cardId)
        .where("expires_at", ">", now)
        .orderBy("seq", "desc")
        .limit(this.batch)
        .offset(Math.max(0, t.perCard - 1))
        .execute();
      const total = Number(
        (
          await trx
            .selectFrom("terminal_tokens")
            .select((e) => e.fn.countAll<number>().as("n"))
            .where("expires_at", ">", now)
            .executeTakeFirstOrThrow()
        ).n,
      );
      if (total - old.length >= t.max) return { refused: "total" as const };
      if (old.length)
        await trx
          .deleteFrom("terminal_tokens")
          .where(
            "seq",
            "in",
            old.map((o) => o.seq),
          )
          .execute();
      const expiresAt = now + t.ttlMs;
      await trx.insertInto("terminal_tokens").values({ token_hash: t.tokenHash, card_id: t.cardId, status_version: t.statusVersion, created_at: now, expires_at: expiresAt }).execute();
      return { expiresAt, retired: old.length };
    });
  }

  /** The live token whose hash is `tokenHash`: its card and the card's status_version when it was issued. */
  async getToken(tokenHash: string): Promise<{ cardId: string; statusVersion: number; expiresAt: number } | undefined> {
    const r = await this.db
      .selectFrom("terminal_tokens")
      .select(["card_id", "status_version", "expires_at"])
      .where("token_hash", "=", tokenHash)
      .where("expires_at", ">", this.now())
      .executeTakeFirst();
    return r && { cardId: r.card_id, statusVersion: Number(r.status_version), expiresAt: Number(r.expires_at) };
  }
}
