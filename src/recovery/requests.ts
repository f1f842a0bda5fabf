// Steps S5-S7 (seed 001 embodiment 3): reproduction requests — filing one ("key-lost" or "card-destroyed", naming
// the card record that will receive the key: target.ts), the request as arbitrators and operators see it (its chain
// and the policy's judgement of it), the lists of requests, what each arbitrator has to do (pendingFor), and
// withdrawal. The decisions on a request are decisions.ts; its reproduction, reproduction.ts.

import type { RecoveryRepository } from "./ports.ts";
import { UNFINISHED_STATUSES, type RequestKind, type RequestRecord, type RequestStatus } from "./records.ts";
import { chainHead, requestDigest, validateRequest, type Approval, type ApproverList } from "./approvals.ts";
import { rolesIn, unreachableWithout } from "./deregistration.ts";
import { RecoveryError } from "./errors.ts";
import { shareEnvelopes } from "./escrow.ts";
import { keyedRegistry } from "./keyed-registry.ts";
import { allPages, decodeCursor, encodeCursor, MAX_PAGE_SIZE, MAX_PENDING_PAGE_SIZE, pageLimit, type Page, type PageOptions } from "./paging.ts";
import { evaluatePolicy, policyParties, type Evaluation, type ReproductionPolicy } from "./policy.ts";
import { auditRefusal, checkActor, checkId, isObject, MAX_REASON, type ServiceContext } from "./service-context.ts";
import { isRecoveryRefusal, RecoveryServiceError, targetChecked } from "./service-errors.ts";
import type { ShareEnvelope } from "./shares.ts";
import { checkTarget, targetAtFiling } from "./target.ts";

/**
 * The request arbitrators sign over: the recovery module's request, with the kind of reproduction asked for and the
 * card record that will receive the key (target.ts) — so an approval covers that card and no other. `target` is
 * absent only from requests filed before it was signed.
 */
export type { ServiceRequest } from "./target.ts";
import type { ServiceRequest } from "./target.ts";

export interface RequestView {
  requestId: string;
  cardId: string;
  escrowId: string;
  kind: RequestKind;
  status: RequestStatus;
  /** The failed condition of an ended request, a withdrawal reason, or the last refused reproduction attempt. */
  statusDetail?: string;
  /** Exactly what an approval signs over (requestDigest). */
  request: ServiceRequest;
  requestDigest: string;
  /** What the next approval must name as `previous`. */
  chainHead: string;
  /** The signed decisions so far, in chain order. */
  approvals: Approval[];
  /** The policy's judgement of the decisions so far. */
  evaluation: Evaluation;
  /** Share ids released so far (sealed to the reproduction device; never their values). */
  releasedShares: string[];
  approverList?: ApproverList;
  filedBy: string;
  filedAt: Date;
  reproducedBy?: string;
  reproducedAt?: Date;
  /** While "reproducing": who holds the request, since when, and until when its lease runs. */
  reproduction?: { claimedBy: string; claimedAt: Date; leaseUntil?: Date };
}

/** What an arbitrator has to do (pendingFor). */
export type PendingItem =
  | {
      action: "decide";
      request: RequestView;
      /** False while an order condition makes the arbitrator wait; `waitingFor` names whom. */
      mayApproveNow: boolean;
      waitingFor: string[];
      /** The arbitrator's share envelopes of this card's escrow, to open on its side and release. */
      envelopes: ShareEnvelope[];
    }
  | { action: "sign-approver-list"; request: RequestView };

const KINDS: readonly RequestKind[] = ["key-lost", "card-destroyed"];

/**
 * Step S5-S6: files a reproduction request for a card — "key-lost" (its key is gone, the same card comes back)
 * or "card-destroyed" (a new card will receive the key and become the registered device). A card has at most
 * one unfinished request. The request names the card record that will receive the key (`target`, what every
 * approval signs over, target.ts): for key-lost the registered device's, for card-destroyed `replacementCardId` —
 * required, and checked now: a card record of the escrowed key's user, active, not a registered device, nothing
 * in the slot. Refusals are audited (recovery.request.file.refuse).
 */
export async function fileRequest(
  ctx: ServiceContext,
  input: { cardId: string; kind: RequestKind; requester: string; reason?: string; replacementCardId?: string },
  actor: string,
): Promise<RequestView> {
  checkActor(actor);
  const subject = isObject(input) && typeof input.cardId === "string" ? input.cardId : "unknown";
  try {
    return await file(ctx, input, actor);
  } catch (e) {
    if (isRecoveryRefusal(e))
      await auditRefusal(ctx, actor, "recovery.request.file.refuse", subject, e, {
        kind: isObject(input) && typeof input.kind === "string" ? input.kind.slice(0, 32) : null,
        replacementCardId: isObject(input) && typeof input.replacementCardId === "string" ? input.replacementCardId.slice(0, 128) : null,
      });
    throw e;
  }
}

