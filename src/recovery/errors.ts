// Errors of the key reproduction module (seed 001, embodiment 3). Every refusal names the check that failed so
// that the caller can audit it; no error ever carries a secret, a share value or key material — only ids,
// names and counts.

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

/** A refusal naming the check that failed (`check: message`), with non-secret details for the audit log. */
export class CheckedRefusal<C extends string> extends Error {
  constructor(
    readonly check: C,
    message: string,
    /** Non-secret details for the audit log (ids, names, counts). */
    readonly details: Readonly<Record<string, unknown>> = {},
  ) {
    super(`${check}: ${message}`);
  }
}

export class RecoveryError extends CheckedRefusal<RecoveryCheck> {
  override readonly name = "RecoveryError";
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
}
