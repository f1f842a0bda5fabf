// The records of key reproduction by arbitrators (issue 4; seed 001 embodiment 3) in SQL: Kysely, one code path
// for SQLite and PostgreSQL (tables: migrations/0003_recovery.ts, lifecycle columns and the arbitrators' key history:
// migrations/0007_recovery_lifecycle.ts, the card record of each registered device: 0010_recovery_device_card_record.ts).
// Used by src/recovery/service.ts. It also reads — never writes — the issuer's card records (cards, card_key_sets,
// key_pairs of the same system DB) that a reproduced key may go into (src/recovery/target.ts).
//
// Owns: arbitrators (and every version of their keys), per-card policies, escrows with their share envelopes, the
// registered device secret ID digests, reproduction requests, their approval chains and the released shares. The
// documents the recovery module defines (policies, escrow records, envelopes, requests, approvals, releases, key
// rotations) are stored as the JSON text the service hands in and are returned as such: this module does not
// interpret them.
//
// Guarantees that must hold across concurrent requests and server processes are constraints or single statements:
//   - one escrow per card (unique card_id), one card record per physical card (unique secret_id_digest);
//   - at most one unfinished request per card (partial unique index on card_id);
//   - one decision per arbitrator and request, one approval per chain position (unique keys): of two approvals
//     racing for the same position, one is recorded;
//   - state changes of a request are conditional updates (`from` states), so a request is claimed for
//     reproduction once.
//   - a reproduction claims a request with a lease (migrations/0007_recovery_lifecycle.ts): the claim, its
//     renewal, a takeover of an expired lease and the release are conditional updates on the claim's random id,
//     so of two processes one holds the request at a time, and a holder that lost it can neither finish nor
//     release it;
//   - an arbitrator's key rotation is a conditional update from its current key version to the next.
// Never: holds a share, a key or a device secret ID in clear — only sealed documents and digests.

import { sql, type Kysely, type Transaction } from "kysely";
import type { Database, Db } from "./db.ts";

export interface RecoveryArbitratorsTable {
  id: string;
  roles: string;
  display_name: string | null;
  signing_public_key: Uint8Array;
  encryption_public_key: Uint8Array;
  registered_by: string;
  registered_at: number;
  key_version: number;
  disabled_at: number | null;
  disabled_by: string | null;
  disabled_reason: string | null;
}

export interface RecoveryArbitratorKeysTable {
  arbitrator_id: string;
  version: number;
  signing_public_key: Uint8Array;
  encryption_public_key: Uint8Array;
  valid_from: number;
  retired_at: number | null;
  rotation: string | null;
  recorded_by: string;
}

export interface RecoveryPoliciesTable {
  card_id: string;
  policy: string;
  policy_digest: string;
  set_by: string;
  set_at: number;
}

export interface RecoveryEscrowsTable {
  escrow_id: string;
  card_id: string;
  applicant_id: string;
  policy: string;
  policy_digest: string;
  record: string;
  wrapped_under: string;
  alg: string;
  slot: string;
  public_key: Uint8Array;
  public_key_sha256: string;
  certificate: Uint8Array;
  serial: string;
  created_by: string;
  created_at: number;
}

export interface RecoveryShareEnvelopesTable {
  escrow_id: string;
  share_id: string;
  arbitrator_id: string;
  envelope: string;
}

export interface RecoveryDevicesTable {
  card_id: string;
  secret_id_digest: string;
  key_set: string;
  generation: number;
  registered_at: number;
  card_record_id: string | null;
}

export type RequestKind = "key-lost" | "card-destroyed";
/**
 * open: collecting decisions; satisfied: the policy is met (reproduction needs the approver list);
 * reproducing: claimed by one reproduction; reproduced: done, closed for good; ended: a condition can no
 * longer be met; withdrawn: closed by an operator.
 */
