// Card-key rotation jobs (embodiments 3-5, FIG. 15) in the issuer's store: the job row of each rotation, from its
// proposal through the approvals (four eyes, issue 15 §2) and the streaming bulk re-wrap with its resumable
// checkpoint to its distribution and completion. Every change of state is a guarded UPDATE from the states it may
// come from. What a rotation owes besides its row — approvals, items, the binding — is rotation-repository.ts's.
// Store (store.ts) delegates to it; one code path for SQLite and PostgreSQL.
//
// Never: decides (src/issuer/rotation.ts, rotation-approvals.ts do), or holds a clear key: re-wrapped keys arrive
// wrapped.

import { randomBytes } from "node:crypto";
import { sql, type Selectable, type Transaction } from "kysely";
import type { Database, RotationDistribution, RotationStatus, RotationStrategy } from "./db.ts";
import { newId } from "./ids.ts";
import { insertOrConflict, StoreError, StoreRepository } from "./repository.ts";
import { RotationRepository } from "./rotation-repository.ts";
import { canonicalAdded, canonicalDropped, parseAdded, rotationBinding } from "../issuer/rotation-records.ts";
import type { NewRotation, Rotation } from "../issuer/records.ts";

const STRATEGIES: readonly RotationStrategy[] = ["embodiment3", "embodiment4", "embodiment5"];

/** Rows per INSERT statement (keeps under SQLite's and PostgreSQL's bound-parameter limits). */
const INSERT_CHUNK = 1000;

export class RotationJobRepository extends StoreRepository<RotationJobRepository> {
  protected override bind(trx: Transaction<Database>): RotationJobRepository {
    return new RotationJobRepository(trx, this.clock);
  }

  /**
   * Records a rotation the validity scan (or an operator) proposes; it runs only after approval (para 0062). What
   * the approvals will cover is fixed here: the new card's ID (a fresh one unless given), the credentials it adds and
   * the old card's slots it leaves behind. One open rotation per key set and one rotation per new card ID (unique
   * indexes, migration 0012): a second is a conflict.
   */
  async proposeRotation(input: NewRotation): Promise<Rotation> {
    if (!STRATEGIES.includes(input.strategy)) throw new StoreError("invalid", `strategy: expected one of ${STRATEGIES.join(", ")}, got ${input.strategy}`);
    const approvals = input.approvalsRequired ?? 1;
    if (!Number.isInteger(approvals) || approvals < 1 || approvals > 16) throw new StoreError("invalid", `approvals required: expected 1..16, got ${approvals}`);
    const now = this.now();
    const row = {
      id: input.id ?? newId(),
      card_id: input.cardId,
      to_card_id: input.toCardId ?? null,
      from_key_set_id: input.fromKeySetId,
      to_key_set_id: input.toKeySetId ?? null,
      strategy: input.strategy,
      status: "proposed" as RotationStatus,
      cursor: 0,
      total: 0,
      done: 0,
      approved_by: null,
      approved_at: null,
      error: null,
      created_at: now,
      updated_at: now,
      proposed_by: input.proposedBy ?? null,
      new_card_id: input.newCardId ?? input.toCardId ?? randomBytes(8).toString("hex"),
      added: canonicalAdded(input.added ?? []),
      dropped: canonicalDropped(input.dropped ?? []),
      approvals_required: approvals,
      distribution: "none" as RotationDistribution,
      distributed_at: null,
    };
    await insertOrConflict(
      this.db.insertInto("rotations").values(row).execute(),
      `rotation ${row.id}: exists, card/key set unknown, key set ${input.fromKeySetId} already has an open rotation, or new card ${row.new_card_id} is another rotation's`,
    );
    return toRotation(row);
  }

  async getRotation(id: string): Promise<Rotation | undefined> {
    const row = await this.db.selectFrom("rotations").selectAll().where("id", "=", id).executeTakeFirst();
    return row && toRotation(row);
  }

  async listRotations(filter: { status?: RotationStatus; cardId?: string } = {}): Promise<Rotation[]> {
    let q = this.db.selectFrom("rotations").selectAll();
    if (filter.status) q = q.where("status", "=", filter.status);
    if (filter.cardId) q = q.where("card_id", "=", filter.cardId);
    return (await q.orderBy("created_at").orderBy("id").execute()).map(toRotation);
  }

  /** Open (not finished) rotation for a key set, if any: the validity scan queues at most one per key set. */
  async openRotationForKeySet(fromKeySetId: string): Promise<Rotation | undefined> {
    const row = await this.db.selectFrom("rotations").selectAll().where("from_key_set_id", "=", fromKeySetId).where("status", "in", ["proposed", "approved", "running"]).executeTakeFirst();
    return row && toRotation(row);
  }

