// Errors of the key reproduction module (seed 001, embodiment 3). Every refusal names the check that failed so
// that the caller can audit it; no error ever carries a secret, a share value or key material — only ids,
// names and counts. Each is a DomainError (src/util/errors.ts) whose kind its check decides (RECOVERY_KINDS: a
// request that ended or still needs approvals is a conflict, a malformed policy invalid, every other failed check a
// refusal); the service's own checks are in service-errors.ts.

import { DomainError, type ErrorKind, type ProblemShape } from "../util/errors.ts";

/** The named checks a reproduction can fail. */
export type RecoveryCheck =
  // policy document (step S1)
  | "policy_invalid"
  // approval chain (steps S6-S7)
  | "request_invalid"
  | "malformed_approval"
  | "replayed_from_other_request"
  | "unknown_arbitrator"
  | "not_a_party"
  | "forged_signature"
  | "duplicate_decision"
  | "broken_chain"
  | "out_of_order"
  | "request_ended"
  | "policy_not_satisfied"
  // shares (steps S3, S6, S8)
  | "escrow_invalid"
  | "policy_mismatch"
  | "request_other_escrow"
  | "share_other_escrow"
  | "share_other_card"
  | "share_unknown"
  | "share_wrong_arbitrator"
  | "share_duplicate"
  | "share_from_non_approver"
  | "share_decrypt_failed"
  | "share_commitment_mismatch"
  | "share_missing"
  | "threshold_not_met"
  | "final_check_failed"
  | "key_check_failed";

/** What each of the module's checks is: the kind that decides the answer (server/problem.ts). */
export const RECOVERY_KINDS: Readonly<Record<RecoveryCheck, ErrorKind>> = {
  policy_invalid: "invalid",
  request_invalid: "refused",
  malformed_approval: "refused",
  replayed_from_other_request: "refused",
  unknown_arbitrator: "refused",
  not_a_party: "refused",
  forged_signature: "refused",
  duplicate_decision: "refused",
  broken_chain: "refused",
  out_of_order: "refused",
  request_ended: "conflict",
  policy_not_satisfied: "conflict",
  escrow_invalid: "refused",
  policy_mismatch: "refused",
  request_other_escrow: "refused",
  share_other_escrow: "refused",
  share_other_card: "refused",
  share_unknown: "refused",
  share_wrong_arbitrator: "refused",
  share_duplicate: "refused",
  share_from_non_approver: "refused",
  share_decrypt_failed: "refused",
  share_commitment_mismatch: "refused",
  share_missing: "refused",
  threshold_not_met: "refused",
  final_check_failed: "refused",
  key_check_failed: "refused",
};

/** The reproduction's problem types by kind: recovery-invalid, not-found, recovery-conflict, recovery-refused. */
const PROBLEM_TYPES: Readonly<Record<ErrorKind, [type: string, title: string]>> = {
  invalid: ["recovery-invalid", "Invalid"],
  not_found: ["not-found", "Not found"],
  conflict: ["recovery-conflict", "Conflict"],
  refused: ["recovery-refused", "Refused"],
  unavailable: ["recovery-unavailable", "Unavailable"],
  unauthenticated: ["recovery-unauthenticated", "Authentication required"],
};

/**
 * A refusal naming the check that failed (`check: message`), with non-secret details for the audit log; a
 * DomainError of `kind` (a refusal unless the subclass's table says otherwise), answered as a recovery problem
 * whose title names the check.
 */
export class CheckedRefusal<C extends string> extends DomainError {
  constructor(
    override readonly check: C,
    message: string,
    /** Non-secret details for the audit log (ids, names, counts). */
    details: Readonly<Record<string, unknown>> = {},
    kind: ErrorKind = "refused",
  ) {
    super(kind, check, `${check}: ${message}`, details);
  }

  override problem(): ProblemShape {
    const [type, title] = PROBLEM_TYPES[this.kind];
    return { type, title: `${title}: ${this.check}` };
  }
}

export class RecoveryError extends CheckedRefusal<RecoveryCheck> {
  override readonly name = "RecoveryError";

  constructor(check: RecoveryCheck, message: string, details: Readonly<Record<string, unknown>> = {}) {
    super(check, message, details, RECOVERY_KINDS[check]);
  }
}

/** One problem in a policy document, located by a JSON pointer (RFC 6901) into it. */
export interface PolicyIssue {
  path: string;
  message: string;
}

export class PolicyValidationError extends RecoveryError {
  constructor(readonly issues: readonly PolicyIssue[]) {
    super("policy_invalid", issues.map((i) => `${i.path || "/"}: ${i.message}`).join("; "), { issues });
  }

  override problem(): ProblemShape {
    return { type: "recovery-policy-invalid", title: "Invalid reproduction policy" };
  }
}