export type RequestStatus = "open" | "satisfied" | "reproducing" | "reproduced" | "ended" | "withdrawn";
export const UNFINISHED_STATUSES: readonly RequestStatus[] = ["open", "satisfied", "reproducing"];

export interface RecoveryRequestsTable {
  request_id: string;
  card_id: string;
  escrow_id: string;
  kind: RequestKind;
  request: string;
  request_digest: string;
  status: RequestStatus;
  status_detail: string | null;
  approver_list: string | null;
  filed_by: string;
  filed_at: number;
  updated_at: number;
  reproduced_by: string | null;
  reproduced_at: number | null;
  approver_list_key_version: number | null;
  reproduction_claim: string | null;
  reproduction_claimed_by: string | null;
  reproduction_claimed_at: number | null;
  reproduction_lease_until: number | null;
}

export interface RecoveryApprovalsTable {
  request_id: string;
  seq: number;
  arbitrator_id: string;
  decision: "approve" | "refuse";
  approval: string;
  approval_hash: string;
  recorded_at: number;
  signing_key_version: number | null;
}

export interface RecoveryReleasesTable {
  request_id: string;
  share_id: string;
  arbitrator_id: string;
  release: string;
  recorded_at: number;
}

// a type alias, not an interface: Kysely's withTables wants an index-signature-compatible record
export type RecoveryTables = {
  recovery_arbitrators: RecoveryArbitratorsTable;
  recovery_arbitrator_keys: RecoveryArbitratorKeysTable;
  recovery_policies: RecoveryPoliciesTable;
  recovery_escrows: RecoveryEscrowsTable;
  recovery_share_envelopes: RecoveryShareEnvelopesTable;
  recovery_devices: RecoveryDevicesTable;
  recovery_requests: RecoveryRequestsTable;
  recovery_approvals: RecoveryApprovalsTable;
  recovery_releases: RecoveryReleasesTable;
};

// --- records as the repository returns them -----------------------------------------------------------------------

export interface ArbitratorRecord {
  id: string;
  roles: string[];
  displayName?: string;
  /** SPKI DER. */
  signingPublicKey: Uint8Array;
  /** SPKI DER. */
  encryptionPublicKey: Uint8Array;
  registeredBy: string;
  registeredAt: number;
  /** The version of the current keys: 1 at registration (absent), +1 for each rotation. */
  keyVersion?: number;
  /** Deregistration: when, by whom, why (the record stays; the id is never reused). */
  disabledAt?: number;
  disabledBy?: string;
  disabledReason?: string;
}

/** One version of an arbitrator's keys (the current one has no retiredAt). */
export interface ArbitratorKeyRecord {
  arbitratorId: string;
  version: number;
  /** SPKI DER. */
  signingPublicKey: Uint8Array;
  /** SPKI DER. */
  encryptionPublicKey: Uint8Array;
  validFrom: number;
  retiredAt?: number;
  /** The signed KeyRotation document (JSON) that made this version; absent for version 1. */
  rotation?: string;
  recordedBy: string;
}

export interface PolicyRecord {
  cardId: string;
  /** Canonical JSON of the validated policy. */
  policy: string;
  policyDigest: string;
  setBy: string;
  setAt: number;
}

export interface EscrowRow {
  escrowId: string;
  cardId: string;
  applicantId: string;
  policy: string;
  policyDigest: string;
  /** EscrowRecord JSON. */
  record: string;
  wrappedUnder: string;
  alg: string;
  slot: string;
  publicKey: Uint8Array;
  publicKeySha256: string;
  certificate: Uint8Array;
  serial: string;
  createdBy: string;
  createdAt: number;
}

export interface EnvelopeRow {
  escrowId: string;
  shareId: string;
  arbitratorId: string;
  /** ShareEnvelope JSON. */
  envelope: string;
}

