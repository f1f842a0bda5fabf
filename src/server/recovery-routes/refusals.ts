// The recovery routes' refusals as problems: RecoveryServiceError, RecoveryError and PolicyValidationError become
// 4xx problem+json carrying the failed check in `check` (PolicyValidationError also lists `issues` with JSON
// pointers); any other error goes through issuer-routes.ts toProblem. One table decides the status of each check.

import { PolicyValidationError, RecoveryError } from "../../recovery/errors.ts";
import { RecoveryServiceError, type ServiceCheck } from "../../recovery/service.ts";
import { toProblem } from "../issuer-routes.ts";
import { ApiProblem } from "../problem.ts";

const SERVICE_STATUS: Record<ServiceCheck, number> = {
  invalid_argument: 400,
  not_found: 404,
  arbitrator_exists: 409,
  no_policy: 409,
  escrow_exists: 409,
  no_escrow: 409,
  request_unfinished: 409,
  request_closed: 409,
  approver_list_missing: 409,
  release_invalid: 422,
  device_mismatch: 422,
  device_in_use: 422,
  device_unreadable: 422,
  card_write_failed: 422,
  arbitrator_disabled: 409,
  arbitrator_in_use: 409,
  rotation_stale: 409,
  key_reused: 422,
  lease_lost: 409,
  target_not_approved: 422,
  target_other_user: 422,
  target_unfit: 422,
  target_slot_occupied: 422,
};

const SLUGS: Record<number, [string, string]> = {
  400: ["recovery-invalid", "Invalid"],
  404: ["not-found", "Not found"],
  409: ["recovery-conflict", "Conflict"],
  422: ["recovery-refused", "Refused"],
};

/** A named refusal of the recovery module or service as a problem carrying its check; other errors as issuer-routes maps them. */
export function recoveryProblem(e: unknown): unknown {
  if (e instanceof PolicyValidationError)
    return new ApiProblem(400, "recovery-policy-invalid", "Invalid reproduction policy", e.message, { check: e.check, issues: e.issues.map((i) => ({ path: i.path, message: i.message })) });
  if (e instanceof RecoveryServiceError || e instanceof RecoveryError) {
    const status = e instanceof RecoveryServiceError ? SERVICE_STATUS[e.check] : e.check === "request_ended" || e.check === "policy_not_satisfied" ? 409 : 422;
    const [slug, title] = SLUGS[status] ?? SLUGS[422];
    return new ApiProblem(status, slug, `${title}: ${e.check}`, e.message, { check: e.check });
  }
  return toProblem(e);
}

export async function refusals<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw recoveryProblem(e);
  }
}