  /**
   * One operator's approval (four eyes, issue 15 §2), in one transaction: the rotation's row is taken first (a
   * guarded UPDATE: concurrent approvals of one rotation run one after the other, on PostgreSQL too), the proposer
   * is refused, the approval is recorded bound to the rotation's binding (rotationBinding; once per operator: the
   * primary key), and the rotation becomes approved once `required` distinct operators other than the proposer —
   * at least what the proposal asked for — approved this binding. Until then it stays proposed.
   */
  async approveRotation(id: string, operator: string, o: { required?: number } = {}): Promise<Rotation> {
    return this.transaction(async (s) => {
      const now = s.now();
      const row = await s.db.updateTable("rotations").set({ updated_at: now }).where("id", "=", id).where("status", "=", "proposed").returningAll().executeTakeFirst();
      if (!row) {
        const cur = await s.getRotation(id);
        if (!cur) throw new StoreError("not_found", `rotation ${id} not found`);
        throw new StoreError("conflict", `rotation ${id} is ${cur.status}; expected proposed`);
      }
      const r = toRotation(row);
      if (r.proposedBy !== null && r.proposedBy === operator) throw new StoreError("conflict", `four eyes: ${operator} proposed rotation ${id} and may not approve it; another operator must`);
      const repo = new RotationRepository(s.db);
      const binding = rotationBinding(r).hash;
      if (!(await repo.addApproval(id, operator, binding, now))) throw new StoreError("conflict", `four eyes: ${operator} approved rotation ${id} already; it needs another operator`);
      const given = (await repo.approvals(id)).filter((a) => a.bindingHash === binding && a.operator !== r.proposedBy).length;
      if (given < Math.max(r.approvalsRequired, o.required ?? 1)) return r;
      return s.#transition(id, ["proposed"], { status: "approved", approved_by: operator, approved_at: now, updated_at: now });
    });
  }

