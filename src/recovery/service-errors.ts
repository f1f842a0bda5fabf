// The recovery service's refusals (seed 001 embodiment 3): the checks of the service itself — input, records,
// request states, the card presented, the arbitrators' status and keys, the reproduction lease, the target card —
// each named (ServiceCheck), beside the recovery module's own checks (errors.ts, RecoveryError). Like those, a
// refusal carries only non-secret details (ids, names, counts): it goes to the audit log and the caller as it is.
// What each check is — malformed input, nothing there, a state that does not allow it, a refusal — is its kind
// (SERVICE_KINDS), which alone decides the answer's status (server/problem.ts).

import type { ErrorKind } from "../util/errors.ts";
import { CheckedRefusal, RecoveryError } from "./errors.ts";
import { TargetRefusal, type TargetCheck } from "./target.ts";

/** Checks of the service itself; the recovery module's own checks come as RecoveryError (errors.ts). */
export type ServiceCheck =
  /** Malformed input (ids, kinds, shapes). */
  | "invalid_argument"
  /** No such arbitrator, card, escrow or request. */
  | "not_found"
  | "arbitrator_exists"
  /** Step S1 comes first: the card has no policy. */
  | "no_policy"
  /** The card already has an escrow (one per card; its policy is fixed with it). */
  | "escrow_exists"
  /** A request for a card that was issued without an escrow. */
  | "no_escrow"
  /** The card already has an unfinished request. */
  | "request_unfinished"
  /** The request is reproduced, withdrawn, being reproduced, or its chain was closed by the approver list. */
  | "request_closed"
  /** The policy is met but its author has not signed the list of approvers yet. */
  | "approver_list_missing"
  /** A share release that is not one (shape). */
  | "release_invalid"
  /** The presented card is not the one the request allows (FIG. 10 unit 22/24). */
  | "device_mismatch"
  /** The presented card is the registered device of another card record. */
  | "device_in_use"
  /** The card's secret ID could not be read (the secure channel did not open with the given key set). */
  | "device_unreadable"
  | "card_write_failed"
  /** The arbitrator is deregistered: it cannot decide, sign, rotate, or be depended on by a new policy, escrow or request. */
  | "arbitrator_disabled"
  /** Deregistering it would leave escrowed keys that can no longer be reproduced (unless forced). */
  | "arbitrator_in_use"
  /** A key rotation that does not start from the arbitrator's current keys and version (replayed, raced or stale). */
  | "rotation_stale"
  /** A key rotation to a key the arbitrator used before. */
  | "key_reused"
  /** Another reproduction took the request over after this one's lease expired: this one stops. */
  | "lease_lost"
  /** The card that would receive the key is not the approved one, not the user's, unfit, or its slot is taken (target.ts). */
  | TargetCheck;

/** What each of the service's checks is: the kind that decides the answer. */
export const SERVICE_KINDS: Readonly<Record<ServiceCheck, ErrorKind>> = {
  invalid_argument: "invalid",
  not_found: "not_found",
  arbitrator_exists: "conflict",
  no_policy: "conflict",
  escrow_exists: "conflict",
  no_escrow: "conflict",
  request_unfinished: "conflict",
  request_closed: "conflict",
  approver_list_missing: "conflict",
  release_invalid: "refused",
  device_mismatch: "refused",
  device_in_use: "refused",
  device_unreadable: "refused",
  card_write_failed: "refused",
  arbitrator_disabled: "conflict",
  arbitrator_in_use: "conflict",
  rotation_stale: "conflict",
  key_reused: "refused",
  lease_lost: "conflict",
  target_not_approved: "refused",
  target_other_user: "refused",
  target_unfit: "refused",
  target_slot_occupied: "refused",
};

/** The service's refusals; `details` are non-secret (ids, names, counts) for the audit log and the caller. */
export class RecoveryServiceError extends CheckedRefusal<ServiceCheck> {
  override readonly name = "RecoveryServiceError";

  constructor(check: ServiceCheck, message: string, details: Readonly<Record<string, unknown>> = {}) {
    super(check, message, details, SERVICE_KINDS[check]);
  }
}

/** Runs `fn`, turning a target's refusal (target.ts) into the service's refusal with the same check. */
export async function targetChecked<T>(fn: () => Promise<T> | T): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof TargetRefusal) throw new RecoveryServiceError(e.check, e.message.replace(/^[a-z_]+: /, ""), e.details);
    throw e;
  }
}

/** A named refusal: the recovery module's (RecoveryError) or the service's (RecoveryServiceError). */
export type RecoveryRefusal = RecoveryError | RecoveryServiceError;
export const isRecoveryRefusal = (e: unknown): e is RecoveryRefusal => e instanceof RecoveryError || e instanceof RecoveryServiceError;
