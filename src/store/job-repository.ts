// The job table (migration 0016) behind the domain's JobStore port (src/issuer/jobs.ts, issue 16 §2): queued jobs,
// their leases and progress, one code path for SQLite and PostgreSQL. jobStoreOf(db) is what the wiring (the
// servers' job runner, the CLI's re-wrap worker, tests) hands to the domain.
//
// The claim: on PostgreSQL a transaction that picks the oldest runnable row with SELECT ... FOR UPDATE SKIP LOCKED
// (two claimers never wait on nor take the same row) and then takes its lease; on SQLite, the single writer, the
// same pick followed by an UPDATE guarded by "still runnable". Every later lease change (renew, finish, release) is
// an UPDATE guarded by "running under this owner's lease", so a runner that lost its lease writes nothing. A lease
// that ran out but that nobody took is still the owner's (a takeover is what changes lease_owner): its runner,
// late after a stall, renews it and goes on.
//
// Never: decides what a job does (the domain does), or stores a secret (progress and error are the caller's
// non-secret text).

import type { ExpressionBuilder, Kysely, Selectable } from "kysely";
import type { ClaimedJob, Job, JobProgress, JobState, JobStore } from "../issuer/jobs.ts";
import { LIVE_JOB_STATES } from "../issuer/jobs.ts";
import { engineOf, type Db, type Engine } from "./db.ts";
import { newId } from "./ids.ts";
import { isConstraintViolation, StoreError } from "./repository.ts";

/** One job (migration 0016). */
export interface JobsTable {
  id: string;
  kind: string;
  subject: string;
  state: JobState;
  lease_owner: string | null;
  lease_until: number | null;
  attempts: number;
  /** JSON text; never secret. */
  progress: string | null;
  error: string | null;
  actor: string;
  created_at: number;
  updated_at: number;
}

interface JobsSchema {
  jobs: JobsTable;
}

const MAX_LEASE_MS = 24 * 3600_000;

function checkLease(leaseMs: number): void {
  if (!Number.isSafeInteger(leaseMs) || leaseMs < 1 || leaseMs > MAX_LEASE_MS) throw new StoreError("invalid", `job lease: expected 1..${MAX_LEASE_MS} ms, got ${leaseMs}`);
}

const json = (p: JobProgress | undefined): string | undefined => (p === undefined ? undefined : JSON.stringify(p));

export class SqlJobStore implements JobStore {
  readonly #db: Kysely<JobsSchema>;
  readonly engine: Engine;
  readonly #clock: () => number;

  /** @param db the system DB migrated to the latest schema; `now` the store's clock (default Date.now) */
  constructor(db: Db, o: { now?: () => number } = {}) {
    this.#db = db as unknown as Kysely<JobsSchema>;
    this.engine = engineOf(db);
    this.#clock = o.now ?? Date.now;
  }

  now(): number {
    return this.#clock();
  }

  async enqueue(input: { kind: string; subject: string; actor: string }): Promise<{ job: Job; created: boolean }> {
    if (!input.kind || !input.subject) throw new StoreError("invalid", "job: kind and subject are required");
    const live = await this.#live(input.kind, input.subject);
    if (live) return { job: live, created: false };
    const now = this.now();
    const row = {
      id: newId(now),
      kind: input.kind,
      subject: input.subject,
      state: "queued" as const,
      lease_owner: null,
      lease_until: null,
      attempts: 0,
      progress: null,
      error: null,
      actor: input.actor,
      created_at: now,
      updated_at: now,
    };
    try {
      await this.#db.insertInto("jobs").values(row).execute();
      return { job: toJob(row), created: true };
    } catch (e) {
      // Another caller queued it between the read and the insert (the unique index over the live rows).
      if (!isConstraintViolation(e)) throw e;
      const other = await this.#live(input.kind, input.subject);
      if (!other) throw e;
      return { job: other, created: false };
    }
  }

