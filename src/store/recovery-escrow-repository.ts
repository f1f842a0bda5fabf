// Escrows of keys for reproduction (issue 4; seed 001 embodiment 3) in SQL, one code path for SQLite and PostgreSQL
// (tables: recovery-tables.ts): each escrow with its share envelopes, and the registered device — the digest of
// the physical card's secret ID — of each escrowed card, which a card-destroyed reproduction moves to another
// physical card (FIG. 11-12). One escrow per card (unique card_id), one card record per physical card (unique
// secret_id_digest). SqlRecoveryRepository (recovery-repository.ts) delegates to it.
//
// Never: a share or a device secret ID in clear — sealed envelopes (JSON, as handed in) and digests only.

import type { Kysely, Transaction } from "kysely";
import type { Database, Db } from "./db.ts";
import { bytes, recoveryTables, type RecoveryDevicesTable, type RecoveryEscrowsTable, type RecoveryTables } from "./recovery-tables.ts";
import type { DeviceRecord, EnvelopeRow, EscrowRow, InsertEscrowResult } from "../recovery/records.ts";

export type { DeviceRecord, EnvelopeRow, EscrowRow, InsertEscrowResult };

const toEscrow = (r: RecoveryEscrowsTable): EscrowRow => ({
  escrowId: r.escrow_id,
  cardId: r.card_id,
  applicantId: r.applicant_id,
  policy: r.policy,
  policyDigest: r.policy_digest,
  record: r.record,
  wrappedUnder: r.wrapped_under,
  alg: r.alg,
  slot: r.slot,
  publicKey: bytes(r.public_key),
  publicKeySha256: r.public_key_sha256,
  certificate: bytes(r.certificate),
  serial: r.serial,
  createdBy: r.created_by,
  createdAt: Number(r.created_at),
});

const toDevice = (r: RecoveryDevicesTable): DeviceRecord => ({
  cardId: r.card_id,
  secretIdDigest: r.secret_id_digest,
  keySet: r.key_set,
  generation: Number(r.generation),
  registeredAt: Number(r.registered_at),
  ...(r.card_record_id !== null ? { cardRecordId: r.card_record_id } : {}),
});

export class RecoveryEscrowRepository {
  private readonly db: Kysely<RecoveryTables>;

  /** @param db the system DB migrated so that 0003_recovery and 0010_recovery_device_card_record exist, or a transaction of it */
  constructor(db: Db | Kysely<unknown> | Transaction<Database>) {
    this.db = recoveryTables(db);
  }

  // --- escrows, envelopes, devices --------------------------------------------------------------------------------

  /**
   * Records an escrow with its envelopes and the card's device registration. Call it inside `transaction()`: on a
   * result other than "recorded" some rows may have been written, and the caller rolls back (throws).
   */
  async insertEscrow(e: EscrowRow, envelopes: readonly EnvelopeRow[], device: DeviceRecord): Promise<InsertEscrowResult> {
    if (!this.db.isTransaction) throw new Error("insertEscrow must run inside transaction()");
    const claimed = await this.db
      .insertInto("recovery_escrows")
      .values({
        escrow_id: e.escrowId,
        card_id: e.cardId,
        applicant_id: e.applicantId,
        policy: e.policy,
        policy_digest: e.policyDigest,
        record: e.record,
        wrapped_under: e.wrappedUnder,
        alg: e.alg,
        slot: e.slot,
        public_key: e.publicKey,
        public_key_sha256: e.publicKeySha256,
        certificate: e.certificate,
        serial: e.serial,
        created_by: e.createdBy,
        created_at: e.createdAt,
      })
      .onConflict((oc) => oc.doNothing())
      .returning("escrow_id")
      .executeTakeFirst();
    if (!claimed) return "card-has-escrow";
    const dev = await this.db
      .insertInto("recovery_devices")
      .values({
        card_id: device.cardId,
        secret_id_digest: device.secretIdDigest,
        key_set: device.keySet,
        generation: device.generation,
        registered_at: device.registeredAt,
        card_record_id: device.cardRecordId ?? device.cardId,
      })
      .onConflict((oc) => oc.doNothing())
      .returning("card_id")
      .executeTakeFirst();
    if (!dev) return (await this.device(device.cardId)) ? "card-has-escrow" : "device-in-use";
    if (envelopes.length)
      await this.db
        .insertInto("recovery_share_envelopes")
        .values(envelopes.map((v) => ({ escrow_id: v.escrowId, share_id: v.shareId, arbitrator_id: v.arbitratorId, envelope: v.envelope })))
        .execute();
    return "recorded";
  }

