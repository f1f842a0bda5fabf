// Four eyes for card-key rotations (issue 15 §2), as EJBCA's approval profiles and Dogtag's agent approvals do it:
// the operator who proposes a rotation is recorded and may not approve it; the approvals needed (default one
// operator other than the proposer; config rotations.approvals) come from distinct operators; and each approval is
// bound to what distribute will act on — the old card and its key set, the strategy, the new card's ID, the
// credentials it adds and the old card's slots it leaves behind (rotationBinding, fixed at proposal). Issuing the new
// card and distributing check the approvals against that binding again, and refuse by name anything else.
//
// The data side (one transaction, a guarded UPDATE first, distinct approvers by primary key) is the port's approveRotation;
// this module audits each approval and notifies the one that approves. No HTTP: event-routes.ts and rotation.ts call it.

import type { IssuerStore } from "./ports.ts";
import type { JsonValue, Rotation } from "./records.ts";
import { rotationBinding, type RotationApproval } from "./rotation-records.ts";
import { IssuerError } from "./issuer.ts";

export interface ApprovalState {
  /** Distinct operators other than the proposer needed. */
  required: number;
  /** The approvals that count: bound to the rotation's binding, not by its proposer. */
  given: RotationApproval[];
  /** The binding's hash (hex SHA-256) the approvals must carry. */
  binding: string;
}

/** What a rotation's approvals amount to now; `configured`: the server's rotations.approvals. */
export async function approvalState(store: IssuerStore, r: Rotation, configured = 1): Promise<ApprovalState> {
  const binding = rotationBinding(r).hash;
  const all = await store.rotationRecords.approvals(r.id);
  return { required: Math.max(r.approvalsRequired, configured), given: all.filter((a) => a.bindingHash === binding && a.operator !== r.proposedBy), binding };
}

/** The binding as the audit log and the API show it. */
export function bindingDetails(r: Rotation): Record<string, JsonValue> {
  return {
    cardId: r.cardId,
    fromKeySetId: r.fromKeySetId,
    strategy: r.strategy,
    newCardId: r.newCardId,
    added: r.added.map((a) => ({ slot: a.slot, alg: a.alg, ...(a.profile ? { profile: a.profile } : {}) })),
    dropped: r.dropped,
    binding: rotationBinding(r).hash,
  };
}

/**
 * One operator's approval of proposed rotation `id`, audited (rotation.approval while more are needed,
 * rotation.approved for the one that approves it, which is also notified). StoreError conflict for the proposer, an
 * operator who approved before, or a rotation not proposed; not_found for an unknown one.
 */
export async function approveRotation(store: IssuerStore, id: string, actor: string, o: { required?: number } = {}): Promise<Rotation> {
  return store.transaction(async (s) => {
    const r = await s.approveRotation(id, actor, { required: o.required });
    const state = await approvalState(s, r, o.required);
    const approved = r.status === "approved";
    const details = { ...bindingDetails(r), approvals: state.given.map((a) => a.operator), required: state.required, proposedBy: r.proposedBy };
    await s.audit({ actor, action: approved ? "rotation.approved" : "rotation.approval", subject: r.id, details, at: r.approvedAt ?? s.now() });
    if (approved) {
      const payload = { rotationId: r.id, approvedBy: actor, cardId: r.cardId, fromKeySetId: r.fromKeySetId, strategy: r.strategy };
      await s.enqueueEvent({ type: "rotation.approved", subject: r.id, payload, dedupKey: `rotation-approved:${r.id}` });
    }
    return r;
  });
}

/**
 * Refuses (IssuerError conflict, naming what is missing) unless rotation `r` is approved by enough distinct operators
 * other than its proposer, each for exactly its binding: what new-card and distribute check before acting.
 */
export async function requireApproved(store: IssuerStore, r: Rotation, configured = 1): Promise<ApprovalState> {
  const state = await approvalState(store, r, configured);
  if (state.given.length < state.required) {
    const who = state.given.map((a) => a.operator).join(", ") || "nobody";
    throw new IssuerError("conflict", `four eyes: rotation ${r.id} needs ${state.required} approval(s) of its binding by operators other than its proposer; it has ${state.given.length} (${who})`);
  }
  return state;
}
