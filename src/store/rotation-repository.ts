// What a card-key rotation owes besides its job row (issue 15 §1, §2, §4; tables: migrations/0012_rotation_four_eyes.ts),
// and the slot claims of credential requests — one code path for SQLite and PostgreSQL:
//
//   the binding     what an approval covers (src/issuer/rotation-records.ts rotationBinding), in each approval's row
//   approvals       one row per (rotation, operator): distinct approvers by the primary key
//   items           one row per slot the new card is owed, with its state; moved on by guarded UPDATEs only
//                   (pending -> packaged by the one call that makes its package; packaged -> delivered ->
//                   acknowledged with the package, in the transaction that moves the package)
//   slot claims     (card, slot) held by one credential request from before its key is certified until the
//                   transaction that records it; a claim older than its lease may be taken over
//
// What it must never do: decide (the domain does: src/issuer/rotation.ts, rotation-approvals.ts), or hold a key.

import type { Kysely, Selectable, Transaction } from "kysely";
import { compiled } from "./compiled.ts";
import type { Database, Db } from "./db.ts";
import { OWED_ITEM_STATES, type RotationApproval, type RotationItem, type RotationItemKind, type RotationItemPath, type RotationItemState } from "../issuer/rotation-records.ts";
import type { RotationRecords } from "../issuer/ports.ts";

export interface RotationApprovalsTable {
  rotation_id: string;
  operator: string;
  binding_hash: string;
  approved_at: number;
}

export interface RotationItemsTable {
  rotation_id: string;
  slot: string;
  kind: RotationItemKind;
  path: RotationItemPath;
  key_pair_id: string | null;
  algorithm: string;
  profile: string | null;
  state: RotationItemState;
  package_card_id: string | null;
  package_seq: number | null;
  updated_at: number;
}

export interface CredentialSlotClaimsTable {
  card_id: string;
  slot: string;
  claim_id: string;
  claimed_at: number;
}

// a type alias, not an interface: Kysely's withTables wants an index-signature-compatible record
export type RotationTables = { rotation_approvals: RotationApprovalsTable; rotation_items: RotationItemsTable; credential_slot_claims: CredentialSlotClaimsTable };

const toItem = (r: Selectable<RotationItemsTable>): RotationItem => ({
  rotationId: r.rotation_id,
  slot: r.slot,
  kind: r.kind,
  path: r.path,
  keyPairId: r.key_pair_id,
  algorithm: r.algorithm,
  profile: r.profile,
  state: r.state,
  packageSeq: r.package_seq === null ? null : Number(r.package_seq),
  updatedAt: Number(r.updated_at),
});

// A credential request's claim and its release: compiled once (compiled.ts), both are on the issuance hot path.
type ClaimTables = Kysely<Database & RotationTables>;
const CLAIM_SLOT = compiled((db: ClaimTables, p: { cardId: string; slot: string; claimId: string; now: number; staleBefore: number }) =>
  db
    .insertInto("credential_slot_claims")
    .values({ card_id: p.cardId, slot: p.slot, claim_id: p.claimId, claimed_at: p.now })
    .onConflict((oc) => oc.columns(["card_id", "slot"]).doUpdateSet({ claim_id: p.claimId, claimed_at: p.now }).where("credential_slot_claims.claimed_at", "<", p.staleBefore))
    .returning("claim_id"),
);
const RELEASE_SLOT = compiled((db: ClaimTables, p: { cardId: string; slot: string; claimId: string }) =>
  db.deleteFrom("credential_slot_claims").where("card_id", "=", p.cardId).where("slot", "=", p.slot).where("claim_id", "=", p.claimId),
);

export class RotationRepository implements RotationRecords {
  private readonly db: Kysely<Database & RotationTables>;

  /** @param db the system DB (or a transaction of it), migrated so that 0012_rotation_four_eyes exists */
  constructor(db: Db | Transaction<Database>) {
    this.db = db.withTables<RotationTables>();
  }

  // ---- approvals ----------------------------------------------------------------------------------------------

  async approvals(rotationId: string): Promise<RotationApproval[]> {
    const rows = await this.db.selectFrom("rotation_approvals").selectAll().where("rotation_id", "=", rotationId).orderBy("approved_at").orderBy("operator").execute();
    return rows.map((r) => ({ operator: r.operator, bindingHash: r.binding_hash, approvedAt: Number(r.approved_at) }));
  }

  /** Records `operator`'s approval; false when that operator approved this rotation before (the first one stands). */
  async addApproval(rotationId: string, operator: string, bindingHash: string, at: number): Promise<boolean> {
    const r = await this.db
      .insertInto("rotation_approvals")
      .values({ rotation_id: rotationId, operator, binding_hash: bindingHash, approved_at: at })
      .onConflict((oc) => oc.columns(["rotation_id", "operator"]).doNothing())
      .returning("operator")
      .executeTakeFirst();
    return r !== undefined;
  }

  // ---- items --------------------------------------------------------------------------------------------------

  async addItems(rotationId: string, items: Omit<RotationItem, "rotationId" | "updatedAt" | "packageSeq">[], now: number): Promise<void> {
    if (items.length === 0) return;
    await this.db
      .insertInto("rotation_items")
      .values(
        items.map((i) => ({
          rotation_id: rotationId,
          slot: i.slot,
          kind: i.kind,
          path: i.path,
          key_pair_id: i.keyPairId,
          algorithm: i.algorithm,
          profile: i.profile,
          state: i.state,
          package_card_id: null,
          package_seq: null,
          updated_at: now,
        })),
      )
      .execute();
  }

