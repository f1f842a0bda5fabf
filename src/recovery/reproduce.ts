// Key reproduction (seed 001, embodiment 3, steps S6-S9; claims 35 (d), 42): the secret is rebuilt only when a
// verified approval chain satisfies the policy, from the shares of those who approved, and checked before use.
// Order conditions are enforced here, by the chain — shares cannot express order (the seed: "it suffices to check
// the signature of the person who approved"); indispensable and threshold conditions are enforced twice, by the
// chain's evaluation and by the shares' algebra (shares.ts).
// Meant to run inside custody (the tamper-resistant reproduction device 20); the returned secret must be written
// into the card or custody and wiped by the caller, never logged.

import { type Approval, type ApproverList, type ReproductionRequest, verifyApproverList, verifyChain } from "./approvals.ts";
import type { ArbitratorRegistry } from "./registry.ts";
import { RecoveryError } from "./errors.ts";
import { type EscrowRecord, type ReleasedShare, type SecretCheck, rebuildSecret } from "./shares.ts";

export interface ReproduceInput {
  escrow: EscrowRecord;
  request: ReproductionRequest;
  approvals: readonly Approval[];
  /** The approvers' list signed by the policy's author (FIG. 9 condition 15). */
  approverList: ApproverList;
  registry: ArbitratorRegistry;
  /** Shares released by approvers (openShare on their side). */
  shares: readonly ReleasedShare[];
  /** Final check of the rebuilt secret, e.g. keyPairCheck(the user's public key). */
  verify?: SecretCheck;
}

export interface Reproduction {
  /** The rebuilt secret. Secret: the caller wipes it. */
  secret: Uint8Array;
  requestId: string;
  escrowId: string;
  cardId: string;
  /** Who approved, in order, for the audit log. */
  approvers: string[];
  author: string;
  chainHead: string;
}

export async function reproduce(input: ReproduceInput): Promise<Reproduction> {
  const { escrow, request, registry } = input;
  const verdict = verifyChain(request, input.approvals, registry);
  if (!verdict.ok) throw verdict.error;
  if (verdict.evaluation.status !== "satisfied") {
    const e = verdict.evaluation;
    throw new RecoveryError(
      "policy_not_satisfied",
      e.status === "failed" ? `request ${request.requestId} ended: ${e.message}` : `request ${request.requestId} still needs approvals`,
      e.status === "failed" ? { condition: e.condition } : { needs: e.needs },
    );
  }
  if (request.escrowId !== escrow.escrowId || request.cardId !== escrow.cardId)
    throw new RecoveryError("request_other_escrow", `request ${request.requestId} is for escrow ${request.escrowId} of card ${request.cardId}, not ${escrow.escrowId} of ${escrow.cardId}`);
  verifyApproverList(input.approverList, request, verdict, registry);
  const secret = await rebuildSecret(escrow, request.policy, input.shares, { approvers: verdict.approvers, verify: input.verify });
  return {
    secret,
    requestId: request.requestId,
    escrowId: escrow.escrowId,
    cardId: escrow.cardId,
    approvers: verdict.approvers,
    author: input.approverList.author,
    chainHead: verdict.head,
  };
}
