// The arbitrators of key reproduction (issue 4; seed 001 embodiment 3) in SQL: each arbitrator's registration and
// every version of its keys, one code path for SQLite and PostgreSQL (tables: recovery-tables.ts). A key rotation is
// a conditional update from the arbitrator's current key version to the next, so of two rotations one succeeds.
// SqlRecoveryRepository (recovery-repository.ts) delegates to it.
//
// Never: a private key. Arbitrators keep theirs; this holds their public keys (SPKI DER) and signed rotations.

import type { Kysely, Transaction } from "kysely";
import type { Database, Db } from "./db.ts";
import { bytes, recoveryTables, type RecoveryArbitratorKeysTable, type RecoveryArbitratorsTable, type RecoveryTables } from "./recovery-tables.ts";
import type { ArbitratorKeyRecord, ArbitratorRecord } from "../recovery/records.ts";

export type { ArbitratorKeyRecord, ArbitratorRecord };

const toArbitrator = (r: RecoveryArbitratorsTable): ArbitratorRecord => {
  const a: ArbitratorRecord = {
    id: r.id,
    roles: JSON.parse(r.roles) as string[],
    signingPublicKey: bytes(r.signing_public_key),
    encryptionPublicKey: bytes(r.encryption_public_key),
    registeredBy: r.registered_by,
    registeredAt: Number(r.registered_at),
  };
  if (r.display_name !== null) a.displayName = r.display_name;
  if (Number(r.key_version) !== 1) a.keyVersion = Number(r.key_version);
  if (r.disabled_at !== null) {
    a.disabledAt = Number(r.disabled_at);
    a.disabledBy = r.disabled_by ?? "";
    a.disabledReason = r.disabled_reason ?? "";
  }
  return a;
};

const toKey = (r: RecoveryArbitratorKeysTable): ArbitratorKeyRecord => {
  const k: ArbitratorKeyRecord = {
    arbitratorId: r.arbitrator_id,
    version: Number(r.version),
    signingPublicKey: bytes(r.signing_public_key),
    encryptionPublicKey: bytes(r.encryption_public_key),
    validFrom: Number(r.valid_from),
    recordedBy: r.recorded_by,
  };
  if (r.retired_at !== null) k.retiredAt = Number(r.retired_at);
  if (r.rotation !== null) k.rotation = r.rotation;
  return k;
};

export class RecoveryArbitratorRepository {
  private readonly db: Kysely<RecoveryTables>;

  /** @param db the system DB migrated so that 0003_recovery and 0007_recovery_lifecycle exist, or a transaction of it */
  constructor(db: Db | Kysely<unknown> | Transaction<Database>) {
    this.db = recoveryTables(db);
  }

  /** Runs `fn` in one transaction (the current one when this repository is bound to a transaction), `repo` bound to it. */
  private async transaction<T>(fn: (repo: RecoveryArbitratorRepository) => Promise<T>): Promise<T> {
    if (this.db.isTransaction) return fn(this);
    return this.db.transaction().execute((trx) => fn(new RecoveryArbitratorRepository(trx as unknown as Transaction<Database>)));
  }

  // --- arbitrators ------------------------------------------------------------------------------------------------

  /** Records a new arbitrator and its keys as version 1 (in one transaction); false when the id is taken. */
  async insertArbitrator(a: ArbitratorRecord): Promise<boolean> {
    if (!this.db.isTransaction) return this.transaction((repo) => repo.insertArbitrator(a));
    const r = await this.db
      .insertInto("recovery_arbitrators")
      .values({
        id: a.id,
        roles: JSON.stringify(a.roles),
        display_name: a.displayName ?? null,
        signing_public_key: a.signingPublicKey,
        encryption_public_key: a.encryptionPublicKey,
        registered_by: a.registeredBy,
        registered_at: a.registeredAt,
        key_version: 1,
        disabled_at: null,
        disabled_by: null,
        disabled_reason: null,
      })
      .onConflict((oc) => oc.column("id").doNothing())
      .returning("id")
      .executeTakeFirst();
    if (r === undefined) return false;
    await this.db
      .insertInto("recovery_arbitrator_keys")
      .values({
        arbitrator_id: a.id,
        version: 1,
        signing_public_key: a.signingPublicKey,
        encryption_public_key: a.encryptionPublicKey,
        valid_from: a.registeredAt,
        retired_at: null,
        rotation: null,
        recorded_by: a.registeredBy,
      })
      .execute();
    return true;
  }

  async arbitrator(id: string): Promise<ArbitratorRecord | undefined> {
    const r = await this.db.selectFrom("recovery_arbitrators").selectAll().where("id", "=", id).executeTakeFirst();
    return r && toArbitrator(r);
  }

  /** Registered arbitrators (deregistered ones included), by id; a page of them with `after` (an id) and `limit`. */
  async arbitrators(page: { after?: string; limit?: number } = {}): Promise<ArbitratorRecord[]> {
    let q = this.db.selectFrom("recovery_arbitrators").selectAll();
    if (page.after !== undefined) q = q.where("id", ">", page.after);
    q = q.orderBy("id");
    if (page.limit !== undefined) q = q.limit(page.limit);
    return (await q.execute()).map(toArbitrator);
  }

  /** Every key version of the arbitrators named (all arbitrators without `ids`), by arbitrator then version. */
  async arbitratorKeys(ids?: readonly string[]): Promise<ArbitratorKeyRecord[]> {
    if (ids !== undefined && ids.length === 0) return [];
    let q = this.db.selectFrom("recovery_arbitrator_keys").selectAll();
    if (ids !== undefined) q = q.where("arbitrator_id", "in", [...ids]);
    return (await q.orderBy("arbitrator_id").orderBy("version").execute()).map(toKey);
  }

  /**
   * Replaces an arbitrator's keys by version `fromVersion + 1` (call inside transaction()): the current version is
   * retired at `next.at`, the new one recorded with the rotation document. False (nothing changes) when the
   * arbitrator's current version is no longer `fromVersion` or it is deregistered.
   */
  async rotateArbitratorKeys(id: string, fromVersion: number, next: { signingPublicKey: Uint8Array; encryptionPublicKey: Uint8Array; at: number; rotation: string; by: string }): Promise<boolean> {
    if (!this.db.isTransaction) throw new Error("rotateArbitratorKeys must run inside transaction()");
    const r = await this.db
      .updateTable("recovery_arbitrators")
      .set({ signing_public_key: next.signingPublicKey, encryption_public_key: next.encryptionPublicKey, key_version: fromVersion + 1 })
      .where("id", "=", id)
      .where("key_version", "=", fromVersion)
      .where("disabled_at", "is", null)
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) !== 1) return false;
    await this.db.updateTable("recovery_arbitrator_keys").set({ retired_at: next.at }).where("arbitrator_id", "=", id).where("version", "=", fromVersion).execute();
    await this.db
      .insertInto("recovery_arbitrator_keys")
      .values({
        arbitrator_id: id,
        version: fromVersion + 1,
        signing_public_key: next.signingPublicKey,
        encryption_public_key: next.encryptionPublicKey,
        valid_from: next.at,
        retired_at: null,
        rotation: next.rotation,
        recorded_by: next.by,
      })
      .execute();
    return true;
  }

  /** Deregisters an arbitrator; false when there is no such arbitrator or it is deregistered already. */
  async disableArbitrator(id: string, at: number, by: string, reason: string): Promise<boolean> {
    const r = await this.db
      .updateTable("recovery_arbitrators")
      .set({ disabled_at: at, disabled_by: by, disabled_reason: reason })
      .where("id", "=", id)
      .where("disabled_at", "is", null)
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }
}