async function file(ctx: ServiceContext, input: { cardId: string; kind: RequestKind; requester: string; reason?: string; replacementCardId?: string }, actor: string): Promise<RequestView> {
  if (!isObject(input)) throw new RecoveryServiceError("invalid_argument", "expected { cardId, kind, requester, reason?, replacementCardId? }");
  checkId(input.cardId, "card id");
  if (!KINDS.includes(input.kind)) throw new RecoveryServiceError("invalid_argument", `kind must be one of ${KINDS.join(", ")}`);
  if (typeof input.requester !== "string" || input.requester.length === 0 || input.requester.length > 128) throw new RecoveryServiceError("invalid_argument", "requester must be 1-128 characters");
  if (input.reason !== undefined && (typeof input.reason !== "string" || input.reason.length > MAX_REASON))
    throw new RecoveryServiceError("invalid_argument", `reason must be at most ${MAX_REASON} characters`);
  if (input.kind === "key-lost" && input.replacementCardId !== undefined)
    throw new RecoveryServiceError("invalid_argument", "a key-lost request reproduces the key into the registered card itself: it names no replacement card");
  if (input.kind === "card-destroyed") {
    if (input.replacementCardId === undefined)
      throw new RecoveryServiceError("invalid_argument", "a card-destroyed request names the replacement card (replacementCardId): the arbitrators approve the reproduction into that card only");
    checkId(input.replacementCardId, "replacement card id");
  }
  const escrow = await ctx.repo.escrowByCard(input.cardId);
  if (!escrow) throw new RecoveryServiceError("no_escrow", `card ${input.cardId} has no escrowed key`, { cardId: input.cardId });
  const now = ctx.now();
  const device = await ctx.repo.device(input.cardId);
  const target = await targetChecked(async () => {
    const t = targetAtFiling(input.kind, escrow, device, input.replacementCardId);
    // a replacement card is judged now (and again at the reproduction); the registered device at the reproduction
    if (input.kind === "card-destroyed") await checkTarget(ctx.repo, { kind: input.kind, target: t, escrow, device, at: now.getTime() });
    return t;
  });
  const request: ServiceRequest = {
    format: "cardkms.recovery.request/1",
    requestId: ctx.store.newId(now.getTime()),
    escrowId: escrow.escrowId,
    cardId: input.cardId,
    policy: JSON.parse(escrow.policy) as ReproductionPolicy,
    requester: input.requester,
    filedAt: now.toISOString(),
    kind: input.kind,
    target,
  };
  if (input.reason !== undefined) request.reason = input.reason;
  const registry = await keyedRegistry(ctx.repo, []);
  validateRequest(request, registry);
  const blocked = unreachableWithout(request.policy, registry.disabledIds());
  if (blocked)
    throw new RecoveryServiceError("arbitrator_disabled", `card ${input.cardId}'s key cannot be reproduced under its escrow's policy: ${blocked}; its escrow must be re-split first`, {
      cardId: input.cardId,
      arbitrators: registry.disabledIds().filter((id) => rolesIn(request.policy, id).length),
    });
  const rec: RequestRecord = {
    requestId: request.requestId,
    cardId: request.cardId,
    escrowId: request.escrowId,
    kind: input.kind,
    request: JSON.stringify(request),
    requestDigest: requestDigest(request),
    status: "open",
    statusDetail: null,
    approverList: null,
    filedBy: actor,
    filedAt: now.getTime(),
    updatedAt: now.getTime(),
    reproducedBy: null,
    reproducedAt: null,
  };
  await ctx.store.transaction(async ({ repo, audit }) => {
    if (!(await repo.insertRequest(rec))) {
      const open = (await repo.requests({ cardId: rec.cardId, statuses: UNFINISHED_STATUSES, limit: 1 }))[0];
      throw new RecoveryServiceError("request_unfinished", `card ${rec.cardId} already has an unfinished request${open ? ` (${open.requestId}, ${open.status})` : ""}`, {
        cardId: rec.cardId,
        requestId: open?.requestId,
      });
    }
    await audit({
      actor,
      action: "recovery.request.file",
      subject: rec.requestId,
      details: { cardId: rec.cardId, escrowId: rec.escrowId, kind: rec.kind, requester: request.requester, requestDigest: rec.requestDigest, target: { cardId: target.cardId, userId: target.userId } },
      at: rec.filedAt,
    });
  });
  return requestView(rec, [], []);
}

