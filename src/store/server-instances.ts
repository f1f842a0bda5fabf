// The registry of running issuer servers and the live relay sessions they run (issue 16 §1-2; tables: migrations/
// 0018_server_instances.ts), one code path for SQLite and PostgreSQL. It has the shape of the server's ports
// ServerInstanceRecords and LiveRelayRecords (src/server/cluster.ts; store/ does not import server/).
//
// The bounds on live relay sessions hold across servers without a lock: a new row is inserted first and the rows are
// counted after, and the row is deleted again when the count is over a bound. Of two servers adding at once, the one
// that counts last sees both rows; so the count never goes over a bound (at worst both refuse, and the terminal retries).
//
// Never here: APDUs, responses, keys or tokens. A session row says who opened what, on which server, until when.

import type { Kysely } from "kysely";
import type { Db } from "./db.ts";

export interface ServerInstancesTable {
  id: string;
  advertise_url: string;
  started_at: number;
  heartbeat_at: number;
}

export interface LiveRelaySessionsTable {
  id: string;
  kind: string;
  owner: string;
  instance_id: string;
  created_at: number;
  expires_at: number;
}

// a type alias, not an interface: Kysely's withTables wants an index-signature-compatible record
export type ServerInstanceTables = { server_instances: ServerInstancesTable; live_relay_sessions: LiveRelaySessionsTable };

export interface ServerInstanceRow {
  id: string;
  advertiseUrl: string;
  startedAt: number;
  heartbeatAt: number;
}

export interface LiveRelaySessionRow {
  id: string;
  kind: string;
  owner: string;
  instanceId: string;
  createdAt: number;
  expiresAt: number;
}

type Q = Kysely<ServerInstanceTables>;

/** Server rows (ServerInstanceRecords of src/server/cluster.ts). */
export class SqlServerInstances {
  readonly #db: Q;

  /** @param db the system DB, migrated so that 0018_server_instances exists */
  constructor(db: Db | Kysely<unknown>) {
    this.#db = (db as Db).withTables<ServerInstanceTables>() as unknown as Q;
  }

  async register(i: { id: string; advertiseUrl: string; at: number }): Promise<void> {
    await this.#db
      .insertInto("server_instances")
      .values({ id: i.id, advertise_url: i.advertiseUrl, started_at: i.at, heartbeat_at: i.at })
      .onConflict((oc) => oc.column("id").doUpdateSet({ advertise_url: i.advertiseUrl, heartbeat_at: i.at }))
      .execute();
  }

  async heartbeat(id: string, at: number): Promise<boolean> {
    const r = await this.#db.updateTable("server_instances").set({ heartbeat_at: at }).where("id", "=", id).executeTakeFirst();
    return Number(r.numUpdatedRows) > 0;
  }

  async deregister(id: string): Promise<void> {
    await this.#db.deleteFrom("live_relay_sessions").where("instance_id", "=", id).execute();
    await this.#db.deleteFrom("server_instances").where("id", "=", id).execute();
  }

  async get(id: string): Promise<ServerInstanceRow | undefined> {
    const r = await this.#db.selectFrom("server_instances").selectAll().where("id", "=", id).executeTakeFirst();
    return r && { id: r.id, advertiseUrl: r.advertise_url, startedAt: Number(r.started_at), heartbeatAt: Number(r.heartbeat_at) };
  }

  async reap(before: number): Promise<number> {
    const r = await this.#db.deleteFrom("server_instances").where("heartbeat_at", "<", before).executeTakeFirst();
    return Number(r.numDeletedRows);
  }
}

/** Live relay session rows (LiveRelayRecords of src/server/cluster.ts). */
export class SqlLiveRelaySessions {
  readonly #db: Q;

  /** @param db the system DB, migrated so that 0018_server_instances exists */
  constructor(db: Db | Kysely<unknown>) {
    this.#db = (db as Db).withTables<ServerInstanceTables>() as unknown as Q;
  }

  async add(row: LiveRelaySessionRow, b: { perOwner: number; max: number; now: number; liveSince: number }): Promise<"principal" | "total" | undefined> {
    await this.#db.deleteFrom("live_relay_sessions").where("expires_at", "<=", b.now).execute();
    await this.#db
      .insertInto("live_relay_sessions")
      .values({ id: row.id, kind: row.kind, owner: row.owner, instance_id: row.instanceId, created_at: row.createdAt, expires_at: row.expiresAt })
      .execute();
    const count = async (owner: boolean): Promise<number> => {
      let q = this.#db
        .selectFrom("live_relay_sessions")
        .select((eb) => eb.fn.countAll<number>().as("n"))
        .where("kind", "=", row.kind)
        .where("expires_at", ">", b.now);
      q = owner
        ? q
            .where("owner", "=", row.owner)
            .where((eb) => eb.or([eb("instance_id", "=", row.instanceId), eb("instance_id", "in", eb.selectFrom("server_instances").select("id").where("heartbeat_at", ">=", b.liveSince))]))
        : q.where("instance_id", "=", row.instanceId);
      return Number((await q.executeTakeFirstOrThrow()).n);
    };
    const over = (await count(true)) > b.perOwner ? "principal" : (await count(false)) > b.max ? "total" : undefined;
    if (over) await this.delete(row.id);
    return over;
  }

  async get(id: string): Promise<LiveRelaySessionRow | undefined> {
    const r = await this.#db.selectFrom("live_relay_sessions").selectAll().where("id", "=", id).executeTakeFirst();
    return r && { id: r.id, kind: r.kind, owner: r.owner, instanceId: r.instance_id, createdAt: Number(r.created_at), expiresAt: Number(r.expires_at) };
  }

  async delete(id: string): Promise<void> {
    await this.#db.deleteFrom("live_relay_sessions").where("id", "=", id).execute();
  }
}