  /** approved -> running, with the new card/key set and the number of keys to re-wrap. Restarting a running job
   *  (after a crash) keeps its cursor and counters. */
  async startRotation(id: string, input: { toCardId?: string | null; toKeySetId: string; total: number }): Promise<Rotation> {
    const cur = await this.getRotation(id);
    if (!cur) throw new StoreError("not_found", `rotation ${id} not found`);
    if (cur.status === "running" && cur.toKeySetId === input.toKeySetId) return cur;
    return this.#transition(id, ["approved"], {
      status: "running",
      to_card_id: input.toCardId ?? cur.toCardId,
      to_key_set_id: input.toKeySetId,
      total: input.total,
      updated_at: this.now(),
    });
  }

  /**
   * One step of the streaming bulk re-wrap, atomically: the re-wrapped keys Sk2[PRk] are inserted, the cursor
   * moves to `cursor` (the last source wrapped_keys.id handled) and `done` grows — all or nothing. The step is
   * refused (conflict) unless the job is running with its cursor still at `expectedCursor`, so a second worker
   * or a replay after a crash cannot apply a page twice; re-inserting a pair that already exists is ignored.
   */
  async checkpointRotation(id: string, step: { expectedCursor: number; cursor: number; rewrapped: { keyPairId: string; wrapped: Uint8Array }[] }): Promise<Rotation> {
    if (!(step.cursor >= step.expectedCursor)) throw new StoreError("invalid", `cursor ${step.cursor} is behind ${step.expectedCursor}`);
    return this.transaction(async (s) => {
      const now = s.now();
      const moved = await s.db
        .updateTable("rotations")
        .set((eb) => ({ cursor: step.cursor, done: eb("done", "+", step.rewrapped.length), updated_at: now }))
        .where("id", "=", id)
        .where("status", "=", "running")
        .where("cursor", "=", step.expectedCursor)
        .returningAll()
        .executeTakeFirst();
      if (!moved) {
        const cur = await s.getRotation(id);
        if (!cur) throw new StoreError("not_found", `rotation ${id} not found`);
        throw new StoreError("conflict", `rotation ${id} is ${cur.status} at cursor ${cur.cursor}, expected running at ${step.expectedCursor}`);
      }
      const keySetId = moved.to_key_set_id;
      if (!keySetId) throw new StoreError("invalid", `rotation ${id} has no target key set`);
      if (s.engine === "sqlite" && step.rewrapped.length > 0) {
        // The whole page as ONE parameter (a JSON array of [key pair id, hex Sk2[PRk]]) unpacked by SQLite's
        // json_each (unhex: SQLite >= 3.41, bundled by better-sqlite3): building, compiling and binding VALUES
        // lists of thousands of rows took about a quarter of the commit's CPU (measured on 200,000 keys).
        const page = JSON.stringify(step.rewrapped.map((r) => [r.keyPairId, Buffer.from(r.wrapped.buffer, r.wrapped.byteOffset, r.wrapped.byteLength).toString("hex")]));
        await sql`insert into wrapped_keys (key_pair_id, key_set_id, wrapped, created_at)
          select j.value ->> 0, ${keySetId}, unhex(j.value ->> 1), ${now} from json_each(${page}) as j where true
          on conflict (key_pair_id, key_set_id) do nothing`.execute(s.db);
        return toRotation(moved);
      }
      for (let i = 0; i < step.rewrapped.length; i += INSERT_CHUNK) {
        const chunk = step.rewrapped.slice(i, i + INSERT_CHUNK);
        await s.db
          .insertInto("wrapped_keys")
          .values(chunk.map((r) => ({ key_pair_id: r.keyPairId, key_set_id: keySetId, wrapped: r.wrapped, created_at: now })))
          .onConflict((oc) => oc.columns(["key_pair_id", "key_set_id"]).doNothing())
          .execute();
      }
      return toRotation(moved);
    });
  }

  /**
   * running -> completed, only while nothing is owed to the new card (no item pending or packaged: rotation_items).
   * A rotation that distributes completes through completeDistribution; this is for re-wrap-only jobs.
   */
  async completeRotation(id: string): Promise<Rotation> {
    const row = await this.db
      .updateTable("rotations")
      .set({ status: "completed", updated_at: this.now() })
      .where("id", "=", id)
      .where("status", "=", "running")
      .where(nothingOwed)
      .returningAll()
      .executeTakeFirst();
    if (row) return toRotation(row);
    const cur = await this.getRotation(id);
    if (!cur) throw new StoreError("not_found", `rotation ${id} not found`);
    throw new StoreError("conflict", cur.status === "running" ? `rotation ${id} still owes its new card keys` : `rotation ${id} is ${cur.status}; expected running`);
  }

  /**
   * The distribution's claim (issue 15 §1): none -> distributing for the one caller whose guarded UPDATE finds the
   * rotation running and unclaimed; undefined for every other (the row is locked until the claimer's transaction
   * ends, so on PostgreSQL the others wait and then find it claimed).
   */
  async claimDistribution(id: string): Promise<Rotation | undefined> {
    const row = await this.db
      .updateTable("rotations")
      .set({ distribution: "distributing", updated_at: this.now() })
      .where("id", "=", id)
      .where("status", "=", "running")
      .where("distribution", "=", "none")
      .returningAll()
      .executeTakeFirst();
    return row && toRotation(row);
  }

  /** distributing -> distributed (every package made); false when another call got there first. */
  async finishDistribution(id: string): Promise<boolean> {
    const now = this.now();
    const r = await this.db
      .updateTable("rotations")
      .set({ distribution: "distributed", distributed_at: now, updated_at: now })
      .where("id", "=", id)
      .where("distribution", "=", "distributing")
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  /**
   * running -> completed for a distributed rotation once every item is delivered, acknowledged or dropped — one
   * guarded UPDATE; undefined while something is owed (or when another call completed it).
   */
  async completeDistribution(id: string): Promise<Rotation | undefined> {
    const row = await this.db
      .updateTable("rotations")
      .set({ status: "completed", updated_at: this.now() })
      .where("id", "=", id)
      .where("status", "=", "running")
      .where("distribution", "=", "distributed")
      .where(nothingOwed)
      .returningAll()
      .executeTakeFirst();
    return row && toRotation(row);
  }

  async failRotation(id: string, error: string): Promise<Rotation> {
    return this.#transition(id, ["proposed", "approved", "running"], { status: "failed", error, updated_at: this.now() });
  }

  async cancelRotation(id: string): Promise<Rotation> {
    return this.#transition(id, ["proposed", "approved"], { status: "cancelled", updated_at: this.now() });
  }

  async #transition(id: string, from: RotationStatus[], set: Partial<Selectable<Database["rotations"]>>): Promise<Rotation> {
    const row = await this.db.updateTable("rotations").set(set).where("id", "=", id).where("status", "in", from).returningAll().executeTakeFirst();
    if (row) return toRotation(row);
    const cur = await this.getRotation(id);
    if (!cur) throw new StoreError("not_found", `rotation ${id} not found`);
    throw new StoreError("conflict", `rotation ${id} is ${cur.status}; expected ${from.join(" or ")}`);
  }
}

/** No item of the rotation (the outer query's row) is still owed: pending or packaged. */
const nothingOwed = sql<boolean>`not exists (select 1 from rotation_items i where i.rotation_id = rotations.id and i.state in ('pending', 'packaged'))`;

function toRotation(r: Selectable<Database["rotations"]>): Rotation {
  return {
    id: r.id,
    cardId: r.card_id,
    toCardId: r.to_card_id,
    fromKeySetId: r.from_key_set_id,
    toKeySetId: r.to_key_set_id,
    strategy: r.strategy,
    status: r.status,
    cursor: r.cursor,
    total: r.total,
    done: r.done,
    approvedBy: r.approved_by,
    approvedAt: r.approved_at,
    error: r.error,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    proposedBy: r.proposed_by,
    newCardId: r.new_card_id,
    added: parseAdded(r.added),
    dropped: JSON.parse(r.dropped) as string[],
    approvalsRequired: Number(r.approvals_required),
    distribution: r.distribution,
    distributedAt: r.distributed_at === null ? null : Number(r.distributed_at),
  };
}