/** A request record as a view, with its chain (approvals, in order) and the ids of the shares released so far. */
export function requestView(rec: RequestRecord, approvals: Approval[], released: string[]): RequestView {
  const request = JSON.parse(rec.request) as ServiceRequest;
  const v: RequestView = {
    requestId: rec.requestId,
    cardId: rec.cardId,
    escrowId: rec.escrowId,
    kind: rec.kind,
    status: rec.status,
    request,
    requestDigest: rec.requestDigest,
    chainHead: chainHead(request, approvals, rec.requestDigest),
    approvals,
    evaluation: evaluatePolicy(
      request.policy,
      approvals.map((a) => ({ arbitrator: a.arbitrator, decision: a.decision, reason: a.reason })),
    ),
    releasedShares: released,
    filedBy: rec.filedBy,
    filedAt: new Date(rec.filedAt),
  };
  if (rec.statusDetail !== null) v.statusDetail = rec.statusDetail;
  if (rec.approverList !== null) v.approverList = JSON.parse(rec.approverList) as ApproverList;
  if (rec.reproducedBy !== null) v.reproducedBy = rec.reproducedBy;
  if (rec.reproducedAt !== null) v.reproducedAt = new Date(rec.reproducedAt);
  if (rec.status === "reproducing") {
    v.reproduction = { claimedBy: rec.reproductionClaimedBy ?? "unknown", claimedAt: new Date(rec.reproductionClaimedAt ?? rec.updatedAt) };
    if (rec.reproductionLeaseUntil !== undefined) v.reproduction.leaseUntil = new Date(rec.reproductionLeaseUntil);
  }
  return v;
}

/** A request, its decisions and the ids of its released shares; not_found when there is no such request. */
export async function loadRequest(repo: RecoveryRepository, requestId: string): Promise<{ rec: RequestRecord; approvals: Approval[]; released: string[] }> {
  if (typeof requestId !== "string") throw new RecoveryServiceError("invalid_argument", "request id must be a string");
  const rec = await repo.request(requestId);
  if (!rec) throw new RecoveryServiceError("not_found", `no request ${requestId}`, { requestId });
  const approvals = (await repo.approvals(requestId)).map((a) => JSON.parse(a.approval) as Approval);
  const released = (await repo.releases(requestId)).map((r) => r.shareId);
  return { rec, approvals, released };
}

/** A request, its chain and the policy's judgement of it. */
export async function status(ctx: ServiceContext, requestId: string): Promise<RequestView> {
  const { rec, approvals, released } = await loadRequest(ctx.repo, requestId);
  return requestView(rec, approvals, released);
}

/** Requests, newest first; by status and/or card. Without `limit`, all of them (every page); with it, the first page. */
export async function list(ctx: ServiceContext, filter: { status?: RequestStatus | readonly RequestStatus[]; cardId?: string; limit?: number } = {}): Promise<RequestView[]> {
  if (filter.limit !== undefined) return (await listPage(ctx, filter)).items;
  return allPages((after) => listPage(ctx, { ...filter, limit: MAX_PAGE_SIZE, after }));
}

/** A page of requests, newest first (filing time, then request id), by status and/or card. */
export async function listPage(ctx: ServiceContext, filter: { status?: RequestStatus | readonly RequestStatus[]; cardId?: string } & PageOptions = {}): Promise<Page<RequestView>> {
  const limit = pageLimit(filter.limit, MAX_PAGE_SIZE);
  const statuses = filter.status === undefined ? undefined : typeof filter.status === "string" ? [filter.status] : filter.status;
  const after = filter.after === undefined ? undefined : requestPosition(filter.after, "requests");
  const recs = await ctx.repo.requests({ statuses, cardId: filter.cardId, after, limit: limit + 1 });
  const items: RequestView[] = [];
  for (const r of recs.slice(0, limit)) {
    const { approvals, released } = await loadRequest(ctx.repo, r.requestId);
    items.push(requestView(r, approvals, released));
  }
  const last = recs[limit - 1];
  return recs.length > limit ? { items, next: encodeCursor("requests", [last.filedAt, last.requestId]) } : { items };
}

function requestPosition(cursor: string, list: string): { filedAt: number; requestId: string } {
  const [filedAt, requestId] = decodeCursor(cursor, list, ["number", "string"]) as [number, string];
  return { filedAt, requestId };
}

/**
 * What an arbitrator has to do (all of it, every page): requests it is a party of and has not decided on
 * ("decide", with its share envelopes for the card and whether an order condition makes it wait), and satisfied
 * requests whose approver list it must sign as the policy's author ("sign-approver-list"). Nothing for a
 * deregistered arbitrator.
 */
