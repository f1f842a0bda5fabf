// The recovery tables of the system DB as Kysely sees them (migrations/0003_recovery.ts, lifecycle columns and the
// arbitrators' key history: migrations/0007_recovery_lifecycle.ts, the card record of each registered device:
// 0010_recovery_device_card_record.ts), the request states, and what the recovery repositories share. The facade
// over those repositories, and the file's guarantees: recovery-repository.ts.
//
// Never: a share, a key or a device secret ID in clear — the columns hold sealed documents and digests.

import type { Kysely, Transaction } from "kysely";
import type { Database, Db } from "./db.ts";
import type { RequestKind, RequestStatus } from "../recovery/records.ts";

// the request kinds and states are the recovery domain's (src/recovery/records.ts)
export type { RequestKind, RequestStatus };
export { UNFINISHED_STATUSES } from "../recovery/records.ts";

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

/** Bytes from the driver (a Node Buffer on both engines) as a plain Uint8Array copy. */
export const bytes = (b: Uint8Array): Uint8Array => new Uint8Array(b);

/** `db` (the system DB or a transaction of it) typed for the recovery tables. */
export function recoveryTables(db: Db | Kysely<unknown> | Transaction<Database>): Kysely<RecoveryTables> {
  return (db as Kysely<unknown>).withTables<RecoveryTables>() as unknown as Kysely<RecoveryTables>;
}
