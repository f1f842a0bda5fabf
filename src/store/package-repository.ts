// Delivery packages (ST22) in the issuer's store: each card's packages under its own sequence numbers (the counter is
// the card row's last_package_seq), and their progress pending -> fetched -> acknowledged, which moves the rotation
// item a package carries with it (rotation-repository.ts). Store (store.ts) delegates to it; one code path for
// SQLite and PostgreSQL.
//
// Never: opens a package. Its body is what the issuer built for the card.

import type { Kysely, Selectable, Transaction } from "kysely";
import { compiled } from "./compiled.ts";
import type { Database, PackageStatus } from "./db.ts";
import { buf, StoreError, StoreRepository } from "./repository.ts";
import { RotationRepository } from "./rotation-repository.ts";
import type { DeliveryPackage } from "../issuer/records.ts";

// The two statements of a package's creation, compiled once (compiled.ts): the issuance hot path.
const NEXT_SEQ = compiled((db: Kysely<Database>, p: { cardId: string }) =>
  db
    .updateTable("cards")
    .set((eb) => ({ last_package_seq: eb("last_package_seq", "+", 1) }))
    .where("id", "=", p.cardId)
    .returning("last_package_seq"),
);
const INSERT_PACKAGE = compiled((db: Kysely<Database>, p: Omit<Selectable<Database["packages"]>, "id">) =>
  db
    .insertInto("packages")
    .values({ card_id: p.card_id, seq: p.seq, body: p.body, status: p.status, created_at: p.created_at, fetched_at: p.fetched_at, acknowledged_at: p.acknowledged_at })
    .returning("id"),
);

export class PackageRepository extends StoreRepository<PackageRepository> {
  protected override bind(trx: Transaction<Database>): PackageRepository {
    return new PackageRepository(trx, this.clock);
  }

  /**
   * Hands out the card's next package sequence number. Atomic on both engines: one UPDATE ... RETURNING on the
   * card row (PostgreSQL row lock; SQLite's single writer), so concurrent callers never get the same number.
   */
  async allocatePackageSeq(cardId: string): Promise<number> {
    const r = (await NEXT_SEQ.execute(this.db, { cardId })).rows[0];
    if (!r) throw new StoreError("not_found", `card ${cardId} not found`);
    return Number(r.last_package_seq);
  }

  /** Stores a delivery package for the card under the next sequence number (allocation and insert atomic). */
  async createPackage(cardId: string, body: Uint8Array | ((seq: number) => Uint8Array | Promise<Uint8Array>)): Promise<DeliveryPackage> {
    return this.transaction(async (s) => {
      const seq = await s.allocatePackageSeq(cardId);
      const bytes = typeof body === "function" ? await body(seq) : body;
      const row = { card_id: cardId, seq, body: bytes, status: "pending" as PackageStatus, created_at: s.now(), fetched_at: null, acknowledged_at: null };
      const r = (await INSERT_PACKAGE.execute(s.db, row)).rows[0];
      if (!r) throw new StoreError("conflict", `card ${cardId}: package ${seq} was not stored`);
      return toPackage({ ...row, id: r.id });
    });
  }

  async getPackage(cardId: string, seq: number): Promise<DeliveryPackage | undefined> {
    const row = await this.db.selectFrom("packages").selectAll().where("card_id", "=", cardId).where("seq", "=", seq).executeTakeFirst();
    return row && toPackage(row);
  }

  async listPackages(cardId: string, filter: { status?: PackageStatus; afterSeq?: number; limit?: number } = {}): Promise<DeliveryPackage[]> {
    let q = this.db
      .selectFrom("packages")
      .selectAll()
      .where("card_id", "=", cardId)
      .where("seq", ">", filter.afterSeq ?? 0);
    if (filter.status) q = q.where("status", "=", filter.status);
    return (
      await q
        .orderBy("seq")
        .limit(filter.limit ?? 100)
        .execute()
    ).map(toPackage);
  }

  /**
   * pending -> fetched -> acknowledged; never backwards. Returns false when the package was already further. A
   * rotation item the package carries moves with it in the same transaction (delivered, acknowledged).
   */
  async advancePackage(cardId: string, seq: number, to: "fetched" | "acknowledged"): Promise<boolean> {
    const now = this.now();
    return this.transaction(async (s) => {
      const q =
        to === "fetched"
          ? s.db.updateTable("packages").set({ status: "fetched", fetched_at: now }).where("status", "=", "pending")
          : s.db.updateTable("packages").set({ status: "acknowledged", acknowledged_at: now }).where("status", "in", ["pending", "fetched"]);
      const r = await q.where("card_id", "=", cardId).where("seq", "=", seq).executeTakeFirst();
      if (Number(r.numUpdatedRows) === 1) {
        await new RotationRepository(s.db).advanceItemForPackage(cardId, seq, to === "fetched" ? "delivered" : "acknowledged", now);
        return true;
      }
      if (!(await s.getPackage(cardId, seq))) throw new StoreError("not_found", `card ${cardId} has no package ${seq}`);
      return false;
    });
  }
}

function toPackage(r: Selectable<Database["packages"]>): DeliveryPackage {
  return { id: r.id, cardId: r.card_id, seq: r.seq, body: buf(r.body), status: r.status, createdAt: r.created_at, fetchedAt: r.fetched_at, acknowledgedAt: r.acknowledged_at };
}