export async function pendingFor(ctx: ServiceContext, arbitratorId: string): Promise<PendingItem[]> {
  return allPages((after) => pendingPage(ctx, arbitratorId, { limit: MAX_PENDING_PAGE_SIZE, after }));
}

/** A page of pendingFor, in the order of the requests (newest first). */
export async function pendingPage(ctx: ServiceContext, arbitratorId: string, page: PageOptions = {}): Promise<Page<PendingItem>> {
  const limit = pageLimit(page.limit, MAX_PENDING_PAGE_SIZE);
  let after = page.after === undefined ? undefined : requestPosition(page.after, "pending");
  const arb = typeof arbitratorId === "string" ? await ctx.repo.arbitrator(arbitratorId) : undefined;
  if (!arb) throw new RecoveryServiceError("not_found", `no arbitrator ${arbitratorId}`, { arbitrator: arbitratorId });
  if (arb.disabledAt !== undefined) return { items: [] };
  const items: PendingItem[] = [];
  let last: RequestRecord | undefined;
  const BATCH = 200;
  // The unfinished requests are scanned in order, those naming the arbitrator read in full; one item past the
  // page tells whether a next page exists.
  for (;;) {
    const batch = await ctx.repo.requests({ statuses: ["open", "satisfied"], after, limit: BATCH });
    for (const r of batch) {
      const item = await pendingItem(ctx, r, arbitratorId);
      if (!item) continue;
      if (items.length === limit) return { items, next: encodeCursor("pending", [last!.filedAt, last!.requestId]) };
      items.push(item);
      last = r;
    }
    if (batch.length < BATCH) return { items };
    after = { filedAt: batch[batch.length - 1].filedAt, requestId: batch[batch.length - 1].requestId };
  }
}

async function pendingItem(ctx: ServiceContext, r: RequestRecord, arbitratorId: string): Promise<PendingItem | undefined> {
  const policy = (JSON.parse(r.request) as ServiceRequest).policy;
  const party = r.status === "open" && policyParties(policy).includes(arbitratorId);
  const author = r.status === "satisfied" && r.approverList === null && policy.author === arbitratorId;
  if (!party && !author) return undefined;
  const { approvals, released } = await loadRequest(ctx.repo, r.requestId);
  const v = requestView(r, approvals, released);
  if (party && v.evaluation.status === "pending" && !approvals.some((a) => a.arbitrator === arbitratorId)) {
    const approvers = v.evaluation.approvers;
    const waitingFor = policy.order.filter((o) => o.after === arbitratorId && !approvers.includes(o.before)).map((o) => o.before);
    return { action: "decide", request: v, mayApproveNow: waitingFor.length === 0, waitingFor, envelopes: await shareEnvelopes(ctx, arbitratorId, { cardId: r.cardId }) };
  }
  if (author) return { action: "sign-approver-list", request: v };
  return undefined;
}

/** Refuses, by name, a request that is not satisfied: still open, ended, or used (a request is used once). */
export function requireSatisfied(rec: RequestRecord): void {
  if (rec.status === "satisfied") return;
  if (rec.status === "open") throw new RecoveryError("policy_not_satisfied", `request ${rec.requestId} still needs approvals`, { requestId: rec.requestId });
  if (rec.status === "ended") throw new RecoveryError("request_ended", `request ${rec.requestId} ended: ${rec.statusDetail ?? ""}`, { requestId: rec.requestId });
  throw new RecoveryServiceError("request_closed", `request ${rec.requestId} is ${rec.status}: a request is used once`, { requestId: rec.requestId, status: rec.status });
}

/** An operator closes an unfinished request (not one being reproduced). */
export async function withdraw(ctx: ServiceContext, requestId: string, reason: string, actor: string): Promise<RequestView> {
  checkActor(actor);
  if (typeof reason !== "string" || !reason.trim() || reason.length > MAX_REASON) throw new RecoveryServiceError("invalid_argument", "a withdrawal states its reason");
  const at = ctx.at();
  return ctx.store.transaction(async ({ repo, audit }) => {
    const { rec, approvals, released } = await loadRequest(repo, requestId);
    if (!(await repo.moveRequest(requestId, ["open", "satisfied"], "withdrawn", at, { statusDetail: reason })))
      throw new RecoveryServiceError("request_closed", `request ${requestId} is ${rec.status}`, { requestId, status: rec.status });
    await audit({ actor, action: "recovery.request.withdraw", subject: requestId, details: { cardId: rec.cardId, reason }, at });
    return requestView({ ...rec, status: "withdrawn", statusDetail: reason, updatedAt: at }, approvals, released);
  });
}
