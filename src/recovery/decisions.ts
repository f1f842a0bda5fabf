// Steps S6-S7 (seed 001 embodiment 3, FIG. 9): the arbitrators' signed decisions on a request — an approval, with
// the arbitrator's shares released to the reproduction device (share-release.ts), or a refusal with its reason —
// checked against the request's chain (approvals.ts) and judged by its policy, which may satisfy or end the request;
// then the list of approvers the policy's author signs (condition 15), which closes the chain. Each is recorded in
// one transaction, under a lock on the request, with its audit entry; each refusal is audited.

import { ApprovalChain, approvalHash, verifyApproverList, verifyChain, type Approval, type ApproverList } from "./approvals.ts";
import { RecoveryError } from "./errors.ts";
import { chainRegistry } from "./keyed-registry.ts";
import { loadRequest, requestView, requireSatisfied, type RequestView, type ServiceRequest } from "./requests.ts";
import { auditRefusal, checkActor, isObject, jsonDetails, type ServiceContext } from "./service-context.ts";
import { isRecoveryRefusal, RecoveryServiceError } from "./service-errors.ts";
import { checkReleases, type ShareRelease } from "./share-release.ts";
import type { EscrowRecord } from "./shares.ts";

/**
 * Step S6: an approval, with the arbitrator's shares released to the reproduction device (one release per
 * share the arbitrator holds in the card's escrow). The approval is checked against the chain (signature,
 * request, order, link — each refusal named), each release against the escrow (card, escrow, share, holder,
 * that it opens under the device key and matches its commitment). Accepted: appended and the policy re-judged.
 * Refused: nothing recorded, the refusal audited, a RecoveryError / RecoveryServiceError thrown.
 */
export async function approve(ctx: ServiceContext, requestId: string, approval: Approval, releases: readonly ShareRelease[], opts: { actor?: string } = {}): Promise<RequestView> {
  return decide(ctx, requestId, approval, releases, "approve", opts.actor);
}

/** Step S6/S9: a signed refusal with its reason. May end the request (indispensable party, threshold). */
export async function refuse(ctx: ServiceContext, requestId: string, approval: Approval, opts: { actor?: string } = {}): Promise<RequestView> {
  return decide(ctx, requestId, approval, [], "refuse", opts.actor);
}

async function decide(
  ctx: ServiceContext,
  requestId: string,
  approval: Approval,
  releases: readonly ShareRelease[],
  expected: "approve" | "refuse",
  actorOpt: string | undefined,
): Promise<RequestView> {
  const claimed = isObject(approval) && typeof approval.arbitrator === "string" ? approval.arbitrator : "unknown";
  const actor = actorOpt ?? claimed;
  try {
    checkActor(actor);
    if (!isObject(approval)) throw new RecoveryServiceError("invalid_argument", "expected a signed approval");
    if (approval.decision !== expected)
      throw new RecoveryServiceError("invalid_argument", `this is ${expected === "approve" ? "an approval" : "a refusal"}; the signed decision says ${String(approval.decision)}`);
    if (expected === "refuse" && (typeof approval.reason !== "string" || approval.reason.trim() === "")) throw new RecoveryServiceError("invalid_argument", "a refusal states its reason");
    if (!Array.isArray(releases)) throw new RecoveryServiceError("release_invalid", "releases must be an array");
    const at = ctx.at();
    return await ctx.store.transaction(async ({ repo, audit }) => {
      if (!(await repo.lockRequest(requestId, at))) throw new RecoveryServiceError("not_found", `no request ${requestId}`, { requestId });
      const { rec, approvals } = await loadRequest(repo, requestId);
      if (rec.status === "reproduced" || rec.status === "reproducing" || rec.status === "withdrawn")
        throw new RecoveryServiceError("request_closed", `request ${requestId} is ${rec.status}`, { requestId, status: rec.status });
      if (rec.approverList !== null) throw new RecoveryServiceError("request_closed", `request ${requestId}: the list of approvers was drawn up, the chain is closed`, { requestId });
      const request = JSON.parse(rec.request) as ServiceRequest;
      // the recorded decisions re-verified with the keys that verified them; the new one with the current keys
      const registry = await chainRegistry(repo, rec, await repo.approvals(requestId));
      const chain = new ApprovalChain(request, registry);
      for (const a of approvals) chain.append(a);
      registry.unpinDecision(approval.arbitrator);
      if (registry.isDisabled(approval.arbitrator))
        throw new RecoveryServiceError("arbitrator_disabled", `arbitrator ${approval.arbitrator} is deregistered: it no longer decides`, { requestId, arbitrator: approval.arbitrator });
      const evaluation = chain.append(approval);
      const escrowRow = await repo.escrow(rec.escrowId);
      if (!escrowRow) throw new RecoveryServiceError("not_found", `escrow ${rec.escrowId} of request ${requestId} is gone`, { requestId });
      const released = expected === "approve" ? await checkReleases(ctx, request, JSON.parse(escrowRow.record) as EscrowRecord, approval.arbitrator, releases) : [];
      if (expected === "refuse" && releases.length) throw new RecoveryServiceError("release_invalid", "a refusal releases no share");
      const seq = approvals.length;
      const signingKeyVersion = registry.currentVersion(approval.arbitrator);
      if (
        !(await repo.insertApproval({
          requestId,
          seq,
          arbitratorId: approval.arbitrator,
          decision: approval.decision,
          approval: JSON.stringify(approval),
          approvalHash: approvalHash(approval),
          recordedAt: at,
          signingKeyVersion,
        }))
      )
        throw new RecoveryError("broken_chain", `approval ${seq}: another decision took this place in the chain`, { requestId });
      if (!(await repo.insertReleases(released.map((r) => ({ requestId, shareId: r.header.shareId, arbitratorId: approval.arbitrator, release: JSON.stringify(r), recordedAt: at })))))
        throw new RecoveryError("share_duplicate", `a share of ${approval.arbitrator} was released for this request already`, { requestId });
      await audit({
        actor,
        action: "recovery.decision.record",
        subject: requestId,
        details: {
          cardId: rec.cardId,
          seq,
          arbitrator: approval.arbitrator,
          decision: approval.decision,
          ...(approval.reason !== undefined ? { reason: approval.reason } : {}),
          sharesReleased: released.map((r) => r.header.shareId),
          approvalHash: approvalHash(approval),
          evaluation: evaluation.status,
        },
        at,
      });
      let next = rec;
      if (evaluation.status === "failed" && (rec.status === "open" || rec.status === "satisfied")) {
        await repo.moveRequest(requestId, ["open", "satisfied"], "ended", at, { statusDetail: evaluation.message });
        await audit({
          actor: "recovery-service",
          action: "recovery.request.end",
          subject: requestId,
          details: { cardId: rec.cardId, condition: jsonDetails(evaluation.condition), message: evaluation.message },
          at,
        });
        next = { ...rec, status: "ended", statusDetail: evaluation.message };
      } else if (evaluation.status === "satisfied" && rec.status === "open") {
        await repo.moveRequest(requestId, ["open"], "satisfied", at);
        await audit({ actor: "recovery-service", action: "recovery.request.satisfied", subject: requestId, details: { cardId: rec.cardId, approvers: evaluation.approvers }, at });
        next = { ...rec, status: "satisfied" };
      }
      const all = [...approvals, approval];
      return requestView({ ...next, updatedAt: at }, all, [...(await repo.releases(requestId)).map((r) => r.shareId)]);
    });
  } catch (e) {
    if (isRecoveryRefusal(e)) await auditRefusal(ctx, actor, expected === "approve" ? "recovery.approval.refuse" : "recovery.refusal.refuse", requestId, e, { arbitrator: claimed });
    throw e;
  }
}