  /** Removes an escrow, its envelopes and its card's device registration (an issue that did not complete). */
  async deleteEscrow(escrowId: string): Promise<boolean> {
    const e = await this.escrow(escrowId);
    if (!e) return false;
    await this.db.deleteFrom("recovery_share_envelopes").where("escrow_id", "=", escrowId).execute();
    await this.db.deleteFrom("recovery_devices").where("card_id", "=", e.cardId).execute();
    const r = await this.db.deleteFrom("recovery_escrows").where("escrow_id", "=", escrowId).executeTakeFirst();
    return Number(r.numDeletedRows) === 1;
  }

  async escrow(escrowId: string): Promise<EscrowRow | undefined> {
    const r = await this.db.selectFrom("recovery_escrows").selectAll().where("escrow_id", "=", escrowId).executeTakeFirst();
    return r && toEscrow(r);
  }

  async escrowByCard(cardId: string): Promise<EscrowRow | undefined> {
    const r = await this.db.selectFrom("recovery_escrows").selectAll().where("card_id", "=", cardId).executeTakeFirst();
    return r && toEscrow(r);
  }

  /** The envelopes of one escrow, by share. */
  async envelopesOfEscrow(escrowId: string): Promise<EnvelopeRow[]> {
    const rows = await this.db.selectFrom("recovery_share_envelopes").selectAll().where("escrow_id", "=", escrowId).orderBy("share_id").execute();
    return rows.map((r) => ({ escrowId: r.escrow_id, shareId: r.share_id, arbitratorId: r.arbitrator_id, envelope: r.envelope }));
  }

  /** The envelopes addressed to an arbitrator, optionally of one card's escrow only, by escrow then share. */
  async envelopesFor(arbitratorId: string, opts: { cardId?: string } = {}): Promise<EnvelopeRow[]> {
    let q = this.db
      .selectFrom("recovery_share_envelopes as v")
      .innerJoin("recovery_escrows as e", "e.escrow_id", "v.escrow_id")
      .select(["v.escrow_id", "v.share_id", "v.arbitrator_id", "v.envelope"])
      .where("v.arbitrator_id", "=", arbitratorId);
    if (opts.cardId !== undefined) q = q.where("e.card_id", "=", opts.cardId);
    const rows = await q.orderBy("v.escrow_id").orderBy("v.share_id").execute();
    return rows.map((r) => ({ escrowId: r.escrow_id, shareId: r.share_id, arbitratorId: r.arbitrator_id, envelope: r.envelope }));
  }

  async device(cardId: string): Promise<DeviceRecord | undefined> {
    const r = await this.db.selectFrom("recovery_devices").selectAll().where("card_id", "=", cardId).executeTakeFirst();
    return r && toDevice(r);
  }

  async deviceByDigest(secretIdDigest: string): Promise<DeviceRecord | undefined> {
    const r = await this.db.selectFrom("recovery_devices").selectAll().where("secret_id_digest", "=", secretIdDigest).executeTakeFirst();
    return r && toDevice(r);
  }

  /** The registered device (of any escrow) that the card record `cardRecordId` reaches, if it is one. */
  async deviceByCardRecord(cardRecordId: string): Promise<DeviceRecord | undefined> {
    const r = await this.db.selectFrom("recovery_devices").selectAll().where("card_record_id", "=", cardRecordId).orderBy("card_id").executeTakeFirst();
    return r && toDevice(r);
  }

  /**
   * FIG. 11-12: the card's registered device becomes another physical card (generation + 1), reached through the
   * card record `next.cardRecordId`. False when the card
   * has no registration or its registration is no longer `expectedDigest` (changed meanwhile); throws on a
   * digest registered for another card (unique constraint) — check with deviceByDigest first.
   */
  async replaceDevice(cardId: string, expectedDigest: string, next: { secretIdDigest: string; keySet: string; registeredAt: number; cardRecordId: string }): Promise<boolean> {
    const r = await this.db
      .updateTable("recovery_devices")
      .set((eb) => ({
        secret_id_digest: next.secretIdDigest,
        key_set: next.keySet,
        registered_at: next.registeredAt,
        card_record_id: next.cardRecordId,
        generation: eb("generation", "+", 1),
      }))
      .where("card_id", "=", cardId)
      .where("secret_id_digest", "=", expectedDigest)
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }
}