  async #live(kind: string, subject: string): Promise<Job | undefined> {
    const row = await this.#db.selectFrom("jobs").selectAll().where("kind", "=", kind).where("subject", "=", subject).where("state", "in", LIVE_JOB_STATES).executeTakeFirst();
    return row && toJob(row);
  }

  async get(id: string): Promise<Job | undefined> {
    const row = await this.#db.selectFrom("jobs").selectAll().where("id", "=", id).executeTakeFirst();
    return row && toJob(row);
  }

  async latest(kind: string, subject: string): Promise<Job | undefined> {
    const live = await this.#live(kind, subject);
    if (live) return live;
    const row = await this.#db.selectFrom("jobs").selectAll().where("kind", "=", kind).where("subject", "=", subject).orderBy("created_at", "desc").orderBy("id", "desc").limit(1).executeTakeFirst();
    return row && toJob(row);
  }

  async claim(input: { owner: string; leaseMs: number; kinds: readonly string[]; subject?: string; reclaimOwn?: boolean }): Promise<ClaimedJob | undefined> {
    checkLease(input.leaseMs);
    if (!input.owner) throw new StoreError("invalid", "job claim: an owner is required");
    if (input.kinds.length === 0) return undefined;
    const now = this.now();
    // Runnable: queued, or running with a lease that ran out (or, with reclaimOwn, is the claimer's own: a
    // restarted process of the same instance id).
    const expired = (eb: ExpressionBuilder<JobsSchema, "jobs">) =>
      eb.or([eb("lease_until", "is", null), eb("lease_until", "<=", now), ...(input.reclaimOwn ? [eb("lease_owner", "=", input.owner)] : [])]);
    const pick = (db: Kysely<JobsSchema>) => {
      let q = db
        .selectFrom("jobs")
        .selectAll()
        .where("kind", "in", input.kinds)
        .where((eb) => eb.or([eb("state", "=", "queued"), eb.and([eb("state", "=", "running"), expired(eb)])]));
      if (input.subject !== undefined) q = q.where("subject", "=", input.subject);
      return q.orderBy("created_at").orderBy("id").limit(1);
    };
    const take = (db: Kysely<JobsSchema>, before: Selectable<JobsTable>) =>
      db
        .updateTable("jobs")
        .set((eb) => ({ state: "running" as const, lease_owner: input.owner, lease_until: now + input.leaseMs, attempts: eb("attempts", "+", 1), updated_at: now }))
        .where("id", "=", before.id)
        .where("state", "=", before.state)
        .where((eb) => (before.state === "queued" ? eb("state", "=", "queued") : expired(eb)))
        .returningAll()
        .executeTakeFirst();
    if (this.engine === "postgres") {
      return this.#db.transaction().execute(async (trx) => {
        const before = await pick(trx).forUpdate().skipLocked().executeTakeFirst();
        if (!before) return undefined;
        const after = await take(trx, before);
        return after && { job: toJob(after), from: { state: before.state, leaseOwner: before.lease_owner } };
      });
    }
    // SQLite: one writer; the guarded UPDATE refuses a row another process took between the read and the write,
    // and the next pick skips it (each refusal means another claimer got a job: this loop ends).
    for (;;) {
      const before = await pick(this.#db).executeTakeFirst();
      if (!before) return undefined;
      const after = await take(this.#db, before);
      if (after) return { job: toJob(after), from: { state: before.state, leaseOwner: before.lease_owner } };
    }
  }

  async renew(id: string, owner: string, leaseMs: number, progress?: JobProgress): Promise<boolean> {
    checkLease(leaseMs);
    const now = this.now();
    const p = json(progress);
    const r = await this.#db
      .updateTable("jobs")
      .set({ lease_until: now + leaseMs, updated_at: now, ...(p !== undefined ? { progress: p } : {}) })
      .where("id", "=", id)
      .where("state", "=", "running")
      .where("lease_owner", "=", owner)
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  async finish(id: string, owner: string, end: { state: "done" | "failed" | "stopped"; error?: string; progress?: JobProgress }): Promise<boolean> {
    const now = this.now();
    const p = json(end.progress);
    const r = await this.#db
      .updateTable("jobs")
      .set({ state: end.state, error: end.error ?? null, lease_until: now, updated_at: now, ...(p !== undefined ? { progress: p } : {}) })
      .where("id", "=", id)
      .where("state", "=", "running")
      .where("lease_owner", "=", owner)
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  async release(id: string, owner: string, progress?: JobProgress): Promise<boolean> {
    const now = this.now();
    const p = json(progress);
    const r = await this.#db
      .updateTable("jobs")
      .set({ lease_until: now, updated_at: now, ...(p !== undefined ? { progress: p } : {}) })
      .where("id", "=", id)
      .where("state", "=", "running")
      .where("lease_owner", "=", owner)
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }
}

/** The job port on `db` (the wiring's entry point). */
export function jobStoreOf(db: Db, o: { now?: () => number } = {}): JobStore {
  return new SqlJobStore(db, o);
}

function toJob(r: Selectable<JobsTable>): Job {
  return {
    id: r.id,
    kind: r.kind,
    subject: r.subject,
    state: r.state,
    leaseOwner: r.lease_owner,
    leaseUntil: r.lease_until === null ? null : Number(r.lease_until),
    attempts: Number(r.attempts),
    progress: r.progress === null ? null : (JSON.parse(r.progress) as JobProgress),
    error: r.error,
    actor: r.actor,
    createdAt: Number(r.created_at),
    updatedAt: Number(r.updated_at),
  };
}