export interface DeviceRecord {
  cardId: string;
  secretIdDigest: string;
  /** KeySetRef JSON. */
  keySet: string;
  generation: number;
  registeredAt: number;
  /**
   * The issuer's card record whose key set reaches this physical card: the escrow's card at issue (the default when
   * inserted without it), the replacement card's after a card-destroyed reproduction. Absent: a device replaced
   * before migration 0010 whose card record could not be told.
   */
  cardRecordId?: string;
}

/** An issuer card record as a reproduction target is judged by (src/recovery/target.ts): read-only. */
export interface TargetCardRecord {
  id: string;
  userId: string;
  status: string;
  validFrom: number;
  validUntil: number;
  /** The card's current SCP03 key set: its custody reference (KeySetRef JSON) and status; absent before the first. */
  keySet?: { id: string; custodyRef: string; status: string };
}

export interface RequestRecord {
  requestId: string;
  cardId: string;
  escrowId: string;
  kind: RequestKind;
  /** ReproductionRequest JSON. */
  request: string;
  requestDigest: string;
  status: RequestStatus;
  statusDetail: string | null;
  /** ApproverList JSON. */
  approverList: string | null;
  filedBy: string;
  filedAt: number;
  updatedAt: number;
  reproducedBy: string | null;
  reproducedAt: number | null;
  /** The author's key version that verified the approver list (absent: recorded before key versions, i.e. 1). */
  approverListKeyVersion?: number;
  /** The reproduction holding the request (status reproducing): its claim id, who, since when, until when. */
  reproductionClaim?: string;
  reproductionClaimedBy?: string;
  reproductionClaimedAt?: number;
  /** Absent while reproducing: no lease recorded (claimed before leases existed), may be taken over at once. */
  reproductionLeaseUntil?: number;
}

/** A claim of a request for reproduction: its random id, who holds it, since when, and its lease. */
export interface ReproductionClaim {
  claim: string;
  by: string;
  at: number;
  leaseUntil: number;
}

export interface ApprovalRecord {
  requestId: string;
  seq: number;
  arbitratorId: string;
  decision: "approve" | "refuse";
  /** Approval JSON. */
  approval: string;
  approvalHash: string;
  recordedAt: number;
  /** The arbitrator's key version that verified it (absent: recorded before key versions, i.e. 1). */
  signingKeyVersion?: number;
}

export interface ReleaseRecord {
  requestId: string;
  shareId: string;
  arbitratorId: string;
  /** ShareRelease JSON. */
  release: string;
  recordedAt: number;
}

export type InsertEscrowResult = "recorded" | "card-has-escrow" | "device-in-use";

/** Bytes from the driver (a Node Buffer on both engines) as a plain Uint8Array copy. */
const bytes = (b: Uint8Array): Uint8Array => new Uint8Array(b);

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

const toRequest = (r: RecoveryRequestsTable): RequestRecord => {
  const rec: RequestRecord = {
    requestId: r.request_id,
    cardId: r.card_id,
    escrowId: r.escrow_id,
    kind: r.kind,
    request: r.request,
    requestDigest: r.request_digest,
    status: r.status,
    statusDetail: r.status_detail,
    approverList: r.approver_list,
    filedBy: r.filed_by,
    filedAt: Number(r.filed_at),
    updatedAt: Number(r.updated_at),
    reproducedBy: r.reproduced_by,
    reproducedAt: r.reproduced_at === null ? null : Number(r.reproduced_at),
  };
  // the lifecycle fields (0007) only when set, so a record reads back as it was inserted
  if (r.approver_list_key_version !== null) rec.approverListKeyVersion = Number(r.approver_list_key_version);
  if (r.reproduction_claim !== null) rec.reproductionClaim = r.reproduction_claim;
  if (r.reproduction_claimed_by !== null) rec.reproductionClaimedBy = r.reproduction_claimed_by;
  if (r.reproduction_claimed_at !== null) rec.reproductionClaimedAt = Number(r.reproduction_claimed_at);
  if (r.reproduction_lease_until !== null) rec.reproductionLeaseUntil = Number(r.reproduction_lease_until);
  return rec;
};