/**
 * FIG. 9 condition 15: the policy's author signs the list of approvers of the satisfied chain (signApproverList,
 * on the author's side). Checked against the verified chain; needed before reproduction. The chain is closed
 * by it: no further decision is accepted.
 */
export async function submitApproverList(ctx: ServiceContext, requestId: string, list: ApproverList, opts: { actor?: string } = {}): Promise<RequestView> {
  const actor = opts.actor ?? (isObject(list) && typeof list.author === "string" ? list.author : "unknown");
  try {
    checkActor(actor);
    const at = ctx.at();
    return await ctx.store.transaction(async ({ repo, audit }) => {
      if (!(await repo.lockRequest(requestId, at))) throw new RecoveryServiceError("not_found", `no request ${requestId}`, { requestId });
      const { rec, approvals, released } = await loadRequest(repo, requestId);
      requireSatisfied(rec);
      if (rec.approverList !== null) throw new RecoveryServiceError("request_closed", `request ${requestId} has its list of approvers already`, { requestId });
      const request = JSON.parse(rec.request) as ServiceRequest;
      const registry = await chainRegistry(repo, rec, await repo.approvals(requestId));
      const verdict = verifyChain(request, approvals, registry);
      if (!verdict.ok) throw verdict.error;
      // the list itself: the author's current key (require() is not pinned for an unsigned list)
      if (isObject(list) && typeof list.author === "string" && registry.isDisabled(list.author))
        throw new RecoveryServiceError("arbitrator_disabled", `arbitrator ${list.author} is deregistered: it no longer signs lists of approvers`, { requestId, arbitrator: list.author });
      verifyApproverList(list, request, verdict, registry);
      const text = JSON.stringify(list);
      const approverListKeyVersion = registry.currentVersion(list.author);
      if (!(await repo.moveRequest(requestId, ["satisfied"], "satisfied", at, { approverList: text, approverListKeyVersion })))
        throw new RecoveryServiceError("request_closed", `request ${requestId} changed meanwhile`, { requestId });
      await audit({
        actor,
        action: "recovery.approvers.list",
        subject: requestId,
        details: { cardId: rec.cardId, author: list.author, approvers: list.approvers, chainHead: list.chainHead },
        at,
      });
      return requestView({ ...rec, approverList: text, approverListKeyVersion, updatedAt: at }, approvals, released);
    });
  } catch (e) {
    if (isRecoveryRefusal(e)) await auditRefusal(ctx, actor, "recovery.approvers.refuse", requestId, e, {});
    throw e;
  }
}