  async items(rotationId: string): Promise<RotationItem[]> {
    const rows = await this.db.selectFrom("rotation_items").selectAll().where("rotation_id", "=", rotationId).orderBy("slot").execute();
    return rows.map(toItem);
  }

  /**
   * pending -> packaged for the one caller whose UPDATE finds it pending (on PostgreSQL the row stays locked until
   * the caller's transaction ends, so a concurrent caller waits and then finds it packaged). False: another call
   * has it. The package is recorded with setItemPackage in the same transaction.
   */
  async claimItem(rotationId: string, slot: string, now: number): Promise<boolean> {
    const r = await this.db
      .updateTable("rotation_items")
      .set({ state: "packaged", updated_at: now })
      .where("rotation_id", "=", rotationId)
      .where("slot", "=", slot)
      .where("state", "=", "pending")
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  async setItemPackage(rotationId: string, slot: string, pkg: { cardId: string; seq: number; keyPairId?: string }): Promise<void> {
    await this.db
      .updateTable("rotation_items")
      .set({ package_card_id: pkg.cardId, package_seq: pkg.seq, ...(pkg.keyPairId ? { key_pair_id: pkg.keyPairId } : {}) })
      .where("rotation_id", "=", rotationId)
      .where("slot", "=", slot)
      .execute();
  }

  /** The item a package of `cardId` carries moves on with it (never backwards): fetched -> delivered, acknowledged. */
  async advanceItemForPackage(cardId: string, seq: number, to: "delivered" | "acknowledged", now: number): Promise<void> {
    const from: RotationItemState[] = to === "delivered" ? ["packaged"] : ["packaged", "delivered"];
    await this.db.updateTable("rotation_items").set({ state: to, updated_at: now }).where("package_card_id", "=", cardId).where("package_seq", "=", seq).where("state", "in", from).execute();
  }

  /** Items of the rotation still owed (pending or packaged). */
  async owed(rotationId: string): Promise<number> {
    const r = await this.db
      .selectFrom("rotation_items")
      .select((eb) => eb.fn.countAll<number | string>().as("n"))
      .where("rotation_id", "=", rotationId)
      .where("state", "in", [...OWED_ITEM_STATES])
      .executeTakeFirstOrThrow();
    return Number(r.n);
  }

  /** Running rotations whose distribution is done and whose new card is `cardId`: what a delivery may complete. */
  async distributedTo(cardId: string): Promise<string[]> {
    const rows = await this.db.selectFrom("rotations").select("id").where("to_card_id", "=", cardId).where("status", "=", "running").where("distribution", "=", "distributed").execute();
    return rows.map((r) => r.id);
  }

  // ---- the cards a rotation acts on ---------------------------------------------------------------------------

  /**
   * Card `cardId`'s status when it is one of `states`, its row held until the transaction ends (a guarded UPDATE
   * that changes nothing: on PostgreSQL a status change waits for the caller's transaction; SQLite has one writer).
   * Otherwise `{ held: false }` with the status it is in (undefined: no such card).
   */
  async holdCard(cardId: string, states: readonly string[]): Promise<{ held: true; status: string } | { held: false; status?: string }> {
    const r = await this.db
      .updateTable("cards")
      .set((eb) => ({ updated_at: eb.ref("updated_at") }))
      .where("id", "=", cardId)
      .where("status", "in", [...states] as never[])
      .returning("status")
      .executeTakeFirst();
    if (r) return { held: true, status: r.status };
    const cur = await this.db.selectFrom("cards").select("status").where("id", "=", cardId).executeTakeFirst();
    return { held: false, status: cur?.status };
  }

  /**
   * Keys wrapped under key set `keySetId` whose key pair is not card `cardId`'s (another card's, or none): how many,
   * and the first. A rotation of the card re-wraps every key under its key set, so it must find only its own.
   */
  async foreignWrappedKeys(keySetId: string, cardId: string): Promise<{ count: number; first?: string }> {
    const q = this.db
      .selectFrom("wrapped_keys as w")
      .innerJoin("key_pairs as k", "k.id", "w.key_pair_id")
      .where("w.key_set_id", "=", keySetId)
      .where((eb) => eb.or([eb("k.card_id", "is", null), eb("k.card_id", "!=", cardId)]));
    const n = await q.select((eb) => eb.fn.countAll<number | string>().as("n")).executeTakeFirstOrThrow();
    if (Number(n.n) === 0) return { count: 0 };
    const first = await q.select("k.id").orderBy("w.id").limit(1).executeTakeFirst();
    return { count: Number(n.n), first: first?.id };
  }

  // ---- credential slot claims ---------------------------------------------------------------------------------

  /**
   * Claims (card, slot) for `claimId`: true when it was free, or held by a claim older than `leaseMs` (taken over);
   * false while another claim holds it. One statement (an upsert whose update is guarded by the lease), so two
   * servers never both get it.
   */
  async claimSlot(cardId: string, slot: string, claimId: string, now: number, leaseMs: number): Promise<boolean> {
    const r = await CLAIM_SLOT.execute(this.db, { cardId, slot, claimId, now, staleBefore: now - leaseMs });
    return r.rows[0]?.claim_id === claimId;
  }

  /** Gives the claim up; false when `claimId` no longer holds it (it was taken over after its lease). */
  async releaseSlot(cardId: string, slot: string, claimId: string): Promise<boolean> {
    const r = await RELEASE_SLOT.execute(this.db, { cardId, slot, claimId });
    return Number(r.numAffectedRows) === 1;
  }
}