/** The issuer's tables a reproduction target is read from (never written here). */
type IssuerCardTables = Pick<Database, "cards" | "card_key_sets" | "key_pairs">;

export class SqlRecoveryRepository {
  private readonly db: Kysely<RecoveryTables>;
  private readonly issuer: Kysely<IssuerCardTables>;

  /** @param db the system DB migrated so that 0003_recovery, 0007_recovery_lifecycle and 0010 exist, or a transaction of it */
  constructor(db: Db | Kysely<unknown> | Transaction<Database>) {
    this.db = (db as Kysely<unknown>).withTables<RecoveryTables>() as unknown as Kysely<RecoveryTables>;
    this.issuer = db as unknown as Kysely<IssuerCardTables>;
  }

  /**
   * Runs `fn` in one transaction (the current one when this repository is bound to a transaction): `repo` is
   * bound to it, and `trx` is the same transaction typed for the system DB (for appendAudit).
   */
  async transaction<T>(fn: (repo: SqlRecoveryRepository, trx: Transaction<Database>) => Promise<T>): Promise<T> {
    if (this.db.isTransaction) return fn(this, this.db as unknown as Transaction<Database>);
    return this.db.transaction().execute((trx) => fn(new SqlRecoveryRepository(trx as unknown as Transaction<Database>), trx as unknown as Transaction<Database>));
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
      .values({ arbitrator_id: a.id, version: 1, signing_public_key: a.signingPublicKey, encryption_public_key: a.encryptionPublicKey, valid_from: a.registeredAt, retired_at: null, rotation: null, recorded_by: a.registeredBy })
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
  async rotateArbitratorKeys(
    id: string,
    fromVersion: number,
    next: { signingPublicKey: Uint8Array; encryptionPublicKey: Uint8Array; at: number; rotation: string; by: string },
  ): Promise<boolean> {
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

  // --- policies ---------------------------------------------------------------------------------------------------

  /** Sets (or replaces) a card's policy. */
  async putPolicy(p: PolicyRecord): Promise<void> {
    const row = { card_id: p.cardId, policy: p.policy, policy_digest: p.policyDigest, set_by: p.setBy, set_at: p.setAt };
    await this.db
      .insertInto("recovery_policies")
      .values(row)
      .onConflict((oc) => oc.column("card_id").doUpdateSet({ policy: row.policy, policy_digest: row.policy_digest, set_by: row.set_by, set_at: row.set_at }))
      .execute();
  }

  /**
   * Policies whose text names `text` as a JSON string (a prefilter: the caller parses and checks them), by card id,
   * after the card id `after`, at most `limit`; with the card's escrow id when its key is escrowed.
   */
  async policiesMentioning(text: string, page: { after?: string; limit: number }): Promise<(PolicyRecord & { escrowId?: string; escrowPolicy?: string })[]> {
    const pattern = `%${JSON.stringify(text).replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
    let q = this.db
      .selectFrom("recovery_policies as p")
      .leftJoin("recovery_escrows as e", "e.card_id", "p.card_id")
      .select(["p.card_id", "p.policy", "p.policy_digest", "p.set_by", "p.set_at", "e.escrow_id", "e.policy as escrow_policy"])
      .where((eb) => eb.or([sql<boolean>`p.policy like ${pattern} escape '\\'`, sql<boolean>`e.policy like ${pattern} escape '\\'`]));
    if (page.after !== undefined) q = q.where("p.card_id", ">", page.after);
    const rows = await q.orderBy("p.card_id").limit(page.limit).execute();
    return rows.map((r) => ({
      cardId: r.card_id,
      policy: r.policy,
      policyDigest: r.policy_digest,
      setBy: r.set_by,
      setAt: Number(r.set_at),
      ...(r.escrow_id !== null ? { escrowId: r.escrow_id } : {}),
      ...(r.escrow_policy !== null ? { escrowPolicy: r.escrow_policy } : {}),
    }));
  }

  async policy(cardId: string): Promise<PolicyRecord | undefined> {
    const r = await this.db.selectFrom("recovery_policies").selectAll().where("card_id", "=", cardId).executeTakeFirst();
    return r && { cardId: r.card_id, policy: r.policy, policyDigest: r.policy_digest, setBy: r.set_by, setAt: Number(r.set_at) };
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

  // --- the issuer's card records a reproduced key may go into (read-only) ---------------------------------------------

  /** An issuer card record with its current key set, or undefined when the issuer has no such card. */
  async cardRecord(cardId: string): Promise<TargetCardRecord | undefined> {
    const r = await this.issuer
      .selectFrom("cards as c")
      .leftJoin("card_key_sets as k", "k.id", "c.current_key_set_id")
      .select(["c.id", "c.user_id", "c.status", "c.valid_from", "c.valid_until", "k.id as k_id", "k.custody_ref as k_custody_ref", "k.status as k_status"])
      .where("c.id", "=", cardId)
      .executeTakeFirst();
    if (!r) return undefined;
    const rec: TargetCardRecord = { id: r.id, userId: r.user_id, status: r.status, validFrom: Number(r.valid_from), validUntil: Number(r.valid_until) };
    if (r.k_id !== null && r.k_custody_ref !== null && r.k_status !== null) rec.keySet = { id: r.k_id, custodyRef: r.k_custody_ref, status: r.k_status };
    return rec;
  }

  /** The public keys (SPKI DER) of the issuer's active key pairs destined for `slot` of card `cardId` (created after `since`, when given). */
  async activeKeysInSlot(cardId: string, slot: string, since?: number): Promise<Uint8Array[]> {
    let q = this.issuer.selectFrom("key_pairs").select("public_key").where("card_id", "=", cardId).where("slot", "=", slot).where("status", "=", "active");
    if (since !== undefined) q = q.where("created_at", ">", since);
    return (await q.execute()).map((r) => bytes(r.public_key));
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

  // --- requests ---------------------------------------------------------------------------------------------------

  /** Files a request; false when the card already has an unfinished one (nothing changes). */
  async insertRequest(r: RequestRecord): Promise<boolean> {
    const row = await this.db
      .insertInto("recovery_requests")
      .values({
        request_id: r.requestId,
        card_id: r.cardId,
        escrow_id: r.escrowId,
        kind: r.kind,
        request: r.request,
        request_digest: r.requestDigest,
        status: r.status,
        status_detail: r.statusDetail,
        approver_list: r.approverList,
        filed_by: r.filedBy,
        filed_at: r.filedAt,
        updated_at: r.updatedAt,
        reproduced_by: r.reproducedBy,
        reproduced_at: r.reproducedAt,
        approver_list_key_version: null,
        reproduction_claim: null,
        reproduction_claimed_by: null,
        reproduction_claimed_at: null,
        reproduction_lease_until: null,
      })
      .onConflict((oc) => oc.doNothing())
      .returning("request_id")
      .executeTakeFirst();
    return row !== undefined;
  }

  async request(requestId: string): Promise<RequestRecord | undefined> {
    const r = await this.db.selectFrom("recovery_requests").selectAll().where("request_id", "=", requestId).executeTakeFirst();
    return r && toRequest(r);
  }

  /**
   * Requests, newest first (filed_at, then request_id, descending: a total order), filtered by status and/or card;
   * `after` continues after the request at that position (keyset pagination).
   */
  async requests(filter: { statuses?: readonly RequestStatus[]; cardId?: string; limit?: number; after?: { filedAt: number; requestId: string } } = {}): Promise<RequestRecord[]> {
    let q = this.db.selectFrom("recovery_requests").selectAll();
    if (filter.statuses) {
      if (filter.statuses.length === 0) return [];
      q = q.where("status", "in", [...filter.statuses]);
    }
    if (filter.cardId !== undefined) q = q.where("card_id", "=", filter.cardId);
    const after = filter.after;
    if (after !== undefined) q = q.where((eb) => eb.or([eb("filed_at", "<", after.filedAt), eb.and([eb("filed_at", "=", after.filedAt), eb("request_id", "<", after.requestId)])]));
    q = q.orderBy("filed_at", "desc").orderBy("request_id", "desc");
    if (filter.limit !== undefined) q = q.limit(filter.limit);
    return (await q.execute()).map(toRequest);
  }

  /**
   * Takes the request's row lock for the rest of the transaction (PostgreSQL: the row; SQLite: the write lock),
   * so that decisions on one request are serialised. False when there is no such request.
   */
  async lockRequest(requestId: string, at: number): Promise<boolean> {
    if (!this.db.isTransaction) throw new Error("lockRequest must run inside transaction()");
    const r = await this.db.updateTable("recovery_requests").set({ updated_at: at }).where("request_id", "=", requestId).executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  /**
   * Moves a request from one of `from` to `to`, with the fields given; false (nothing changes) when it is not in
   * one of `from`. One statement: of concurrent moves from the same state, one succeeds.
   */
  async moveRequest(
    requestId: string,
    from: readonly RequestStatus[],
    to: RequestStatus,
    at: number,
    fields: { statusDetail?: string | null; approverList?: string; approverListKeyVersion?: number; reproducedBy?: string; reproducedAt?: number } = {},
  ): Promise<boolean> {
    const set: Partial<RecoveryRequestsTable> = { status: to, updated_at: at };
    if (fields.statusDetail !== undefined) set.status_detail = fields.statusDetail;
    if (fields.approverList !== undefined) set.approver_list = fields.approverList;
    if (fields.approverListKeyVersion !== undefined) set.approver_list_key_version = fields.approverListKeyVersion;
    if (fields.reproducedBy !== undefined) set.reproduced_by = fields.reproducedBy;
    if (fields.reproducedAt !== undefined) set.reproduced_at = fields.reproducedAt;
    const r = await this.db.updateTable("recovery_requests").set(set).where("request_id", "=", requestId).where("status", "in", [...from]).executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  // --- the reproduction lease --------------------------------------------------------------------------------------

  /**
   * Claims a request for one reproduction: from "satisfied" (`previous` undefined), or — a takeover — from a
   * "reproducing" request still held by the claim `previous` (null: a claim without an id, from before leases)
   * whose lease ended at or before `c.at` (or was never recorded). One statement: of concurrent claims one wins.
   */
  async claimReproduction(requestId: string, c: ReproductionClaim, previous?: string | null): Promise<boolean> {
    let q = this.db
      .updateTable("recovery_requests")
      .set({ status: "reproducing", status_detail: null, updated_at: c.at, reproduction_claim: c.claim, reproduction_claimed_by: c.by, reproduction_claimed_at: c.at, reproduction_lease_until: c.leaseUntil })
      .where("request_id", "=", requestId);
    if (previous === undefined) q = q.where("status", "=", "satisfied");
    else {
      q = q.where("status", "=", "reproducing").where((eb) => eb.or([eb("reproduction_lease_until", "is", null), eb("reproduction_lease_until", "<=", c.at)]));
      q = previous === null ? q.where("reproduction_claim", "is", null) : q.where("reproduction_claim", "=", previous);
    }
    return Number((await q.executeTakeFirst()).numUpdatedRows) === 1;
  }

  /** Extends the lease of the claim `claim` to `leaseUntil`; false when the request is no longer held by it. */
  async renewReproduction(requestId: string, claim: string, leaseUntil: number): Promise<boolean> {
    const r = await this.db
      .updateTable("recovery_requests")
      .set({ reproduction_lease_until: leaseUntil })
      .where("request_id", "=", requestId)
      .where("status", "=", "reproducing")
      .where("reproduction_claim", "=", claim)
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  /**
   * Ends the claim `claim` (null: a claim without an id, from before leases): the request moves to `to`
   * ("reproduced" when done, "satisfied" to be reproduced again) and the claim is cleared. False (nothing changes)
   * when the request is not "reproducing" under that claim — another reproduction took it over.
   */
  async endReproduction(
    requestId: string,
    claim: string | null,
    to: "reproduced" | "satisfied",
    at: number,
    fields: { statusDetail?: string | null; reproducedBy?: string; reproducedAt?: number } = {},
  ): Promise<boolean> {
    const set: Partial<RecoveryRequestsTable> = {
      status: to,
      updated_at: at,
      reproduction_claim: null,
      reproduction_claimed_by: null,
      reproduction_claimed_at: null,
      reproduction_lease_until: null,
    };
    if (fields.statusDetail !== undefined) set.status_detail = fields.statusDetail;
    if (fields.reproducedBy !== undefined) set.reproduced_by = fields.reproducedBy;
    if (fields.reproducedAt !== undefined) set.reproduced_at = fields.reproducedAt;
    let q = this.db.updateTable("recovery_requests").set(set).where("request_id", "=", requestId).where("status", "=", "reproducing");
    q = claim === null ? q.where("reproduction_claim", "is", null) : q.where("reproduction_claim", "=", claim);
    return Number((await q.executeTakeFirst()).numUpdatedRows) === 1;
  }

  // --- approvals and releases -------------------------------------------------------------------------------------

  /** The chain of a request, in order. */
  async approvals(requestId: string): Promise<ApprovalRecord[]> {
    const rows = await this.db.selectFrom("recovery_approvals").selectAll().where("request_id", "=", requestId).orderBy("seq").execute();
    return rows.map((r) => ({
      requestId: r.request_id,
      seq: Number(r.seq),
      arbitratorId: r.arbitrator_id,
      decision: r.decision,
      approval: r.approval,
      approvalHash: r.approval_hash,
      recordedAt: Number(r.recorded_at),
      ...(r.signing_key_version !== null ? { signingKeyVersion: Number(r.signing_key_version) } : {}),
    }));
  }

  /** Appends an approval at `seq`; false when the position or the arbitrator's decision is taken already. */
  async insertApproval(a: ApprovalRecord): Promise<boolean> {
    const r = await this.db
      .insertInto("recovery_approvals")
      .values({
        request_id: a.requestId,
        seq: a.seq,
        arbitrator_id: a.arbitratorId,
        decision: a.decision,
        approval: a.approval,
        approval_hash: a.approvalHash,
        recorded_at: a.recordedAt,
        signing_key_version: a.signingKeyVersion ?? null,
      })
      .onConflict((oc) => oc.doNothing())
      .returning("seq")
      .executeTakeFirst();
    return r !== undefined;
  }

  /** Records released shares; false when one of them was released already (call inside transaction()). */
  async insertReleases(rows: readonly ReleaseRecord[]): Promise<boolean> {
    for (const x of rows) {
      const r = await this.db
        .insertInto("recovery_releases")
        .values({ request_id: x.requestId, share_id: x.shareId, arbitrator_id: x.arbitratorId, release: x.release, recorded_at: x.recordedAt })
        .onConflict((oc) => oc.doNothing())
        .returning("share_id")
        .executeTakeFirst();
      if (!r) return false;
    }
    return true;
  }

  async releases(requestId: string): Promise<ReleaseRecord[]> {
    const rows = await this.db.selectFrom("recovery_releases").selectAll().where("request_id", "=", requestId).orderBy("share_id").execute();
    return rows.map((r) => ({ requestId: r.request_id, shareId: r.share_id, arbitratorId: r.arbitrator_id, release: r.release, recordedAt: Number(r.recorded_at) }));
  }
}
